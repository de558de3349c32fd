"""`python tests/reliability/soak_serve.py serve`: the real CLI plus one read-only stats route
(`GET /test/stats`: asyncio tasks, open descriptors, RSS, requests in flight) for the soak test.

Everything else (transport, middleware, proxies, signals) is the unmodified `beeflow.cli`."""

from __future__ import annotations

import asyncio
import gc
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from aiohttp import web

from beeflow import cli
from beeflow.app import make_app as real_make_app
from beeflow.config import CONFIG, Config
from beeflow.service_client import SERVICE_URL
from beeflow.web.auth import Access, add_route
from beeflow.web.draining import DRAINING
from beeflow.web.responses import json_response


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


def _sockets() -> dict[str, tuple[int, int, str]]:
    """socket inode -> (local port, remote port, state) for every TCP socket of this process."""
    out: dict[str, tuple[int, int, str]] = {}
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/self/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            local = int(parts[1].rsplit(":", 1)[1], 16)
            remote = int(parts[2].rsplit(":", 1)[1], 16)
            out[parts[9]] = (local, remote, parts[3])
    return out


def descriptors(app: web.Application) -> dict[str, int]:
    """Open descriptors by kind: accepted client connections, pooled upstream connections
    (to Nextcloud or the service), and everything else (files, pipes, listeners, epoll)."""
    config = app[CONFIG]
    upstream = {config.nextcloud_url.port, app[SERVICE_URL].url.port}
    sockets = _sockets()
    counts = {"total": 0, "clients": 0, "upstream": 0, "other": 0}
    for fd in os.listdir("/proc/self/fd"):
        counts["total"] += 1
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        info = sockets.get(target[8:-1]) if target.startswith("socket:[") else None
        if info is not None and info[2] != "0A" and info[0] == config.app_port:
            counts["clients"] += 1
        elif info is not None and info[1] in upstream:
            counts["upstream"] += 1
        else:
            counts["other"] += 1
    return counts


async def stats(request: web.Request) -> web.Response:
    if request.query.get("gc") == "1":
        gc.collect()
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    return json_response(
        {
            "tasks": len(tasks),
            "fds": descriptors(request.app),
            "rss_kib": rss_kib(),
            # This request is in flight itself.
            "in_flight": request.app[DRAINING].in_flight - 1,
        }
    )


def make_app(config: Config, **kw: Any) -> web.Application:
    app = real_make_app(config, **kw)
    add_route(app, "GET", "/test/stats", stats, Access.PUBLIC)
    return app


vars(cli)["make_app"] = make_app  # the one test seam: an extra read-only route

if __name__ == "__main__":
    sys.exit(cli.main())
