"""The peer benchmarks run end to end (--quick) and report what the README uses.

They need the ``bench`` extra (TensorFlow, tf_keras, Keras 3, torch,
matplotlib), which ``make bench`` installs and ``make test`` does not: without
it these tests skip. Benchmarks are not timed tests: this checks that the
scripts work, that both training systems trained the same model, and that the
summary and plots are written.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

with warnings.catch_warnings():  # TensorFlow's import may warn; not our concern
    warnings.simplefilter("ignore")
    for module in ("tensorflow", "tf_keras", "keras", "torch", "matplotlib"):
        pytest.importorskip(
            module,
            reason=f"{module} comes with the bench extra (make bench), "
            "which make test does not install",
        )

BENCH = Path(__file__).resolve().parents[1] / "bench"
PARTS = ("peers", "training", "scaling")


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    folder = tmp_path_factory.mktemp("bench-results")
    figures = {}
    for part in PARTS:
        script = BENCH / f"{part}.py"
        run = subprocess.run(
            [sys.executable, script, "--quick", "--json", "--results", folder],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        figures[part] = json.loads(run.stdout.strip().splitlines()[-1])
    report = subprocess.run(
        [sys.executable, BENCH / "report.py", "--results", folder],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert report.returncode == 0, report.stderr[-3000:]
    return folder, figures


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_peer_kernels_agree_and_report_ratios(results):
    _, figures = results
    peers = figures["peers"]
    assert peers["tf_keras_bit_identical"]
    for key in (
        "dense_ours_params_per_s",
        "dense_speedup_vs_tf_keras_legacy",
        "dense_speedup_vs_keras3",
        "dense_speedup_vs_torch",
        "sparse_speedup_vs_tf_keras_legacy",
    ):
        assert peers[key] > 0, key


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_training_against_tensorflow_trains_the_same_model(results):
    _, figures = results
    training = figures["training"]
    assert training["lockstep_identical"]
    assert training["loss_relative_difference"] < 0.1
    assert training["adamax_ps_steps_per_s"] > 0
    assert training["tensorflow_steps_per_s"] > 0


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_scaling_and_the_summary_with_its_plots(results):
    folder, figures = results
    scaling = figures["scaling"]
    assert scaling["sparse_pushes_per_s_1_worker"] > 0
    assert scaling["checkpoint_write_gb_per_s"] > 0
    assert scaling["resident_over_state"] > 0.9
    latest = json.loads((folder / "latest.json").read_text())
    assert set(PARTS) <= set(latest["headline"])
    summary = (folder / "latest.md").read_text()
    for name in (
        "peers_dense",
        "peers_sparse",
        "training",
        "scaling_workers",
        "scaling_size",
        "scaling_cluster",
    ):
        assert (folder / f"{name}.png").stat().st_size > 1000
        assert f"bench/results/{name}.png" in summary


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_peers_run_as_their_users_run_them(results):
    """XLA and torch.compile rows exist at every size (timed, or with the error
    that stopped them); the TensorFlow functions never traced again while
    timed; the legacy sparse paths stay bit-identical and lazy."""
    folder, _ = results
    peers = json.loads((folder / "peers.json").read_text())
    for rows in peers["dense"].values():
        for name in (
            "Keras 3 Adamax (tf.function, jit_compile=True: XLA)",
            "torch.optim.Adamax, torch.compile(step)",
        ):
            assert "seconds" in rows[name] or rows[name]["error"], name
    cases = peers["sparse"]["cases"]
    for name, row in cases.items():
        assert row.get("retraces", 0) == 0, name
        if "seconds" in row:
            assert row["first_call_seconds"] > 0, name
    agreement = peers["agreement"]["sparse"]
    for name in agreement:
        if name.startswith("tf_keras legacy"):
            assert agreement[name]["identical"] and agreement[name]["lazy"], name
