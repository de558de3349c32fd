"""`python -m beeflow serve` as a real process: transports, signals and the shutdown order."""

from __future__ import annotations

import os
import signal
import socket
import stat
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from beeflow.config import Config
from beeflow.tasks import spawn
from beeflow.transports import harp
from tests.fakes.frp import FakeFrps, events, free_port, pid_alive, wait_gone
from tests.helpers import appapi_headers, base_env
from tests.procs import Launcher, ServeProcess
from tests.transports.conftest import SHARED_KEY, UNREACHABLE_NC, harp_env

Starter = Callable[..., Awaitable[ServeProcess]]
# The real CLI plus a request that stays in flight on demand (for the shutdown tests).
SLOW_SERVE = Path(__file__).with_name("slow_serve.py")


@pytest.fixture
def serve_proc(launcher: Launcher) -> Starter:
    """Start `serve`; slow_routes: through the wrapper with a request that stays in flight."""

    async def start(env: dict[str, str], *args: str, slow_routes: bool = False) -> ServeProcess:
        return await launcher.start(env, *args, script=SLOW_SERVE if slow_routes else None)

    return start


@pytest.fixture
def env_harp(
    sockdir: Path, frpc_bin: Path, frps: FakeFrps, storage: Path, record: Path
) -> dict[str, str]:
    return harp_env(
        sockdir,
        frpc_bin,
        frps.port,
        storage,
        FAKE_FRPC_RECORD=str(record),
        BEEFLOW_SHUTDOWN_GRACE_SECONDS="5",
    )


def exists(path: str) -> bool:
    return os.path.exists(path)


def tunnel(env: dict[str, str], path: str) -> str:
    """The URL HaRP would use: frps's port (the stand-in binds it) -> frpc -> our socket."""
    return f"http://127.0.0.1:{env['APP_PORT']}{path}"


async def get(
    url: str, *, timeout: float = 5.0, **kw: Any
) -> tuple[int, dict[str, Any], dict[str, str]]:
    connector = aiohttp.TCPConnector(force_close=True)
    async with (
        aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as session,
        session.get(url, **kw) as resp,
    ):
        return resp.status, await resp.json(), dict(resp.headers)


async def unix_get(path: str, url_path: str, **kw: Any) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=path)) as session,
        session.get(f"http://localhost{url_path}", **kw) as resp,
    ):
        return resp.status, await resp.json()


# ---------------------------------------------------------------------- TCP


async def test_tcp_serve_heartbeat_then_sigterm_exits_0(serve_proc: Starter, storage: Path) -> None:
    port = free_port()
    env = base_env(UNREACHABLE_NC, storage, APP_PORT=str(port))
    proc = await serve_proc(env)
    listening_at, line = await proc.wait_line("listening on")
    assert f"http://127.0.0.1:{port} (legacy mode)" in line
    status, body, _ = await get(f"http://127.0.0.1:{port}/heartbeat")
    assert status == 200
    assert body["status"] == "ok"
    assert "tunnel" not in body  # no tunnel in TCP mode
    proc.send(signal.SIGTERM)
    assert await proc.wait_exit() == 0
    assert proc.find("stopped")
    assert "Traceback" not in proc.text
    assert listening_at - proc.spawned_at < 10


