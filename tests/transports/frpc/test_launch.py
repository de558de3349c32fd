"""Starting frpc: the child step that ties it to us, exec failures, and where its config lives
(memory by default; a configured directory or a private temp directory otherwise, each cleared
of what a killed run left)."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import sys
import textwrap
from pathlib import Path

import pytest

from beeflow.transports.frpc import launch
from beeflow.transports.frpc.launch import CHILD, RenderedConfig, start_frpc
from tests.fakes.frp import pid_alive, wait_gone
from tests.procs import REPO

DOC = {"serverAddr": "127.0.0.1", "metadatas": {"token": "k3y"}}


async def test_the_config_is_in_memory_private_and_gone_when_closed() -> None:
    rendered = RenderedConfig.create(DOC, None)
    assert rendered.fd is not None
    assert rendered.path == Path(f"/proc/self/fd/{rendered.fd}")
    assert stat.S_IMODE(os.stat(rendered.path).st_mode) == 0o600
    assert b'token = "k3y"' in rendered.path.read_bytes()
    assert rendered.path.read_bytes() == rendered.path.read_bytes()  # frpc reads it twice
    fd = rendered.fd
    rendered.close()
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(fd)


def test_a_configured_directory_loses_a_killed_runs_files(tmp_path: Path) -> None:
    directory = tmp_path / "cfg"
    directory.mkdir()
    (directory / "frpc.toml").write_text("old key")
    (directory / ".frpc-abc.toml").write_text("half written")
    (directory / "other").write_text("not ours")
    rendered = RenderedConfig.create(DOC, directory)
    assert rendered.path == directory / "frpc.toml"
    assert stat.S_IMODE(rendered.path.stat().st_mode) == 0o600
    assert sorted(p.name for p in directory.iterdir()) == ["frpc.toml", "other"]
    assert "old key" not in rendered.path.read_text()
    rendered.close()
    assert sorted(p.name for p in directory.iterdir()) == ["other"]


def test_without_memfd_a_private_directory_and_dead_runs_swept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(os, "memfd_create")
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    dead = tmp_path / "beeflow-frpc-999999999-abc"  # no such pid
    alive = tmp_path / f"beeflow-frpc-{os.getppid()}-def"
    foreign = tmp_path / "beeflow-frpc-xyz"
    for path in (dead, alive, foreign):
        path.mkdir()
        (path / "frpc.toml").write_text("key")
    rendered = RenderedConfig.create(DOC, None)
    assert rendered.fd is None
    assert rendered.path.parent.name.startswith(f"beeflow-frpc-{os.getpid()}-")
    assert not dead.exists()
    assert alive.exists()
    assert foreign.exists()
    rendered.close()
    assert not rendered.path.parent.exists()


async def test_an_exec_failure_is_an_os_error(tmp_path: Path) -> None:
    not_executable = tmp_path / "frpc"
    not_executable.write_text("#!/bin/sh\n")
    rendered = RenderedConfig.create(DOC, None)
    try:
        # As a direct exec would say: EACCES, then ENOENT.
        with pytest.raises(PermissionError, match="Permission denied"):
            await start_frpc(str(not_executable), rendered)
        with pytest.raises(FileNotFoundError, match="No such file"):
            await start_frpc(str(tmp_path / "missing"), rendered)
    finally:
        rendered.close()


async def test_the_child_step_gives_up_when_its_parent_is_already_gone(tmp_path: Path) -> None:
    """Between the fork and the prctl the parent may die: the child must not run on."""
    marker = tmp_path / "ran"
    read_end, write_end = os.pipe()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-I",
        "-S",
        str(CHILD),
        "1",  # not our parent
        str(write_end),
        "/bin/sh",
        "-c",
        f"touch {marker}",
        pass_fds=(write_end,),
    )
    os.close(write_end)
    assert await proc.wait() == 1
    os.close(read_end)
    assert not marker.exists()


PARENT = textwrap.dedent(
    """
    import asyncio, sys
    from beeflow.transports.frpc.launch import RenderedConfig, start_frpc

    async def main():
        rendered = RenderedConfig.create({"k": "v"}, None)
        proc = await start_frpc(sys.argv[1], rendered)
        print(proc.pid, flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())
    """
)


async def test_the_child_dies_with_a_sigkilled_parent(tmp_path: Path) -> None:
    """Whatever runs as frpc gets SIGKILL when the process that started it is SIGKILLed."""
    sleeper = tmp_path / "frpc"
    sleeper.write_text("#!/bin/sh\nexec sleep 60\n")
    sleeper.chmod(0o755)
    parent = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        PARENT,
        str(sleeper),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert parent.stdout is not None
    child = int(await asyncio.wait_for(parent.stdout.readline(), 10))
    try:
        assert pid_alive(child)
        parent.send_signal(signal.SIGKILL)
        await parent.wait()
        assert await wait_gone(child, timeout=5)
    finally:
        if pid_alive(child):
            os.kill(child, signal.SIGKILL)


def test_the_child_step_imports_nothing_of_beeflow() -> None:
    """It runs with -I -S before every frpc start: standard library only, no package import."""
    source = CHILD.read_text()
    assert "import beeflow" not in source
    assert "from beeflow" not in source
    assert launch.CHILD.name == "child.py"
