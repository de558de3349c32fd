"""AppAPI lifecycle over real sockets against the fake Nextcloud: heartbeat, /init, /enabled,
progress reporting with the progress-100 callbacks, warm-up, boot probe and the failure budget."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from beeflow.app import make_app
from beeflow.config import Config
from beeflow.errors import NextcloudError
from beeflow.health import TUNNEL_STATUS
from beeflow.lifecycle import pipeline, unix_peer_pid
from beeflow.nextcloud import surface
from beeflow.nextcloud.budget import BUDGET_FILE
from beeflow.nextcloud.client import NEXTCLOUD
from beeflow.nextcloud.users import USERS
from beeflow.phases import INIT_PHASES, InitPhase
from tests.conftest import ConnectorFactory
from tests.fakes.nextcloud import FakeNextcloud
from tests.fakes.php_proxy import PhpProxy
from tests.helpers import SECRET, RunningConnector, appapi_headers, wait_for


class Phases:
    """Test phases that count their runs and can be slowed or made to fail."""

    def __init__(self) -> None:
        self.runs: list[str] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_at: int | None = None

    def install(self, app: web.Application) -> None:
        app[INIT_PHASES][:] = [
            InitPhase("bootstrap", 25, self._make("bootstrap", 25)),
            InitPhase("top-menu", 60, self._make("top-menu", 60)),
            InitPhase("script", 60, self._make("script", 60)),
            InitPhase("events", 100, self._make("events", 100)),
        ]

    def _make(self, name: str, progress: int) -> Callable[[], asyncio.Future[None]]:
        async def run() -> None:
            await self.gate.wait()
            self.runs.append(name)
            if self.fail_at == progress:
                raise RuntimeError(f"{name} broke")

        return run  # type: ignore[return-value]


@pytest.fixture
def phases() -> Phases:
    return Phases()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory for Unix sockets (their paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="bf"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def conn(connector_factory: ConnectorFactory, phases: Phases) -> RunningConnector:
    return await connector_factory(customise=phases.install)


async def test_heartbeat_is_public_fast_and_side_effect_free(
    conn: RunningConnector, fake_nc: FakeNextcloud
) -> None:
    before = len(fake_nc.calls)
    async with await conn.request("GET", "/heartbeat") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/json"
        assert resp.headers["Cache-Control"] == "no-store"
        body = await resp.json()
    assert body["status"] == "ok"
    assert "progress" not in body.get("init", {})
    assert len(fake_nc.calls) == before
    async with await conn.request("GET", "/heartbeat", user="") as resp:
        trusted = await resp.json()
    assert trusted["init"]["progress"] == 0


async def test_init_answers_at_once_and_reports_progress(
    conn: RunningConnector, fake_nc: FakeNextcloud, phases: Phases
) -> None:
    phases.gate.clear()
    started = time.monotonic()
    async with await conn.request("POST", "/init", user="") as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "ok"}
    assert time.monotonic() - started < 0.5
    phases.gate.set()
    await wait_for(lambda: any(p.get("progress") == 100 for p in fake_nc.progress))
    assert [p["progress"] for p in fake_nc.progress] == [25, 60, 100]
    assert sorted(phases.runs[1:3]) == ["script", "top-menu"]
    calls = fake_nc.calls_to("/ocs/v1.php/apps/app_api/ex-app/status", "PUT")
    assert all(c.user == "" and c.auth == "ok" for c in calls)


async def test_progress_100_callbacks_are_served_while_the_status_call_is_open(
    conn: RunningConnector, fake_nc: FakeNextcloud
) -> None:
    """Issue 10.4: NC calls /heartbeat and PUT /enabled inside the progress-100 request."""
    fake_nc.hold_progress_100 = 0.2
    async with await conn.request("POST", "/init", user="") as resp:
        assert resp.status == 200
    await wait_for(lambda: len(fake_nc.callbacks) == 2)
    heartbeat, enabled = fake_nc.callbacks
    assert (heartbeat.path, heartbeat.status) == ("/heartbeat", 200)
    assert (enabled.path, enabled.status) == ("/enabled?enabled=1", 200)
    assert enabled.body == '{"error":""}'
    assert enabled.finished - heartbeat.started < 5


async def test_concurrent_inits_join_one_run(
    conn: RunningConnector, fake_nc: FakeNextcloud, phases: Phases
) -> None:
    phases.gate.clear()
    answers = await asyncio.gather(*(conn.request("POST", "/init", user="") for _ in range(5)))
    for resp in answers:
        assert resp.status == 200
        resp.release()
    phases.gate.set()
    await wait_for(lambda: any(p.get("progress") == 100 for p in fake_nc.progress))
    assert phases.runs.count("bootstrap") == 1
    assert [p["progress"] for p in fake_nc.progress].count(100) == 1


async def test_failure_reports_progress_zero_with_the_error(
    conn: RunningConnector, fake_nc: FakeNextcloud, phases: Phases
) -> None:
    phases.fail_at = 60
    async with await conn.request("POST", "/init", user="") as resp:
        assert resp.status == 200
    await wait_for(lambda: any(p.get("error") for p in fake_nc.progress))
    assert fake_nc.progress[-1]["progress"] == 0
    assert "broke" in fake_nc.progress[-1]["error"]
    phases.fail_at = None
    async with await conn.request("POST", "/init", user="") as resp:
        assert resp.status == 200
    await wait_for(lambda: fake_nc.progress[-1].get("progress") == 100)


async def test_997_warm_up_is_retried(
    connector_factory: ConnectorFactory, fake_nc: FakeNextcloud, phases: Phases
) -> None:
    fake_nc.enabled = False  # registered but not enabled yet: refused without counting
    fake_nc.init_in_progress = False
    conn = await connector_factory(customise=phases.install)
    async with await conn.request("POST", "/init", user="") as resp:
        assert resp.status == 200
    await asyncio.sleep(0.7)
    fake_nc.enabled = True
    await wait_for(lambda: any(p.get("progress") == 100 for p in fake_nc.progress), 10)
    refused = [
        c for c in fake_nc.calls_to("/ocs/v1.php/apps/app_api/ex-app/status") if c.auth != "ok"
    ]
    assert refused, "the warm-up refusals were not exercised"
    assert fake_nc.failures_for() == 0


async def test_enabled_answers_error_empty(conn: RunningConnector) -> None:
    for value in ("1", "0"):
        async with await conn.request("PUT", f"/enabled?enabled={value}", user="") as resp:
            assert resp.status == 200
            assert await resp.json() == {"error": ""}


UNTRUSTED: list[tuple[dict[str, str], str]] = [
    ({}, "appapi_headers_missing"),
    (appapi_headers("", secret="nope"), "appapi_secret_mismatch"),
    (appapi_headers("admin", secret="nope"), "appapi_secret_mismatch"),
]


@pytest.mark.parametrize(("headers", "code"), UNTRUSTED, ids=["none", "wrong", "wrong-admin"])
async def test_an_untrusted_init_runs_nothing(
    connector_factory: ConnectorFactory, phases: Phases, headers: dict[str, str], code: str
) -> None:
    """Every AppAPI sends its headers on /init (docs/appapi-wire.md, "Lifecycle calls"): a call
    without the secret is refused and starts no run, however often it comes."""
    conn = await connector_factory(customise=phases.install)
    phases.gate.clear()  # a run that started would still be running below
    nc = conn.app[NEXTCLOUD]
    nc.app_enabled = False
    for _ in range(5):
        async with await conn.request("POST", "/init", headers=headers) as resp:
            assert resp.status == 401
            assert (await resp.json())["code"] == code
    pipe = pipeline(conn.app)
    assert (pipe.running, pipe.run_info.runs, pipe.run_info.state) == (False, 0, "idle")
    assert nc.app_enabled is False
    # AppAPI's own call does start it (the same check can see a run).
    async with await conn.request("POST", "/init", user="") as resp:
        assert resp.status == 200
    assert pipe.running
    phases.gate.set()
    await wait_for(lambda: pipe.run_info.state == "done")


@pytest.mark.parametrize(("headers", "code"), UNTRUSTED, ids=["none", "wrong", "wrong-admin"])
async def test_an_untrusted_disable_deletes_nothing(
    connector_factory: ConnectorFactory, headers: dict[str, str], code: str
) -> None:
    """PUT /enabled?enabled=0 runs every surface's teardown (deleting the webhook rows...): only
    AppAPI's own call may, the answer coming after the teardown."""
    torn_down: list[str] = []

    async def teardown() -> None:
        torn_down.append("example")

    def install(app: web.Application) -> None:
        surface.install(
            app, surface.Surface(name="example", phases=[], health=lambda _: {}, teardown=teardown)
        )

    conn = await connector_factory(customise=install)
    nc = conn.app[NEXTCLOUD]
    nc.app_enabled = True
    for value in ("0", "1"):
        async with await conn.request("PUT", f"/enabled?enabled={value}", headers=headers) as resp:
            assert resp.status == 401
            assert (await resp.json())["code"] == code
    assert torn_down == []
    assert nc.app_enabled is True
    async with await conn.request("PUT", "/enabled?enabled=0", user="") as resp:
        assert await resp.json() == {"error": ""}
    assert torn_down == ["example"]  # answered once the teardown is done
    assert nc.app_enabled is False


