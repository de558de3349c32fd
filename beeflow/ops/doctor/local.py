"""The checks that need no network: the configuration and the persistent storage."""

from __future__ import annotations

from beeflow.ops.doctor.result import FAIL, PASS, WARN, Check, Context
from beeflow.storage import STORAGE_REMEDY, probe_creatable, write_probe


def check_config(ctx: Context) -> Check:
    c = ctx.config
    if c.harp:
        mode = f"HaRP mode (socket {c.socket_path}, frps {c.hp_frp_address}:{c.hp_frp_port})"
    else:
        mode = f"legacy mode (TCP {c.app_host}:{c.app_port})"
    details = {
        "appId": c.app_id,
        "appVersion": c.app_version,
        "mode": "harp" if c.harp else "legacy",
        "nextcloudUrl": str(c.nextcloud_url),
        "tenantKey": "auto" if c.tenant_key_auto else "set by BEEFLOW_TENANT_KEY",
    }
    return Check("config", PASS, f"{c.app_id} {c.app_version}, {mode}", details=details)


def check_storage(ctx: Context) -> Check:
    """The same test `serve` makes at start (storage.check_directory), without creating
    anything: a missing directory passes only when it could be made."""
    directory = ctx.config.persistent_storage
    remedy = STORAGE_REMEDY.replace("<appid>", ctx.config.app_id)
    if not directory.exists():
        problem = probe_creatable(directory)
        if problem is not None:
            return Check("storage", FAIL, f"{directory} does not exist and {problem}", remedy)
        return Check(
            "storage",
            WARN,
            f"{directory} does not exist yet; the connector makes it when it starts (it can "
            "there: checked)",
            "Start the connector, or mount the app's volume there if this is not the volume.",
        )
    if not directory.is_dir():
        return Check("storage", FAIL, f"{directory} is not a directory", remedy)
    problem = write_probe(directory)
    if problem is not None:
        return Check("storage", FAIL, f"{directory} is unusable: {problem}", remedy)
    return Check("storage", PASS, f"{directory} is writable")
