"""Provisioning again on an admin's behalf (a key rotation, a pairing code, another service URL),
without an outage: the key in use keeps serving until a new one is issued, and a failure puts
everything back as it was (docs/lifecycle.md, "Re-bootstrap")."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import attrs

from beeflow import storage
from beeflow.errors import Conflict
from beeflow.tenant.bootstrap import Bootstrapper
from beeflow.tenant.failures import REMEDIATION, BootstrapFailed
from beeflow.tenant.records import unstructure
from beeflow.tenant.state import PENDING_STATES
from beeflow.tenant.store import KEY_FILE, PENDING_FILE, PREVIOUS_FILE

log = logging.getLogger(__name__)


class Rotation:
    """The admin's re-bootstrap, on top of the single-flight bootstrapper."""

    def __init__(self, boot: Bootstrapper) -> None:
        self.boot = boot

    async def rebootstrap(self, pairing_code: str | None = None) -> None:
        """Provision again. The current key file is kept as tenant-key.previous.json. On failure
        everything is restored and BootstrapFailed is raised; a 202 leaves the pending state in
        place.

        The key in use keeps serving every request while the service is asked and, when it
        answers 202 (an e-mail code), until the new key is issued; if that never happens it
        simply stays. Only a changed service URL drops it at once (a key issued by another
        service is no use there), as does the first bootstrap (no key)."""
        boot = self.boot
        if boot.config.tenant_key_env:
            raise Conflict(
                "The tenant key is set by BEEFLOW_TENANT_KEY and cannot be re-provisioned",
                code="tenant_key_env_locked",
            )
        async with contextlib.AsyncExitStack() as stack:
            if boot.lease is not None:
                # One replica re-provisions at a time; it starts from what the last one left.
                await stack.enter_async_context(boot.lease.hold())
            await stack.enter_async_context(boot.lock)
            if boot.reread is not None:
                boot.reread()
            await self._rebootstrap(pairing_code)

    async def _rebootstrap(self, pairing_code: str | None) -> None:
        boot = self.boot
        if boot.run.task is not None and not boot.run.task.done():
            await asyncio.shield(boot.run.task)
        boot.retry.cancel()
        state, store, pending = boot.state, boot.store, boot.pending
        saved = attrs.evolve(state)
        saved_failures, saved_pairing = boot.failures, boot.pairing_code
        saved_record, saved_generation = pending.record, pending.generation
        raw_key = await asyncio.to_thread(store.read_raw, KEY_FILE)
        raw_pending = await asyncio.to_thread(store.read_raw, PENDING_FILE)
        if raw_key is not None:
            try:
                await store.write_raw(PREVIOUS_FILE, raw_key)
            except storage.StoreError as exc:
                raise BootstrapFailed(
                    "storage",
                    f"Cannot keep a copy of the current key: {exc.reason}",
                    code="tenant_store_failed",
                ) from None
        hold = self._can_hold()
        await asyncio.to_thread(store.remove, PENDING_FILE)
        if hold:
            state.pending = None
            state.last_error = None
            state.store_error = None
            pending.forget()
        else:
            await asyncio.to_thread(store.remove, KEY_FILE)
            state.reset()
        boot.failures = 0
        if pairing_code:
            boot.pairing_code = pairing_code
        applied = boot.applied
        task = boot.run.start(boot.provision())
        await asyncio.shield(task)
        if boot.applied != applied and state.key and not state.store_error:
            boot.retry.cancel()
            return
        if boot.applied == applied and state.status in PENDING_STATES:
            return
        failure = unstructure(state.last_error) if state.last_error else {}
        if boot.applied != applied and state.store_error:
            failure = {
                "category": "storage_failed",
                "error": state.store_error,
                "remediation": REMEDIATION["storage_failed"],
            }
        boot.retry.cancel()
        # Put everything back as it was.
        state.restore(saved)
        boot.failures, boot.pairing_code = saved_failures, saved_pairing
        pending.record, pending.generation = saved_record, saved_generation
        for name, raw in ((KEY_FILE, raw_key), (PENDING_FILE, raw_pending)):
            if raw is not None:
                try:
                    await store.write_raw(name, raw)
                except storage.StoreError as exc:
                    log.error("%s while restoring the previous tenant state", exc)
        raise BootstrapFailed.answered(
            str(failure.get("error") or "no tenant key was provisioned"),
            category=str(failure.get("category", "unknown")),
            remediation=str(failure.get("remediation", REMEDIATION["unknown"])),
        )

    def _can_hold(self) -> bool:
        """The key in use may keep serving during a re-bootstrap: it exists and was issued by
        the service the connector talks to now."""
        state = self.boot.state
        if not state.key:
            return False
        bound = (state.bound_api_base_url or "").rstrip("/")
        return not bound or bound == str(self.boot.service_url.url).rstrip("/")
