"""The framework examples end to end, as the README runs them: a real
``adamax-ps cluster`` of two servers, the PyTorch example under ``torchrun``
with two workers, the Keras one as two workers found through ``TF_CONFIG``."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys

import pytest
from helpers.servers import SCRIPT

from adamax_ps.client import connect

STEPS = 30
LINE = re.compile(
    r"worker (\d)/2: held-out loss ([\d.]+) -> ([\d.]+) \(predicting zero: ([\d.]+)\)"
)


@pytest.fixture
def cluster_address(tmp_path):
    """``adamax-ps cluster --servers 2`` as a user starts it; its address."""
    with running_cluster(tmp_path) as address:
        yield address


@contextlib.contextmanager
def running_cluster(folder, *serve_options: str):
    """``adamax-ps cluster`` of two servers (``serve_options`` for each);
    its address."""
    process = subprocess.Popen(
        [
            *(SCRIPT, "cluster", "--servers", "2", "--grpc-port", "0"),
            *("--http-port", "0", "--checkpoint-dir", str(folder)),
            *(("--", *serve_options) if serve_options else ()),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        for line in process.stdout:
            found = re.search(r"ADAMAX_PS_ADDRESS=(\S+)", line)
            if found:
                break
        assert found, "the cluster printed no address"
        yield found.group(1)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


def check_workers(outputs: list[str]) -> None:
    """Both workers report a held-out loss that fell, below predicting zero."""
    found = sorted(LINE.findall("\n".join(outputs)))
    assert [rank for rank, *_ in found] == ["0", "1"], outputs
    for _, before, after, zero in found:
        assert float(after) < 0.8 * float(before), found
        assert float(after) < float(zero), found


def optimizer_iterations(address: str) -> int:
    with connect(address) as cluster:
        return cluster.optimizer("Adamax").iterations


@pytest.mark.slow
def test_torch_example_under_torchrun_with_two_workers(cluster_address):
    env = {**os.environ, "ADAMAX_PS_ADDRESS": cluster_address}
    done = subprocess.run(
        [
            *(sys.executable, "-m", "torch.distributed.run", "--standalone"),
            *("--nproc-per-node", "2", "-m", "adamax_ps.examples.torch_recommender"),
            *("--steps", str(STEPS)),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    check_workers([done.stdout])
    # Asynchronous: one step per worker per batch, on one shared optimizer.
    assert optimizer_iterations(cluster_address) == 2 * STEPS


@pytest.mark.slow
def test_torch_example_trains_synchronously_with_ranks_as_replicas(tmp_path):
    """Against servers run with --replicas 2, the two torchrun workers are
    the step's two replicas (their ranks): one step per pair of pushes, and
    one model, the same in both workers after every step."""
    with running_cluster(tmp_path, "--replicas", "2") as address:
        done = subprocess.run(
            [
                *(sys.executable, "-m", "torch.distributed.run", "--standalone"),
                *("--nproc-per-node", "2", "-m"),
                *("adamax_ps.examples.torch_recommender", "--steps", str(STEPS)),
            ],
            env={**os.environ, "ADAMAX_PS_ADDRESS": address},
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert done.returncode == 0, done.stderr[-4000:]
        check_workers([done.stdout])
        found = LINE.findall(done.stdout)
        assert found[0][1:] == found[1][1:], found  # one model: same losses
        assert optimizer_iterations(address) == STEPS


@pytest.mark.slow
def test_keras_example_with_two_workers_from_tf_config(cluster_address):
    """A TFJob-style TF_CONFIG (ps tasks, worker tasks) is all the workers get."""
    ps = [a.removeprefix("grpc://") for a in cluster_address.split(",")]
    workers = []
    for rank in range(2):
        config = {
            "cluster": {"ps": ps, "worker": ["w0:2222", "w1:2222"]},
            "task": {"type": "worker", "index": rank},
        }
        env = {
            **os.environ,
            "TF_CONFIG": json.dumps(config),
            "TF_CPP_MIN_LOG_LEVEL": "3",
        }
        env.pop("ADAMAX_PS_ADDRESS", None)
        workers.append(
            subprocess.Popen(
                [
                    *(sys.executable, "-m", "adamax_ps.examples.keras_recommender"),
                    *("--steps", str(STEPS)),
                ],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outputs = []
    for worker in workers:
        out, err = worker.communicate(timeout=240)
        assert worker.returncode == 0, err[-4000:]
        outputs.append(out)
    check_workers(outputs)
    assert optimizer_iterations(cluster_address) == 2 * STEPS
