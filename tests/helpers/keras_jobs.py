"""Running a Keras training script in a worker process against real servers,
under Keras 3 or tf_keras (``TF_USE_LEGACY_KERAS`` must be set before
TensorFlow is imported, hence a process of its own)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers.servers import Server, addresses


def run_keras_job(
    script: Path, servers: list[Server], out: Path, keras_kind: str, *args: str
) -> dict:
    """Run ``script GRPC_ADDRESSES HTTP_ADDRESSES OUT *args`` under
    ``keras_kind`` ("keras3" or "tf_keras"); the JSON it wrote to ``out``."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env["TF_USE_LEGACY_KERAS"] = "1" if keras_kind == "tf_keras" else "0"
    done = subprocess.run(
        [
            sys.executable,
            str(script),
            addresses(servers),
            ",".join(s.http_address for s in servers),
            str(out),
            *args,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(Path(out).read_text())
