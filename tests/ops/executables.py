"""Executables the ops tests run: the image's health check, and stand-in processes with a name of
their own (what the health check and the entrypoint look for)."""

from __future__ import annotations

import asyncio
import secrets
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from tests.fakes.frp import FAKE_FRPC
from tests.ops.dockerfile import ROOT
from tests.procs import child_env

HEALTHCHECK: Final = ROOT / "docker" / "healthcheck.py"


async def healthcheck(env: Mapping[str, str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(HEALTHCHECK),
        env=child_env(env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def unique_name(prefix: str = "frpc") -> str:
    """A process name nobody else on the machine uses (comm holds 15 bytes)."""
    return f"{prefix}-{secrets.token_hex(4)}"


def sleeper(directory: Path, name: str) -> Path:
    """An executable whose process is called `name` and just waits to be killed."""
    path = directory / name
    path.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(120)\n")
    path.chmod(0o755)
    return path


def frpc_launcher(directory: Path, name: str) -> Path:
    """An executable called `name` that runs the stand-in frpc IN its own process (no exec of
    another binary), so the process keeps the name the health check looks for."""
    path = directory / name
    path.write_text(
        f"#!{sys.executable}\n"
        "import runpy, sys\n"
        f"sys.argv[0] = {str(FAKE_FRPC)!r}\n"
        f"runpy.run_path({str(FAKE_FRPC)!r}, run_name='__main__')\n"
    )
    path.chmod(0o755)
    return path
