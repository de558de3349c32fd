"""The Bee Flow service for the lane: the repository's fake service (with its bootstrap and
user-sync endpoints) on its own event loop in a thread, so one instance serves the whole
session, plus the service's side of a signed `/nc` call (its v2 signer, written from the
service's `integrations/ncSigning.js`: see bee-flow-service.md "(A)")."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import threading
import time
from collections.abc import Coroutine
from typing import Any, Final, TypeVar
from urllib.parse import unquote

from yarl import URL

from tests.fakes.service import FakeService
from tests.fakes.service_control import ServiceControl

T = TypeVar("T")
START_TIMEOUT: Final = 10.0


class ServiceThread:
    """FakeService + ServiceControl served from a private loop. Tests read the recorded
    requests and events (plain lists) from the test thread."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-service")
        self._thread.daemon = True
        self._thread.start()
        self.control: ServiceControl = self.call(self._make_control())
        self.service: FakeService = self.call(self._make_service())
        self.url: URL = self.call(self.service.start(), timeout=START_TIMEOUT)

    async def _make_control(self) -> ServiceControl:
        return ServiceControl()

    async def _make_service(self) -> FakeService:
        return FakeService(extra_routes=self.control.routes())

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def stop(self) -> None:
        try:
            self.call(self.service.stop(), timeout=10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

    @property
    def tenant_key(self) -> str:
        return self.control.tenant_key


def sign_nc(
    tenant_key: str, method: str, path: str, uid: str, body: bytes = b"", ts: int | None = None
) -> dict[str, str]:
    """The headers the service sends on a `/nc` call: `path` is '/nc' + the rest after the
    callback base URL, query included; the message uses its percent-decoded form."""
    stamp = str(int(time.time()) if ts is None else ts)
    message = "\n".join(
        [stamp, method.upper(), unquote(path), uid, hashlib.sha256(body).hexdigest()]
    )
    digest = hmac.new(tenant_key.encode(), message.encode(), hashlib.sha256).hexdigest()
    return {"X-Beeflow-Sig": f"{stamp}.{digest}", "X-Beeflow-NC-Uid": uid}


def nc_request(
    tenant_key: str, method: str, path: str, uid: str, body: bytes = b""
) -> tuple[str, dict[str, str]]:
    """(wire method, headers) as the service sends them: every verb but GET and POST goes as
    POST with X-HTTP-Method-Override, and the signature covers the real verb."""
    headers = sign_nc(tenant_key, method, path, uid, body)
    wire = method.upper()
    if wire not in ("GET", "POST"):
        headers["X-HTTP-Method-Override"] = wire
        wire = "POST"
    return wire, headers
