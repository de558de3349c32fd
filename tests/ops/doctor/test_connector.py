"""The connector running in this container, asked through its heartbeat: healthy, paused after
refused AppAPI logins, or with an exited tunnel."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from beeflow.config import Config
from beeflow.demo.loopback import serve_loopback
from beeflow.health import HEALTH
from beeflow.nextcloud.client import NEXTCLOUD
from beeflow.ops.doctor.connector import check_running, excerpt
from beeflow.ops.doctor.listener import tcp_listener_uids
from beeflow.ops.doctor.result import FAIL, PASS, WARN, Context
from tests.ops.doctor.conftest import Env, checks_of


async def _running(
    connector_factory: Any, env: Env, customise: Callable[[web.Application], None] | None = None
) -> Env:
    conn = await connector_factory(Config.from_env(env), customise=customise)
    return {**env, "APP_PORT": str(conn.url.port)}


async def test_a_running_connector_is_asked_how_it_is(env: Env, connector_factory: Any) -> None:
    running = await _running(connector_factory, env)
    check = (await checks_of(running))["connector"]
    assert check.status == PASS
    assert "healthy" in check.summary
    assert check.details["init"]["state"] in ("idle", "done", "running")


async def test_a_paused_connector_fails_with_the_bruteforce_remedy(
    env: Env, connector_factory: Any
) -> None:
    apps: list[web.Application] = []
    running = await _running(connector_factory, env, apps.append)
    budget = apps[0][NEXTCLOUD].budget
    for _ in range(budget.limit):
        budget.record_failure("GET /ocs/... -> HTTP 401 (OCS 997)")
    check = (await checks_of(running))["connector"]
    assert check.status == FAIL
    assert "paused" in check.summary
    assert "occ security:bruteforce:reset" in check.remedy
    # Asking (with the secret) did not lift the pause: the heartbeat has no side effects.
    assert budget.spent


async def test_an_exited_tunnel_fails(env: Env, connector_factory: Any) -> None:
    def tunnel(app: web.Application) -> None:
        app[HEALTH]["tunnel"] = lambda trusted: {
            "state": "exited",
            "last_error": "exit code 1",
        }

    running = await _running(connector_factory, env, tunnel)
    check = (await checks_of(running))["connector"]
    assert check.status == FAIL
    assert "frpc exited (exit code 1)" in check.summary


class Recorder:
    """A stand-in listener on a loopback port that records every request's headers and answers
    GET /heartbeat with `body`."""

    def __init__(self, body: str, content_type: str = "application/json") -> None:
        self.body, self.content_type = body, content_type
        self.seen: list[dict[str, str]] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def __aenter__(self) -> Recorder:
        async def answer(request: web.Request) -> web.Response:
            self.seen.append(dict(request.headers))
            return web.Response(text=self.body, content_type=self.content_type)

        app = web.Application()
        app.router.add_get("/heartbeat", answer)
        self.runner, url = await serve_loopback(app)
        self.port = int(url.port or 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()

    def saw_secret(self, secret: str) -> bool:
        return any(
            name.lower() == "authorization-app-api" or secret in value or secret in _decoded(value)
            for headers in self.seen
            for name, value in headers.items()
        )


def _decoded(value: str) -> str:
    try:
        return base64.b64decode(value.split()[-1] if value.split() else "").decode("latin-1")
    except ValueError:
        return ""


# What any beeflow answers anyone on /heartbeat (a stand-in can copy it).
PUBLIC_HEARTBEAT = json.dumps({"status": "ok", "init": {"state": "done", "progress": 100}})


def tables(directory: Path, port: int, uid: int) -> Path:
    """Kernel socket tables (the /proc/net/tcp format) listing one listener on 127.0.0.1:port,
    owned by `uid`, plus unrelated rows."""
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid"
    rows = [
        f"   0: 0100007F:{port:04X} 00000000:0000 0A 00000000:00000000 00:00000000 00000000 "
        f"{uid:5d}        0 1234 1",
        # The same port, but an established connection and another interface: not listeners
        # a connection to 127.0.0.1 reaches.
        f"   1: 0100007F:{port:04X} 0100007F:9999 01 00000000:00000000 00:00000000 00000000 "
        "    7        0 1235 1",
        f"   2: 0A00000A:{port:04X} 00000000:0000 0A 00000000:00000000 00:00000000 00000000 "
        "    8        0 1236 1",
    ]
    directory.mkdir(exist_ok=True)
    (directory / "tcp").write_text("\n".join([header, *rows]) + "\n")
    (directory / "tcp6").write_text(header + "\n")
    return directory


async def test_another_program_on_the_port_is_named_with_a_fix(env: Env) -> None:
    """Something else answers on APP_PORT: doctor says what it answered and what to do, and
    never sent it the secret (the anonymous probe came first)."""
    async with Recorder("<html><body>It works!</body></html>", content_type="text/html") as other:
        check = (await checks_of({**env, "APP_PORT": str(other.port)}))["connector"]
    port = other.port
    assert check.status == FAIL
    assert check.summary == (
        f"127.0.0.1:{port} answered GET /heartbeat with something other than this "
        "connector's heartbeat: HTTP 200, text/html; charset=utf-8: "
        "'<html><body>It works!</body></html>'"
    )
    assert check.remedy == (
        f"Another program listens on 127.0.0.1:{port}: stop it, or give this connector "
        "another APP_PORT (and register the app with that port)."
    )
    assert len(other.seen) == 1
    assert not other.saw_secret(env["APP_SECRET"])


async def test_another_users_listener_never_gets_the_secret(env: Env, tmp_path: Path) -> None:
    """A listener owned by another user that answers exactly like the connector's public
    heartbeat: doctor does not even connect, and says whose process it is."""
    async with Recorder(PUBLIC_HEARTBEAT) as imitator:
        config = Config.from_env({**env, "APP_PORT": str(imitator.port)})
        proc_net = tables(tmp_path / "net", imitator.port, 4242)
        check = await check_running(Context(config, timeout=5.0, proc_net=proc_net))
    assert check.status == FAIL
    assert f"a process of uid 4242 listens on 127.0.0.1:{imitator.port}" in check.summary
    assert "did not send it the AppAPI secret" in check.summary
    assert "run doctor as the user it runs as" in check.remedy
    assert imitator.seen == []


async def test_an_unknown_owner_gets_only_the_anonymous_probe(env: Env, tmp_path: Path) -> None:
    """No kernel tables to read (not Linux): the public heartbeat is asked, the secret kept."""
    async with Recorder(PUBLIC_HEARTBEAT) as imitator:
        config = Config.from_env({**env, "APP_PORT": str(imitator.port)})
        check = await check_running(Context(config, timeout=5.0, proc_net=tmp_path / "none"))
    assert check.status == WARN
    assert "did not send the AppAPI secret" in check.summary
    assert check.remedy
    assert len(imitator.seen) == 1
    assert not imitator.saw_secret(env["APP_SECRET"])


async def test_our_own_users_listener_is_asked_anonymously_first(env: Env) -> None:
    """The real kernel tables name this process's user: the secret follows, but only after an
    anonymous probe answered like the connector."""
    async with Recorder(PUBLIC_HEARTBEAT) as ours:
        config = Config.from_env({**env, "APP_PORT": str(ours.port)})
        check = await check_running(Context(config, timeout=5.0))
    assert check.status == PASS
    assert len(ours.seen) == 2
    first, second = ours.seen
    assert "AUTHORIZATION-APP-API" not in first
    assert "AUTHORIZATION-APP-API" in second


async def test_the_kernel_tables_name_the_listeners_owner(tmp_path: Path) -> None:
    async with Recorder(PUBLIC_HEARTBEAT) as ours:
        assert tcp_listener_uids(ours.port) == {os.geteuid()}
    proc_net = tables(tmp_path / "net", 8123, 4242)
    assert tcp_listener_uids(8123, proc_net) == {4242}
    assert tcp_listener_uids(8124, proc_net) == set()
    v6 = (
        "  sl  local_address                         remote_address                        st\n"
        "   0: 00000000000000000000000000000000:1FBB 00000000000000000000000000000000:0000 0A "
        "00000000:00000000 00:00000000 00000000  1001        0 77 1\n"
        "   1: 00000000000000000000000001000000:1FBB 00000000000000000000000000000000:0000 0A "
        "00000000:00000000 00:00000000 00000000  1002        0 78 1\n"
    )
    (proc_net / "tcp6").write_text(v6)
    # ::1 is not 127.0.0.1: only the wildcard row counts.
    assert tcp_listener_uids(8123, proc_net) == {4242, 1001}
    assert tcp_listener_uids(8123, tmp_path / "absent") is None


def test_an_answer_is_shown_as_one_short_printable_line() -> None:
    assert excerpt(b"") == "(empty body)"
    assert excerpt(b"a\r\n\tb\x00c") == "'a b c'"
    assert excerpt(b"x" * 500) == repr("x" * 120 + "...")
    assert excerpt(b"\xff\xfe") == repr("\ufffd\ufffd")
