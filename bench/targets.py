"""The speed and memory targets (issue 27) and their verdicts, from one run's figures.

Every comparison is between figures of the same run: ratios and differences are taken
repetition by repetition (the two sides ran back to back), then the median decides. A verdict
whose [min, max] crosses the line says so: the median met it, but not every repetition did."""

from __future__ import annotations

import math
from collections.abc import Callable

import attrs

from bench.figures import Key, Results
from bench.stats import Summary

MIB = 1 << 20


@attrs.frozen
class Target:
    name: str
    phase: str  # the phase whose noise applies
    measure: Callable[[Results, str, str], Summary]  # (results, loop, transport) -> figure
    ok: Callable[[float], bool]
    show: Callable[[float], str]
    # what was compared, for the row: (results, loop, transport) -> text
    detail: Callable[[Results, str, str], str] = lambda _r, _l, _t: ""
    # why the figure cannot be judged ("" when it can)
    invalid: Callable[[Results, str, str], str] = lambda _r, _l, _t: ""


@attrs.frozen
class Verdict:
    target: str
    loop: str
    transport: str
    measured: str  # median [min, max]
    verdict: str  # met | missed | n/a, with a qualifier
    noise: str
    detail: str = ""


def _k(loop: str, tr: str, *rest: str) -> Key:
    return (loop, tr, *rest)


def _cpu_vs_minimal(r: Results, loop: str, tr: str) -> Summary:
    return r.ratio(_k(loop, tr, "small", "api", "cpu_us"), _k(loop, tr, "small", "ref", "cpu_us"))


def _rps_vs_minimal(r: Results, loop: str, tr: str) -> Summary:
    return r.ratio(_k(loop, tr, "small", "api", "rps"), _k(loop, tr, "small", "ref", "rps"))


def _sse_vs_nginx(r: Results, loop: str, tr: str, streams: str) -> Summary:
    return r.difference(
        _k(loop, tr, "sse", streams, "beeflow", "added_p99"),
        _k(loop, tr, "sse", streams, "nginx", "added_p99"),
    )


def _bulk_vs(scenario: str, other: str) -> Callable[[Results, str, str], Summary]:
    def measure(r: Results, loop: str, tr: str) -> Summary:
        return r.ratio(
            _k(loop, tr, "bulk", scenario, "beeflow", "mibs"),
            _k(loop, tr, "bulk", scenario, other, "mibs"),
        )

    return measure


def _peak_rss(r: Results, loop: str, tr: str) -> Summary:
    peaks = [
        v
        for k, values in r.figures.items()
        if k[:3] == (loop, tr, "bulk") and k[4:] == ("beeflow", "peak_rss")
        for v in values
    ]
    return Summary.of([max(peaks)] if peaks else [])


def _idle(r: Results, loop: str, tr: str) -> Summary:
    return r.get(_k(loop, tr, "idle", "per_stream"))


def _times(x: float) -> str:
    return f"{x:.2f}x"


