"""The connector as AppAPI sees it: `python -m beeflow serve` as a real process, its
registration JSON made from the repository's own appinfo/info.xml, and a stand-in that answers
AppAPI's first calls and then vanishes (an /init the connector never got)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import string
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

import attrs

from tests.integration.server import REPO

INFO_XML: Final = REPO / "appinfo" / "info.xml"
LEVELS: Final = {"PUBLIC": 0, "USER": 1, "ADMIN": 2}
# AppAPI's own secrets: 128 characters of ISecureRandom's default alphabet (contract 1.1).
SECRET_ALPHABET: Final = string.ascii_letters + string.digits + "+/"


def new_secret() -> str:
    return "".join(secrets.choice(SECRET_ALPHABET) for _ in range(128))


def manifest() -> ET.Element:
    return ET.parse(INFO_XML).getroot()  # noqa: S314 - the repository's own manifest


def json_info(secret: str, port: int, daemon: str = "manual_install") -> dict[str, Any]:
    """The `--json-info` form of appinfo/info.xml that a manual install needs (AppAPI cannot
    read a secret or a port from --info-xml): id, name, version, the daemon, and every route
    with its level as a number and its JSON-in-text lists parsed."""
    root = manifest()
    routes: list[dict[str, Any]] = []
    for el in root.findall("./external-app/routes/route"):
        route: dict[str, Any] = {
            "url": el.findtext("url", ""),
            "verb": el.findtext("verb", ""),
            "access_level": LEVELS[el.findtext("access_level", "").strip()],
            "headers_to_exclude": json.loads(el.findtext("headers_to_exclude") or "[]"),
        }
        protection = el.findtext("bruteforce_protection")
        if protection:
            route["bruteforce_protection"] = json.loads(protection)
        routes.append(route)
    return {
        "id": root.findtext("id", ""),
        "name": root.findtext("name", ""),
        "version": root.findtext("version", ""),
        "daemon_config_name": daemon,
        "secret": secret,
        "port": port,
        "routes": routes,
    }


def app_version() -> str:
    return manifest().findtext("version", "")


# ------------------------------------------------------------------ the connector process


@attrs.define(eq=False)
class Connector:
    """A running `python -m beeflow serve`; its output is kept (and searchable) as it arrives."""

    proc: subprocess.Popen[bytes]
    env: dict[str, str]
    lines: list[str] = attrs.field(factory=list)
    _changed: threading.Condition = attrs.field(factory=threading.Condition)
    _reader: threading.Thread | None = None

    @classmethod
    def start(cls, env: Mapping[str, str]) -> Connector:
        full = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO)}
        full.update(env)
        proc = subprocess.Popen(
            [sys.executable, "-m", "beeflow", "serve"],
            cwd=REPO,
            env=full,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self = cls(proc, dict(env))
        self._reader = threading.Thread(target=self._read, name=f"connector-{proc.pid}")
        self._reader.daemon = True
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._changed:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def text(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def find(self, needle: str, since: int = 0) -> list[str]:
        with self._changed:
            return [line for line in self.lines[since:] if needle in line]

    def mark(self) -> int:
        """The number of lines so far (a position for find(since=...))."""
        with self._changed:
            return len(self.lines)

    def wait_line(self, *needles: str, timeout: float = 20.0, since: int = 0) -> str:
        """The first line (from `since`) containing one of `needles`."""
        deadline = time.monotonic() + timeout

        def hit() -> str | None:
            for line in self.lines[since:]:
                if any(n in line for n in needles):
                    return line
            return None

        with self._changed:
            while True:
                line = hit()
                if line is not None:
                    return line
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._alive_reader()):
                    raise AssertionError(f"no line with {needles!r} in:\n" + "\n".join(self.lines))
                self._changed.wait(min(left, 0.5))

    def _alive_reader(self) -> bool:
        return self._reader is not None and self._reader.is_alive()

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then the connector's own graceful shutdown; KILL if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._reader is not None:
            self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return int(self.proc.returncode)


# ------------------------------------------------------------------ a stand-in that vanishes


class StandIn:
    """Answers AppAPI's heartbeat and /init like an ExApp, reports nothing, records the calls:
    the connector that crashed (or was restarted) right after AppAPI sent its /init."""

    def __init__(self, port: int) -> None:
        self.calls: list[tuple[str, str]] = []
        self.init_seen = threading.Event()
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, body: dict[str, Any]) -> None:
                stand_in.calls.append((self.command, self.path))
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                if self.path.startswith("/init"):
                    stand_in.init_seen.set()

            def do_GET(self) -> None:
                self._answer({"status": "ok"})

            def do_POST(self) -> None:
                self._answer({})

            def do_PUT(self) -> None:
                self._answer({"error": ""})

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="stand-in")
        self._thread.daemon = True
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(5)
        self._server.server_close()


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll a condition no event announces (another process's state)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout:.0f} s")
        time.sleep(0.1)
