"""The CLI: --help, config errors (exit 2, every variable, no traceback, no secret), logging,
subcommand dispatch, demo mode. Real subprocesses where the process boundary matters."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from beeflow import cli
from beeflow.config import Config
from beeflow.redact import REDACTOR
from tests.fakes.frp import free_port
from tests.helpers import SECRET, base_env
from tests.ports import refused_url
from tests.procs import REPO, ServeProcess

UNREACHABLE_NC = refused_url()
Starter = Callable[..., Awaitable[ServeProcess]]


@pytest.fixture
async def run_cli() -> AsyncIterator[Starter]:
    procs: list[ServeProcess] = []

    async def start(env: Mapping[str, str], *args: str, command: str = "serve") -> ServeProcess:
        proc = await ServeProcess.start(env, *args, command=command)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        await proc.close()


# ---------------------------------------------------------------------- help


async def test_top_level_help_lists_the_commands(run_cli: Starter) -> None:
    proc = await run_cli({}, command="--help")
    assert await proc.wait_exit() == 0
    for command in ("serve", "doctor", "sign"):
        assert command in proc.text


async def test_serve_help(run_cli: Starter) -> None:
    proc = await run_cli({}, "--help")
    assert await proc.wait_exit() == 0
    for option in ("--log-level", "--log-format", "--demo", "HP_SHARED_KEY", "SIGTERM"):
        assert option in proc.text


def test_bad_log_level_option_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["serve", "--log-level", "loud"], {})
    assert exit_.value.code == 2
    assert "--log-level" in capsys.readouterr().err


# ---------------------------------------------------------------------- config errors


async def test_config_errors_in_a_real_process(run_cli: Starter) -> None:
    """One message naming every bad variable, exit 2, no traceback, no secret printed."""
    env = {
        "APP_SECRET": "",
        "APP_PORT": "eighty",
        "NEXTCLOUD_URL": "nextcloud.local",
        "HP_SHARED_KEY": 'secret "with" quotes',  # HaRP refuses `"`
        "BEEFLOW_TENANT_KEY": "tk-leak",
        "BEEFLOW_LOG_LEVEL": "loud",
    }
    proc = await run_cli(env)
    assert await proc.wait_exit() == 2
    text = proc.text
    assert text.startswith("configuration error (6 problem(s)):")
    for name in env:
        assert f"  {name}: " in text
    assert "Traceback" not in text
    assert "secret" not in text.replace("APP_SECRET", "")
    assert "tk-leak" not in text
    assert "'eighty'" in text  # non-secret values are shown to help


async def test_harp_without_address_is_a_config_error(run_cli: Starter, tmp_path: Path) -> None:
    env = base_env(UNREACHABLE_NC, tmp_path, HP_SHARED_KEY="abcdefgh12", HP_FRP_PORT="0")
    proc = await run_cli(env)
    assert await proc.wait_exit() == 2
    assert "HP_FRP_ADDRESS: is required in HaRP mode" in proc.text
    assert "HP_FRP_PORT: must be a whole number from 1 to 65535" in proc.text
    assert "abcdefgh12" not in proc.text


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("APP_SECRET", ""),
        ("NEXTCLOUD_URL", ""),
        ("APP_PORT", "99999"),
        ("HP_EXAPP_SOCK", "/tmp/" + "x" * 200),
        ("BEEFLOW_LOG_FORMAT", "xml"),
        ("BEEFLOW_FRPC_STOP_GRACE_SECONDS", "0"),
    ],
)
def test_each_config_error_exits_2(
    name: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = base_env(UNREACHABLE_NC, tmp_path, **{name: value})
    assert cli.main(["serve"], env) == 2
    err = capsys.readouterr().err
    assert f"  {name}: " in err
    assert err.count("\n  ") == 1  # only that one
    assert SECRET not in err


async def test_demo_with_bad_log_env_is_a_config_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["serve", "--demo"], {"BEEFLOW_LOG_LEVEL": "chatty"}) == 2
    assert "BEEFLOW_LOG_LEVEL" in capsys.readouterr().err


# ---------------------------------------------------------------------- logging


async def serve_briefly(run_cli: Starter, env: dict[str, str], *args: str) -> ServeProcess:
    proc = await run_cli(env, *args)
    await proc.wait_line("ready in")
    proc.send(signal.SIGTERM)
    assert await proc.wait_exit() == 0
    return proc


async def test_text_logs_by_default(run_cli: Starter, tmp_path: Path) -> None:
    proc = await serve_briefly(
        run_cli, base_env(UNREACHABLE_NC, tmp_path, APP_PORT=str(free_port()))
    )
    line = proc.find("listening on")[0][1]
    assert " INFO    beeflow.transports.base: listening on http://127.0.0.1:" in line


@pytest.mark.parametrize("how", ["option", "env"])
async def test_json_logs(run_cli: Starter, tmp_path: Path, how: str) -> None:
    env = base_env(UNREACHABLE_NC, tmp_path, APP_PORT=str(free_port()))
    args: tuple[str, ...] = ("--log-format", "json")
    if how == "env":
        env["BEEFLOW_LOG_FORMAT"] = "json"
        args = ()
    proc = await serve_briefly(run_cli, env, *args)
    records = [json.loads(line) for _, line in proc.lines]
    assert {"ts", "level", "logger", "msg"} <= set(records[0])
    listening = [r for r in records if r["msg"].startswith("listening on")]
    assert listening[0]["level"] == "info"
    assert listening[0]["logger"] == "beeflow.transports.base"


async def test_log_level_from_env_and_option(run_cli: Starter, tmp_path: Path) -> None:
    env = base_env(UNREACHABLE_NC, tmp_path, APP_PORT=str(free_port()), BEEFLOW_LOG_LEVEL="warning")
    proc = await run_cli(env)
    # Nothing at INFO is printed: wait for the port instead of the "listening" line.
    await wait_port(int(env["APP_PORT"]))
    proc.send(signal.SIGTERM)
    assert await proc.wait_exit() == 0
    assert not proc.find("listening on")
    assert not proc.find(" INFO ")
    # The option wins over the environment.
    env["APP_PORT"] = str(free_port())
    proc = await serve_briefly(run_cli, env, "--log-level", "debug")
    assert proc.find(" DEBUG ")


async def wait_port(port: int, timeout: float = 20) -> None:
    async def probe() -> None:
        while True:
            try:
                async with aiohttp.ClientSession() as session:
                    await session.get(f"http://127.0.0.1:{port}/heartbeat")
                return
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)  # a silent child: no line to wait for

    await asyncio.wait_for(probe(), timeout)


def test_redactor_is_installed_on_the_log_handler(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    config = Config.from_env(
        base_env(UNREACHABLE_NC, tmp_path, HP_SHARED_KEY="hp-key-0123456", HP_FRP_ADDRESS="harp")
    )
    cli.setup_logging("info", "text")
    try:
        assert REDACTOR in logging.getLogger().handlers[0].filters
        cli.register_secrets(config)
        logging.getLogger("beeflow.test").warning("secret %s and key %s", SECRET, "hp-key-0123456")
        err = capfd.readouterr().err
    finally:
        logging.getLogger().handlers[:] = []
    assert SECRET not in err
    assert "hp-key-0123456" not in err
    assert "secret *** and key ***" in err


# ---------------------------------------------------------------------- dispatch


def fake_module(name: str, seen: dict[str, Any]) -> types.ModuleType:
    module = types.ModuleType(name)

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--json", action="store_true")
        parser.add_argument("target", nargs="?")

    def run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
        seen.update(args=args, env=env)
        return 7

    module.add_arguments = add_arguments  # type: ignore[attr-defined]
    module.run = run  # type: ignore[attr-defined]
    return module


@pytest.mark.parametrize(
    ("command", "module"), [("doctor", "beeflow.ops.doctor"), ("sign", "beeflow.ops.sign")]
)
def test_subcommands_are_dispatched(
    command: str, module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setitem(sys.modules, module, fake_module(module, seen))
    env = {"APP_SECRET": "x"}
    assert cli.main([command, "--json", "thing"], env) == 7
    assert seen["args"].json is True
    assert seen["args"].target == "thing"
    assert seen["env"] is env


async def test_serve_does_not_import_the_other_commands(run_cli: Starter) -> None:
    code = (
        "import sys; from beeflow import cli; cli.build_parser('serve'); "
        "print(sorted(m for m in ('beeflow.ops.doctor', 'beeflow.ops.sign', 'beeflow.demo') "
        "if m in sys.modules))"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, cwd=REPO, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert out.decode().strip() == "[]"


# ---------------------------------------------------------------------- demo


async def test_demo_serves_prints_the_url_and_stops_the_stand_ins(run_cli: Starter) -> None:
    proc = await run_cli({}, "--demo")
    _, line = await proc.wait_line("Bee Flow demo: open ")
    url = line.split("open ", 1)[1].strip()
    assert url.startswith("http://127.0.0.1:")
    await proc.wait_line("ready in")
    port = int(proc.find("listening on http://127.0.0.1:")[0][1].rsplit(":", 1)[1].split()[0])
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/heartbeat") as resp,
    ):
        assert resp.status == 200
    proc.send(signal.SIGTERM)
    assert await proc.wait_exit() == 0
    assert "Traceback" not in proc.text


def test_fd_limit_is_raised_towards_the_hard_limit() -> None:
    import resource

    from beeflow.cli import raise_fd_limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        got = raise_fd_limit(4096)
        expected = 4096 if hard == resource.RLIM_INFINITY else min(4096, hard)
        assert got == expected
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == expected
        assert raise_fd_limit(128) == expected  # never lowered
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# ---------------------------------------------------------------------- the event loop


@pytest.mark.parametrize(
    ("choice", "expected"), [("auto", "uvloop"), ("uvloop", "uvloop"), ("asyncio", "asyncio")]
)
async def test_serve_runs_on_the_chosen_event_loop(
    run_cli: Starter, tmp_path: Path, choice: str, expected: str
) -> None:
    pytest.importorskip("uvloop")  # the test extras install it, as the image does
    env = base_env(UNREACHABLE_NC, tmp_path, APP_PORT=str(free_port()), BEEFLOW_EVENT_LOOP=choice)
    proc = await run_cli(env)
    line = (await proc.wait_line("ready in"))[1]
    assert f"(event loop: {expected})" in line
    async with aiohttp.ClientSession() as session:
        port = env["APP_PORT"]
        async with session.get(f"http://127.0.0.1:{port}/heartbeat") as resp:
            assert resp.status == 200
    proc.send(signal.SIGTERM)
    assert await proc.wait_exit() == 0


def test_auto_without_uvloop_is_asyncio_and_uvloop_without_it_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop -> ImportError
    assert cli.loop_factory("auto") is None
    assert cli.loop_factory("asyncio") is None
    env = base_env(UNREACHABLE_NC, tmp_path, BEEFLOW_EVENT_LOOP="uvloop")
    assert cli.main(["serve"], env) == 2
    assert "BEEFLOW_EVENT_LOOP: uvloop is not installed" in capsys.readouterr().err
