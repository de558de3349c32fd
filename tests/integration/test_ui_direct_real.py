"""The bundled UI opened straight through Nextcloud 32.0.1's PHP proxy (a bookmark, a new tab),
not framed in Nextcloud's page: the only Content-Security-Policy the browser gets is the
connector's (frame-ancestors), so Nextcloud's own page policy cannot block the UI's scripts,
styles or calls; the shell reaches the browser as the connector wrote it (no nonce rewriting),
and every file it references loads with its type."""

from __future__ import annotations

import re

import aiohttp
import pytest

from tests.integration.conftest import Lane

pytestmark = [pytest.mark.nextcloud, pytest.mark.timeout(120)]

_REFERENCE = re.compile(r'<(?:script|link)[^>]*?(?:src|href)="([^"]+)"')


async def test_the_ui_opened_through_the_php_proxy_keeps_the_connectors_policy(
    lane: Lane,
) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(lane.base / "", headers=lane.nc.bob) as resp:
            assert resp.status == 200
            shell = await resp.text()
            policies = resp.headers.getall("Content-Security-Policy", [])
        # As the PHP proxy forwards it (X-Origin-IP), without its headers: a PUBLIC route.
        async with session.get(lane.direct / "", headers={"X-Origin-IP": "127.0.0.1"}) as resp:
            assert resp.status == 200
            direct = await resp.text()
            own = resp.headers.getall("Content-Security-Policy", [])
        assert policies == own
        for policy in policies:
            assert "script-src" not in policy
            assert "default-src" not in policy
            assert "frame-ancestors" in policy
        assert shell == direct
        files = _REFERENCE.findall(shell)
        assert any(f.endswith(".js") for f in files)
        assert any(f.endswith(".css") for f in files)
        for name in files:
            async with session.get(lane.base / name, headers=lane.nc.bob) as resp:
                assert resp.status == 200, name
                kind = resp.headers["Content-Type"]
                expected = {"js": "javascript", "css": "text/css", "svg": "image/svg+xml"}
                wanted = expected.get(name.rsplit(".", 1)[-1])
                if wanted is not None:
                    assert wanted in kind, (name, kind)
