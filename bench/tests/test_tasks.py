"""The Task Processing benchmark runs end to end on a tiny load: every task succeeds through a
real connector process, and the rate and CPU per task it reports are measured, not made up."""

from __future__ import annotations

from bench import tasks


async def test_a_small_run_completes_every_task_and_measures_it() -> None:
    out = await tasks.run(tasks=12, types=2, concurrency=2)
    assert out["seconds"] > 0
    assert out["rate"] == 12 / out["seconds"]
    assert out["cpu_ms"] > 0  # the connector process worked for them
