"""Which frpc runs: a binary that cannot be found or run is a clear start-up error, and what
`frpc -v` says is compared with the pin (a warning, never a hang)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from beeflow.config import Config
from beeflow.transports.frpc.binary import DEFAULT_PIN_FILE, PINNED_VERSION, FrpcError, read_pin
from beeflow.transports.frpc.supervisor import FrpcSupervisor


@pytest.mark.parametrize("kind", ["missing", "not-executable", "directory"])
async def test_unusable_binary_is_a_clear_startup_error(
    make_harp_config: Callable[..., Config], sockdir: Path, kind: str
) -> None:
    target = sockdir / "frpc-x"
    if kind == "not-executable":
        target.write_text("#!/bin/sh\n")
        target.chmod(0o644)
    elif kind == "directory":
        target.mkdir()
    sup = FrpcSupervisor(make_harp_config(BEEFLOW_FRPC_BIN=str(target)), sockdir / "s.sock")
    with pytest.raises(FrpcError) as err:
        await sup.start()
    message = str(err.value)
    assert str(target) in message
    assert "BEEFLOW_FRPC_BIN" in message
    assert {"missing": "not found", "not-executable": "not executable", "directory": "directory"}[
        kind
    ] in message
    assert sup.restarts == 0
    assert not sup.running


async def test_missing_from_path_names_the_pinned_version(
    make_harp_config: Callable[..., Config], sockdir: Path
) -> None:
    sup = FrpcSupervisor(make_harp_config(BEEFLOW_FRPC_BIN="frpc-nowhere"), sockdir / "s.sock")
    with pytest.raises(FrpcError, match=r"'frpc-nowhere' not found.*0\.61\.1"):
        await sup.preflight()


@pytest.mark.parametrize(
    ("reported", "warns"), [("0.61.1", False), ("0.62.0", True), ("0.68.0", True)]
)
async def test_version_mismatch_warns(
    make_harp_config: Callable[..., Config],
    sockdir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    reported: str,
    warns: bool,
) -> None:
    monkeypatch.setenv("FAKE_FRPC_VERSION", reported)
    sup = FrpcSupervisor(make_harp_config(), sockdir / "s.sock")
    await sup.check_version()
    assert sup.version == reported
    mismatch = [r for r in caplog.records if "pins 0.61.1" in r.getMessage()]
    assert bool(mismatch) is warns
    if warns:
        assert reported in mismatch[0].getMessage()
        assert mismatch[0].levelno == logging.WARNING


async def test_version_from_an_explicit_pin_file(
    make_harp_config: Callable[..., Config],
    sockdir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    pin = sockdir / "pin.toml"
    pin.write_text('version = "0.60.0"\n')
    sup = FrpcSupervisor(make_harp_config(BEEFLOW_FRPC_PIN_FILE=str(pin)), sockdir / "s.sock")
    await sup.check_version()
    assert any("pins 0.60.0" in r.getMessage() for r in caplog.records)
    caplog.clear()
    pin.unlink()
    await sup.check_version()
    assert any("missing or unreadable" in r.getMessage() for r in caplog.records)


def test_default_pin_file_is_the_repos() -> None:
    assert read_pin(DEFAULT_PIN_FILE) == PINNED_VERSION


async def test_version_that_never_answers_is_a_warning_not_a_hang(
    make_harp_config: Callable[..., Config],
    sockdir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("FAKE_FRPC_VERSION_HANG", "1")
    sup = FrpcSupervisor(make_harp_config(), sockdir / "s.sock", version_timeout=0.5)
    began = time.monotonic()
    await sup.check_version()
    assert time.monotonic() - began < 3
    assert sup.version is None
    assert any("could not read the frpc version" in r.getMessage() for r in caplog.records)