async def test_boot_before_registration_probes_once_and_waits(
    connector_factory: ConnectorFactory, fake_nc: FakeNextcloud, phases: Phases
) -> None:
    """Issue 11.1: manual-install order (connector first, `occ app_api:app:register` later)."""
    fake_nc.registered = False
    conn = await connector_factory(customise=phases.install, run_at_boot=True)
    await wait_for(lambda: len(fake_nc.calls) >= 1)
    await asyncio.sleep(0.3)
    assert fake_nc.failures_for() == 1
    assert phases.runs == []
    async with await conn.request("GET", "/heartbeat") as resp:
        body = await resp.json()
    assert body["init"]["state"] == "skipped"
    # Registration, then AppAPI calls /init: the pipeline runs and reports.
    fake_nc.register()
    async with await conn.request("POST", "/init", user="") as resp:
        assert resp.status == 200
    await wait_for(lambda: any(p.get("progress") == 100 for p in fake_nc.progress))
    assert fake_nc.failures_for() == 0
    assert not fake_nc.is_locked()


async def test_failure_budget_stops_calls_far_below_the_lockout(
    connector_factory: ConnectorFactory, fake_nc: FakeNextcloud, phases: Phases
) -> None:
    """However many features want Nextcloud, refused logins stay under the budget."""
    fake_nc.registered = False
    conn = await connector_factory(customise=phases.install, run_at_boot=True)
    await wait_for(lambda: len(fake_nc.calls) >= 1)
    nc = conn.app[NEXTCLOUD]
    users = conn.app[USERS]
    for uid in ("admin", "alice", "bob", "carol", "dave", "erin", "frank"):
        users.forget(uid)
        with contextlib.suppress(NextcloudError):
            await users.lookup(uid)
    with pytest.raises(NextcloudError) as refused:
        await nc.report_progress(10)
    assert refused.value.kind == "auth_budget_spent"
    assert fake_nc.failures_for() == nc.budget.limit
    assert fake_nc.failures_for() < fake_nc.lockout_threshold
    assert not fake_nc.is_locked()
    async with await conn.request("GET", "/heartbeat") as resp:
        anonymous = await resp.json()
    assert anonymous["appapiAuth"] == {"spent": True}
    assert "occ security:bruteforce:reset" in nc.budget.snapshot()["remedy"]
    # Registered now; the next AppAPI call proves the secret and resets the budget.
    fake_nc.register()
    async with await conn.request("POST", "/init", headers=appapi_headers("")) as resp:
        assert resp.status == 200
    await wait_for(lambda: any(p.get("progress") == 100 for p in fake_nc.progress))
    assert not nc.budget.spent


