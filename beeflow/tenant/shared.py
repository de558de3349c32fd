"""The tenant as other replicas left it: the key, the pending verification and the last error are
re-read from the shared storage when their files change (docs/deployments.md, "Replicas on one
volume"). Checked once a second in the background, and by the proxies before they use the key
(a stat() each, the file read only after a change), so a key rotated or provisioned by another
replica is used here within a second, and before a `/nc` signature is judged.

Nothing is applied while this process changes the tenant itself (a bootstrap, a re-bootstrap,
a verification): its own writes are applied as it makes them, and the files are looked at again
once it is done."""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from aiohttp import web

from beeflow.lease import FileWatch
from beeflow.redact import REDACTOR
from beeflow.tasks import Slot
from beeflow.tenant.bootstrap import Bootstrapper
from beeflow.tenant.records import KeyRecord
from beeflow.tenant.state import PENDING_STATES
from beeflow.tenant.store import ERROR_FILE, KEY_FILE, PENDING_FILE

log = logging.getLogger(__name__)

POLL_SECONDS: Final = 1.0


class TenantFiles:
    """Watches the tenant's files and applies what another replica wrote."""

    def __init__(self, boot: Bootstrapper, *, poll: float = POLL_SECONDS) -> None:
        self.boot = boot
        self.poll = poll
        store = boot.store
        self._key = FileWatch(store.path(KEY_FILE))
        self._others = (FileWatch(store.path(PENDING_FILE)), FileWatch(store.path(ERROR_FILE)))
        self._loop = Slot("tenant-files-watch")
        self.reloads = 0  # changes applied (tests, health)

    @property
    def fixed(self) -> bool:
        """BEEFLOW_TENANT_KEY fixes the key: there is nothing to re-read."""
        return bool(self.boot.config.tenant_key_env)

    def mark(self) -> None:
        """The files as they are now are what we hold (after load() read them)."""
        for watch in (self._key, *self._others):
            watch.mark()

    def refresh_key(self) -> bool:
        """Before the key is used (the proxies): True when a changed key file was applied."""
        if self.fixed or not self._key.changed():
            return False
        return self._apply(self._key)

    def refresh(self) -> bool:
        """Any of the tenant's files: True when a change was applied."""
        if self.fixed:
            return False
        changed = [w for w in (self._key, *self._others) if w.changed()]
        return bool(changed) and self._apply(*changed)

    def _apply(self, *changed: FileWatch) -> bool:
        if self.boot.busy:
            # Our own change is under way: look again once it is done.
            for watch in changed:
                watch.forget()
            return False
        self.reloads += 1
        self.reload()
        return True

    def reload(self) -> None:
        """Take the tenant from the files (synchronous: they are a few hundred bytes each)."""
        boot, state, store = self.boot, self.boot.state, self.boot.store
        record = store.load_key()
        if record is not None:
            if record.tenant_key.strip() != state.key:
                self._adopt(record)
        elif state.key and state.source in ("cache", "bootstrap"):
            # Another replica dropped the key (a re-bootstrap against another service): so
            # does this one; what it provisions next arrives the same way.
            log.info("tenant key removed by another replica; waiting for the new one")
            state.reset()
            boot.pending.forget()
        pending = store.load_pending()
        if pending is not None and boot.pending.resumable(pending):
            ours = boot.pending.record
            for_us = not state.key or pending.replaces_key == state.fingerprint
            if for_us and (ours is None or ours != pending):
                boot.pending.use(pending)
        elif boot.pending.record is not None:
            boot.pending.forget()
            state.pending = None
            if state.status in PENDING_STATES:
                state.status = "ok" if state.key else "initialising"
        if not state.key and state.status not in PENDING_STATES:
            error = store.load_error()
            if error is not None and error.status == "failed":
                state.last_error, state.status = error, "failed"

    def _adopt(self, record: KeyRecord) -> None:
        boot, state = self.boot, self.boot.state
        REDACTOR.add(record.tenant_key.strip())
        previous = state.fingerprint
        state.adopt(record, source="cache")
        state.instance_id = record.nc_instance_id or state.instance_id
        state.last_error = None
        state.store_error = None
        boot.failures = 0
        boot.pairing_code = None
        boot.retry.cancel()
        boot.pin_service_url()
        log.info(
            "tenant key changed by another replica (fingerprint %s, was %s)",
            state.fingerprint,
            previous,
        )

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(self.poll)
            try:
                self.refresh()
            except Exception:
                log.exception("re-reading the tenant files failed")

    def start(self) -> None:
        """The background watch (nothing to watch when the key is fixed)."""
        if not self.fixed:
            self._loop.start(self.watch())

    async def stop(self) -> None:
        await self._loop.close()


TENANT_FILES: web.AppKey[TenantFiles] = web.AppKey("tenant_files")


def refresh_key(app: web.Application) -> None:
    """For the proxies, before they use the key: apply a key another replica wrote."""
    files = app.get(TENANT_FILES)
    if files is not None:
        files.refresh_key()
