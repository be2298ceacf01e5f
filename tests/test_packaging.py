"""The distribution installs as adamax_ps.* only, with its console script."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE_FOLDERS = {
    "server": "adamax_ps/server",
    "cli": "adamax_ps/cli",
    "client": "adamax_ps/client",
    "common": "adamax_ps/common",
    "examples": "adamax_ps/examples",
    "proto": "adamax_ps/proto",
}


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "bare", ["server", "client", "common", "cli", "examples", "proto", "frameworks"]
)
def test_bare_folder_names_are_not_importable(bare, tmp_path):
    result = run_python(f"import {bare}", tmp_path)
    assert result.returncode != 0
    assert f"No module named '{bare}'" in result.stderr


def test_namespaced_packages_import_from_anywhere(tmp_path):
    result = run_python(
        "import adamax_ps.server.adamax, adamax_ps.client, adamax_ps.proto\n"
        "print('ok')",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_console_script_runs():
    script = Path(sys.executable).parent / "adamax-ps"
    result = subprocess.run(
        [script, "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "demo" in result.stdout


def test_wheel_holds_every_source_file_under_adamax_ps_only(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp_path, ROOT],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("adamax_ps-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    top = {n.split("/")[0] for n in names}
    assert top == {"adamax_ps", next(t for t in top if t.endswith(".dist-info"))}
    for folder, package in SOURCE_FOLDERS.items():
        for source in (ROOT / folder).rglob("*.py"):
            relative = source.relative_to(ROOT / folder).as_posix()
            assert f"{package}/{relative}" in names, f"{folder}/{relative} not packaged"