async def test_boot_while_disabled_waits_for_enable_then_runs(
    connector_factory: ConnectorFactory, fake_nc: FakeNextcloud, phases: Phases
) -> None:
    """Review P2-4: ex-app/state answers a disabled app (data 0); every other call would be
    refused. Enabling from the UI sends heartbeat + PUT /enabled?enabled=1 and no /init."""
    fake_nc.enabled = False
    fake_nc.init_in_progress = False
    conn = await connector_factory(customise=phases.install, run_at_boot=True)
    await wait_for(lambda: len(fake_nc.calls) >= 1)

    async def heartbeat() -> dict[str, Any]:
        async with await conn.request("GET", "/heartbeat", user="") as resp:
            data: dict[str, Any] = await resp.json()
        return data

    await wait_for(lambda: conn.app[NEXTCLOUD].app_enabled is False)
    body = await heartbeat()
    assert body["init"]["state"] == "skipped"
    assert body["init"]["waitingFor"] == "the app to be enabled in Nextcloud"
    assert [c.path for c in fake_nc.calls] == ["/ocs/v1.php/apps/app_api/ex-app/state"]
    assert phases.runs == []
    assert conn.app[NEXTCLOUD].budget.used == 0
    fake_nc.enabled = True
    async with await conn.request("PUT", "/enabled?enabled=1", user="") as resp:
        assert await resp.json() == {"error": ""}
    await wait_for(lambda: pipeline(conn.app).run_info.state == "done")
    assert phases.runs.count("bootstrap") == 1
    assert conn.app[NEXTCLOUD].app_enabled is True
    assert "waitingFor" not in (await heartbeat())["init"]


