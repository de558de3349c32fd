"""`python -m beeflow doctor` against the fake Nextcloud, the fake Bee Flow service, a fake frps and
stand-in frpc binaries: every check passing and failing, one authenticated call at most, exit
codes, --json, and no secret in the output."""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from beeflow import doctor, keys, tenant
from beeflow.config import Config
from beeflow.doctor import FAIL, PASS, SKIP, WARN, Check
from tests.fakes.frp import FakeFrps
from tests.fakes.nextcloud import FakeNextcloud
from tests.fakes.service import FakeService
from tests.helpers import SECRET, TENANT_KEY, base_env
from tests.ops.procs import short_dir

SHARED_KEY = "hp-doctor-key-Xy42"
FILE_KEY = "tk_from_file_abcdef0123456789abcdef"
Env = dict[str, str]


@pytest.fixture
async def service() -> AsyncIterator[FakeService]:
    svc = FakeService()
    await svc.start()
    yield svc
    await svc.stop()


@pytest.fixture
def env(fake_nc: FakeNextcloud, service: FakeService, storage: Path) -> Env:
    """A complete legacy environment where every check passes."""
    return base_env(fake_nc.url, storage, BEEFLOW_API_BASE_URL=str(service.url))


@pytest.fixture
def tmp_short() -> Iterator[Path]:
    with short_dir() as path:
        yield path


async def checks_of(
    environ: Env, *, clock: Callable[[], float] = time.time, timeout: float = 5.0
) -> dict[str, Check]:
    checks, _ = await doctor.run_checks(environ, clock=clock, timeout=timeout)
    names = [c.name for c in checks]
    assert len(names) == len(set(names))
    return {c.name: c for c in checks}


def authenticated_calls(nc: FakeNextcloud) -> int:
    return sum(1 for c in nc.calls if "AUTHORIZATION-APP-API" in c.headers)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


LEGACY_CHECKS = [
    "config",
    "storage",
    "nextcloud",
    "nextcloud_version",
    "appapi_secret",
    "clock_nextcloud",
    "service",
    "clock_service",
    "tenant_key",
    "connector",
]
# No connector runs in these tests unless one is started: its check is skipped.
NOT_RUNNING = {"connector": SKIP}
HARP_CHECKS = ["harp_socket", "harp_port", "frpc", "frps", "frp_certs"]


# ------------------------------------------------------------------ everything passes


async def test_a_healthy_legacy_installation_passes_every_check(
    env: Env, fake_nc: FakeNextcloud
) -> None:
    checks = await checks_of(env)
    assert list(checks) == LEGACY_CHECKS
    assert {n: c.status for n, c in checks.items()} == {
        **dict.fromkeys(LEGACY_CHECKS, PASS),
        **NOT_RUNNING,
    }
    assert authenticated_calls(fake_nc) == 1
    assert "32.0.1" in checks["nextcloud_version"].summary
    assert checks["tenant_key"].details["fingerprint"] == tenant.fingerprint(TENANT_KEY)
    assert "HaRP is available" in checks["nextcloud_version"].summary


