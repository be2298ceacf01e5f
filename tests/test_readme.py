"""The README's worker quick start runs as written against a real server."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from helpers.servers import start_cluster

README = Path(__file__).resolve().parents[1] / "README.md"


def test_worker_quick_start_runs(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    (quick_start,) = [b for b in blocks if "connect(" in b and "apply_gradients" in b]
    (server,) = start_cluster(1, tmp_path, checkpoints=False)
    try:
        code = quick_start.replace("grpc://127.0.0.1:50051", server.grpc_address)
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("1 ")
    finally:
        server.kill()
