"""The one immutable Config, built once from the environment by Config.from_env(env)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, TypeVar

import attrs
from aiohttp import web
from yarl import URL

from beeflow import envparse as env_

T = TypeVar("T")

DEFAULT_API_BASE_URL: Final = "https://server.beeflow.nl"
DEFAULT_EMBED_BASE_URL: Final = "https://beeflow.nl"
# BEEFLOW_EMBED_BASE_URL=bundled: no front-end host, the UI bundled with the connector only.
DEFAULT_SOCKET_PATH: Final = "/tmp/exapp.sock"  # noqa: S108 - fixed by AppAPI/HaRP
DEFAULT_CERT_DIR: Final = "/certs/frp"
LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")
# auto: uvloop when it is installed (the image installs it), else asyncio (docs/benchmarks.md).
EVENT_LOOPS: Final = ("auto", "asyncio", "uvloop")
LOG_FORMATS: Final = ("text", "json")
# How a request reached the connector (docs/deployments.md, "Routing, per request"): auto decides
# per request (X-Origin-IP: Nextcloud's PHP proxy; none: HaRP); harp and php force one.
ROUTINGS: Final = ("auto", "harp", "php")


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
    # How often the Administration form's values are read back from AppAPI (Nextcloud 32 does
    # not call the ExApp when an admin saves them), and how often Studio menus are reconciled.
    settings_poll_seconds: float = 60.0
    studio_menu_sync_seconds: float = 300.0
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
    # The TCP listener's accept queue (listen() backlog, capped by net.core.somaxconn): a burst
    # of connections from Nextcloud's PHP workers past it has its SYNs dropped and retried
    # seconds later. aiohttp's default is 128.
    listen_backlog: int = 1024
    # /nc request bodies: cut when no byte arrives for this long (408 body_timeout).
    nc_body_idle_seconds: float = 30.0
    # /nc bodies read before their signature can be checked (v2): at most this many at once,
    # holding at most this many bytes together (503 unverified_uploads_full).
    nc_unverified_uploads: int = 8
    nc_unverified_bytes: int = 1024**3
    # /nc signature versions: v1 (no body hash) accepted; v3 required.
    nc_signature_v1: bool = True
    nc_signature_require_v3: bool = False
    # Request bodies the service proxy reads whole (chunked JSON): bytes held at once by all
    # requests, and by one user's (a single body over the latter is 413).
    api_buffer_bytes: int = 128 * 1024**2
    api_buffer_user_bytes: int = 64 * 1024**2
    auth_failure_budget: int = 4
    # Task Processing (docs/assistant.md): a task's watchdog is its expected runtime x 6,
    # clamped to [min, max]; the poll backstop starts at poll_seconds and backs off to
    # poll_max_seconds; each provider runs at most task_concurrency tasks at once.
    task_watchdog_min_seconds: float = 60.0
    task_watchdog_max_seconds: float = 300.0
    task_poll_seconds: float = 5.0
    task_poll_max_seconds: float = 300.0
    task_concurrency: int = 4
    # -- replicas (docs/deployments.md)
    routing: str = "auto"
    # On SIGTERM: keep answering everything for this long while /ready says 503, so the load
    # balancer stops sending before the drain starts refusing new requests.
    prestop_seconds: float = 0.0
    # The lease of singleton work (bootstrap, registrations, user sync) on the shared storage:
    # a killed holder is replaced after at most this long.
    lease_ttl_seconds: float = 30.0
    spa_dir: Path | None = None
    # The service's front-end host; the UI shell comes from <this>/embed (None: bundled UI only).
    embed_base_url: URL | None = URL(DEFAULT_EMBED_BASE_URL)  # noqa: RUF009 - immutable
    demo: bool = False
    # -- process (cli): --log-level/--log-format win over these
    log_level: str = "info"
    log_format: str = "text"
    event_loop: str = "auto"
    # One access-log line per request at INFO (off: at DEBUG only); web/access_log.py.
    access_log: bool = False

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
        p = env_.Parser(env)
        kwargs: dict[str, Any] = {
            "app_id": p.get("APP_ID", "bee_flow", env_.app_id),
            "app_secret": p.required("APP_SECRET", env_.non_blank, secret=True),
            "app_version": p.get("APP_VERSION", "0.0.0", env_.non_blank),
            "app_host": p.get("APP_HOST", "0.0.0.0", env_.non_blank),
            "app_port": p.get("APP_PORT", "8080", env_.port_number),
            "persistent_storage": p.get("APP_PERSISTENT_STORAGE", "/data", env_.path_value),
            "nextcloud_url": p.required("NEXTCLOUD_URL", env_.nextcloud_url),
            "aa_version": p.get("AA_VERSION", "32.0.0", env_.non_blank),
            "tenant_key_env": p.get("BEEFLOW_TENANT_KEY", "auto", env_.tenant_key, secret=True),
            "pairing_code": p.get(
                "BEEFLOW_PAIRING_CODE", "", env_.optional(env_.pairing_code), secret=True
            ),
            "api_base_url": p.get("BEEFLOW_API_BASE_URL", DEFAULT_API_BASE_URL, env_.http_url),
            "api_base_url_from_env": bool(env.get("BEEFLOW_API_BASE_URL", "").strip()),
            "jwt_ttl_seconds": p.get("BEEFLOW_JWT_TTL_SECONDS", "300", env_.int_range(10, 86400)),
            "sig_skew_seconds": p.get("BEEFLOW_SIG_SKEW_SECONDS", "300", env_.int_range(1, 3600)),
            "nc_public_url": p.get("BEEFLOW_NC_PUBLIC_URL", "", env_.optional(env_.nextcloud_url)),
            "trusted_embed_origins": p.get("BEEFLOW_TRUSTED_EMBED_ORIGINS", "", env_.origins),
            "hp_shared_key": p.get("HP_SHARED_KEY", "", env_.shared_key, secret=True),
            "hp_frp_port": p.get("HP_FRP_PORT", "8782", env_.port_number),
            "socket_path": p.get("HP_EXAPP_SOCK", DEFAULT_SOCKET_PATH, env_.socket_path),
            "frpc_bin": p.get("BEEFLOW_FRPC_BIN", "frpc", env_.non_blank),
            "frp_cert_dir": p.get("BEEFLOW_FRP_CERT_DIR", DEFAULT_CERT_DIR, env_.path_value),
            "frpc_pin_file": p.get("BEEFLOW_FRPC_PIN_FILE", "", env_.optional(env_.path_value)),
            "frpc_config_dir": p.get("BEEFLOW_FRPC_CONFIG_DIR", "", env_.optional(env_.path_value)),
            "frpc_backoff_initial_seconds": p.get(
                "BEEFLOW_FRPC_BACKOFF_INITIAL_SECONDS", "1", env_.float_range(0.001, 1)
            ),
            "frpc_backoff_cap_seconds": p.get(
                "BEEFLOW_FRPC_BACKOFF_CAP_SECONDS", "30", env_.float_range(0.001, 600)
            ),
            "frpc_backoff_reset_seconds": p.get(
                "BEEFLOW_FRPC_BACKOFF_RESET_SECONDS", "60", env_.float_range(0.01, 3600)
            ),
            "frpc_stop_grace_seconds": p.get(
                "BEEFLOW_FRPC_STOP_GRACE_SECONDS", "1", env_.float_range(0.01, 60)
            ),
            "upstream_headers_timeout": p.get(
                "BEEFLOW_UPSTREAM_HEADERS_TIMEOUT_SECONDS", "60", env_.float_range(0.1, 3600)
            ),
            "upstream_connect_timeout": p.get(
                "BEEFLOW_UPSTREAM_CONNECT_TIMEOUT_SECONDS", "10", env_.float_range(0.1, 600)
            ),
            "nc_headers_timeout": p.get(
                "BEEFLOW_NC_HEADERS_TIMEOUT_SECONDS", "60", env_.float_range(0.1, 3600)
            ),
            "nc_connect_timeout": p.get(
                "BEEFLOW_NC_CONNECT_TIMEOUT_SECONDS", "10", env_.float_range(0.1, 600)
            ),
            "sse_keepalive_seconds": p.get(
                "BEEFLOW_SSE_KEEPALIVE_SECONDS", "15", env_.float_range(0.05, 3600)
            ),
            "legacy_stream_idle_seconds": p.get(
                "BEEFLOW_LEGACY_STREAM_IDLE_SECONDS", "120", env_.float_range(0.05, 86400)
            ),
            "nc_max_body_bytes": p.get(
                "BEEFLOW_NC_MAX_BODY_BYTES", str(4 * 1024**3), env_.int_range(0, 1 << 44)
            ),
            "spool_memory_bytes": p.get(
                "BEEFLOW_SPOOL_MEMORY_BYTES", str(1024 * 1024), env_.int_range(0, 64 * 1024**2)
            ),
            "spool_dir": p.get("BEEFLOW_SPOOL_DIR", "", env_.optional(env_.path_value)),
            "sync_interval_seconds": p.get(
                "BEEFLOW_SYNC_INTERVAL_SECONDS", "900", env_.float_range(1, 7 * 86400)
            ),
            "settings_poll_seconds": p.get(
                "BEEFLOW_SETTINGS_POLL_SECONDS", "60", env_.float_range(1, 3600)
            ),
            "studio_menu_sync_seconds": p.get(
                "BEEFLOW_STUDIO_MENU_SYNC_SECONDS", "300", env_.float_range(5, 86400)
            ),
            "shutdown_grace_seconds": p.get(
                "BEEFLOW_SHUTDOWN_GRACE_SECONDS", "5", env_.float_range(0, 600)
            ),
            "client_header_timeout_seconds": p.get(
                "BEEFLOW_CLIENT_HEADER_TIMEOUT_SECONDS", "60", env_.float_range(1, 3600)
            ),
            "auth_failure_budget": p.get("BEEFLOW_AUTH_FAILURE_BUDGET", "4", env_.int_range(1, 9)),
            "routing": p.get("BEEFLOW_ROUTING", "auto", env_.choice(ROUTINGS)),
            "prestop_seconds": p.get("BEEFLOW_PRESTOP_SECONDS", "0", env_.float_range(0, 600)),
            "lease_ttl_seconds": p.get(
                "BEEFLOW_LEASE_TTL_SECONDS", "30", env_.float_range(1, 3600)
            ),
            "head_timeout_seconds": p.get(
                "BEEFLOW_HEAD_TIMEOUT_SECONDS", "10", env_.float_range(0.05, 3600)
            ),
            "max_connections": p.get("BEEFLOW_MAX_CONNECTIONS", "2048", env_.int_range(1, 1 << 20)),
            "listen_backlog": p.get("BEEFLOW_LISTEN_BACKLOG", "1024", env_.int_range(1, 65535)),
            "nc_body_idle_seconds": p.get(
                "BEEFLOW_NC_BODY_IDLE_SECONDS", "30", env_.float_range(0.05, 3600)
            ),
            "nc_unverified_uploads": p.get(
                "BEEFLOW_NC_UNVERIFIED_UPLOADS", "8", env_.int_range(1, 4096)
            ),
            "nc_unverified_bytes": p.get(
                "BEEFLOW_NC_UNVERIFIED_BYTES", str(1024**3), env_.int_range(0, 1 << 44)
            ),
            "nc_signature_v1": p.get("BEEFLOW_NC_SIGNATURE_V1", "1", env_.flag),
            "nc_signature_require_v3": p.get("BEEFLOW_NC_SIGNATURE_REQUIRE_V3", "0", env_.flag),
            "task_watchdog_min_seconds": p.get(
                "BEEFLOW_TASK_WATCHDOG_MIN_SECONDS", "60", env_.float_range(0.1, 3600)
            ),
            "task_watchdog_max_seconds": p.get(
                "BEEFLOW_TASK_WATCHDOG_MAX_SECONDS", "300", env_.float_range(0.1, 86400)
            ),
            "task_poll_seconds": p.get(
                "BEEFLOW_TASK_POLL_SECONDS", "5", env_.float_range(0.05, 3600)
            ),
            "task_poll_max_seconds": p.get(
                "BEEFLOW_TASK_POLL_MAX_SECONDS", "300", env_.float_range(0.05, 3600)
            ),
            "task_concurrency": p.get("BEEFLOW_TASK_CONCURRENCY", "4", env_.int_range(1, 64)),
            "api_buffer_bytes": p.get(
                "BEEFLOW_API_BUFFER_BYTES", str(128 * 1024**2), env_.int_range(1024, 1 << 40)
            ),
            "api_buffer_user_bytes": p.get(
                "BEEFLOW_API_BUFFER_USER_BYTES", str(64 * 1024**2), env_.int_range(1024, 1 << 40)
            ),
            "spa_dir": p.get("BEEFLOW_SPA_DIR", "", env_.optional(env_.path_value)),
            "embed_base_url": p.get(
                "BEEFLOW_EMBED_BASE_URL", DEFAULT_EMBED_BASE_URL, env_.embed_url
            ),
            "log_level": p.get("BEEFLOW_LOG_LEVEL", "info", env_.choice(LOG_LEVELS)),
            "log_format": p.get("BEEFLOW_LOG_FORMAT", "text", env_.choice(LOG_FORMATS)),
            "event_loop": p.get("BEEFLOW_EVENT_LOOP", "auto", env_.choice(EVENT_LOOPS)),
            "access_log": p.get("BEEFLOW_ACCESS_LOG", "0", env_.flag),
        }
        harp = bool(kwargs["hp_shared_key"])
        if harp:
            kwargs["hp_frp_address"] = p.required(
                "HP_FRP_ADDRESS", env_.frp_host, why_missing="HaRP mode"
            )
        else:
            kwargs["hp_frp_address"] = env.get("HP_FRP_ADDRESS", "").strip()
        p.raise_if_errors()
        return cls(**kwargs)


CONFIG: web.AppKey[Config] = web.AppKey("config")