async def test_tcp_port_in_use_exits_1_without_traceback(
    serve_proc: Starter, storage: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = base_env(UNREACHABLE_NC, storage, APP_PORT=str(taken.getsockname()[1]))
        proc = await serve_proc(env)
        assert await proc.wait_exit() == 1
    assert "cannot start: cannot listen on" in proc.text
    assert "Traceback" not in proc.text


# ---------------------------------------------------------------------- HaRP


async def test_harp_serves_on_the_socket_and_through_the_tunnel(
    serve_proc: Starter, env_harp: dict[str, str], record: Path, frps: FakeFrps
) -> None:
    sock = env_harp["HP_EXAPP_SOCK"]
    proc = await serve_proc(env_harp)
    listening_at, line = await proc.wait_line("listening on")
    assert f"unix:{sock} (harp mode)" in line
    await proc.wait_line("start proxy success")
    assert stat.S_IMODE(os.lstat(sock).st_mode) == 0o600
    # Directly on the socket, untrusted: the tunnel's state only.
    status, body = await unix_get(sock, "/heartbeat")
    assert status == 200
    assert body["status"] == "ok"
    assert body["tunnel"] == {"state": "connected"}
    # With the AppAPI secret: the supervisor's details.
    status, body = await unix_get(sock, "/heartbeat", headers=appapi_headers(""))
    tunnel_info = body["tunnel"]
    assert tunnel_info["mode"] == "harp"
    assert tunnel_info["running"] is True
    assert tunnel_info["restarts"] == 0
    assert tunnel_info["pid"] == events(record, "start")[0]["pid"]
    assert SHARED_KEY not in str(body)
    # Through the tunnel, as HaRP reaches us.
    status, body, _ = await get(tunnel(env_harp, "/heartbeat"))
    assert status == 200
    assert frps.logins[0]["token"] == SHARED_KEY
    # The config frpc was given: 0600, the bound socket, in memory (frpc's own descriptor of
    # an anonymous file: nothing on disk holds the key, before or after the stop).
    start = events(record, "start")[0]
    assert start["config_mode"] == "0o600"
    assert start["socket_listening"] is True
    frpc_config = proc.find("start frpc service for config file")[0][1]
    config_path = frpc_config.rsplit("[", 1)[1].rstrip("]")
    assert config_path.startswith("/proc/self/fd/")
    proc.send(signal.SIGTERM)
    assert await proc.wait_exit() == 0
    assert not exists(sock)
    assert [names for _, _, names in os.walk(env_harp["TMPDIR"]) if names] == []
    assert SHARED_KEY not in proc.text
    assert "Traceback" not in proc.text
    assert listening_at - proc.spawned_at < 10


async def test_missing_frpc_exits_nonzero_at_once(
    serve_proc: Starter, env_harp: dict[str, str], sockdir: Path
) -> None:
    env = {**env_harp, "BEEFLOW_FRPC_BIN": str(sockdir / "no-such-frpc")}
    proc = await serve_proc(env)
    assert await proc.wait_exit(timeout=15) == 1
    assert "cannot start: frpc binary" in proc.text
    assert "not found" in proc.text
    assert "Traceback" not in proc.text
    assert "restarting" not in proc.text
    assert not exists(env["HP_EXAPP_SOCK"])


async def test_shutdown_order_with_a_request_in_flight(
    serve_proc: Starter, env_harp: dict[str, str], record: Path
) -> None:
    """On SIGTERM keep listening, answer new requests 503, let the in-flight one
    finish, THEN stop frpc, THEN close and remove the socket; exit 0; nobody left hanging."""
    sock = env_harp["HP_EXAPP_SOCK"]
    proc = await serve_proc(env_harp, slow_routes=True)
    await proc.wait_line("start proxy success")
    assert events(record, "start")[0]["socket_listening"] is True  # listen, then frpc

    slow = spawn(get(tunnel(env_harp, "/test/slow?seconds=1.0&tag=inflight")), name="t-slow")
    await proc.wait_line("slow request inflight started")
    proc.send(signal.SIGTERM)
    await proc.wait_line("draining 1 in-flight request(s)")

    # While draining: still listening, new work refused with 503 shutting_down.
    status, body, headers = await get(tunnel(env_harp, "/heartbeat"))
    assert (status, body["code"]) == (503, "shutting_down")
    assert headers.get("Retry-After") == "5"
    status, body = await unix_get(sock, "/heartbeat")
    assert (status, body["code"]) == (503, "shutting_down")

    # Meanwhile a caller keeps knocking through the tunnel until the end: every attempt must
    # end promptly (an answer or a refused connection), none may hang (frp 0.61.x would hang
    # a caller dialled to a closed socket: that must never happen).
    outcomes: list[tuple[float, str]] = []

    async def knock() -> None:
        while proc.proc.returncode is None:
            began = time.monotonic()
            try:
                status, _, _ = await get(tunnel(env_harp, "/heartbeat"), timeout=3)
                outcome = str(status)
            except TimeoutError:  # first: aiohttp's timeouts are connection errors too
                outcome = "HUNG"
            except aiohttp.ClientConnectionError:
                outcome = "refused"
            outcomes.append((time.monotonic() - began, outcome))

    knocker = spawn(knock(), name="t-knock")

    status, body, _ = await slow  # the in-flight request completes, whole
    done_at = time.time()
    assert (status, body) == (200, {"slept": 1.0, "tag": "inflight"})
    assert await proc.wait_exit() == 0
    await knocker

    term = events(record, "term")
    assert len(term) == 1
    # frpc was stopped after the drain, while the socket still accepted connections...
    assert term[0]["t"] >= done_at - 0.05
    assert term[0]["socket_listening"] is True
    # ...and only then was the socket closed and removed.
    assert not exists(sock)
    assert not pid_alive(term[0]["pid"])
    assert "503" in {o for _, o in outcomes}, outcomes
    assert all(o in ("503", "refused") for _, o in outcomes), outcomes
    assert max(took for took, _ in outcomes) < 2.0
    # The precise check: frpc never dialled a closed socket (the dial that hangs its caller).
    assert [e for e in events(record, "relay") if not e["ok"]] == []
    assert "dial to uds" not in proc.text
    stopped = [line for _, line in proc.lines]
    order = [
        next(i for i, line in enumerate(stopped) if needle in line)
        for needle in ("SIGTERM received", "draining 1", "slow request inflight finished")
    ] + [next(i for i, line in enumerate(stopped) if "frpc stopped" in line)]
    assert order == sorted(order)
    assert "Traceback" not in proc.text


async def test_grace_period_bounds_a_stuck_request(
    serve_proc: Starter, env_harp: dict[str, str], record: Path
) -> None:
    env = {**env_harp, "BEEFLOW_SHUTDOWN_GRACE_SECONDS": "0.5"}
    proc = await serve_proc(env, slow_routes=True)
    await proc.wait_line("start proxy success")
    stuck = spawn(get(tunnel(env, "/test/slow?seconds=30&tag=stuck"), timeout=10), name="t-stuck")
    await proc.wait_line("slow request stuck started")
    began = time.monotonic()
    proc.send(signal.SIGTERM)
    assert await proc.wait_exit() == 0
    assert time.monotonic() - began < 4
    await proc.wait_line("still running after 0.5 s")
    with pytest.raises(aiohttp.ClientError):
        await stuck  # cut, not left hanging for 30 s
    assert not exists(env["HP_EXAPP_SOCK"])


async def test_worst_case_shutdown_stays_within_its_budget(
    serve_proc: Starter, env_harp: dict[str, str], record: Path
) -> None:
    """A request stuck past the drain AND an frpc that ignores TERM: SIGTERM to exit stays
    within harp.shutdown_budget() (the sum the image keeps under `docker stop`'s 10 s), and
    everything is still cleaned up."""
    env = {
        **env_harp,
        "BEEFLOW_SHUTDOWN_GRACE_SECONDS": "0.5",
        "BEEFLOW_FRPC_STOP_GRACE_SECONDS": "0.5",
        "FAKE_FRPC_IGNORE_TERM": "1",
    }
    budget = harp.shutdown_budget(Config.from_env(env))
    proc = await serve_proc(env, slow_routes=True)
    await proc.wait_line("start proxy success")
    frpc_pid = events(record, "start")[0]["pid"]
    stuck = spawn(get(tunnel(env, "/test/slow?seconds=30&tag=stuck"), timeout=10), name="t-stuck")
    await proc.wait_line("slow request stuck started")
    began = time.monotonic()
    proc.send(signal.SIGTERM)
    assert await proc.wait_exit() == 0
    took = time.monotonic() - began
    assert took <= budget + 0.5, f"{took:.2f} s > budget {budget:.2f} s"  # + interpreter exit
    await proc.wait_line("ignored TERM")  # the KILL path really ran
    with pytest.raises(aiohttp.ClientError):
        await stuck
    assert await wait_gone(frpc_pid)
    assert not exists(env["HP_EXAPP_SOCK"])


async def test_second_sigint_exits_at_once_and_leaves_nothing(
    serve_proc: Starter, env_harp: dict[str, str], record: Path
) -> None:
    env = {**env_harp, "BEEFLOW_SHUTDOWN_GRACE_SECONDS": "30"}
    proc = await serve_proc(env, slow_routes=True)
    await proc.wait_line("start proxy success")
    frpc_pid = events(record, "start")[0]["pid"]
    slow = spawn(get(tunnel(env, "/test/slow?seconds=30&tag=held"), timeout=10), name="t-held")
    await proc.wait_line("slow request held started")
    proc.send(signal.SIGINT)
    await proc.wait_line("SIGINT received")
    assert proc.proc.returncode is None  # the first one drains (up to 30 s)
    began = time.monotonic()
    proc.send(signal.SIGINT)
    assert await proc.wait_exit() == 130
    assert time.monotonic() - began < 2
    with pytest.raises(aiohttp.ClientError):
        await slow
    assert await wait_gone(frpc_pid)
    assert not exists(env["HP_EXAPP_SOCK"])


async def test_frpc_crash_is_restarted_in_a_running_server(
    serve_proc: Starter, env_harp: dict[str, str], record: Path
) -> None:
    env = {**env_harp, "FAKE_FRPC_CRASH_TIMES": "2"}
    proc = await serve_proc(env)
    await proc.wait_line("start proxy success")
    assert len(events(record, "start")) == 3
    restarts = proc.find("restarting in")
    assert len(restarts) == 2
    assert "frpc exited with code 1" in restarts[0][1]
    # Through the tunnel only AppAPI's own calls (with the HaRP key) see the details.
    appapi = {**appapi_headers(""), "harp-shared-key": SHARED_KEY}
    _, body, _ = await get(tunnel(env, "/heartbeat"), headers=appapi)
    assert body["tunnel"]["restarts"] == 2
    assert body["tunnel"]["state"] == "connected"
    proc.send(signal.SIGTERM)
    assert await proc.wait_exit() == 0
