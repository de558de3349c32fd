"""`python -m beeflow sign --v3` headers through the real /nc proxy to the fake Nextcloud's WebDAV:
a PUT, a PROPFIND with its Depth, a MOVE with Destination and Overwrite, and each signed header
bound to its value."""

from __future__ import annotations

from beeflow.ops import sign
from tests.fakes.nextcloud_dav import FakeDav
from tests.helpers import TENANT_KEY, RunningConnector

DAV = "/nc/remote.php/dav/files/alice"


async def _send(
    conn: RunningConnector, method: str, target: str, headers: dict[str, str], body: bytes = b""
) -> int:
    async with await conn.request(method, target, headers=headers, data=body or None) as resp:
        await resp.read()
        return resp.status


async def test_the_nc_proxy_accepts_v3_calls(nc_conn: RunningConnector, dav: FakeDav) -> None:
    connector = nc_conn
    body = b"hello v3"
    headers, _ = sign.sign(
        "PUT", f"{DAV}/v3.txt", uid="alice", body=body, key=TENANT_KEY, v3=sign.V3()
    )
    assert await _send(connector, "PUT", f"{DAV}/v3.txt", headers, body) in (201, 204)
    headers, _ = sign.sign(
        "PROPFIND", f"{DAV}/", uid="alice", key=TENANT_KEY, v3=sign.V3(depth="1")
    )
    headers["X-HTTP-Method-Override"] = "PROPFIND"
    assert await _send(connector, "POST", f"{DAV}/", headers) == 207
    move = sign.V3(destination=f"{DAV[3:]}/moved.txt", overwrite="F")
    headers, _ = sign.sign("MOVE", f"{DAV}/v3.txt", uid="alice", key=TENANT_KEY, v3=move)
    swapped = dict(headers, Destination=f"{DAV[3:]}/elsewhere.txt")
    assert await _send(connector, "MOVE", f"{DAV}/v3.txt", swapped) == 401
    assert await _send(connector, "MOVE", f"{DAV}/v3.txt", headers) == 201
    # A signed header changed after signing is refused, whichever it is.
    headers, _ = sign.sign(
        "PROPFIND", f"{DAV}/", uid="alice", key=TENANT_KEY, v3=sign.V3(depth="0")
    )
    assert await _send(connector, "PROPFIND", f"{DAV}/", dict(headers, Depth="infinity")) == 401
    assert await _send(connector, "PROPFIND", f"{DAV}/", headers) == 207
    assert (dav.root / "alice" / "moved.txt").read_bytes() == body
    assert [r.headers.get("Depth") for r in dav.seen if r.method == "PROPFIND"] == ["1", "0"]
