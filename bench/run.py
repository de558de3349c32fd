"""One command that measures what the connector costs against its peers, in one run.

    python -m bench            # the full run (about 11-17 minutes on 2 quiet cores)
    python -m bench --quick    # small sizes, a smoke run (about 2-3 minutes)

Starts the fast loopback upstream (bench/upstream.py: the Bee Flow service and Nextcloud in one
process), then per transport (and event loop) a connector process (bench/launcher.py, the real
`make_app`) and the comparators in front of the same upstream: a minimal aiohttp proxy, nginx
and the Node stack (bench/peers.py), and for the /nc upload the store-and-forward ceiling
(bench/ceiling.py). Every comparator runs back to back with the others in each repetition:
small-request req/s, latency and CPU per request; SSE per-event latency with 1 and 200 streams;
bulk MiB/s for download and upload via /api and /nc with each proxy's peak RSS; RSS per idle
SSE stream. Writes bench/results/<date>[-quick].md and a PNG beside it (bench/report.py,
bench/plot.py) and prints the report. docs/benchmarks.md explains the method.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import gc
import hashlib
import hmac
import json
import math
import os
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, Final, TypeVar

import attrs

from bench import client, peers, plot, proc, report, tools, wrk
from bench.children import Child, clean_env
from bench.client import Target
from bench.figures import PhaseNoise, Results
from bench.stats import percentile
from bench.upstream import BLOCK, raise_nofile

T = TypeVar("T")

GIT: Final = shutil.which("git") or "/usr/bin/git"
ROOT: Final = Path(__file__).resolve().parent.parent
RESULTS: Final = Path(__file__).resolve().parent / "results"
SECRET: Final = "bench-app-secret-" + "x" * 47
TENANT_KEY: Final = "bench-tenant-key-0123456789abcdef0123"
HP_KEY: Final = "bench-harp-shared-key"
UID: Final = "alice"
APP_ID: Final = "bee_flow"
APP_VERSION: Final = "1.0.0"
MIB: Final = 1 << 20
LOOPS: Final = ("asyncio", "uvloop")
TRANSPORTS: Final = ("tcp", "unix")
NOISY_SPREAD_PCT: Final = 25.0
BULK: Final = ("api-down", "api-up", "nc-down", "nc-up")
# Which comparators take part where: the peers proxy only /api (they have no /nc signature
# check), the ceiling only stands for the signed /nc upload.
SMALL_PEERS: Final = frozenset({"server", "ref", "nginx", "node"})
SSE_PEERS: Final = frozenset({"nginx", "node"})
BULK_PEERS: Final = {
    "nginx": ("api-down", "api-up"),
    "node": ("api-down", "api-up"),
    "ceiling": ("nc-up",),
}

# ------------------------------------------------------------------ plan


@attrs.frozen(kw_only=True)
class Plan:
    quick: bool
    reps: int
    small_seconds: int
    concurrency: int
    sse_single_events: int
    sse_single_ms: float
    sse_many: int
    sse_many_events: int
    sse_many_ms: float
    bulk_bytes: int
    bulk_reps: int
    idle_streams: int
    idle_reps: int
    transports: tuple[str, ...]
    loops: tuple[str, ...]
    loadgen: str
    harness_loop: str
    src: Path | None
    phases: tuple[str, ...]
    peers: tuple[str, ...] = peers.PEERS
    ceiling: bool = True
    nginx_buffer: str = ""
    src_label: str = ""

    @classmethod
    def make(cls, args: argparse.Namespace) -> Plan:
        have_uvloop = _has_module("uvloop")
        # the loop the connector runs on in production (BEEFLOW_EVENT_LOOP=auto: uvloop when
        # installed); `--loops asyncio,uvloop` compares the two and doubles the run
        default = ("uvloop",) if have_uvloop else ("asyncio",)
        loops = tuple(args.loops.split(",")) if args.loops else default
        if "uvloop" in loops and not have_uvloop:
            raise SystemExit("uvloop is not installed (pip install uvloop)")
        quick = bool(args.quick)
        if args.nginx_buffer and not peers.BUFFER_SIZE.fullmatch(args.nginx_buffer):
            raise SystemExit(f"--nginx-buffer: not an nginx size: {args.nginx_buffer!r}")
        return cls(
            quick=quick,
            reps=args.reps or (2 if quick else 5),
            small_seconds=args.seconds or (1 if quick else 4),
            concurrency=args.concurrency,
            sse_single_events=60 if quick else 300,
            sse_single_ms=10.0,
            sse_many=args.sse_streams,
            sse_many_events=12 if quick else 60,
            sse_many_ms=50.0,
            bulk_bytes=(args.bulk_mib or (64 if quick else 1024)) * MIB,
            bulk_reps=args.bulk_reps or (2 if quick else 3),
            idle_streams=args.idle_streams or (200 if quick else 2000),
            idle_reps=2 if quick else 3,
            transports=tuple(args.transports.split(",")),
            loops=loops,
            loadgen=args.loadgen,
            harness_loop="uvloop" if have_uvloop and args.harness_loop != "asyncio" else "asyncio",
            src=args.src,
            phases=tuple(args.phases.split(",")),
            peers=_peers(args.peers),
            ceiling=not args.no_ceiling,
            nginx_buffer=args.nginx_buffer,
            src_label=getattr(args, "src_label", ""),
        )


def _peers(text: str) -> tuple[str, ...]:
    chosen = tuple(p for p in text.split(",") if p and p != "none")
    unknown = sorted(set(chosen) - set(peers.PEERS))
    if unknown:
        raise SystemExit(f"--peers: unknown {', '.join(unknown)} (choose from nginx,node,none)")
    return chosen


def production_loop() -> str:
    """The loop the connector ships with (BEEFLOW_EVENT_LOOP=auto): uvloop when installed."""
    return "uvloop" if _has_module("uvloop") else "asyncio"


def _has_module(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


# ------------------------------------------------------------------ requests


def appapi_headers(uid: str) -> dict[str, str]:
    token = base64.b64encode(f"{uid}:{SECRET}".encode()).decode("ascii")
    return {
        "AUTHORIZATION-APP-API": token,
        "EX-APP-ID": APP_ID,
        "EX-APP-VERSION": APP_VERSION,
        "AA-VERSION": "32.0.0",
    }


def user_headers() -> dict[str, str]:
    return {**appapi_headers(UID), "Accept": "application/json"}


def nc_headers(method: str, path: str, body_sha256: str | None = None) -> dict[str, str]:
    """What the Bee Flow service sends to /nc: the v2 signature over the full received path."""
    from beeflow.signing import SIG_HEADER, UID_HEADER, nc_message_v2

    ts = int(time.time())
    digest = body_sha256 or hashlib.sha256(b"").hexdigest()
    mac = hmac.new(
        TENANT_KEY.encode(),
        nc_message_v2(ts, method, path, UID, digest).encode(),
        hashlib.sha256,
    ).hexdigest()
    return {SIG_HEADER: f"{ts}.{mac}", UID_HEADER: UID, "Accept": "*/*"}


def check_signing_matches_beeflow() -> None:
    """Our signer must agree with beeflow.signing.sign_nc_v2 (which needs the whole body)."""
    from beeflow.signing import SIG_HEADER, sign_nc_v2

    path = "/nc/remote.php/dav/files/alice/x?y=1"
    body = BLOCK[:1000]
    ours = nc_headers("PUT", path, hashlib.sha256(body).hexdigest())[SIG_HEADER]
    ts = int(ours.split(".")[0])
    theirs = sign_nc_v2(TENANT_KEY, ts, "PUT", path, UID, body)
    if ours != theirs:
        raise SystemExit("bench signer disagrees with beeflow.signing.sign_nc_v2")


_BODY_HASH: dict[int, str] = {}


def body_sha256(total: int) -> str:
    """sha256 of `total` bytes of the repeated upload block (cached per size)."""
    if total not in _BODY_HASH:
        h = hashlib.sha256()
        full, part = divmod(total, len(BLOCK))
        for _ in range(full):
            h.update(BLOCK)
        h.update(BLOCK[:part])
        _BODY_HASH[total] = h.hexdigest()
    return _BODY_HASH[total]


# ------------------------------------------------------------------ processes


def connector_env(
    transport: str, upstream_port: int, work: Path, pythonpath: Path
) -> dict[str, str]:
    data = work / "data"
    data.mkdir(exist_ok=True)
    spool = work / "spool"
    spool.mkdir(exist_ok=True, mode=0o700)
    env = clean_env()
    env.update(
        {
            # the connector's source first (the cwd, too), then bench/ from this checkout
            "PYTHONPATH": os.pathsep.join(dict.fromkeys([str(pythonpath), str(ROOT)])),
            "APP_ID": APP_ID,
            "APP_SECRET": SECRET,
            "APP_VERSION": APP_VERSION,
            "APP_HOST": "127.0.0.1",
            "APP_PORT": "8080",  # unused: the launcher binds an ephemeral port
            "APP_PERSISTENT_STORAGE": str(data),
            "NEXTCLOUD_URL": f"http://127.0.0.1:{upstream_port}",
            "BEEFLOW_API_BASE_URL": f"http://127.0.0.1:{upstream_port}",
            "BEEFLOW_TENANT_KEY": TENANT_KEY,
            "BEEFLOW_SPOOL_DIR": str(spool),
            "BEEFLOW_LOG_LEVEL": "warning",
        }
    )
    if transport == "unix":
        env.update(
            {
                "HP_SHARED_KEY": HP_KEY,
                "HP_FRP_ADDRESS": "127.0.0.1",
                "HP_EXAPP_SOCK": str(work / "c.sock"),
            }
        )
    return env


# ------------------------------------------------------------------ accounting of noise


class CpuAccount:
    """How much of the machine's CPU went to processes that are not ours, between marks."""

    def __init__(self) -> None:
        self.pids: set[int] = set()

    @staticmethod
    def machine_busy() -> float:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")

    def ours(self) -> float:
        total = 0.0
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
            ru = resource.getrusage(who)
            total += ru.ru_utime + ru.ru_stime
        for pid in list(self.pids):
            try:
                total += proc.cpu_seconds(pid)
            except OSError:
                self.pids.discard(pid)
        return total

    def mark(self) -> tuple[float, float, float]:
        return time.monotonic(), self.machine_busy(), self.ours()

    @staticmethod
    def foreign_cores(a: tuple[float, float, float], b: tuple[float, float, float]) -> float:
        wall = b[0] - a[0]
        if wall <= 0:
            return 0.0
        return max(0.0, ((b[1] - a[1]) - (b[2] - a[2])) / wall)


