"""Config.from_env: defaults, normalisation, and every bad variable reported at once."""

from __future__ import annotations

from pathlib import Path

import pytest
from yarl import URL

from beeflow.config import Config
from beeflow.errors import ConfigError

MINIMAL = {"APP_SECRET": "s3cr3t-value-0123", "NEXTCLOUD_URL": "http://nc.example"}
HARP = {**MINIMAL, "HP_SHARED_KEY": "shared-key-0123", "HP_FRP_ADDRESS": "appapi-harp"}


def problems(env: dict[str, str]) -> dict[str, str]:
    with pytest.raises(ConfigError) as err:
        Config.from_env(env)
    return err.value.problems


def test_defaults_are_the_seeds_and_the_contract() -> None:
    config = Config.from_env(MINIMAL)
    assert config.app_id == "bee_flow"
    assert config.app_host == "0.0.0.0"
    assert config.app_port == 8080
    assert config.harp is False
    assert config.socket_path == Path("/tmp/exapp.sock")
    assert config.frpc_bin == "frpc"
    assert config.frp_cert_dir == Path("/certs/frp")
    assert config.hp_frp_port == 8782
    assert config.tenant_key_auto
    assert config.log_level == "info"
    assert config.log_format == "text"
    assert config.frpc_config_dir is None
    assert config.frpc_pin_file is None
    assert (
        config.frpc_backoff_initial_seconds,
        config.frpc_backoff_cap_seconds,
        config.frpc_backoff_reset_seconds,
    ) == (1.0, 30.0, 60.0)
    assert 0 < config.frpc_stop_grace_seconds <= 5


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("http://nc.example/", "http://nc.example"),
        ("http://nc.example/index.php", "http://nc.example"),
        ("https://nc.example/cloud/index.php/", "https://nc.example/cloud"),
        ("https://nc.example/cloud//", "https://nc.example/cloud"),
    ],
)
def test_nextcloud_url_is_normalised(raw: str, want: str) -> None:
    assert Config.from_env({**MINIMAL, "NEXTCLOUD_URL": raw}).nextcloud_url == URL(want)


def test_harp_mode_is_decided_by_a_non_empty_shared_key() -> None:
    assert Config.from_env(HARP).harp
    assert not Config.from_env({**MINIMAL, "HP_SHARED_KEY": ""}).harp
    assert not Config.from_env({**MINIMAL, "HP_SHARED_KEY": "   "}).harp
    # start.sh strips one pair of surrounding quotes.
    assert Config.from_env({**HARP, "HP_SHARED_KEY": '"quoted-key"'}).hp_shared_key == "quoted-key"


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("key with spaces", "key with spaces"),  # start.sh allows \040-\176
        (" padded ", " padded "),  # kept: frps compares the token byte for byte
        ('"quoted-key"', "quoted-key"),
        ("'single-quoted'", "single-quoted"),
        ("\"'both'\"", "both"),  # start.sh strips " first, then '
        ("it's-inside", "it's-inside"),
        ("~!@#$%^&*()_+`{}|[]:;<>?,./=-", "~!@#$%^&*()_+`{}|[]:;<>?,./=-"),
    ],
)
def test_shared_key_is_what_harps_start_sh_makes_of_it(raw: str, key: str) -> None:
    config = Config.from_env({**HARP, "HP_SHARED_KEY": raw})
    assert config.hp_shared_key == key
    assert config.harp


@pytest.mark.parametrize("raw", ['in"side', "back\\slash", "tab\there", "caf\u00e9", "new\nline"])
def test_shared_key_refuses_what_harp_refuses(raw: str) -> None:
    assert list(problems({**HARP, "HP_SHARED_KEY": raw})) == ["HP_SHARED_KEY"]


