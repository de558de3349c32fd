"""Config.from_env for the connection, request-head and /nc limits and the signature switches:
defaults, the accepted spellings of a switch, and bad values reported by name."""

from __future__ import annotations

import pytest

from beeflow.config import Config
from beeflow.errors import ConfigError

MINIMAL = {"APP_SECRET": "s3cr3t-value-0123", "NEXTCLOUD_URL": "http://nc.example"}


def test_defaults() -> None:
    config = Config.from_env(MINIMAL)
    assert config.max_connections == 2048
    assert config.max_head_bytes == 32 * 1024
    assert config.head_timeout_seconds == 10.0
    assert config.client_header_timeout_seconds == 60.0
    assert config.nc_body_idle_seconds == 30.0
    assert config.nc_unverified_uploads == 8
    assert config.nc_unverified_bytes == 1024**3
    assert config.nc_signature_v1 is True
    assert config.nc_signature_require_v3 is False


@pytest.mark.parametrize(
    ("raw", "value"),
    [("0", False), ("1", True), ("false", False), ("TRUE", True), (" off ", False), ("yes", True)],
)
def test_switch_spellings(raw: str, value: bool) -> None:
    config = Config.from_env(
        {**MINIMAL, "BEEFLOW_NC_SIGNATURE_V1": raw, "BEEFLOW_NC_SIGNATURE_REQUIRE_V3": raw}
    )
    assert config.nc_signature_v1 is value
    assert config.nc_signature_require_v3 is value


def test_bad_values_are_named_together() -> None:
    with pytest.raises(ConfigError) as err:
        Config.from_env(
            {
                **MINIMAL,
                "BEEFLOW_NC_SIGNATURE_V1": "maybe",
                "BEEFLOW_MAX_CONNECTIONS": "0",
                "BEEFLOW_HEAD_TIMEOUT_SECONDS": "never",
                "BEEFLOW_NC_BODY_IDLE_SECONDS": "0",
                "BEEFLOW_NC_UNVERIFIED_UPLOADS": "-1",
                "BEEFLOW_NC_UNVERIFIED_BYTES": "lots",
            }
        )
    problems = err.value.problems
    assert set(problems) == {
        "BEEFLOW_NC_SIGNATURE_V1",
        "BEEFLOW_MAX_CONNECTIONS",
        "BEEFLOW_HEAD_TIMEOUT_SECONDS",
        "BEEFLOW_NC_BODY_IDLE_SECONDS",
        "BEEFLOW_NC_UNVERIFIED_UPLOADS",
        "BEEFLOW_NC_UNVERIFIED_BYTES",
    }
    assert "1 or 0" in problems["BEEFLOW_NC_SIGNATURE_V1"]
