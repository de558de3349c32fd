"""The HaRP checks: the Unix socket, the frpc binary and its pin, frps, the frp certificates, and
APP_PORT against the ports HaRP's frps allows."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from beeflow.ops.doctor.result import FAIL, PASS, WARN
from tests.ops.doctor.conftest import Env, checks_of, closed_port, stub_frpc, write_certs


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
        path = stub_frpc(directory, "0.61.1")
        path.chmod(0o644)
        harp_env["BEEFLOW_FRPC_BIN"] = str(path)
    elif setup == "other-version":
        harp_env["BEEFLOW_FRPC_BIN"] = str(stub_frpc(directory, "0.58.0"))
    elif setup == "no-version":
        harp_env["BEEFLOW_FRPC_BIN"] = str(stub_frpc(directory, "frpc"))
    else:
        harp_env["BEEFLOW_FRPC_BIN"] = str(stub_frpc(directory, None, hang=True))
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
    write_certs(certs, skip=skip, empty=empty)
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
