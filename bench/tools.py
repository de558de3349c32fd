"""What the bench needs from outside Python, installed when missing: wrk and nginx from Debian
(apt-get, only when running as root), and the Node stack from npm (the exact tree of
bench/node/package-lock.json, into a cache directory outside the repository).

Each `ensure_*` returns "" when the tool is there, else one sentence saying why not and how to
get it; the bench then reports that comparator as unavailable instead of failing the run."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

NODE_DIR: Final = Path(__file__).resolve().parent / "node"
ROOT: Final = NODE_DIR.parent.parent
# Debian's package for each executable.
APT_PACKAGE: Final = {"wrk": "wrk", "nginx": "nginx", "node": "nodejs", "npm": "npm"}
# Where Debian keeps nginx (not on a non-root PATH).
SBIN: Final = ("/usr/sbin", "/sbin")
# Debian's invoke-rc.d asks this script whether a package may start its service: 101 = no.
# Installing nginx must not start a system nginx on port 80.
POLICY_RC_D: Final = Path("/usr/sbin/policy-rc.d")


def which(tool: str) -> str | None:
    found = shutil.which(tool)
    if found is None:
        for directory in SBIN:
            candidate = Path(directory) / tool
            if os.access(candidate, os.X_OK):
                return str(candidate)
    return found


def _say(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


def ensure_apt(tools: Sequence[str]) -> dict[str, str]:
    """{tool: why it is unavailable} for those of `tools` still missing after trying apt-get."""
    missing = [t for t in tools if which(t) is None]
    if not missing:
        return {}
    packages = sorted({APT_PACKAGE[t] for t in missing})
    hint = f"apt-get install -y {' '.join(packages)}"
    apt = shutil.which("apt-get")
    if os.geteuid() != 0 or apt is None:
        return {t: f"{t} is not installed ({hint})" for t in missing}
    _say(f"installing {', '.join(packages)} with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    placed = False
    try:
        if not POLICY_RC_D.exists():
            POLICY_RC_D.write_text("#!/bin/sh\nexit 101\n")
            POLICY_RC_D.chmod(0o755)
            placed = True
        subprocess.run([apt, "update", "-qq"], env=env, check=False, capture_output=True)
        done = subprocess.run(
            [apt, "install", "-y", "-qq", "--no-install-recommends", *packages],
            env=env,
            check=False,
            capture_output=True,
            text=True,
        )
    finally:
        if placed:
            with contextlib.suppress(OSError):
                POLICY_RC_D.unlink()
    still = [t for t in missing if which(t) is None]
    why = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
    return {t: f"{t}: `{hint}` failed ({why[0][:120]})" for t in still}


# ------------------------------------------------------------------ the Node stack


def cache_root(env: Mapping[str, str] = os.environ) -> Path:
    """BEEFLOW_BENCH_CACHE, else $XDG_CACHE_HOME/beeflow-bench, else ~/.cache/beeflow-bench."""
    if env.get("BEEFLOW_BENCH_CACHE"):
        return Path(env["BEEFLOW_BENCH_CACHE"])
    base = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "beeflow-bench"


def node_key() -> str:
    """Names the installed tree after what pins it: a changed lock file installs afresh."""
    digest = hashlib.sha256()
    for name in ("package.json", "package-lock.json"):
        digest.update((NODE_DIR / name).read_bytes())
    return digest.hexdigest()[:16]


def node_versions() -> dict[str, str]:
    """The pinned versions of the stack's two packages, from the lock file."""
    lock = json.loads((NODE_DIR / "package-lock.json").read_text())
    packages = lock["packages"]
    return {
        name: packages.get(f"node_modules/{name}", {}).get("version", "?")
        for name in ("express", "http-proxy-middleware")
    }


def ensure_node_stack(root: Path | None = None) -> tuple[Path | None, str]:
    """(the node_modules directory to put on NODE_PATH, "") or (None, why not)."""
    root = cache_root() if root is None else root
    if root.resolve().is_relative_to(ROOT):
        return None, f"the cache directory {root} is inside the repository"
    dest = root / f"node-{node_key()}"
    modules = dest / "node_modules"
    marker = modules / ".bench-complete"
    if marker.exists():
        return modules, ""
    shutil.rmtree(dest, ignore_errors=True)  # an install that never completed
    problems = ensure_apt(["node", "npm"])
    if problems:
        return None, "; ".join(problems.values())
    npm = which("npm")
    assert npm is not None
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".node-", dir=root))
    try:
        for name in ("package.json", "package-lock.json"):
            shutil.copy2(NODE_DIR / name, staging / name)
        _say(f"installing the Node stack ({node_versions()}) into {dest}")
        done = subprocess.run(
            [npm, "ci", "--omit=dev", "--no-audit", "--no-fund", "--ignore-scripts"],
            cwd=staging,
            check=False,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
            return None, f"npm ci failed ({tail[0][:160]})"
        (staging / "node_modules" / ".bench-complete").write_text("")
        try:
            staging.rename(dest)
        except OSError:  # another bench installed it meanwhile
            if not marker.exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return modules, ""
