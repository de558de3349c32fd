"""/nc against what an attack run found (issue 25), over real sockets: reserved headers spelled
with underscores never reach Nextcloud, `..;` segments are refused like `..`, and Nextcloud's
answers are confined on its own origin like the service's."""

from __future__ import annotations

import pytest

from beeflow.web.security_headers import confined_policy
from tests.fakes.nextcloud_dav import FakeDav
from tests.helpers import RunningConnector
from tests.proxy.nc.caller import NcCaller, outcome

UNDERSCORED = {
    "X_Beeflow_NC_Uid": "admin",
    "x_beeflow_sig": "forged",
    "X_Original_Authorization": "Basic YWRtaW46cGFzcw==",
    "AUTHORIZATION_APP_API": "Zm9yZ2Vk",
    "EX_APP_USER_ID": "admin",
    "Aa_Version": "99",
    "X_Forwarded_For": "203.0.113.9",
    "X_HTTP_Method_Override": "DELETE",
    "Proxy_Connection": "keep-alive",
}


async def test_reserved_headers_with_underscores_never_reach_nextcloud(
    caller: NcCaller, dav: FakeDav
) -> None:
    """Before: `X_Beeflow_NC_Uid` and `EX_APP_USER_ID` reached Nextcloud, whose PHP reads them
    as HTTP_X_BEEFLOW_NC_UID and HTTP_EX_APP_USER_ID (the same as the dashed names)."""
    resp = await caller.request(
        "GET", "/nc/ocs/v2.php/apps/echo/u", headers={**UNDERSCORED, "X_Custom": "kept"}
    )
    assert (await outcome(resp))[0] == 200
    seen = dav.last().headers
    names = {name.lower() for name in seen}
    for name in UNDERSCORED:
        assert name.lower() not in names, name
    assert seen["X_Custom"] == "kept"
    assert dav.last().user == "alice"


@pytest.mark.parametrize(
    "target",
    [
        "/nc/remote.php/dav/files/alice/..;/bob/x.txt",
        "/nc/remote.php/dav/files/alice/.;x/x.txt",
        "/nc/remote.php/dav/files/alice/%2e%2e%3bjsessionid=1/x.txt",
        "/nc/remote.php/dav/files/alice/%252e%252e%253b/x.txt",
    ],
)
async def test_dot_segments_with_parameters_are_refused(
    caller: NcCaller, dav: FakeDav, target: str
) -> None:
    resp = await caller.request("GET", target)
    assert await outcome(resp) == (400, "path_traversal")
    assert dav.seen == []


async def test_nextclouds_answer_is_confined(caller: NcCaller, nc_conn: RunningConnector) -> None:
    """Nextcloud's session cookie for the impersonated user stays here (as before), and no
    policy of its own replaces the connector's."""
    resp = await caller.request("GET", "/nc/index.php/apps/echo/c")
    async with resp:
        assert resp.status == 200
        assert "Set-Cookie" not in resp.headers
        assert resp.headers.getall("Content-Security-Policy") == [confined_policy(nc_conn.config)]
