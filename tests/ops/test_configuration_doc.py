"""docs/configuration.md cannot drift from the code: the variables it lists are exactly the ones
Config.from_env reads, its defaults are the code's, its "declared" marks are the manifest's, and
its image table is the Dockerfile's."""

from __future__ import annotations

import ast
import re
from typing import Any, Final

import attrs
import pytest

from beeflow.config import Config
from beeflow.errors import ConfigError
from tests.manifest.manifest import load
from tests.manifest.test_info_xml import config_variables
from tests.ops.dockerfile import ROOT, env_of, parse

DOC: Final = ROOT / "docs" / "configuration.md"
BASE: Final = {"APP_SECRET": "x" * 20, "NEXTCLOUD_URL": "http://nc.example"}


@attrs.frozen
class Row:
    name: str
    default: str | None  # the literal default, or None (required / none)
    meaning: str
    default_cell: str


def tables(header: str) -> list[list[list[str]]]:
    """Every markdown table whose header row starts with `header`, as lists of cells."""
    found: list[list[list[str]]] = []
    current: list[list[str]] | None = None
    for line in DOC.read_text().splitlines():
        if not line.startswith("|"):
            current = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if current is None:
            if cells[0] == header:
                current = []
                found.append(current)
            continue
        if set(line.replace("|", "").strip()) <= {"-", " "}:
            continue  # the separator row
        current.append(cells)
    return found


def rows() -> list[Row]:
    out = []
    for table in tables("Variable"):
        for cells in table:
            name = re.fullmatch(r"`([A-Z][A-Z0-9_]*)`", cells[0])
            assert name, cells
            literal = re.fullmatch(r"`([^`]*)`", cells[1])
            default = literal.group(1) if literal else None
            out.append(Row(name.group(1), default, cells[2], cells[1]))
    return out


def comparable(config: Config) -> dict[str, Any]:
    data = attrs.asdict(config, recurse=False)
    data.pop("api_base_url_from_env")  # setting a value at all locks the setup picker
    return data


def code_defaults() -> dict[str, str]:
    """NAME -> the default Config.from_env gives it (`p.get("NAME", "<default>", ...)`)."""
    tree = ast.parse((ROOT / "beeflow" / "config.py").read_text())
    out: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and len(node.args) >= 2:
            name, default = node.args[0], node.args[1]
            if isinstance(name, ast.Constant) and isinstance(name.value, str):
                out[name.value] = ast.unparse(default)
    return out


def test_every_variable_read_is_documented_and_nothing_else() -> None:
    documented = [r.name for r in rows()]
    assert len(documented) == len(set(documented)), "a variable is documented twice"
    read = config_variables()
    defaults = code_defaults()
    missing = [
        f"docs/configuration.md: no row for {name}; add to the table of its section\n"
        f"    | `{name}` | {_cell(defaults.get(name))} | <what it does, its range or form> |"
        for name in sorted(read - set(documented))
    ]
    assert missing == [], "read by Config.from_env but not documented:\n" + "\n".join(missing)
    stale = [
        f"docs/configuration.md: the row {name} names a variable Config.from_env never reads; "
        "remove it or correct the name"
        for name in sorted(set(documented) - read)
    ]
    assert stale == [], "\n".join(stale)


def _cell(default: str | None) -> str:
    """The Default cell for a default as config.py writes it."""
    if default is None:
        return "required"
    try:
        value = ast.literal_eval(default)
    except ValueError:
        return f"`{default}`"
    return f"`{value}`" if value != "" else "(none)"


@pytest.mark.parametrize("row", [r for r in rows() if r.default is not None], ids=lambda r: r.name)
def test_documented_defaults_are_the_codes(row: Row) -> None:
    assert row.default is not None
    env = dict(BASE, **{row.name: row.default})
    if row.name.startswith("HP_") and row.name != "HP_SHARED_KEY":
        env.update(HP_SHARED_KEY="k", HP_FRP_ADDRESS="harp")
        base = dict(BASE, HP_SHARED_KEY="k", HP_FRP_ADDRESS="harp")
    else:
        base = dict(BASE)
    assert comparable(Config.from_env(env)) == comparable(Config.from_env(base))


def test_required_variables_are_the_ones_config_requires() -> None:
    harp = dict(BASE, HP_SHARED_KEY="k", HP_FRP_ADDRESS="harp")
    required = {r.name for r in rows() if r.default_cell.startswith("required")}
    assert required == {"APP_SECRET", "NEXTCLOUD_URL", "HP_FRP_ADDRESS"}
    for name in sorted(required):
        env = {k: v for k, v in harp.items() if k != name}
        with pytest.raises(ConfigError) as caught:
            Config.from_env(env)
        assert name in caught.value.problems


def test_declared_marks_match_the_manifest() -> None:
    marked = {r.name for r in rows() if "*Declared" in r.meaning}
    declared = {
        (v.findtext("name") or "")
        for v in load().findall("external-app/environment-variables/variable")
    }
    assert marked == declared


def test_image_defaults_match_the_dockerfile() -> None:
    (table,) = tables("In the image")
    documented = {re.sub(r"`", "", c[0]): re.sub(r"`", "", c[1]) for c in table}
    image = env_of(parse(), "runtime")
    image.pop("PATH")
    image.pop("PYTHONDONTWRITEBYTECODE")
    image.pop("PYTHONUNBUFFERED")
    assert documented == image
