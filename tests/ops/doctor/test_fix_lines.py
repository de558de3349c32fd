"""Every FAIL doctor can print comes with a fix line. Read from the source (each `Check(...)`
made with FAIL passes a remedy; each problem tuple of the connector check carries one), on top
of checks_of() asserting it in every scenario the doctor tests run."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.procs import REPO

DOCTOR = REPO / "beeflow" / "ops" / "doctor"


def _is_fail(node: ast.AST) -> bool:
    """FAIL itself, or a conditional that may give FAIL."""
    if isinstance(node, ast.Name):
        return node.id == "FAIL"
    if isinstance(node, ast.IfExp):
        return _is_fail(node.body) or _is_fail(node.orelse)
    return False


def _empty(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and not str(node.value or "").strip()


def failures_without_a_fix(source: str) -> list[int]:
    lines: list[int] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "Check":
            status = node.args[1] if len(node.args) > 1 else None
            status = next((k.value for k in node.keywords if k.arg == "status"), status)
            if status is None or not _is_fail(status):
                continue
            remedy = node.args[3] if len(node.args) > 3 else None
            remedy = next((k.value for k in node.keywords if k.arg == "remedy"), remedy)
            if remedy is None or _empty(remedy):
                lines.append(node.lineno)
        elif isinstance(node, ast.Tuple) and node.elts and _is_fail(node.elts[0]):
            # (status, what, remedy): the connector check's problems.
            lines += [node.lineno] if len(node.elts) < 3 or _empty(node.elts[2]) else []
    return lines


@pytest.mark.parametrize("module", sorted(DOCTOR.glob("*.py")), ids=lambda p: p.name)
def test_every_fail_has_a_fix(module: Path) -> None:
    assert failures_without_a_fix(module.read_text()) == [], module.name


def test_the_scan_finds_a_fail_without_a_fix() -> None:
    source = """
Check(name, FAIL, "summary")
Check(name, FAIL, "summary", "")
Check(name, status=FAIL, summary="s")
Check(name, FAIL if bad else WARN, "summary")
problems.append((FAIL, "what", ""))
Check(name, FAIL, "summary", remedy)
Check(name, WARN, "summary")
problems.append((WARN, "what", ""))
"""
    assert failures_without_a_fix(source) == [2, 3, 4, 5, 6]
