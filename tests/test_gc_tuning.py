"""The garbage collector's settings of a serving process (beeflow.cli.tune_gc): applied by
`serve` once it listens, in the serving process only (never by the in-process `cli.serve`
the tests run), and cyclic garbage is still collected afterwards."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from beeflow import cli
from tests.helpers import base_env
from tests.ports import refused_url
from tests.procs import REPO

CHECK = """
import gc, weakref
from beeflow.cli import GC_YOUNG_THRESHOLD, tune_gc
before = gc.get_threshold()
tune_gc()
after = gc.get_threshold()
assert after == (GC_YOUNG_THRESHOLD, *before[1:]), (before, after)
assert gc.get_freeze_count() > 1000, gc.get_freeze_count()
class Node: pass
a, b = Node(), Node()
a.other, b.other = b, a
gone = weakref.ref(a)
del a, b
gc.collect()
assert gone() is None
print("ok")
"""


def test_tune_gc_freezes_what_exists_and_still_collects_cycles() -> None:
    # In a fresh interpreter: freezing the test process would keep its garbage for good.
    out = subprocess.run(
        [sys.executable, "-c", CHECK], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_the_serve_command_tunes_once_listening(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    events: list[str] = []

    async def fake_serve(config: Any, *, on_listening: Any = None, **_: Any) -> int:
        events.append("serving")
        assert on_listening is not None
        on_listening(object())
        return 0

    monkeypatch.setattr(cli, "serve", fake_serve)
    monkeypatch.setattr(cli, "tune_gc", lambda: events.append("tuned"))
    monkeypatch.setattr(cli, "setup_logging", lambda *_: None)
    monkeypatch.setattr(cli, "register_secrets", lambda *_: None)
    env = base_env(refused_url(), tmp_path, BEEFLOW_EVENT_LOOP="asyncio")
    assert cli.main(["serve"], env) == 0
    assert events == ["serving", "tuned"]
