"""A short private work directory (Unix socket paths stay under 108 bytes) and the bench's own
upstream, started as `python -m bench` starts it."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import attrs
import pytest

from bench.children import Child, clean_env
from bench.client import Target
from bench.tools import ROOT


@attrs.frozen
class Upstream:
    child: Child
    tcp: Target
    unix: Target


@pytest.fixture
def work() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="bt-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def upstream(work: Path) -> AsyncIterator[Upstream]:
    sock = work / "u.sock"
    argv = [sys.executable, "-m", "bench.upstream", "--unix", str(sock)]
    env = {**clean_env(), "PYTHONPATH": str(ROOT)}
    child = await Child.start("upstream", argv, env, ROOT, work / "upstream.log")
    yield Upstream(child, Target(port=int(child.ready)), Target(unix=str(sock)))
    await child.stop()
