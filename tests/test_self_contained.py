"""A clone needs nothing beside it: the suite collects from a bare copy of the
repository's tracked files without reading any file outside that copy.

The copy lives in an empty temporary folder. The venv has adamax-ps installed
in editable mode, pointing at this checkout, so the child imports the copy's
code through a shim package on PYTHONPATH (``adamax_ps/<folder>`` per package
linking to the copy's folders, found before the editable finder). A Python
audit hook, installed before pytest starts, records every file the child
opens; anything outside the copy, the temporary folder, the Python
installation and the system folders fails the test, each path named.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import tomllib
from helpers import skips

ROOT = Path(__file__).resolve().parents[1]
# adamax_ps.<name> -> its folder, as pyproject.toml maps them.
_PYPROJECT = tomllib.loads(
    (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
)
PACKAGES = {
    package.removeprefix("adamax_ps."): folder
    for package, folder in _PYPROJECT["tool"]["setuptools"]["package-dir"].items()
}
SYSTEM = ("/proc", "/sys", "/dev", "/etc", "/usr")

# Run as ``python bootstrap.py REPORT -m pytest ...``: hooks, then pytest.
BOOTSTRAP = """\
import atexit, json, os, runpy, sys

report, opened = sys.argv[1], set()

def hook(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.fsdecode(args[0])
        opened.add(os.path.abspath(path))

def write():
    modules = {
        name: getattr(module, "__file__", None)
        for name, module in list(sys.modules.items())
        if name == "adamax_ps" or name.startswith("adamax_ps.")
    }
    with open(report, "w") as out:
        json.dump({"opened": sorted(opened), "modules": modules}, out)

sys.addaudithook(hook)
atexit.register(write)
sys.argv = [sys.argv[3], *sys.argv[4:]]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""

pytestmark = pytest.mark.slow


def tracked_files() -> list[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        skips.skip_or_fail("it needs git and a git checkout to list tracked files")
    listing = subprocess.run(
        ["git", "ls-files", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=60,
    )
    return [name for name in listing.stdout.decode().split("\0") if name]


def copy_tracked(destination: Path) -> None:
    for name in tracked_files():
        source = ROOT / name
        if source.is_file():  # tracked but deleted in this checkout: skip
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def make_shim(shim: Path, copy: Path) -> None:
    """A regular ``adamax_ps`` package whose subpackages are the copy's folders."""
    package = shim / "adamax_ps"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text('"""The copy\'s code, for the test."""\n')
    for name, folder in PACKAGES.items():
        (package / name).symlink_to(copy / folder, target_is_directory=True)


def allowed_roots(tmp_path: Path) -> list[str]:
    paths = sysconfig.get_paths()
    roots = {
        tmp_path,
        Path(sys.prefix),
        Path(sys.base_prefix),
        Path(sys.exec_prefix),
        Path(sys.base_exec_prefix),
        Path(paths["stdlib"]),
        Path(paths["purelib"]),
        Path(paths["platlib"]),
        *map(Path, SYSTEM),
    }
    return sorted({os.path.realpath(root) for root in roots})


def outside(path: str, roots: list[str]) -> bool:
    real = os.path.realpath(path)
    return not any(real == root or real.startswith(root + os.sep) for root in roots)


def collect_in_copy(tmp_path: Path) -> tuple[subprocess.CompletedProcess, dict]:
    copy, shim, home = tmp_path / "repo", tmp_path / "shim", tmp_path / "home"
    copy_tracked(copy)
    make_shim(shim, copy)
    (home / "tmp").mkdir(parents=True)
    bootstrap = tmp_path / "bootstrap.py"
    bootstrap.write_text(BOOTSTRAP)
    report = tmp_path / "reads.json"
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PYTHON", "PYTEST", "ADAMAX_PS"))
    }
    env.update(PYTHONPATH=str(shim), HOME=str(home), TMPDIR=str(home / "tmp"))
    command = [sys.executable, str(bootstrap), str(report), "-m", "pytest"]
    command += ["--collect-only", "-q", "-p", "no:cacheprovider"]
    result = subprocess.run(
        command, cwd=copy, env=env, capture_output=True, text=True, timeout=600
    )
    return result, json.loads(report.read_text())


def test_collection_reads_nothing_outside_a_bare_copy(tmp_path):
    result, reads = collect_in_copy(tmp_path)
    output = result.stdout[-3000:] + result.stderr[-3000:]
    assert result.returncode == 0, f"collection failed in the copy:\n{output}"
    assert " collected" in result.stdout, output
    copy, shim = str(tmp_path / "repo"), str(tmp_path / "shim")
    code = {name: path for name, path in reads["modules"].items() if path}
    assert code, "the child imported no adamax_ps module"
    problems = [
        f"adamax_ps code from outside the copy: {name} {path}"
        for name, path in code.items()
        if not os.path.realpath(path).startswith(copy + os.sep)
        and not path.startswith(shim + os.sep)
    ]
    roots = allowed_roots(tmp_path)
    problems += [
        f"read outside the copy: {path}"
        for path in reads["opened"]
        if outside(path, roots)
    ]
    assert not problems, "collection in a bare copy:\n" + "\n".join(problems)
