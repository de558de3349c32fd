"""The composition root: the ONLY place that reads os.environ. Subcommands, logging, signals."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web

from beeflow import __version__, keys
from beeflow.app import make_app
from beeflow.config import Config
from beeflow.errors import ConfigError
from beeflow.redact import REDACTOR
from beeflow.transports.base import Transport
from beeflow.transports.tcp import TcpTransport

log = logging.getLogger("beeflow")

EXIT_CONFIG = 2


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        return json.dumps(out, ensure_ascii=False)


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(REDACTOR)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log is noisy and would print request paths with user data at INFO.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def select_transport(config: Config) -> Transport:
    """HaRP when HP_SHARED_KEY is non-empty, else TCP: decided once, at start."""
    if config.harp:
        from beeflow.transports.harp import HarpTransport

        return HarpTransport(config)
    return TcpTransport(config)


async def serve(config: Config, *, ready: asyncio.Event | None = None) -> int:
    """Run until SIGTERM/SIGINT; then drain, stop the tunnel, close the listeners, exit 0."""
    started = time.monotonic()
    transport = select_transport(config)
    app = make_app(config)
    app[keys.TUNNEL_STATUS] = transport.status
    runner = web.AppRunner(
        app,
        handler_cancellation=True,
        access_log=None,
        shutdown_timeout=max(config.shutdown_grace_seconds, 0.1),
    )
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    interrupts = 0

    def on_signal(signum: int) -> None:
        nonlocal interrupts
        if signum == signal.SIGINT:
            interrupts += 1
            if interrupts > 1:
                os._exit(130)  # a second Ctrl-C: leave at once
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await transport.start(runner)
        log.info("ready in %.0f ms", (time.monotonic() - started) * 1000)
        if ready is not None:
            ready.set()
        await stop.wait()
        log.info("shutting down: draining in-flight requests")
        draining = app[keys.DRAINING]
        draining.begin()
        if not await draining.wait_idle(config.shutdown_grace_seconds):
            log.warning(
                "%d request(s) still running after %.0f s; closing them",
                draining.in_flight,
                config.shutdown_grace_seconds,
            )
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await transport.stop()
    log.info("stopped")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m beeflow", description=__doc__)
    parser.add_argument("--version", action="version", version=f"beeflow {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve_p = sub.add_parser("serve", help="run the connector (AppAPI ExApp)")
    serve_p.add_argument("--log-level", default=None, help="debug|info|warning|error")
    serve_p.add_argument("--log-format", default=None, choices=["text", "json"])
    serve_p.add_argument(
        "--demo",
        action="store_true",
        help="run with built-in stand-ins of Nextcloud and the Bee Flow service on loopback",
    )
    return parser


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    environ = os.environ if env is None else env
    args = build_parser().parse_args(argv)
    level = args.log_level or environ.get("BEEFLOW_LOG_LEVEL", "info")
    fmt = args.log_format or environ.get("BEEFLOW_LOG_FORMAT", "text")
    if level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        print(f"configuration error: --log-level {level!r} is not a level", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(level, fmt)
    if args.command == "serve":
        try:
            config = Config.from_env(environ)
        except ConfigError as exc:
            print(exc.render(), file=sys.stderr)
            return EXIT_CONFIG
        REDACTOR.add(config.app_secret)
        REDACTOR.add(config.hp_shared_key)
        REDACTOR.add(config.tenant_key_env)
        return asyncio.run(serve(config))
    return EXIT_CONFIG
