"""The Bee Flow service for the lane: the repository's fake service (tests/fakes/service.py, which
follows the real service route by route) on its own event loop in a thread, so one instance
serves the whole session while the connector runs as a separate process.

The fake starts with no organisation and no tenant key, and without the test instruments (the
generic proxy tests' /api/json, /api/echo...), so it answers only as the service does: the
connector's bootstrap creates the organisation, the key it hands out is the one the tests check
JWTs and `/nc` signatures against, and an unknown `/api/*` path is the service's JSON 404."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, Final, TypeVar

from yarl import URL

from tests.fakes.service import FakeService, Recorded
from tests.fakes.service_control import Org, ServiceControl
from tests.fakes.service_studio import StudioService

T = TypeVar("T")
START_TIMEOUT: Final = 10.0
# What the connector itself calls on the service (tenant.py's bootstrap and its pending
# verification, service_client.py's user sync, the Studio menus' listing): never a user's
# request passed on.
CONNECTOR_CALLS: Final = (
    "/auth/connector/bootstrap",
    "/auth/webhook/nc-user-sync",
    "/api/nextcloud/studio-apps",  # the Studio menus' listing (signed, no user)
)


class ServiceThread:
    """FakeService + ServiceControl served from a private loop. Tests read the recorded
    requests and events (plain lists) from the test thread."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-service")
        self._thread.daemon = True
        self._thread.start()
        self.service: FakeService = self.call(self._make_service())
        self.control: ServiceControl = self.service.control
        self.studio: StudioService = self._studio
        self.url: URL = self.call(self.service.start(), timeout=START_TIMEOUT)

    async def _make_service(self) -> FakeService:
        # verify_key=None: no organisation is bound to this Nextcloud before the bootstrap.
        control = ServiceControl(verify_key=None)
        # The Studio apps listing (routes/nextcloudStudioApps.js) and its push.
        self._studio = StudioService(control)
        return FakeService(control=control, instruments=False, extra_routes=self._studio.routes())

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
    def organization(self) -> Org:
        """The organisation the connector's bootstrap created (the only one the fake holds)."""
        (org,) = self.control.orgs.values()
        return org

    @property
    def tenant_key(self) -> str:
        key = self.organization.key
        assert key, "the bootstrap handed out no tenant key"
        return key

    def forwarded(self) -> list[Recorded]:
        """The requests that reached the service on a user's behalf: everything but the
        connector's own calls (which run in the background whenever they are due). A proxied
        request always carries the user's JWT, so a user's request to those paths still counts."""
        return [r for r in self.service.requests if not _connector_call(r)]


def _connector_call(request: Recorded) -> bool:
    bearer = request.headers.get("Authorization", "").lower().startswith("bearer ")
    return request.path.startswith(CONNECTOR_CALLS) and not bearer
