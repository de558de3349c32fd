"""The automations benchmark runs end to end on a tiny load and reports every measure."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench import automations


async def test_a_small_run_measures_everything(tmp_path: Path) -> None:
    args = argparse.Namespace(deliveries=40, concurrency=4, samples=5, backlog=200, out=tmp_path)
    out = await automations.run(args)
    assert out["throughput"]["forwarded_per_s"] > 0
    assert out["latency"]["via_p50_ms"] >= out["latency"]["direct_p50_ms"] > 0
    assert out["memory"]["rss_queued_mib"] > 0
    assert out["memory"]["drain_per_s"] > 0
    text = automations.report(out, args)
    assert "events forwarded per second" in text
    assert "memory per queued event" in text