async def test_run_prints_lines_and_exits_zero(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await asyncio.to_thread(doctor.run, argparse.Namespace(json=False, timeout=5), env)
    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith("beeflow doctor ")
    for name in LEGACY_CHECKS:
        status = NOT_RUNNING.get(name, PASS).upper()
        assert any(line.startswith(status) and f" {name} " in line for line in out.splitlines())
    for secret in (SECRET, TENANT_KEY):
        assert secret not in out


async def test_json_output(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    code = await asyncio.to_thread(doctor.run, argparse.Namespace(json=True, timeout=5), env)
    body = json.loads(capsys.readouterr().out)
    assert code == 0
    assert body["ok"] is True
    assert body["counts"] == {"pass": len(LEGACY_CHECKS) - 1, "warn": 0, "fail": 0, "skip": 1}
    assert [c["name"] for c in body["checks"]] == LEGACY_CHECKS


# ------------------------------------------------------------------ config and storage


async def test_bad_config_fails_and_names_the_variables(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    env.update(APP_PORT="99999", NEXTCLOUD_URL="ftp://x", HP_SHARED_KEY='bad "quoted" key')
    code = await asyncio.to_thread(doctor.run, argparse.Namespace(json=True, timeout=5), env)
    body = json.loads(capsys.readouterr().out)
    assert code == 1
    (check,) = body["checks"]
    assert check["status"] == FAIL
    assert set(check["details"]["variables"]) >= {"APP_PORT", "NEXTCLOUD_URL", "HP_SHARED_KEY"}
    assert "bad key with spaces" not in json.dumps(body)


async def test_storage_that_is_not_a_directory_fails(env: Env, tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    env["APP_PERSISTENT_STORAGE"] = str(target)
    assert (await checks_of(env))["storage"].status == FAIL


async def test_storage_not_created_yet_warns(env: Env, tmp_path: Path) -> None:
    env["APP_PERSISTENT_STORAGE"] = str(tmp_path / "later")
    check = (await checks_of(env))["storage"]
    assert check.status == WARN
    assert "does not exist yet" in check.summary


async def test_storage_under_a_file_fails(env: Env, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    env["APP_PERSISTENT_STORAGE"] = str(tmp_path / "file" / "data")
    assert (await checks_of(env))["storage"].status == FAIL


# ------------------------------------------------------------------ Nextcloud


async def test_nextcloud_unreachable_fails_and_makes_no_authenticated_call(env: Env) -> None:
    env["NEXTCLOUD_URL"] = f"http://127.0.0.1:{closed_port()}"
    checks = await checks_of(env)
    assert checks["nextcloud"].status == FAIL
    assert "cannot connect" in checks["nextcloud"].summary
    assert "NEXTCLOUD_URL" in checks["nextcloud"].remedy
    for name in ("nextcloud_version", "appapi_secret", "clock_nextcloud"):
        assert checks[name].status == SKIP


async def test_a_server_that_is_not_nextcloud_fails(env: Env, service: FakeService) -> None:
    env["NEXTCLOUD_URL"] = str(service.url)  # answers 404 JSON to /status.php
    checks = await checks_of(env)
    assert checks["nextcloud"].status == FAIL
    assert "without Nextcloud's status" in checks["nextcloud"].summary


@pytest.fixture
async def status_php() -> AsyncIterator[Callable[..., Any]]:
    """A stand-in Nextcloud that only answers /status.php with the given fields."""
    runners: list[web.AppRunner] = []

    async def start(**status: Any) -> str:
        async def handler(request: web.Request) -> web.Response:
            body = {"installed": True, "maintenance": False, "versionstring": "32.0.1"}
            body.update(status)
            return web.json_response(body)

        app = web.Application()
        app.router.add_get("/status.php", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("status", "expected", "words"),
    [
        ({"maintenance": True}, FAIL, "maintenance"),
        ({"installed": False}, FAIL, "not installed"),
        ({"needsDbUpgrade": True}, WARN, "database upgrade"),
    ],
)
async def test_nextcloud_states(
    env: Env,
    status_php: Callable[..., Any],
    status: dict[str, Any],
    expected: str,
    words: str,
) -> None:
    env["NEXTCLOUD_URL"] = await status_php(**status)
    check = (await checks_of(env))["nextcloud"]
    assert check.status == expected
    assert words in check.summary


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("30.0.12", FAIL),
        ("31.0.9", PASS),
        ("33.0.0", WARN),
        ("33.0.1", PASS),
        ("34.0.2", PASS),
        ("35.0.0", FAIL),
    ],
)
async def test_nextcloud_version_range(env: Env, version: str, expected: str) -> None:
    nc = FakeNextcloud(secret=SECRET, version=version)
    await nc.start()
    try:
        env["NEXTCLOUD_URL"] = str(nc.url)
        check = (await checks_of(env))["nextcloud_version"]
    finally:
        await nc.stop()
    assert check.status == expected, check
    assert version in check.summary


def test_supported_range_is_the_manifests() -> None:
    from tests.manifest.manifest import load

    nc = load().find("dependencies/nextcloud")
    assert nc is not None
    assert (
        int(nc.attrib["min-version"]),
        int(nc.attrib["max-version"]),
    ) == (doctor.NC_MIN, doctor.NC_MAX)


# ------------------------------------------------------------------ the AppAPI secret


async def test_wrong_secret_fails_with_the_repair_and_costs_one_failed_login(
    env: Env, fake_nc: FakeNextcloud
) -> None:
    env["APP_SECRET"] = "not-the-secret-nextcloud-has"
    check = (await checks_of(env))["appapi_secret"]
    assert check.status == FAIL
    assert "occ app_api:app:unregister bee_flow" in check.remedy
    assert "occ app_api:app:register bee_flow" in check.remedy
    assert "occ security:bruteforce:reset 127.0.0.1" in check.remedy
    assert check.details["ocsStatus"] == 997
    assert authenticated_calls(fake_nc) == 1
    assert fake_nc.failures_for("127.0.0.1") == 1


async def test_an_unregistered_app_fails(env: Env, fake_nc: FakeNextcloud) -> None:
    fake_nc.registered = False
    check = (await checks_of(env))["appapi_secret"]
    assert check.status == FAIL
    assert "not registered" in check.summary
    assert authenticated_calls(fake_nc) == 1


async def test_a_locked_out_ip_fails_with_the_bruteforce_reset(
    env: Env, fake_nc: FakeNextcloud
) -> None:
    fake_nc.locked_until["127.0.0.1"] = time.monotonic() + 600
    check = (await checks_of(env))["appapi_secret"]
    assert check.status == FAIL
    assert "brute-force" in check.summary
    assert "occ security:bruteforce:reset 127.0.0.1" in check.remedy
    assert authenticated_calls(fake_nc) == 1


async def test_a_disabled_app_still_passes_the_secret_check(
    env: Env, fake_nc: FakeNextcloud
) -> None:
    fake_nc.enabled = False
    check = (await checks_of(env))["appapi_secret"]
    assert check.status == PASS
    assert "registered but disabled" in check.summary


async def test_never_more_than_one_authenticated_call_whatever_fails(
    env: Env, fake_nc: FakeNextcloud, service: FakeService
) -> None:
    env["APP_SECRET"] = "wrong-secret-for-this-check"
    env["BEEFLOW_TENANT_KEY"] = "auto"
    env["BEEFLOW_API_BASE_URL"] = f"http://127.0.0.1:{closed_port()}"
    await checks_of(env)
    assert authenticated_calls(fake_nc) == 1
    assert fake_nc.failures_for("127.0.0.1") == 1


# ------------------------------------------------------------------ clocks


@pytest.mark.parametrize(("offset", "expected"), [(0, PASS), (200, WARN), (-1000, FAIL)])
async def test_clock_skew_against_nextcloud_and_the_service(
    env: Env, offset: float, expected: str
) -> None:
    checks = await checks_of(env, clock=lambda: time.time() + offset)
    for name in ("clock_nextcloud", "clock_service"):
        assert checks[name].status == expected, checks[name]
        assert abs(checks[name].details["skewSeconds"] - offset) <= 2
    if expected == FAIL:
        assert "BEEFLOW_SIG_SKEW_SECONDS=300" in checks["clock_service"].remedy
        assert "behind" in checks["clock_nextcloud"].summary


async def test_the_allowed_skew_comes_from_the_config(env: Env) -> None:
    env["BEEFLOW_SIG_SKEW_SECONDS"] = "30"
    checks = await checks_of(env, clock=lambda: time.time() + 60)
    assert checks["clock_service"].status == FAIL


# ------------------------------------------------------------------ the Bee Flow service


async def test_service_unreachable_fails(env: Env) -> None:
    env["BEEFLOW_API_BASE_URL"] = f"http://127.0.0.1:{closed_port()}"
    checks = await checks_of(env)
    assert checks["service"].status == FAIL
    assert checks["clock_service"].status == SKIP
    assert checks["service"].details["source"] == "BEEFLOW_API_BASE_URL"


@pytest.mark.parametrize(
    ("answer", "words"),
    [
        (web.HTTPServiceUnavailable(), "HTTP 503"),
        (web.HTTPFound("https://elsewhere.example/api/health"), "redirects"),
    ],
)
async def test_service_unhealthy_fails(
    fake_nc: FakeNextcloud, storage: Path, answer: web.HTTPException, words: str
) -> None:
    async def health(request: web.Request) -> web.Response:
        raise answer

    svc = FakeService(extra_routes=[web.get("/api/health", health)])
    await svc.start()
    try:
        env = base_env(fake_nc.url, storage, BEEFLOW_API_BASE_URL=str(svc.url))
        check = (await checks_of(env))["service"]
    finally:
        await svc.stop()
    assert check.status == FAIL
    assert words in check.summary


async def test_the_service_url_follows_the_tenant_binding_then_the_setup_choice(
    fake_nc: FakeNextcloud, service: FakeService, storage: Path
) -> None:
    env = base_env(fake_nc.url, storage)  # no BEEFLOW_API_BASE_URL
    (storage / "setup-config.json").write_text(
        json.dumps({"mode": "self-hosted", "apiBaseUrl": str(service.url), "savedAt": 1})
    )
    check = (await checks_of(env))["service"]
    assert (check.status, check.details["source"]) == (PASS, "the setup page")
    (storage / tenant.KEY_FILE).write_text(
        json.dumps({"tenantKey": FILE_KEY, "boundApiBaseUrl": f"http://127.0.0.1:{closed_port()}"})
    )
    check = (await checks_of(env))["service"]
    assert check.status == FAIL
    assert check.details["source"].endswith("(bound)")


# ------------------------------------------------------------------ tenant key


def _write_key(storage: Path, mode: int = 0o600, **extra: Any) -> None:
    path = storage / tenant.KEY_FILE
    record = {"tenantKey": FILE_KEY, "organizationId": "org-1", "organizationName": "Acme"}
    record.update(extra)
    path.write_text(json.dumps(record))
    path.chmod(mode)


async def test_tenant_key_from_the_cache_file(env: Env, storage: Path) -> None:
    env["BEEFLOW_TENANT_KEY"] = "auto"
    _write_key(storage)
    check = (await checks_of(env))["tenant_key"]
    assert check.status == PASS
    assert check.details["fingerprint"] == tenant.fingerprint(FILE_KEY)
    assert "Acme" in check.summary


async def test_a_world_readable_key_file_warns(env: Env, storage: Path) -> None:
    env["BEEFLOW_TENANT_KEY"] = "auto"
    _write_key(storage, mode=0o644)
    check = (await checks_of(env))["tenant_key"]
    assert check.status == WARN
    assert "chmod 600" in check.remedy


@pytest.mark.parametrize(
    ("files", "words"),
    [
        ({}, "not provisioned yet"),
        ({tenant.KEY_FILE: "{broken"}, "not valid JSON"),
        ({tenant.KEY_FILE: '{"tenantKey": "short"}'}, "no usable tenantKey"),
        (
            {tenant.PENDING_FILE: '{"kind": "verification", "expiresAt": "2026-11-22T15:00:00Z"}'},
            "e-mail verification",
        ),
        (
            {
                tenant.ERROR_FILE: json.dumps(
                    {"status": "failed", "category": "admin_email_missing", "phase": "admin"}
                )
            },
            "admin_email_missing",
        ),
    ],
)
async def test_tenant_key_missing_states_fail(
    env: Env, storage: Path, files: dict[str, str], words: str
) -> None:
    env["BEEFLOW_TENANT_KEY"] = "auto"
    for name, content in files.items():
        (storage / name).write_text(content)
    check = (await checks_of(env))["tenant_key"]
    assert check.status == FAIL
    assert words in check.summary
    assert check.remedy
    if "admin_email_missing" in words:
        assert "e-mail" in check.remedy


async def test_no_secret_is_ever_printed(
    env: Env, storage: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env["BEEFLOW_TENANT_KEY"] = "auto"
    _write_key(storage)
    env["APP_SECRET"] = "wrong-" + SECRET[:40]
    for as_json in (False, True):
        await asyncio.to_thread(doctor.run, argparse.Namespace(json=as_json, timeout=5), env)
        captured = capsys.readouterr()
        for secret in (env["APP_SECRET"], FILE_KEY, SECRET):
            assert secret not in captured.out + captured.err


# ------------------------------------------------------------------ HaRP


def _stub_frpc(directory: Path, version_line: str | None, *, hang: bool = False) -> Path:
    path = directory / "frpc"
    body = "import time\ntime.sleep(60)\n" if hang else f"print({version_line!r})\n"
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(0o755)
    return path


@pytest.fixture
async def frps() -> AsyncIterator[FakeFrps]:
    server = await FakeFrps(token=SHARED_KEY).start()
    yield server
    await server.stop()


def _write_certs(directory: Path, skip: str = "", empty: str = "") -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("ca.crt", "client.crt", "client.key"):
        if name == skip:
            continue
        label = "PRIVATE KEY" if name.endswith(".key") else "CERTIFICATE"
        text = "" if name == empty else f"-----BEGIN {label}-----\nMIIB\n-----END {label}-----\n"
        (directory / name).write_text(text)


@pytest.fixture
def harp_env(env: Env, tmp_short: Path, frps: FakeFrps) -> Env:
    certs = tmp_short / "certs"
    _write_certs(certs)
    env.update(
        HP_SHARED_KEY=SHARED_KEY,
        HP_FRP_ADDRESS="127.0.0.1",
        HP_FRP_PORT=str(frps.port),
        HP_EXAPP_SOCK=str(tmp_short / "exapp.sock"),
        BEEFLOW_FRPC_BIN=str(_stub_frpc(tmp_short, "0.61.1")),
        BEEFLOW_FRP_CERT_DIR=str(certs),
    )
    return env


async def test_a_healthy_harp_installation_passes_every_check(
    harp_env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    checks = await checks_of(harp_env)
    assert list(checks) == LEGACY_CHECKS + HARP_CHECKS
    assert {n: c.status for n, c in checks.items()} == {
        **dict.fromkeys(LEGACY_CHECKS + HARP_CHECKS, PASS),
        **NOT_RUNNING,
    }
    assert "HaRP is available" not in checks["nextcloud_version"].summary
    code = await asyncio.to_thread(doctor.run, argparse.Namespace(json=False, timeout=5), harp_env)
    assert code == 0
    assert SHARED_KEY not in capsys.readouterr().out


def _leave_stale_socket(path: Path) -> None:
    path.unlink(missing_ok=True)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays, nothing listens


def _replace_with_file(path: Path) -> None:
    path.unlink()
    path.write_text("not a socket")


async def test_harp_socket_states(harp_env: Env, tmp_short: Path) -> None:
    sock = Path(harp_env["HP_EXAPP_SOCK"])
    # a listening server
    server = await asyncio.start_unix_server(lambda r, w: w.close(), path=str(sock))
    try:
        assert (await checks_of(harp_env))["harp_socket"].status == PASS
    finally:
        server.close()
        await server.wait_closed()
    # a stale socket file nobody listens on
    _leave_stale_socket(sock)
    check = (await checks_of(harp_env))["harp_socket"]
    assert check.status == WARN
    assert "stale" in check.summary
    # a regular file in the way
    _replace_with_file(sock)
    assert (await checks_of(harp_env))["harp_socket"].status == FAIL
    # a directory that cannot hold it
    harp_env["HP_EXAPP_SOCK"] = str(tmp_short / "missing-dir" / "s.sock")
    assert (await checks_of(harp_env))["harp_socket"].status == FAIL


@pytest.mark.parametrize(
    ("setup", "words"),
    [
        ("missing", "not found"),
        ("not-executable", "not executable"),
        ("other-version", "frpc 0.58.0, the pin is 0.61.1"),
        ("no-version", "printed no version"),
        ("hangs", "printed no version"),
    ],
)
async def test_frpc_binary_problems_fail(
    harp_env: Env, tmp_short: Path, setup: str, words: str
) -> None:
    directory = tmp_short / "bin"
    directory.mkdir()
    if setup == "missing":
        harp_env["BEEFLOW_FRPC_BIN"] = str(directory / "frpc")
    elif setup == "not-executable":
        path = _stub_frpc(directory, "0.61.1")
        path.chmod(0o644)
        harp_env["BEEFLOW_FRPC_BIN"] = str(path)
    elif setup == "other-version":
        harp_env["BEEFLOW_FRPC_BIN"] = str(_stub_frpc(directory, "0.58.0"))
    elif setup == "no-version":
        harp_env["BEEFLOW_FRPC_BIN"] = str(_stub_frpc(directory, "frpc"))
    else:
        harp_env["BEEFLOW_FRPC_BIN"] = str(_stub_frpc(directory, None, hang=True))
    check = (await checks_of(harp_env, timeout=1.0))["frpc"]
    assert check.status == FAIL
    assert words in check.summary
    assert "0.61.1" in check.remedy


async def test_frpc_version_is_compared_with_the_pin_file(harp_env: Env, tmp_short: Path) -> None:
    pin = tmp_short / "pin.toml"
    pin.write_text('version = "0.58.0"\n[sha256]\namd64 = "' + "0" * 64 + '"\n')
    harp_env["BEEFLOW_FRPC_PIN_FILE"] = str(pin)
    check = (await checks_of(harp_env))["frpc"]
    assert check.status == FAIL
    assert "the pin is 0.58.0" in check.summary


async def test_frps_unreachable_fails(harp_env: Env) -> None:
    harp_env["HP_FRP_PORT"] = str(closed_port())
    check = (await checks_of(harp_env))["frps"]
    assert check.status == FAIL
    assert "HP_FRP_ADDRESS" in check.remedy


@pytest.mark.parametrize(
    ("skip", "empty", "expected"),
    [("client.key", "", FAIL), ("", "ca.crt", FAIL), ("", "", PASS)],
)
async def test_frp_cert_directory(
    harp_env: Env, tmp_short: Path, skip: str, empty: str, expected: str
) -> None:
    certs = tmp_short / "certs2"
    _write_certs(certs, skip=skip, empty=empty)
    harp_env["BEEFLOW_FRP_CERT_DIR"] = str(certs)
    check = (await checks_of(harp_env))["frp_certs"]
    assert check.status == expected
    if expected == FAIL:
        assert "occ app_api:app:unregister bee_flow" in check.remedy
        assert (skip or empty) in check.summary


async def test_no_cert_directory_warns_about_plain_frp(harp_env: Env, tmp_short: Path) -> None:
    harp_env["BEEFLOW_FRP_CERT_DIR"] = str(tmp_short / "none")
    check = (await checks_of(harp_env))["frp_certs"]
    assert check.status == WARN
    assert "HP_FRP_DISABLE_TLS" in check.remedy


@pytest.mark.parametrize(
    ("port", "expected"),
    [
        ("23000", PASS),
        ("23999", PASS),
        ("24050", WARN),  # HaRP keeps 24000-24099 for Docker engines
        ("22999", FAIL),
        ("24100", FAIL),
        ("8080", FAIL),  # the legacy default: frps answers "port not allowed"
    ],
)
async def test_app_port_must_be_one_harps_frps_allows(
    harp_env: Env, port: str, expected: str
) -> None:
    harp_env["APP_PORT"] = port
    check = (await checks_of(harp_env))["harp_port"]
    assert check.status == expected, check
    assert check.details["port"] == int(port)
    if expected == FAIL:
        assert "23000-23999" in check.summary
        assert "port not allowed" in check.summary
        assert "occ app_api:app:unregister bee_flow" in check.remedy


async def test_harp_checks_only_run_in_harp_mode(env: Env) -> None:
    assert not set(HARP_CHECKS) & set(await checks_of(env))


async def test_the_exit_code_is_one_when_a_check_fails_and_zero_on_warnings(
    env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env["APP_PERSISTENT_STORAGE"] = str(tmp_path / "later")  # a warning only
    args = argparse.Namespace(json=False, timeout=5)
    assert await asyncio.to_thread(doctor.run, args, env) == 0
    env["BEEFLOW_API_BASE_URL"] = f"http://127.0.0.1:{closed_port()}"  # a failure
    assert await asyncio.to_thread(doctor.run, args, env) == 1
    out = capsys.readouterr().out
    assert "FAIL  service" in out
    assert "fix: The container must reach the Bee Flow service" in out


# ------------------------------------------------------------------ the running connector


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
    budget = apps[0][keys.NEXTCLOUD].budget
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
        app[keys.HEALTH]["tunnel"] = lambda trusted: {
            "state": "exited",
            "last_error": "exit code 1",
        }

    running = await _running(connector_factory, env, tunnel)
    check = (await checks_of(running))["connector"]
    assert check.status == FAIL
    assert "frpc exited (exit code 1)" in check.summary
