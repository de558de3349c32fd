"""The lane against the real Nextcloud: one server per run (session-scoped), the fake Bee Flow
service on loopback, and the connector registered from appinfo/info.xml the way the manual
install does it: connector first, restarted ten times before `occ app_api:app:register`
(which must still end), then registered with `--wait-finish` under a timeout.

Run it alone with `-m nextcloud`, skip it with `-m "not nextcloud"`. When Nextcloud cannot start
it skips, except under CI (`CI` set), where it fails."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import attrs
import pytest
from yarl import URL

from tests.integration.exapp import Connector, app_version, json_info, new_secret
from tests.integration.server import NcServer, Unavailable, free_port
from tests.integration.service import ServiceThread

APP_ID: Final = "bee_flow"
RESTARTS: Final = 10  # connector restarts before registration (the manual-install order)
REGISTER_TIMEOUT: Final = 120.0  # `--wait-finish` has none of its own
BOOT_DONE: Final = (
    "AppAPI refused the boot probe",
    "Not probing Nextcloud at boot",
    "Nextcloud not reachable at boot",
    "init pipeline started (boot)",
)
# A fresh install's users have no e-mail address. The bootstrap needs the admin's, and the
# service signs users in by e-mail (it refuses a JWT without one), so both get one; a user
# without one is the e-mail-less case, a third user its test adds itself.
EMAILS: Final = {"admin": "admin@example.com", "bob": "bob@example.com"}
# What the lane's set-up took, for the terminal summary (the lane's wall time is part of CI's).
TIMINGS: dict[str, float] = {}


@attrs.define
class RestartPhase:
    """What ten restarts before registration did to Nextcloud's brute-force counter."""

    attempts_after_each: list[int] = attrs.field(factory=list)
    boot_lines: list[str] = attrs.field(factory=list)
    attempts_before_register: int = 0
    reset_before_register: bool = False  # the lane had to clear a lock-out to go on
    seconds: float = 0.0


@attrs.define
class Registration:
    returncode: int | None
    output: str
    seconds: float
    attempts_after: int


@attrs.define
class Lane:
    """Everything the lane's tests share. `connector` is replaced when a test restarts it."""

    nc: NcServer
    service: ServiceThread
    root: Path
    secret: str
    port: int
    connector: Connector | None = None
    restarts: RestartPhase = attrs.field(factory=RestartPhase)
    registration: Registration | None = None
    timings: dict[str, float] = attrs.field(factory=dict)

    @property
    def storage(self) -> Path:
        return self.root / "data"

    @property
    def base(self) -> URL:
        """The connector as Nextcloud's PHP proxy serves it."""
        return self.nc.url / "index.php/apps/app_api/proxy" / APP_ID

    @property
    def direct(self) -> URL:
        return URL.build(scheme="http", host="127.0.0.1", port=self.port)

    @property
    def tenant_key(self) -> str:
        return self.service.tenant_key

    def env(self, **overrides: str) -> dict[str, str]:
        env = {
            "APP_ID": APP_ID,
            "APP_SECRET": self.secret,
            "APP_VERSION": app_version(),
            "APP_HOST": "127.0.0.1",
            "APP_PORT": str(self.port),
            "APP_PERSISTENT_STORAGE": str(self.storage),
            "NEXTCLOUD_URL": str(self.nc.url),
            "BEEFLOW_API_BASE_URL": str(self.service.url),
            # The bundled UI only: nothing in the lane may reach a front-end host on the internet.
            "BEEFLOW_EMBED_BASE_URL": "bundled",
            "BEEFLOW_TENANT_KEY": "auto",
            "BEEFLOW_SPOOL_DIR": str(self.root / "spool"),
            "BEEFLOW_SHUTDOWN_GRACE_SECONDS": "1",
            "BEEFLOW_LOG_LEVEL": "debug",
            "BEEFLOW_EVENT_LOOP": "asyncio",
        }
        env.update(overrides)
        return env

    def start_connector(self) -> Connector:
        assert self.connector is None or self.connector.proc.poll() is not None
        self.connector = Connector.start(self.env())
        self.connector.wait_line("listening on")
        return self.connector

    def stop_connector(self) -> None:
        if self.connector is not None:
            self.connector.stop()

    def register(
        self, *, timeout: float = REGISTER_TIMEOUT, info: dict[str, Any] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """`occ app_api:app:register --json-info <appinfo/info.xml> --wait-finish`."""
        info = info or json_info(self.secret, self.port)
        return self.nc.occ(
            "app_api:app:register",
            APP_ID,
            "manual_install",
            "--json-info",
            json.dumps(info),
            "--wait-finish",
            check=False,
            timeout=timeout,
        )

    def appapi_headers(self, user: str = "") -> dict[str, str]:
        token = base64.b64encode(f"{user}:{self.secret}".encode()).decode()
        return {
            "AUTHORIZATION-APP-API": token,
            "EX-APP-ID": APP_ID,
            "EX-APP-VERSION": app_version(),
            "AA-VERSION": "32.0.0",
            "OCS-APIRequest": "true",
        }


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"the real Nextcloud is required in CI and cannot start: {reason}")
    pytest.skip(f"the real Nextcloud cannot start here: {reason}")