def targets(sse_streams: int, idle_streams: int) -> list[Target]:
    streams = str(sse_streams)

    def sse_invalid(r: Results, loop: str, tr: str) -> str:
        for kind in ("beeflow", "nginx"):
            together = r.get(_k(loop, tr, "sse", streams, kind, "concurrent"))
            if together.ok and together.low < 1.0:
                return f"the {kind} streams were queued, not concurrent"
        return ""

    def idle_invalid(r: Results, loop: str, tr: str) -> str:
        opened = r.get(_k(loop, tr, "idle", "opened"))
        if opened.ok and opened.low < idle_streams:
            return f"only {opened.low:.0f} of {idle_streams} streams opened"
        return ""

    def sse_detail(r: Results, loop: str, tr: str) -> str:
        ours = r.get(_k(loop, tr, "sse", streams, "beeflow", "added_p99")).median
        theirs = r.get(_k(loop, tr, "sse", streams, "nginx", "added_p99")).median
        if math.isnan(ours) or math.isnan(theirs):
            return ""
        return f"beeflow {ours / 1000:.3f} ms, nginx {theirs / 1000:.3f} ms"

    def cpu_detail(r: Results, loop: str, tr: str) -> str:
        ours = r.get(_k(loop, tr, "small", "api", "cpu_us")).median
        ref = r.get(_k(loop, tr, "small", "ref", "cpu_us")).median
        if math.isnan(ours) or math.isnan(ref):
            return ""
        return f"beeflow {ours:.0f} µs, minimal proxy {ref:.0f} µs"

    def rps_detail(r: Results, loop: str, tr: str) -> str:
        ours = r.get(_k(loop, tr, "small", "api", "rps")).median
        ref = r.get(_k(loop, tr, "small", "ref", "rps")).median
        if math.isnan(ours) or math.isnan(ref):
            return ""
        return f"beeflow {ours:,.0f}/s, minimal proxy {ref:,.0f}/s"

    def bulk_detail(scenario: str, other: str) -> Callable[[Results, str, str], str]:
        def detail(r: Results, loop: str, tr: str) -> str:
            ours = r.get(_k(loop, tr, "bulk", scenario, "beeflow", "mibs")).median
            theirs = r.get(_k(loop, tr, "bulk", scenario, other, "mibs")).median
            if math.isnan(ours) or math.isnan(theirs):
                return ""
            return f"beeflow {ours:,.0f} MiB/s, {other} {theirs:,.0f} MiB/s"

        return detail

    return [
        Target(
            "connector CPU per /api request <= 1.15x the minimal aiohttp proxy's",
            "small",
            _cpu_vs_minimal,
            lambda x: x <= 1.15,
            _times,
            cpu_detail,
        ),
        Target(
            "/api req/s >= 0.85x the minimal aiohttp proxy's",
            "small",
            _rps_vs_minimal,
            lambda x: x >= 0.85,
            _times,
            rps_detail,
        ),
        Target(
            f"SSE added p99 ({sse_streams} streams) <= nginx's (difference)",
            "sse",
            lambda r, loop, tr: _sse_vs_nginx(r, loop, tr, streams),
            lambda x: x <= 0,
            lambda x: f"{x / 1000:+.3f} ms",
            sse_detail,
            sse_invalid,
        ),
        Target(
            "bulk /api download >= 1.0x nginx's",
            "bulk",
            _bulk_vs("api-down", "nginx"),
            lambda x: x >= 1.0,
            _times,
            bulk_detail("api-down", "nginx"),
        ),
        Target(
            "bulk /api upload >= 1.0x nginx's",
            "bulk",
            _bulk_vs("api-up", "nginx"),
            lambda x: x >= 1.0,
            _times,
            bulk_detail("api-up", "nginx"),
        ),
        Target(
            "/nc signed upload >= 0.8x the store-and-forward ceiling",
            "bulk",
            _bulk_vs("nc-up", "ceiling"),
            lambda x: x >= 0.8,
            _times,
            bulk_detail("nc-up", "ceiling"),
        ),
        Target(
            "connector peak RSS during bulk <= 60 MiB (highest run)",
            "bulk",
            _peak_rss,
            lambda x: x <= 60 * MIB,
            lambda x: f"{x / MIB:.1f} MiB",
        ),
        Target(
            f"idle SSE stream < 30 KiB ({idle_streams} open)",
            "idle",
            _idle,
            lambda x: x < 30 * 1024,
            lambda x: f"{x / 1024:.1f} KiB",
            invalid=idle_invalid,
        ),
    ]


def judge(target: Target, r: Results, loop: str, tr: str) -> Verdict:
    s = target.measure(r, loop, tr)
    noise = r.noise.get((loop, tr, target.phase))
    noise_text = f"{noise.foreign_cores:.2f} cores" if noise is not None else "n/a"
    if not s.ok:
        return Verdict(target.name, loop, tr, "n/a", "n/a (not measured)", noise_text)
    if len(s.values) > 1:
        measured = f"{target.show(s.median)} [{target.show(s.low)}, {target.show(s.high)}]"
    else:
        measured = target.show(s.median)
    why = target.invalid(r, loop, tr)
    if why:
        verdict = f"**not measurable**: {why}"
    else:
        verdict = "met" if target.ok(s.median) else "**missed**"
        if len(s.values) > 1 and target.ok(s.low) != target.ok(s.high):
            verdict += " (the range crosses the line)"
    return Verdict(target.name, loop, tr, measured, verdict, noise_text, target.detail(r, loop, tr))
