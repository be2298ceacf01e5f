"""The adamax-ps command line, run as a user runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(sys.executable).parent / "adamax-ps"


def test_demo_trains_and_beats_the_baseline():
    result = subprocess.run(
        [SCRIPT, "demo", "--steps", "600"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    losses = [
        float(line.split()[-1])
        for line in result.stdout.splitlines()
        if line.startswith("step")
    ]
    assert losses[-1] < losses[0] / 10
    last = result.stdout.strip().splitlines()[-1]
    mse, baseline = float(last.split()[2]), float(last.rstrip(")").split()[-1])
    assert mse < baseline / 10


def test_unknown_command_is_a_usage_error():
    result = subprocess.run([SCRIPT, "fly"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "invalid choice" in result.stderr
