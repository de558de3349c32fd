"""The Bee Flow service's side of /nc: requests signed with the tenant key.

The HMAC is computed here with hashlib/hmac directly, not with beeflow.signing, so these tests
pin the wire format byte for byte (docs/nc-proxy.md, "The signature") instead of agreeing with
themselves."""

from __future__ import annotations

import hashlib
import hmac
import io
import time
from collections.abc import AsyncIterable, Mapping
from typing import Any
from urllib.parse import unquote

import aiohttp
from yarl import URL

from tests.helpers import TENANT_KEY


def nc_signature(
    key: str,
    ts: int | str,
    method: str,
    path: str,
    uid: str,
    body_sha256: str | None,
) -> str:
    """`{ts}.{hex}`: v2 over "{ts}\\n{METHOD}\\n{path}\\n{uid}\\n{sha256hex(body)}", or v1
    (body_sha256=None) over "{ts}\\n{METHOD}\\n{path}\\n{uid}"."""
    message = f"{ts}\n{method}\n{path}\n{uid}"
    if body_sha256 is not None:
        message += f"\n{body_sha256}"
    mac = hmac.new(key.encode(), message.encode(), hashlib.sha256).hexdigest()
    return f"{ts}.{mac}"


def decoded(target: str) -> str:
    """The form the docs tell the service to sign: the percent-decoded path and query."""
    return unquote(target, errors="strict")


_KEEP = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _v3_encode(text: str) -> str:
    return "".join(chr(b) if b in _KEEP else f"%{b:02X}" for b in text.encode("utf-8"))


def v3_query(query: str) -> str:
    """The canonical query of docs/nc-proxy.md ("The v3 signature"), written from the doc:
    each non-empty `&` part split at its first `=`, form-decoded, re-encoded byte by byte."""
    out = []
    for part in filter(None, query.split("&")):
        key, _, value = part.partition("=")
        pair = [unquote(x.replace("+", " "), errors="strict") for x in (key, value)]
        out.append(_v3_encode(pair[0]) + "=" + _v3_encode(pair[1]))
    return "&".join(out)


def v3_signature(
    key: str,
    ts: int | str,
    method: str,
    target: str,
    uid: str,
    body_sha256: str,
    *,
    headers: Mapping[str, str] | None = None,
    nonce: str = "",
) -> str:
    """`v3.{ts}.{hex}` over the eleven lines of the v3 message for `target` (raw, as sent)."""
    path, _, query = target.partition("?")
    signed = headers or {}
    message = "\n".join(
        [
            "beeflow-nc-v3",
            str(ts),
            method,
            unquote(path, errors="strict"),
            v3_query(query),
            uid,
            body_sha256,
            signed.get("Destination", ""),
            signed.get("Overwrite", ""),
            signed.get("Depth", ""),
            nonce,
        ]
    )
    mac = hmac.new(key.encode(), message.encode(), hashlib.sha256).hexdigest()
    return f"v3.{ts}.{mac}"


class NcCaller:
    """Sends signed /nc requests to `base` (the connector, or a PHP proxy URL prefix)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base: URL | str,
        *,
        key: str = TENANT_KEY,
        prefix: str = "",
    ) -> None:
        self.session = session
        self.base = str(base).rstrip("/")
        self.key = key
        self.prefix = prefix  # e.g. "/index.php/apps/app_api/proxy/bee_flow" for the PHP proxy

    def url(self, target: str) -> URL:
        return URL(self.base + self.prefix + target, encoded=True)

    def headers(
        self,
        method: str,
        target: str,
        *,
        body: bytes = b"",
        body_sha256: str | None = None,
        uid: str = "alice",
        version: int = 2,
        sign_target: str | None = None,
        sign_method: str | None = None,
        sign_uid: str | None = None,
        ts: int | None = None,
        key: str | None = None,
        signed_headers: Mapping[str, str] | None = None,
        nonce: str = "",
    ) -> dict[str, str]:
        """The signature headers. `version=3` signs `signed_headers` (Destination, Overwrite,
        Depth) too and sends the body hash in X-Beeflow-Content-SHA256 (and the nonce)."""
        digest = body_sha256 or hashlib.sha256(body).hexdigest()
        if version == 3:
            v3 = v3_signature(
                key or self.key,
                int(time.time()) if ts is None else ts,
                sign_method or method,
                target if sign_target is None else sign_target,
                uid if sign_uid is None else sign_uid,
                digest,
                headers=signed_headers,
                nonce=nonce,
            )
            out = {"X-Beeflow-Sig": v3, "X-Beeflow-NC-Uid": uid, "X-Beeflow-Content-SHA256": digest}
            if nonce:
                out["X-Beeflow-Nonce"] = nonce
            return out
        sig = nc_signature(
            key or self.key,
            int(time.time()) if ts is None else ts,
            sign_method or method,
            decoded(target) if sign_target is None else sign_target,
            uid if sign_uid is None else sign_uid,
            digest if version == 2 else None,
        )
        return {"X-Beeflow-Sig": sig, "X-Beeflow-NC-Uid": uid}

    async def request(
        self,
        method: str,
        target: str,
        *,
        body: bytes = b"",
        data: AsyncIterable[bytes] | None = None,
        body_sha256: str | None = None,
        tunnel: bool = False,
        headers: Mapping[str, str] | None = None,
        **sign: Any,
    ) -> aiohttp.ClientResponse:
        """Sign and send. `tunnel` sends POST + X-HTTP-Method-Override: method. `data` streams a
        body whose sha256 the caller passes as `body_sha256`."""
        hdrs = self.headers(method, target, body=body, body_sha256=body_sha256, **sign)
        if tunnel:
            hdrs["X-HTTP-Method-Override"] = method
        if sign.get("signed_headers"):
            hdrs.update(sign["signed_headers"])
        if headers:
            hdrs.update(headers)
        payload: bytes | io.BytesIO | AsyncIterable[bytes] | None = data
        if payload is None and body:
            # aiohttp warns (an error here) about raw bytes bodies over 1 MiB
            payload = io.BytesIO(body) if len(body) > 1024 * 1024 else body
        return await self.session.request(
            "POST" if tunnel else method,
            self.url(target),
            headers=hdrs,
            data=payload,
            allow_redirects=False,
        )


async def outcome(resp: aiohttp.ClientResponse) -> tuple[int, Any]:
    """(status, JSON code or the parsed body) and release the response."""
    async with resp:
        if resp.content_type == "application/json":
            data = await resp.json()
            return resp.status, data.get("code", data) if isinstance(data, dict) else data
        return resp.status, await resp.read()
