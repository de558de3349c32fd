"""Machine-to-machine calls to the Bee Flow service: the base URL in force, one pooled session,
unsigned JSON posts (the bootstrap) and tenant-key-signed posts (docs/security.md,
"(3) Calls to the Bee Flow service")."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, Final

import aiohttp
import attrs
from aiohttp import web
from yarl import URL

from beeflow.config import Config
from beeflow.signing import SIG_HEADER, sign_outbound
from beeflow.tenant.state import TenantState

SOURCE: Final = "nextcloud-connector"
SIGNED_TIMEOUT: Final = 10.0


@attrs.define
class ServiceUrl:
    """The Bee Flow service base URL in force now. Config gives the start value; the setup page
    may change it live (source "setup"), and a cached tenant binding may pin it (source
    "bound")."""

    url: URL
    source: str = "default"  # env | setup | bound | default

    @property
    def locked(self) -> bool:
        """BEEFLOW_API_BASE_URL in the environment wins over the setup page (409 env_locked)."""
        return self.source == "env"

    @classmethod
    def from_config(cls, config: Config) -> ServiceUrl:
        return cls(config.api_base_url, "env" if config.api_base_url_from_env else "default")


class ServiceCallError(Exception):
    """A call to the service did not produce an HTTP answer; `kind` says why (no secrets)."""

    def __init__(self, message: str, *, kind: str) -> None:
        self.kind = kind  # network | timeout | no_key
        super().__init__(message)


@attrs.frozen
class ServiceReply:
    status: int
    data: Any  # parsed JSON, or None
    text: str  # the first 2000 characters of the body

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def dumps(body: Any) -> str:
    """The exact JSON text sent and signed (compact, UTF-8, like the service's JSON.stringify)."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


class ServiceClient:
    """Calls to the service base URL in force (read at each call). The session opens and closes
    with the app (install)."""

    def __init__(
        self,
        config: Config,
        service_url: ServiceUrl,
        tenant: TenantState,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.config = config
        self.service_url = service_url
        self.tenant = tenant
        self._session = session

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("the service session is not open")
        return self._session

    def url(self, path: str) -> URL:
        base = str(self.service_url.url).rstrip("/")
        return URL(base + path, encoded=True)

    async def open(self) -> None:
        config = self.config
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=16, keepalive_timeout=30),
            timeout=aiohttp.ClientTimeout(total=None, connect=config.upstream_connect_timeout),
            headers={"User-Agent": f"ExApp/{config.app_id}/{config.app_version} (beeflow)"},
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(
        self,
        method: str,
        url: URL,
        *,
        body: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float,
    ) -> ServiceReply:
        if self.session.closed:
            # Shutting down: a caller still waiting for its turn gets a normal failure.
            raise ServiceCallError(
                f"{method} {url.path}: the connector is stopping", kind="network"
            )
        try:
            async with self.session.request(
                method,
                url,
                data=body.encode("utf-8") if body is not None else None,
                headers=dict(headers or {}),
                timeout=aiohttp.ClientTimeout(total=timeout),
                allow_redirects=False,
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except TimeoutError:
            raise ServiceCallError(f"{method} {url.path}: timed out", kind="timeout") from None
        except aiohttp.ClientError as exc:
            raise ServiceCallError(
                f"{method} {url.path}: {type(exc).__name__}", kind="network"
            ) from None
        except RuntimeError as exc:  # "Session is closed": the session closed mid-call
            if not self.session.closed:
                raise
            raise ServiceCallError(
                f"{method} {url.path}: the connector is stopping", kind="network"
            ) from exc
        text = raw.decode("utf-8", "replace")
        try:
            data = json.loads(text) if text.strip() else None
        except ValueError:
            data = None
        return ServiceReply(status, data, text[:2000])

    async def post_json(
        self,
        path_or_url: str | URL,
        body: Any,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = 15.0,
    ) -> ServiceReply:
        """An unsigned JSON POST (the bootstrap and its sub-flows)."""
        url = path_or_url if isinstance(path_or_url, URL) else self.url(path_or_url)
        hdrs = {"Content-Type": "application/json", "X-Beeflow-Source": SOURCE}
        hdrs.update(headers or {})
        return await self.request("POST", url, body=dumps(body), headers=hdrs, timeout=timeout)

    async def post_signed(
        self, path: str, body: Any, *, timeout: float = SIGNED_TIMEOUT
    ) -> ServiceReply:
        """`X-Beeflow-Sig: {ts}.{hex}` over "{ts}\\n{METHOD}\\n{path}\\n{body}": the service's
        connectorSig.js checks the method on the wire, the path as it receives it WITH its query
        (not decoded: req.originalUrl) and the exact body text."""
        tenant = self.tenant
        key = tenant.key
        if not key:
            raise ServiceCallError("no tenant key yet", kind="no_key")
        url = self.url(path)
        text = dumps(body)
        ts = int(time.time())
        headers = {
            SIG_HEADER: sign_outbound(key, ts, "POST", url.raw_path_qs, text),
            "X-Beeflow-Source": SOURCE,
            "X-Beeflow-NC-Instance-Id": tenant.instance_id or "",
            "Content-Type": "application/json",
        }
        return await self.request("POST", url, body=text, headers=headers, timeout=timeout)


SERVICE: web.AppKey[ServiceClient] = web.AppKey("service_client")
SERVICE_URL: web.AppKey[ServiceUrl] = web.AppKey("service_url")


def install(app: web.Application, client: ServiceClient) -> None:
    """The client under SERVICE, its URL under SERVICE_URL; its session opens with the app."""
    app[SERVICE] = client
    app[SERVICE_URL] = client.service_url

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        await client.open()
        yield
        await client.close()

    app.cleanup_ctx.append(session_ctx)
