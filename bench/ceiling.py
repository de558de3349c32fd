"""The store-and-forward ceiling for a signed /nc upload: the least any program must do with it.

The v2 signature covers sha256 of the whole body, so nothing may reach Nextcloud before the
last byte arrived and was hashed. This program does exactly that and no more: it receives the
body into one reused 1 MiB buffer, hashes it and writes it to an unlinked temp file as it
arrives, checks X-Beeflow-Sig (v2, the same message as beeflow.signing), then sends the head and
the file to the upstream with sendfile(2) (zero-copy from the page cache) and relays the answer.
Plain blocking sockets, a thread per connection: no event loop, no framework. Only requests
with a Content-Length (or none) and answers with a Content-Length are handled.

    python -m bench.ceiling --upstream-port P --spool DIR [--unix PATH] [--send sendfile|copy]

The tenant key comes from BENCH_TENANT_KEY. Prints `READY <port or path>`; SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
import signal
import socket
import socketserver
import sys
import tempfile
from pathlib import Path
from typing import IO, Final

from bench.http1 import HEAD_END, MAX_HEAD, ProtocolError, parse_headers
from bench.upstream import die_with_parent

BUFFER: Final = 1 << 20
PREFIX: Final = "/nc"


class Settings:
    upstream_port = 0
    spool = Path(tempfile.gettempdir())
    key = b""
    sendfile = True


def _read_head(sock: socket.socket, pending: bytearray) -> tuple[bytes, bytes] | None:
    """(head, bytes after it) or None at a clean end of the connection."""
    while True:
        end = pending.find(HEAD_END)
        if end >= 0:
            head, rest = bytes(pending[:end]), bytes(pending[end + 4 :])
            pending.clear()
            return head, rest
        if len(pending) > MAX_HEAD:
            raise ProtocolError("head too long")
        data = sock.recv(65536)
        if not data:
            if pending:
                raise ProtocolError("connection closed inside a head")
            return None
        pending += data


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view) :]


def receive_body(
    sock: socket.socket, first: bytes, length: int, file: IO[bytes]
) -> tuple[str, bytes]:
    """Spool `length` body bytes (`first` already arrived) while hashing them: (sha256 hex,
    bytes that followed the body)."""
    digest = hashlib.sha256()
    fd = file.fileno()
    head_part = memoryview(first)[:length]
    digest.update(head_part)
    _write_all(fd, head_part)
    left = length - len(head_part)
    buffer = bytearray(BUFFER)
    view = memoryview(buffer)
    while left > 0:
        got = sock.recv_into(view, min(left, BUFFER))
        if got == 0:
            raise ProtocolError("connection closed inside the body")
        part = view[:got]
        digest.update(part)
        _write_all(fd, part)
        left -= got
    return digest.hexdigest(), first[length:]


def signature_ok(
    key: bytes, method: str, target: str, headers: dict[bytes, bytes], body_hash: str
) -> bool:
    from beeflow.signing import nc_message_v2

    ts_text, _, mac = headers.get(b"x-beeflow-sig", b"").decode("latin-1").partition(".")
    if not ts_text.isdigit():
        return False
    uid = headers.get(b"x-beeflow-nc-uid", b"").decode("latin-1")
    message = nc_message_v2(int(ts_text), method, target, uid, body_hash).encode()
    want = hmac.new(key, message, hashlib.sha256).hexdigest()
    return hmac.compare_digest(want, mac)


def forward(
    client: socket.socket, method: str, path: str, headers: dict[bytes, bytes], file: IO[bytes]
) -> None:
    """Send the spooled request upstream and relay the answer (Content-Length framed)."""
    length = file.tell()
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{Settings.upstream_port}"]
    if b"content-type" in headers:
        lines.append(f"Content-Type: {headers[b'content-type'].decode('latin-1')}")
    lines.append(f"Content-Length: {length}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    with socket.create_connection(("127.0.0.1", Settings.upstream_port)) as up:
        up.sendall(head)
        file.seek(0)
        if Settings.sendfile:
            if length:  # socket.sendfile refuses a count of 0
                up.sendfile(file, 0, length)
        else:
            while chunk := file.read(BUFFER):
                up.sendall(chunk)
        pending = bytearray()
        answer = _read_head(up, pending)
        if answer is None:
            raise ProtocolError("upstream closed without an answer")
        answer_head, rest = answer
        left = int(parse_headers(answer_head.partition(b"\r\n")[2]).get(b"content-length", b"0"))
        client.sendall(answer_head + HEAD_END + rest[:left])
        left -= len(rest[:left])
        while left > 0:
            data = up.recv(min(left, BUFFER))
            if not data:
                raise ProtocolError("upstream closed inside its answer")
            client.sendall(data)
            left -= len(data)


def _refuse(client: socket.socket, status: int, reason: str, code: str) -> None:
    body = b'{"code":"%s"}' % code.encode()
    client.sendall(
        b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (status, reason.encode(), len(body), body)
    )


class Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        client: socket.socket = self.request
        pending = bytearray()
        try:
            while (got := _read_head(client, pending)) is not None:
                head, rest = got
                start, _, block = head.partition(b"\r\n")
                method, target, _version = start.decode("latin-1").split(" ", 2)
                headers = parse_headers(block)
                length = int(headers.get(b"content-length", b"0") or b"0")
                with tempfile.TemporaryFile(dir=Settings.spool, prefix="body-") as file:
                    body_hash, after = receive_body(client, rest, length, file)
                    pending += after
                    if not target.startswith(PREFIX + "/"):
                        _refuse(client, 404, "Not Found", "not_found")
                    elif not signature_ok(Settings.key, method, target, headers, body_hash):
                        _refuse(client, 401, "Unauthorized", "signature_mismatch")
                    else:
                        forward(client, method, target[len(PREFIX) :], headers, file)
        except (ProtocolError, ValueError, OSError) as exc:
            print(f"ceiling: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)


class TcpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


class UnixServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    request_queue_size = 128


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ceiling", description=__doc__.split("\n")[0])
    p.add_argument("--upstream-port", type=int, required=True)
    p.add_argument("--spool", type=Path, required=True)
    p.add_argument("--unix", default=None, help="listen on this Unix socket instead of TCP")
    p.add_argument("--send", choices=("sendfile", "copy"), default="sendfile")
    args = p.parse_args()
    die_with_parent()
    Settings.upstream_port = args.upstream_port
    Settings.spool = args.spool
    Settings.key = os.environ["BENCH_TENANT_KEY"].encode()
    Settings.sendfile = args.send == "sendfile"
    server: socketserver.BaseServer
    if args.unix:
        server = UnixServer(args.unix, Handler)
        where = args.unix
    else:
        server = TcpServer(("127.0.0.1", 0), Handler)
        where = str(server.server_address[1])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"READY {where}", flush=True)
    with server:
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
