"""The image's build stage, replayed without a Docker engine: exactly the files its COPY lines
put into /src (after .dockerignore), then the wheel `pip install .` builds from them. A package
file the build stage does not copy (commit 4e835b6's data files under spa/) fails here, not in
`docker build`."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest

from tests.ops.dockerfile import ROOT, Instruction, ignored, parse

BUILD_STAGE = "build"


def _build_stage() -> list[Instruction]:
    return [i for i in parse() if i.stage == BUILD_STAGE]


def _context_files(source: Path) -> Iterator[Path]:
    """What of `source` reaches the build context: .dockerignore decides, like Docker."""
    if source.is_file():
        if not ignored(source.relative_to(ROOT).as_posix()):
            yield source
        return
    for path in sorted(source.rglob("*")):
        if path.is_file() and not ignored(path.relative_to(ROOT).as_posix()):
            yield path


def assemble(instructions: list[Instruction], target: Path) -> list[str]:
    """Copy what the stage's COPY lines copy (Docker's rules: a directory's contents go into the
    destination; files go into a destination ending in / under their own name) into `target`,
    which stands for the stage's WORKDIR. Returns the files, relative to `target`."""
    workdir = PurePosixPath("/")
    copied: list[str] = []
    for ins in instructions:
        if ins.keyword == "WORKDIR":
            workdir = workdir / ins.args.strip()
            continue
        if ins.keyword != "COPY":
            continue
        assert "from" not in ins.flags(), "the build stage copies only from the build context"
        *sources, dest = ins.words()
        base = PurePosixPath(dest) if dest.startswith("/") else workdir / dest
        relative = base.relative_to(workdir)
        for src in sources:
            source = ROOT / src.rstrip("/")
            assert source.exists(), f"COPY {src}: not in the repository"
            for file in _context_files(source):
                if source.is_dir():
                    out = relative / file.relative_to(source).as_posix()
                elif dest.endswith("/") or len(sources) > 1:
                    out = relative / file.name
                else:
                    out = relative
                destination = target / out
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(file, destination)
                copied.append(out.as_posix())
    return copied


def _pip_install(instructions: list[Instruction]) -> list[str]:
    """The build stage's `pip install` arguments after `install`."""
    for ins in instructions:
        if ins.keyword == "RUN" and "pip install" in ins.args:
            words = shlex.split(ins.args)
            return words[words.index("install") + 1 :]
    raise AssertionError("the build stage runs no pip install")


def test_the_build_stage_installs_the_project_from_its_workdir() -> None:
    args = _pip_install(_build_stage())
    # The project copied into WORKDIR (with its [speed] extra), nothing fetched by name.
    assert args[-1] in (".", ".[speed]"), args
    assert "-c" in args  # the runtime closure stays pinned (test_image checks the file)


def test_the_wheel_builds_from_exactly_what_the_build_stage_copies() -> None:
    """`pip install .` builds a wheel first; this builds the same wheel from the same files.
    pip builds it in an isolated environment with pyproject's [build-system] requirements, as
    it does inside the image (the machine's setuptools is too old to build a wheel without the
    `wheel` package, so --no-build-isolation would test this machine, not the image)."""
    stage = _build_stage()
    args = _pip_install(stage)
    work = Path(tempfile.mkdtemp(prefix="bf-build-", dir="/tmp"))
    try:
        src, out = work / "src", work / "wheels"
        files = assemble(stage, src)
        assert "pyproject.toml" in files
        assert "beeflow/__init__.py" in files
        constraints = args[args.index("-c") + 1]
        assert (src / constraints).is_file(), f"-c {constraints} is not copied"
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--no-deps",
                "--disable-pip-version-check",
                "-c",
                constraints,
                "--wheel-dir",
                str(out),
                ".",
            ],
            cwd=src,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        errors = [line for line in done.stdout.splitlines() if "error" in line.lower()]
        assert done.returncode == 0, "\n".join(errors) + "\n" + done.stderr[-3000:]
        (wheel,) = out.glob("beeflow-*.whl")
        with zipfile.ZipFile(wheel) as archive:
            names = set(archive.namelist())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert "beeflow/__init__.py" in names
    assert "beeflow/setup/setup.js" in names  # package data
    # The installed copy of the UI static.py falls back to (<prefix>/share/beeflow/spa).
    data = [n.split(".data/data/", 1)[1] for n in names if ".data/data/" in n]
    assert "share/beeflow/spa/index.html" in data, sorted(data)
    assert any(n.startswith("share/beeflow/spa/assets/") for n in data), sorted(data)
    assert not [n for n in names if n.endswith(".py") and "/spa/" in n]  # rehash.py stays out


@pytest.mark.parametrize(
    ("dest", "expected"),
    [("./", ["pyproject.toml"]), ("./x/", ["x/pyproject.toml"]), ("./y.toml", ["y.toml"])],
)
def test_assemble_follows_dockers_copy_rules_for_files(
    dest: str, expected: list[str], tmp_path: Path
) -> None:
    stage = [
        Instruction("WORKDIR", "/src", BUILD_STAGE),
        Instruction("COPY", f"pyproject.toml {dest}", BUILD_STAGE),
    ]
    assert assemble(stage, tmp_path) == expected


def test_assemble_copies_a_directorys_contents_and_honours_dockerignore(tmp_path: Path) -> None:
    stage = [
        Instruction("WORKDIR", "/src", BUILD_STAGE),
        Instruction("COPY", "spa ./spa", BUILD_STAGE),
    ]
    files = assemble(stage, tmp_path)
    assert "spa/index.html" in files
    assert "spa/rehash.py" not in files  # .dockerignore: spa/*.py
    assert (tmp_path / "spa" / "index.html").read_bytes() == (ROOT / "spa/index.html").read_bytes()
