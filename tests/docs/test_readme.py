"""The README's set-up commands work as written on Debian's and Ubuntu's own Python, which
refuses `pip install` outside a virtual environment (PEP 668: `externally-managed-environment`).

They run here with Debian's python3 (its stdlib carries the EXTERNALLY-MANAGED marker;
scripts/test installs python3 and python3-venv from apt when run as root) in a copy of the
checkout, with a PATH holding only the system's directories: no `python` of ours, no virtual
environment, none of the connector's variables. First `./scripts/test --fast` in that copy
(which must make its own .venv), then the README's demo block until the demo prints its URL and
serves the UI, then Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Final

import aiohttp
import pytest

from tests.procs import REPO

pytestmark = [pytest.mark.readme, pytest.mark.timeout(900)]

SYSTEM_PYTHON: Final = Path("/usr/bin/python3")
SYSTEM_PATH: Final = "/usr/sbin:/usr/bin:/sbin:/bin"
ARTIFACTS: Final = REPO / "test-artifacts"
# Not part of a fresh clone.
NOT_CLONED: Final = shutil.ignore_patterns(
    ".git",
    ".venv",
    "__pycache__",
    "*.egg-info",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
    ".coverage*",
    "test-artifacts",
    "node_modules",
    "build",
    "dist",
)


def setup_blocks() -> list[str]:
    """The sh blocks of README's "Set-up" section, in order."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Set-up\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, re.DOTALL)


def externally_managed(python: Path) -> bool:
    if not python.exists():
        return False
    done = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['stdlib'])"],
        capture_output=True,
        text=True,
        check=False,
    )
    return (Path(done.stdout.strip()) / "EXTERNALLY-MANAGED").is_file()


def clean_env(home: Path) -> dict[str, str]:
    """The caller's environment minus everything of a Python set-up or of the connector; the
    machine's pip settings (index, certificates) stay."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTHON", "VIRTUAL_ENV", "APP_", "BEEFLOW_", "HP_", "PYENV", "CI"))
    }
    env["PATH"] = SYSTEM_PATH
    env["TMPDIR"] = str(home)
    return env


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    if not externally_managed(SYSTEM_PYTHON):
        if os.environ.get("CI"):
            pytest.fail(f"{SYSTEM_PYTHON} is not Debian's externally managed Python")
        pytest.skip(f"needs Debian's python3 at {SYSTEM_PYTHON} (apt-get install python3-venv)")
    target = tmp_path / "clone"
    shutil.copytree(REPO, target, ignore=NOT_CLONED, symlinks=True)
    return target


def test_the_readme_shows_the_two_commands() -> None:
    blocks = setup_blocks()
    assert len(blocks) == 2, blocks
    demo, test = blocks
    assert demo.splitlines()[-1].endswith("python -m beeflow serve --demo")
    assert test.strip() == "./scripts/test"


def test_system_python_refuses_pip_outside_a_venv(clone: Path) -> None:
    """The situation the README must handle: a plain `pip install` fails on this Python."""
    done = subprocess.run(
        ["/usr/bin/env", "python3", "-m", "pip", "install", "--dry-run", "-e", "."],
        cwd=clone,
        env=clean_env(clone.parent),
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0
    assert "externally-managed-environment" in done.stderr
    assert shutil.which("python3", path=SYSTEM_PATH) == str(SYSTEM_PYTHON)


async def test_the_readme_commands_work_on_the_system_python(clone: Path) -> None:
    env = clean_env(clone.parent)
    timings: list[str] = []
    # The test command, from a shell without any virtual environment: it makes .venv.
    started = time.monotonic()
    done = await asyncio.to_thread(
        subprocess.run,
        ["./scripts/test", "--fast", "-q", "-p", "no:cacheprovider", "tests/test_serde.py"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert " passed" in done.stdout
    venv_python = clone / ".venv" / "bin" / "python"
    assert venv_python.exists()
    made = await asyncio.create_subprocess_exec(
        str(venv_python), "-c", "import sys; print(sys.base_prefix)",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    base = (await made.communicate())[0].decode().strip()
    assert Path(base) == SYSTEM_PYTHON.parent.parent  # made from the system's python3
    timings.append(f"./scripts/test --fast tests/test_serde.py: {time.monotonic() - started:.0f} s")

    # The demo block as written, until it serves the UI; then Ctrl-C.
    demo_block = setup_blocks()[0]
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        "bash", "-e", "-c", demo_block,
        cwd=clone, env=env, start_new_session=True,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output: list[str] = []
    try:
        assert proc.stdout is not None
        url = ""
        while not url:
            line = (await asyncio.wait_for(proc.stdout.readline(), 600)).decode()
            assert line, "the demo block ended before the demo printed its URL:\n" + "".join(
                output[-40:]
            )
            output.append(line)
            if "Bee Flow demo: open " in line:
                url = line.split("open ", 1)[1].strip()
        timings.append(f"README demo block to URL printed: {time.monotonic() - started:.0f} s")
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            assert resp.status == 200
            assert "<title>Bee Flow</title>" in await resp.text()
        os.killpg(proc.pid, signal.SIGINT)
        code = await asyncio.wait_for(proc.wait(), 30)
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    assert code == 0
    assert not any("externally-managed-environment" in line for line in output)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "readme-system-python.txt").write_text(
        f"{SYSTEM_PYTHON} (externally managed)\n" + "\n".join(timings) + "\n"
    )
