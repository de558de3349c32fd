"""The real Nextcloud 32 of `../shared/nextcloud/nc`, driven from the tests: up and down in a
directory and on a port of the lane's own, `occ` (with the one retry SQLite's lock needs), the
brute-force counter, the web server's access log and AppAPI's own record of the app."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import attrs
from yarl import URL

REPO: Final = Path(__file__).resolve().parents[2]
# `shared` sits beside the checkout (here and in CI); BEEFLOW_NC_SCRIPT points elsewhere.
NC_SCRIPT_ENV: Final = "BEEFLOW_NC_SCRIPT"
DEFAULT_SCRIPT: Final = REPO.parent / "shared" / "nextcloud" / "nc"
# BEEFLOW_NC_DIR keeps the instance in a directory of your choice (it is reused, never removed).
NC_DIR_ENV: Final = "BEEFLOW_NC_DIR"
UP_TIMEOUT: Final = 600.0  # the first `up` on a fresh machine installs Debian's PHP and nginx
OCC_TIMEOUT: Final = 120.0
LOCKED: Final = re.compile(r"database is locked|SQLSTATE\[HY000\]: General error: 5", re.I)
ATTEMPTS: Final = re.compile(r"attempts:\s*(\d+)")


class Unavailable(Exception):
    """Nextcloud cannot run here (no script, no bundle, packages missing and not root...)."""


def nc_script() -> Path:
    return Path(os.environ.get(NC_SCRIPT_ENV) or DEFAULT_SCRIPT)


def kill_group(proc: subprocess.Popen[str]) -> None:
    """Stop a script and everything it started (occ's PHP outlives a killed bash), then reap.
    Only while the script runs: its process group id cannot have been reused then (and the
    script waits for its children, so a script that ended has none left)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return {"Authorization": f"Basic {token}"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The caller's environment without a developer's `eval "$(nc env)"` leftovers, so the
    script takes only what the lane passes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NC_")}
    env.update(extra or {})
    return env


@attrs.define
class NcServer:
    """One running instance. `keep` instances (BEEFLOW_NC_DIR) are stopped, not removed."""

    script: Path
    root: Path
    port: int
    keep: bool
    env: dict[str, str] = attrs.field(factory=dict)
    up_seconds: float = 0.0

    @property
    def url(self) -> URL:
        return URL(self.env["NC_URL"])

    @property
    def admin(self) -> dict[str, str]:
        """Basic auth headers of the admin (as a browser sends them)."""
        return basic(self.env["NC_ADMIN_USER"], self.env["NC_ADMIN_PASSWORD"])

    @property
    def bob(self) -> dict[str, str]:
        return basic(self.env["NC_BOB_USER"], self.env["NC_BOB_PASSWORD"])

    @property
    def bob_password(self) -> str:
        return self.env["NC_BOB_PASSWORD"]

    @property
    def access_log(self) -> Path:
        return self.root / "nginx" / "access.log"

    @property
    def database(self) -> Path:
        return Path(self.env["NC_DATA"]) / "nextcloud.db"

    # ------------------------------------------------------------ start and stop

    @classmethod
    def start(cls) -> NcServer:
        script = nc_script()
        if not script.is_file():
            raise Unavailable(f"no Nextcloud script at {script} (set {NC_SCRIPT_ENV})")
        keep_dir = os.environ.get(NC_DIR_ENV, "")
        root = Path(keep_dir) if keep_dir else Path(tempfile.mkdtemp(prefix="beeflow-it-nc-"))
        last = ""
        for _ in range(3):  # a port taken between our probe and nginx's bind: pick another
            server = cls(script, root, free_port(), keep=bool(keep_dir))
            started = time.monotonic()
            done = server._run(["up", "--server", "nginx"], timeout=UP_TIMEOUT)
            if done.returncode == 0:
                server.up_seconds = time.monotonic() - started
                server.env = server._read_env()
                return server
            last = (done.stdout + done.stderr)[-2000:]
            if done.returncode != 4:
                break
        if not keep_dir:
            shutil.rmtree(root, ignore_errors=True)
        raise Unavailable(f"`nc up` failed:\n{last}")

    def stop(self) -> None:
        self._run(["clean" if not self.keep else "down"], timeout=120)
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)

    def _run(
        self,
        args: Sequence[str],
        *,
        timeout: float = OCC_TIMEOUT,
        extra_env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        command = [str(self.script), "--dir", str(self.root), "--port", str(self.port), *args]
        proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_clean_env(extra_env),
            start_new_session=True,  # occ runs as a child of the script: stop them together
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            raise
        return subprocess.CompletedProcess(command, proc.returncode, out, err)

    def _read_env(self) -> dict[str, str]:
        done = self._run(["env"])
        if done.returncode != 0:
            raise Unavailable(f"`nc env` failed: {done.stderr}")
        env: dict[str, str] = {}
        for line in done.stdout.splitlines():
            words = shlex.split(line)
            if len(words) == 2 and words[0] == "export" and "=" in words[1]:
                name, _, value = words[1].partition("=")
                env[name] = value
        return env

    # ------------------------------------------------------------ occ

    def occ(
        self,
        *args: str,
        check: bool = True,
        timeout: float = OCC_TIMEOUT,
        extra_env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """`occ ARGS`. A write that meets SQLite's writer lock while the server is busy is
        retried once (the bundle's README: WAL mode can say "database is locked")."""
        done = self._run(["occ", *args], timeout=timeout, extra_env=extra_env)
        if done.returncode != 0 and LOCKED.search(done.stdout + done.stderr):
            time.sleep(0.5)
            done = self._run(["occ", *args], timeout=timeout, extra_env=extra_env)
        if check and done.returncode != 0:
            raise AssertionError(
                f"occ {' '.join(args[:3])} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
            )
        return done

    def occ_background(self, *args: str) -> subprocess.Popen[str]:
        """`occ ARGS` left running (a `--wait-finish` the test drives to its end)."""
        command = [str(self.script), "--dir", str(self.root), "--port", str(self.port), "occ"]
        return subprocess.Popen(
            [*command, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=_clean_env(),
            start_new_session=True,
        )

    def attempts(self, ip: str = "127.0.0.1") -> int:
        """`occ security:bruteforce:attempts <ip> app_api` (30-minute and 12-hour counts are the
        same number for a fresh counter; this is what the throttler compares)."""
        out = self.occ("security:bruteforce:attempts", ip, "app_api").stdout
        match = ATTEMPTS.search(out)
        assert match, out
        return int(match.group(1))

    def reset_bruteforce(self, *ips: str) -> None:
        done = self._run(["reset-bruteforce", *ips])
        assert done.returncode == 0, done.stderr

    def ex_app(self, app_id: str) -> dict[str, Any] | None:
        """AppAPI's row for the app (enabled flag and its init status), read from the database
        itself: no occ command shows the init progress or error."""
        uri = f"file:{self.database}?mode=ro"
        with sqlite3.connect(uri, uri=True, timeout=10) as db:
            row = db.execute(
                "SELECT enabled, status FROM oc_ex_apps WHERE appid = ?", (app_id,)
            ).fetchone()
        if row is None:
            return None
        return {"enabled": bool(row[0]), "status": json.loads(row[1] or "{}")}

    def ex_app_routes(self, app_id: str) -> list[dict[str, Any]]:
        """The routes AppAPI stored for the app (what its proxy enforces)."""
        uri = f"file:{self.database}?mode=ro"
        with sqlite3.connect(uri, uri=True, timeout=10) as db:
            rows = db.execute(
                "SELECT url, verb, access_level, headers_to_exclude FROM oc_ex_apps_routes "
                "WHERE appid = ? ORDER BY id",
                (app_id,),
            ).fetchall()
        return [
            {
                "url": r[0],
                "verb": r[1],
                "access_level": r[2],
                "headers_to_exclude": json.loads(r[3]),
            }
            for r in rows
        ]

    def access_lines(self, since: int = 0) -> list[str]:
        """The web server's access log from line `since` on."""
        try:
            lines = self.access_log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []
        return lines[since:]

    def access_count(self) -> int:
        return len(self.access_lines())
