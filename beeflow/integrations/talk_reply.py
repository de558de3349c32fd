"""A bot message into a Talk conversation: spreed's bot API signed with the bot's secret
(X-Nextcloud-Talk-Bot-Random, and the hex HMAC-SHA256 of random + message), within its limits,
retried once without `replyTo` when Talk refuses the reply target (docs/assistant.md,
"Answering a mention")."""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, Final
from urllib.parse import quote

import attrs

from beeflow.errors import NextcloudError
from beeflow.nextcloud.client import NextcloudClient

log = logging.getLogger(__name__)

MESSAGE_PATH: Final = "/ocs/v2.php/apps/spreed/api/v1/bot/{token}/message"
MAX_CHARS: Final = 32_000  # ChatManager::MAX_CHAT_LENGTH, counted after trim (413 beyond)
ELLIPSIS: Final = "…"
# Talk's room tokens are short [a-z0-9] strings; anything else is not sent into the path.
TOKEN_RE: Final = re.compile(r"^[A-Za-z0-9]{1,64}$")
RANDOM_BYTES: Final = 32  # 64 hex characters (Talk wants at least 32)
# Talk notifies everyone in the room for @all; an answer written by the service must not.
_ROOM_MENTION: Final = re.compile(r'@("?)all\1(?![\w-])', re.IGNORECASE)


def signature(secret: str, random: str, message: str) -> str:
    """What BotController checks: hash_hmac('sha256', random . message, secret), hex."""
    return hmac.new(
        secret.encode("utf-8"), (random + message).encode("utf-8"), hashlib.sha256
    ).hexdigest()


def reference_id(random: str, message: str) -> str:
    """A per-message id Talk stores with it (sha256 of "<random>:<message>", 64 hex)."""
    return hashlib.sha256(f"{random}:{message}".encode()).hexdigest()


def defuse(text: str) -> str:
    """The service's words with Talk's room-wide mention broken (a zero-width space after @)."""
    return _ROOM_MENTION.sub(lambda m: "@\u200b" + m.group(0)[1:], text)


def fit(message: str) -> str:
    """Trimmed (Talk trims before counting) and at most MAX_CHARS characters."""
    text = message.strip()
    if len(text) <= MAX_CHARS:
        return text
    return text[: MAX_CHARS - len(ELLIPSIS)].rstrip() + ELLIPSIS


@attrs.frozen
class Sent:
    status: int  # Talk's answer (0: no answer)
    retried_without_reply: bool = False
    refreshed_secret: bool = False

    @property
    def ok(self) -> bool:
        return self.status == 201


async def post(
    client: NextcloudClient,
    secret: Callable[[], str | None],
    refresh: Callable[[], Awaitable[str | None]],
    token: str,
    message: str,
    reply_to: int | None,
) -> Sent:
    """Post `message`; on 400 once more without replyTo (the message it answers may be gone),
    on 401 once more with the secret AppAPI holds now (another replica registered)."""
    if not TOKEN_RE.match(token):
        return Sent(0)
    text = fit(message)
    if not text:
        return Sent(0)
    key = secret()
    if not key:
        key = await refresh()
        if not key:
            return Sent(0)
    retried = refreshed = False
    target = reply_to
    while True:
        status = await _send(client, key, token, text, target)
        if status == 400 and target is not None and not retried:
            retried, target = True, None
            continue
        if status == 401 and not refreshed:
            refreshed = True
            fresh = await refresh()
            if fresh and fresh != key:
                key = fresh
                continue
        return Sent(status, retried, refreshed)


async def _send(
    client: NextcloudClient, key: str, token: str, text: str, reply_to: int | None
) -> int:
    random = secrets.token_hex(RANDOM_BYTES)
    body: dict[str, Any] = {"message": text, "referenceId": reference_id(random, text)}
    if reply_to is not None:
        body["replyTo"] = reply_to
    headers = {
        "X-Nextcloud-Talk-Bot-Random": random,
        "X-Nextcloud-Talk-Bot-Signature": signature(key, random, text),
        "Content-Type": "application/json",
    }
    try:
        # No AppAPI headers: the bot's signature is the authentication.
        result = await client.request(
            "POST",
            MESSAGE_PATH.format(token=quote(token, safe="")),
            user=None,
            json_body=body,
            params={"format": "json"},
            headers=headers,
            timeout=15.0,
        )
    except NextcloudError as exc:
        log.warning("Talk reply not delivered: %s", exc)
        return 0
    return result.http_status
