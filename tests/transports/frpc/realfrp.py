"""The real frpc and frps 0.61.1 (the release HaRP pins), set up the way HaRP runs frps: its
frps.toml (TLS forced with client certificates, allowPorts, one port per client, the Login
plugin), its certificates (HaRP's openssl recipe: CA, server `harp.nc`, client), and a Login
plugin that checks the shared key like HaRP's agent does.

Sources: HaRP's `start.sh` (nextcloud/HaRP at 0326225a: the certificate recipe and both frps.toml
variants) and its agent's `/frp_handler` (contract 1.4: `{"reject": false, "unchange": true}`
for a matching `metas.token`, else HTTP 400). The binaries come from the bundle beside the
checkout, `../shared/frp/frp-0.61.1-linux-amd64.tar.xz` (or BEEFLOW_FRP_BUNDLE), checked against
the sha256 sums it carries.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any, Final

import attrs
from aiohttp import web

from beeflow.tasks import spawn
from tests.fakes.frp import free_port
from tests.procs import REPO

BUNDLE_NAME: Final = "frp-0.61.1-linux-amd64.tar.xz"
# The sums of the bundle's frpc and frps (its README), so a swapped bundle cannot pass.
SUMS: Final = {
    "frpc": "6599fcf67def298ca657e9ad46b20a8c54340b7ee4496c59d46b32db991d5c2b",
    "frps": "12626f57551dbbf43d267dda20fa484392be51d78a208a315be627c2140b45a4",
}


def bundle_path() -> Path:
    override = os.environ.get("BEEFLOW_FRP_BUNDLE")
    return Path(override) if override else REPO.parent / "shared" / "frp" / BUNDLE_NAME


def unavailable() -> str | None:
    """Why the real binaries cannot run here, or None."""
    if not bundle_path().is_file():
        return f"no frp bundle at {bundle_path()} (set BEEFLOW_FRP_BUNDLE)"
    if shutil.which("openssl") is None:
        return "no openssl (apt-get install openssl) for HaRP's certificate recipe"
    return None


def extract(directory: Path) -> Path:
    """frpc and frps from the bundle into `directory`, their sums checked."""
    with tarfile.open(bundle_path(), "r:xz") as tar:
        tar.extractall(directory, members=[m for m in tar if m.name in SUMS], filter="data")
    for name, want in SUMS.items():
        got = hashlib.sha256((directory / name).read_bytes()).hexdigest()
        if got != want:
            raise AssertionError(f"{name} in {bundle_path()} has sha256 {got}, want {want}")
        (directory / name).chmod(0o755)
    return directory


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)  # noqa: S607


def harp_certs(directory: Path) -> Path:
    """HaRP's frp certificates (start.sh, 2048-bit RSA, sha256): a CA, a server certificate for
    `harp.nc` and a client certificate for `harp.client.nc`, both signed by the CA."""
    directory.mkdir(parents=True, exist_ok=True)
    for role, name in (("server", "harp.nc"), ("client", "harp.client.nc")):
        (directory / f"{role}-openssl.cnf").write_text(
            "[ req ]\ndefault_bits = 2048\ndefault_md = sha256\nprompt = no\n"
            "distinguished_name = dn\nreq_extensions = req_ext\n\n"
            f"[ dn ]\nCN = {name}\n\n[ req_ext ]\nsubjectAltName = DNS:{name}\n"
        )
    run = directory
    _openssl("genrsa", "-out", "ca.key", "2048", cwd=run)
    _openssl("req", "-x509", "-new", "-nodes", "-key", "ca.key", "-subj", "/CN=harp.nc",
             "-days", "30", "-out", "ca.crt", cwd=run)  # fmt: skip
    for role, name in (("server", "harp.nc"), ("client", "harp.client.nc")):
        _openssl("genrsa", "-out", f"{role}.key", "2048", cwd=run)
        _openssl("req", "-new", "-sha256", "-key", f"{role}.key", "-subj", f"/CN={name}",
                 "-config", f"{role}-openssl.cnf", "-out", f"{role}.csr", cwd=run)  # fmt: skip
        _openssl("x509", "-req", "-days", "30", "-sha256", "-in", f"{role}.csr", "-CA", "ca.crt",
                 "-CAkey", "ca.key", "-CAcreateserial", "-extfile", f"{role}-openssl.cnf",
                 "-extensions", "req_ext", "-out", f"{role}.crt", cwd=run)  # fmt: skip
    return directory


def client_cert_dir(harp_dir: Path, target: Path) -> Path:
    """What AppAPI copies into the ExApp's /certs/frp: ca.crt, client.crt, client.key."""
    target.mkdir(parents=True, exist_ok=True)
    for name in ("ca.crt", "client.crt", "client.key"):
        shutil.copy(harp_dir / name, target / name)
    return target


