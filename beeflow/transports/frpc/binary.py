"""Which frpc runs: the executable found before anything binds, what `frpc -v` says, and the
version pinned in frpc/pin.toml (docs/transports.md, "Why frpc 0.61.1")."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import tomllib
from pathlib import Path
from typing import Final

from beeflow.config import Config
from beeflow.transports.base import TransportError
from beeflow.transports.frpc.diagnose import strip_ansi

PINNED_VERSION: Final = "0.61.1"
# Where the repo keeps the pin (a source checkout); images point BEEFLOW_FRPC_PIN_FILE at theirs.
DEFAULT_PIN_FILE: Final = Path(__file__).resolve().parents[3] / "frpc" / "pin.toml"

_VERSION: Final = re.compile(r"\b(\d+\.\d+\.\d+)\b")


class FrpcError(TransportError):
    """frpc cannot be run at all (missing, not executable): a start-up error, not a crash loop."""


def read_pin(path: Path) -> str | None:
    """The pinned version from frpc/pin.toml, or None if there is no readable pin."""
    try:
        with path.open("rb") as fh:
            version = tomllib.load(fh).get("version")
    except (OSError, tomllib.TOMLDecodeError):
        return None
    return version if isinstance(version, str) else None


def pin_warning(version: str | None, binary: str, config: Config) -> str:
    """What to warn about when `frpc -v` said `version`: another version than the pin, no
    version at all, or an explicitly configured pin file that cannot be read; "" if fine (no
    pin at all is no check)."""
    pin_file = config.frpc_pin_file or DEFAULT_PIN_FILE
    pinned = read_pin(pin_file)
    if pinned is None:
        if config.frpc_pin_file is not None:
            return f"frpc pin file {pin_file} is missing or unreadable"
        return ""
    if version is None:
        return f"could not read the frpc version ({binary} -v); pinned is {pinned}"
    if version != pinned:
        return (
            f"frpc reports version {version} but {pin_file} pins {pinned} (HaRP's frps is "
            f"{PINNED_VERSION}): the tunnel may misbehave"
        )
    return ""


def resolve_binary(name: str) -> str:
    """The absolute path of the frpc executable, or a FrpcError saying what is wrong."""
    found = shutil.which(name)
    if found:
        return found
    path = Path(name)
    if "/" in name and path.exists():
        if path.is_dir():
            raise FrpcError(f"frpc binary {name} is a directory (set BEEFLOW_FRPC_BIN)")
        raise FrpcError(f"frpc binary {name} is not executable (chmod +x or set BEEFLOW_FRPC_BIN)")
    raise FrpcError(
        f"frpc binary {name!r} not found: HaRP mode needs frpc {PINNED_VERSION} "
        "(install it on PATH or set BEEFLOW_FRPC_BIN)"
    )


async def read_version(binary: str, timeout: float) -> str | None:
    """What `frpc -v` says (ANSI stripped), or None if it said nothing usable in time.
    Raises FrpcError if the binary cannot run."""
    try:
        proc = await asyncio.create_subprocess_exec(
            binary,
            "-v",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        raise FrpcError(f"cannot run frpc binary {binary}: {exc.strerror or exc}") from None
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        return None
    finally:
        if proc.returncode is None:  # timed out, or we are stopping: reap it
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    match = _VERSION.search(strip_ansi(out.decode(errors="replace")))
    return match.group(1) if match else None