def test_harp_settings() -> None:
    config = Config.from_env(
        {
            **HARP,
            "HP_FRP_PORT": "8999",
            "HP_EXAPP_SOCK": "/run/bee/exapp.sock",
            "BEEFLOW_FRPC_BIN": "/usr/local/bin/frpc",
            "BEEFLOW_FRP_CERT_DIR": "/etc/frp",
            "BEEFLOW_FRPC_PIN_FILE": "/app/frpc/pin.toml",
            "BEEFLOW_FRPC_CONFIG_DIR": "/run/bee",
            "BEEFLOW_FRPC_BACKOFF_INITIAL_SECONDS": "0.5",
            "BEEFLOW_FRPC_BACKOFF_CAP_SECONDS": "10",
            "BEEFLOW_FRPC_BACKOFF_RESET_SECONDS": "30",
            "BEEFLOW_FRPC_STOP_GRACE_SECONDS": "1",
            "BEEFLOW_LOG_LEVEL": "DEBUG",
            "BEEFLOW_LOG_FORMAT": "json",
        }
    )
    assert (config.hp_frp_address, config.hp_frp_port) == ("appapi-harp", 8999)
    assert config.socket_path == Path("/run/bee/exapp.sock")
    assert config.frpc_bin == "/usr/local/bin/frpc"
    assert config.frp_cert_dir == Path("/etc/frp")
    assert config.frpc_pin_file == Path("/app/frpc/pin.toml")
    assert config.frpc_config_dir == Path("/run/bee")
    assert config.frpc_backoff_initial_seconds == 0.5
    assert config.frpc_backoff_cap_seconds == 10
    assert config.frpc_backoff_reset_seconds == 30
    assert config.frpc_stop_grace_seconds == 1
    assert (config.log_level, config.log_format) == ("debug", "json")


# (variable, bad value, words the reason must contain). Each row alone must fail on exactly
# that variable.
BAD = [
    ("APP_SECRET", "", "required"),
    ("NEXTCLOUD_URL", "", "required"),
    ("NEXTCLOUD_URL", "ftp://nc", "http(s) URL"),
    ("NEXTCLOUD_URL", "http://user:pw@nc", "credentials"),
    ("APP_ID", "Bee Flow", "app id"),
    ("APP_ID", "app_api", "reserved"),
    ("APP_PORT", "http", "1 to 65535"),
    ("APP_PORT", "0", "1 to 65535"),
    ("APP_PORT", "70000", "1 to 65535"),
    ("APP_HOST", " ", "empty"),
    ("APP_VERSION", "", "empty"),
    ("BEEFLOW_TENANT_KEY", "short", "16 characters"),
    ("BEEFLOW_API_BASE_URL", "server.beeflow.nl", "http(s) URL"),
    ("BEEFLOW_JWT_TTL_SECONDS", "5", "10 to 86400"),
    ("BEEFLOW_SIG_SKEW_SECONDS", "x", "1 to 3600"),
    ("HP_FRP_PORT", "eighty", "1 to 65535"),
    ("HP_EXAPP_SOCK", "/tmp/" + "s" * 120, "107 bytes"),
    ("HP_EXAPP_SOCK", "/tmp/\ud800.sock", "valid UTF-8"),  # a lone surrogate cannot be a path
    ("HP_SHARED_KEY", "has\ttab", "printable ASCII"),
    ("HP_SHARED_KEY", 'has"quote', "must not contain"),
    ("BEEFLOW_LOG_LEVEL", "loud", "debug, info"),
    ("BEEFLOW_LOG_FORMAT", "xml", "text, json"),
    ("BEEFLOW_FRPC_BACKOFF_INITIAL_SECONDS", "5", "0.001 to 1"),
    ("BEEFLOW_FRPC_BACKOFF_CAP_SECONDS", "-1", "0.001 to 600"),
    ("BEEFLOW_FRPC_BACKOFF_RESET_SECONDS", "nan", "0.01 to 3600"),
    ("BEEFLOW_FRPC_STOP_GRACE_SECONDS", "inf", "0.01 to 60"),
    ("BEEFLOW_SHUTDOWN_GRACE_SECONDS", "-3", "0 to 600"),
    ("BEEFLOW_CLIENT_HEADER_TIMEOUT_SECONDS", "0.5", "1 to 3600"),
    ("BEEFLOW_CLIENT_HEADER_TIMEOUT_SECONDS", "sixty", "1 to 3600"),
    ("BEEFLOW_PAIRING_CODE", "ABCDEFGH", "ABCD-EFGH"),
]


