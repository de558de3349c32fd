"""The TCP listener's accept queue: BEEFLOW_LISTEN_BACKLOG (1024 by default, not aiohttp's 128),
bounded by net.core.somaxconn, read back from the kernel (sock_diag, as `ss -lt` shows it)."""

from __future__ import annotations

import socket
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from beeflow.config import Config
from beeflow.transports.tcp import SOMAXCONN, TcpTransport, listen_backlog
from tests.fakes.frp import free_port
from tests.helpers import base_env
from tests.transports.conftest import UNREACHABLE_NC

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="sock_diag is Linux's")

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_DONE = 3
TCP_LISTEN = 10


def sock_diag(request: bytes) -> Iterator[bytes]:
    """Each message of a sock_diag dump (its payload after the netlink header)."""
    header = struct.pack(
        "=IHHII", 16 + len(request), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, 1, 0
    )
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as nl:
        nl.send(header + request)
        while True:
            data = nl.recv(65536)
            offset = 0
            while offset + 16 <= len(data):
                length, kind = struct.unpack_from("=IH", data, offset)
                if kind == NLMSG_DONE or length < 16:
                    return
                yield data[offset + 16 : offset + length]
                offset += (length + 3) & ~3


def kernel_backlog(port: int) -> int | None:
    """The accept-queue limit the kernel holds for the IPv4 TCP socket listening on `port`
    (inet_diag_msg.idiag_wqueue of a listener), or None when none listens there."""
    request = struct.pack(
        "=BBBBI", socket.AF_INET, socket.IPPROTO_TCP, 0, 0, 1 << TCP_LISTEN
    ) + bytes(48)  # inet_diag_sockid: any
    for msg in sock_diag(request):
        (sport,) = struct.unpack_from("!H", msg, 4)
        if sport == port:
            return int(struct.unpack_from("=I", msg, 60)[0])
    return None


def somaxconn() -> int:
    return int(SOMAXCONN.read_text().strip())


async def listening(env: dict[str, str]) -> TcpTransport:
    """A TcpTransport listening for a bare app; its stop() cleans the runner up."""
    config = Config.from_env(env)
    runner = web.AppRunner(web.Application())
    await runner.setup()
    transport = TcpTransport(config)
    await transport.start(runner)
    return transport


@pytest.mark.parametrize(("setting", "wanted"), [(None, 1024), ("300", 300)])
async def test_the_listener_queues_the_configured_backlog(
    storage: Path, setting: str | None, wanted: int
) -> None:
    env = base_env(UNREACHABLE_NC, storage, APP_PORT=str(free_port()))
    if setting is not None:
        env["BEEFLOW_LISTEN_BACKLOG"] = setting
    transport = await listening(env)
    try:
        port = transport.bound_port
        assert port is not None
        expected = min(wanted, somaxconn())
        assert kernel_backlog(port) == expected
        assert transport.status()["backlog"] == expected
    finally:
        await transport.stop()
    assert kernel_backlog(port) is None


def test_the_backlog_in_force_is_bounded_by_somaxconn(tmp_path: Path) -> None:
    cap = tmp_path / "somaxconn"
    cap.write_text("128\n")
    assert listen_backlog(1024, cap) == 128
    assert listen_backlog(64, cap) == 64
    assert listen_backlog(1024, tmp_path / "absent") == 1024
    cap.write_text("garbage")
    assert listen_backlog(1024, cap) == 1024


def test_the_setting_is_checked() -> None:
    env = {"APP_SECRET": "x" * 20, "NEXTCLOUD_URL": "http://nc.example"}
    assert Config.from_env(env).listen_backlog == 1024
    for bad in ("0", "65536", "many"):
        with pytest.raises(Exception, match="BEEFLOW_LISTEN_BACKLOG"):
            Config.from_env({**env, "BEEFLOW_LISTEN_BACKLOG": bad})


UNIX_DIAG_NAME, UNIX_DIAG_RQLEN = 0, 4
UDIAG_SHOW_NAME, UDIAG_SHOW_RQLEN = 0x01, 0x10


def kernel_unix_backlog(path: Path) -> int | None:
    """The accept-queue limit of the Unix socket listening at `path` (unix_diag's RQLEN
    attribute: for a listener, its second word is the backlog, as `ss -lx` shows it)."""
    request = struct.pack(
        "=BBHIIIII",
        socket.AF_UNIX,
        0,
        0,
        1 << TCP_LISTEN,
        0,
        UDIAG_SHOW_NAME | UDIAG_SHOW_RQLEN,
        0xFFFFFFFF,
        0xFFFFFFFF,
    )
    for msg in sock_diag(request):
        name, backlog = None, None
        attr = 16  # after unix_diag_msg: its attributes
        while attr + 4 <= len(msg):
            size, atype = struct.unpack_from("=HH", msg, attr)
            if size < 4:
                break
            value = msg[attr + 4 : attr + size]
            if atype == UNIX_DIAG_NAME:
                name = value.rstrip(b"\0").decode(errors="replace")
            elif atype == UNIX_DIAG_RQLEN:
                backlog = struct.unpack_from("=II", value)[1]
            attr += (size + 3) & ~3
        if name == str(path):
            return backlog
    return None
