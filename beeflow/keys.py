"""Transitional: the app keys `beeflow.proxy.nc` still reaches as `keys.NAME`. Every key is
declared beside the type it holds; this module only names them again until proxy/nc imports
them from there (import-linter lets nothing else import it)."""

from __future__ import annotations

from beeflow.config import CONFIG
from beeflow.health import HEALTH
from beeflow.nextcloud.client import NEXTCLOUD
from beeflow.tenant.state import TENANT
from beeflow.web.auth import IDENTITY

__all__ = ["CONFIG", "HEALTH", "IDENTITY", "NEXTCLOUD", "TENANT"]
