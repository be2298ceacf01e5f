"""The committed golden data is whole: every file matches SHA256SUMS, no file is
unlisted, and tools/make_golden.py's input recipe still draws every input array.

The last check needs numpy only (TensorFlow is for the outputs; regenerating
them is tools/make_golden.py's job, see tests/data/golden/README.md).
"""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "data" / "golden"
NOT_LISTED = {"README.md", "SHA256SUMS"}


def listed() -> dict[str, str]:
    """``sha256sum`` lines: the digest, two spaces, the file name."""
    entries = {}
    for line in (GOLDEN / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ", 1)
        entries[name] = digest
    return entries


@pytest.mark.parametrize("name", sorted(listed()))
def test_file_matches_its_checksum(name):
    path = GOLDEN / name
    assert path.is_file(), f"{name} is listed in SHA256SUMS but missing"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == listed()[name], f"{name} changed since SHA256SUMS was written"


def test_no_file_is_unlisted():
    present = {path.name for path in GOLDEN.iterdir()}
    unlisted = sorted(present - NOT_LISTED - set(listed()))
    assert not unlisted, f"files not in SHA256SUMS (tools/make_golden.py): {unlisted}"


def test_the_index_names_every_archive():
    index = json.loads((GOLDEN / "cases.json").read_text())
    files = [case["file"] for case in index["cases"]]
    archives = sorted(name for name in listed() if name.endswith(".npz"))
    assert sorted(files) == archives


@pytest.fixture(scope="module")
def generator():
    """tools/golden_cases.py and golden_inputs.py, imported as the script does."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(ROOT / "tools"))
        yield (
            importlib.import_module("golden_cases"),
            importlib.import_module("golden_inputs"),
        )


def test_the_recipe_draws_every_input_array(generator):
    cases, inputs = generator
    index = json.loads((GOLDEN / "cases.json").read_text())
    assert [case.name for case in cases.CASES] == [
        entry["name"] for entry in index["cases"]
    ]
    assert index["generator"]["seed"] == inputs.SEED
    rng = np.random.default_rng(inputs.SEED)
    for case, entry in zip(cases.CASES, index["cases"], strict=True):
        assert case.ctor_kwargs == entry["ctor_kwargs"], case.name
        assert [list(v.shape) for v in case.variables] == entry["shapes"]
        drawn = inputs.draw_inputs(rng, case)
        with np.load(GOLDEN / entry["file"]) as archive:
            for j, init in enumerate(drawn.inits):
                assert_same(init, archive[f"w{j}_init"], f"{case.name} w{j}_init")
            for i, step in enumerate(drawn.steps):
                kinds = [(item["var"], item["kind"]) for item in entry["steps"][i]]
                assert [(j, kind) for j, kind, _ in step] == kinds
                for j, kind, grad in step:
                    key = f"{case.name} w{j} step {i}"
                    if kind == "dense":
                        assert_same(grad, archive[f"w{j}_s{i:03d}_grad"], key)
                    elif kind == "sparse":
                        assert_same(grad[0], archive[f"w{j}_s{i:03d}_idx"], key)
                        assert_same(grad[1], archive[f"w{j}_s{i:03d}_val"], key)


def assert_same(actual: np.ndarray, expected: np.ndarray, where: str) -> None:
    assert actual.dtype == expected.dtype, where
    assert actual.shape == expected.shape, where
    assert actual.tobytes() == expected.tobytes(), where
