"""Regenerates the golden reference data in tests/data/golden with TensorFlow.

Needs the ``bench`` extra (tensorflow-cpu, tf-keras):
``.venv/bin/python -m pip install -e '.[bench]'``. Then::

    .venv/bin/python tools/make_golden.py --out /tmp/golden --compare tests/data/golden

draws every case's inputs (``golden_inputs``, seed 1234), replays it through
``tf_keras.optimizers.legacy.Adamax`` (``golden_oracle``), records Keras's
answers to malformed input (``golden_errors``), and writes one ``<case>.npz``
per case, ``cases.json``, ``errors.json`` and ``SHA256SUMS`` into ``--out``
(default: the committed folder). ``--compare DIR`` then reports, file by file,
whether the new files equal DIR's, and which arrays differ if not.

The process runs with PYTHONHASHSEED pinned (it re-executes itself): one
Keras message prints a Python set, whose order follows the hash seed; 116
gives the order in the committed errors.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "data" / "golden"
HASH_SEED = "116"
CHECKSUMS = "SHA256SUMS"


def pin_hash_seed() -> None:
    """Re-execute this script with the pinned PYTHONHASHSEED, once."""
    if os.environ.get("PYTHONHASHSEED") != HASH_SEED:
        os.environ["PYTHONHASHSEED"] = HASH_SEED
        os.execv(sys.executable, [sys.executable, *sys.argv])


def write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=1))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_checksums(folder: Path, names: list[str]) -> None:
    """``sha256sum`` format, so ``sha256sum -c SHA256SUMS`` checks the folder."""
    lines = [f"{sha256(folder / name)}  {name}\n" for name in sorted(names)]
    (folder / CHECKSUMS).write_text("".join(lines))


def generate(out: Path) -> list[str]:
    """Write every data file into ``out``; return their names."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the CPU kernels, as recorded
    import tensorflow as tf
    import tf_keras
    from golden_cases import CASES
    from golden_errors import observe
    from golden_inputs import SEED, draw_inputs
    from golden_oracle import run_case

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    entries, names = [], []
    for case in CASES:
        arrays, entry = run_case(case, draw_inputs(rng, case))
        np.savez_compressed(out / entry["file"], **arrays)
        entries.append(entry)
        names.append(entry["file"])
        print(f"{case.name}: {case.n_steps} steps", flush=True)
    generator = {
        "script": "TensorFlow oracle",
        "set": "public",
        "seed": SEED,
        "tensorflow": tf.__version__,
        "tf_keras": tf_keras.__version__,
        "numpy": np.__version__,
        "optimizer_class": "tf_keras.optimizers.legacy.Adamax",
    }
    write_json(out / "cases.json", {"generator": generator, "cases": entries})
    write_json(out / "errors.json", observe())
    names += ["cases.json", "errors.json"]
    write_checksums(out, names)
    return names


def _array_differences(new: Path, old: Path) -> list[str]:
    with np.load(new) as a, np.load(old) as b:
        keys = list(dict.fromkeys([*a.keys(), *b.keys()]))
        return [
            key
            for key in keys
            if key not in a
            or key not in b
            or a[key].dtype != b[key].dtype
            or a[key].shape != b[key].shape
            or a[key].tobytes() != b[key].tobytes()
        ]


def compare(out: Path, reference: Path, names: list[str]) -> bool:
    """Print how each new file compares with the reference folder's."""
    same = True
    for name in [*names, CHECKSUMS]:
        new, old = out / name, reference / name
        if not old.is_file():
            print(f"{name}: not in {reference}")
            same = False
        elif new.read_bytes() == old.read_bytes():
            print(f"{name}: byte-identical")
        elif name.endswith(".npz") and not _array_differences(new, old):
            print(f"{name}: same arrays (bit for bit), different archive bytes")
        else:
            detail = _array_differences(new, old) if name.endswith(".npz") else []
            print(f"{name}: DIFFERS {detail[:10]}")
            same = False
    return same


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=GOLDEN, help="output folder")
    parser.add_argument(
        "--compare", type=Path, help="a folder to compare the new files with"
    )
    args = parser.parse_args(argv)
    pin_hash_seed()
    names = generate(args.out)
    print(f"wrote {len(names)} files and {CHECKSUMS} into {args.out}")
    if args.compare is not None:
        return 0 if compare(args.out, args.compare, names) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