# ------------------------------------------------------------------ the bench


@attrs.frozen
class Via:
    """One way to the upstream: `direct`, or through a proxy process (`child`) whose CPU time
    and memory are read from /proc, summed over its process tree."""

    name: str
    target: Target
    child: Child | None = None

    def cpu(self) -> float:
        return self.child.cpu_seconds() if self.child is not None else 0.0


class Bench:
    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.results = Results()
        self.work = Path(tempfile.mkdtemp(prefix="bfb-", dir="/tmp"))
        self.account = CpuAccount()
        self.upstream: Child | None = None
        self.up_tcp = Target()
        self.up_unix = Target()
        self.src = plan.src or ROOT
        self.loadgen_used: dict[str, str] = {}
        # comparators that cannot run here, and why (the report says so instead of failing)
        self.missing: dict[str, str] = {}
        self.node_modules: Path | None = None
        self._uploads = 0  # signed /nc uploads so far: each one's path is unique

    # -- lifecycle

    def prepare(self) -> None:
        """Install what is missing (wrk, nginx: apt as root; the Node stack: npm into a cache
        outside the repository). Synchronous, before anything is timed."""
        tools_needed = [t for t in ("nginx",) if t in self.plan.peers]
        if self.plan.loadgen != "python" and "tcp" in self.plan.transports:
            tools_needed.append("wrk")
        self.missing.update(tools.ensure_apt(tools_needed))
        if self.plan.loadgen == "wrk" and "wrk" in self.missing:
            raise SystemExit(f"--loadgen wrk: {self.missing['wrk']}")
        if "node" in self.plan.peers:
            self.node_modules, why = tools.ensure_node_stack()
            if why:
                self.missing["node"] = why

    async def start_upstream(self) -> None:
        sock = self.work / "u.sock"
        env = {**clean_env(), "PYTHONPATH": str(ROOT)}
        self.upstream = await Child.start(
            "upstream",
            [
                sys.executable,
                "-m",
                "bench.upstream",
                "--unix",
                str(sock),
                "--loop",
                self.plan.harness_loop,
            ],
            env,
            ROOT,
            self.work / "upstream.log",
        )
        self.account.pids.add(self.upstream.pid)
        self.up_tcp = Target(port=int(self.upstream.ready))
        self.up_unix = Target(unix=str(sock))

    async def start_connector(
        self,
        loop: str,
        transport: str,
        src: Path | None = None,
        name: str = "c",
        app: str = "beeflow",
    ) -> tuple[Child, Target]:
        src = src or self.src
        env = connector_env(transport, self.up_tcp.port, self.work, src)
        argv = [sys.executable, "-m", "bench.launcher", "--transport", transport, "--loop", loop]
        argv += ["--app", app]
        if transport == "unix":
            argv += ["--unix", str(self.work / f"{name}.sock")]
        child = await Child.start(
            f"connector ({loop}, {transport})", argv, env, src, self.work / f"{name}.log"
        )
        self.account.pids.add(child.pid)
        target = Target(unix=child.ready) if transport == "unix" else Target(port=int(child.ready))
        return child, target

    async def start_peer(self, name: str, transport: str) -> Via | None:
        """nginx, the Node stack or the ceiling in front of the upstream; None (and the reason
        in `missing`) when it cannot run here."""
        if name in self.missing:
            return None
        port = self.up_tcp.port
        try:
            if name == "nginx":
                child, target = await peers.start_nginx(
                    self.work, transport, port, buffer=self.plan.nginx_buffer
                )
            elif name == "node":
                assert self.node_modules is not None
                child, target = await peers.start_node(
                    self.work, transport, port, self.node_modules
                )
            else:
                child, target = await peers.start_ceiling(self.work, transport, port, TENANT_KEY)
        except RuntimeError as exc:
            self.missing[name] = str(exc).splitlines()[0]
            return None
        for pid in child.pids():
            self.account.pids.add(pid)
        return Via(name, target, child)

    async def stop(self, child: Child | None) -> None:
        if child is not None:
            pids = child.pids()
            await child.stop()
            self.account.pids.difference_update(pids)

    async def run(self) -> dict[str, Any]:
        """Measure everything; the run's facts for the report (the figures are in results)."""
        started = dt.datetime.now().astimezone()
        head = _git_head()
        load_before = proc.loadavg()
        t0 = self.account.mark()
        check_signing_matches_beeflow()
        await self.start_upstream()
        try:
            # loops innermost: asyncio and uvloop of one transport run minutes apart, not
            # half a run apart, so a change in the machine's load hits both alike
            for transport in self.plan.transports:
                for loop in self.plan.loops:
                    await self.run_pair(loop, transport)
        finally:
            await self.stop(self.upstream)
        t1 = self.account.mark()
        meta = {
            "started": started,
            "head": head,
            "seconds": t1[0] - t0[0],
            "load_before": load_before,
            "load_after": proc.loadavg(),
            "foreign_cores": CpuAccount.foreign_cores(t0, t1),
            "missing": dict(self.missing),
            "loadgen": dict(self.loadgen_used),
            "argv": shlex.join(sys.argv[1:]),
        }
        return meta

    async def run_pair(self, loop: str, transport: str) -> None:
        plan = self.plan
        label = f"{loop}/{transport}"
        print(f"== {label}", file=sys.stderr, flush=True)
        conn, target = await self.start_connector(loop, transport)
        beeflow = Via("beeflow", target, conn)
        others: list[Via] = []
        try:
            for name in plan.peers:
                via = await self.start_peer(name, transport)
                if via is not None:
                    others.append(via)
            await self.warm(target)
            self.results.add((loop, transport, "rss_start"), proc.rss_bytes(conn.pid))
            if "small" in plan.phases:
                ref = await self.start_connector(loop, transport, name="ref", app="minimal")
                srv = await self.start_connector(loop, transport, name="srv", app="server")
                try:
                    small = [Via("server", srv[1], srv[0]), Via("ref", ref[1], ref[0])]
                    await self.phase(
                        loop,
                        transport,
                        "small",
                        self.small(loop, transport, beeflow, small + others),
                    )
                finally:
                    await self.stop(ref[0])
                    await self.stop(srv[0])
            if "sse" in plan.phases:
                await self.phase(loop, transport, "sse", self.sse(loop, transport, beeflow, others))
            if "bulk" in plan.phases:
                ceiling = await self.start_peer("ceiling", transport) if plan.ceiling else None
                try:
                    extra = [*others, ceiling] if ceiling is not None else others
                    await self.phase(
                        loop, transport, "bulk", self.bulk(loop, transport, beeflow, extra)
                    )
                finally:
                    await self.stop(ceiling.child if ceiling is not None else None)
        finally:
            await self.stop(conn)
            for via in others:
                await self.stop(via.child)
        if "idle" in plan.phases:
            await self.phase(loop, transport, "idle", self.idle(loop, transport))

    async def phase(self, loop: str, transport: str, name: str, coro: Awaitable[None]) -> None:
        load = proc.loadavg()
        a = self.account.mark()
        print(f"   {name} (load {load})", file=sys.stderr, flush=True)
        await coro
        b = self.account.mark()
        noise = PhaseNoise(b[0] - a[0], CpuAccount.foreign_cores(a, b), load)
        self.results.noise[(loop, transport, name)] = noise

    @property
    def upstream_pid(self) -> int:
        assert self.upstream is not None
        return self.upstream.pid

    def direct(self, transport: str) -> Target:
        return self.up_unix if transport == "unix" else self.up_tcp

    async def warm(self, target: Target) -> None:
        """Fill the user cache, the token cache and the pools before anything is timed."""
        raw = client.build_request("GET", "/api/small", user_headers())
        with contextlib.suppress(Exception):
            await client.load(target, raw, concurrency=4, duration=0.3)

    async def probe(self, target: Target, raw: bytes) -> tuple[int, str]:
        conn = await target.connect()
        try:
            resp = await asyncio.wait_for(conn.send(raw, keep_body=True), timeout=30)
        finally:
            conn.close()
        body = bytes(resp.body or b"")[:200].decode(errors="replace")
        return resp.status, body

    # -- small requests

    def small_request(self, kind: str) -> tuple[str, dict[str, str]]:
        if kind == "nc":
            path = "/nc/remote.php/dav/files/alice/small"
            return path, nc_headers("GET", path)
        return "/api/small", user_headers()

    async def small(self, loop: str, transport: str, beeflow: Via, others: list[Via]) -> None:
        """Every route in turn, `reps` times: direct, aiohttp's server alone, the minimal aiohttp
        proxy, nginx, the Node stack, beeflow's /api and /nc; and aiohttp's client alone."""
        plan = self.plan
        res = self.results
        routes: dict[str, Via] = {"direct": Via("direct", self.direct(transport), beeflow.child)}
        routes.update((via.name, via) for via in others if via.name in SMALL_PEERS)
        for kind in ("api", "nc"):
            path, headers = self.small_request(kind)
            raw = client.build_request("GET", path, headers)
            status, body = await self.probe(beeflow.target, raw)
            if status != 200:
                res.unavailable[(loop, transport, "small", kind)] = f"HTTP {status} {body}"
                continue
            routes[kind] = Via(kind, beeflow.target, beeflow.child)
        use_wrk = transport == "tcp" and plan.loadgen != "python" and wrk.available() is not None
        self.loadgen_used[transport] = "wrk" if use_wrk else "python"
        for kind, via in routes.items():  # warm each route with the real load generator
            await self.small_once(via.target, kind, use_wrk, seconds=1)
        reps = plan.reps
        rep = 0
        while rep < reps:
            for kind, via in routes.items():
                cpu0 = via.cpu()
                up0 = proc.cpu_seconds(self.upstream_pid)
                rps, p50, p99, requests, errors = await self.small_once(
                    via.target, kind, use_wrk, seconds=plan.small_seconds
                )
                cpu = via.cpu() - cpu0
                up_cpu = proc.cpu_seconds(self.upstream_pid) - up0
                key = (loop, transport, "small", kind)
                res.add((*key, "upstream_cpu_us"), up_cpu / max(requests, 1) * 1e6)
                res.add((*key, "rps"), rps)
                res.add((*key, "p50"), p50)
                res.add((*key, "p99"), p99)
                res.add((*key, "errors"), errors)
                if kind == "direct":
                    res.add((*key, "idle_cpu"), cpu)
                else:
                    res.add((*key, "cpu_us"), cpu / max(requests, 1) * 1e6)
                    direct = res.figures[(loop, transport, "small", "direct", "rps")][-1]
                    res.add((*key, "ratio"), rps / direct if direct else math.nan)
            await self.client_floor(loop, transport)
            rep += 1
            if rep == reps and reps == plan.reps:
                noisy = [
                    k
                    for k in routes
                    if k != "direct"
                    and res.get((loop, transport, "small", k, "ratio")).spread_pct
                    > NOISY_SPREAD_PCT
                ]
                if noisy:
                    res.notes.append(
                        f"{loop}/{transport} small: ratio spread above {NOISY_SPREAD_PCT:.0f}% "
                        f"({', '.join(noisy)}); ran {plan.reps} more repetitions"
                    )
                    reps += plan.reps

    async def client_floor(self, loop: str, transport: str) -> None:
        """aiohttp's ClientSession alone against the upstream (always TCP, as the connector's
        own upstream link), in its own process: its CPU per request is the client half of
        what any aiohttp proxy pays."""
        plan = self.plan
        argv = [sys.executable, "-m", "bench.aioclient", "--loop", loop]
        argv += ["--url", f"http://127.0.0.1:{self.up_tcp.port}/api/small"]
        argv += ["--concurrency", str(plan.concurrency), "--seconds", str(plan.small_seconds)]
        env = {**clean_env(), "PYTHONPATH": str(ROOT)}
        process = await asyncio.create_subprocess_exec(
            *argv, env=env, cwd=str(ROOT), stdout=asyncio.subprocess.PIPE
        )
        out, _ = await process.communicate()
        key = (loop, transport, "small", "client")
        if process.returncode != 0:
            self.results.unavailable[key] = f"bench.aioclient exited {process.returncode}"
            return
        got = json.loads(out.decode().strip().splitlines()[-1])
        requests = max(int(got["requests"]), 1)
        self.results.add((*key, "rps"), requests / got["seconds"])
        self.results.add((*key, "cpu_us"), got["cpu_s"] / requests * 1e6)
        self.results.add((*key, "errors"), got["errors"])

    async def small_once(
        self, target: Target, kind: str, use_wrk: bool, *, seconds: int
    ) -> tuple[float, float, float, int, int]:
        plan = self.plan
        path, headers = self.small_request("nc" if kind == "nc" else "api")
        if use_wrk:
            result = await wrk.run(
                f"http://127.0.0.1:{target.port}{path}",
                "GET",
                headers,
                connections=plan.concurrency,
                seconds=seconds,
            )
            return result.rps, result.p50_us, result.p99_us, result.requests, result.errors
        raw = client.build_request("GET", path, headers)
        lr = await client.load(target, raw, concurrency=plan.concurrency, duration=seconds)
        lat = sorted(lr.latencies_us)
        return lr.rps, percentile(lat, 50), percentile(lat, 99), lr.requests, lr.errors

    # -- SSE

    async def sse(self, loop: str, transport: str, beeflow: Via, others: list[Via]) -> None:
        """Per-event latency direct and through beeflow with 1 stream, and direct, through
        beeflow, nginx and the Node stack with `sse_many` streams, back to back."""
        plan = self.plan
        res = self.results
        probe_raw = client.build_request("GET", "/api/sse?n=1&ms=1", user_headers())
        status, body = await self.probe(beeflow.target, probe_raw)
        if status != 200:
            res.unavailable[(loop, transport, "sse")] = f"HTTP {status} {body}"
            return
        direct = Via("direct", self.direct(transport))
        many = [direct, beeflow, *(v for v in others if v.name in SSE_PEERS)]
        cases = [
            (1, plan.sse_single_events, plan.sse_single_ms, 100, [direct, beeflow]),
            (plan.sse_many, plan.sse_many_events, plan.sse_many_ms, 500, many),
        ]
        for streams, events, ms, wait, ways in cases:
            path = f"/api/sse?n={events}&ms={ms:g}&wait={wait}"
            raw = client.build_request(
                "GET", path, {**user_headers(), "Accept": "text/event-stream"}
            )
            for _ in range(plan.reps if streams > 1 else max(2, plan.reps // 2)):
                for via in ways:
                    cpu0 = via.cpu()
                    sse = await asyncio.wait_for(
                        client.sse_run(via.target, raw, streams), timeout=300
                    )
                    key = (loop, transport, "sse", str(streams), via.name)
                    if via.child is not None:
                        res.add((*key, "cpu_us"), (via.cpu() - cpu0) / max(sse.events, 1) * 1e6)
                    if not sse.concurrent:
                        res.note(
                            f"{loop}/{transport} SSE {via.name}: the {streams} streams did not "
                            "all run at the same time (some waited for others to end: a "
                            "concurrency cap); their latencies do not show the load of "
                            f"{streams} streams"
                        )
                    res.add((*key, "concurrent"), 1.0 if sse.concurrent else 0.0)
                    lat = sorted(sse.latencies_us)
                    res.add((*key, "p50"), percentile(lat, 50))
                    res.add((*key, "p99"), percentile(lat, 99))
                    res.add((*key, "lost"), streams * events - sse.events + sse.failed)
                    if via.name != "direct":
                        base = (loop, transport, "sse", str(streams), "direct")
                        for q in ("p50", "p99"):
                            res.add(
                                (*key, f"added_{q}"),
                                res.figures[(*key, q)][-1] - res.figures[(*base, q)][-1],
                            )

    # -- bulk

    def bulk_request(self, scenario: str, through: bool) -> tuple[bytes, int]:
        """(request head, body bytes to send after it)."""
        n = self.plan.bulk_bytes
        api, direction = scenario.split("-")
        if api == "api":
            headers = user_headers()
            if direction == "down":
                return client.build_request("GET", f"/api/bulk?bytes={n}", headers), 0
            headers["Content-Type"] = "application/octet-stream"
            return client.build_request("POST", "/api/upload", headers, content_length=n), n
        dav = "/remote.php/dav/files/alice"
        if direction == "down":
            path = f"{dav}/bulk?bytes={n}"
            headers = nc_headers("GET", "/nc" + path) if through else {"Accept": "*/*"}
            return client.build_request("GET", ("/nc" if through else "") + path, headers), 0
        # A fresh query per upload: the same signed request twice in one second is a replay
        # (the connector's /nc replay cache is shared by every connector on one volume).
        self._uploads += 1
        path = f"{dav}/upload?seq={self._uploads}"
        headers = nc_headers("PUT", "/nc" + path, body_sha256(n)) if through else {}
        headers["Content-Type"] = "application/octet-stream"
        target = ("/nc" if through else "") + path
        head = client.build_request("PUT", target, headers, content_length=n)
        return head, n

    async def bulk_once(self, target: Target, scenario: str, through: bool) -> tuple[float, str]:
        """(MiB/s, problem or '')."""
        head, upload = self.bulk_request(scenario, through)
        n = self.plan.bulk_bytes
        if upload:
            seconds, resp = await client.upload(target, head, BLOCK, upload)
            body = bytes(resp.body or b"")
            if resp.status not in (200, 201):
                return math.nan, f"HTTP {resp.status} {body[:200].decode(errors='replace')}"
            try:
                received = json.loads(body)["received"]
            except (ValueError, KeyError, TypeError):
                return math.nan, f"unexpected answer {body[:200]!r}"
            if received != n:
                return math.nan, f"upstream received {received} of {n} bytes"
        else:
            got, seconds, status = await client.download(target, head)
            if status != 200 or got != n:
                return math.nan, f"HTTP {status}, {got} of {n} bytes"
        return n / seconds / MIB, ""

    async def bulk(self, loop: str, transport: str, beeflow: Via, others: list[Via]) -> None:
        """Each scenario `bulk_reps` times: direct, then each proxy that takes part in it
        (nginx and the Node stack for /api, the ceiling for the /nc upload), then beeflow."""
        res = self.results
        if "nc-up" in BULK:
            await asyncio.to_thread(body_sha256, self.plan.bulk_bytes)
        for scenario in BULK:
            ways = [v for v in others if scenario in BULK_PEERS.get(v.name, ())] + [beeflow]
            for _ in range(self.plan.bulk_reps):
                direct, problem = await asyncio.wait_for(
                    self.bulk_once(self.direct(transport), scenario, False), timeout=600
                )
                if problem:
                    raise RuntimeError(f"direct {scenario}: {problem}")
                res.add((loop, transport, "bulk", scenario, "direct", "mibs"), direct)
                for via in list(ways):
                    key = (loop, transport, "bulk", scenario, via.name)
                    assert via.child is not None
                    gc.collect()
                    async with proc.RssSampler(via.child.pid, descendants=True) as rss:
                        rate, problem = await asyncio.wait_for(
                            self.bulk_once(via.target, scenario, True), timeout=600
                        )
                    if problem:
                        res.unavailable[key] = problem
                        ways.remove(via)  # its figures so far stay paired with the first reps
                        continue
                    res.add((*key, "mibs"), rate)
                    res.add((*key, "ratio"), rate / direct)
                    res.add((*key, "peak_rss"), rss.peak)
                    res.add((*key, "rss_growth"), rss.growth)

    # -- idle streams

    async def idle(self, loop: str, transport: str) -> None:
        res = self.results
        n = self.plan.idle_streams
        raw = client.build_request(
            "GET", "/api/sse?idle=1", {**user_headers(), "Accept": "text/event-stream"}
        )
        for _ in range(self.plan.idle_reps):
            # a fresh connector each time: freed memory that stays mapped would hide the cost
            conn, target = await self.start_connector(loop, transport)
            streams = client.IdleStreams()
            try:
                await self.warm(target)
                status, body = await self.probe(
                    target, client.build_request("GET", "/api/sse?n=1&ms=1", user_headers())
                )
                if status != 200:
                    res.unavailable[(loop, transport, "idle")] = f"HTTP {status} {body}"
                    return
                await asyncio.sleep(0.3)
                base = proc.rss_bytes(conn.pid)
                await asyncio.wait_for(streams.open(target, raw, n), timeout=300)
                await asyncio.sleep(1.0)
                held = proc.rss_bytes(conn.pid)
                ok = streams.opened
                key = (loop, transport, "idle")
                res.add((*key, "opened"), ok)
                if streams.failed:
                    res.note(
                        f"{loop}/{transport} idle: only {ok} of {n} streams opened (the next "
                        "got no first event within 10 s: a concurrency cap); KiB per stream "
                        "is over those, so fixed costs weigh more"
                    )
                res.add((*key, "base"), base)
                res.add((*key, "held"), held)
                res.add((*key, "per_stream"), (held - base) / max(ok, 1))
                streams.close()
                await asyncio.sleep(1.5)
                res.add((*key, "after"), proc.rss_bytes(conn.pid))
                if streams.failed:
                    return  # a cap does not change between repetitions
            finally:
                streams.close()
                await self.stop(conn)


def _git_head() -> str:
    try:
        head = subprocess.run(
            [GIT, "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            [GIT, "-C", str(ROOT), "status", "--porcelain", "--", "beeflow"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" + uncommitted changes in beeflow/" if dirty else "")


# ------------------------------------------------------------------ entry point


def export_committed(work: Path) -> Path:
    """`git archive HEAD beeflow` plus the working bench/ into `work`: measure the committed
    connector while others edit the working tree."""
    dest = work / "src"
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        [GIT, "-C", str(ROOT), "archive", "HEAD", "beeflow"], capture_output=True, check=True
    ).stdout
    subprocess.run(
        [shutil.which("tar") or "/bin/tar", "-x", "-C", str(dest)], input=archive, check=True
    )
    shutil.copytree(ROOT / "bench", dest / "bench", ignore=shutil.ignore_patterns("results"))
    return dest


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Measure the connector against direct, a minimal aiohttp proxy, nginx and "
        "the Node stack, in one run.",
    )
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    p.add_argument("--reps", type=int, default=0, help="repetitions per figure")
    p.add_argument("--seconds", type=int, default=0, help="seconds per small-request run")
    p.add_argument("--concurrency", type=int, default=32, help="connections (small requests)")
    p.add_argument("--sse-streams", type=int, default=200, help="streams in the many-stream test")
    p.add_argument("--bulk-mib", type=int, default=0, help="MiB per bulk run (default 1024)")
    p.add_argument("--bulk-reps", type=int, default=0)
    p.add_argument("--idle-streams", type=int, default=0, help="idle SSE streams (default 2000)")
    p.add_argument("--transports", default=",".join(TRANSPORTS), help="tcp,unix")
    p.add_argument(
        "--loops",
        default="",
        help="connector loops: asyncio,uvloop (default: uvloop when installed, else asyncio)",
    )
    p.add_argument("--phases", default="small,sse,bulk,idle")
    p.add_argument(
        "--peers",
        default=",".join(peers.PEERS),
        help="comparators besides direct and the minimal aiohttp proxy: nginx,node or none",
    )
    p.add_argument(
        "--nginx-buffer",
        default="",
        metavar="SIZE",
        help="nginx's proxy and client body buffer size, e.g. 256k (default: nginx's own, "
        "one page)",
    )
    p.add_argument(
        "--no-ceiling",
        action="store_true",
        help="skip the store-and-forward ceiling of the /nc upload",
    )
    p.add_argument(
        "--loadgen",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="small requests over TCP: wrk when installed (auto), or the Python one",
    )
    p.add_argument(
        "--harness-loop",
        choices=("auto", "asyncio"),
        default="auto",
        help="the upstream and the Python clients use uvloop when installed (auto)",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--src",
        type=Path,
        default=None,
        help="run the connector from this source tree (default: the working tree)",
    )
    src.add_argument(
        "--committed",
        action="store_true",
        help="run the connector from `git archive HEAD` (ignore uncommitted edits)",
    )
    p.add_argument("--out", type=Path, default=None, help="results file (default bench/results/)")
    p.add_argument("--no-save", action="store_true", help="print only")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_nofile()
    tmp_src: Path | None = None
    if args.committed:
        tmp_src = Path(tempfile.mkdtemp(prefix="bfb-src-", dir="/tmp"))
        args.src_label = f"git archive {_git_head().split()[0]} (committed code only)"
        args.src = export_committed(tmp_src)
    plan = Plan.make(args)
    bench = Bench(plan)
    bench.prepare()
    factory = None
    if plan.harness_loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    out = args.out or RESULTS / (
        f"{dt.datetime.now():%Y-%m-%d-%H%M}{'-quick' if plan.quick else ''}.md"
    )
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            meta = runner.run(bench.run())
    finally:
        shutil.rmtree(bench.work, ignore_errors=True)
        if tmp_src is not None:
            shutil.rmtree(tmp_src, ignore_errors=True)
    picture = None if args.no_save else out.with_suffix(".png")
    if picture is not None:
        meta["plot_problem"] = plot.write(plan, bench.results, picture, report.title(meta, plan))
        meta["plot"] = picture.name if not meta["plot_problem"] else ""
    text = report.render(plan, bench.results, meta)
    print(text)
    if not args.no_save:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
        print(
            f"\nwritten to {out}" + (f" and {picture}" if meta.get("plot") else ""), file=sys.stderr
        )
    return 0
