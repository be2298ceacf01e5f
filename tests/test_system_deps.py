"""``.ci/system-deps`` never stops ``make test``: when apt cannot install
(the mirror unreachable), it names what is missing and the tests that will
skip, and exits 0. Run with stand-ins for apt-get and dpkg-query on PATH, so
nothing is installed or asked of the network."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from helpers import skips

SCRIPT = Path(__file__).resolve().parents[1] / ".ci" / "system-deps"


def stand_in(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def test_an_unreachable_mirror_is_a_message_not_a_failure(tmp_path):
    skips.require(root="the script installs only as root")
    calls = tmp_path / "calls.txt"
    stand_in(tmp_path, "apt-get", f'echo "$@" >> {calls}; exit 100')
    stand_in(tmp_path, "dpkg-query", "exit 1")  # nothing is installed
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    result = subprocess.run(
        [SCRIPT], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "apt-get update failed (is the Debian mirror reachable?)" in result.stderr
    assert "strace: tests/test_disk_faults.py" in result.stderr
    assert "chromium: tests/test_dashboard.py" in result.stderr
    assert "update" in calls.read_text()  # it did try


def test_without_root_or_apt_it_names_what_will_skip(tmp_path):
    stand_in(tmp_path, "dpkg-query", "exit 1")
    stand_in(tmp_path, "id", "echo 1000")  # not root
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    result = subprocess.run(
        [SCRIPT], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "not root or no apt-get, so nothing is installed" in result.stderr
    assert "nftables: tests/test_network_faults.py" in result.stderr
