"""The verdicts: ratios and differences taken per repetition, the median decides, a range
across the line is said, and figures that cannot be judged are not judged."""

from __future__ import annotations

import math

import pytest

from bench.figures import PhaseNoise, Results
from bench.targets import MIB, Target, judge, targets

L, T = "uvloop", "tcp"


def _target(name: str) -> Target:
    (found,) = [t for t in targets(200, 2000) if t.name.startswith(name)]
    return found


def _results(figures: dict[str, list[float]]) -> Results:
    """Figures by key after (loop, transport), spelled with slashes: "small/api/cpu_us"."""
    r = Results()
    for path, values in figures.items():
        for v in values:
            r.add((L, T, *path.split("/")), v)
    return r


def test_ratios_pair_repetitions_in_order_and_drop_gaps() -> None:
    r = _results({"a": [2, 4, math.nan, 9], "b": [1, 1, 1]})
    s = r.ratio((L, T, "a"), (L, T, "b"))
    assert s.values == (2.0, 4.0)  # the third is NaN, the fourth has no partner


def test_a_ratio_to_zero_is_no_figure() -> None:
    r = _results({"a": [1, 1], "b": [0, 2]})
    assert r.ratio((L, T, "a"), (L, T, "b")).values == (0.5,)


@pytest.mark.parametrize(
    ("ours", "theirs", "measured", "verdict"),
    [
        ([110, 110, 110], [100, 100, 100], "1.10x [1.10x, 1.10x]", "met"),
        ([150, 160, 170], [100, 100, 100], "1.60x [1.50x, 1.70x]", "**missed**"),
        ([100, 110, 130], [100, 100, 100], "1.10x [1.00x, 1.30x]", "met (the range crosses"),
        ([140], [100], "1.40x", "**missed**"),
    ],
)
def test_cpu_against_the_minimal_proxy(
    ours: list[float], theirs: list[float], measured: str, verdict: str
) -> None:
    r = _results({"small/api/cpu_us": ours, "small/ref/cpu_us": theirs})
    v = judge(_target("connector CPU"), r, L, T)
    assert v.measured == measured
    assert v.verdict.startswith(verdict)


def test_requests_per_second_against_the_minimal_proxy() -> None:
    r = _results({"small/api/rps": [3400, 3600], "small/ref/rps": [4000, 4000]})
    v = judge(_target("/api req/s"), r, L, T)
    assert v.verdict == "met"  # 0.85 and 0.90: median 0.875
    r = _results({"small/api/rps": [3000, 3200], "small/ref/rps": [4000, 4000]})
    assert judge(_target("/api req/s"), r, L, T).verdict == "**missed**"


def test_sse_is_judged_on_the_difference_of_added_p99() -> None:
    r = _results(
        {
            "sse/200/beeflow/added_p99": [500, 600, 400],
            "sse/200/nginx/added_p99": [700, 650, 300],
        }
    )
    v = judge(_target("SSE added p99"), r, L, T)
    assert v.measured == "-0.050 ms [-0.200 ms, +0.100 ms]"
    assert v.verdict == "met (the range crosses the line)"
    assert v.detail == "beeflow 0.500 ms, nginx 0.650 ms"


def test_queued_streams_are_not_judged() -> None:
    r = _results(
        {
            "sse/200/beeflow/added_p99": [500],
            "sse/200/nginx/added_p99": [700],
            "sse/200/nginx/concurrent": [0.0],
        }
    )
    v = judge(_target("SSE added p99"), r, L, T)
    assert v.verdict == "**not measurable**: the nginx streams were queued, not concurrent"


@pytest.mark.parametrize(
    ("name", "scenario", "other", "ours", "theirs", "verdict"),
    [
        ("bulk /api download", "api-down", "nginx", [900, 950], [1000, 1000], "**missed**"),
        ("bulk /api upload", "api-up", "nginx", [1000, 1100], [1000, 1000], "met"),
        ("/nc signed upload", "nc-up", "ceiling", [400, 420], [500, 500], "met"),
        ("/nc signed upload", "nc-up", "ceiling", [390, 395], [500, 500], "**missed**"),
    ],
)
def test_bulk_against_its_comparator(
    name: str, scenario: str, other: str, ours: list[float], theirs: list[float], verdict: str
) -> None:
    r = _results(
        {
            f"bulk/{scenario}/beeflow/mibs": ours,
            f"bulk/{scenario}/{other}/mibs": theirs,
            # the other proxies of the same scenario do not count
            f"bulk/{scenario}/node/mibs": [1.0, 1.0],
        }
    )
    assert judge(_target(name), r, L, T).verdict == verdict


def test_peak_rss_is_the_connectors_highest_run_only() -> None:
    r = _results(
        {
            "bulk/api-down/beeflow/peak_rss": [50 * MIB, 59 * MIB],
            "bulk/nc-up/beeflow/peak_rss": [61 * MIB],
            "bulk/api-up/node/peak_rss": [130 * MIB],
        }
    )
    v = judge(_target("connector peak RSS"), r, L, T)
    assert (v.measured, v.verdict) == ("61.0 MiB", "**missed**")


def test_idle_streams_that_did_not_all_open_are_not_judged() -> None:
    r = _results({"idle/per_stream": [20 * 1024], "idle/opened": [1800]})
    v = judge(_target("idle SSE stream"), r, L, T)
    assert v.verdict == "**not measurable**: only 1800 of 2000 streams opened"
    r = _results({"idle/per_stream": [29 * 1024, 31 * 1024, 28 * 1024], "idle/opened": [2000] * 3})
    assert judge(_target("idle SSE stream"), r, L, T).verdict.startswith("met (the range")


def test_nothing_measured_is_no_verdict_and_noise_is_stated() -> None:
    r = Results()
    r.noise[(L, T, "small")] = PhaseNoise(seconds=40, foreign_cores=0.31, load="1 1 1")
    v = judge(_target("connector CPU"), r, L, T)
    assert (v.measured, v.verdict, v.noise) == ("n/a", "n/a (not measured)", "0.31 cores")
