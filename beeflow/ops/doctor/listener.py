"""Who listens where the connector should: the user owning the listening socket, read without
connecting, so that doctor sends the AppAPI secret only to a process that could read it anyway.

    tcp_listener_uids(port, proc_net) -> set of uids | None
        the owners of every socket listening on `port` that a connection to 127.0.0.1 could
        reach (127.0.0.1, 0.0.0.0, ::, ::ffff:127.0.0.1, ::ffff:0.0.0.0), from the kernel's
        tables in /proc/net/tcp and tcp6; empty when none listens there; None when the
        tables cannot be read (not Linux, /proc hidden)
    unix_listener_uid(path) -> uid | None   the socket file's owner
    trusted_uids() -> {our effective uid, root}

A process of our own user can read doctor's environment, and root can read everything: neither
learns anything from the secret. Any other user's process must not get it (outside a container
anyone may listen on APP_PORT once the connector is stopped).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

LISTEN: Final = "0A"  # TCP_LISTEN in the tables' `st` column
# The local addresses (as the tables write them) a connection to 127.0.0.1 reaches.
_REACHABLE_V4: Final = frozenset({"0100007F", "00000000"})
_REACHABLE_V6: Final = frozenset(
    {
        "00000000000000000000000000000000",  # ::
        "0000000000000000FFFF00000100007F",  # ::ffff:127.0.0.1
        "0000000000000000FFFF000000000000",  # ::ffff:0.0.0.0
    }
)
PROC_NET: Final = Path("/proc/net")


def _table_uids(text: str, port: int, reachable: frozenset[str]) -> set[int]:
    uids: set[int] = set()
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8 or fields[3] != LISTEN:
            continue
        address, _, port_hex = fields[1].partition(":")
        try:
            if int(port_hex, 16) != port or address.upper() not in reachable:
                continue
            uids.add(int(fields[7]))
        except ValueError:
            continue
    return uids


def tcp_listener_uids(port: int, proc_net: Path = PROC_NET) -> set[int] | None:
    tables = ((proc_net / "tcp", _REACHABLE_V4), (proc_net / "tcp6", _REACHABLE_V6))
    found: set[int] = set()
    read_any = False
    for path, reachable in tables:
        try:
            text = path.read_text(encoding="ascii", errors="replace")
        except OSError:
            continue
        read_any = True
        found |= _table_uids(text, port, reachable)
    return found if read_any else None


def unix_listener_uid(path: Path) -> int | None:
    try:
        return path.lstat().st_uid
    except OSError:
        return None


def trusted_uids() -> frozenset[int]:
    return frozenset({os.geteuid(), 0})
