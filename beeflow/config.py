"""The one immutable Config, built once from the environment by Config.from_env(env)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, TypeVar

import attrs
from aiohttp import web
from yarl import URL

from beeflow.errors import ConfigError

T = TypeVar("T")

DEFAULT_API_BASE_URL: Final = "https://server.beeflow.nl"
DEFAULT_EMBED_BASE_URL: Final = "https://beeflow.nl"
# BEEFLOW_EMBED_BASE_URL=bundled: no front-end host, the UI bundled with the connector only.
EMBED_BUNDLED: Final = "bundled"
DEFAULT_SOCKET_PATH: Final = "/tmp/exapp.sock"  # noqa: S108 - fixed by AppAPI/HaRP
DEFAULT_CERT_DIR: Final = "/certs/frp"
APP_ID_RE: Final = re.compile(r"^[a-z][a-z0-9_-]*[a-z0-9]$")
_SOCKET_PATH_MAX: Final = 107  # sun_path is 108 bytes including the NUL
LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")
# auto: uvloop when it is installed (the image installs it), else asyncio (docs/benchmarks.md).
EVENT_LOOPS: Final = ("auto", "asyncio", "uvloop")
LOG_FORMATS: Final = ("text", "json")


def _repr_secret(value: object) -> str:
    return "'***'" if value else "''"


@attrs.frozen(kw_only=True)
class Config:
    """Everything the process is told at start. Discovered state (tenant key...) lives elsewhere."""

    # -- set by AppAPI
    app_id: str = "bee_flow"
    app_secret: str = attrs.field(repr=_repr_secret)
    app_version: str = "0.0.0"
    app_host: str = "0.0.0.0"
    app_port: int = 8080
    persistent_storage: Path = Path("/data")
    nextcloud_url: URL
    aa_version: str = "32.0.0"
    # -- admin configurable
    tenant_key_env: str | None = attrs.field(default=None, repr=_repr_secret)
    # One-shot `XXXX-XXXX` code binding the first bootstrap to an existing organisation.
    pairing_code: str | None = attrs.field(default=None, repr=_repr_secret)
    api_base_url: URL = URL(DEFAULT_API_BASE_URL)  # noqa: RUF009 - URL is immutable
    api_base_url_from_env: bool = False
    jwt_ttl_seconds: int = 300
    sig_skew_seconds: int = 300
    nc_public_url: URL | None = None
    trusted_embed_origins: tuple[str, ...] = ()
    # -- HaRP
    hp_shared_key: str = attrs.field(default="", repr=_repr_secret)
    hp_frp_address: str = ""
    hp_frp_port: int = 8782
    socket_path: Path = Path(DEFAULT_SOCKET_PATH)
    frpc_bin: str = "frpc"
    frp_cert_dir: Path = Path(DEFAULT_CERT_DIR)
    frpc_pin_file: Path | None = None
    # Where frpc.toml is written (it holds the shared key); None: a private temp dir.
    frpc_config_dir: Path | None = None
    frpc_backoff_initial_seconds: float = 1.0
    frpc_backoff_cap_seconds: float = 30.0
    frpc_backoff_reset_seconds: float = 60.0
    frpc_stop_grace_seconds: float = 1.0
    # -- behaviour knobs (seconds unless named otherwise)
    upstream_headers_timeout: float = 60.0
    upstream_connect_timeout: float = 10.0
    nc_headers_timeout: float = 60.0
    nc_connect_timeout: float = 10.0
    sse_keepalive_seconds: float = 15.0
    legacy_stream_idle_seconds: float = 120.0
    nc_max_body_bytes: int = 4 * 1024**3
    spool_memory_bytes: int = 1024 * 1024
    spool_dir: Path | None = None
    sync_interval_seconds: float = 900.0
    # With the HaRP stop after it (at most 1.1 s flush + frpc grace + 0.2 s + 1 s close,
    # transports.harp.shutdown_budget) the default stop stays under docker stop's 10 s.
    shutdown_grace_seconds: float = 5.0
    # A client connection must deliver a complete request head within this time after it opened
    # or after its previous response (slow clients, idle keep-alive).
    client_header_timeout_seconds: float = 60.0
    # A request head, once its first byte arrived, must be complete within this time, and may
    # hold at most this many bytes (HAProxy in front of HaRP refuses heads over 16 KiB itself,
    # and it and AppAPI's PHP proxy send whole heads at once; transports/guard.py).
    head_timeout_seconds: float = 10.0
    max_head_bytes: int = 32 * 1024
    # Connections open at once per listener; more get 503 too_many_connections.
    max_connections: int = 2048
    # /nc request bodies: cut when no byte arrives for this long (408 body_timeout).
    nc_body_idle_seconds: float = 30.0
    # /nc bodies read before their signature can be checked (v2): at most this many at once,
    # holding at most this many bytes together (503 unverified_uploads_full).
    nc_unverified_uploads: int = 8
    nc_unverified_bytes: int = 1024**3
    # /nc signature versions: v1 (no body hash) accepted; v3 required.
    nc_signature_v1: bool = True
    nc_signature_require_v3: bool = False
    auth_failure_budget: int = 4
    spa_dir: Path | None = None
    # The service's front-end host; the UI shell comes from <this>/embed (None: bundled UI only).
    embed_base_url: URL | None = URL(DEFAULT_EMBED_BASE_URL)  # noqa: RUF009 - immutable
    demo: bool = False
    # -- process (cli): --log-level/--log-format win over these
    log_level: str = "info"
    log_format: str = "text"
    event_loop: str = "auto"

    @property
    def harp(self) -> bool:
        """HaRP mode is decided once, by a non-empty HP_SHARED_KEY (docs/appapi-wire.md, "HaRP
        mode")."""
        return bool(self.hp_shared_key)

    @property
    def tenant_key_auto(self) -> bool:
        return self.tenant_key_env is None

    @property
    def public_nextcloud_url(self) -> URL:
        return self.nc_public_url or self.nextcloud_url

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Config:
        """Parse every variable, collect every problem, raise one ConfigError naming them all."""
        p = _Parser(env)
        kwargs: dict[str, Any] = {
            "app_id": p.get("APP_ID", "bee_flow", _app_id),
            "app_secret": p.required("APP_SECRET", _non_blank, secret=True),
            "app_version": p.get("APP_VERSION", "0.0.0", _non_blank),
            "app_host": p.get("APP_HOST", "0.0.0.0", _non_blank),
            "app_port": p.get("APP_PORT", "8080", _port),
            "persistent_storage": p.get("APP_PERSISTENT_STORAGE", "/data", _path),
            "nextcloud_url": p.required("NEXTCLOUD_URL", _nextcloud_url),
            "aa_version": p.get("AA_VERSION", "32.0.0", _non_blank),
            "tenant_key_env": p.get("BEEFLOW_TENANT_KEY", "auto", _tenant_key, secret=True),
            "pairing_code": p.get(
                "BEEFLOW_PAIRING_CODE", "", _optional(_pairing_code), secret=True
            ),
            "api_base_url": p.get("BEEFLOW_API_BASE_URL", DEFAULT_API_BASE_URL, _http_url),
            "api_base_url_from_env": bool(env.get("BEEFLOW_API_BASE_URL", "").strip()),
            "jwt_ttl_seconds": p.get("BEEFLOW_JWT_TTL_SECONDS", "300", _int_range(10, 86400)),
            "sig_skew_seconds": p.get("BEEFLOW_SIG_SKEW_SECONDS", "300", _int_range(1, 3600)),
            "nc_public_url": p.get("BEEFLOW_NC_PUBLIC_URL", "", _optional(_nextcloud_url)),
            "trusted_embed_origins": p.get("BEEFLOW_TRUSTED_EMBED_ORIGINS", "", _origins),
            "hp_shared_key": p.get("HP_SHARED_KEY", "", _shared_key, secret=True),
            "hp_frp_port": p.get("HP_FRP_PORT", "8782", _port),
            "socket_path": p.get("HP_EXAPP_SOCK", DEFAULT_SOCKET_PATH, _socket_path),
            "frpc_bin": p.get("BEEFLOW_FRPC_BIN", "frpc", _non_blank),
            "frp_cert_dir": p.get("BEEFLOW_FRP_CERT_DIR", DEFAULT_CERT_DIR, _path),
            "frpc_pin_file": p.get("BEEFLOW_FRPC_PIN_FILE", "", _optional(_path)),
            "frpc_config_dir": p.get("BEEFLOW_FRPC_CONFIG_DIR", "", _optional(_path)),
            "frpc_backoff_initial_seconds": p.get(
                "BEEFLOW_FRPC_BACKOFF_INITIAL_SECONDS", "1", _float_range(0.001, 1)
            ),
            "frpc_backoff_cap_seconds": p.get(
                "BEEFLOW_FRPC_BACKOFF_CAP_SECONDS", "30", _float_range(0.001, 600)
            ),
            "frpc_backoff_reset_seconds": p.get(
                "BEEFLOW_FRPC_BACKOFF_RESET_SECONDS", "60", _float_range(0.01, 3600)
            ),
            "frpc_stop_grace_seconds": p.get(
                "BEEFLOW_FRPC_STOP_GRACE_SECONDS", "1", _float_range(0.01, 60)
            ),
            "upstream_headers_timeout": p.get(
                "BEEFLOW_UPSTREAM_HEADERS_TIMEOUT_SECONDS", "60", _float_range(0.1, 3600)
            ),
            "upstream_connect_timeout": p.get(
                "BEEFLOW_UPSTREAM_CONNECT_TIMEOUT_SECONDS", "10", _float_range(0.1, 600)
            ),
            "nc_headers_timeout": p.get(
                "BEEFLOW_NC_HEADERS_TIMEOUT_SECONDS", "60", _float_range(0.1, 3600)
            ),
            "nc_connect_timeout": p.get(
                "BEEFLOW_NC_CONNECT_TIMEOUT_SECONDS", "10", _float_range(0.1, 600)
            ),
            "sse_keepalive_seconds": p.get(
                "BEEFLOW_SSE_KEEPALIVE_SECONDS", "15", _float_range(0.05, 3600)
            ),
            "legacy_stream_idle_seconds": p.get(
                "BEEFLOW_LEGACY_STREAM_IDLE_SECONDS", "120", _float_range(0.05, 86400)
            ),
            "nc_max_body_bytes": p.get(
                "BEEFLOW_NC_MAX_BODY_BYTES", str(4 * 1024**3), _int_range(0, 1 << 44)
            ),
            "spool_memory_bytes": p.get(
                "BEEFLOW_SPOOL_MEMORY_BYTES", str(1024 * 1024), _int_range(0, 64 * 1024**2)
            ),
            "spool_dir": p.get("BEEFLOW_SPOOL_DIR", "", _optional(_path)),
            "sync_interval_seconds": p.get(
                "BEEFLOW_SYNC_INTERVAL_SECONDS", "900", _float_range(1, 7 * 86400)
            ),
            "shutdown_grace_seconds": p.get(
                "BEEFLOW_SHUTDOWN_GRACE_SECONDS", "5", _float_range(0, 600)
            ),
            "client_header_timeout_seconds": p.get(
                "BEEFLOW_CLIENT_HEADER_TIMEOUT_SECONDS", "60", _float_range(1, 3600)
            ),
            "auth_failure_budget": p.get("BEEFLOW_AUTH_FAILURE_BUDGET", "4", _int_range(1, 9)),
            "head_timeout_seconds": p.get(
                "BEEFLOW_HEAD_TIMEOUT_SECONDS", "10", _float_range(0.05, 3600)
            ),
            "max_connections": p.get("BEEFLOW_MAX_CONNECTIONS", "2048", _int_range(1, 1 << 20)),
            "nc_body_idle_seconds": p.get(
                "BEEFLOW_NC_BODY_IDLE_SECONDS", "30", _float_range(0.05, 3600)
            ),
            "nc_unverified_uploads": p.get(
                "BEEFLOW_NC_UNVERIFIED_UPLOADS", "8", _int_range(1, 4096)
            ),
            "nc_unverified_bytes": p.get(
                "BEEFLOW_NC_UNVERIFIED_BYTES", str(1024**3), _int_range(0, 1 << 44)
            ),
            "nc_signature_v1": p.get("BEEFLOW_NC_SIGNATURE_V1", "1", _flag),
            "nc_signature_require_v3": p.get("BEEFLOW_NC_SIGNATURE_REQUIRE_V3", "0", _flag),
            "spa_dir": p.get("BEEFLOW_SPA_DIR", "", _optional(_path)),
            "embed_base_url": p.get("BEEFLOW_EMBED_BASE_URL", DEFAULT_EMBED_BASE_URL, _embed_url),
            "log_level": p.get("BEEFLOW_LOG_LEVEL", "info", _choice(LOG_LEVELS)),
            "log_format": p.get("BEEFLOW_LOG_FORMAT", "text", _choice(LOG_FORMATS)),
            "event_loop": p.get("BEEFLOW_EVENT_LOOP", "auto", _choice(EVENT_LOOPS)),
        }
        harp = bool(kwargs["hp_shared_key"])
        if harp:
            kwargs["hp_frp_address"] = p.required(
                "HP_FRP_ADDRESS", _frp_host, why_missing="HaRP mode"
            )
        else:
            kwargs["hp_frp_address"] = env.get("HP_FRP_ADDRESS", "").strip()
        p.raise_if_errors()
        return cls(**kwargs)


class _Invalid(ValueError):
    """A variable's value is wrong; the message says why without quoting secrets."""


class _Parser:
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
        except _Invalid as exc:
            shown = "" if secret else f" (got {_clip(raw)!r})"
            self._errors[name] = f"{exc}{shown}"
            return None  # type: ignore[return-value]

    def raise_if_errors(self) -> None:
        if self._errors:
            raise ConfigError(dict(sorted(self._errors.items())))


def _clip(raw: str) -> str:
    return raw if len(raw) <= 80 else raw[:77] + "..."


def _non_blank(raw: str) -> str:
    value = raw.strip()
    if not value:
        raise _Invalid("must not be empty")
    return value


def _app_id(raw: str) -> str:
    value = raw.strip()
    if not APP_ID_RE.match(value) or value == "app_api":
        raise _Invalid("must be a lowercase app id like bee_flow (app_api is reserved)")
    return value


def _port(raw: str) -> int:
    try:
        value = int(raw.strip(), 10)
    except ValueError:
        raise _Invalid("must be a whole number from 1 to 65535") from None
    if not 1 <= value <= 65535:
        raise _Invalid("must be a whole number from 1 to 65535")
    return value


def _int_range(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip(), 10)
        except ValueError:
            raise _Invalid(f"must be a whole number from {low} to {high}") from None
        if not low <= value <= high:
            raise _Invalid(f"must be a whole number from {low} to {high}")
        return value

    return parse


_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})


