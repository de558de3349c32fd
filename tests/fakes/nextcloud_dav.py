"""WebDAV and app endpoints for the fake Nextcloud, mounted through its extension hook.

    dav = FakeDav(root=tmp_dir)
    nc = FakeNextcloud(secret=SECRET, extra_routes=dav.routes())
    dav.bind(nc)          # DAV checks AppAPI logins with nc.check_appapi's verdict

Files live on disk under `root/<uid>/` and are addressed as `/remote.php/dav/files/<uid>/...`.
Authentication is Nextcloud's: the fake's middleware has already run `validateExAppRequestToNC`
(refusals answered there); a request without AppAPI headers gets Sabre's 401, a request for
another user's files 404. Implemented: PROPFIND (Depth 0/1, 207 multistatus), GET/HEAD (ETag,
If-None-Match, single Range), PUT (streamed to disk while hashing, If-Match/If-None-Match,
409 without a parent), MKCOL, MOVE/COPY (Destination and Overwrite), DELETE, REPORT (a
multistatus of the files under the path). Stricter than Sabre on purpose: a Destination must be
an absolute URL on this fake's own origin, so tests prove the connector rewrote it.

App endpoints (any method) echo what arrived, as JSON: `/ocs/v1.php|v2.php/apps/echo/...`
(OCS envelope; refuses with 412 without `OCS-APIRequest: true`, like Nextcloud's CSRF check) and
`/index.php/apps/echo/...`. Special ones: `.../echo/big?bytes=N` streams N bytes of a fixed
pattern; `.../echo/hold` sends a first chunk, then waits for `dav.release` before the rest;
`.../echo/stall` waits for `dav.release` before any header (both set `dav.entered`).

Every request that reaches these handlers is recorded in `dav.seen` (headers, raw path, body
size and sha256), besides the fake's own `calls` list.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import xml.etree.ElementTree as ET
from email.utils import formatdate
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import attrs
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from tests.fakes.nextcloud import APPAPI, BODY, FakeNextcloud

DAV_PREFIX = "/remote.php/dav/files/"
CHUNK = 256 * 1024
PATTERN = bytes(range(256)) * 1024  # 256 KiB of a known pattern for /echo/big


@attrs.frozen
class DavRequest:
    """One request as the DAV/app endpoints saw it."""

    method: str
    raw_path: str
    headers: CIMultiDictProxy[str]
    user: str | None
    size: int
    sha256: str


def pattern_bytes(n: int) -> bytes:
    """The first n bytes /echo/big sends (for expectations in tests)."""
    out = bytearray()
    while len(out) < n:
        out += PATTERN[: n - len(out)]
    return bytes(out)


class FakeDav:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.seen: list[DavRequest] = []
        self.nc: FakeNextcloud | None = None
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    def bind(self, nc: FakeNextcloud) -> None:
        self.nc = nc

    def routes(self) -> list[web.RouteDef]:
        return [
            web.route("*", "/remote.php/dav/{tail:.*}", self._dav),
            web.route("*", "/ocs/v1.php/apps/echo/{tail:.*}", self._ocs_echo),
            web.route("*", "/ocs/v2.php/apps/echo/{tail:.*}", self._ocs_echo),
            web.get("/index.php/apps/echo/big", self._big),
            web.get("/index.php/apps/echo/hold", self._hold),
            web.get("/index.php/apps/echo/stall", self._stall),
            web.route("*", "/index.php/apps/echo/{tail:.*}", self._echo),
        ]

    # ------------------------------------------------------------ test helpers

    def file(self, uid: str, rel: str) -> Path:
        return self.root / uid / rel.lstrip("/")

    def put_file(self, uid: str, rel: str, data: bytes) -> Path:
        path = self.file(uid, rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    @staticmethod
    def etag(path: Path) -> str:
        st = path.stat()
        stamp = f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}".encode()
        return '"' + hashlib.sha256(stamp).hexdigest()[:32] + '"'

    def last(self, method: str | None = None) -> DavRequest:
        for req in reversed(self.seen):
            if method is None or req.method == method:
                return req
        raise AssertionError(f"no {method or ''} request reached the fake DAV")

    # ------------------------------------------------------------ plumbing

    def _record(self, request: web.Request, size: int, sha256: str) -> None:
        verdict, user = request[APPAPI]
        self.seen.append(
            DavRequest(
                method=request.method,
                raw_path=request.raw_path,
                headers=CIMultiDictProxy(CIMultiDict(request.headers)),
                user=user if verdict == "ok" else None,
                size=size,
                sha256=sha256,
            )
        )

    def _record_buffered(self, request: web.Request) -> bytes:
        body: bytes = request.get(BODY, b"")
        self._record(request, len(body), hashlib.sha256(body).hexdigest())
        return body

    @staticmethod
    def _sabre_error(status: int, exception: str, message: str = "") -> web.Response:
        xml = (
            '<?xml version="1.0" encoding="utf-8"?>\n'
            '<d:error xmlns:d="DAV:" xmlns:s="http://sabredav.org/ns">'
            f"<s:exception>Sabre\\DAV\\Exception\\{exception}</s:exception>"
            f"<s:message>{message}</s:message></d:error>"
        )
        headers = {"WWW-Authenticate": 'Basic realm="Nextcloud", charset="UTF-8"'}
        return web.Response(
            status=status,
            text=xml,
            content_type="application/xml",
            charset="utf-8",
            headers=headers if status == 401 else None,
        )

    def _resolve(self, request: web.Request, raw_path: str) -> tuple[str, Path] | web.Response:
        """`/remote.php/dav/files/<uid>/<rel>` -> (uid, disk path); Sabre's answers otherwise."""
        path = raw_path.split("?", 1)[0]
        if not path.startswith(DAV_PREFIX):
            return self._sabre_error(404, "NotFound", "Principal or collection not found")
        parts = [unquote(p) for p in path[len(DAV_PREFIX) :].split("/")]
        if any(p in (".", "..") or "\x00" in p or "\\" in p for p in parts):
            return self._sabre_error(400, "BadRequest", "Invalid path")
        uid, rel = parts[0], [p for p in parts[1:] if p]
        verdict, user = request[APPAPI]
        if verdict != "ok" or not user:
            return self._sabre_error(401, "NotAuthenticated", "No public access to this resource")
        if uid != user:
            return self._sabre_error(404, "NotFound", "File not found")
        return uid, self.root.joinpath(uid, *rel)

    def _href(self, uid: str, disk: Path) -> str:
        rel = disk.relative_to(self.root / uid).as_posix()
        href = DAV_PREFIX + quote(uid) + "/" + ("" if rel == "." else quote(rel))
        return href + ("/" if disk.is_dir() and not href.endswith("/") else "")

    # ------------------------------------------------------------ WebDAV

    async def _dav(self, request: web.Request) -> web.StreamResponse:
        handler = {
            "PROPFIND": self._propfind,
            "GET": self._get,
            "HEAD": self._get,
            "PUT": self._put,
            "MKCOL": self._mkcol,
            "MOVE": self._move_copy,
            "COPY": self._move_copy,
            "DELETE": self._delete,
            "REPORT": self._report,
        }.get(request.method)
        if request.method != "PUT":
            self._record_buffered(request)
        if handler is None:
            return self._sabre_error(405, "MethodNotAllowed", f"{request.method} not allowed")
        return await handler(request)

    def _propstat(self, uid: str, disk: Path) -> ET.Element:
        resp = ET.Element("d:response")
        ET.SubElement(resp, "d:href").text = self._href(uid, disk)
        propstat = ET.SubElement(resp, "d:propstat")
        prop = ET.SubElement(propstat, "d:prop")
        st = disk.stat()
        ET.SubElement(prop, "d:getlastmodified").text = formatdate(st.st_mtime, usegmt=True)
        ET.SubElement(prop, "d:getetag").text = self.etag(disk)
        rtype = ET.SubElement(prop, "d:resourcetype")
        if disk.is_dir():
            ET.SubElement(rtype, "d:collection")
        else:
            ET.SubElement(prop, "d:getcontentlength").text = str(st.st_size)
            ET.SubElement(prop, "d:getcontenttype").text = "application/octet-stream"
        ET.SubElement(prop, "oc:fileid").text = str(st.st_ino)
        ET.SubElement(propstat, "d:status").text = "HTTP/1.1 200 OK"
        return resp

    def _multistatus(self, responses: list[ET.Element]) -> web.Response:
        root = ET.Element(
            "d:multistatus",
            {
                "xmlns:d": "DAV:",
                "xmlns:s": "http://sabredav.org/ns",
                "xmlns:oc": "http://owncloud.org/ns",
                "xmlns:nc": "http://nextcloud.org/ns",
            },
        )
        root.extend(responses)
        body = b'<?xml version="1.0"?>\n' + ET.tostring(root)
        return web.Response(status=207, body=body, content_type="application/xml", charset="utf-8")

    async def _propfind(self, request: web.Request) -> web.StreamResponse:
        resolved = self._resolve(request, request.raw_path)
        if isinstance(resolved, web.Response):
            return resolved
        uid, disk = resolved
        if not disk.exists():
            return self._sabre_error(404, "NotFound", "File not found")
        depth = request.headers.get("Depth", "1")
        if depth not in ("0", "1"):
            return self._sabre_error(403, "Forbidden", "Depth infinity is not allowed")
        entries = [self._propstat(uid, disk)]
        if depth == "1" and disk.is_dir():
            entries += [self._propstat(uid, child) for child in sorted(disk.iterdir())]
        return self._multistatus(entries)

    async def _report(self, request: web.Request) -> web.StreamResponse:
        resolved = self._resolve(request, request.raw_path)
        if isinstance(resolved, web.Response):
            return resolved
        uid, disk = resolved
        body: bytes = request.get(BODY, b"")
        try:
            ET.fromstring(body)  # noqa: S314 - test fake, local input
        except ET.ParseError:
            return self._sabre_error(400, "BadRequest", "REPORT needs an XML body")
        if not disk.is_dir():
            return self._sabre_error(404, "NotFound", "Collection not found")
        files = sorted(p for p in disk.rglob("*") if p.is_file())
        return self._multistatus([self._propstat(uid, f) for f in files])

    async def _get(self, request: web.Request) -> web.StreamResponse:
        resolved = self._resolve(request, request.raw_path)
        if isinstance(resolved, web.Response):
            return resolved
        _uid, disk = resolved
        if not disk.is_file():
            if disk.is_dir():
                return self._sabre_error(501, "NotImplemented", "GET on a collection")
            return self._sabre_error(404, "NotFound", "File not found")
        etag = self.etag(disk)
        size = disk.stat().st_size
        headers = {
            "ETag": etag,
            "OC-ETag": etag,
            "Accept-Ranges": "bytes",
            "Last-Modified": formatdate(disk.stat().st_mtime, usegmt=True),
            "Content-Type": "application/octet-stream",
        }
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers=headers)
        start, end, status = 0, size - 1, 200
        rng = request.headers.get("Range")
        if rng:
            parsed = _parse_range(rng, size)
            if parsed is None:
                return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})
            start, end = parsed
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = end - start + 1 if size else 0
        await resp.prepare(request)
        if request.method == "HEAD":
            return resp
        with disk.open("rb") as fh:
            fh.seek(start)
            left = end - start + 1 if size else 0
            while left > 0:
                chunk = fh.read(min(CHUNK, left))
                if not chunk:
                    break
                left -= len(chunk)
                await resp.write(chunk)
        await resp.write_eof()
        return resp

    async def _put(self, request: web.Request) -> web.StreamResponse:
        resolved = self._resolve(request, request.raw_path)
        digest = hashlib.sha256()
        size = 0
        if isinstance(resolved, web.Response):
            self._record(request, 0, digest.hexdigest())
            return resolved
        _uid, disk = resolved
        if not disk.parent.is_dir():
            self._record(request, 0, digest.hexdigest())
            return self._sabre_error(409, "Conflict", "Parent collection does not exist")
        existed = disk.exists()
        if_match = request.headers.get("If-Match")
        if if_match is not None and (not existed or if_match not in ("*", self.etag(disk))):
            self._record(request, 0, digest.hexdigest())
            return self._sabre_error(412, "PreconditionFailed", "If-Match did not match")
        if request.headers.get("If-None-Match") == "*" and existed:
            self._record(request, 0, digest.hexdigest())
            return self._sabre_error(412, "PreconditionFailed", "The file exists")
        part = disk.with_name(f".{disk.name}.part{os.getpid()}")
        try:
            with part.open("wb") as fh:
                while chunk := await request.content.readany():
                    digest.update(chunk)
                    size += len(chunk)
                    fh.write(chunk)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        self._record(request, size, digest.hexdigest())
        declared = request.content_length
        if declared is not None and declared != size:
            part.unlink(missing_ok=True)
            return self._sabre_error(400, "BadRequest", "Content-Length does not match")
        part.replace(disk)
        etag = self.etag(disk)
        headers = {"ETag": etag, "OC-ETag": etag, "OC-FileId": f"{disk.stat().st_ino:08d}oc"}
        return web.Response(status=204 if existed else 201, headers=headers)

    async def _mkcol(self, request: web.Request) -> web.StreamResponse:
        resolved = self._resolve(request, request.raw_path)
        if isinstance(resolved, web.Response):
            return resolved
        _uid, disk = resolved
        if request.get(BODY, b""):
            return self._sabre_error(415, "UnsupportedMediaType", "MKCOL with a body")
        if disk.exists():
            return self._sabre_error(405, "MethodNotAllowed", "The resource exists")
        if not disk.parent.is_dir():
            return self._sabre_error(409, "Conflict", "Parent collection does not exist")
        disk.mkdir()
        return web.Response(status=201)

    async def _delete(self, request: web.Request) -> web.StreamResponse:
        resolved = self._resolve(request, request.raw_path)
        if isinstance(resolved, web.Response):
            return resolved
        _uid, disk = resolved
        if not disk.exists():
            return self._sabre_error(404, "NotFound", "File not found")
        if disk.is_dir():
            shutil.rmtree(disk)
        else:
            disk.unlink()
        return web.Response(status=204)

    async def _move_copy(self, request: web.Request) -> web.StreamResponse:
        resolved = self._resolve(request, request.raw_path)
        if isinstance(resolved, web.Response):
            return resolved
        _uid, source = resolved
        destination = request.headers.get("Destination")
        if not destination:
            return self._sabre_error(400, "BadRequest", "The Destination header was not found")
        assert self.nc is not None, "FakeDav.bind(nc) was not called"
        dest_url = URL(destination, encoded=True)
        if not dest_url.is_absolute() or dest_url.origin() != self.nc.url.origin():
            return self._sabre_error(502, "BadGateway", "Destination is on another server")
        target = self._resolve(request, dest_url.raw_path)
        if isinstance(target, web.Response):
            return target
        _duid, dest = target
        if not source.exists():
            return self._sabre_error(404, "NotFound", "Source not found")
        if not dest.parent.is_dir():
            return self._sabre_error(409, "Conflict", "Destination parent does not exist")
        existed = dest.exists()
        if existed and request.headers.get("Overwrite", "T").upper() == "F":
            return self._sabre_error(412, "PreconditionFailed", "Destination exists")
        if existed and dest.is_dir():
            shutil.rmtree(dest)
        elif existed:
            dest.unlink()
        if request.method == "MOVE":
            source.replace(dest)
        elif source.is_dir():
            shutil.copytree(source, dest)
        else:
            shutil.copyfile(source, dest)
        return web.Response(status=204 if existed else 201)

    # ------------------------------------------------------------ app endpoints

    def _echo_data(self, request: web.Request, body: bytes) -> dict[str, Any]:
        _verdict, user = request[APPAPI]
        return {
            "method": request.method,
            "rawPath": request.raw_path,
            "path": request.path,
            "query": request.query_string,
            "user": user,
            "bodySize": len(body),
            "bodySha256": hashlib.sha256(body).hexdigest(),
            "contentType": request.headers.get("Content-Type"),
        }

    async def _ocs_echo(self, request: web.Request) -> web.StreamResponse:
        body = self._record_buffered(request)
        assert self.nc is not None, "FakeDav.bind(nc) was not called"
        verdict, _user = request[APPAPI]
        if verdict != "ok":
            return self.nc._ocs(request, None, 997, "Current user is not logged in")
        if request.headers.get("OCS-APIRequest", "").lower() != "true":
            return web.json_response({"message": "CSRF check failed"}, status=412)
        return self.nc._ocs(request, self._echo_data(request, body))

    async def _echo(self, request: web.Request) -> web.StreamResponse:
        body = self._record_buffered(request)
        verdict, _user = request[APPAPI]
        if verdict != "ok":
            return web.json_response({"message": "Current user is not logged in"}, status=401)
        return web.json_response(
            self._echo_data(request, body), headers={"Set-Cookie": "nc_session_id=abc; Path=/"}
        )

    async def _hold(self, request: web.Request) -> web.StreamResponse:
        self._record_buffered(request)
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(request)
        await resp.write(HOLD_FIRST)
        self.entered.set()
        await self.release.wait()
        await resp.write(HOLD_REST)
        await resp.write_eof()
        return resp

    async def _stall(self, request: web.Request) -> web.StreamResponse:
        self._record_buffered(request)
        self.entered.set()
        await self.release.wait()
        return web.json_response({"late": True})

    async def _big(self, request: web.Request) -> web.StreamResponse:
        self._record_buffered(request)
        verdict, _user = request[APPAPI]
        if verdict != "ok":
            return web.json_response({"message": "Current user is not logged in"}, status=401)
        total = int(request.query.get("bytes", "0"))
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        if request.query.get("chunked") != "1":
            resp.content_length = total
        await resp.prepare(request)
        sent = 0
        while sent < total:
            chunk = PATTERN[: min(len(PATTERN), total - sent)]
            await resp.write(chunk)
            sent += len(chunk)
        await resp.write_eof()
        return resp


HOLD_FIRST = b"first chunk\n"
HOLD_REST = b"the rest, after the release\n"


def _parse_range(value: str, size: int) -> tuple[int, int] | None:
    """One `bytes=a-b`, `bytes=a-` or `bytes=-n` range (what Sabre serves); None: unsatisfiable."""
    unit, _, spec = value.partition("=")
    if unit.strip() != "bytes" or "," in spec:
        return None
    first, _, last = spec.strip().partition("-")
    try:
        if not first:
            n = int(last)
            return (max(0, size - n), size - 1) if n > 0 and size else None
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start >= size or end < start:
        return None
    return start, min(end, size - 1)
