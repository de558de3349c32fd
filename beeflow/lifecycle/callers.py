"""Who may see the heartbeat's details: a Nextcloud administrator, or a process inside this
container that did not come through Nextcloud's proxy, HaRP or frpc."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import socket
import struct
from pathlib import Path, PurePath
from typing import Final

from aiohttp import web

from beeflow.config import CONFIG
from beeflow.errors import NextcloudError
from beeflow.health import TUNNEL_STATUS
from beeflow.nextcloud.users import USERS
from beeflow.web.auth import IDENTITY

ORIGIN_IP: Final = "x-origin-ip"  # set by AppAPI's PHP proxy on every request it forwards
HARP_AA_VERSION: Final = "32"  # HaRP overwrites AA-VERSION with this on what it forwards
HARP_KEY_HEADER: Final = "harp-shared-key"  # AppAPI's own calls through HaRP carry the key
_UCRED: Final = struct.Struct("3i")  # struct ucred: pid, uid, gid
_COMM_MAX: Final = 15  # TASK_COMM_LEN - 1


async def may_see_detail(request: web.Request) -> bool:
    """Details (errors, fingerprints, organisation, counts) only for a caller proven to be a
    Nextcloud administrator, or for a process inside this container (doctor). The valid secret
    with an empty user proves neither: AppAPI's PHP proxy adds it to every anonymous request to
    a PUBLIC route, and HaRP to every anonymous browser request."""
    identity = request[IDENTITY]
    if not identity.trusted:
        return False
    if identity.user_id:
        try:
            user = await request.app[USERS].lookup(identity.user_id)
        except NextcloudError:
            return False
        return user.is_admin
    return _local_caller(request)


def _local_caller(request: web.Request) -> bool:
    """A request that did not come through Nextcloud's proxy or HaRP:
    - never with `x-origin-ip`: AppAPI's PHP proxy sets it on every request it forwards;
    - legacy TCP: from a loopback address, and not with the AA-VERSION HaRP forces ("32") on
      what it forwards (HaRP's direct mode reaches a host-network ExApp over loopback);
    - HaRP: AppAPI's own call, proven by the HaRP shared key (a browser does not have it), or
      over the Unix socket from a process that is not frpc (everything HaRP forwards arrives
      through frpc): neither the frpc we run nor any process named like its binary (one we
      have not seen start yet, or one left over); unknown means frpc."""
    if ORIGIN_IP in request.headers:
        return False
    config = request.app[CONFIG]
    if config.harp:
        offered = request.headers.get(HARP_KEY_HEADER, "")
        if offered and hmac.compare_digest(
            offered.encode("utf-8", "surrogateescape"), config.hp_shared_key.encode("utf-8")
        ):
            return True
        peer = unix_peer_pid(request.transport)
        if peer is None:
            return False
        tunnel = request.app.get(TUNNEL_STATUS)
        if tunnel is not None and tunnel().get("pid") == peer:
            return False
        name = _process_name(peer)
        return name is not None and name != PurePath(config.frpc_bin).name[:_COMM_MAX]
    if request.headers.get("AA-VERSION", "").strip() == HARP_AA_VERSION:
        return False
    return _loopback_peer(request)


def _loopback_peer(request: web.Request) -> bool:
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    if not isinstance(peer, tuple) or not peer or not isinstance(peer[0], str):
        return False
    try:
        return ipaddress.ip_address(peer[0].split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _process_name(pid: int) -> str | None:
    """The kernel's name of a process (the executable's file name, cut at 15 characters)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None


def unix_peer_pid(transport: asyncio.BaseTransport | None) -> int | None:
    """The pid of the process at the other end of a Unix socket connection (SO_PEERCRED),
    None when it cannot be told (not a Unix socket, not Linux)."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or getattr(sock, "family", None) != socket.AF_UNIX:
        return None
    peercred = getattr(socket, "SO_PEERCRED", None)
    if peercred is None:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, peercred, _UCRED.size)
        pid, _uid, _gid = _UCRED.unpack(raw)
    except (OSError, struct.error):
        return None
    return int(pid) if pid > 0 else None
