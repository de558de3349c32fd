"""frpc.toml: the document HaRP's ExApps write (docs/transports.md, "frpc.toml"), key by key;
escaping; TLS on/off; file safety."""

from __future__ import annotations

import asyncio
import stat
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import given, settings
from hypothesis import strategies as st

from beeflow.config import Config
from beeflow.transports.frpc.config import render, write_config
from beeflow.transports.frpc.supervisor import FrpcSupervisor
from tests.fakes.frp import FakeFrps
from tests.procs import REPO
from tests.transports.conftest import SHARED_KEY, harp_env


def golden(unix_path: str, port: int, frps_port: int, tls: dict[str, Any]) -> dict[str, Any]:
    """The document HaRP's ExApps write, by hand (plus log.disablePrintColor: frpc colours its
    output even into a pipe)."""
    return {
        "serverAddr": "127.0.0.1",
        "serverPort": frps_port,
        "loginFailExit": False,
        "log": {"disablePrintColor": True},
        "transport": {"tls": tls},
        "metadatas": {"token": SHARED_KEY},
        "proxies": [
            {
                "name": "bee_flow",
                "type": "tcp",
                "remotePort": port,
                "plugin": {"type": "unix_domain_socket", "unixPath": unix_path},
            }
        ],
    }


def flatten(doc: Any, prefix: str = "") -> dict[str, Any]:
    """{"a.b": leaf} so a mismatch names the key."""
    if isinstance(doc, dict):
        out: dict[str, Any] = {}
        for key, value in doc.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else key))
        return out
    if isinstance(doc, list):
        out = {}
        for i, value in enumerate(doc):
            out.update(flatten(value, f"{prefix}[{i}]"))
        return out
    return {prefix: doc}


def written(config: Config, directory: Path, unix_path: Path) -> dict[str, Any]:
    path = write_config(render(config, unix_path), directory)
    with path.open("rb") as fh:
        return tomllib.load(fh)


def test_render_without_certs_matches_harps_document_key_by_key(
    sockdir: Path, frpc_bin: Path, storage: Path
) -> None:
    config = Config.from_env(
        harp_env(sockdir, frpc_bin, 8782, storage, BEEFLOW_FRP_CERT_DIR=str(sockdir / "none"))
    )
    unix_path = sockdir / "bound.sock"
    doc = written(config, sockdir / "cfg", unix_path)
    expected = golden(str(unix_path), config.app_port, 8782, {"enable": False})
    assert flatten(doc) == flatten(expected)
    # The exact set of keys: nothing more (auth.token would break HaRP's frps).
    assert sorted(flatten(doc)) == sorted(flatten(expected))
    assert "auth" not in doc


def test_render_with_certs_enables_mutual_tls_for_harp_nc(
    sockdir: Path, frpc_bin: Path, storage: Path
) -> None:
    certs = sockdir / "certs"
    certs.mkdir(exist_ok=True)
    config = Config.from_env(
        harp_env(sockdir, frpc_bin, 8782, storage, BEEFLOW_FRP_CERT_DIR=str(certs))
    )
    doc = written(config, sockdir / "cfg", sockdir / "s.sock")
    tls = {
        "enable": True,
        "certFile": f"{certs}/client.crt",
        "keyFile": f"{certs}/client.key",
        "trustedCaFile": f"{certs}/ca.crt",
        "serverName": "harp.nc",
    }
    assert flatten(doc) == flatten(golden(str(sockdir / "s.sock"), config.app_port, 8782, tls))


def test_example_in_repo_is_the_rendered_shape() -> None:
    """frpc/frpc.toml.example documents the same keys the supervisor writes (TLS variant)."""
    with (REPO / "frpc" / "frpc.toml.example").open("rb") as fh:
        example = tomllib.load(fh)
    tls = {
        "enable": True,
        "certFile": "/certs/frp/client.crt",
        "keyFile": "/certs/frp/client.key",
        "trustedCaFile": "/certs/frp/ca.crt",
        "serverName": "harp.nc",
    }
    shape = golden("/tmp/exapp.sock", 23000, 8782, tls)
    assert sorted(flatten(example)) == sorted(flatten(shape))


