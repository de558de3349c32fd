"""Where an administrator's browser finds the connector's pages: through HaRP at
<nextcloud>/exapps/<app id>/..., otherwise through AppAPI's PHP proxy at
<nextcloud>/index.php/apps/app_api/proxy/<app id>/... (docs/administration.md, "Setup page")."""

from __future__ import annotations

from urllib.parse import quote

from beeflow.config import Config


def page_url(config: Config, path: str) -> str:
    """The absolute URL of one of the connector's own paths (`path` without a leading slash),
    on the Nextcloud the users see (BEEFLOW_NC_PUBLIC_URL, else NEXTCLOUD_URL)."""
    base = str(config.public_nextcloud_url).rstrip("/")
    app = quote(config.app_id, safe="")
    if config.harp:
        return f"{base}/exapps/{app}/{path}"
    return f"{base}/index.php/apps/app_api/proxy/{app}/{path}"


def setup_page_url(config: Config) -> str:
    return page_url(config, "setup")
