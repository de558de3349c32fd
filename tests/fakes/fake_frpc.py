#!/usr/bin/env python3
"""A stand-in for frpc 0.61.1 (frp-observed.md), run as a REAL child process by the supervisor.

    frpc -c FILE | frpc verify -c FILE | frpc -v

It parses FILE strictly (contract 5.4's keys plus `log.disablePrintColor`; unknown keys are
errors), prints frpc's lines (ANSI colours unless disabled), logs in to `serverAddr:serverPort`
(a FakeFrps from tests/fakes/frp.py: one JSON line each way, saying whether it speaks TLS; or
no server at all with FAKE_FRPC_SERVER=none), retries by itself like `loginFailExit = false`
(a connection closed before the answer is one of the words real frpc uses for a plain client
against HaRP's TLS-forced frps, in turn: `EOF`, `session shutdown`, `stream closed`, a reset, a
broken pipe; a proxy frps refuses is `[<name>] start error: <why>`, asked again every 30 s like
frpc 0.61.1 does, e.g. `proxy [<name>] already exists` while another frpc holds it), listens on
127.0.0.1:remotePort like frps does for HaRP and relays each connection to `unixPath`, dialling
the socket once per connection. A refused dial leaves the caller hanging, like 0.61.x. TERM and
INT are not handled: the process dies by the signal, printing nothing, cutting every relay.

Environment knobs:
  FAKE_FRPC_RECORD=path     append JSON lines: start, login, term, relay, exit events
  FAKE_FRPC_VERSION=x.y.z   what `-v` prints (default 0.61.1)
  FAKE_FRPC_VERSION_HANG=1  `-v` never answers
  FAKE_FRPC_MODE=normal|crash|crashloop|hang
                            crash: exit FAKE_FRPC_EXIT_CODE after FAKE_FRPC_CRASH_AFTER s
                            crashloop: print an error and exit at once
                            hang: print the first line, then nothing, serve nothing
  FAKE_FRPC_CRASH_TIMES=N   crash (as crashloop) on the first N starts recorded in the record
  FAKE_FRPC_EXIT_CODE=n     exit code for crashes (default 1)
  FAKE_FRPC_IGNORE_TERM=1   ignore SIGTERM (only KILL stops it)
  FAKE_FRPC_IGNORE_INT=1    ignore SIGINT (as when started in a non-interactive shell's background)
  FAKE_FRPC_SERVER=none     do not dial serverAddr: pretend the login succeeded
  FAKE_FRPC_RETRY_SCALE=f   scale frpc's retry delays (2.1, 4.5, 9.2, then 10 s, and 30 s for a
                            refused proxy) by f
  FAKE_FRPC_FORCE_COLOR=1   colour codes even with log.disablePrintColor = true
  FAKE_FRPC_ECHO_TOKEN=1    print a line holding the token (as a debug dump of the config would)
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import secrets
import signal
import socket
import sys
import time
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

VERSION = os.environ.get("FAKE_FRPC_VERSION", "0.61.1")
RECORD = os.environ.get("FAKE_FRPC_RECORD", "")
RETRY_SCALE = float(os.environ.get("FAKE_FRPC_RETRY_SCALE", "1"))
RETRY_DELAYS = (2.1, 4.5, 9.2, 10.0)
PROXY_RETRY = 30.0  # frpc 0.61.1 asks again for a proxy frps refused after this long


def closed_before_login(attempt: int, local: str, remote: str) -> str:
    """What frpc 0.61.1 says when a TLS-forcing frps drops its plain connection: the words
    depend on a race (frp-observed.md), so the stand-in goes through them in turn."""
    words = (
        "EOF",
        "session shutdown",
        "stream closed",
        f"write tcp {local}->{remote}: write: connection reset by peer",
        f"write tcp {local}->{remote}: write: broken pipe",
    )
    return words[attempt % len(words)]


# The schema: contract 5.4's keys, plus log.disablePrintColor. A dict is a table; a list of one
# dict is an array of tables; a type is a leaf. Anything else is an unknown field.
SCHEMA: dict[str, Any] = {
    "serverAddr": str,
    "serverPort": int,
    "loginFailExit": bool,
    "log": {"disablePrintColor": bool},
    "transport": {
        "tls": {
            "enable": bool,
            "certFile": str,
            "keyFile": str,
            "trustedCaFile": str,
            "serverName": str,
        }
    },
    "metadatas": {"token": str},
    "proxies": [
        {
            "name": str,
            "type": str,
            "remotePort": int,
            "plugin": {"type": str, "unixPath": str},
        }
    ],
}

COLOURS = {"I": "\x1b[1;34m", "W": "\x1b[1;33m", "E": "\x1b[1;31m", "D": "\x1b[1;32m"}


class ConfigInvalid(Exception):
    pass


def check(value: Any, schema: Any, where: str) -> None:
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            raise ConfigInvalid(f"json: cannot unmarshal into field {where} (want a table)")
        for key, item in value.items():
            name = f"{where}.{key}" if where else key
            if key not in schema:
                raise ConfigInvalid(f'json: unknown field "{name}"')
            check(item, schema[key], name)
    elif isinstance(schema, list):
        if not isinstance(value, list):
            raise ConfigInvalid(f"json: cannot unmarshal into field {where} (want an array)")
        for i, item in enumerate(value):
            check(item, schema[0], f"{where}[{i}]")
    elif schema is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigInvalid(f"json: cannot unmarshal into field {where} of type int")
    elif not isinstance(value, schema):
        raise ConfigInvalid(f"json: cannot unmarshal into field {where} of type {schema.__name__}")


def validate(doc: dict[str, Any]) -> None:
    """Strict frp v1 parsing plus the facts of contract 5.4 (HaRP's frps accepts nothing else)."""
    check(doc, SCHEMA, "")
    for key in ("serverAddr", "metadatas", "proxies"):
        if key not in doc:
            raise ConfigInvalid(f"{key} is required")
    if not doc["metadatas"].get("token"):
        raise ConfigInvalid("metadatas.token is required (HaRP's login plugin checks it)")
    if not 1 <= doc.get("serverPort", 7000) <= 65535:
        raise ConfigInvalid("serverPort: invalid port")
    proxies = doc["proxies"]
    if len(proxies) != 1:
        raise ConfigInvalid("exactly one proxy is allowed (HaRP: maxPortsPerClient = 1)")
    proxy = proxies[0]
    for key in ("name", "type", "remotePort", "plugin"):
        if key not in proxy:
            raise ConfigInvalid(f"proxy: {key} is required")
    if proxy["type"] != "tcp":
        raise ConfigInvalid(f"proxy [{proxy['name']}]: type must be tcp")
    if not 1 <= proxy["remotePort"] <= 65535:
        raise ConfigInvalid(f"proxy [{proxy['name']}]: remotePort: invalid port")
    plugin = proxy["plugin"]
    if plugin.get("type") != "unix_domain_socket" or not plugin.get("unixPath"):
        raise ConfigInvalid(
            f"proxy [{proxy['name']}]: plugin must be unix_domain_socket + unixPath"
        )
    tls = doc.get("transport", {}).get("tls", {})
    if tls.get("enable", True):
        for key in ("certFile", "keyFile", "trustedCaFile"):
            if not tls.get(key):
                raise ConfigInvalid(f"transport.tls.{key} is required for HaRP's mutual TLS")
        if tls.get("serverName") != "harp.nc":
            raise ConfigInvalid('transport.tls.serverName must be "harp.nc"')
    elif set(tls) != {"enable"}:
        raise ConfigInvalid("transport.tls: certificate keys without TLS")


def go_error(exc: OSError) -> str:
    """As Go prints it: "connection refused"."""
    return os.strerror(exc.errno).lower() if exc.errno else str(exc)


def out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def missing_files(paths: Iterable[str]) -> list[str]:
    return [p for p in paths if not Path(p).is_file()]


def record(event: str, **fields: Any) -> None:
    if not RECORD:
        return
    line = json.dumps({"event": event, "t": time.time(), "pid": os.getpid(), **fields})
    with open(RECORD, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")
        fh.flush()


def starts_recorded() -> int:
    if not RECORD:
        return 0
    try:
        with open(RECORD, encoding="utf-8") as fh:
            return sum(1 for line in fh if '"event": "start"' in line)
    except FileNotFoundError:
        return 0


def socket_listening(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(0.5)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


class Frpc:
    def __init__(self, path: str, doc: dict[str, Any]) -> None:
        self.path = path
        self.doc = doc
        self.colour = os.environ.get("FAKE_FRPC_FORCE_COLOR") == "1" or not doc.get("log", {}).get(
            "disablePrintColor", False
        )
        self.proxy = doc["proxies"][0]
        self.name = self.proxy["name"]
        self.unix_path = self.proxy["plugin"]["unixPath"]
        self.run_id = secrets.token_hex(8)
        self.logged_in = False
        self.server: asyncio.Server | None = None
        self.relays: set[asyncio.Task[None]] = set()
        self.ever_in = False

    def line(self, level: str, where: str, message: str, *, run_id: bool = True) -> None:
        stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        prefix = f"[{self.run_id}] " if run_id and self.logged_in else ""
        text = f"{stamp} [{level}] [{where}] {prefix}{message}"
        if self.colour:
            text = f"{COLOURS.get(level, '')}{text}\x1b[0m"
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    async def run(self) -> int:
        mode = os.environ.get("FAKE_FRPC_MODE", "normal")
        crash_times = int(os.environ.get("FAKE_FRPC_CRASH_TIMES", "0"))
        exit_code = int(os.environ.get("FAKE_FRPC_EXIT_CODE", "1"))
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.on_term)
        if os.environ.get("FAKE_FRPC_IGNORE_INT") == "1":
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        else:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
        nth = starts_recorded() + 1
        record(
            "start",
            n=nth,
            config=self.doc,
            config_mode=oct(os.stat(self.path).st_mode & 0o777),
            socket_listening=socket_listening(self.unix_path),
        )
        self.line("I", "sub/root.go:142", f"start frpc service for config file [{self.path}]")
        if os.environ.get("FAKE_FRPC_ECHO_TOKEN") == "1":
            token = self.doc["metadatas"]["token"]
            self.line(
                "D", "config/load.go:99", f"metadatas: token={token} json={json.dumps(token)}"
            )
        if mode == "hang":
            await asyncio.Event().wait()
        if mode == "crashloop" or nth <= crash_times:
            self.line("E", "sub/root.go:150", "fake frpc: told to crash at start")
            record("exit", code=exit_code)
            return exit_code
        if mode == "crash":
            delay = float(os.environ.get("FAKE_FRPC_CRASH_AFTER", "0.1"))
            loop.call_later(delay, self.crash, exit_code)
        await self.connect_loop()
        return 0

    def crash(self, code: int) -> None:
        self.line("E", "client/service.go:400", "fake frpc: told to crash")
        record("exit", code=code)
        sys.stdout.flush()
        os._exit(code)

    def on_term(self) -> None:
        record("term", socket_listening=socket_listening(self.unix_path))
        if os.environ.get("FAKE_FRPC_IGNORE_TERM") == "1":
            return
        # Like Go's default: die by the signal, print nothing, no drain.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    async def connect_loop(self) -> None:
        attempt = 0
        addr, port = self.doc["serverAddr"], self.doc.get("serverPort", 7000)
        while True:
            self.line("I", "client/service.go:295", "try to connect to server...", run_id=False)
            error = await self.session(addr, port, attempt)
            if error is not None:
                self.logged_in = False
                self.line("W", "client/service.go:298", f"connect to server error: {error}")
                if self.doc.get("loginFailExit", True) and attempt == 0 and not self.ever_in:
                    out(
                        f"login to the server failed: {error}. With loginFailExit enabled, "
                        "no additional retries will be attempted"
                    )
                    record("exit", code=1)
                    raise SystemExit(1)
            delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)] * RETRY_SCALE
            attempt += 1
            await asyncio.sleep(delay)

    async def session(self, addr: str, port: int, attempt: int) -> str | None:
        """Log in and hold the session; the error that ended it."""
        tls = self.doc.get("transport", {}).get("tls", {})
        if tls.get("enable", True):
            missing = missing_files(tls[k] for k in ("certFile", "keyFile", "trustedCaFile"))
            if missing:
                return f"open {missing[0]}: no such file or directory"
        if os.environ.get("FAKE_FRPC_SERVER") == "none":
            await self.logged_in_now()
            await asyncio.Event().wait()
        try:
            reader, writer = await asyncio.open_connection(addr, port)
        except OSError as exc:
            return f"dial tcp {addr}:{port}: connect: {go_error(exc)}"
        host, local_port = writer.get_extra_info("sockname")[:2]
        local = f"{host}:{local_port}"
        try:
            hello = {
                "token": self.doc["metadatas"]["token"],
                "proxy": self.name,
                "remotePort": self.proxy["remotePort"],
                "run_id": self.run_id,
                "tls": bool(tls.get("enable", True)),
                "serverName": tls.get("serverName"),
            }
            writer.write(json.dumps(hello).encode() + b"\n")
            await writer.drain()
            answer = await reader.readline()
            if not answer:
                return closed_before_login(attempt, local, f"{addr}:{port}")
            verdict = json.loads(answer)
            if not verdict.get("ok"):
                return str(verdict.get("error", "login refused"))
            await self.logged_in_now()
            proxy_error = verdict.get("proxy_error")
            while proxy_error:
                # frps refused the proxy: frpc stays logged in, says why, asks again later.
                record("proxy_refused", error=proxy_error)  # first: whoever reads may look
                self.line("W", "client/control.go:166", f"[{self.name}] start error: {proxy_error}")
                try:  # frps says nothing until asked; it only goes away
                    await asyncio.wait_for(reader.read(), PROXY_RETRY * RETRY_SCALE)
                    return "session shutdown"
                except TimeoutError:
                    pass
                writer.write(b'{"retry_proxy": true}\n')
                await writer.drain()
                again = await reader.readline()
                if not again:
                    return "session shutdown"
                proxy_error = json.loads(again).get("proxy_error")
            await self.start_proxy()
            await reader.read()  # until frps goes away
            return "session shutdown"
        except (OSError, ValueError) as exc:
            return str(exc) or type(exc).__name__
        finally:
            await self.close_proxy()
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def logged_in_now(self) -> None:
        self.logged_in = True
        self.ever_in = True
        self.line(
            "I", "client/service.go:287", f"login to server success, get run id [{self.run_id}]"
        )
        record("login", token=self.doc["metadatas"]["token"], run_id=self.run_id)
        self.line("I", "proxy/proxy_manager.go:173", f"proxy added: [{self.name}]")
        if os.environ.get("FAKE_FRPC_SERVER") == "none":
            await self.start_proxy()

    async def start_proxy(self) -> None:
        try:
            self.server = await asyncio.start_server(
                self.relay, "127.0.0.1", self.proxy["remotePort"], reuse_address=True
            )
        except OSError:
            self.line("W", "client/control.go:172", f"[{self.name}] start error: port unavailable")
            return
        self.line("I", "client/control.go:168", f"[{self.name}] start proxy success")
        record("proxy", port=self.proxy["remotePort"])

    async def close_proxy(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
            for task in list(self.relays):
                task.cancel()

    async def relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.relays.add(task)
        try:
            try:
                up_r, up_w = await asyncio.open_unix_connection(self.unix_path)
            except OSError as exc:
                self.line(
                    "W",
                    "plugin/client/unix_domain_socket.go:61",
                    f"dial to uds {self.unix_path} error: dial unix {self.unix_path}: "
                    f"connect: {go_error(exc)}",
                )
                record("relay", ok=False)
                # frp 0.61.x never closes the caller's connection here: it hangs.
                await asyncio.Event().wait()
                return
            record("relay", ok=True)
            await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))
        finally:
            self.relays.discard(task)
            writer.close()


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        writer.close()


def load(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except OSError as exc:
        raise ConfigInvalid(f"open {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigInvalid(f"toml: {exc}") from None
    validate(doc)
    return doc


def main(argv: list[str]) -> int:
    if argv[:1] in (["-v"], ["--version"]):
        if os.environ.get("FAKE_FRPC_VERSION_HANG") == "1":
            time.sleep(3600)
        out(VERSION)
        return 0
    verify = argv[:1] == ["verify"]
    if verify:
        argv = argv[1:]
    if len(argv) != 2 or argv[0] != "-c":
        out("usage: frpc [-c FILE] | verify -c FILE | -v")
        return 1
    try:
        doc = load(argv[1])
    except ConfigInvalid as exc:
        out(f"frpc: the configuration file {argv[1]} is invalid: {exc}")
        record("invalid", error=str(exc))
        return 1
    if verify:
        out(f"frpc: the configuration file {argv[1]} syntax is ok")
        return 0
    return asyncio.run(Frpc(argv[1], doc).run())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
