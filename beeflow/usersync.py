"""Periodic user/group reconciliation with Nextcloud (placeholder until its issue lands)."""

from __future__ import annotations

from aiohttp import web


def setup(app: web.Application) -> None:
    """Registers nothing yet."""
