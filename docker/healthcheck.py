"""Docker HEALTHCHECK for the connector image. Exit 0 healthy, 1 unhealthy; one line of output.

Legacy mode (HP_SHARED_KEY empty): GET /heartbeat over TCP on APP_HOST:APP_PORT.
HaRP mode: GET /heartbeat over the Unix socket (HP_EXAPP_SOCK, default /tmp/exapp.sock) AND an
frpc process must be running: without the tunnel HaRP cannot reach the app, and HaRP waits at
most 90 s for the container to turn healthy (contract 5.3).

Standard library only and no import of beeflow, so it starts fast and reads no secret: it only
looks at whether HP_SHARED_KEY is set, never at its value.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Final

TIMEOUT: Final = 2.0
DEFAULT_SOCKET: Final = "/tmp/exapp.sock"  # noqa: S108 - fixed by AppAPI/HaRP


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def heartbeat(conn: http.client.HTTPConnection) -> str | None:
    """None when /heartbeat answers 200 with {"status": "ok"}, else why not."""
    try:
        conn.request("GET", "/heartbeat", headers={"Accept": "application/json"})
        response = conn.getresponse()
        body = response.read(65536)
    except (OSError, http.client.HTTPException) as exc:
        return f"/heartbeat unreachable: {type(exc).__name__}: {exc}"
    finally:
        conn.close()
    if response.status != 200:
        return f"/heartbeat answered HTTP {response.status}"
    try:
        status = json.loads(body).get("status")
    except (ValueError, AttributeError):
        return "/heartbeat answered something that is not a JSON object"
    if status != "ok":
        return f"/heartbeat status is {status!r}"
    return None


def tcp_target(env: Mapping[str, str]) -> tuple[str, int]:
    host = env.get("APP_HOST", "").strip() or "0.0.0.0"
    if host in ("0.0.0.0", "*"):
        host = "127.0.0.1"
    elif host in ("::", "[::]"):
        host = "::1"
    port_text = env.get("APP_PORT", "").strip() or "8080"
    return host.strip("[]"), int(port_text)


def process_running(name: str, proc: Path = Path("/proc")) -> bool:
    """A live (not zombie) process whose command name or argv[0] is `name`."""
    comm_name = name[:15]  # the kernel truncates comm to 15 bytes
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            comm = (entry / "comm").read_text().strip()
            argv0 = (entry / "cmdline").read_bytes().split(b"\0", 1)[0].decode(errors="replace")
        except OSError:
            continue  # exited while we looked
        state = stat[stat.rfind(")") + 2 : stat.rfind(")") + 3]
        if state in ("Z", "X"):
            continue
        if comm == comm_name or os.path.basename(argv0) == name:
            return True
    return False


def check(env: Mapping[str, str]) -> str | None:
    """None when healthy, else the reason."""
    if env.get("HP_SHARED_KEY", "").strip():
        sock = env.get("HP_EXAPP_SOCK", "").strip() or DEFAULT_SOCKET
        problem = heartbeat(UnixHTTPConnection(sock, TIMEOUT))
        if problem is not None:
            return f"HaRP mode: {problem} (socket {sock})"
        frpc = os.path.basename(env.get("BEEFLOW_FRPC_BIN", "").strip() or "frpc")
        if not process_running(frpc):
            return f"HaRP mode: no running {frpc} process: the tunnel to HaRP is down"
        return None
    try:
        host, port = tcp_target(env)
    except ValueError:
        return "legacy mode: APP_PORT is not a number"
    problem = heartbeat(http.client.HTTPConnection(host, port, timeout=TIMEOUT))
    if problem is not None:
        return f"legacy mode: {problem} ({host}:{port})"
    return None


def main() -> int:
    problem = check(os.environ)
    if problem is None:
        sys.stdout.write("healthy\n")
        return 0
    sys.stdout.write(f"unhealthy: {problem}\n")
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
