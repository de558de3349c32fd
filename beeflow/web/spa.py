"""Where the bundled UI lives, found once for the whole app: BEEFLOW_SPA_DIR, `spa/` beside the
package (a checkout or an editable install), or the installed wheel's data files; and which of
its builds fits the way a request was routed."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from aiohttp import web

log = logging.getLogger(__name__)

# One build of the full UI per URL prefix (Vite bakes the prefix in): the PHP proxy's and HaRP's.
PROXY_BUILD: Final = "proxy"
EXAPPS_BUILD: Final = "exapps"

# The directory found at start-up (None: no UI installed).
SPA_DIR: web.AppKey[Path | None] = web.AppKey("spa_dir")


def candidates(configured: Path | None) -> list[Path]:
    """Where the UI may live, first match wins: BEEFLOW_SPA_DIR; `spa/` beside the package (a
    source checkout or editable install); the wheel's data files (`<prefix>/share/beeflow/spa`)."""
    if configured is not None:
        return [configured]
    package = Path(__file__).resolve().parent.parent
    return [package.parent / "spa", Path(sys.prefix) / "share" / "beeflow" / "spa"]


def find_spa_dir(configured: Path | None, options: Sequence[Path] | None = None) -> Path | None:
    for path in options if options is not None else candidates(configured):
        if (path / "index.html").is_file() or builds(path) is not None:
            return path
    if configured is not None:
        log.warning("BEEFLOW_SPA_DIR %s has no index.html: the web UI will answer 404", configured)
    else:
        log.warning("no web UI found (looked in %s)", ", ".join(map(str, candidates(None))))
    return None


def builds(root: Path) -> dict[str, Path] | None:
    """The per-prefix layout of a full UI (`<root>/proxy/` and `<root>/exapps/`, each with its
    own index.html), or None for one build at `<root>` that works under any prefix."""
    found = {name: root / name for name in (PROXY_BUILD, EXAPPS_BUILD)}
    if all((path / "index.html").is_file() for path in found.values()):
        return found
    return None


def build_for(streaming: bool) -> str:
    """The build whose baked prefix matches how the request came in (beeflow.web.routing):
    through HaRP's /exapps/ route, or through Nextcloud's PHP proxy."""
    return EXAPPS_BUILD if streaming else PROXY_BUILD


def index_for(directory: Path | None, streaming: bool) -> Path | None:
    """The bundled UI's index.html for a request routed as `streaming` says (the build
    matching its routing when the UI was built once per prefix), or None without a UI."""
    if directory is None:
        return None
    per_prefix = builds(directory)
    if per_prefix is not None:
        directory = per_prefix[build_for(streaming)]
    return directory / "index.html"


def locate(app: web.Application, configured: Path | None) -> Path | None:
    """Find the UI once (logged when there is none) and keep it under SPA_DIR."""
    if SPA_DIR not in app:
        app[SPA_DIR] = find_spa_dir(configured)
    return app[SPA_DIR]
