"""Throughput and memory of /nc for one large file: an upload and a download through the
connector, against the same transfers made directly to the (fake) Nextcloud.

    python -m tests.proxy.nc.bench_nc [--mib 1024]

Three processes on loopback: the fake Nextcloud with WebDAV on disk (this module with
--serve-nc), the connector (`python -m bench.launcher`, the real app), and this client. Prints
MiB/s per transfer and the connector's peak RSS growth during it (its kernel high-water mark,
reset through /proc/<pid>/clear_refs before each transfer). Not collected by pytest.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from yarl import URL

from tests.helpers import SECRET, appapi_headers, base_env
from tests.proxy.nc.caller import NcCaller
from tests.proxy.nc.memory import MIB, Blob


async def _serve_nc(root: Path) -> None:
    from tests.fakes.nextcloud import FakeNextcloud
    from tests.fakes.nextcloud_dav import FakeDav

    dav = FakeDav(root)
    nc = FakeNextcloud(secret=SECRET, extra_routes=dav.routes())
    dav.bind(nc)
    nc.add_user("alice")
    (root / "alice").mkdir(exist_ok=True)
    url = await nc.start()
    sys.stdout.write(f"READY {url.port}\n")
    sys.stdout.flush()
    await asyncio.Event().wait()


async def _start(
    *args: str, env: dict[str, str] | None = None
) -> tuple[asyncio.subprocess.Process, int]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *args, stdout=asyncio.subprocess.PIPE, env=env
    )
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().split()
    if not line or line[0] != "READY":
        raise RuntimeError(f"{args} did not start")
    return proc, int(line[1])


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class _Peak:
    def __init__(self, pid: int) -> None:
        self.pid = pid

    def __enter__(self) -> _Peak:
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        self.before = _status_kib(self.pid, "VmRSS")
        self.started = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.monotonic() - self.started
        self.growth_mib = (_status_kib(self.pid, "VmHWM") - self.before) / 1024


async def _download(session: aiohttp.ClientSession, url: URL, headers: dict[str, str]) -> str:
    digest = hashlib.sha256()
    async with session.get(url, headers=headers) as resp:
        assert resp.status == 200, resp.status
        async for chunk in resp.content.iter_chunked(256 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


async def run(mib: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-nc-", dir="/tmp"))
    procs: list[asyncio.subprocess.Process] = []
    try:
        (work / "dav").mkdir()
        (work / "data").mkdir()
        nc_proc, nc_port = await _start(
            "-m", "tests.proxy.nc.bench_nc", "--serve-nc", str(work / "dav")
        )
        procs.append(nc_proc)
        nc_url = URL(f"http://127.0.0.1:{nc_port}")
        env = {
            **os.environ,
            **base_env(nc_url, work / "data"),
            "BEEFLOW_SPOOL_DIR": str(work / "spool"),
        }
        conn_proc, conn_port = await _start("-m", "bench.launcher", "--transport", "tcp", env=env)
        procs.append(conn_proc)
        blob = Blob(mib * MIB)
        expected = blob.sha256
        dav_path = "/remote.php/dav/files/alice"
        rows: list[tuple[str, float, float | None]] = []
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            caller = NcCaller(session, f"http://127.0.0.1:{conn_port}")
            direct = {**appapi_headers("alice"), "Accept-Encoding": "identity"}

            started = time.monotonic()
            async with session.put(
                nc_url.with_path(f"{dav_path}/direct.bin"), data=blob.stream(), headers=direct
            ) as resp:
                assert resp.status in (201, 204), resp.status
            rows.append(("upload, direct", time.monotonic() - started, None))

            with _Peak(conn_proc.pid) as peak:
                resp = await caller.request(
                    "PUT", f"/nc{dav_path}/via-nc.bin", data=blob.stream(), body_sha256=expected
                )
                async with resp:
                    assert resp.status in (201, 204), resp.status
            rows.append(("upload, through /nc", peak.seconds, peak.growth_mib))

            started = time.monotonic()
            got = await _download(session, nc_url.with_path(f"{dav_path}/via-nc.bin"), direct)
            rows.append(("download, direct", time.monotonic() - started, None))
            assert got == expected

            with _Peak(conn_proc.pid) as peak:
                signed = caller.headers("GET", f"/nc{dav_path}/direct.bin")
                got = await _download(
                    session,
                    caller.url(f"/nc{dav_path}/direct.bin"),
                    {**signed, "Accept-Encoding": "identity"},
                )
            rows.append(("download, through /nc", peak.seconds, peak.growth_mib))
            assert got == expected
        sys.stdout.write(f"{mib} MiB, sha256 verified both ways\n")
        sys.stdout.write(f"{'transfer':<24}{'MiB/s':>8}{'connector RSS growth':>24}\n")
        for name, seconds, growth in rows:
            grown = f"{growth:.1f} MiB" if growth is not None else "-"
            sys.stdout.write(f"{name:<24}{mib / seconds:>8.0f}{grown:>24}\n")
    finally:
        for proc in procs:
            proc.terminate()
            await proc.wait()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.proxy.nc.bench_nc")
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--serve-nc", metavar="DAV_ROOT")
    args = parser.parse_args()
    if args.serve_nc:
        asyncio.run(_serve_nc(Path(args.serve_nc)))
    else:
        asyncio.run(run(args.mib))


if __name__ == "__main__":
    main()
