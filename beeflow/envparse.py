"""Parsers for environment variables: each turns one raw value into a typed one or raises
Invalid with a sentence saying what was wrong; Parser collects every problem for one report."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final, TypeVar

from yarl import URL

from beeflow.errors import ConfigError

T = TypeVar("T")

EMBED_BUNDLED: Final = "bundled"
APP_ID_RE: Final = re.compile(r"^[a-z][a-z0-9_-]*[a-z0-9]$")
_SOCKET_PATH_MAX: Final = 107  # sun_path is 108 bytes including the NUL


class Invalid(ValueError):
    """A variable's value is wrong; the message says why without quoting secrets."""


class Parser:
    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env
        self._errors: dict[str, str] = {}

    def get(self, name: str, default: str, parse: Callable[[str], T], *, secret: bool = False) -> T:
        raw = self._env.get(name)
        if raw is None:
            raw = default
        return self._parse(name, raw, parse, secret=secret)

    def required(
        self,
        name: str,
        parse: Callable[[str], T],
        *,
        secret: bool = False,
        why_missing: str = "",
    ) -> T:
        raw = self._env.get(name, "")
        if not raw.strip():
            self._errors[name] = "is required" + (f" in {why_missing}" if why_missing else "")
            return None  # type: ignore[return-value]  # never used: raise_if_errors raises
        return self._parse(name, raw, parse, secret=secret)

    def _parse(self, name: str, raw: str, parse: Callable[[str], T], *, secret: bool) -> T:
        try:
            return parse(raw)
        except Invalid as exc:
            shown = "" if secret else f" (got {clip(raw)!r})"
            self._errors[name] = f"{exc}{shown}"
            return None  # type: ignore[return-value]

    def raise_if_errors(self) -> None:
        if self._errors:
            raise ConfigError(dict(sorted(self._errors.items())))


def clip(raw: str) -> str:
    return raw if len(raw) <= 80 else raw[:77] + "..."


def non_blank(raw: str) -> str:
    value = raw.strip()
    if not value:
        raise Invalid("must not be empty")
    return value


def app_id(raw: str) -> str:
    value = raw.strip()
    if not APP_ID_RE.match(value) or value == "app_api":
        raise Invalid("must be a lowercase app id like bee_flow (app_api is reserved)")
    return value


def port_number(raw: str) -> int:
    try:
        value = int(raw.strip(), 10)
    except ValueError:
        raise Invalid("must be a whole number from 1 to 65535") from None
    if not 1 <= value <= 65535:
        raise Invalid("must be a whole number from 1 to 65535")
    return value


def int_range(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip(), 10)
        except ValueError:
            raise Invalid(f"must be a whole number from {low} to {high}") from None
        if not low <= value <= high:
            raise Invalid(f"must be a whole number from {low} to {high}")
        return value

    return parse


TRUE_WORDS: Final = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS: Final = frozenset({"0", "false", "no", "off"})


def flag(raw: str) -> bool:
    value = raw.strip().lower()
    if value in TRUE_WORDS:
        return True
    if value in FALSE_WORDS:
        return False
    raise Invalid("must be 1 or 0 (or true/false, yes/no, on/off)")


