"""The error codes the connector can answer with, read from its source (beeflow/, the demo's
stand-ins excepted), where each is written as a literal string:

* `code="x"` in any call, `code = "x"` in a class body (the error tree), `{"code": "x"}`,
  `something["code"] = "x"`;
* a literal passed, by position or by name, to the parameter called `code` of a function,
  method or class of beeflow (`self.fail(request, "signature_missing", ...)`,
  `SigFormatError("signature_malformed")`, `answer(503, ..., "too_many_connections", ...)`);
* the codes made from others at run time: aiohttp's errors (web.errors), the `/nc` proxy's
  `nextcloud_*` names for the streaming core's `upstream_*` codes (proxy.nc.handler), and
  `destination_*` for a Destination the path check refuses (proxy.nc.destination).

A code built any other way (an f-string, a variable) is not found: write it as a literal."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from tests.procs import REPO

PACKAGE: Final = REPO / "beeflow"
CODE: Final = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*$")


def _sources() -> Iterator[tuple[Path, ast.Module]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        if "demo" not in path.relative_to(PACKAGE).parts:
            yield path, ast.parse(path.read_text(encoding="utf-8"))


def _code_parameters(trees: list[ast.Module]) -> dict[str, int]:
    """name -> position of its `code` parameter, for every function, method and class (its
    __init__) of beeflow that has one; `self` is not counted for methods and classes."""
    found: dict[str, int] = {}

    def record(name: str, fn: ast.FunctionDef | ast.AsyncFunctionDef, method: bool) -> None:
        names = [a.arg for a in [*fn.args.posonlyargs, *fn.args.args]]
        if method and names and names[0] in ("self", "cls"):
            names = names[1:]
        if "code" in names:
            found[name] = names.index("code")

    for tree in trees:
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                record(node.name, node, False)
            elif isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                        record(node.name if item.name == "__init__" else item.name, item, True)
    return found


def _literals(node: ast.AST | None) -> list[str]:
    """A code literal, or the literals of both branches of `a if c else b`."""
    if isinstance(node, ast.IfExp):
        return _literals(node.body) + _literals(node.orelse)
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and CODE.match(node.value):
        return [node.value]
    return []


def _is_code_item(target: ast.AST) -> bool:
    """`something["code"]`."""
    return (
        isinstance(target, ast.Subscript)
        and isinstance(target.slice, ast.Constant)
        and target.slice.value == "code"
    )


def _callee(call: ast.Call) -> str:
    func = call.func
    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Name):
        return func.id
    return ""


def source_codes() -> dict[str, set[str]]:
    """code -> the modules (relative to the repository) that write it."""
    modules = list(_sources())
    parameters = _code_parameters([tree for _, tree in modules])
    codes: dict[str, set[str]] = {}

    def add(node: ast.AST | None, path: Path) -> None:
        for value in _literals(node):
            codes.setdefault(value, set()).add(str(path.relative_to(REPO)))

    for path, tree in modules:
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                for keyword in node.keywords:
                    if keyword.arg == "code":
                        add(keyword.value, path)
                index = parameters.get(_callee(node))
                if index is not None and index < len(node.args):
                    add(node.args[index], path)
            elif isinstance(node, ast.ClassDef):
                for item in node.body:
                    targets: list[ast.expr] = []
                    if isinstance(item, ast.AnnAssign):
                        targets = [item.target]
                    elif isinstance(item, ast.Assign):
                        targets = item.targets
                    if any(isinstance(t, ast.Name) and t.id == "code" for t in targets):
                        add(getattr(item, "value", None), path)
            elif isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if isinstance(key, ast.Constant) and key.value == "code":
                        add(value, path)
            elif isinstance(node, ast.Assign) and len(node.targets) == 1:
                first = node.targets[0]
                if _is_code_item(first):
                    add(node.value, path)
                elif isinstance(first, ast.Tuple) and isinstance(node.value, ast.Tuple):
                    # out["code"], out["error"] = "timeout", "..."
                    for part, value in zip(first.elts, node.value.elts, strict=False):
                        if _is_code_item(part):
                            add(value, path)
    return codes


def run_time_codes(found: dict[str, set[str]]) -> dict[str, set[str]]:
    """The codes made from others when the connector runs."""
    from beeflow.errors import BeeflowError
    from beeflow.proxy.nc.handler import _as_nextcloud_error
    from beeflow.web.errors import _AIOHTTP_CODES

    out: dict[str, set[str]] = {}
    for code in [*_AIOHTTP_CODES.values(), "http_error"]:
        out.setdefault(code, set()).add("beeflow/web/errors.py")
    for code, where in found.items():
        renamed = _as_nextcloud_error(BeeflowError(code=code)).instance_code
        if renamed != code:
            out.setdefault(renamed, set()).add("beeflow/proxy/nc/handler.py")
        # proxy.nc.destination refuses a Destination whose path the /nc path check refuses,
        # as "destination_" + that check's code.
        if "beeflow/proxy/nc/path.py" in where:
            out.setdefault("destination_" + code, set()).add("beeflow/proxy/nc/destination.py")
    return out


def all_codes() -> dict[str, set[str]]:
    found = source_codes()
    for code, where in run_time_codes(found).items():
        found.setdefault(code, set()).update(where)
    return found


def _error_classes() -> dict[str, int]:
    """Every class of the error tree (beeflow.errors.BeeflowError and its subclasses anywhere
    in beeflow) by name, with its status."""
    import importlib
    import pkgutil

    import beeflow
    from beeflow.errors import BeeflowError

    for module in pkgutil.walk_packages(beeflow.__path__, "beeflow."):
        if not module.name.startswith("beeflow.demo") and module.name != "beeflow.__main__":
            importlib.import_module(module.name)
    out: dict[str, int] = {}
    pending: list[type[BeeflowError]] = [BeeflowError]
    while pending:
        cls = pending.pop()
        out[cls.__name__] = cls.status
        pending += cls.__subclasses__()
    return out


def known_statuses() -> dict[str, set[int]]:
    """code -> the statuses it is answered with, where the source says so plainly: a class of
    the error tree made with `code="x"` (its class's status, or a literal `status=`)."""
    classes = _error_classes()
    out: dict[str, set[int]] = {}
    for _, tree in _sources():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or _callee(node) not in classes:
                continue
            values = {k.arg: k.value for k in node.keywords}
            codes = _literals(values.get("code"))
            status = values.get("status")
            if isinstance(status, ast.Constant) and isinstance(status.value, int):
                number = status.value
            elif status is None:
                number = classes[_callee(node)]
            else:
                continue  # computed
            for code in codes:
                out.setdefault(code, set()).add(number)
    return out
