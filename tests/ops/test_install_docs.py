"""The operator docs stay runnable and true: the manual-install --json-info is the manifest's, its
shell here-document really produces that JSON, every occ command and option exists, every
variable named exists, and the image named is the manifest's."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
from pathlib import Path
from typing import Final

import pytest

from tests.manifest.manifest import json_routes, load
from tests.manifest.test_info_xml import config_variables
from tests.ops.dockerfile import ROOT

DOCS: Final = ROOT / "docs"
OPERATOR_DOCS: Final = (
    "install-harp.md",
    "install-legacy.md",
    "install-manual.md",
    "install-image.md",
    "configuration.md",
    "troubleshooting.md",
    "security.md",
)
# occ commands and options that exist (AppAPI's and Nextcloud core's).
OCC: Final[dict[str, frozenset[str]]] = {
    "app_api:daemon:register": frozenset(
        {
            "--net",
            "--harp",
            "--harp_frp_address",
            "--harp_shared_key",
            "--harp_docker_socket_port",
            "--harp_exapp_direct",
            "--compute_device",
            "--set-default",
            "--haproxy_password",
        }
    ),
    "app_api:app:register": frozenset(
        {"--info-xml", "--json-info", "--wait-finish", "--silent", "--env", "--mount"}
    ),
    "app_api:app:update": frozenset({"--info-xml", "--json-info", "--wait-finish", "--all"}),
    "app_api:app:unregister": frozenset({"--rm-data", "--silent", "--force"}),
    "app_api:app:list": frozenset(),
    "app_api:daemon:registry:add": frozenset({"--registry-from", "--registry-to"}),
    "app_api:daemon:registry:list": frozenset(),
    "app_api:app:enable": frozenset(),
    "app_api:app:disable": frozenset(),
    "security:bruteforce:reset": frozenset(),
    "security:bruteforce:attempts": frozenset(),
    "maintenance:mode": frozenset({"--off", "--on"}),
    "config:app:set": frozenset({"--value"}),
    "upgrade": frozenset(),
}
# Variables of other components the docs may name (HaRP's container, AppAPI's unused ones).
FOREIGN_VARIABLES: Final = frozenset(
    {
        "HP_TIMEOUT_SERVER",
        "HP_TIMEOUT_TUNNEL",
        "HP_BLACKLIST_COUNT",
        "HP_BLACKLIST_WINDOW",
        "HP_TRUSTED_PROXY_IPS",
        "HP_FRP_DISABLE_TLS",
        "HP_FRP_CERT_VALIDITY_DAYS",
        "HP_SESSION_LIFETIME",
        "NC_INSTANCE_URL",
        "NC_HAPROXY_PASSWORD",
        "APP_DISPLAY_NAME",
        # The Dockerfile's build argument (install-image.md), not read at run time.
        "BEEFLOW_VERSION",
    }
)


def text(name: str) -> str:
    return (DOCS / name).read_text()


def shell_commands(doc: str) -> list[str]:
    """Commands in ```sh blocks, continuation lines joined."""
    out: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", doc, re.DOTALL):
        pending = ""
        in_heredoc: str | None = None
        for line in block.splitlines():
            if in_heredoc is not None:
                if line.strip() == in_heredoc:
                    in_heredoc = None
                continue
            heredoc = re.search(r"<<'?(\w+)'?", line)
            if heredoc:
                in_heredoc = heredoc.group(1)
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            out.append((pending + line).strip())
            pending = ""
    return [c for c in out if c and not c.startswith("#")]


def occ_calls(doc: str) -> list[list[str]]:
    """The words after `occ` of each occ invocation (pipelines and lists split properly)."""
    calls = []
    for command in shell_commands(doc):
        lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words: list[str] = []
        for token in [*lexer, ";"]:
            if token in ("|", "||", "&&", ";", "&"):
                if "occ" in words:
                    calls.append(words[words.index("occ") + 1 :])
                words = []
            else:
                words.append(token)
    return calls


@pytest.mark.parametrize("name", OPERATOR_DOCS)
def test_occ_commands_and_options_exist(name: str) -> None:
    for words in occ_calls(text(name)):
        command = words[0]
        assert command in OCC, f"{name}: unknown occ command {command}"
        options = {w.split("=", 1)[0] for w in words[1:] if w.startswith("--")}
        assert options <= OCC[command], f"{name}: {command} has no {options - OCC[command]}"
    for command in shell_commands(text(name)):
        assert "app:setenv" not in command, "there is no occ app_api:app:setenv"


@pytest.mark.parametrize("name", OPERATOR_DOCS)
def test_every_variable_named_exists(name: str) -> None:
    known = config_variables() | FOREIGN_VARIABLES
    named = set(re.findall(r"\b((?:BEEFLOW|HP|APP|NC)_[A-Z0-9_]*[A-Z0-9])\b", text(name)))
    assert named - known == set(), f"{name} names unknown variables"


def test_install_guides_cover_every_supported_path() -> None:
    harp, legacy, manual = (text(n) for n in OPERATOR_DOCS[:3])
    assert "--harp --harp_frp_address" in harp
    assert "docker-install" in harp
    assert "--haproxy_password" in legacy
    assert "manual-install" in manual
    assert "--json-info" in manual
    image = load().findtext("external-app/docker-install/image")
    registry = load().findtext("external-app/docker-install/registry")
    assert f"{registry}/{image}" in harp


def _heredoc(doc: str) -> tuple[str, str]:
    """(the here-document body, the command block it sits in) of install-manual.md."""
    for block in re.findall(r"```sh\n(.*?)```", doc, re.DOTALL):
        match = re.search(r"<<'EOF'\n(.*?)\nEOF\n", block, re.DOTALL)
        if match:
            return match.group(1), block
    raise AssertionError("no <<'EOF' here-document in install-manual.md")


def test_manual_json_info_is_the_manifest() -> None:
    doc = text("install-manual.md")
    body, _ = _heredoc(doc)
    info = json.loads(body.replace("@APP_SECRET@", "s"))
    root = load()
    assert info["id"] == root.findtext("id")
    assert info["name"] == root.findtext("name")
    assert info["version"] == root.findtext("version")
    assert info["routes"] == json_routes(root)
    daemons = {c[1] for c in occ_calls(doc) if c[0] == "app_api:daemon:register"}
    assert info["daemon_config_name"] in daemons
    assert f"APP_PORT={info['port']}" in doc
    assert 23000 <= info["port"] <= 23999


async def test_the_manual_shell_steps_produce_that_json(tmp_path: Path) -> None:
    """Run the doc's here-document and sed with bash: the backslashes the routes need survive."""
    _, block = _heredoc(text("install-manual.md"))
    script = block.split("timeout 600 occ")[0].replace("/tmp/bee_flow.json", str(tmp_path / "j"))
    secret = "Ab3-_secret_" + "x" * 40
    proc = await asyncio.create_subprocess_exec(
        "bash",
        "-euo",
        "pipefail",
        "-c",
        script,
        env={"APP_SECRET": secret, "PATH": "/usr/bin:/bin"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, out
    produced = json.loads((tmp_path / "j").read_text())
    assert produced["secret"] == secret
    assert produced["routes"] == json_routes()
    assert all(r["url"].startswith("^\\/?") for r in produced["routes"])
