"""setup-config.json: the picker's saved choice (written through beeflow.storage)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Final

import attrs

from beeflow.storage import write_json_atomic

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


def save(storage: Path, mode: str, api_base_url: str) -> SetupChoice:
    """Written like every state file (beeflow.storage: atomic, 0600; blocking). Raises
    StoreError."""
    choice = SetupChoice(mode=mode, api_base_url=api_base_url, saved_at=round(time.time(), 3))
    write_json_atomic(path_in(storage), choice.to_json())
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
