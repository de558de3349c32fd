"""Nextcloud's users as the connector reads them: the lenient user record and a cached
directory of lookups (each impersonating the user looked up)."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import attrs
from aiohttp import web

from beeflow.errors import NextcloudError
from beeflow.nextcloud.client import NextcloudClient


@attrs.frozen
class NcUser:
    uid: str
    email: str | None
    display_name: str
    groups: tuple[str, ...]

    @property
    def is_admin(self) -> bool:
        return "admin" in self.groups


class UserDirectory:
    """Cached OCS user lookups (60 s, bounded), impersonating the user being looked up."""

    def __init__(self, client: NextcloudClient, *, ttl: float = 60.0, max_entries: int = 1000):
        self._client = client
        self._ttl = ttl
        self._max = max_entries
        self._cache: OrderedDict[str, tuple[float, NcUser]] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[NcUser]] = {}

    def forget(self, uid: str) -> None:
        self._cache.pop(uid, None)

    async def lookup(self, uid: str) -> NcUser:
        now = time.monotonic()
        hit = self._cache.get(uid)
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        pending = self._inflight.get(uid)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[NcUser] = asyncio.get_running_loop().create_future()
        self._inflight[uid] = fut
        try:
            user = await self._fetch(uid)
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # mark retrieved: joiners re-raise it themselves
            raise
        finally:
            self._inflight.pop(uid, None)
        fut.set_result(user)
        self._cache[uid] = (time.monotonic(), user)
        self._cache.move_to_end(uid)
        while len(self._cache) > self._max:
            self._cache.popitem(last=False)
        return user

    async def _fetch(self, uid: str) -> NcUser:
        result = await self._client.ocs(
            "GET", f"/ocs/v2.php/cloud/users/{quote(uid, safe='')}", user=uid, timeout=10.0
        )
        if not result.ok or not isinstance(result.data, dict):
            if result.user_refused:
                kind = "user_refused"  # disabled account (not logged in), not our credentials
            else:
                kind = "auth" if result.auth_refused else "lookup"
            raise NextcloudError(
                f"user lookup: HTTP {result.http_status} OCS {result.statuscode}",
                kind=kind,
                status=result.http_status,
            )
        return user_from_ocs(uid, result.data)


def user_from_ocs(uid: str, data: Mapping[str, Any]) -> NcUser:
    """Lenient: Nextcloud's user payload differs a little between versions."""
    email = data.get("email")
    display = data.get("displayname") or data.get("display-name") or data.get("display_name")
    groups = data.get("groups")
    return NcUser(
        uid=str(data.get("id") or uid),
        email=str(email) if isinstance(email, str) and email else None,
        display_name=str(display) if isinstance(display, str) and display else uid,
        groups=tuple(str(g) for g in groups) if isinstance(groups, list) else (),
    )


USERS: web.AppKey[UserDirectory] = web.AppKey("users")
