"""MOVE/COPY Destination: rewritten onto NEXTCLOUD_URL from every form the service may know,
refused when it points elsewhere (docs/nc-proxy.md, "Destination (MOVE, COPY, chunked
upload)")."""

from __future__ import annotations

import pytest
from yarl import URL

from beeflow.config import Config
from beeflow.errors import BadRequest
from beeflow.proxy.nc.destination import rewrite_destination
from tests.conftest import ConnectorFactory
from tests.fakes.nextcloud import FakeNextcloud
from tests.fakes.nextcloud_dav import FakeDav
from tests.helpers import SECRET, RunningConnector
from tests.proxy.nc.caller import NcCaller, outcome

PUBLIC = "https://cloud.example.com"
SRC = "/nc/remote.php/dav/files/alice/src.txt"
REL = "/remote.php/dav/files/alice/new%20name%40x.txt"


@pytest.fixture
async def dest_conn(connector_factory: ConnectorFactory) -> RunningConnector:
    return await connector_factory(BEEFLOW_NC_PUBLIC_URL=PUBLIC + "/index.php")


def _forms(fake_nc: FakeNextcloud, conn: RunningConnector) -> dict[str, str]:
    return {
        "public url": PUBLIC + REL,
        "internal url": str(fake_nc.url) + REL,
        "php proxy callback": PUBLIC + "/index.php/apps/app_api/proxy/bee_flow/nc" + REL,
        "harp callback": PUBLIC + "/exapps/bee_flow/nc" + REL,
        "connector itself": str(conn.url) + "/nc" + REL,
        "absolute path": REL,
        "connector path": "/nc" + REL,
    }


@pytest.mark.parametrize(
    "form",
    [
        "public url",
        "internal url",
        "php proxy callback",
        "harp callback",
        "connector itself",
        "absolute path",
        "connector path",
    ],
)
@pytest.mark.parametrize("verb", ["MOVE", "COPY"])
async def test_destination_rewritten(
    session_caller: NcCaller,
    dest_conn: RunningConnector,
    fake_nc: FakeNextcloud,
    dav: FakeDav,
    form: str,
    verb: str,
) -> None:
    dav.put_file("alice", "src.txt", b"content")
    destination = _forms(fake_nc, dest_conn)[form]
    resp = await session_caller.request(
        verb, SRC, tunnel=True, headers={"Destination": destination}
    )
    assert (await outcome(resp))[0] == 201
    assert dav.last(verb).headers["Destination"] == str(fake_nc.url) + REL
    assert dav.file("alice", "new name@x.txt").read_bytes() == b"content"
    assert dav.file("alice", "src.txt").exists() == (verb == "COPY")


@pytest.mark.parametrize(
    ("destination", "code"),
    [
        ("https://evil.example.com" + REL, "destination_foreign_host"),
        ("https://cloud.example.com:8443" + REL, "destination_foreign_host"),
        ("http://127.0.0.1:1" + REL, "destination_foreign_host"),
        (PUBLIC + "/index.php/login", "destination_not_proxied"),
        (PUBLIC + "/remote.php/webdav/x.txt", "destination_not_proxied"),
        (PUBLIC + "/status.php", "destination_not_proxied"),
        (PUBLIC + "/remote.php/dav/files/alice/../bob/x", "destination_path_traversal"),
        (PUBLIC + "/remote.php/dav/files/alice/%2e%2e/bob/x", "destination_path_traversal"),
        (PUBLIC + "/remote.php/dav/files/alice/a%2Fb", "destination_path_traversal"),
        ("/remote.php/dav/files/alice/%252e%252e/x", "destination_path_traversal"),
        ("https://u:p@cloud.example.com" + REL, "destination_invalid"),
        (PUBLIC + REL + "?x=1", "destination_invalid"),
        (PUBLIC + REL + "#frag", "destination_invalid"),
        ("ftp://cloud.example.com" + REL, "destination_invalid"),
        ("//evil.example.com" + REL, "destination_invalid"),
        ("new.txt", "destination_invalid"),
        (PUBLIC + "/remote.php/dav/files/alice/caf\u00e9", "destination_invalid"),
    ],
)
async def test_destination_refused(
    session_caller: NcCaller, dav: FakeDav, destination: str, code: str
) -> None:
    dav.put_file("alice", "src.txt", b"content")
    resp = await session_caller.request(
        "MOVE", SRC, tunnel=True, headers={"Destination": destination}
    )
    assert await outcome(resp) == (400, code)
    assert [r for r in dav.seen if r.method == "MOVE"] == []
    assert dav.file("alice", "src.txt").exists()


