""".ci/run runs every check whatever the others did, lists each failure and exits non-zero when
any failed. Run here on a copy of the script whose checks are stand-ins that pass or fail on
demand (the real ones take minutes)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Final

from tests.procs import REPO

CHECKS: Final = (
    "tests (scripts/test",
    "coverage",
    "bench's own tests",
    "ruff",
    "ruff format",
    "mypy (strict)",
    "import-linter",
    "hadolint",
)


def executable(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/usr/bin/env bash\n" + text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def ci_copy(root: Path, *, failing: dict[str, int], environment_ok: bool = True) -> Path:
    """A checkout holding the real .ci/run and stand-ins for everything it calls. `failing`
    maps a command line (as the stand-ins see it) to its exit status."""
    (root / ".ci").mkdir()
    shutil.copy2(REPO / ".ci" / "run", root / ".ci" / "run")
    log = root / "calls.log"
    cases = "".join(f'    "{cmd}") echo failed; exit {code};;\n' for cmd, code in failing.items())
    stand_in = f'echo "$(basename "$0") $*" >> {log}\ncase "$(basename "$0") $*" in\n{cases}esac\n'
    print_python = (
        f'echo "{root}/venv/bin/python"; exit 0' if environment_ok else "echo no pip >&2; exit 7"
    )
    executable(
        root / "scripts" / "test",
        f'if [ "$1" = --print-python ]; then {print_python}; fi\n{stand_in}',
    )
    for name in ("python", "lint-imports", "hadolint"):
        executable(root / "venv" / "bin" / name, stand_in)
    return log


def run(root: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CI": "1"}
    return subprocess.run(
        [str(root / ".ci" / "run")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_every_check_runs_and_every_failure_is_listed(tmp_path: Path) -> None:
    log = ci_copy(
        tmp_path,
        failing={
            "test -p no:cacheprovider": 3,
            "python -m ruff check .": 1,
            "hadolint Dockerfile": 4,
        },
    )
    done = run(tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    calls = log.read_text().splitlines()
    assert calls == [
        "test -p no:cacheprovider",
        "python -m coverage report",
        "python -m pip install -q -e .[bench]",
        "python -m pytest -q -p no:cacheprovider bench/tests",
        "python -m ruff check .",
        "python -m ruff format --check .",
        "python -m mypy",
        "lint-imports ",
        "hadolint Dockerfile",
    ]
    out = done.stdout
    for name in CHECKS:
        assert f"== {name}" in out
    assert "CI FAILED: 3 check(s):" in out
    summary = out.split("CI FAILED", 1)[1]
    assert "tests (scripts/test, the README's test command), under coverage (exit 3)" in summary
    assert "  - ruff (exit 1)" in summary
    assert "  - hadolint (exit 4)" in summary
    assert "mypy" not in summary
    assert "CI passed" not in out


def test_all_passing_is_a_pass(tmp_path: Path) -> None:
    ci_copy(tmp_path, failing={})
    done = run(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.rstrip().endswith("CI passed")


def test_a_failing_coverage_floor_is_a_failure(tmp_path: Path) -> None:
    """`coverage report` exits 2 under its floor; the `| tail -1` must not hide that."""
    ci_copy(tmp_path, failing={"python -m coverage report": 2})
    done = run(tmp_path)
    assert done.returncode == 1
    assert "  - coverage (fail_under in pyproject.toml is the floor) (exit 2)" in done.stdout


def test_the_tests_run_with_the_common_ports_busy(tmp_path: Path) -> None:
    log = ci_copy(tmp_path, failing={})
    script = tmp_path / "scripts" / "test"
    script.write_text(script.read_text().replace("$*", "$* ports=$BEEFLOW_TEST_BUSY_PORTS"))
    assert run(tmp_path).returncode == 0
    assert "test -p no:cacheprovider ports=common" in log.read_text()


def test_no_environment_is_one_clear_failure(tmp_path: Path) -> None:
    log = ci_copy(tmp_path, failing={}, environment_ok=False)
    done = run(tmp_path)
    assert done.returncode == 1
    assert "scripts/test could not set up Python" in done.stdout
    assert "no pip" in done.stderr
    assert not log.exists()
