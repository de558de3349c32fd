"""The comparators that are not Python: nginx (Debian's, one worker, a streaming proxy) and the
Node stack (Express + http-proxy-middleware, bench/node/proxy.js), and the store-and-forward
ceiling (bench/ceiling.py). Each proxies the same loopback upstream as the connector, over TCP
or a Unix socket, and is started and stopped by the bench like the connector."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Final

from bench.children import Child, clean_env, with_parent_death
from bench.client import Target
from bench.tools import NODE_DIR, ROOT, which

PEERS: Final = ("nginx", "node")
BUFFER_SIZE: Final = re.compile(r"[1-9][0-9]{0,6}[km]?")


def nginx_conf(
    *, prefix: Path, listen: str, upstream_port: int, as_root: bool, buffer: str = ""
) -> str:
    """One worker; requests and answers stream both ways (`proxy_buffering off`,
    `proxy_request_buffering off`); HTTP/1.1 keep-alive to the upstream. Connections on both
    sides live as long as aiohttp's do (no per-connection request cap). `buffer` sets the size
    nginx reads and relays at a time (its default is one page, 4 KiB on x86-64)."""
    if buffer and not BUFFER_SIZE.fullmatch(buffer):
        raise ValueError(f"not an nginx size: {buffer!r}")
    sizes = (
        f"""
            proxy_buffer_size {buffer};
            proxy_buffers 4 {buffer};
            proxy_busy_buffers_size {buffer};
            client_body_buffer_size {buffer};"""
        if buffer
        else ""
    )
    return f"""\
# written by the bench for one run
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 65536;
{"user root;" if as_root else ""}
pid {prefix}/nginx.pid;
error_log {prefix}/nginx-error.log warn;

events {{
    worker_connections 16384;
}}

http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    client_max_body_size 0;
    keepalive_requests 100000000;
    keepalive_timeout 75s;

    upstream bench_upstream {{
        server 127.0.0.1:{upstream_port};
        keepalive 256;
        keepalive_requests 100000000;
        keepalive_timeout 60s;
    }}

    server {{
        listen {listen} backlog=4096;
        location / {{
            proxy_pass http://bench_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;{sizes}
        }}
    }}
}}
"""


def free_port() -> int:
    """A TCP port nobody listens on right now (nginx cannot be told to pick one itself)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nginx_version() -> str:
    exe = which("nginx")
    if exe is None:
        return "not installed"
    out = subprocess.run([exe, "-v"], capture_output=True, text=True, check=False)
    return (out.stderr or out.stdout).strip().rpartition("/")[2] or "?"


def node_version() -> str:
    exe = which("node")
    if exe is None:
        return "not installed"
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip().removeprefix("v") or "?"


async def start_nginx(
    work: Path, transport: str, upstream_port: int, *, buffer: str = ""
) -> tuple[Child, Target]:
    exe = which("nginx")
    if exe is None:
        raise RuntimeError("nginx is not installed")
    prefix = work / f"nginx-{transport}"
    prefix.mkdir(exist_ok=True)
    conf = prefix / "nginx.conf"
    for attempt in range(3):  # a port picked free can be taken before nginx binds it
        if transport == "unix":
            sock = work / "nginx.sock"
            await asyncio.to_thread(sock.unlink, missing_ok=True)  # left by the last pair's
            target = Target(unix=str(sock))
            listen = f"unix:{sock}"
        else:
            target = Target(port=free_port())
            listen = f"127.0.0.1:{target.port}"
        as_root = os.geteuid() == 0
        conf.write_text(
            nginx_conf(
                prefix=prefix,
                listen=listen,
                upstream_port=upstream_port,
                as_root=as_root,
                buffer=buffer,
            )
        )
        argv = [exe, "-e", str(prefix / "nginx-error.log"), "-p", str(prefix), "-c", str(conf)]
        try:
            child = await Child.start_listening(
                "nginx", with_parent_death(argv), clean_env(), prefix, work / "nginx.log", target
            )
        except RuntimeError:
            if attempt == 2 or transport == "unix":
                raise
            continue
        return child, target
    raise AssertionError("unreachable")


async def start_node(
    work: Path, transport: str, upstream_port: int, modules: Path
) -> tuple[Child, Target]:
    exe = which("node")
    if exe is None:
        raise RuntimeError("node is not installed")
    argv = [exe, str(NODE_DIR / "proxy.js"), "--upstream", f"http://127.0.0.1:{upstream_port}"]
    argv += ["--unix", str(work / "node.sock")] if transport == "unix" else ["--port", "0"]
    env = {**clean_env(), "NODE_PATH": str(modules), "NODE_ENV": "production"}
    child = await Child.start("node stack", with_parent_death(argv), env, work, work / "node.log")
    target = Target(unix=child.ready) if transport == "unix" else Target(port=int(child.ready))
    return child, target


async def start_ceiling(
    work: Path, transport: str, upstream_port: int, tenant_key: str, *, send: str = "sendfile"
) -> tuple[Child, Target]:
    spool = work / "ceiling-spool"
    spool.mkdir(exist_ok=True, mode=0o700)
    argv = [sys.executable, "-m", "bench.ceiling", "--upstream-port", str(upstream_port)]
    argv += ["--spool", str(spool), "--send", send]
    if transport == "unix":
        argv += ["--unix", str(work / "ceiling.sock")]
    env = {**clean_env(), "PYTHONPATH": str(ROOT), "BENCH_TENANT_KEY": tenant_key}
    child = await Child.start("ceiling", argv, env, ROOT, work / "ceiling.log")
    target = Target(unix=child.ready) if transport == "unix" else Target(port=int(child.ready))
    return child, target
