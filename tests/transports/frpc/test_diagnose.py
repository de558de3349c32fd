"""Reading frpc's output: the tunnel's state from real frpc lines, and the lines as they go into
our log (no colour codes, no key, frpc's levels)."""

from __future__ import annotations

import logging

from beeflow.config import Config
from beeflow.transports.frpc.diagnose import (
    Tunnel,
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
