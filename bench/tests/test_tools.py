"""Where the bench installs what it needs, and that it never installs without asking apt as
root or into the repository."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from bench import tools


def test_the_cache_directory_follows_the_environment() -> None:
    assert tools.cache_root({"BEEFLOW_BENCH_CACHE": "/c", "XDG_CACHE_HOME": "/x"}) == Path("/c")
    assert tools.cache_root({"XDG_CACHE_HOME": "/x"}) == Path("/x/beeflow-bench")
    assert tools.cache_root({}) == Path.home() / ".cache" / "beeflow-bench"


def test_the_node_stack_is_never_installed_into_the_repository() -> None:
    modules, why = tools.ensure_node_stack(tools.ROOT / "bench" / ".cache")
    assert modules is None
    assert "inside the repository" in why
    assert not (tools.ROOT / "bench" / ".cache").exists()


def test_an_installed_stack_is_used_as_it_is(tmp_path: Path) -> None:
    modules = tmp_path / f"node-{tools.node_key()}" / "node_modules"
    modules.mkdir(parents=True)
    (modules / ".bench-complete").write_text("")
    assert tools.ensure_node_stack(tmp_path) == (modules, "")


def test_a_changed_lock_file_names_a_new_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = tools.node_key()
    for name in ("package.json", "package-lock.json"):
        (tmp_path / name).write_bytes((tools.NODE_DIR / name).read_bytes())
    monkeypatch.setattr(tools, "NODE_DIR", tmp_path)
    assert tools.node_key() == before
    (tmp_path / "package-lock.json").write_bytes(b"{}")
    assert tools.node_key() != before


def test_apt_is_asked_only_for_what_is_missing_and_only_as_root(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    present = {"wrk": "/usr/bin/wrk"}
    monkeypatch.setattr(tools, "which", present.get)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)

    def no_apt(*_a: object, **_k: object) -> None:
        raise AssertionError("apt-get must not run")

    monkeypatch.setattr(subprocess, "run", no_apt)
    assert tools.ensure_apt(["wrk"]) == {}
    assert tools.ensure_apt(["wrk", "nginx"]) == {
        "nginx": "nginx is not installed (apt-get install -y nginx)"
    }


@pytest.mark.skipif(not Path("/usr/sbin/nginx").exists(), reason="Debian's nginx is not installed")
def test_nginx_is_found_where_debian_keeps_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")  # a non-root PATH has no sbin
    assert tools.which("nginx") == "/usr/sbin/nginx"