def _flag(raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise _Invalid("must be 1 or 0 (or true/false, yes/no, on/off)")


def _float_range(low: float, high: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise _Invalid(f"must be a number from {low:g} to {high:g}") from None
        if not math.isfinite(value) or not low <= value <= high:
            raise _Invalid(f"must be a number from {low:g} to {high:g}")
        return value

    return parse


def _path(raw: str) -> Path:
    value = raw.strip()
    if not value or "\x00" in value:
        raise _Invalid("must be a path")
    return Path(value)


def _socket_path(raw: str) -> Path:
    path = _path(raw)
    if len(str(path).encode()) > _SOCKET_PATH_MAX:
        raise _Invalid(f"must be at most {_SOCKET_PATH_MAX} bytes (the Unix socket limit)")
    return path


def _http_url(raw: str) -> URL:
    value = raw.strip()
    try:
        url = URL(value)
    except (ValueError, TypeError):
        raise _Invalid("must be an http(s) URL") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise _Invalid("must be an http(s) URL with a host")
    if url.user or url.password:
        raise _Invalid("must not carry credentials")
    if url.query_string or url.fragment:
        raise _Invalid("must not have a query or fragment")
    return url.with_path(url.path.rstrip("/"))


def _embed_url(raw: str) -> URL | None:
    if raw.strip().lower() == EMBED_BUNDLED:
        return None
    try:
        return _http_url(raw)
    except _Invalid:
        raise _Invalid(f'must be an http(s) URL, or "{EMBED_BUNDLED}"') from None


def _nextcloud_url(raw: str) -> URL:
    """Strip a trailing '/' and '/index.php' (docs/appapi-wire.md, "Outbound headers")."""
    url = _http_url(raw)
    path = url.path.rstrip("/")
    if path.endswith("/index.php"):
        path = path[: -len("/index.php")]
    return url.with_path(path.rstrip("/"))


def _tenant_key(raw: str) -> str | None:
    value = raw.strip()
    if value in ("", "auto"):
        return None
    if len(value) < 16:
        raise _Invalid("must be 'auto' or a tenant key of at least 16 characters")
    return value


PAIRING_CODE_RE: Final = re.compile(r"^[A-Z0-9]{4}-[A-Z0-9]{4}$")


def _pairing_code(raw: str) -> str:
    value = raw.strip().upper()
    if not PAIRING_CODE_RE.fullmatch(value):
        raise _Invalid("must be a pairing code like ABCD-EFGH (4 letters or digits, -, 4 more)")
    return value


def _shared_key(raw: str) -> str:
    """HaRP's start.sh, in its order: printable ASCII (\\040-\\176, so spaces count), then a
    leading and a trailing `"`, then `'`, stripped one by one, then no `"` and no `\\` (the key
    is pasted into a TOML string). Everything else is kept byte for byte, spaces at the ends
    too: frps compares the token exactly. A key of nothing but whitespace counts as unset."""
    if not raw.strip():
        return ""
    if any(not (0x20 <= ord(c) <= 0x7E) for c in raw):
        raise _Invalid("must be printable ASCII (HaRP refuses anything else)")
    value = raw.removeprefix('"').removesuffix('"').removeprefix("'").removesuffix("'")
    if '"' in value or "\\" in value:
        raise _Invalid('must not contain " or \\ (HaRP refuses them)')
    return value


def _host(raw: str) -> str:
    value = raw.strip()
    if not value or any(c in value for c in "/ \t\r\n@"):
        raise _Invalid("must be a host name or address")
    return value


def _frp_host(raw: str) -> str:
    """HP_FRP_ADDRESS is the HOST part of the daemon's frp address (docs/appapi-wire.md, "HaRP
    mode"); the port is HP_FRP_PORT. `appapi-harp:8782` would become serverAddr
    "appapi-harp:8782" and never connect. An IPv6 address (several colons) is fine as it is."""
    value = _host(raw)
    if value.count(":") == 1 or value.startswith("["):
        raise _Invalid("must be the host only, without a port (the port goes in HP_FRP_PORT)")
    return value


def _origins(raw: str) -> tuple[str, ...]:
    out: list[str] = []
    for part in raw.split(","):
        item = part.strip()
        if not item:
            continue
        url = _http_url(item)
        if url.path not in ("", "/"):
            raise _Invalid("must be a comma-separated list of origins (scheme://host[:port])")
        out.append(str(url.origin()))
    return tuple(out)


def _choice(choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise _Invalid("must be one of " + ", ".join(choices))
        return value

    return parse


def _optional(parse: Callable[[str], T]) -> Callable[[str], T | None]:
    def wrapped(raw: str) -> T | None:
        if not raw.strip():
            return None
        return parse(raw)

    return wrapped


# The app's one Config, set by make_app.
CONFIG: web.AppKey[Config] = web.AppKey("config")
