"""The doctor command (beeflow.ops.doctor.command) with its checks in small modules: local
(config, storage), nextcloud, clocks, service, tenant_key, connector (the running one), harp."""

from __future__ import annotations

from beeflow.ops.doctor.command import add_arguments, run

__all__ = ["add_arguments", "run"]
