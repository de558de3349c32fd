"""POST /files-action/{ask,summarise}: what Nextcloud's Files app calls when a user picks one of
our right-click entries. AppAPI's Files plugin (v2) posts `{"files": [node info, ...]}` through the
PHP proxy as the user; the answer `{"redirect_handler": "main/<kind>"}` makes the browser open
/apps/app_api/embedded/bee_flow/main/<kind>?fileIds=<ids>, our top-menu page, whose embed script
hands the ids to the UI (docs/administration.md, "Files actions")."""

from __future__ import annotations

import json
import logging
from typing import Any, Final

from aiohttp import web

from beeflow.errors import BadRequest, NotFound
from beeflow.nextcloud.files_actions import KINDS
from beeflow.nextcloud.ui import MENU_NAME
from beeflow.web.auth import IDENTITY, Access, add_route
from beeflow.web.bodies import read_capped
from beeflow.web.responses import json_response

log = logging.getLogger(__name__)

MAX_BODY: Final = 256 * 1024  # node infos are small; a selection of 100 is well under this
MAX_FILES: Final = 100
MAX_FILE_ID: Final = 2**63 - 1  # Nextcloud's file ids are BIGINT


def file_ids(body: Any) -> list[int]:
    """The selected files' ids, in order, without repeats. Raises BadRequest naming what is
    wrong; a node without a usable id is refused rather than silently dropped."""
    files = body.get("files") if isinstance(body, dict) else None
    if not isinstance(files, list) or not files:
        raise BadRequest('Expected {"files": [...]} with at least one file', code="no_files")
    if len(files) > MAX_FILES:
        raise BadRequest(f"At most {MAX_FILES} files at once", code="too_many_files")
    ids: list[int] = []
    for node in files:
        raw = node.get("fileId") if isinstance(node, dict) else None
        if isinstance(raw, str) and raw.isascii() and raw.isdigit() and len(raw) < 20:
            raw = int(raw)
        if isinstance(raw, bool) or not isinstance(raw, int) or not 0 < raw <= MAX_FILE_ID:
            raise BadRequest("Every file needs a positive numeric fileId", code="bad_file_id")
        if raw not in ids:
            ids.append(raw)
    return ids


async def files_action(request: web.Request) -> web.Response:
    kind = request.match_info["kind"]
    if kind not in KINDS:
        raise NotFound("No such Files action", code="files_action_unknown")
    raw = await read_capped(request, MAX_BODY)
    if raw is None:
        raise BadRequest("Request body too large", code="payload_too_large", status=413)
    try:
        body = json.loads(raw or b"null")
    except (ValueError, RecursionError):
        raise BadRequest("The body is not valid JSON", code="invalid_json") from None
    ids = file_ids(body)
    log.info("Files action %s by %s on %d file(s)", kind, request[IDENTITY].user_id, len(ids))
    return json_response({"redirect_handler": f"{MENU_NAME}/{kind}", "fileIds": ids})


def install(app: web.Application) -> None:
    """USER: Nextcloud's proxy forwards the browser's call as the logged-in user."""
    kinds = "|".join(sorted(KINDS))
    add_route(app, "POST", "/files-action/{kind:" + kinds + "}", files_action, Access.USER)