def float_range(low: float, high: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise Invalid(f"must be a number from {low:g} to {high:g}") from None
        if not math.isfinite(value) or not low <= value <= high:
            raise Invalid(f"must be a number from {low:g} to {high:g}")
        return value

    return parse


def path_value(raw: str) -> Path:
    value = raw.strip()
    if not value or "\x00" in value:
        raise Invalid("must be a path")
    return Path(value)


def socket_path(raw: str) -> Path:
    path = path_value(raw)
    try:
        size = len(str(path).encode())
    except UnicodeEncodeError:
        raise Invalid("must be valid UTF-8 text") from None
    if size > _SOCKET_PATH_MAX:
        raise Invalid(f"must be at most {_SOCKET_PATH_MAX} bytes (the Unix socket limit)")
    return path


def http_url(raw: str) -> URL:
    value = raw.strip()
    try:
        url = URL(value)
    except (ValueError, TypeError):
        raise Invalid("must be an http(s) URL") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise Invalid("must be an http(s) URL with a host")
    if url.user or url.password:
        raise Invalid("must not carry credentials")
    if url.query_string or url.fragment:
        raise Invalid("must not have a query or fragment")
    return url.with_path(url.path.rstrip("/"))


def embed_url(raw: str) -> URL | None:
    if raw.strip().lower() == EMBED_BUNDLED:
        return None
    try:
        return http_url(raw)
    except Invalid:
        raise Invalid(f'must be an http(s) URL, or "{EMBED_BUNDLED}"') from None


def nextcloud_url(raw: str) -> URL:
    """Strip a trailing '/' and '/index.php' (docs/appapi-wire.md, "Outbound headers")."""
    url = http_url(raw)
    path = url.path.rstrip("/")
    if path.endswith("/index.php"):
        path = path[: -len("/index.php")]
    return url.with_path(path.rstrip("/"))


# The shortest tenant key the connector uses: BEEFLOW_TENANT_KEY, tenant-key.json and `sign` all
# hold keys to it (the service issues 43-character keys).
MIN_TENANT_KEY_LENGTH: Final = 16


def tenant_key(raw: str) -> str | None:
    value = raw.strip()
    if value in ("", "auto"):
        return None
    if len(value) < MIN_TENANT_KEY_LENGTH:
        raise Invalid(
            f"must be 'auto' or a tenant key of at least {MIN_TENANT_KEY_LENGTH} characters"
        )
    return value


PAIRING_CODE_RE: Final = re.compile(r"^[A-Z0-9]{4}-[A-Z0-9]{4}$")


def pairing_code(raw: str) -> str:
    value = raw.strip().upper()
    if not PAIRING_CODE_RE.fullmatch(value):
        raise Invalid("must be a pairing code like ABCD-EFGH (4 letters or digits, -, 4 more)")
    return value


def shared_key(raw: str) -> str:
    """HaRP's start.sh, in its order: printable ASCII (\\040-\\176, so spaces count), then a
    leading and a trailing `"`, then `'`, stripped one by one, then no `"` and no `\\` (the key
    is pasted into a TOML string). Everything else is kept byte for byte, spaces at the ends
    too: frps compares the token exactly. A key of nothing but whitespace counts as unset."""
    if not raw.strip():
        return ""
    if any(not (0x20 <= ord(c) <= 0x7E) for c in raw):
        raise Invalid("must be printable ASCII (HaRP refuses anything else)")
    value = raw.removeprefix('"').removesuffix('"').removeprefix("'").removesuffix("'")
    if '"' in value or "\\" in value:
        raise Invalid('must not contain " or \\ (HaRP refuses them)')
    return value


def host_name(raw: str) -> str:
    value = raw.strip()
    if not value or any(c in value for c in "/ \t\r\n@"):
        raise Invalid("must be a host name or address")
    return value


def frp_host(raw: str) -> str:
    """HP_FRP_ADDRESS is the HOST part of the daemon's frp address (docs/appapi-wire.md, "HaRP
    mode"); the port is HP_FRP_PORT. `appapi-harp:8782` would become serverAddr
    "appapi-harp:8782" and never connect. An IPv6 address (several colons) is fine as it is."""
    value = host_name(raw)
    if value.count(":") == 1 or value.startswith("["):
        raise Invalid("must be the host only, without a port (the port goes in HP_FRP_PORT)")
    return value


def origins(raw: str) -> tuple[str, ...]:
    out: list[str] = []
    for part in raw.split(","):
        item = part.strip()
        if not item:
            continue
        url = http_url(item)
        if url.path not in ("", "/"):
            raise Invalid("must be a comma-separated list of origins (scheme://host[:port])")
        out.append(str(url.origin()))
    return tuple(out)


def choice(choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise Invalid("must be one of " + ", ".join(choices))
        return value

    return parse


def optional(parse: Callable[[str], T]) -> Callable[[str], T | None]:
    def wrapped(raw: str) -> T | None:
        if not raw.strip():
            return None
        return parse(raw)

    return wrapped


# The app's one Config, set by make_app.
