"""adamax_ps.keras under model.fit, on real servers, in real worker processes:
bit-identical to local tf_keras with Keras 2, within rounding with Keras 3."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.servers import addresses

JOB = Path(__file__).with_name("keras_job.py")
KERAS = {"tf_keras": {"TF_USE_LEGACY_KERAS": "1"}, "keras3": {}}


def run_job(servers, tmp_path, name: str, keras: str, split: bool = False):
    """keras_job.py as a worker process; its results."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **KERAS[keras]}
    if keras == "keras3":
        env.pop("TF_USE_LEGACY_KERAS", None)
    out = tmp_path / "results.npz"
    done = subprocess.run(
        [sys.executable, str(JOB), addresses(servers), name, str(out)]
        + (["split"] if split else []),
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return dict(np.load(out, allow_pickle=True))


@pytest.mark.slow
def test_fit_is_bit_identical_to_local_tf_keras(servers, tmp_path):
    """One worker, 50 steps of model.fit, every variable split by rows over
    two servers: every per-step loss, the table, the dense weights, all their
    m and v slots, iterations, evaluate and predict equal tf_keras's local
    legacy Adamax bit for bit; save_weights/load_weights carry the table."""
    r = run_job(servers, tmp_path, "exact2", "tf_keras", split=True)
    assert r["keras_major"] == 2
    assert len(r["losses"]) == 50
    np.testing.assert_array_equal(r["losses"], r["ref_losses"])
    for ours, ref in zip(r["weights"], r["ref_weights"], strict=True):
        np.testing.assert_array_equal(ours, ref)
    for ours, ref in zip(r["slots"], r["ref_slots"], strict=True):
        np.testing.assert_array_equal(ours, ref)
    assert list(r["iterations"]) == [50, 50, 50]
    assert r["evaluate"] == r["ref_evaluate"]
    np.testing.assert_array_equal(r["predict"], r["ref_predict"])
    assert not r["zeroed"].any()
    np.testing.assert_array_equal(r["reloaded"], r["weights"][0])


@pytest.mark.slow
def test_fit_with_keras3_matches_tf_keras_to_rounding(servers, tmp_path):
    """Keras 3's own layers round a few gradients differently from tf_keras
    (the arithmetic on the servers is the same): agreement to 1e-6 relative
    after 50 steps; save_weights/load_weights (.weights.h5) carry the table."""
    r = run_job(servers, tmp_path, "exact3", "keras3")
    assert r["keras_major"] == 3
    np.testing.assert_allclose(r["losses"], r["ref_losses"], rtol=1e-6)
    for ours, ref in zip(r["weights"], r["ref_weights"], strict=True):
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-7)
    for ours, ref in zip(r["slots"], r["ref_slots"], strict=True):
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-7)
    assert list(r["iterations"]) == [50, 50, 50]
    np.testing.assert_allclose(r["predict"], r["ref_predict"], rtol=1e-5, atol=1e-7)
    assert not r["zeroed"].any()
    np.testing.assert_array_equal(r["reloaded"], r["weights"][0])
