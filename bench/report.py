"""The peer benchmarks' summary: latest.json, latest.md and the plots.

Reads what bench/peers.py, bench/training.py and bench/scaling.py wrote into
the results folder (each figure already a median of interleaved rounds with its
spread, each ratio taken within its own run), and writes:

- ``latest.json``: all three documents and one headline;
- ``latest.md``: the summary, ``readme.render("latest")`` (``--update-readme``
  puts the same text in README.md's ``<!-- bench:latest:begin/end -->`` block);
- PNG plots: ``peers_dense.png``, ``peers_sparse.png``, ``training.png``,
  ``scaling_workers.png``, ``scaling_size.png``, ``scaling_cluster.png``.

Usage: ``python bench/report.py [--results DIR] [--update-readme]``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from plots import draw
from readme import load, render, update_readme
from tables_peers import PARTS

RESULTS = Path(__file__).resolve().parent / "results"


def build(folder: Path, update: bool = False) -> str:
    """Write latest.json, latest.md and the plots from the parts found."""
    parts = {p: load(p, folder) for p in PARTS if (folder / f"{p}.json").is_file()}
    document = {
        "headline": {part: parts[part]["headline"] for part in parts},
        **parts,
    }
    (folder / "latest.json").write_text(json.dumps(document, indent=1) + "\n")
    draw(parts, folder)
    summary = render("latest", folder)
    (folder / "latest.md").write_text(summary)
    if update:
        update_readme("latest", folder)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="results folder")
    parser.add_argument("--update-readme", action="store_true")
    args = parser.parse_args()
    print(build(args.results, update=args.update_readme))


if __name__ == "__main__":
    main()