def test_config_file_is_private_and_outside_the_repo(
    sockdir: Path, frpc_bin: Path, storage: Path
) -> None:
    config = Config.from_env(harp_env(sockdir, frpc_bin, 8782, storage))
    directory = sockdir / "cfg"
    path = write_config(render(config, sockdir / "s.sock"), directory)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert REPO not in path.resolve().parents
    # Rewriting (a restart) keeps it private and leaves no temp file behind.
    path.chmod(0o644)
    write_config(render(config, sockdir / "s.sock"), directory)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in directory.iterdir()] == ["frpc.toml"]


@settings(max_examples=200, deadline=None)
@given(
    st.text(
        alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters='"\\'),
        min_size=1,
        max_size=80,
    )
)
def test_any_accepted_shared_key_round_trips(key: str) -> None:
    """Every key HaRP accepts (printable ASCII without `"` and `\\`) survives the TOML writer
    byte for byte."""
    config = Config.from_env(
        {
            "APP_SECRET": "s" * 16,
            "NEXTCLOUD_URL": "http://nc",
            "HP_SHARED_KEY": key,
            "HP_FRP_ADDRESS": "harp",
        }
    )
    text = tomli_w.dumps(render(config, Path("/tmp/exapp.sock")))
    assert tomllib.loads(text)["metadatas"]["token"] == config.hp_shared_key


async def test_stand_in_frpc_accepts_the_render_and_rejects_unknown_keys(
    sockdir: Path, frpc_bin: Path, storage: Path
) -> None:
    """`frpc verify -c`: the rendered file passes strict parsing; one unknown key fails it."""
    config = Config.from_env(harp_env(sockdir, frpc_bin, 8782, storage))
    document = render(config, sockdir / "s.sock")
    good = write_config(document, sockdir / "good")
    bad = write_config({**document, "auth": {"token": "x"}}, sockdir / "bad")
    for path, want in ((good, 0), (bad, 1)):
        proc = await asyncio.create_subprocess_exec(
            str(frpc_bin), "verify", "-c", str(path), stdout=asyncio.subprocess.PIPE
        )
        out, _ = await proc.communicate()
        assert proc.returncode == want, out
    assert b'unknown field "auth"' in out


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"transport": {"tls": {"enable": True}}}, "certFile"),
        ({"proxies": []}, "exactly one proxy"),
        ({"serverPort": "8782"}, "serverPort"),
        ({"metadatas": {"token": ""}}, "metadatas.token"),
        ({"log": {"level": "debug"}}, 'unknown field "log.level"'),
    ],
)
async def test_stand_in_frpc_is_strict(
    sockdir: Path, frpc_bin: Path, storage: Path, change: dict[str, Any], error: str
) -> None:
    config = Config.from_env(harp_env(sockdir, frpc_bin, 8782, storage))
    path = write_config({**render(config, sockdir / "s.sock"), **change}, sockdir)
    proc = await asyncio.create_subprocess_exec(
        str(frpc_bin), "verify", "-c", str(path), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 1
    assert error in out.decode()


async def test_token_reaches_frps_byte_for_byte(
    sockdir: Path, frpc_bin: Path, storage: Path, frps: FakeFrps, record: Path
) -> None:
    """Through a real file and a real frpc process to the login check (the key reaches frps
    byte for byte, docs/transports.md "What frpc 0.61.1 does")."""
    config = Config.from_env(harp_env(sockdir, frpc_bin, frps.port, storage))
    sup = FrpcSupervisor(config, sockdir / "s.sock")
    await sup.start()
    try:
        await frps.wait_logins(1)
    finally:
        await sup.stop()
    assert frps.logins[0]["token"] == SHARED_KEY
    assert frps.logins[0]["proxy"] == "bee_flow"
    assert frps.logins[0]["remotePort"] == config.app_port
