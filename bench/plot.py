"""The run's picture: small-request req/s and p99 latency per comparator, one group of bars per
loop and transport (median, with the [min, max] of the repetitions as the whisker). Written
next to the results file; needs matplotlib (`pip install -e '.[bench]'`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Final

from bench.figures import Results

if TYPE_CHECKING:
    from bench.run import Plan

# (figure key, legend label), in the order of the bars
ROUTES: Final = (
    ("direct", "direct"),
    ("server", "aiohttp server alone"),
    ("ref", "minimal aiohttp proxy"),
    ("nginx", "nginx"),
    ("node", "Node stack"),
    ("api", "beeflow /api"),
    ("nc", "beeflow /nc"),
)


def series(plan: Plan, r: Results, figure: str, scale: float = 1.0) -> dict[str, list[float]]:
    """{route: [median, low, high] per group} for the groups (loop/transport) of the plan;
    NaN where a route was not measured."""
    out: dict[str, list[float]] = {}
    for route, _label in ROUTES:
        values = []
        for loop in plan.loops:
            for tr in plan.transports:
                s = r.get((loop, tr, "small", route, figure))
                values += [s.median * scale, s.low * scale, s.high * scale]
        out[route] = values
    return out


def _short(value: float) -> str:
    """3.7k, 41k, 0.95, 12: enough digits to read a bar."""
    if math.isnan(value):
        return ""
    if value >= 10_000:
        return f"{value / 1000:.0f}k"
    if value >= 1000:
        return f"{value / 1000:.1f}k"
    return f"{value:.2g}" if value < 10 else f"{value:.0f}"


def write(plan: Plan, r: Results, path: Path, title: str) -> str:
    """Draw the PNG at `path`; "" on success, else why there is no plot."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]')"
    groups = [f"{loop}\n{tr}" for loop in plan.loops for tr in plan.transports]
    panels = (
        ("rps", 1.0, "requests per second (log)"),
        ("p99", 1e-3, "p99 latency, ms (log)"),
    )
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.6), layout="constrained")
    drawn = False
    for ax, (figure, scale, ylabel) in zip(axes, panels, strict=True):
        data = series(plan, r, figure, scale)
        present = [(k, label) for k, label in ROUTES if any(not math.isnan(v) for v in data[k])]
        width = 0.8 / max(len(present), 1)
        for i, (route, label) in enumerate(present):
            med = data[route][0::3]
            low = data[route][1::3]
            high = data[route][2::3]
            xs = [g + (i - (len(present) - 1) / 2) * width for g in range(len(groups))]
            err = [
                [m - lo if not math.isnan(m) else 0 for m, lo in zip(med, low, strict=True)],
                [hi - m if not math.isnan(m) else 0 for m, hi in zip(med, high, strict=True)],
            ]
            bars = ax.bar(xs, med, width, label=label, yerr=err, capsize=2)
            ax.bar_label(bars, labels=[_short(m) for m in med], fontsize=7, padding=2)
            drawn = True
        ax.set_yscale("log")
        ax.set_xticks(range(len(groups)), groups)
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", which="both", alpha=0.3)
    if not drawn:
        plt.close(fig)
        return "no small-request figures to plot"
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize="small")
    fig.suptitle(
        f"{title}: small GET requests, {plan.concurrency} connections (median, [min, max])"
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return ""
