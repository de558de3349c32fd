"""The composition root: the ONLY place that reads os.environ. Subcommands, logging, signals."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import resource
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import Any, Final

import attrs
from aiohttp import web

from beeflow import __version__, storage
from beeflow.app import make_app
from beeflow.config import LOG_FORMATS, LOG_LEVELS, Config
from beeflow.errors import ConfigError
from beeflow.health import TUNNEL_STATUS, HealthProvider, provide
from beeflow.redact import REDACTOR
from beeflow.transports.base import Transport, TransportError
from beeflow.transports.tcp import TcpTransport
from beeflow.web.access_log import FIELDS_ATTR
from beeflow.web.draining import DRAINING, drain

log = logging.getLogger("beeflow")

EXIT_OK: Final = 0
EXIT_STARTUP: Final = 1
EXIT_CONFIG: Final = 2
EXIT_INTERRUPTED: Final = 130

# Subcommands whose code lives elsewhere: name -> (module, help). The module provides
# add_arguments(parser) and run(args, env) -> int; it is imported only when that command runs.
EXTERNAL_COMMANDS: Final = {
    "doctor": (
        "beeflow.ops.doctor",
        "check this installation end to end and explain what is wrong",
    ),
    "sign": ("beeflow.ops.sign", "sign a request like Nextcloud does (for testing and support)"),
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        # Structured fields a record carries (the access log's), as fields of their own.
        extra = getattr(record, FIELDS_ATTR, None)
        if isinstance(extra, dict):
            out.update({k: v for k, v in extra.items() if k not in out})
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


def register_secrets(config: Config) -> None:
    REDACTOR.add(config.app_secret)
    REDACTOR.add(config.hp_shared_key)
    REDACTOR.add(config.tenant_key_env)
    REDACTOR.add(config.pairing_code)


def select_transport(config: Config) -> Transport:
    """HaRP when HP_SHARED_KEY is non-empty, else TCP: decided once, at start."""
    if config.harp:
        from beeflow.transports.harp import HarpTransport

        return HarpTransport(config)
    return TcpTransport(config)


def tunnel_health(status: Callable[[], dict[str, Any]]) -> HealthProvider:
    """The tunnel's state for everyone; the supervisor's details for trusted callers."""

    def provide(trusted: bool) -> dict[str, Any]:
        snapshot = status()
        return snapshot if trusted else {"state": snapshot.get("state")}

    return provide


def raise_fd_limit(wanted: int = 65536) -> int:
    """Each open stream holds two descriptors (client and upstream); container defaults can be
    1024. Raise the soft limit towards the hard one; returns the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            log.warning("could not raise the open-file limit from %d", soft)
            return soft
        return target
    return soft


async def serve(
    config: Config,
    *,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
    on_listening: Callable[[Transport], None] | None = None,
) -> int:
    """Run until SIGTERM/SIGINT (or `stop`). Shutdown order (docs/transports.md, "Shutdown order,
    and why"): keep listening while new requests get 503 and in-flight ones drain, then stop
    frpc, then close the listeners and remove the socket. A second SIGINT exits at once."""
    started = time.monotonic()
    problem = await asyncio.to_thread(storage.check_directory, config.persistent_storage)
    if problem is not None:
        # Without it the tenant key, the count of refused AppAPI logins (which keeps restarts
        # from locking the connector out of Nextcloud) and the setup choice would not persist.
        log.error(
            "cannot start: APP_PERSISTENT_STORAGE %s is unusable: %s. Fix: %s",
            config.persistent_storage,
            problem,
            storage.STORAGE_REMEDY.replace("<appid>", config.app_id),
        )
        return EXIT_STARTUP
    log.debug("open-file limit: %d", raise_fd_limit())
    transport = select_transport(config)
    app = make_app(config)
    app[TUNNEL_STATUS] = transport.status
    if config.harp:
        provide(app, "tunnel", tunnel_health(transport.status))
    runner = web.AppRunner(
        app,
        handler_cancellation=True,
        access_log=None,
        # In-flight requests already had the grace period (Draining); this is only the last
        # word for connections still open when the listeners close.
        shutdown_timeout=min(1.0, max(config.shutdown_grace_seconds, 0.1)),
    )
    await runner.setup()
    stopping = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    interrupts = 0

    def on_signal(signum: signal.Signals) -> None:
        nonlocal interrupts
        if signum == signal.SIGINT:
            interrupts += 1
            if interrupts > 1:
                # A second Ctrl-C: leave at once, but leave no frpc or socket behind.
                transport.abort()
                os._exit(EXIT_INTERRUPTED)
        if not stopping.is_set():
            log.info("%s received: shutting down", signum.name)
        stopping.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        try:
            await transport.start(runner)
        except TransportError as exc:
            log.error("cannot start: %s", exc)
            return EXIT_STARTUP
        log.info(
            "ready in %.0f ms (event loop: %s)",
            (time.monotonic() - started) * 1000,
            loop_name(loop),
        )
        if on_listening is not None:
            on_listening(transport)
        if ready is not None:
            ready.set()
        await stopping.wait()
        # 1-2. Keep listening (frpc would hang callers dialling a closed socket): not ready but
        # serving for the pre-stop delay, then refuse new work while in-flight requests finish
        # within the grace period; streams still open at its deadline end cleanly.
        await drain(
            app[DRAINING], prestop=config.prestop_seconds, grace=config.shutdown_grace_seconds
        )
    finally:
        # 3. Stop frpc, 4. close the listeners and client sessions, 5. remove the socket.
        await transport.stop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    log.info("stopped")
    return EXIT_OK


# ---------------------------------------------------------------------- demo


