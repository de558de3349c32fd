"""Pure path rules shared by both proxies: a forwarded path may not step out of where it points,
in its raw form nor in any form a later hop may decode it into (no I/O, no aiohttp).

    segment_escape(level) -> str | None
        Why one form of a path (bytes, one decoding layer) could climb out of its directory:
        a `.` or `..` segment, or one carrying path parameters (`..;x`, `.;x`, which Java-style
        servers read as `..` and `.`), with `\\` read as `/` as browsers and Node do for http
        URLs; None when it cannot.
    forwarded_path_problem(raw_path) -> (code, message) | None
        The rules of the service proxy: every decoding layer (up to MAX_DECODE_DEPTH) free of
        escaping segments and of control bytes; a path still changing after that is refused.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import unquote_to_bytes

# %252e%252e needs two decodes, %25252e three; anything still changing after that is refused.
MAX_DECODE_DEPTH: Final = 3
_DOTS: Final = (b".", b"..")


def segment_escape(level: bytes) -> str | None:
    """Why this form of a path could leave its directory, or None (see the module docstring)."""
    if b"." not in level:
        return None
    for segment in level.replace(b"\\", b"/").split(b"/"):
        if not segment.startswith(b"."):
            continue
        if segment in _DOTS:
            return "dot segment"
        if segment.partition(b";")[0] in _DOTS:
            return "dot segment with parameters"
    return None


def forwarded_path_problem(raw_path: str) -> tuple[str, str] | None:
    """(code, message) when the raw path (as received, percent-encoded) breaks the rules, else
    None. Cheap for the common path: no '.', '%' or '\\' means nothing to decode or climb."""
    if "." not in raw_path and "%" not in raw_path and "\\" not in raw_path:
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in raw_path):
            return "bad_path", "Control characters are not allowed in the path"
        return None
    level = raw_path.encode("utf-8", "surrogateescape")
    for depth in range(MAX_DECODE_DEPTH + 1):
        why = segment_escape(level)
        if why is not None:
            return "bad_path", f"The path is refused ({why}, in some layer of its encoding)"
        if any(b < 0x20 or b == 0x7F for b in level):
            return "bad_path", "Control characters are not allowed in the path"
        decoded = unquote_to_bytes(level)
        if decoded == level:
            return None
        if depth == MAX_DECODE_DEPTH:
            break
        level = decoded
    return "bad_path", "The path has too many layers of percent-encoding"
