"""The results file says what could not be measured and never breaks on missing figures."""

from __future__ import annotations

import datetime as dt

from bench import report, run
from bench.figures import Results


def _meta(**extra: object) -> dict[str, object]:
    return {
        "started": dt.datetime(2026, 12, 7, 5, 15, tzinfo=dt.UTC),
        "head": "abc1234",
        "seconds": 60.0,
        "load_before": "0.1 0.1 0.1",
        "load_after": "0.2 0.2 0.2",
        "foreign_cores": 0.05,
        **extra,
    }


def test_an_empty_run_renders_every_target_as_not_measured() -> None:
    plan = run.Plan.make(run.parse_args(["--loops", "asyncio"]))
    text = report.render(plan, Results(), _meta())
    rows = [line for line in text.splitlines() if line.startswith("| asyncio | ")]
    assert len(rows) == 2 * 8  # two transports, eight targets
    assert all("n/a (not measured)" in row for row in rows)
    assert "A smoke run" not in text


def test_missing_comparators_and_the_plot_are_named() -> None:
    plan = run.Plan.make(run.parse_args(["--quick", "--loops", "asyncio"]))
    meta = _meta(
        missing={"nginx": "nginx is not installed (apt-get install -y nginx)"},
        plot="",
        plot_problem="matplotlib is not installed (pip install -e '.[bench]')",
    )
    text = report.render(plan, Results(), meta)
    assert "- **nginx unavailable**: nginx is not installed (apt-get install -y nginx)" in text
    assert "- no plot: matplotlib is not installed" in text
    assert text.startswith("# Connector benchmark 2026-12-07 05:15 UTC (quick)\n\n**A smoke run")
