"""Reading frpc's output: the tunnel's state from real frpc lines, and the lines as they go into
our log (no colour codes, no key, frpc's levels)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from beeflow.config import Config
from beeflow.transports.frpc.diagnose import (
    FRPS_UNREACHABLE,
    KEY_REFUSED,
    PORT_NOT_ALLOWED,
    PROXY_TAKEN,
    TLS_REQUIRED,
    Tunnel,
    classify,
    clean_line,
    describe_exit,
    line_level,
    masks,
    message_of,
)


def test_observe_follows_real_frpc_lines() -> None:
    config = Config.from_env({"APP_SECRET": "s" * 16, "NEXTCLOUD_URL": "http://nc"})
    tunnel = Tunnel(config)
    steps = [
        (
            "2026-11-22 14:00:00.000 [I] [client/service.go:295] try to connect to server...",
            "exited",
        ),
        (
            "2026-11-22 14:00:00.001 [W] [client/service.go:298] connect to server error: "
            "dial tcp 127.0.0.1:8782: connect: connection refused",
            "retrying",
        ),
        (
            "2026-11-22 14:00:02.100 [I] [client/service.go:287] [ab] login to server success, "
            "get run id [ab]",
            "starting",
        ),
        (
            "2026-11-22 14:00:02.101 [I] [client/control.go:168] [ab] [bee_flow] "
            "start proxy success",
            "connected",
        ),
        (
            "2026-11-22 14:00:09.000 [W] [client/service.go:298] [ab] "
            "connect to server error: session shutdown",
            "retrying",
        ),
        (
            "2026-11-22 14:00:12.000 [W] [client/control.go:172] [ab] [bee_flow] "
            "start error: port unavailable",
            "retrying",
        ),
    ]
    seen = []
    for line, _ in steps:
        tunnel.observe(line)
        seen.append(tunnel.state)
    assert seen == [state for _, state in steps]
    assert tunnel.last_error == "start error: port unavailable"
    assert tunnel.connect_errors == 2
    assert tunnel.logins == 1


def test_a_line_is_logged_without_colour_codes_or_the_key_in_any_of_its_forms() -> None:
    key = 'k3y"with\\quotes'
    escaped = r"k3y\"with\\quotes"  # as frpc prints it in a JSON dump
    assert masks(key) == (escaped, key)  # the longer form first
    line = f"\x1b[1;34m2026-11-22 14:00:00.000 [D] [client] token={key} json={escaped}\x1b[0m"
    assert clean_line(line, masks(key)) == (
        "2026-11-22 14:00:00.000 [D] [client] token=*** json=***"
    )
    assert len(clean_line("x" * 5000, ())) == 2000
    assert masks("") == ()


def test_frpc_levels_map_onto_ours_and_the_prefix_comes_off() -> None:
    line = "2026-11-22 14:00:00.001 [W] [client/service.go:298] connect to server error: EOF"
    assert line_level(line) == logging.WARNING
    assert line_level(line.replace("[W]", "[E]")) == logging.ERROR
    assert line_level(line.replace("[W]", "[T]")) == logging.DEBUG
    assert line_level("no level at all") == logging.INFO
    assert message_of(line) == "connect to server error: EOF"


def test_exits_in_words() -> None:
    assert describe_exit(-15) == "SIGTERM (code -15)"
    assert describe_exit(1) == "code 1"
    assert describe_exit(-200) == "signal 200 (code -200)"


# ------------------------------------------------------------------ causes

PREFIX = "2026-12-07 05:20:50.709 [W] [client/service.go:298] connect to server error: "
# What real frpc 0.61.1 printed, in 40 tries against a TLS-forcing frps without certificates.
TLS_REFUSALS = (
    "EOF",
    "session shutdown",
    "stream closed",
    "write tcp 127.0.0.1:51086->127.0.0.1:17999: write: connection reset by peer",
    "write tcp 127.0.0.1:58078->127.0.0.1:17999: write: broken pipe",
)


def plain_config(tmp_path: Path, **env: str) -> Config:
    """No certificate directory: frpc connects without TLS."""
    base = {
        "APP_SECRET": "s" * 16,
        "NEXTCLOUD_URL": "http://nc",
        "APP_PORT": "23001",
        "BEEFLOW_FRP_CERT_DIR": str(tmp_path / "no-certs"),
    }
    return Config.from_env(base | env)


@pytest.mark.parametrize("words", TLS_REFUSALS)
def test_every_word_for_the_tls_refusal_is_one_cause(tmp_path: Path, words: str) -> None:
    config = plain_config(tmp_path)
    assert classify(words, config, logged_in=False) == TLS_REQUIRED
    # After a login frps evidently takes plain connections: a dropped session is frps leaving.
    assert classify(words, config, logged_in=True) == ""
    # With certificates frpc speaks TLS: these words then say nothing about TLS being forced.
    certs = tmp_path / "certs"
    certs.mkdir()
    with_tls = plain_config(tmp_path, BEEFLOW_FRP_CERT_DIR=str(certs))
    assert classify(words, with_tls, logged_in=False) != TLS_REQUIRED


@pytest.mark.parametrize(
    ("words", "cause"),
    [
        ("dial tcp 127.0.0.1:8782: connect: connection refused", FRPS_UNREACHABLE),
        ("dial tcp: lookup appapi-harp: no such host", FRPS_UNREACHABLE),
        ("send Login request to plugin error: 400", KEY_REFUSED),
        ("start error: port not allowed", PORT_NOT_ALLOWED),
        ("start error: proxy [bee_flow] already exists", PROXY_TAKEN),
        ("i/o timeout", ""),
        ("", ""),
    ],
)
def test_other_errors_and_their_causes(tmp_path: Path, words: str, cause: str) -> None:
    assert classify(words, plain_config(tmp_path), logged_in=False) == cause


def test_the_tls_diagnosis_holds_whatever_frpc_says_until_a_login(tmp_path: Path) -> None:
    """frpc's words for the refusal change from try to try, and an unrelated error may come
    in between: the cause and remedy never flicker until frps takes a login."""
    tunnel = Tunnel(plain_config(tmp_path))
    sequence = (*TLS_REFUSALS, "dial tcp 127.0.0.1:8782: connect: connection refused", "EOF")
    remedies = set()
    for words in sequence:
        tunnel.observe(PREFIX + words)
        assert tunnel.last_error == words
        assert tunnel.cause == TLS_REQUIRED, words
        remedies.add(tunnel.remedy)
    assert len(remedies) == 1
    assert "HP_FRP_DISABLE_TLS=true" in remedies.pop()
    tunnel.observe(
        "2026-12-07 05:20:52.000 [I] [client/service.go:287] [ab] login to server success, "
        "get run id [ab]"
    )
    assert tunnel.cause == tunnel.remedy == ""
    tunnel.observe(PREFIX + "session shutdown")
    assert tunnel.cause == ""


def test_a_proxy_name_held_by_another_frpc_has_a_remedy(tmp_path: Path) -> None:
    tunnel = Tunnel(plain_config(tmp_path))
    tunnel.observe(
        "2026-12-07 05:22:29.543 [W] [client/control.go:166] [ab] [bee_flow] start error: "
        "proxy [bee_flow] already exists"
    )
    assert tunnel.state == "retrying"
    assert tunnel.cause == PROXY_TAKEN
    assert "every 30 s" in tunnel.remedy
    assert "restart this container" in tunnel.remedy
    # frpc asks again 30 s later; once the other one is gone it gets the proxy.
    tunnel.observe(
        "2026-12-07 05:22:59.559 [I] [client/control.go:168] [ab] [bee_flow] start proxy success"
    )
    assert tunnel.state == "connected"
    assert tunnel.cause == tunnel.remedy == ""