def frps_toml(port: int, plugin_port: int, certs: Path, *, tls: bool) -> str:
    """HaRP's frps.toml (start.sh), on loopback, logging to the console."""
    lines = [
        'bindAddr = "127.0.0.1"',
        f"bindPort = {port}",
        'proxyBindAddr = "127.0.0.1"',
        f"transport.tls.force = {'true' if tls else 'false'}",
    ]
    if tls:
        lines += [
            f'transport.tls.certFile = "{certs / "server.crt"}"',
            f'transport.tls.keyFile = "{certs / "server.key"}"',
            f'transport.tls.trustedCaFile = "{certs / "ca.crt"}"',
        ]
    lines += [
        'log.level = "info"',
        "log.disablePrintColor = true",
        "maxPortsPerClient = 1",
        "allowPorts = [",
        "  { start = 23000, end = 23999 },",
        "  { start = 24000, end = 24099 }",
        "]",
        "",
        "[[httpPlugins]]",
        f'addr = "127.0.0.1:{plugin_port}"',
        'path = "/frp_handler"',
        'ops = ["Login"]',
    ]
    return "\n".join(lines) + "\n"


@attrs.define
class RealFrps:
    """HaRP's frps (the real binary) with a Login plugin accepting `token`. `tls=False` is
    HaRP with HP_FRP_DISABLE_TLS=true."""

    binary: Path
    workdir: Path
    token: str
    certs: Path
    tls: bool = True
    port: int = attrs.field(factory=free_port)
    logins: list[dict[str, Any]] = attrs.field(factory=list)
    output: list[str] = attrs.field(factory=list)
    _proc: asyncio.subprocess.Process | None = None
    _reader: asyncio.Task[None] | None = None
    _plugin: web.AppRunner | None = None
    _plugin_port: int = 0
    _changed: asyncio.Condition = attrs.field(factory=asyncio.Condition)
    _eof: bool = False
    _mark: int = 0

    async def start(self) -> RealFrps:
        if self._plugin is None:
            await self._start_plugin()
        config = self.workdir / "frps.toml"
        config.write_text(frps_toml(self.port, self._plugin_port, self.certs, tls=self.tls))
        self._eof = False
        self._mark = len(self.output)
        self._proc = await asyncio.create_subprocess_exec(
            str(self.binary),
            "-c",
            str(config),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        self._reader = spawn(self._read(self._proc), name="frps-output")
        await self._listening()
        return self

    async def _listening(self, timeout: float = 10.0) -> None:
        """Until frps says it started (it listens by then), or fails."""

        def said() -> bool:
            return self._eof or started()

        def started() -> bool:
            return any("frps started successfully" in line for line in self.output[mark:])

        mark = self._mark

        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(said), timeout)
        if not started():
            raise AssertionError("frps did not start:\n" + "\n".join(self.output))

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            async with self._changed:
                self.output.append(line.decode(errors="replace").rstrip())
                self._changed.notify_all()
        async with self._changed:
            self._eof = True
            self._changed.notify_all()

    async def _start_plugin(self) -> None:
        async def handler(request: web.Request) -> web.Response:
            body = await request.json()
            content = body.get("content") or {}
            token = (content.get("metas") or {}).get("token")
            self.logins.append(content)
            if token != self.token:
                return web.json_response({"error": "invalid token"}, status=400)
            return web.json_response({"reject": False, "unchange": True})

        app = web.Application()
        app.router.add_post("/frp_handler", handler)
        self._plugin = web.AppRunner(app, access_log=None)
        await self._plugin.setup()
        self._plugin_port = free_port()
        await web.TCPSite(self._plugin, "127.0.0.1", self._plugin_port).start()

    async def stop(self, *, plugin: bool = True) -> None:
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
            await self._proc.wait()
        if self._reader is not None:
            await self._reader
            self._reader = None
        if plugin and self._plugin is not None:
            await self._plugin.cleanup()
            self._plugin = None

    async def restart(self, *, tls: bool) -> None:
        """frps again on the same port, e.g. as HaRP with HP_FRP_DISABLE_TLS=true."""
        await self.stop(plugin=False)
        self.tls = tls
        await self.start()
