"""Replicas behind a real load balancer: connector processes (`python -m beeflow serve`) sharing
one storage directory, behind Debian's HAProxy in round-robin with a readiness check on /ready,
in front of the fake Nextcloud and the fake Bee Flow service (in this process, on loopback).
What a Kubernetes Service does for the pods of the app, on one node."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import aiohttp
import attrs
import pytest
from yarl import URL

from tests.fakes.nextcloud import FakeNextcloud
from tests.fakes.service import FakeService
from tests.fakes.service_control import ServiceControl
from tests.helpers import APP_ID, SECRET
from tests.procs import Launcher, ServeProcess

# HaRP's own balancer shape, plus what a Service's endpoint removal does: a server is taken out
# when two readiness checks 100 ms apart fail, and back in after two pass.
HAPROXY_CONFIG: Final = """
global
    maxconn 4096
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout check 1s
    option redispatch
    retries 3
    retry-on conn-failure
frontend replicas
    bind 127.0.0.1:{port}
    default_backend connectors
backend connectors
    balance roundrobin
    option httpchk GET /ready
    http-check expect status 200
    default-server inter 100ms fall 2 rise 2
{servers}
"""


def haproxy_binary() -> str:
    found = shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None
    )
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("haproxy is not installed (scripts/test installs Debian's haproxy)")
        pytest.skip("haproxy is not installed (apt-get install haproxy)")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def appapi(uid: str = "") -> dict[str, str]:
    """What AppAPI (or HaRP, for a browser) adds to a request: the secret, with a user or not."""
    token = base64.b64encode(f"{uid}:{SECRET}".encode()).decode()
    return {
        "AUTHORIZATION-APP-API": token,
        "EX-APP-ID": APP_ID,
        "EX-APP-VERSION": "1.0.0",
        "AA-VERSION": "32",  # HaRP's stamp: these requests come through a balancer, streamed
    }


@attrs.define
class Replica:
    name: str
    port: int
    proc: ServeProcess

    @property
    def url(self) -> URL:
        return URL(f"http://127.0.0.1:{self.port}")

    @property
    def pid(self) -> int:
        return self.proc.proc.pid


@attrs.define
class Cluster:
    nextcloud: FakeNextcloud
    service: FakeService
    storage: Path
    env: dict[str, str]
    launcher: Launcher
    replicas: list[Replica]
    lb_port: int
    session: aiohttp.ClientSession

    @property
    def control(self) -> ServiceControl:
        return self.service.control

    @property
    def url(self) -> URL:
        return URL(f"http://127.0.0.1:{self.lb_port}")

    async def start_replica(self, name: str, port: int) -> Replica:
        proc = await self.launcher.start({**self.env, "APP_PORT": str(port)})
        return Replica(name, port, proc)

    async def wait_listening(self, replica: Replica) -> None:
        await replica.proc.wait_line("ready in", timeout=30)

    async def wait_in_rotation(self, replica: Replica, timeout: float = 10.0) -> None:
        """Until the balancer sends to it (its /ready passed twice)."""
        async with asyncio.timeout(timeout):
            while True:
                seen = set()
                for _ in range(len(self.replicas) * 2):
                    seen.add(await self.who(""))
                if replica.name in seen:
                    return
                await asyncio.sleep(0.05)

    async def who(self, uid: str) -> str:
        """Which replica answers the next request through the balancer."""
        async with self.session.get(self.url / "heartbeat", headers=appapi(uid)) as resp:
            await resp.read()
            return resp.headers.get("X-Test-Replica", "?")

    async def heartbeat(self, replica: Replica) -> dict[str, Any]:
        """A replica's heartbeat, straight (a loopback caller with the secret sees details)."""
        headers = {**appapi(""), "AA-VERSION": "32.0.0"}
        async with self.session.get(replica.url / "heartbeat", headers=headers) as resp:
            body: dict[str, Any] = await resp.json()
            return body

    def lease_holder_pid(self, name: str) -> int | None:
        path = self.storage / "leases" / f"{name}.lease"
        try:
            holder = json.loads(path.read_text())["holder"]
        except (OSError, ValueError, KeyError):
            return None
        return int(holder.split(":")[1])


@asynccontextmanager
async def cluster(
    count: int = 3,
    *,
    extra_env: dict[str, str] | None = None,
    control: ServiceControl | None = None,
) -> AsyncIterator[Cluster]:
    """`count` replicas started together on one fresh storage, the balancer in front; all torn
    down at the end (no process left behind). The service knows no key until it issues one
    (unless `control` says otherwise)."""
    binary = haproxy_binary()
    nc = FakeNextcloud(secret=SECRET)
    nc.add_user("admin", email="admin@example.com", display_name="Ada Admin", groups=["admin"])
    nc.add_user("alice", email="alice@example.com", display_name="Alice", groups=["staff"])
    service = FakeService(control=control or ServiceControl(verify_key=None))
    root = Path(tempfile.mkdtemp(prefix="bfrep", dir="/tmp"))
    launcher = Launcher()
    lb: asyncio.subprocess.Process | None = None
    session = aiohttp.ClientSession()
    try:
        await nc.start()
        await service.start()
        storage = root / "data"
        storage.mkdir()
        lb_port = free_port()
        env = {
            "APP_ID": APP_ID,
            "APP_SECRET": SECRET,
            "APP_VERSION": "1.0.0",
            "APP_HOST": "127.0.0.1",
            "APP_PERSISTENT_STORAGE": str(storage),
            "NEXTCLOUD_URL": str(nc.url),
            "BEEFLOW_API_BASE_URL": str(service.url),
            "BEEFLOW_TENANT_KEY": "auto",
            "BEEFLOW_EMBED_BASE_URL": "bundled",
            "BEEFLOW_LEASE_TTL_SECONDS": "3",
            "BEEFLOW_SYNC_INTERVAL_SECONDS": "3600",
            "BEEFLOW_LOG_LEVEL": "info",
            **(extra_env or {}),
        }
        ports = [free_port() for _ in range(count)]
        names = [f"r{n}" for n in range(count)]
        config = root / "haproxy.cfg"
        servers = "\n".join(
            f"    server {name} 127.0.0.1:{port} check"
            for name, port in zip(names, ports, strict=True)
        )
        # Which replica answered: the balancer names its server in each response.
        config.write_text(
            HAPROXY_CONFIG.format(port=lb_port, servers=servers)
            + "    http-response set-header X-Test-Replica %[srv_name]\n"
        )
        nc.set_connector(url=f"http://127.0.0.1:{lb_port}")
        replicas = list(
            await asyncio.gather(
                *(
                    _start(launcher, env, name, port)
                    for name, port in zip(names, ports, strict=True)
                )
            )
        )
        lb = await asyncio.create_subprocess_exec(
            binary, "-f", str(config), "-db", stdout=asyncio.subprocess.DEVNULL
        )
        world = Cluster(nc, service, storage, env, launcher, replicas, lb_port, session)
        for replica in replicas:
            await world.wait_listening(replica)
        yield world
    finally:
        await session.close()
        if lb is not None and lb.returncode is None:
            lb.send_signal(signal.SIGTERM)
            await lb.wait()
        await launcher.close()
        await service.stop()
        await nc.stop()
        shutil.rmtree(root, ignore_errors=True)


async def _start(launcher: Launcher, env: dict[str, str], name: str, port: int) -> Replica:
    return Replica(name, port, await launcher.start({**env, "APP_PORT": str(port)}))
