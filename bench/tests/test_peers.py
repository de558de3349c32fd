"""nginx and the Node stack as the bench runs them: real processes in front of the bench's
upstream, checked for what the comparison relies on (every byte relayed both ways, events
streamed one by one, CPU and memory read over the whole process tree)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bench import client, peers, tools
from bench.children import Child
from bench.client import Target
from bench.tests.conftest import Upstream
from bench.upstream import BLOCK, SMALL_BODY

NGINX = tools.which("nginx")
needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx is not installed")


def _modules() -> Path | None:
    """The Node stack if the bench already installed it (tests do not install it)."""
    modules = tools.cache_root() / f"node-{tools.node_key()}" / "node_modules"
    return modules if (modules / ".bench-complete").exists() else None


needs_node = pytest.mark.skipif(
    tools.which("node") is None or _modules() is None,
    reason="the Node stack is not installed (python -m bench installs it)",
)


@needs_nginx
@pytest.mark.parametrize("buffer", ["", "64k", "1m"])
def test_the_nginx_config_is_valid(work: Path, buffer: str) -> None:
    assert NGINX is not None
    conf = work / "nginx.conf"
    conf.write_text(
        peers.nginx_conf(
            prefix=work, listen="127.0.0.1:1", upstream_port=2, as_root=True, buffer=buffer
        )
    )
    done = subprocess.run(
        [NGINX, "-t", "-e", str(work / "e.log"), "-p", str(work), "-c", str(conf)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_the_nginx_config_streams_and_keeps_connections() -> None:
    text = peers.nginx_conf(prefix=Path("/p"), listen="unix:/p/s", upstream_port=9, as_root=False)
    for line in (
        "worker_processes 1;",
        "proxy_buffering off;",
        "proxy_request_buffering off;",
        "proxy_http_version 1.1;",
        'proxy_set_header Connection "";',
        "keepalive 256;",
        "listen unix:/p/s backlog=4096;",
    ):
        assert line in text
    assert "user root;" not in text
    assert "proxy_buffer_size" not in text  # nginx's default unless asked


@pytest.mark.parametrize("bad", ["1k;", "64k\nuser root", "-1", "0", "1g", "k"])
def test_a_buffer_size_is_checked_before_it_reaches_the_config(bad: str) -> None:
    with pytest.raises(ValueError, match="not an nginx size"):
        peers.nginx_conf(prefix=Path("/p"), listen="1", upstream_port=1, as_root=False, buffer=bad)


async def _relays_everything(target: Target, child: Child) -> None:
    conn = await target.connect()
    try:
        resp = await conn.send(client.build_request("GET", "/api/small", {}), keep_body=True)
    finally:
        conn.close()
    assert (resp.status, bytes(resp.body or b"")) == (200, SMALL_BODY)
    n = (16 << 20) + 3
    got, _s, status = await client.download(
        target, client.build_request("GET", f"/api/bulk?bytes={n}", {})
    )
    assert (status, got) == (200, n)
    _s, resp = await client.upload(
        target, client.build_request("POST", "/api/upload", {}, content_length=n), BLOCK, n
    )
    assert bytes(resp.body or b"") == b'{"received":%d}' % n
    raw = client.build_request("GET", "/api/sse?n=5&ms=20", {"Accept": "text/event-stream"})
    sse = await client.sse_run(target, raw, 4)
    assert (sse.events, sse.failed, sse.concurrent) == (20, 0, True)
    # events 20 ms apart arrive as they are sent, not in one piece at the end
    assert max(sse.latencies_us) < 15_000
    assert child.cpu_seconds() > 0
    assert child.rss_bytes() > 1 << 20


@pytest.fixture(params=["tcp", "unix"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def nginx(
    work: Path, upstream: Upstream, transport: str
) -> AsyncIterator[tuple[Child, Target]]:
    child, target = await peers.start_nginx(work, transport, upstream.tcp.port)
    yield child, target
    await child.stop()


@needs_nginx
async def test_nginx_relays_everything(nginx: tuple[Child, Target]) -> None:
    child, target = nginx
    assert len(child.pids()) == 2  # the master and its one worker
    await _relays_everything(target, child)


@needs_nginx
async def test_nginx_stops_with_its_worker(nginx: tuple[Child, Target]) -> None:
    child, _target = nginx
    pids = child.pids()
    await child.stop()
    assert all(_gone(pid) for pid in pids)


def _gone(pid: int) -> bool:
    """No such process, or only its exit status is left (a zombie)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return text[text.rindex(")") + 2] == "Z"


@needs_node
async def test_the_node_stack_relays_everything(
    work: Path, upstream: Upstream, transport: str
) -> None:
    modules = _modules()
    assert modules is not None
    child, target = await peers.start_node(work, transport, upstream.tcp.port, modules)
    try:
        await _relays_everything(target, child)
    finally:
        await child.stop()


def test_the_node_stack_is_pinned() -> None:
    """package.json names exact versions, and the lock file holds those (npm ci refuses a lock
    that disagrees, so the installed tree is the locked one)."""
    wanted = json.loads((tools.NODE_DIR / "package.json").read_text())["dependencies"]
    assert wanted == tools.node_versions()
    assert wanted["express"].startswith("4.")
    assert wanted["http-proxy-middleware"].startswith("3.")