@pytest.fixture(scope="session")
def nextcloud() -> Iterator[NcServer]:
    """The real server, once per run, in its own directory and on a free port."""
    try:
        server = NcServer.start()
    except (Unavailable, OSError, subprocess.TimeoutExpired) as exc:
        _unavailable(str(exc))
        raise  # unreachable: skip/fail raised
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def lane(nextcloud: NcServer) -> Iterator[Lane]:
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="beeflow-it-"))
    service = ServiceThread()
    lane = Lane(nextcloud, service, root, new_secret(), free_port())
    lane.timings["nextcloud_up"] = nextcloud.up_seconds
    try:
        nextcloud.reset_bruteforce()
        for user, email in EMAILS.items():
            nextcloud.occ("user:setting", user, "settings", "email", email)
        _restart_phase(lane)
        _register(lane)
        lane.timings["setup_after_up"] = time.monotonic() - started
        lane.timings["restarts"] = lane.restarts.seconds
        if lane.registration is not None:
            lane.timings["register"] = lane.registration.seconds
        TIMINGS.update(lane.timings)
        yield lane
    finally:
        lane.stop_connector()
        if lane.registration is not None:
            nextcloud.occ("app_api:app:unregister", APP_ID, "--force", check=False)
        service.stop()
        shutil.rmtree(root, ignore_errors=True)


def _restart_phase(lane: Lane) -> None:
    """The manual-install order: the connector runs before the app is registered, and an
    operator restarts it (ten times here) before `occ app_api:app:register`."""
    phase = lane.restarts
    started = time.monotonic()
    for _ in range(RESTARTS):
        connector = lane.start_connector()
        phase.boot_lines.append(connector.wait_line(*BOOT_DONE))
        lane.stop_connector()
        phase.attempts_after_each.append(lane.nc.attempts())
    phase.attempts_before_register = lane.nc.attempts()
    phase.seconds = time.monotonic() - started
    if phase.attempts_before_register > 10:
        # Locked out: the test on this phase fails; clear it so the rest of the lane can run.
        phase.reset_before_register = True
        lane.nc.reset_bruteforce()


def _register(lane: Lane) -> None:
    lane.start_connector()
    started = time.monotonic()
    try:
        done = lane.register()
        returncode: int | None = done.returncode
        output = done.stdout + done.stderr
    except subprocess.TimeoutExpired as exc:
        returncode, output = None, f"timed out: {exc}"
    lane.registration = Registration(
        returncode, output, time.monotonic() - started, lane.nc.attempts()
    )
    if returncode != 0:
        pytest.fail(
            f"registration failed ({returncode}):\n{output}\n--- connector:\n"
            + (lane.connector.text if lane.connector else "")
        )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TIMINGS:
        parts = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in TIMINGS.items())
        terminalreporter.write_line(f"real Nextcloud lane: {parts}")
