"""The docs' tables are the code's: the routes and error codes of docs/reference.md are exactly
the connector's, every `code` any doc's table names exists, and each rule docs/configuration.md
states about a variable (ranges, lengths, HP_SHARED_KEY's characters) is the rule the code
applies, in `serve` and in `sign` alike. A failure names the row to add, change or remove.
(The variables themselves and their defaults: tests/ops/test_configuration_doc.py.)"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Final

import attrs
import pytest

from beeflow.app import make_app
from beeflow.config import Config
from beeflow.errors import ConfigError
from beeflow.ops.sign import SignError, load_key
from beeflow.web.auth import ROUTE_POLICIES
from tests.docs.codes import all_codes, known_statuses
from tests.helpers import base_env
from tests.ops.test_configuration_doc import rows
from tests.ports import refused_url
from tests.procs import REPO

DOCS: Final = REPO / "docs"
REFERENCE: Final = DOCS / "reference.md"
BASE: Final = {"APP_SECRET": "x" * 20, "NEXTCLOUD_URL": "http://nc.example"}
HARP: Final = {**BASE, "HP_SHARED_KEY": "k", "HP_FRP_ADDRESS": "harp"}


@attrs.frozen
class Table:
    doc: str
    header: list[str]
    rows: list[list[str]]


def tables(path: Path) -> list[Table]:
    found: list[Table] = []
    current: Table | None = None
    for line in path.read_text().splitlines():
        if not line.startswith("|"):
            current = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if current is None:
            current = Table(path.name, cells, [])
            found.append(current)
        elif not set(line.replace("|", "").strip()) <= {"-", " "}:
            current.rows.append(cells)
    return found


def reference_table(first_header: str) -> Table:
    (table,) = [t for t in tables(REFERENCE) if t.header[0] == first_header]
    return table


# ------------------------------------------------------------------ routes


def code_routes() -> dict[tuple[str, str], str]:
    """(canonical path, access) -> the Method cell docs/reference.md must show."""
    storage = Path(tempfile.mkdtemp(prefix="bfdrift"))
    app = make_app(Config.from_env(base_env(refused_url(), storage)), run_at_boot=False)
    methods: dict[tuple[str, str], set[str]] = {}
    for route, policy in app[ROUTE_POLICIES].items():
        key = (route.resource.canonical if route.resource else "?", policy.access.name)
        methods.setdefault(key, set()).add(route.method)
    storage.rmdir()
    return {
        key: "any"
        if "*" in verbs
        else ", ".join(f"`{m}`" for m in sorted(verbs)).replace("`, `", ", ")
        for key, verbs in methods.items()
    }


def doc_routes() -> dict[tuple[str, str], str]:
    table = reference_table("Method")
    assert table.header == ["Method", "Path", "Access", "What it is"]
    out: dict[tuple[str, str], str] = {}
    for method, path, access, _ in table.rows:
        key = (path.strip("`"), access)
        assert key not in out, f"docs/reference.md, Routes: `{path}` ({access}) is listed twice"
        out[key] = method
    return out


def test_every_route_has_its_row_and_every_row_a_route() -> None:
    code, doc = code_routes(), doc_routes()
    problems = [
        f"docs/reference.md, table Routes: no row for {methods} `{path}` ({access}); add\n"
        f"    | {methods} | `{path}` | {access} | <what it is> |"
        for (path, access), methods in sorted(code.items())
        if (path, access) not in doc
    ]
    problems += [
        f"docs/reference.md, table Routes: the row `{path}` ({access}) names no route of "
        "make_app(); remove it or correct its path and access"
        for path, access in sorted(doc.keys() - code.keys())
    ]
    problems += [
        f"docs/reference.md, table Routes: `{path}` ({access}) takes {code[key]}, the row says "
        f"{doc[key]}"
        for key in sorted(code.keys() & doc.keys())
        for path, access in [key]
        if code[key] != doc[key]
    ]
    assert problems == [], "\n".join(problems)


# ------------------------------------------------------------------ error codes

_CODE_IN_CELL: Final = re.compile(r"`([a-z][a-z0-9]*(?:_[a-z0-9]+)*)`")


def doc_codes() -> dict[str, set[int]]:
    """The Error codes table: code -> the statuses its row names."""
    table = reference_table("`code`")
    assert table.header == ["`code`", "Status", "Answered by", "See"]
    out: dict[str, set[int]] = {}
    for cells in table.rows:
        (code,) = _CODE_IN_CELL.findall(cells[0])
        assert code not in out, f"docs/reference.md, Error codes: `{code}` is listed twice"
        out[code] = {int(n) for n in re.findall(r"\b\d{3}\b", cells[1])}
    return out


def test_every_code_has_its_row_and_every_row_a_code() -> None:
    code, doc = all_codes(), doc_codes()
    statuses = known_statuses()
    problems = [
        f"docs/reference.md, table Error codes: no row for `{name}` (written in "
        f"{', '.join(sorted(code[name]))}); add, in alphabetical order,\n"
        f"    | `{name}` | {', '.join(map(str, sorted(statuses.get(name, set())))) or '<status>'}"
        " | <what answers it, and when> | <the doc that explains it> |"
        for name in sorted(code.keys() - doc.keys())
    ]
    problems += [
        f"docs/reference.md, table Error codes: the row `{name}` is no code the connector "
        "writes (tests/docs/codes.py says how codes are found); remove or rename it"
        for name in sorted(doc.keys() - code.keys())
    ]
    problems += [
        f"docs/reference.md, table Error codes: `{name}` is answered with "
        f"{sorted(statuses[name])}, the row says {sorted(doc[name])}"
        for name in sorted(doc.keys() & statuses.keys())
        if not statuses[name] <= doc[name]
    ]
    assert problems == [], "\n".join(problems)


def test_the_codes_table_is_in_order() -> None:
    names = list(doc_codes())
    assert names == sorted(names)


def test_every_code_a_doc_table_names_exists() -> None:
    """Any table of any doc with a `code` column (bad-input.md, proxy.md, troubleshooting.md,
    nc-proxy.md, ...) names only codes the connector writes."""
    known = all_codes()
    stale: list[str] = []
    for path in sorted(DOCS.glob("*.md")):
        for table in tables(path):
            columns = [
                i for i, h in enumerate(table.header) if re.search(r"\bcode\b", h.strip("`"))
            ]
            for cells in table.rows:
                for i in columns:
                    for name in _CODE_IN_CELL.findall(cells[i] if i < len(cells) else ""):
                        if name not in known:
                            stale.append(f"docs/{path.name}: `{name}` ({cells[0]})")
    assert stale == [], "codes in the docs that the connector does not write:\n" + "\n".join(stale)


def test_the_collector_finds_every_way_a_code_is_written() -> None:
    """The forms tests/docs/codes.py reads, each found in the real source."""
    codes = all_codes()
    assert "beeflow/web/auth.py" in codes["admin_required"]  # code="..." in a call
    assert "beeflow/errors.py" in codes["bad_request"]  # a class of the error tree
    assert "beeflow/lifecycle.py" in codes["enabled_value_ignored"]  # {"code": "..."}
    assert "beeflow/setup/probe.py" in codes["redirect"]  # out["code"] = "..."
    assert "beeflow/setup/probe.py" in codes["timeout"]  # out["code"], out["error"] = ...
    assert "beeflow/proxy/nc/signatures.py" in codes["signature_missing"]  # a `code` parameter
    assert "beeflow/transports/guard.py" in codes["too_many_connections"]  # the same, by position
    assert "beeflow/setup/actions.py" in codes["email_not_in_org"]  # a if c else b
    assert "beeflow/web/errors.py" in codes["uri_too_long"]  # aiohttp's, at run time
    assert "beeflow/proxy/nc/handler.py" in codes["nextcloud_unreachable"]  # renamed
    assert "beeflow/proxy/nc/destination.py" in codes["destination_path_traversal"]


# ------------------------------------------------------------------ the variables' rules

_DASH: Final = "\u2013"  # the docs write ranges with an en dash: (1\u20133600)
_RANGE: Final = re.compile(r"\((\d+(?:\.\d+)?)" + _DASH + r"(\d+(?:\.\d+)?)\)")


def problems(name: str, value: str) -> dict[str, str]:
    env = HARP if name.startswith("HP_") else BASE
    try:
        Config.from_env({**env, name: value})
    except ConfigError as exc:
        return exc.problems
    return {}


def accepted(name: str, value: str) -> bool:
    found = problems(name, value)
    assert set(found) <= {name}, found
    return not found


RANGED: Final = [(r.name, m.groups()) for r in rows() if (m := _RANGE.search(r.meaning))]


def test_the_ranges_are_found() -> None:
    assert {name for name, _ in RANGED} >= {
        "BEEFLOW_JWT_TTL_SECONDS",
        "BEEFLOW_AUTH_FAILURE_BUDGET",
        "BEEFLOW_HEAD_TIMEOUT_SECONDS",
    }


@pytest.mark.parametrize(("name", "bounds"), RANGED, ids=[n for n, _ in RANGED])
def test_a_documented_range_is_the_codes(name: str, bounds: tuple[str, str]) -> None:
    low, high = bounds
    step = 0.01 if "." in low + high else 1
    below = f"{float(low) - step:g}" if step < 1 else str(int(low) - 1)
    above = f"{float(high) + step:g}" if step < 1 else str(int(high) + 1)
    where = f"docs/configuration.md says {name} is ({low}{_DASH}{high})"
    assert accepted(name, low), f"{where}, but {low} is refused"
    assert accepted(name, high), f"{where}, but {high} is refused"
    assert not accepted(name, below), f"{where}, but {below} is accepted"
    assert not accepted(name, above), f"{where}, but {above} is accepted"


def meaning(name: str) -> str:
    (row,) = [r for r in rows() if r.name == name]
    return row.meaning


# (variable, what its row says, values the code must accept, values it must refuse)
RULES: Final = [
    (
        "HP_SHARED_KEY",
        "spaces included and kept as they are",
        ["a key with spaces", " padded "],
        [],
    ),
    ("HP_SHARED_KEY", "printable ASCII", ["~!#$%&()*+,-./:;<=>?@[]^_`{|}"], ["clé", "tab\there"]),
    ("HP_SHARED_KEY", 'no `"` or `\\` inside', ["it's"], ['a"b', "a\\b"]),
    ("BEEFLOW_TENANT_KEY", "at least 16 characters", ["k" * 16, "auto", ""], ["k" * 15]),
    ("HP_EXAPP_SOCK", "at most 107 bytes", ["/tmp/" + "s" * 102], ["/tmp/" + "s" * 103]),
]


@pytest.mark.parametrize(
    ("name", "said", "good", "bad"), RULES, ids=[f"{r[0]}: {r[1]}" for r in RULES]
)
def test_a_documented_rule_is_the_codes(
    name: str, said: str, good: list[str], bad: list[str]
) -> None:
    assert said in meaning(name), f"docs/configuration.md's {name} row no longer says {said!r}"
    for value in good:
        assert accepted(name, value), f"{name}={value!r} is refused, the doc says {said!r}"
    for value in bad:
        assert not accepted(name, value), f"{name}={value!r} is accepted, the doc says {said!r}"


def test_spaces_in_the_shared_key_reach_frpc_unchanged() -> None:
    config = Config.from_env({**HARP, "HP_SHARED_KEY": "' a b '"})
    assert config.hp_shared_key == " a b "


@pytest.mark.parametrize("key", ["k" * 15, "k" * 16, "abc12", " " + "k" * 16 + " "])
def test_sign_takes_exactly_the_keys_serve_takes(key: str, tmp_path: Path) -> None:
    """BEEFLOW_TENANT_KEY, a --key-file and a cached tenant-key.json: `sign` signs with a key
    exactly when `serve` would use it."""
    serve_takes = accepted("BEEFLOW_TENANT_KEY", key)
    raw = tmp_path / "key.txt"
    raw.write_text(key)
    cached = tmp_path / "tenant-key.json"
    cached.write_text(json.dumps({"tenantKey": key}))
    attempts = [
        (None, {"BEEFLOW_TENANT_KEY": key}),
        (raw, {}),
        (None, {"APP_PERSISTENT_STORAGE": str(tmp_path)}),
    ]
    for key_file, env in attempts:
        refusal = sign_refusal(key_file, env)
        if serve_takes:
            assert refusal is None, f"sign refuses what serve takes: {refusal}"
        else:
            assert refusal is not None, f"sign signs with a key serve refuses ({key_file or env})"
            assert key.strip() not in refusal  # never quoted


def sign_refusal(key_file: Path | None, env: dict[str, str]) -> str | None:
    try:
        load_key(key_file, env)
    except SignError as exc:
        return str(exc)
    return None
