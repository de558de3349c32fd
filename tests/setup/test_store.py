"""setup-config.json: atomic, 0600, tolerant of damage."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from beeflow.setup import store
from beeflow.storage import StoreError


def test_save_and_load(tmp_path: Path) -> None:
    storage = tmp_path / "data"
    choice = store.save(storage, "self-hosted", "http://bee:3001")
    path = storage / "setup-config.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {
        "mode": "self-hosted",
        "apiBaseUrl": "http://bee:3001",
        "savedAt": choice.saved_at,
    }
    assert store.load(storage) == choice
    assert [p.name for p in storage.iterdir()] == ["setup-config.json"]


def test_mode_0600_even_with_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        store.save(tmp_path, "cloud", "https://server.beeflow.nl")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "setup-config.json").stat().st_mode) == 0o600


def test_overwrite_replaces_whole_file(tmp_path: Path) -> None:
    store.save(tmp_path, "self-hosted", "http://a-very-long-host-name.example:3001")
    store.save(tmp_path, "cloud", "https://server.beeflow.nl")
    loaded = store.load(tmp_path)
    assert loaded is not None
    assert loaded.mode == "cloud"
    assert [p.name for p in tmp_path.iterdir()] == ["setup-config.json"]


def test_failed_write_leaves_old_file_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.save(tmp_path, "self-hosted", "http://old:3001")

    def boom(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(StoreError, match="the storage is full"):
        store.save(tmp_path, "self-hosted", "http://new:3001")
    loaded = store.load(tmp_path)
    assert loaded is not None
    assert loaded.api_base_url == "http://old:3001"
    assert [p.name for p in tmp_path.iterdir()] == ["setup-config.json"]


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{not json",
        b"[]",
        b'{"mode": "moon", "apiBaseUrl": "http://x"}',
        b'{"mode": "cloud"}',
        b'{"mode": "cloud", "apiBaseUrl": 5}',
        b"{" + b" " * (store.MAX_BYTES + 10) + b"}",
    ],
)
def test_damaged_files_are_ignored(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "setup-config.json").write_bytes(content)
    assert store.load(tmp_path) is None


def test_missing_file(tmp_path: Path) -> None:
    assert store.load(tmp_path) is None


def test_reference_custom_mode_reads_as_self_hosted(tmp_path: Path) -> None:
    (tmp_path / "setup-config.json").write_text(
        '{"mode": "custom", "apiBaseUrl": "http://bee:3001", "savedAt": "yesterday"}'
    )
    loaded = store.load(tmp_path)
    assert loaded == store.SetupChoice("self-hosted", "http://bee:3001", 0.0)