@pytest.mark.parametrize(("name", "value", "why"), BAD, ids=[f"{n}={v!r}" for n, v, _ in BAD])
def test_each_bad_variable_is_named_with_its_reason(name: str, value: str, why: str) -> None:
    found = problems({**HARP, name: value})
    assert list(found) == [name]
    assert why in found[name]


def test_harp_needs_a_frp_address() -> None:
    found = problems({**MINIMAL, "HP_SHARED_KEY": "shared-key-0123"})
    assert found == {"HP_FRP_ADDRESS": "is required in HaRP mode"}
    found = problems({**HARP, "HP_FRP_ADDRESS": "harp host"})
    assert list(found) == ["HP_FRP_ADDRESS"]
    # The daemon's --harp_frp_address is host:port; HP_FRP_ADDRESS is only its host.
    for wrong in ("appapi-harp:8782", "[fd00::1]"):
        found = problems({**HARP, "HP_FRP_ADDRESS": wrong})
        assert "HP_FRP_PORT" in found["HP_FRP_ADDRESS"], wrong
    ipv6 = Config.from_env({**HARP, "HP_FRP_ADDRESS": "fd00::1"})
    assert ipv6.hp_frp_address == "fd00::1"
    # Without HaRP nobody needs it.
    assert Config.from_env({**MINIMAL, "HP_FRP_ADDRESS": ""}).hp_frp_address == ""


def test_every_problem_at_once_in_one_message() -> None:
    env: dict[str, str] = {}
    for name, value, _ in BAD:
        env.setdefault(name, value)
    with pytest.raises(ConfigError) as err:
        Config.from_env(env)
    assert set(err.value.problems) == set(env)
    text = err.value.render()
    assert text.startswith(f"configuration error ({len(env)} problem(s)):")
    for name in env:
        assert f"\n  {name}: " in text


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BEEFLOW_TENANT_KEY", "tk-secret-but-short"[:12]),
        ("HP_SHARED_KEY", 'very "secret" key'),
        ("HP_SHARED_KEY", "s3cr3t\x7fkey"),
        ("BEEFLOW_PAIRING_CODE", "WXYZ-98765"),
    ],
)
def test_secret_values_are_never_echoed(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as err:
        Config.from_env({**HARP, name: value})
    assert value not in err.value.render()
    assert value not in str(err.value)
    assert value.split()[0] not in err.value.render()


def test_non_secret_values_are_echoed_to_help() -> None:
    found = problems({**HARP, "APP_PORT": "80a"})
    assert "'80a'" in found["APP_PORT"]


def test_default_stop_fits_docker_stop() -> None:
    """SIGTERM to exit with the defaults (drain + the HaRP stop) stays under `docker stop`'s
    10 s with a 1.5 s margin."""
    from beeflow.transports import harp

    assert harp.shutdown_budget(Config.from_env(HARP)) <= 10 - 1.5


def test_repr_hides_secrets() -> None:
    config = Config.from_env(
        {**HARP, "BEEFLOW_TENANT_KEY": "tk_0123456789abcdef", "BEEFLOW_PAIRING_CODE": "WXYZ-9876"}
    )
    text = repr(config)
    for secret in ("s3cr3t-value-0123", "shared-key-0123", "tk_0123456789abcdef", "WXYZ-9876"):
        assert secret not in text


@pytest.mark.parametrize(
    ("raw", "want"),
    [("", None), ("  ", None), ("wxyz-9876", "WXYZ-9876"), (" AB12-CD34\n", "AB12-CD34")],
)
def test_pairing_code_is_optional_trimmed_and_upper_cased(raw: str, want: str | None) -> None:
    assert Config.from_env({**MINIMAL, "BEEFLOW_PAIRING_CODE": raw}).pairing_code == want
    assert Config.from_env(MINIMAL).pairing_code is None


def test_client_header_timeout() -> None:
    assert Config.from_env(MINIMAL).client_header_timeout_seconds == 60.0
    env = {**MINIMAL, "BEEFLOW_CLIENT_HEADER_TIMEOUT_SECONDS": " 15.5 "}
    assert Config.from_env(env).client_header_timeout_seconds == 15.5