async def serve_demo(environ: Mapping[str, str]) -> int:
    """`serve --demo`: built-in stand-ins of Nextcloud and the Bee Flow service on loopback."""
    from beeflow.demo import Demo  # only `serve --demo` loads the stand-ins

    demo = Demo()
    try:
        env: Mapping[str, str] = await demo.start()
        try:
            config = Config.from_env({**_log_env(environ), **env})
        except ConfigError as exc:
            print(exc.render(), file=sys.stderr)
            return EXIT_CONFIG
        config = attrs.evolve(config, demo=True)
        register_secrets(config)

        def announce(transport: Transport) -> None:
            bar = "=" * 64
            print(f"\n{bar}\n  Bee Flow demo: open {demo.url}\n{bar}\n", flush=True)

        return await serve(config, on_listening=announce)
    finally:
        await demo.stop()


# ---------------------------------------------------------------------- argument parsing


def _log_env(environ: Mapping[str, str]) -> dict[str, str]:
    return {k: environ[k] for k in ("BEEFLOW_LOG_LEVEL", "BEEFLOW_LOG_FORMAT") if k in environ}


def _command_of(argv: Sequence[str]) -> str | None:
    for arg in argv:
        if not arg.startswith("-"):
            return arg
    return None


def _add_log_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-level",
        type=str.lower,
        choices=LOG_LEVELS,
        default=None,
        help="log level (default: $BEEFLOW_LOG_LEVEL or info)",
    )
    parser.add_argument(
        "--log-format",
        type=str.lower,
        choices=LOG_FORMATS,
        default=None,
        help="text (default) or json lines (default: $BEEFLOW_LOG_FORMAT or text)",
    )


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The CLI. Only the module of `command` is imported, so `serve` never loads the others."""
    parser = argparse.ArgumentParser(
        prog="python -m beeflow",
        description="Bee Flow connector: a Nextcloud AppAPI External App.",
    )
    parser.add_argument("--version", action="version", version=f"beeflow {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve_p = sub.add_parser(
        "serve",
        help="run the connector (AppAPI ExApp)",
        description=(
            "Run the connector. HaRP mode (a Unix socket plus a supervised frpc) when "
            "HP_SHARED_KEY is set, else TCP on APP_HOST:APP_PORT. SIGTERM/SIGINT drain "
            "in-flight requests, stop frpc, remove the socket and exit 0; a second SIGINT "
            "exits at once."
        ),
    )
    _add_log_options(serve_p)
    serve_p.add_argument(
        "--demo",
        action="store_true",
        help="run with built-in stand-ins of Nextcloud and the Bee Flow service on loopback",
    )
    for name, (_, help_text) in EXTERNAL_COMMANDS.items():
        sub_p = sub.add_parser(name, help=help_text, description=help_text)
        if command == name:
            _external_module(name).add_arguments(sub_p)
    return parser


def _external_module(name: str) -> ModuleType:
    """The module behind an external command: add_arguments(parser) and run(args, env)."""
    return importlib.import_module(EXTERNAL_COMMANDS[name][0])


def _run_external(module: ModuleType, args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    level = environ.get("BEEFLOW_LOG_LEVEL", "warning").strip().lower()
    fmt = environ.get("BEEFLOW_LOG_FORMAT", "text").strip().lower()
    setup_logging(
        level if level in LOG_LEVELS else "warning", fmt if fmt in LOG_FORMATS else "text"
    )
    return int(module.run(args, environ))


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    environ: Mapping[str, str] = os.environ if env is None else env
    arglist = list(sys.argv[1:] if argv is None else argv)
    command = _command_of(arglist)
    module = _external_module(command) if command in EXTERNAL_COMMANDS else None
    args = build_parser(command).parse_args(arglist)
    try:
        if args.command == "serve":
            return _serve_command(args, environ)
        assert module is not None
        return _run_external(module, args, environ)
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were installed
        return EXIT_INTERRUPTED


def _serve_command(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    if args.demo:
        problems = _log_problems(environ)
        if problems:
            print(ConfigError(problems).render(), file=sys.stderr)
            return EXIT_CONFIG
        log_env = _log_env(environ)
        setup_logging(
            args.log_level or log_env.get("BEEFLOW_LOG_LEVEL", "info").strip().lower(),
            args.log_format or log_env.get("BEEFLOW_LOG_FORMAT", "text").strip().lower(),
        )
        return asyncio.run(serve_demo(environ))
    try:
        config = Config.from_env(environ)
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(args.log_level or config.log_level, args.log_format or config.log_format)
    register_secrets(config)
    try:
        factory = loop_factory(config.event_loop)
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        return EXIT_CONFIG
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(serve(config))


LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def loop_factory(choice: str) -> LoopFactory | None:
    """BEEFLOW_EVENT_LOOP: `auto` takes uvloop when it is installed (measured: less CPU per
    request and per SSE event, lower SSE p99; docs/benchmarks.md), `asyncio` never does, and
    `uvloop` insists on it. None means asyncio's own loop."""
    if choice == "asyncio":
        return None
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        if choice == "uvloop":
            raise ConfigError(
                {"BEEFLOW_EVENT_LOOP": "uvloop is not installed (pip install 'beeflow[speed]')"}
            ) from None
        return None
    factory: LoopFactory = uvloop.new_event_loop
    return factory


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    module = type(loop).__module__.split(".", 1)[0]
    return "uvloop" if module == "uvloop" else "asyncio"


def _log_problems(environ: Mapping[str, str]) -> dict[str, str]:
    problems: dict[str, str] = {}
    for name, choices in (("BEEFLOW_LOG_LEVEL", LOG_LEVELS), ("BEEFLOW_LOG_FORMAT", LOG_FORMATS)):
        value = environ.get(name)
        if value is not None and value.strip().lower() not in choices:
            problems[name] = "must be one of " + ", ".join(choices) + f" (got {value!r})"
    return problems
