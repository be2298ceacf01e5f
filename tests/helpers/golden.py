"""Loads the TensorFlow reference runs in tests/data/golden for the tests.

The data is committed with the suite (format and regeneration: its README.md,
tools/make_golden.py); tests never edit it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "data" / "golden"
CLIPNORM_ATOL = 1e-7  # TF's norm reduction order cannot be reproduced (README)


@dataclass(frozen=True)
class Pair:
    """One (gradient, variable) item of an apply_gradients call."""

    var: int
    kind: str  # "dense" | "sparse" | "none"
    grad: np.ndarray | None = None  # dense gradient or raw sparse values
    indices: np.ndarray | None = None


@dataclass(frozen=True)
class GoldenCase:
    name: str
    dtype: np.dtype
    shapes: list[tuple[int, ...]]
    kwargs: dict[str, Any]
    entry: dict[str, Any]
    arrays: Any

    @property
    def n_steps(self) -> int:
        return self.entry["n_steps"]

    @property
    def uses_norm_clipping(self) -> bool:
        return "clipnorm" in self.kwargs or "global_clipnorm" in self.kwargs

    def init(self, j: int) -> np.ndarray:
        return self.arrays[f"w{j}_init"]

    def steps(self) -> list[list[Pair]]:
        out = []
        for i, step in enumerate(self.entry["steps"]):
            pairs = []
            for item in step:
                j, kind = item["var"], item["kind"]
                if kind == "dense":
                    pairs.append(Pair(j, kind, self.arrays[f"w{j}_s{i:03d}_grad"]))
                elif kind == "sparse":
                    pairs.append(
                        Pair(
                            j,
                            kind,
                            self.arrays[f"w{j}_s{i:03d}_val"],
                            self.arrays[f"w{j}_s{i:03d}_idx"],
                        )
                    )
                else:
                    pairs.append(Pair(j, kind))
            out.append(pairs)
        return out

    def expected(self, j: int, what: str, i: int) -> np.ndarray:
        """Variable j's ``var``/``m``/``v`` after step i."""
        return self.arrays[f"w{j}_{what}"][i]

    def has_slots(self, j: int, i: int) -> bool:
        return bool(self.arrays[f"w{j}_has_slots"][i])


def _keras_kwargs(ctor_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The golden index writes a schedule as {"schedule": {...}}: unwrap it."""
    kwargs = dict(ctor_kwargs)
    lr = kwargs.get("learning_rate")
    if isinstance(lr, dict) and "schedule" in lr:
        kwargs["learning_rate"] = lr["schedule"]
    return kwargs


def require_golden() -> None:
    if not (GOLDEN_DIR / "cases.json").is_file():
        pytest.fail(f"golden reference data not found at {GOLDEN_DIR}")


@cache
def load_index() -> dict[str, Any]:
    require_golden()
    return json.loads((GOLDEN_DIR / "cases.json").read_text())


@cache
def load_case(name: str) -> GoldenCase:
    entry = next(c for c in load_index()["cases"] if c["name"] == name)
    return GoldenCase(
        name=name,
        dtype=np.dtype(entry["dtype"]),
        shapes=[tuple(s) for s in entry["shapes"]],
        kwargs=_keras_kwargs(entry["ctor_kwargs"]),
        entry=entry,
        arrays=dict(np.load(GOLDEN_DIR / entry["file"])),
    )


def case_names() -> list[str]:
    if not (GOLDEN_DIR / "cases.json").is_file():
        return ["golden-data-missing"]
    return [
        c["name"] for c in json.loads((GOLDEN_DIR / "cases.json").read_text())["cases"]
    ]


@cache
def load_errors() -> list[dict[str, Any]]:
    require_golden()
    return json.loads((GOLDEN_DIR / "errors.json").read_text())


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-for-bit equality (NaN payloads and signed zeros included)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return a.tobytes() == b.tobytes()


def assert_matches(case: GoldenCase, actual: np.ndarray, j: int, what: str, i: int):
    """Compare with the golden value: bit-exact, or within CLIPNORM_ATOL when
    the case clips by norm."""
    expected = case.expected(j, what, i)
    where = f"{case.name}: w{j} {what} after step {i}"
    if case.uses_norm_clipping:
        np.testing.assert_allclose(
            actual, expected, rtol=0, atol=CLIPNORM_ATOL, err_msg=where
        )
        return
    if not same_bits(actual, expected):
        diff = np.flatnonzero(np.asarray(actual).reshape(-1) != expected.reshape(-1))
        raise AssertionError(
            f"{where}: {diff.size} of {expected.size} values differ, first at flat "
            f"index {diff[:5].tolist()}: "
            f"got {np.asarray(actual).reshape(-1)[diff[:3]]}, "
            f"TensorFlow {expected.reshape(-1)[diff[:3]]}"
        )
