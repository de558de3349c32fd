"""The tenant's files under APP_PERSISTENT_STORAGE: JSON, 0600, written atomically; a file that
cannot be used is moved aside, never deleted."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Final

from beeflow import storage
from beeflow.envparse import MIN_TENANT_KEY_LENGTH
from beeflow.tenant.records import ErrorRecord, KeyRecord, PendingRecord, structure, unstructure

log = logging.getLogger(__name__)

KEY_FILE: Final = "tenant-key.json"
PENDING_FILE: Final = "pending-bootstrap.json"
ERROR_FILE: Final = "bootstrap-last-error.json"
PREVIOUS_FILE: Final = "tenant-key.previous.json"
MIN_KEY_LENGTH: Final = MIN_TENANT_KEY_LENGTH


class TenantStore:
    """The key, the pending verification and the last error, one file each (docs/lifecycle.md,
    "Tenant key sources and files"); a re-bootstrap keeps the key it replaces as
    tenant-key.previous.json."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, name: str) -> Path:
        return self.directory / name

    def load_key(self) -> KeyRecord | None:
        data = storage.read_json(self.path(KEY_FILE))
        if data is None or isinstance(data, storage.Unusable):
            return None
        key = data.get("tenantKey") if isinstance(data, dict) else None
        if not isinstance(key, str) or len(key.strip()) < MIN_KEY_LENGTH:
            storage.set_aside(self.path(KEY_FILE), "missing a usable tenantKey")
            return None
        record: KeyRecord = structure(data, KeyRecord)
        return record

    async def save_key(self, record: KeyRecord) -> None:
        await storage.write_json(self.path(KEY_FILE), unstructure(record))

    def load_pending(self) -> PendingRecord | None:
        """The pending verification, or None (also for one this version cannot read)."""
        data = storage.read_json(self.path(PENDING_FILE))
        if not isinstance(data, dict):
            return None
        try:
            record: PendingRecord = structure(data, PendingRecord)
        except ValueError as exc:
            log.info("%s is not a pending verification (%s)", PENDING_FILE, exc)
            return None
        return record

    async def save_pending(self, record: PendingRecord) -> None:
        await storage.write_json(self.path(PENDING_FILE), unstructure(record))

    def load_error(self) -> ErrorRecord | None:
        data = storage.read_json(self.path(ERROR_FILE))
        if not isinstance(data, dict):
            return None
        try:
            record: ErrorRecord = structure(data, ErrorRecord)
        except ValueError:
            return None
        return record

    async def save_error(self, record: ErrorRecord) -> None:
        await storage.write_json(self.path(ERROR_FILE), unstructure(record))

    def remove(self, name: str) -> None:
        storage.remove(self.path(name))

    def read_raw(self, name: str) -> bytes | None:
        try:
            return self.path(name).read_bytes()
        except OSError:
            return None

    async def write_raw(self, name: str, raw: bytes) -> None:
        """Restore a file's content (same atomic 0600 write)."""
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return
        await storage.write_json(self.path(name), data)
