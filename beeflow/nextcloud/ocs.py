"""OCS answers read leniently: the verdict in-band (OCS v1) or on the wire (v2), and the headers
every ExApp -> Nextcloud call carries."""

from __future__ import annotations

import base64
import json
import re
from typing import Any, Final

import attrs

from beeflow.config import Config

OCS_OK: Final = frozenset({100, 200})
OCS_EXISTS: Final = 409
_STATUSCODE_XML: Final = re.compile(rb"<statuscode>\s*(\d+)\s*</statuscode>")


def appapi_headers(config: Config, user_id: str = "") -> dict[str, str]:
    """The headers every ExApp -> Nextcloud call carries (docs/appapi-wire.md, "Outbound
    headers")."""
    token = base64.b64encode(f"{user_id}:{config.app_secret}".encode()).decode("ascii")
    return {
        "AUTHORIZATION-APP-API": token,
        "EX-APP-ID": config.app_id,
        "EX-APP-VERSION": config.app_version,
        "AA-VERSION": config.aa_version,
    }


@attrs.frozen
class OcsResult:
    """An answer from Nextcloud, with its OCS verdict when it had an envelope."""

    http_status: int
    statuscode: int | None
    data: Any
    message: str = ""
    text: str = ""
    # An impersonated call refused although our app id and secret are proven good (the user is
    # disabled, so not logged in, or the app is disabled): Nextcloud did not count it as a failed
    # login and neither did the budget. Read it as "this user cannot be read", not "bad secret".
    user_refused: bool = False

    @property
    def ok(self) -> bool:
        if self.statuscode is not None:
            return 200 <= self.http_status < 300 and self.statuscode in OCS_OK
        return 200 <= self.http_status < 300

    @property
    def exists(self) -> bool:
        """409 'already registered', on the wire (v2) or in-band (v1): idempotent success."""
        return self.http_status == OCS_EXISTS or self.statuscode == OCS_EXISTS

    @property
    def done(self) -> bool:
        return self.ok or self.exists

    @property
    def auth_refused(self) -> bool:
        """Nextcloud refused the AppAPI login: 997/401, or the brute-force lock (429), on the
        wire or in-band (OCS v1 answers HTTP 200 with the refusal inside)."""
        if self.http_status in (401, 429):
            return True
        return self.statuscode in (997, 429)


def parse_ocs(status: int, body: bytes) -> OcsResult:
    """Read an OCS envelope (JSON, or XML statuscode) leniently; a non-envelope keeps HTTP only."""
    text = body.decode("utf-8", "replace")
    statuscode: int | None = None
    data: Any = None
    message = ""
    try:
        parsed = json.loads(text) if text.strip() else None
    except ValueError:
        parsed = None
        match = _STATUSCODE_XML.search(body)
        if match:
            statuscode = int(match.group(1))
    if isinstance(parsed, dict) and isinstance(parsed.get("ocs"), dict):
        meta = parsed["ocs"].get("meta") or {}
        if isinstance(meta, dict):
            code = meta.get("statuscode")
            statuscode = code if isinstance(code, int) else None
            message = str(meta.get("message") or "")
        data = parsed["ocs"].get("data")
    elif parsed is not None:
        data = parsed
    return OcsResult(status, statuscode, data, message, text[:2000])
