"""Routing per request and readiness through the real Nextcloud (AppAPI 32.0.0's PHP proxy, no
HaRP in the lane): the proxy's requests carry X-Origin-IP and AppAPI's own AA-VERSION, so the
connector frames them for the PHP proxy, reports `routing.seen: php`, and its embed script frames
the PHP path; `/ready`, registered from appinfo/info.xml, answers through the proxy."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests.integration.conftest import Lane

pytestmark = [pytest.mark.nextcloud, pytest.mark.timeout(120)]


async def _heartbeat(lane: Lane, session: aiohttp.ClientSession) -> dict[str, Any]:
    """The connector's own view, as doctor gets it (straight, with the secret, on loopback)."""
    async with session.get(lane.direct / "heartbeat", headers=lane.appapi_headers()) as resp:
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
    return body


async def test_the_php_proxys_requests_are_seen_and_framed_as_such(lane: Lane) -> None:
    async with aiohttp.ClientSession() as session:
        before = await _heartbeat(lane, session)
        url = lane.base / "ai/chat/direct/stream"
        async with session.post(url, json={"message": "hi"}, headers=lane.nc.bob) as resp:
            body = await resp.text()
            assert resp.status == 200, body
        assert "event: done" in body
        after = await _heartbeat(lane, session)
    routing = after["routing"]
    assert routing["seen"] == "php"
    assert routing["mode"] == "auto"
    assert routing["phpProxyRequests"] > before["routing"]["phpProxyRequests"]
    assert routing["harpRequests"] == 0  # AppAPI 32 sends its own version, not HaRP's "32"
    # The stream got the framing for the PHP proxy: its X-Origin-IP decided it.
    proxy = after["serviceProxy"]
    assert proxy["legacyFramed"] == before["serviceProxy"].get("legacyFramed", 0) + 1
    assert "PHP proxy" in proxy["streaming"]


async def test_the_embed_script_frames_the_php_proxy_without_harp(lane: Lane) -> None:
    """Nextcloud loads the script through its PHP proxy: no HaRP stamp, so the PHP path."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(lane.base / "js/embed.js") as resp,
    ):
        script = await resp.text()
        assert resp.status == 200
    assert "var HARP = false;" in script


async def test_ready_answers_through_the_manifests_route(lane: Lane) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(lane.base / "ready") as resp,
    ):
        assert resp.status == 200
        assert await resp.json() == {"status": "ready"}
