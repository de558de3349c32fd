"""One command that measures what the connector costs against a direct connection, in one run.

    python -m bench            # the full run (about 15-25 minutes on 2 cores)
    python -m bench --quick    # small sizes, a smoke run (about 1-2 minutes)

Starts the fast loopback upstream (bench/upstream.py: the Bee Flow service and Nextcloud in one
process), then for each event loop and transport a connector process (bench/launcher.py, the
real `make_app`), and compares through-beeflow with direct, repetition by repetition:
small-request req/s, latency and the connector's CPU per request; SSE per-event latency with 1
and 200 streams; bulk MiB/s for download and upload via /api and via /nc (signed, spooled) with
the connector's peak RSS; RSS per idle SSE stream. Writes bench/results/<date>[-quick].md and
prints it. docs/benchmarks.md explains the method and how to read the tables.
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
import importlib.metadata
import json
import math
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

import attrs

from bench import client, proc, wrk
from bench.client import Target
from bench.stats import Summary, percentile
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
    src_label: str = ""

    @classmethod
    def make(cls, args: argparse.Namespace) -> Plan:
        have_uvloop = _has_module("uvloop")
        default = LOOPS if have_uvloop else LOOPS[:1]
        loops = tuple(args.loops.split(",")) if args.loops else default
        if "uvloop" in loops and not have_uvloop:
            raise SystemExit("uvloop is not installed (pip install uvloop)")
        quick = bool(args.quick)
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
            src_label=getattr(args, "src_label", ""),
        )


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


class Child:
    """A subprocess that prints `READY <value>` when it serves; stderr goes to a log file."""

    def __init__(self, name: str, process: asyncio.subprocess.Process, log: Path) -> None:
        self.name = name
        self.process = process
        self.log = log
        self.ready = ""

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    async def start(
        cls, name: str, argv: list[str], env: Mapping[str, str], cwd: Path, log: Path
    ) -> Child:
        with log.open("ab") as err:
            process = await asyncio.create_subprocess_exec(
                *argv,
                env=dict(env),
                cwd=str(cwd),
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                start_new_session=True,
            )
        child = cls(name, process, log)
        assert process.stdout is not None
        try:
            line = await asyncio.wait_for(process.stdout.readline(), timeout=60)
        except TimeoutError:
            line = b""
        text = line.decode().strip()
        if not text.startswith("READY "):
            await child.stop()
            tail = (await asyncio.to_thread(log.read_text, errors="replace"))[-3000:]
            raise RuntimeError(f"{name} did not start ({text!r}); its log:\n{tail}")
        child.ready = text[6:]
        return child

    async def stop(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), timeout=15)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                await self.process.wait()


def _clean_env() -> dict[str, str]:
    drop = ("APP_", "BEEFLOW_", "HP_", "NEXTCLOUD_", "AA_")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


def connector_env(
    transport: str, upstream_port: int, work: Path, pythonpath: Path
) -> dict[str, str]:
    data = work / "data"
    data.mkdir(exist_ok=True)
    spool = work / "spool"
    spool.mkdir(exist_ok=True, mode=0o700)
    env = _clean_env()
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


# ------------------------------------------------------------------ results


@attrs.define
class Results:
    figures: dict[tuple[str, ...], list[float]] = attrs.field(factory=dict)
    notes: list[str] = attrs.field(factory=list)
    unavailable: dict[tuple[str, ...], str] = attrs.field(factory=dict)
    phase_noise: list[tuple[str, float, str]] = attrs.field(factory=list)

    def add(self, key: tuple[str, ...], value: float) -> None:
        self.figures.setdefault(key, []).append(value)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def get(self, key: tuple[str, ...]) -> Summary:
        return Summary.of(self.figures.get(key, []))


# ------------------------------------------------------------------ the bench


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

    # -- lifecycle

    async def start_upstream(self) -> None:
        sock = self.work / "u.sock"
        env = {**_clean_env(), "PYTHONPATH": str(ROOT)}
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

    async def stop(self, child: Child | None) -> None:
        if child is not None:
            await child.stop()
            self.account.pids.discard(child.pid)

    async def run(self) -> str:
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
        }
        return render(self.plan, self.results, meta, self.loadgen_used)

    async def run_pair(self, loop: str, transport: str) -> None:
        plan = self.plan
        label = f"{loop}/{transport}"
        print(f"== {label}", file=sys.stderr, flush=True)
        conn, target = await self.start_connector(loop, transport)
        try:
            await self.warm(target)
            self.results.add((loop, transport, "rss_start"), proc.rss_bytes(conn.pid))
            if "small" in plan.phases:
                ref = await self.start_connector(loop, transport, name="ref", app="minimal")
                srv = await self.start_connector(loop, transport, name="srv", app="server")
                try:
                    await self.phase(
                        label, "small", self.small(loop, transport, conn, target, ref, srv)
                    )
                finally:
                    await self.stop(ref[0])
                    await self.stop(srv[0])
            if "sse" in plan.phases:
                await self.phase(label, "sse", self.sse(loop, transport, conn, target))
            if "bulk" in plan.phases:
                await self.phase(label, "bulk", self.bulk(loop, transport, conn, target))
        finally:
            await self.stop(conn)
        if "idle" in plan.phases:
            await self.phase(label, "idle", self.idle(loop, transport))

    async def phase(self, label: str, name: str, coro: Awaitable[None]) -> None:
        load = proc.loadavg()
        a = self.account.mark()
        print(f"   {name} (load {load})", file=sys.stderr, flush=True)
        await coro
        b = self.account.mark()
        self.results.phase_noise.append((f"{label} {name}", CpuAccount.foreign_cores(a, b), load))

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

    async def small(
        self,
        loop: str,
        transport: str,
        conn: Child,
        target: Target,
        ref: tuple[Child, Target],
        srv: tuple[Child, Target],
    ) -> None:
        plan = self.plan
        res = self.results
        routes: dict[str, tuple[Target, int]] = {
            "direct": (self.direct(transport), conn.pid),
            "server": (srv[1], srv[0].pid),
            "ref": (ref[1], ref[0].pid),
        }
        for kind in ("api", "nc"):
            path, headers = self.small_request(kind)
            status, body = await self.probe(target, client.build_request("GET", path, headers))
            if status != 200:
                res.unavailable[(loop, transport, "small", kind)] = f"HTTP {status} {body}"
                continue
            routes[kind] = (target, conn.pid)
        use_wrk = transport == "tcp" and plan.loadgen != "python" and wrk.available() is not None
        if plan.loadgen == "wrk" and transport == "tcp" and not use_wrk:
            raise SystemExit("--loadgen wrk: wrk is not installed (apt-get install -y wrk)")
        self.loadgen_used[transport] = "wrk" if use_wrk else "python"
        for kind, (tgt, _pid) in routes.items():  # warm each route with the real load generator
            await self.small_once(tgt, kind, use_wrk, seconds=1)
        reps = plan.reps
        rep = 0
        while rep < reps:
            for kind, (tgt, pid) in routes.items():
                cpu0 = proc.cpu_seconds(pid)
                up0 = proc.cpu_seconds(self.upstream_pid)
                rps, p50, p99, requests, errors = await self.small_once(
                    tgt, kind, use_wrk, seconds=plan.small_seconds
                )
                cpu = proc.cpu_seconds(pid) - cpu0
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
        env = {**_clean_env(), "PYTHONPATH": str(ROOT)}
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

    async def sse(self, loop: str, transport: str, conn: Child, target: Target) -> None:
        plan = self.plan
        res = self.results
        probe_raw = client.build_request("GET", "/api/sse?n=1&ms=1", user_headers())
        status, body = await self.probe(target, probe_raw)
        if status != 200:
            res.unavailable[(loop, transport, "sse")] = f"HTTP {status} {body}"
            return
        cases = [
            (1, plan.sse_single_events, plan.sse_single_ms, 100),
            (plan.sse_many, plan.sse_many_events, plan.sse_many_ms, 500),
        ]
        for streams, events, ms, wait in cases:
            path = f"/api/sse?n={events}&ms={ms:g}&wait={wait}"
            raw = client.build_request(
                "GET", path, {**user_headers(), "Accept": "text/event-stream"}
            )
            for _ in range(plan.reps if streams > 1 else max(2, plan.reps // 2)):
                got: dict[str, tuple[float, float]] = {}
                for kind, tgt in (("direct", self.direct(transport)), ("beeflow", target)):
                    cpu0 = proc.cpu_seconds(conn.pid)
                    sse = await asyncio.wait_for(client.sse_run(tgt, raw, streams), timeout=300)
                    if kind == "beeflow":
                        cpu = proc.cpu_seconds(conn.pid) - cpu0
                        res.add(
                            (loop, transport, "sse", str(streams), "cpu_us"),
                            cpu / max(sse.events, 1) * 1e6,
                        )
                    count, failed = sse.events, sse.failed
                    if not sse.concurrent:
                        res.note(
                            f"{loop}/{transport} SSE {kind}: the {streams} streams did not all "
                            "run at the same time (some waited for others to end: a "
                            "concurrency cap); their latencies do not show the load of "
                            f"{streams} streams"
                        )
                    key = (loop, transport, "sse", str(streams), kind)
                    res.add((*key, "concurrent"), 1.0 if sse.concurrent else 0.0)
                    lat = sorted(sse.latencies_us)
                    p50, p99 = percentile(lat, 50), percentile(lat, 99)
                    got[kind] = (p50, p99)
                    res.add((*key, "p50"), p50)
                    res.add((*key, "p99"), p99)
                    res.add((*key, "lost"), streams * events - count + failed)
                key = (loop, transport, "sse", str(streams), "added")
                res.add((*key, "p50"), got["beeflow"][0] - got["direct"][0])
                res.add((*key, "p99"), got["beeflow"][1] - got["direct"][1])

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
        path = f"{dav}/upload"
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

    async def bulk(self, loop: str, transport: str, conn: Child, target: Target) -> None:
        res = self.results
        if any(s.startswith("nc-up") for s in BULK):
            await asyncio.to_thread(body_sha256, self.plan.bulk_bytes)
        for scenario in BULK:
            key = (loop, transport, "bulk", scenario)
            for _ in range(self.plan.bulk_reps):
                direct, problem = await asyncio.wait_for(
                    self.bulk_once(self.direct(transport), scenario, False), timeout=600
                )
                if problem:
                    raise RuntimeError(f"direct {scenario}: {problem}")
                gc.collect()
                async with proc.RssSampler(conn.pid) as rss:
                    through, problem = await asyncio.wait_for(
                        self.bulk_once(target, scenario, True), timeout=600
                    )
                if problem:
                    res.unavailable[key] = problem
                    break
                res.add((*key, "direct"), direct)
                res.add((*key, "beeflow"), through)
                res.add((*key, "ratio"), through / direct)
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


# ------------------------------------------------------------------ report


def _versions() -> dict[str, str]:
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
    return out


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


def _mib(v: float) -> float:
    return v / MIB


def render(plan: Plan, r: Results, meta: Mapping[str, Any], loadgen: Mapping[str, str]) -> str:
    v = _versions()
    started: dt.datetime = meta["started"]
    lines: list[str] = []
    add = lines.append
    add(f"# Connector benchmark {started:%Y-%m-%d %H:%M %Z}{' (quick)' if plan.quick else ''}")
    add("")
    add(
        f"- machine: {os.cpu_count()} cores ({platform.machine()}), "
        f"{platform.system()} {platform.release()}"
    )
    add(
        f"- versions: Python {v['python']}, aiohttp {v['aiohttp']}, multidict {v['multidict']}, "
        f"yarl {v['yarl']}, uvloop {v['uvloop']}, wrk {v['wrk']}"
    )
    if plan.src_label:
        add(f"- beeflow: {plan.src_label}")
    elif plan.src:
        add(f"- beeflow: the tree in {plan.src} (this checkout was at {meta['head']})")
    else:
        add(f"- beeflow: the working tree at {meta['head']}")
    add(
        f"- command: `python -m bench{' --quick' if plan.quick else ''}` "
        f"({meta['seconds'] / 60:.1f} min); harness (upstream, Python clients) on "
        f"{plan.harness_loop}; connector loops: {', '.join(plan.loops)}"
    )
    add(
        f"- load average before/after: {meta['load_before']} / {meta['load_after']}; CPU used by "
        f"other processes during the run: {meta['foreign_cores']:.2f} cores on average"
    )
    add(
        f"- each figure: median [min, max] of {plan.reps} repetitions ({plan.bulk_reps} for bulk, "
        f"{plan.idle_reps} for idle streams); through and direct run back to back in each "
        "repetition and ratios are taken per repetition"
    )
    add("")

    # -- small
    add(
        f"## Small requests (GET, ~90-byte JSON, {plan.concurrency} connections, "
        f"{plan.small_seconds} s per run)"
    )
    add("")
    add(
        "| loop | transport | route | load generator | req/s | ratio to direct | p50 ms | p99 ms "
        "| connector CPU µs/req | upstream CPU µs/req | errors |"
    )
    add("|---|---|---|---|---|---|---|---|---|---|---|")
    for loop in plan.loops:
        for tr in plan.transports:
            for kind, label in (
                ("direct", "direct"),
                ("server", "aiohttp server alone, answering itself (floor: server half)"),
                ("client", "aiohttp client alone, to the upstream (floor: client half)"),
                ("ref", "/api via a minimal aiohttp proxy (reference)"),
                ("api", "/api via beeflow"),
                ("nc", "/nc via beeflow"),
            ):
                key: tuple[str, ...] = (loop, tr, "small", kind)
                if key in r.unavailable:
                    add(
                        f"| {loop} | {tr} | {label} | | n/a: {_short(r.unavailable[key])} "
                        "| | | | | |"
                    )
                    continue
                rps = r.get((*key, "rps"))
                if not rps.ok:
                    continue
                ratio = r.get((*key, "ratio"))
                cpu = r.get((*key, "cpu_us"))
                errs = r.get((*key, "errors"))
                if kind == "client":
                    add(
                        f"| {loop} | {tr} | {label} | itself ({plan.concurrency} loops, tcp) | "
                        f"{rps.fmt(0)} | — | — | — | {cpu.fmt(0)} (the client's own) | — | "
                        f"{int(sum(errs.values))} |"
                    )
                    continue
                add(
                    f"| {loop} | {tr} | {label} | {loadgen.get(tr, '?')} | {rps.fmt(0)} | "
                    f"{ratio.fmt(3) if ratio.ok else '1'} | "
                    f"{r.get((*key, 'p50')).fmt(2, 1e-3)} | {r.get((*key, 'p99')).fmt(2, 1e-3)} | "
                    f"{cpu.fmt(0) if cpu.ok else '—'} | "
                    f"{r.get((*key, 'upstream_cpu_us')).fmt(0)} | {int(sum(errs.values))} |"
                )
    add("")

    # -- SSE
    add(
        f"## SSE per-event latency (send timestamp in the upstream to arrival in the client; "
        f"1 stream: {plan.sse_single_events} events {plan.sse_single_ms:g} ms apart; "
        f"{plan.sse_many} streams: {plan.sse_many_events} events each, "
        f"{plan.sse_many_ms:g} ms apart)"
    )
    add("")
    add(
        "| loop | transport | streams | direct p50 / p99 ms | beeflow p50 / p99 ms | "
        "added p50 ms | added p99 ms | connector CPU µs/event | events lost | "
        "streams concurrent |"
    )
    add("|---|---|---|---|---|---|---|---|---|---|")
    for loop in plan.loops:
        for tr in plan.transports:
            if (loop, tr, "sse") in r.unavailable:
                add(
                    f"| {loop} | {tr} | | n/a: {_short(r.unavailable[(loop, tr, 'sse')])} "
                    "| | | | | | |"
                )
                continue
            for streams in (1, plan.sse_many):
                key = (loop, tr, "sse", str(streams))
                if not r.get((*key, "added", "p50")).ok:
                    continue
                d50, d99 = r.get((*key, "direct", "p50")), r.get((*key, "direct", "p99"))
                b50, b99 = r.get((*key, "beeflow", "p50")), r.get((*key, "beeflow", "p99"))
                lost = sum(r.get((*key, "beeflow", "lost")).values) + sum(
                    r.get((*key, "direct", "lost")).values
                )
                add(
                    f"| {loop} | {tr} | {streams} | {d50.fmt(3, 1e-3)} / {d99.fmt(3, 1e-3)} | "
                    f"{b50.fmt(3, 1e-3)} / {b99.fmt(3, 1e-3)} | "
                    f"{r.get((*key, 'added', 'p50')).fmt(3, 1e-3)} | "
                    f"{r.get((*key, 'added', 'p99')).fmt(3, 1e-3)} | "
                    f"{r.get((*key, 'cpu_us')).fmt(0)} | {int(lost)} | "
                    f"{_all_concurrent(r.get((*key, 'beeflow', 'concurrent')))} |"
                )
    add("")

    # -- bulk
    size = plan.bulk_bytes / MIB
    size_text = f"{size / 1024:g} GiB" if size >= 1024 else f"{size:g} MiB"
    add(f"## Bulk transfer ({size_text} per run, one connection)")
    add("")
    add(
        "| loop | transport | what | direct MiB/s | beeflow MiB/s | ratio | connector peak RSS "
        "MiB | RSS growth MiB |"
    )
    add("|---|---|---|---|---|---|---|---|")
    names = {
        "api-down": "/api download",
        "api-up": "/api upload",
        "nc-down": "/nc download",
        "nc-up": "/nc upload (signed, spooled)",
    }
    for loop in plan.loops:
        for tr in plan.transports:
            for scenario in BULK:
                key = (loop, tr, "bulk", scenario)
                if key in r.unavailable:
                    add(
                        f"| {loop} | {tr} | {names[scenario]} | | n/a: "
                        f"{_short(r.unavailable[key])} | | | |"
                    )
                    continue
                if not r.get((*key, "ratio")).ok:
                    continue
                add(
                    f"| {loop} | {tr} | {names[scenario]} | {r.get((*key, 'direct')).fmt(0)} | "
                    f"{r.get((*key, 'beeflow')).fmt(0)} | {r.get((*key, 'ratio')).fmt(3)} | "
                    f"{r.get((*key, 'peak_rss')).fmt(1, 1 / MIB)} | "
                    f"{r.get((*key, 'rss_growth')).fmt(1, 1 / MIB)} |"
                )
    add("")

    # -- idle
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

    # -- targets
    add(
        "## Targets (issue 8; per loop: the connector runs on uvloop when it is installed, "
        "`BEEFLOW_EVENT_LOOP=auto`, else on asyncio)"
    )
    add("")
    add("| loop | target | transport | measured | verdict |")
    add("|---|---|---|---|---|")
    for loop in plan.loops:
        for tr in plan.transports:
            for line in _targets(plan, r, loop, tr):
                add(f"| {loop} {line}")
    add("")
    floor = [f"| {loop} {line}" for loop in plan.loops for line in _floor(r, loop, plan.transports)]
    if floor:
        add("## What aiohttp itself costs here (small requests, medians)")
        add("")
        add(
            "The connector is bound to aiohttp's server and client. Their own CPU per request on "
            "this machine, measured in this run, is the floor under any connector built on them: "
            "a CPU target below the floor cannot be met by tuning the connector."
        )
        add("")
        add(
            "| loop | transport | server alone µs | client alone µs | sum µs | minimal proxy µs "
            "| beeflow /api µs | beeflow / minimal proxy | beeflow req/s / minimal proxy req/s |"
        )
        add("|---|---|---|---|---|---|---|---|---|")
        for line in floor:
            add(line)
        add("")
    if len(plan.loops) > 1:
        add("## uvloop against asyncio (connector loop only; medians)")
        add("")
        add("| transport | figure | asyncio | uvloop | change |")
        add("|---|---|---|---|---|")
        for tr in plan.transports:
            for label, fig, scale, fmt, better in _uvloop_figures(plan, tr):
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

    # -- noise
    add("## Noise")
    add("")
    add(
        "CPU used by processes other than the bench (upstream, connector, load generators) "
        "during each phase, in cores (2 = the whole machine), with the load average at its start:"
    )
    add("")
    add("| phase | other processes, cores | load average |")
    add("|---|---|---|")
    for name, cores, load in r.phase_noise:
        add(f"| {name} | {cores:.2f} | {load} |")
    add("")
    spreads = [
        (k, s)
        for k, vals in r.figures.items()
        if k[-1] in ("rps", "ratio", "beeflow", "cpu_us") and (s := Summary.of(vals)).ok
    ]
    noisy = [(k, s) for k, s in spreads if s.spread_pct > NOISY_SPREAD_PCT]
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
    return "\n".join(lines)


def _all_concurrent(s: Summary) -> str:
    if not s.ok:
        return "n/a"
    return "yes" if s.low == 1.0 else f"**no** ({s.values.count(0.0)} of {len(s.values)} runs)"


def _short(text: str) -> str:
    return text.replace("|", "/").replace("\n", " ")[:90]


def _uvloop_figures(plan: Plan, tr: str) -> list[tuple[str, tuple[str, ...], float, str, bool]]:
    return [
        ("/api small req/s", ("small", "api", "rps"), 1.0, ",.0f", True),
        ("/api CPU µs/req", ("small", "api", "cpu_us"), 1.0, ",.0f", False),
        ("/nc small req/s", ("small", "nc", "rps"), 1.0, ",.0f", True),
        (
            f"SSE added p99 ms ({plan.sse_many} streams)",
            ("sse", str(plan.sse_many), "added", "p99"),
            1e-3,
            ".3f",
            False,
        ),
        ("/api download MiB/s", ("bulk", "api-down", "beeflow"), 1.0, ",.0f", True),
        ("/api upload MiB/s", ("bulk", "api-up", "beeflow"), 1.0, ",.0f", True),
        ("/nc download MiB/s", ("bulk", "nc-down", "beeflow"), 1.0, ",.0f", True),
        ("/nc upload MiB/s", ("bulk", "nc-up", "beeflow"), 1.0, ",.0f", True),
        ("idle stream KiB", ("idle", "per_stream"), 1 / 1024, ".1f", False),
    ]


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "**missed**")


def _floor(r: Results, loop: str, transports: Sequence[str]) -> list[str]:
    out: list[str] = []
    for tr in transports:
        cpu = {
            kind: r.get((loop, tr, "small", kind, "cpu_us")).median
            for kind in ("server", "client", "ref", "api")
        }
        if any(math.isnan(x) for x in cpu.values()):
            continue
        server, client_, ref, api = cpu["server"], cpu["client"], cpu["ref"], cpu["api"]
        rate = (
            r.get((loop, tr, "small", "api", "rps")).median
            / r.get((loop, tr, "small", "ref", "rps")).median
        )
        out.append(
            f"| {tr} | {server:.0f} | {client_:.0f} | {server + client_:.0f} | {ref:.0f} | "
            f"{api:.0f} | {api / ref:.2f}x | {rate:.2f}x |"
        )
    return out


def _targets(plan: Plan, r: Results, loop: str, tr: str) -> list[str]:
    out: list[str] = []

    def row(
        name: str,
        s: Summary,
        fmt: Callable[[float], str],
        ok: Callable[[float], bool],
        invalid: str = "",
    ) -> None:
        if not s.ok:
            out.append(f"| {name} | {tr} | n/a | n/a |")
            return
        verdict = f"**not measurable**: {invalid}" if invalid else _verdict(ok(s.median))
        out.append(f"| {name} | {tr} | {fmt(s.median)} | {verdict} |")

    for kind in ("api", "nc"):
        row(
            f"{kind} connector CPU per request <= 120 µs",
            r.get((loop, tr, "small", kind, "cpu_us")),
            lambda x: f"{x:.0f} µs",
            lambda x: x <= 120,
        )
        row(
            f"{kind} small-request throughput >= 0.1x direct",
            r.get((loop, tr, "small", kind, "ratio")),
            lambda x: f"{x:.3f}x",
            lambda x: x >= 0.1,
        )
    concurrent = r.get((loop, tr, "sse", str(plan.sse_many), "beeflow", "concurrent"))
    row(
        f"SSE added p99 <= 1 ms at {plan.sse_many} streams",
        r.get((loop, tr, "sse", str(plan.sse_many), "added", "p99")),
        lambda x: f"{x / 1000:.3f} ms",
        lambda x: x <= 1000,
        invalid="the streams were queued, not concurrent"
        if concurrent.ok and concurrent.low < 1.0
        else "",
    )
    for scenario in BULK:
        row(
            f"bulk {scenario} >= 0.45x direct",
            r.get((loop, tr, "bulk", scenario, "ratio")),
            lambda x: f"{x:.3f}x",
            lambda x: x >= 0.45,
        )
    peaks = [
        v for scenario in BULK for v in r.figures.get((loop, tr, "bulk", scenario, "peak_rss"), [])
    ]
    row(
        "peak RSS during bulk <= 60 MiB (highest run)",
        Summary.of([max(peaks)] if peaks else []),
        lambda x: f"{x / MIB:.1f} MiB",
        lambda x: x <= 60 * MIB,
    )
    row(
        f"/nc {plan.bulk_bytes // MIB} MiB upload RSS growth < 20 MiB",
        r.get((loop, tr, "bulk", "nc-up", "rss_growth")),
        lambda x: f"{x / MIB:.1f} MiB",
        lambda x: x < 20 * MIB,
    )
    opened = r.get((loop, tr, "idle", "opened"))
    row(
        f"idle SSE stream < 50 KiB each ({plan.idle_streams} streams)",
        r.get((loop, tr, "idle", "per_stream")),
        lambda x: f"{x / 1024:.1f} KiB",
        lambda x: x < 50 * 1024,
        invalid=f"only {opened.low:.0f} of {plan.idle_streams} streams opened"
        if opened.ok and opened.low < plan.idle_streams
        else "",
    )
    return out


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
        description="Measure the connector against a direct connection (issue 8).",
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
        help="connector loops: asyncio,uvloop (default: both when uvloop is installed)",
    )
    p.add_argument("--phases", default="small,sse,bulk,idle")
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
    factory = None
    if plan.harness_loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            report = runner.run(bench.run())
    finally:
        shutil.rmtree(bench.work, ignore_errors=True)
        if tmp_src is not None:
            shutil.rmtree(tmp_src, ignore_errors=True)
    print(report)
    if not args.no_save:
        out = args.out or RESULTS / (
            f"{dt.datetime.now():%Y-%m-%d-%H%M}{'-quick' if plan.quick else ''}.md"
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report + "\n")
        print(f"\nwritten to {out}", file=sys.stderr)
    return 0
