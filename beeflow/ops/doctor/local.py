"""The checks that need no network: the configuration and the persistent storage."""

from __future__ import annotations

import os
import tempfile

from beeflow.ops.doctor.result import FAIL, PASS, WARN, Check, Context


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
    directory = ctx.config.persistent_storage
    remedy = (
        "APP_PERSISTENT_STORAGE must be a writable directory (AppAPI mounts the volume "
        f"nc_app_{ctx.config.app_id}_data there); the tenant key is cached in it."
    )
    if not directory.exists():
        parent = directory.parent
        if parent.is_dir() and os.access(parent, os.W_OK):
            return Check(
                "storage",
                WARN,
                f"{directory} does not exist yet (the connector creates it)",
                remedy,
            )
        return Check("storage", FAIL, f"{directory} does not exist", remedy)
    if not directory.is_dir():
        return Check("storage", FAIL, f"{directory} is not a directory", remedy)
    try:
        fd, name = tempfile.mkstemp(prefix=".doctor-", dir=directory)
        try:
            os.write(fd, b"beeflow doctor")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(name)
    except OSError as exc:
        return Check(
            "storage",
            FAIL,
            f"cannot write in {directory}: {exc.strerror or type(exc).__name__}",
            remedy,
        )
    return Check("storage", PASS, f"{directory} is writable")
