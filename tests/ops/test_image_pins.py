"""The image is named by version, never `latest`, and everything that names it agrees: the
manifest's <image-tag> and <version>, beeflow.__version__, the Dockerfile's version label, the
build commands of docs/install-image.md and its table of pins (base image, frpc)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from typing import Final

from beeflow import __version__
from tests.manifest.manifest import load
from tests.ops.dockerfile import ROOT, parse
from tests.ops.test_install_docs import shell_commands

DOC: Final = (ROOT / "docs" / "install-image.md").read_text()
INSTALL_DOCS: Final = ("install-harp.md", "install-legacy.md", "install-manual.md")


def manifest_image() -> tuple[str, str]:
    block = load().find("external-app/docker-install")
    assert block is not None
    return f"{block.findtext('registry')}/{block.findtext('image')}", block.findtext(
        "image-tag"
    ) or ""


def build_args() -> dict[str, str]:
    """The Dockerfile's ARG defaults (every stage)."""
    out: dict[str, str] = {}
    for ins in parse():
        if ins.keyword == "ARG" and "=" in ins.args:
            name, _, value = ins.args.partition("=")
            out[name.strip()] = value.strip()
    return out


def test_the_manifest_names_the_image_by_version() -> None:
    _, tag = manifest_image()
    assert tag != "latest"
    assert tag == load().findtext("version") == __version__


def test_the_dockerfile_labels_that_version() -> None:
    args = build_args()
    assert args["BEEFLOW_VERSION"] == __version__
    labels = " ".join(i.args for i in parse() if i.keyword == "LABEL" and i.stage == "runtime")
    assert 'org.opencontainers.image.version="${BEEFLOW_VERSION}"' in labels


def test_the_build_commands_tag_the_manifests_image() -> None:
    image, tag = manifest_image()
    builds = [shlex.split(c) for c in shell_commands(DOC) if c.startswith("docker buildx build")]
    assert len(builds) == 2
    for words in builds:
        assert f"BEEFLOW_VERSION={tag}" in words
        target = words[words.index("-t") + 1]
        name, _, target_tag = target.rpartition(":")
        assert target_tag == tag
        assert name == image or name.endswith("/bee-flow/connector")
        assert words[-1] == "."
    assert any(f"{image}:{tag}" in c for c in shell_commands(DOC))


def test_the_table_of_pins_is_the_dockerfiles() -> None:
    args = build_args()
    assert f"`{args['PYTHON_IMAGE']}`" in DOC
    assert f"`{args['NODE_IMAGE']}`" in DOC
    pin = tomllib.loads((ROOT / "frpc" / "pin.toml").read_text())
    assert f"`{pin['version']}`" in DOC
    assert set(pin["sha256"]) == {"amd64", "arm64"}
    assert "(amd64 and arm64)" in DOC
    assert f"version `{__version__}`" in DOC


def test_the_frpc_command_is_the_downloaders() -> None:
    (command,) = [c for c in shell_commands(DOC) if "fetch_frpc.py" in c]
    words = shlex.split(command)
    options = {w for w in words if w.startswith("--")}
    usage = subprocess.run(
        [sys.executable, str(ROOT / "docker" / "fetch_frpc.py"), "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert all(option in usage for option in options)
    assert words[words.index("--pin") + 1] == "frpc/pin.toml"


def test_the_install_docs_name_the_image_by_version_and_the_setup_page() -> None:
    image, tag = manifest_image()
    harp, legacy, manual = ((ROOT / "docs" / n).read_text() for n in INSTALL_DOCS)
    assert f"{image}:{tag}" in harp
    assert f"{image}:{tag}" in legacy
    assert re.search(r"https://[^/\s`]+/exapps/bee_flow/setup`", harp)
    assert re.search(r"https://[^/\s`]+/index\.php/apps/app_api/proxy/bee_flow/setup`", legacy)
    assert "/index.php/apps/app_api/proxy/bee_flow/setup`" in manual
    assert "/exapps/bee_flow/setup`" in manual
    for doc in (harp, legacy, manual):
        assert "install-image.md" in doc
