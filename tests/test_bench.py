"""The benchmark scripts run end to end (quick sizes) and print their figures.

Benchmarks are not timed tests: this only checks that they work and report
the keys the README and the issues rely on.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))


def run_bench(script: str, tmp_path: Path) -> dict:
    result = subprocess.run(
        [sys.executable, BENCH / script, "--quick", "--json", "--results", tmp_path],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / script.replace(".py", ".md")).is_file()
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_kernel_bench_reports_its_headline(tmp_path):
    figures = run_bench("kernels.py", tmp_path)
    for key in (
        "dense_params_per_s",
        "dense_bandwidth_fraction",
        "dense_speedup_vs_numpy_inplace",
        "sparse_rows_per_s",
    ):
        assert figures[key] > 0


@pytest.mark.slow
def test_service_bench_reports_its_figures(tmp_path):
    figures = run_bench("service.py", tmp_path)
    assert figures["dense_pushes_per_s_1_thread"] > 0
    assert figures["checkpoint_gb_per_s"] > 0
    assert 0.7 < figures["rss_at_rest_gb"] < 1.2  # 0.25 GB of variables + slots


@pytest.mark.slow
def test_durability_bench_reports_the_cost_of_the_log(tmp_path):
    figures = run_bench("durability.py", tmp_path)
    assert figures["fsyncs_per_s"] > 0
    assert figures["wal_ratio_1kb_16_threads"] > 0
    assert figures["wal_pushes_per_fsync_1kb_16_threads"] >= 1
    assert figures["grpc_wal_ratio"] > 0


@pytest.mark.slow
def test_transport_bench_reports_its_figures(tmp_path):
    figures = run_bench("transport.py", tmp_path)
    for key in ("dense_gb_per_s", "small_p50_ms", "sparse_rows_per_s", "tcp_gb_per_s"):
        assert figures[key] > 0, key
    assert figures["small_p99_ms"] >= figures["small_p50_ms"]


class Recorder:
    """A contender that notes the input index of every call."""

    def __init__(self, seen: list, fails: bool = False) -> None:
        self.seen, self.fails = seen, fails

    def step(self, k: int) -> None:
        if self.fails:
            raise RuntimeError("cannot compile here\nsecond line")
        self.seen.append(k)


def test_peer_contenders_get_the_same_inputs_in_the_same_round():
    import peers

    seen: dict[str, list[int]] = {name: [] for name in "abc"}
    contenders = {name: Recorder(seen[name]) for name in seen}
    contenders["broken"] = Recorder([], fails=True)
    timing = peers.interleave(contenders, rounds=4, repeats=3)
    assert seen["a"] == seen["b"] == seen["c"] == list(range(peers.WARM + 4 * 3))
    assert timing.errors == {"broken": "RuntimeError: cannot compile here"}
    assert set(timing.samples) == set(seen)
    assert all(len(s) == 4 for s in timing.samples.values())


def test_kernel_contenders_get_the_same_inputs_in_the_same_round():
    import kernels

    seen: dict[str, list[int]] = {name: [] for name in "xyz"}
    kernels.interleave({name: seen[name].append for name in seen}, rounds=5)
    assert seen["x"] == seen["y"] == seen["z"] == [-1, 0, 1, 2, 3, 4]
