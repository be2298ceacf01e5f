"""A bounded soak: 16 concurrent workers (4 processes x 4 threads) pushing dense
and sparse gradients for a while (45 s; ADAMAX_PS_SOAK_SECONDS for longer):
no error, every acknowledged push counted once, resident memory flat."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from helpers.servers import Server

from adamax_ps.client import Adamax, connect

WORKER = Path(__file__).with_name("soak_worker.py")
SECONDS = float(os.environ.get("ADAMAX_PS_SOAK_SECONDS", "45"))
GROWTH_LIMIT = 64 << 20


@pytest.mark.slow
@pytest.mark.timeout(SECONDS + 240)  # a longer soak is given its time
def test_soak(tmp_path):
    server = Server(
        [
            "--grpc-port",
            "0",
            "--http-port",
            "0",
            "--shards",
            "2",
            "--checkpoint-dir",
            str(tmp_path / "ps"),
            "--checkpoint-every",
            "10",
        ],
        tmp_path / "ps.log",
    ).start()
    try:
        workers = [
            subprocess.Popen(
                [sys.executable, WORKER, server.grpc_address, "4", str(SECONDS)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(4)
        ]
        samples = []
        while any(w.poll() is None for w in workers):
            with contextlib.suppress(subprocess.TimeoutExpired):
                workers[0].wait(timeout=SECONDS / 12)  # the sampling period
            info = httpx.get(server.http_address + "/api/v1/server", timeout=30).json()
            samples.append(info["resident_bytes"])
        acknowledged = 0
        for worker in workers:
            out, err = worker.communicate(timeout=120)
            assert worker.returncode == 0, err
            acknowledged += int(out.strip())
        with connect(server.grpc_address) as cluster:
            assert (
                int(
                    Adamax(learning_rate=0.001, name="soak", cluster=cluster).iterations
                )
                == acknowledged
            )
        warm = samples[len(samples) // 4]  # after caches, pools and slots exist
        assert max(samples[len(samples) // 4 :]) - warm < GROWTH_LIMIT, samples
        assert acknowledged > 16 * SECONDS, f"only {acknowledged} pushes"
    finally:
        server.kill()