async def test_enabling_reruns_a_failed_run_but_not_a_finished_one(
    conn: RunningConnector, phases: Phases
) -> None:
    phases.fail_at = 60
    pipe = pipeline(conn.app)
    pipe.trigger("boot", init=False)
    await wait_for(lambda: pipe.run_info.state == "failed")
    phases.fail_at = None
    async with await conn.request("PUT", "/enabled?enabled=1", user="") as resp:
        assert resp.status == 200
    await wait_for(lambda: pipe.run_info.state == "done")
    assert pipe.run_info.runs == 2
    async with await conn.request("PUT", "/enabled?enabled=1", user="") as resp:
        assert resp.status == 200
    async with await conn.request("PUT", "/enabled?enabled=0", user="") as resp:
        assert resp.status == 200
    assert pipe.run_info.runs == 2  # done stays done; disabling runs nothing
    assert conn.app[NEXTCLOUD].app_enabled is False


# ------------------------------------------------------------------ who sees the heartbeat's detail

ADMIN_APPAPI = appapi_headers("admin")
SERVICE_APPAPI = appapi_headers("")
HARP_KEY = "harp-key-for-heartbeat-tests"


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        pytest.param({}, False, id="AppAPI's liveness check (no credentials)"),
        pytest.param(SERVICE_APPAPI, True, id="in the container (doctor): secret, loopback"),
        pytest.param(
            {**SERVICE_APPAPI, "x-origin-ip": "203.0.113.9"},
            False,
            id="anonymous through the PHP proxy: secret, empty user, x-origin-ip",
        ),
        pytest.param(
            {**SERVICE_APPAPI, "x-origin-ip": ""}, False, id="x-origin-ip present but empty"
        ),
        pytest.param(
            {**SERVICE_APPAPI, "AA-VERSION": "32"},
            False,
            id="anonymous through HaRP's direct mode (AA-VERSION forced to 32)",
        ),
        pytest.param(appapi_headers("alice"), False, id="a user who is not an admin"),
        pytest.param(ADMIN_APPAPI, True, id="an administrator"),
        pytest.param(
            {**ADMIN_APPAPI, "x-origin-ip": "203.0.113.9"}, True, id="an administrator, proxied"
        ),
        pytest.param(
            appapi_headers("", secret="wrong" * 20), False, id="a wrong secret, empty user"
        ),
        pytest.param(
            appapi_headers("admin", secret="wrong" * 20), False, id="a wrong secret, admin"
        ),
    ],
)
async def test_heartbeat_details_only_for_administrators_and_the_container(
    conn: RunningConnector, headers: dict[str, str], detail: bool
) -> None:
    """Issue 19 (3a): AppAPI's PHP proxy adds the secret with an empty user to anonymous requests
    (and HaRP does too): an empty user proves nothing about the caller."""
    async with await conn.request("GET", "/heartbeat", headers=headers) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["status"] == "ok"
    assert body["init"]["state"] == "idle"
    assert ("progress" in body["init"]) is detail
    assert ("source" in body["bootstrap"]) is detail


