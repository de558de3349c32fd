"""setup-config.json: the picker's saved choice, written atomically with mode 0600."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import attrs

log = logging.getLogger(__name__)

FILENAME: Final = "setup-config.json"
MODES: Final = ("cloud", "self-hosted")
MAX_BYTES: Final = 64 * 1024


@attrs.frozen
class SetupChoice:
    mode: str
    api_base_url: str
    saved_at: float

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "apiBaseUrl": self.api_base_url, "savedAt": self.saved_at}

    @classmethod
    def from_json(cls, data: Any) -> SetupChoice | None:
        if not isinstance(data, dict):
            return None
        mode, url, saved = data.get("mode"), data.get("apiBaseUrl"), data.get("savedAt", 0)
        # The Node reference also wrote "custom": same meaning as self-hosted.
        if mode == "custom":
            mode = "self-hosted"
        if mode not in MODES or not isinstance(url, str) or not url:
            return None
        if not isinstance(saved, int | float) or isinstance(saved, bool):
            saved = 0
        return cls(mode=mode, api_base_url=url, saved_at=float(saved))


def path_in(storage: Path) -> Path:
    return storage / FILENAME


def write_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write to a 0600 temp file in the same directory, fsync, rename over, fsync the directory:
    a crash leaves the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    payload = json.dumps(data, indent=2, sort_keys=True).encode("utf-8") + b"\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def save(storage: Path, mode: str, api_base_url: str) -> SetupChoice:
    choice = SetupChoice(mode=mode, api_base_url=api_base_url, saved_at=round(time.time(), 3))
    write_atomic(path_in(storage), choice.to_json())
    return choice


def load(storage: Path) -> SetupChoice | None:
    """The saved choice, or None (missing, unreadable, or not ours: logged, never fatal)."""
    path = path_in(storage)
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("cannot read %s: %s", path, exc.strerror or type(exc).__name__)
        return None
    if len(raw) > MAX_BYTES:
        log.warning("ignoring %s: larger than %d bytes", path, MAX_BYTES)
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        log.warning("ignoring %s: not valid JSON", path)
        return None
    choice = SetupChoice.from_json(data)
    if choice is None:
        log.warning("ignoring %s: unexpected content", path)
    return choice
