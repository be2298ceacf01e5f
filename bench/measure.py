"""Shared helpers of the peer benchmarks: spreads, free ports, thread limits."""

from __future__ import annotations

import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

# Thread counts the peers are given unless a script says otherwise: the
# machine's cores, as a user running one training job would leave them.
CORES = os.cpu_count() or 1
MARK = "@@ "  # prefix of protocol lines (TensorFlow may print on stdout too)


def spread(samples: Sequence[float]) -> dict[str, float]:
    """Median, min, max and count of repeated measurements of one figure."""
    values = [float(s) for s in samples]
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, int(len(sorted_values) * fraction))
    return float(sorted_values[index])


def run_threads(
    threads: int, seconds: float, job: Callable[[int, int], Callable[[], object]]
) -> tuple[list[float], float]:
    """``threads`` threads at once for ``seconds``, each running
    ``job(thread, sequence)()`` over and over (only the call of what ``job``
    returns is timed): every call's latency in seconds (sorted), and the
    elapsed time."""
    stop = threading.Event()
    latencies: list[list[float]] = [[] for _ in range(threads)]

    def worker(k: int) -> None:
        sequence = 0
        while not stop.is_set():
            run = job(k, sequence)
            start = time.perf_counter()
            run()
            latencies[k].append(time.perf_counter() - start)
            sequence += 1

    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    started = time.perf_counter()
    for thread in pool:
        thread.start()
    stop.wait(seconds)
    stop.set()
    for thread in pool:
        thread.join()
    return sorted(x for per in latencies for x in per), time.perf_counter() - started


def free_port() -> int:
    """A TCP port nobody listens on right now (for servers that need one given)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def quiet_tensorflow() -> None:
    """Environment for importing TensorFlow: CPU only, legacy tf.keras, no banner.

    ``TF_USE_LEGACY_KERAS=1`` makes ``tf.keras`` the tf_keras package, whose
    ``optimizers.legacy.Adamax`` is the Keras 2 class adamax-ps reproduces.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


def machine() -> dict[str, object]:
    return {
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cores": CORES,
        "python": platform.python_version(),
    }


def versions(*modules: str) -> dict[str, str]:
    """Installed versions of the named distributions (absent ones left out)."""
    from importlib import metadata

    found = {}
    for name in modules:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def ratio_text(value: float) -> str:
    return f"{value:.2f}x" if value < 10 else f"{value:.0f}x"


# Child processes speak JSON lines: a command in, MARK + a reply out. ---------


def serve_commands(handlers: dict) -> None:
    reply({"ready": True})
    for line in sys.stdin:
        command = json.loads(line)
        if command["op"] == "quit":
            return
        reply(handlers[command["op"]](**command.get("args", {})))


def reply(message: dict) -> None:
    sys.stdout.write(MARK + json.dumps(message) + "\n")
    sys.stdout.flush()


class Child:
    """A benchmark script run as a child process, driven over stdin and stdout."""

    def __init__(
        self, script: str, *args: str, log: Path, env: dict[str, str] | None = None
    ) -> None:
        """``env``: variables set for the child on top of this environment."""
        self.log = log
        with open(log, "wb") as errors:
            self.process = subprocess.Popen(
                [sys.executable, script, *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errors,
                text=True,
                env={**os.environ, **(env or {})},
            )

    def send(self, op: str, **args) -> None:
        self.process.stdin.write(json.dumps({"op": op, "args": args}) + "\n")
        self.process.stdin.flush()

    def receive(self) -> dict:
        for line in self.process.stdout:
            if line.startswith(MARK):
                return json.loads(line[len(MARK) :])
        tail = self.log.read_text()[-3000:]
        raise RuntimeError(f"{self.log.name}: child process exited\n{tail}")

    def call(self, op: str, **args) -> dict:
        self.send(op, **args)
        return self.receive()

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.send("quit")
                self.process.wait(60)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait(30)