async def test_heartbeat_detail_needs_a_confirmed_admin(
    conn: RunningConnector, fake_nc: FakeNextcloud
) -> None:
    """The admin check is the ADMIN routes' (an OCS lookup as that user); when it cannot be
    made, the caller gets the states."""
    await fake_nc.stop()
    async with await conn.request("GET", "/heartbeat", headers=ADMIN_APPAPI) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["status"] == "ok"
    assert "progress" not in body["init"]


def _own_name() -> str:
    return Path(f"/proc/{os.getpid()}/comm").read_text().strip()


@pytest.mark.parametrize(
    ("frpc_pid", "frpc_bin", "detail"),
    [
        pytest.param("other", "frpc", True, id="frpc is another process: we are local"),
        pytest.param("none", "frpc", True, id="frpc not running: we are local all the same"),
        pytest.param("ours", "frpc", False, id="we are the frpc the supervisor runs"),
        pytest.param("other", "own-name", False, id="we are named like the frpc binary"),
        pytest.param("none", "own-name", False, id="named like frpc, none running"),
    ],
)
async def test_heartbeat_over_the_harp_socket_trusts_local_processes_not_frpc(
    make_config: Callable[..., Config],
    short_dir: Path,
    frpc_pid: str,
    frpc_bin: str,
    detail: bool,
) -> None:
    """HaRP mode: everything HaRP forwards arrives through frpc, with the secret and an empty
    user for anonymous visitors; a process in the container (doctor) connects itself."""
    sock = str(short_dir / "hb.sock")
    config = make_config(
        HP_SHARED_KEY=HARP_KEY,
        HP_FRP_ADDRESS="127.0.0.1",
        HP_EXAPP_SOCK=sock,
        BEEFLOW_FRPC_BIN=str(short_dir / (_own_name() if frpc_bin == "own-name" else frpc_bin)),
    )
    app = make_app(config, run_at_boot=False)
    pid = {"ours": os.getpid(), "other": os.getpid() + 100_000, "none": None}[frpc_pid]
    app[TUNNEL_STATUS] = lambda: {"state": "connected", "pid": pid}
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.UnixSite(runner, sock).start()
    try:
        async with (
            aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=sock)) as session,
            session.get("http://localhost/heartbeat", headers=SERVICE_APPAPI) as resp,
        ):
            body = await resp.json()
        assert ("progress" in body["init"]) is detail
        async with (
            aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=sock)) as session,
            session.get(
                "http://localhost/heartbeat",
                headers={**SERVICE_APPAPI, "x-origin-ip": "203.0.113.9"},
            ) as resp,
        ):
            body = await resp.json()
        assert "progress" not in body["init"]  # AppAPI's PHP proxy, via HaRP
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("extra", "detail"),
    [
        pytest.param({"harp-shared-key": HARP_KEY}, True, id="AppAPI's own call via HaRP"),
        pytest.param({"harp-shared-key": "guessed"}, False, id="a wrong HaRP key"),
        pytest.param(
            {"harp-shared-key": HARP_KEY, "x-origin-ip": "203.0.113.9"},
            False,
            id="the PHP proxy's forward via HaRP (anonymous visitor)",
        ),
    ],
)
async def test_heartbeat_through_frpc_trusts_only_appapis_own_calls(
    make_config: Callable[..., Config],
    short_dir: Path,
    extra: dict[str, str],
    detail: bool,
) -> None:
    """Through frpc (here: this process plays it) only the HaRP shared key proves the caller is
    AppAPI itself; AppAPI's PHP proxy also sends it, with x-origin-ip, for anonymous visitors."""
    sock = str(short_dir / "hk.sock")
    config = make_config(HP_SHARED_KEY=HARP_KEY, HP_FRP_ADDRESS="127.0.0.1", HP_EXAPP_SOCK=sock)
    app = make_app(config, run_at_boot=False)
    app[TUNNEL_STATUS] = lambda: {"state": "connected", "pid": os.getpid()}
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.UnixSite(runner, sock).start()
    try:
        async with (
            aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=sock)) as session,
            session.get("http://localhost/heartbeat", headers={**SERVICE_APPAPI, **extra}) as resp,
        ):
            body = await resp.json()
        assert ("progress" in body["init"]) is detail
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_the_unix_peer_pid_is_read_on_both_event_loops(short_dir: Path, loop_name: str) -> None:
    """serve runs on uvloop when installed: its transports must give SO_PEERCRED too."""
    if loop_name == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    path = str(short_dir / f"{loop_name}.sock")
    seen: list[int | None] = []

    class Capture(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            seen.append(unix_peer_pid(transport))
            transport.close()

    async def main() -> None:
        server = await asyncio.get_running_loop().create_unix_server(Capture, path)
        async with server:
            _, writer = await asyncio.open_unix_connection(path)
            await wait_for(lambda: bool(seen))
            writer.close()

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    assert seen == [os.getpid()]


# ------------------------------------------------------------------ progress from every run


async def test_a_boot_run_reports_its_progress_through_100(
    connector_factory: ConnectorFactory, fake_nc: FakeNextcloud, phases: Phases
) -> None:
    """AppAPI may be waiting at progress 0 for an /init that never reached us;
    the boot run's reports take it to 100 (AppAPI ignores them once init is 100)."""
    # The run waits until the fake knows where to call back: the connector's address is known
    # only once it listens, and a report of 100 before then would find nobody to call.
    phases.gate.clear()
    conn = await connector_factory(customise=phases.install, run_at_boot=True)
    phases.gate.set()
    # The fake records the report of 100, then calls us back inside it (as AppAPI runs its
    # enable inside that request): wait for those calls, then check everything is exactly so.
    await asyncio.wait_for(fake_nc.enable_called_back.wait(), 60)
    assert [p["progress"] for p in fake_nc.progress] == [25, 60, 100]
    assert [(c.method, c.path, c.status) for c in fake_nc.callbacks] == [
        ("GET", "/heartbeat", 200),
        ("PUT", "/enabled?enabled=1", 200),
    ]
    assert all("error" not in p for p in fake_nc.progress)
    assert pipeline(conn.app).run_info.trigger == "boot"


async def test_a_failed_boot_run_reports_no_error(
    connector_factory: ConnectorFactory, fake_nc: FakeNextcloud, phases: Phases
) -> None:
    """An error (progress 0) would mark an installed app failed: only /init's runs send one."""
    phases.fail_at = 60
    conn = await connector_factory(customise=phases.install, run_at_boot=True)
    await wait_for(lambda: pipeline(conn.app).run_info.state == "failed")
    assert [p["progress"] for p in fake_nc.progress] == [25]
    assert all("error" not in p for p in fake_nc.progress)


async def test_refusals_on_record_stop_the_boot_probe(
    connector_factory: ConnectorFactory, fake_nc: FakeNextcloud, phases: Phases, storage: Path
) -> None:
    """Issue 19 (3b): the count outlives a restart. With the budget spent on record, boot makes
    no call at all; AppAPI's /init (the app registered) lets the pipeline through."""
    now = time.time()
    record = [{"at": now - 60 * n, "user": "", "attempts": 2} for n in range(4)]
    (storage / BUDGET_FILE).write_text(json.dumps({"version": 1, "refusals": record}))
    fake_nc.registered = False
    conn = await connector_factory(customise=phases.install, run_at_boot=True)
    await wait_for(lambda: pipeline(conn.app).boot_blocked)
    assert fake_nc.calls == []
    assert conn.app[NEXTCLOUD].budget.attempts == 8
    fake_nc.register()
    async with await conn.request("POST", "/init", user="") as resp:
        assert resp.status == 200
    await wait_for(lambda: any(p.get("progress") == 100 for p in fake_nc.progress))
    assert conn.app[NEXTCLOUD].budget.attempts == 0
    await wait_for(lambda: json.loads((storage / BUDGET_FILE).read_text())["refusals"] == [])


async def test_heartbeat_through_the_php_proxy_stand_in(conn: RunningConnector) -> None:
    """The same rule through the fake PHP proxy (the lane checks the real one): anonymous
    visitors and users get the states, an administrator the details."""
    proxy = PhpProxy(conn.url, secret=SECRET)
    await proxy.start()
    try:
        async with aiohttp.ClientSession() as session:
            shown = {}
            for who, auth in (("anonymous", ""), ("alice", "alice:pw"), ("admin", "admin:pw")):
                headers = {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()}
                async with session.get(
                    proxy.proxy_url("/heartbeat"), headers=headers if auth else {}
                ) as resp:
                    assert resp.status == 200
                    body = await resp.json(content_type=None)
                shown[who] = "progress" in body["init"]
        assert proxy.forwarded[0].headers["x-origin-ip"]
        assert shown == {"anonymous": False, "alice": False, "admin": True}
    finally:
        await proxy.stop()


# ------------------------------------------------------------------ shutdown


async def test_a_run_still_going_at_shutdown_is_cancelled_before_any_clean_up(
    connector_factory: ConnectorFactory, fake_nc: FakeNextcloud
) -> None:
    """The app stops while a phase waits on Nextcloud: the run is cancelled at the shutdown
    signal, before a feature's clean-up closes what the phase uses (a feature's clean-up is
    registered after lifecycle's, so it runs first), and no run starts afterwards."""
    entered = asyncio.Event()
    phase_ended: list[str] = []
    seen_at_clean_up: list[bool] = []

    async def slow_phase() -> None:
        entered.set()
        try:
            await asyncio.Event().wait()  # a Nextcloud call that does not answer
        except asyncio.CancelledError:
            phase_ended.append("cancelled")
            raise

    def install(app: web.Application) -> None:
        app[INIT_PHASES][:] = [InitPhase("slow", 25, slow_phase)]

        async def feature(app: web.Application) -> AsyncIterator[None]:
            yield
            seen_at_clean_up.append(pipeline(app).running)

        app.cleanup_ctx.append(feature)

    conn = await connector_factory(customise=install)
    pipe = pipeline(conn.app)
    async with await conn.request("POST", "/init", user="") as resp:
        assert resp.status == 200
    await asyncio.wait_for(entered.wait(), 10)
    await conn.close()
    assert phase_ended == ["cancelled"]
    assert seen_at_clean_up == [False]
    assert not pipe.running
    runs = pipe.run_info.runs
    assert pipe.trigger("trusted-request", init=False) is None
    assert (pipe.running, pipe.run_info.runs) == (False, runs)
    assert len(fake_nc.progress) == 0  # nothing was reported for the cancelled run
