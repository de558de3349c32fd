"""One run's figures as the Markdown results file: the tables per phase, beeflow against each
comparator, the targets with their verdicts, aiohttp's own floor, uvloop against asyncio, and
the noise. docs/benchmarks.md explains how to read it."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import math
import os
import platform
import subprocess
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

from bench import peers, tools, wrk
from bench.figures import Key, Results
from bench.stats import Summary
from bench.targets import judge, targets

if TYPE_CHECKING:
    from bench.run import Plan

Add = Callable[[str], None]  # appends one line of the report
MIB: Final = 1 << 20
NOISY_SPREAD_PCT: Final = 25.0
BULK: Final = ("api-down", "api-up", "nc-down", "nc-up")
# Every comparator, in the order tables and the plot show them.
LABELS: Final = {
    "direct": "direct",
    "server": "aiohttp server alone, answering itself (floor: server half)",
    "client": "aiohttp client alone, to the upstream (floor: client half)",
    "ref": "/api via a minimal aiohttp proxy (reference)",
    "nginx": "/api via nginx (one worker, streaming)",
    "node": "/api via the Node stack (Express + http-proxy-middleware)",
    "ceiling": "/nc via the store-and-forward ceiling (receive, hash, sendfile)",
    "api": "/api via beeflow",
    "nc": "/nc via beeflow",
    "beeflow": "beeflow",
}
SHORT: Final = {
    "ref": "minimal aiohttp proxy",
    "nginx": "nginx",
    "node": "Node stack",
    "ceiling": "store-and-forward ceiling",
}


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("aiohttp", "multidict", "yarl", "uvloop"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    wrk_path = wrk.available()
    if wrk_path:
        ver = subprocess.run([wrk_path, "--version"], capture_output=True, text=True, check=False)
        out["wrk"] = (ver.stdout or ver.stderr).split("\n")[0].split(" [")[0].removeprefix("wrk ")
    else:
        out["wrk"] = "not installed"
    out["nginx"] = peers.nginx_version()
    out["node"] = peers.node_version()
    out.update(tools.node_versions())
    return out


def title(meta: Mapping[str, Any], plan: Plan) -> str:
    started: dt.datetime = meta["started"]
    return f"Connector benchmark {started:%Y-%m-%d %H:%M %Z}{' (quick)' if plan.quick else ''}"


def render(plan: Plan, r: Results, meta: Mapping[str, Any]) -> str:
    lines: list[str] = []
    add = lines.append
    _header(add, plan, meta)
    _small(add, plan, r, meta.get("loadgen", {}))
    _against(add, plan, r)
    _sse(add, plan, r)
    _bulk(add, plan, r)
    _idle(add, plan, r)
    _targets(add, plan, r)
    _floor(add, plan, r)
    _uvloop(add, plan, r)
    _noise(add, r)
    return "\n".join(lines)


# ------------------------------------------------------------------ sections


def _header(add: Add, plan: Plan, meta: Mapping[str, Any]) -> None:
    v = versions()
    add(f"# {title(meta, plan)}")
    add("")
    if plan.quick:
        add(
            "**A smoke run (`--quick`): small sizes, 2 repetitions, 1 s per run. It proves the "
            "harness; its ratios are not the verdict.**"
        )
        add("")
    add(
        f"- machine: {os.cpu_count()} cores ({platform.machine()}), "
        f"{platform.system()} {platform.release()}"
    )
    add(
        f"- versions: Python {v['python']}, aiohttp {v['aiohttp']}, multidict {v['multidict']}, "
        f"yarl {v['yarl']}, uvloop {v['uvloop']}, wrk {v['wrk']}"
    )
    add(
        f"- peers: nginx {v['nginx']} (Debian's, one worker, buffers "
        f"{plan.nginx_buffer or 'at its default of one page'}); Node {v['node']} with express "
        f"{v['express']} and http-proxy-middleware {v['http-proxy-middleware']} (pinned by "
        "bench/node/package-lock.json)"
    )
    if plan.src_label:
        add(f"- beeflow: {plan.src_label}")
    elif plan.src:
        add(f"- beeflow: the tree in {plan.src} (this checkout was at {meta['head']})")
    else:
        add(f"- beeflow: the working tree at {meta['head']}")
    add(
        f"- command: `{_command(meta, plan)}` "
        f"({meta['seconds'] / 60:.1f} min); harness (upstream, Python clients) on "
        f"{plan.harness_loop}; connector loops: {', '.join(plan.loops)}"
    )
    add(
        f"- load average before/after: {meta['load_before']} / {meta['load_after']}; CPU used by "
        f"other processes during the run: {meta['foreign_cores']:.2f} cores on average"
    )
    add(
        f"- each figure: median [min, max] of {plan.reps} repetitions ({plan.bulk_reps} for bulk, "
        f"{plan.idle_reps} for idle streams); every comparator runs back to back with the others "
        "in each repetition and ratios are taken per repetition"
    )
    for name, why in meta.get("missing", {}).items():
        add(f"- **{name} unavailable**: {why}")
    if meta.get("plot"):
        add(f"- plot: [{meta['plot']}]({meta['plot']})")
    elif meta.get("plot_problem"):
        add(f"- no plot: {meta['plot_problem']}")
    add("")


def _small(add: Add, plan: Plan, r: Results, loadgen: Mapping[str, str]) -> None:
    add(
        f"## Small requests (GET, ~90-byte JSON, {plan.concurrency} connections, "
        f"{plan.small_seconds} s per run)"
    )
    add("")
    add(
        "| loop | transport | route | load generator | req/s | ratio to direct | p50 ms | p99 ms "
        "| proxy CPU µs/req | upstream CPU µs/req | errors |"
    )
    add("|---|---|---|---|---|---|---|---|---|---|---|")
    kinds = ("direct", "server", "client", "ref", "nginx", "node", "api", "nc")
    for loop in plan.loops:
        for tr in plan.transports:
            for kind in kinds:
                label = LABELS[kind]
                key: Key = (loop, tr, "small", kind)
                if key in r.unavailable:
                    add(f"| {loop} | {tr} | {label} | | n/a: {_short(r.unavailable[key])} |||||||")
                    continue
                rps = r.get((*key, "rps"))
                if not rps.ok:
                    continue
                cpu = r.get((*key, "cpu_us"))
                errs = int(sum(r.get((*key, "errors")).values))
                if kind == "client":
                    add(
                        f"| {loop} | {tr} | {label} | itself ({plan.concurrency} loops, tcp) | "
                        f"{rps.fmt(0)} | — | — | — | {cpu.fmt(0)} (the client's own) | — | "
                        f"{errs} |"
                    )
                    continue
                ratio = r.get((*key, "ratio"))
                add(
                    f"| {loop} | {tr} | {label} | {loadgen.get(tr, '?')} | {rps.fmt(0)} | "
                    f"{ratio.fmt(3) if ratio.ok else '1'} | "
                    f"{r.get((*key, 'p50')).fmt(2, 1e-3)} | {r.get((*key, 'p99')).fmt(2, 1e-3)} | "
                    f"{cpu.fmt(0) if cpu.ok else '—'} | "
                    f"{r.get((*key, 'upstream_cpu_us')).fmt(0)} | {errs} |"
                )
    add("")


def _against(add: Add, plan: Plan, r: Results) -> None:
    """beeflow's /api against each comparator, ratios per repetition."""
    rows = []
    for loop in plan.loops:
        for tr in plan.transports:
            api = (loop, tr, "small", "api")
            for other in ("ref", "nginx", "node"):
                theirs = (loop, tr, "small", other)
                rps = r.ratio((*api, "rps"), (*theirs, "rps"))
                if not rps.ok:
                    continue
                p99 = r.ratio((*api, "p99"), (*theirs, "p99"))
                cpu = r.ratio((*api, "cpu_us"), (*theirs, "cpu_us"))
                streams = str(plan.sse_many)
                sse = r.ratio(
                    (loop, tr, "sse", streams, "beeflow", "p99"),
                    (loop, tr, "sse", streams, other, "p99"),
                )
                bulk = [
                    r.ratio(
                        (loop, tr, "bulk", s, "beeflow", "mibs"),
                        (loop, tr, "bulk", s, other, "mibs"),
                    )
                    for s in ("api-down", "api-up")
                ]
                mem = _peak_ratio(r, loop, tr, other)
                rows.append(
                    f"| {loop} | {tr} | {SHORT[other]} | {rps.fmt(2)} | {p99.fmt(2)} | "
                    f"{cpu.fmt(2)} | {sse.fmt(2) if sse.ok else '—'} | "
                    f"{bulk[0].fmt(2) if bulk[0].ok else '—'} | "
                    f"{bulk[1].fmt(2) if bulk[1].ok else '—'} | {mem} |"
                )
    if not rows:
        return
    add("## beeflow against each comparator (beeflow ÷ comparator, per repetition)")
    add("")
    add(
        "Above 1 is better for beeflow in req/s and bulk MiB/s; below 1 is better in p99, CPU "
        "and memory."
    )
    add("")
    add(
        "| loop | transport | comparator | /api req/s | /api p99 | CPU per request | "
        f"SSE p99 ({plan.sse_many} streams) | bulk /api download | bulk /api upload | "
        "peak RSS in bulk |"
    )
    add("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        add(row)
    add("")


def _peak_ratio(r: Results, loop: str, tr: str, other: str) -> str:
    ours = [
        v
        for s in ("api-down", "api-up")
        for v in r.figures.get((loop, tr, "bulk", s, "beeflow", "peak_rss"), [])
    ]
    theirs = [
        v
        for s in ("api-down", "api-up")
        for v in r.figures.get((loop, tr, "bulk", s, other, "peak_rss"), [])
    ]
    if not ours or not theirs:
        return "—"
    return f"{max(ours) / max(theirs):.2f} ({max(ours) / MIB:.0f} / {max(theirs) / MIB:.0f} MiB)"


def _sse(add: Add, plan: Plan, r: Results) -> None:
    add(
        f"## SSE per-event latency (send timestamp in the upstream to arrival in the client; "
        f"1 stream: {plan.sse_single_events} events {plan.sse_single_ms:g} ms apart; "
        f"{plan.sse_many} streams: {plan.sse_many_events} events each, "
        f"{plan.sse_many_ms:g} ms apart)"
    )
    add("")
    add(
        "| loop | transport | streams | via | p50 / p99 ms | added p50 ms | added p99 ms | "
        "proxy CPU µs/event | events lost | streams concurrent |"
    )
    add("|---|---|---|---|---|---|---|---|---|---|")
    for loop in plan.loops:
        for tr in plan.transports:
            if (loop, tr, "sse") in r.unavailable:
                add(f"| {loop} | {tr} | | n/a: {_short(r.unavailable[(loop, tr, 'sse')])} |||||||")
                continue
            for streams in (1, plan.sse_many):
                for kind in ("direct", "nginx", "node", "beeflow"):
                    key = (loop, tr, "sse", str(streams), kind)
                    p50, p99 = r.get((*key, "p50")), r.get((*key, "p99"))
                    if not p50.ok:
                        continue
                    direct = kind == "direct"
                    add(
                        f"| {loop} | {tr} | {streams} | {kind} | {p50.fmt(3, 1e-3)} / "
                        f"{p99.fmt(3, 1e-3)} | "
                        f"{'—' if direct else r.get((*key, 'added_p50')).fmt(3, 1e-3)} | "
                        f"{'—' if direct else r.get((*key, 'added_p99')).fmt(3, 1e-3)} | "
                        f"{'—' if direct else r.get((*key, 'cpu_us')).fmt(0)} | "
                        f"{int(sum(r.get((*key, 'lost')).values))} | "
                        f"{_all_concurrent(r.get((*key, 'concurrent')))} |"
                    )
    add("")


def _bulk(add: Add, plan: Plan, r: Results) -> None:
    size = plan.bulk_bytes / MIB
    size_text = f"{size / 1024:g} GiB" if size >= 1024 else f"{size:g} MiB"
    add(f"## Bulk transfer ({size_text} per run, one connection)")
    add("")
    add(
        "| loop | transport | what | via | MiB/s | ratio to direct | beeflow ÷ this | "
        "proxy peak RSS MiB | RSS growth MiB |"
    )
    add("|---|---|---|---|---|---|---|---|---|")
    names = {
        "api-down": "/api download",
        "api-up": "/api upload",
        "nc-down": "/nc download",
        "nc-up": "/nc upload (signed, spooled)",
    }
    for loop in plan.loops:
        for tr in plan.transports:
            for scenario in BULK:
                base: Key = (loop, tr, "bulk", scenario)
                for kind in ("direct", "nginx", "node", "ceiling", "beeflow"):
                    key = (*base, kind)
                    if key in r.unavailable:
                        add(
                            f"| {loop} | {tr} | {names[scenario]} | {kind} | n/a: "
                            f"{_short(r.unavailable[key])} |||||"
                        )
                        continue
                    rate = r.get((*key, "mibs"))
                    if not rate.ok:
                        continue
                    if kind == "direct":
                        add(f"| {loop} | {tr} | {names[scenario]} | direct | {rate.fmt(0)} |||||")
                        continue
                    ours = r.ratio((*base, "beeflow", "mibs"), (*key, "mibs"))
                    add(
                        f"| {loop} | {tr} | {names[scenario]} | {kind} | {rate.fmt(0)} | "
                        f"{r.get((*key, 'ratio')).fmt(3)} | "
                        f"{ours.fmt(2) if kind != 'beeflow' and ours.ok else '—'} | "
                        f"{r.get((*key, 'peak_rss')).fmt(1, 1 / MIB)} | "
                        f"{r.get((*key, 'rss_growth')).fmt(1, 1 / MIB)} |"
                    )
    add("")


def _idle(add: Add, plan: Plan, r: Results) -> None:
    add(
        f"## Idle SSE streams ({plan.idle_streams} open through beeflow, a fresh connector each "
        "repetition)"
    )
    add("")
    add(
        "| loop | transport | streams open | RSS before MiB | RSS with streams MiB | "
        "KiB per stream | RSS after closing MiB |"
    )
    add("|---|---|---|---|---|---|---|")
    for loop in plan.loops:
        for tr in plan.transports:
            key = (loop, tr, "idle")
            if key in r.unavailable:
                add(f"| {loop} | {tr} | n/a: {_short(r.unavailable[key])} | | | | |")
                continue
            if not r.get((*key, "per_stream")).ok:
                continue
            add(
                f"| {loop} | {tr} | {r.get((*key, 'opened')).fmt(0)} | "
                f"{r.get((*key, 'base')).fmt(1, 1 / MIB)} | "
                f"{r.get((*key, 'held')).fmt(1, 1 / MIB)} | "
                f"{r.get((*key, 'per_stream')).fmt(1, 1 / 1024)} | "
                f"{r.get((*key, 'after')).fmt(1, 1 / MIB)} |"
            )
    add("")


def _targets(add: Add, plan: Plan, r: Results) -> None:
    add(
        "## Targets (issue 27; per loop: the connector runs on uvloop when it is installed, "
        "`BEEFLOW_EVENT_LOOP=auto`, else on asyncio)"
    )
    add("")
    add(
        "Measured: the median of the per-repetition ratio (or difference) [min, max]. Noise: "
        "CPU other processes used during that phase (2 cores = the whole machine)."
    )
    add("")
    add("| loop | transport | target | measured | verdict | compared | noise |")
    add("|---|---|---|---|---|---|---|")
    for loop in plan.loops:
        for tr in plan.transports:
            for target in targets(plan.sse_many, plan.idle_streams):
                v = judge(target, r, loop, tr)
                add(
                    f"| {loop} | {tr} | {v.target} | {v.measured} | {v.verdict} | {v.detail} | "
                    f"{v.noise} |"
                )
    add("")


def _floor(add: Add, plan: Plan, r: Results) -> None:
    rows = []
    for loop in plan.loops:
        for tr in plan.transports:
            cpu = {
                kind: r.get((loop, tr, "small", kind, "cpu_us")).median
                for kind in ("server", "client", "ref", "api")
            }
            if any(math.isnan(x) for x in cpu.values()):
                continue
            server, client_, ref, api = cpu["server"], cpu["client"], cpu["ref"], cpu["api"]
            rate = r.ratio((loop, tr, "small", "api", "rps"), (loop, tr, "small", "ref", "rps"))
            rows.append(
                f"| {loop} | {tr} | {server:.0f} | {client_:.0f} | {server + client_:.0f} | "
                f"{ref:.0f} | {api:.0f} | {api / ref:.2f}x | {rate.median:.2f}x |"
            )
    if not rows:
        return
    add("## What aiohttp itself costs here (small requests, medians)")
    add("")
    add(
        "The connector is bound to aiohttp's server and client. Their own CPU per request on "
        "this machine, measured in this run, is the floor under any connector built on them."
    )
    add("")
    add(
        "| loop | transport | server alone µs | client alone µs | sum µs | minimal proxy µs "
        "| beeflow /api µs | beeflow / minimal proxy | beeflow req/s / minimal proxy req/s |"
    )
    add("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        add(row)
    add("")


def _uvloop(add: Add, plan: Plan, r: Results) -> None:
    if len(plan.loops) < 2:
        return
    many = str(plan.sse_many)
    figures: list[tuple[str, Key, float, str, bool]] = [
        ("/api small req/s", ("small", "api", "rps"), 1.0, ",.0f", True),
        ("/api CPU µs/req", ("small", "api", "cpu_us"), 1.0, ",.0f", False),
        ("/nc small req/s", ("small", "nc", "rps"), 1.0, ",.0f", True),
        (
            f"SSE added p99 ms ({many} streams)",
            ("sse", many, "beeflow", "added_p99"),
            1e-3,
            ".3f",
            False,
        ),
        ("/api download MiB/s", ("bulk", "api-down", "beeflow", "mibs"), 1.0, ",.0f", True),
        ("/api upload MiB/s", ("bulk", "api-up", "beeflow", "mibs"), 1.0, ",.0f", True),
        ("/nc download MiB/s", ("bulk", "nc-down", "beeflow", "mibs"), 1.0, ",.0f", True),
        ("/nc upload MiB/s", ("bulk", "nc-up", "beeflow", "mibs"), 1.0, ",.0f", True),
        ("idle stream KiB", ("idle", "per_stream"), 1 / 1024, ".1f", False),
    ]
    add("## uvloop against asyncio (connector loop only; medians)")
    add("")
    add("| transport | figure | asyncio | uvloop | change |")
    add("|---|---|---|---|---|")
    for tr in plan.transports:
        for label, fig, scale, fmt, better in figures:
            a = r.get((plan.loops[0], tr, *fig))
            b = r.get((plan.loops[1], tr, *fig))
            if not (a.ok and b.ok):
                continue
            change = (b.median - a.median) / abs(a.median) * 100 if a.median else math.nan
            add(
                f"| {tr} | {label} | {a.median * scale:{fmt}} | {b.median * scale:{fmt}} | "
                f"{change:+.0f}% ({'better' if (change > 0) == better else 'worse'}) |"
            )
    add("")


def _noise(add: Add, r: Results) -> None:
    add("## Noise")
    add("")
    add(
        "CPU used by processes other than the bench's own (upstream, proxies, load generators) "
        "during each phase, in cores (2 = the whole machine), with the load average at its "
        "start and how long the phase took:"
    )
    add("")
    add("| phase | seconds | other processes, cores | load average |")
    add("|---|---|---|---|")
    for (loop, tr, name), n in r.noise.items():
        add(f"| {loop}/{tr} {name} | {n.seconds:.0f} | {n.foreign_cores:.2f} | {n.load} |")
    add("")
    noisy = [
        (k, s)
        for k, vals in r.figures.items()
        if k[-1] in ("rps", "ratio", "mibs", "cpu_us")
        and (s := Summary.of(vals)).ok
        and s.spread_pct > NOISY_SPREAD_PCT
    ]
    if noisy:
        add(
            f"Figures whose repetitions disagree by more than {NOISY_SPREAD_PCT:.0f}% "
            "(max - min over median):"
        )
        add("")
        for k, s in noisy:
            add(f"- {'/'.join(k)}: {s.spread_pct:.0f}%")
        add("")
    for note in r.notes:
        add(f"- {note}")
    if r.notes:
        add("")


def _all_concurrent(s: Summary) -> str:
    if not s.ok:
        return "n/a"
    return "yes" if s.low == 1.0 else f"**no** ({s.values.count(0.0)} of {len(s.values)} runs)"


def _short(text: str) -> str:
    return text.replace("|", "/").replace("\n", " ")[:90]


def _command(meta: Mapping[str, Any], plan: Plan) -> str:
    """The command line of the run as typed (a run without it recorded: its size only)."""
    argv = meta.get("argv")
    if argv is None:
        return "python -m bench" + (" --quick" if plan.quick else "")
    return f"python -m bench {argv}".rstrip()