async def test_destination_only_travels_with_move_and_copy(
    session_caller: NcCaller, dav: FakeDav
) -> None:
    dav.put_file("alice", "src.txt", b"content")
    resp = await session_caller.request(
        "GET", SRC, headers={"Destination": "https://evil.example.com/x"}
    )
    assert (await outcome(resp))[0] == 200
    assert "Destination" not in dav.last("GET").headers


def _config(nextcloud: str, public: str | None) -> Config:
    return Config(
        app_secret=SECRET,
        nextcloud_url=URL(nextcloud),
        nc_public_url=URL(public) if public else None,
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            "https://cloud.example.com/nextcloud/remote.php/dav/files/a/x.txt",
            "http://nc.internal:8080/nextcloud/remote.php/dav/files/a/x.txt",
        ),
        (
            "http://nc.internal:8080/nextcloud/remote.php/dav/files/a/x.txt",
            "http://nc.internal:8080/nextcloud/remote.php/dav/files/a/x.txt",
        ),
        (
            "https://cloud.example.com/nextcloud/index.php/apps/app_api/proxy/bee_flow/nc"
            "/remote.php/dav/files/a/x.txt",
            "http://nc.internal:8080/nextcloud/remote.php/dav/files/a/x.txt",
        ),
        (
            "/nextcloud/remote.php/dav/files/a/x%20y.txt",
            "http://nc.internal:8080/nextcloud/remote.php/dav/files/a/x%20y.txt",
        ),
        (
            "/nc/remote.php/dav/files/a/x.txt",
            "http://nc.internal:8080/nextcloud/remote.php/dav/files/a/x.txt",
        ),
    ],
)
def test_rewrite_keeps_nextclouds_base_path(value: str, expected: str) -> None:
    config = _config("http://nc.internal:8080/nextcloud", "https://cloud.example.com/nextcloud")
    assert rewrite_destination(value, config) == expected


def test_rewrite_refuses_a_path_outside_the_base() -> None:
    config = _config("http://nc.internal:8080/nextcloud", "https://cloud.example.com/nextcloud")
    with pytest.raises(BadRequest) as info:
        rewrite_destination("https://cloud.example.com/other/remote.php/dav/files/a/x", config)
    assert info.value.instance_code == "destination_not_proxied"


async def test_destination_travels_with_chunked_upload_v2(
    session_caller: NcCaller, dav: FakeDav, fake_nc: FakeNextcloud
) -> None:
    """Nextcloud's chunked upload v2 needs Destination on MKCOL, every chunk PUT and the final
    MOVE under /remote.php/dav/uploads/: rewritten onto NEXTCLOUD_URL like MOVE/COPY's."""
    final = "/remote.php/dav/files/alice/big.bin"
    upload = "/nc/remote.php/dav/uploads/alice/web-file-upload-1"
    expected = str(fake_nc.url) + final
    headers = {"Destination": PUBLIC + final, "OC-Total-Length": "10"}
    steps = [
        ("MKCOL", upload, b""),
        ("PUT", f"{upload}/00001", b"x" * 5),
        ("PUT", f"{upload}/00002", b"y" * 5),
        ("MOVE", f"{upload}/.file", b""),
    ]
    for verb, target, body in steps:
        resp = await session_caller.request(
            verb, target, body=body, tunnel=verb != "PUT", headers=headers
        )
        async with resp:
            assert resp.status < 500, verb  # the fake has no uploads/ tree: Sabre's 404
        seen = dav.last(verb)
        assert seen.raw_path == target[len("/nc") :]
        assert seen.headers["Destination"] == expected, verb
        assert seen.headers["OC-Total-Length"] == "10"


async def test_upload_destination_is_checked_like_move(
    session_caller: NcCaller, dav: FakeDav
) -> None:
    resp = await session_caller.request(
        "PUT",
        "/nc/remote.php/dav/uploads/alice/u1/00001",
        body=b"x",
        headers={"Destination": "https://evil.example.com/remote.php/dav/files/alice/x"},
    )
    assert await outcome(resp) == (400, "destination_foreign_host")
    assert dav.seen == []
