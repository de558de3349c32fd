"""The Destination header of MOVE, COPY and chunked upload v2 (docs/nc-proxy.md, "Destination
(MOVE, COPY, chunked upload)"): where Nextcloud reads it, and its value moved onto NEXTCLOUD_URL
after the same allow-list and traversal checks as the request's own target."""

from __future__ import annotations

from typing import Final

from yarl import URL

from beeflow.config import Config
from beeflow.errors import BadRequest
from beeflow.proxy.nc.path import ALLOWED_PREFIXES, NC_PREFIX, NcTarget, PathRejected, check_target

# Chunked upload v2 (Nextcloud >= 26): Destination on every request under this prefix.
UPLOADS_PREFIX: Final = "/remote.php/dav/uploads/"
# Where the connector's own /nc/ callback URL lives in front of Nextcloud: the PHP proxy and HaRP.
_CALLBACK_PREFIXES: Final = ("/index.php/apps/app_api/proxy/{app_id}/nc/", "/exapps/{app_id}/nc/")


def _origin_key(url: URL) -> tuple[str, int | None]:
    return ((url.host or "").lower(), url.port)


def _strip_base(path: str, base: URL) -> str | None:
    prefix = base.raw_path.rstrip("/")
    if not prefix:
        return path
    if path == prefix or path.startswith(prefix + "/"):
        return path[len(prefix) :]
    return None


def _nextcloud_relative(path: str, app_id: str) -> str:
    """Map the connector's own callback forms onto Nextcloud paths: /nc/x, the PHP proxy's
    /index.php/apps/app_api/proxy/<app>/nc/x and HaRP's /exapps/<app>/nc/x all mean /x."""
    for template in _CALLBACK_PREFIXES:
        prefix = template.format(app_id=app_id)
        if path.startswith(prefix):
            return path[len(prefix) - 1 :]
    if path.startswith(NC_PREFIX + "/"):
        return path[len(NC_PREFIX) :]
    return path


def reads_destination(method: str, target: NcTarget) -> bool:
    """Where Nextcloud reads Destination: MOVE/COPY (Sabre), and every request of chunked
    upload v2 (MKCOL, chunk PUTs, the final MOVE under /remote.php/dav/uploads/: its
    ChunkingV2Plugin checks the target up front). Elsewhere the header means nothing and is
    dropped, so an irrelevant value cannot fail a GET."""
    return method in ("MOVE", "COPY") or target.upstream.startswith(UPLOADS_PREFIX)


def rewrite_destination(value: str, config: Config, request_host: str | None = None) -> str:
    """MOVE/COPY Destination onto NEXTCLOUD_URL. Accepted: an absolute URL on NEXTCLOUD_URL,
    the public Nextcloud URL or (for /nc/ paths) this request's own host; or an absolute path.
    The Nextcloud path must pass the same allow-list and traversal checks as the request."""
    text = value.strip()
    if not text or any(ord(c) < 0x21 or ord(c) > 0x7E for c in text):
        raise BadRequest("Destination must be a percent-encoded URL", code="destination_invalid")
    bases = [config.nextcloud_url, config.public_nextcloud_url]
    if text.startswith("/"):
        if text.startswith("//"):
            raise BadRequest("Destination must not be scheme-relative", code="destination_invalid")
        raw_path, query = text.partition("?")[0], text.partition("?")[2]
        candidates = [p for p in (_strip_base(raw_path, b) for b in bases) if p is not None]
        candidates.append(raw_path)
    else:
        try:
            url = URL(text, encoded=True)
        except ValueError:
            raise BadRequest("Destination is not a URL", code="destination_invalid") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise BadRequest("Destination must be an http(s) URL", code="destination_invalid")
        if url.user is not None or url.password is not None or url.raw_fragment:
            raise BadRequest(
                "Destination must not carry credentials or a fragment",
                code="destination_invalid",
            )
        raw_path, query = url.raw_path, url.raw_query_string
        same_host = [b for b in bases if _origin_key(url) == _origin_key(b)]
        candidates = [p for p in (_strip_base(raw_path, b) for b in same_host) if p is not None]
        own = bool(request_host) and _same_host(url, request_host or "")
        if own and raw_path.startswith(NC_PREFIX + "/"):
            candidates.append(raw_path)
        if not same_host and not own:
            raise BadRequest(
                "Destination must point at this Nextcloud", code="destination_foreign_host"
            )
    if query:
        raise BadRequest("Destination must not have a query", code="destination_invalid")
    for candidate in candidates:
        relative = _nextcloud_relative(candidate, config.app_id)
        if relative.startswith(ALLOWED_PREFIXES):
            try:
                check_target(NC_PREFIX + relative)
            except PathRejected as exc:
                raise BadRequest(
                    f"Destination rejected: {exc.message}", code="destination_" + exc.code
                ) from None
            return str(config.nextcloud_url) + relative
    raise BadRequest(
        "Destination must be under /remote.php/dav/, /ocs/ or /index.php/apps/",
        code="destination_not_proxied",
    )


def _same_host(url: URL, host_header: str) -> bool:
    try:
        own = URL(f"{url.scheme}://{host_header}")
    except ValueError:
        return False
    return _origin_key(url) == _origin_key(own)
