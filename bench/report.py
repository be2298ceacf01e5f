"""The peer benchmarks' summary: latest.json, latest.md and the plots.

Reads what bench/peers.py, bench/training.py and bench/scaling.py wrote into
the results folder (each figure already a median of interleaved rounds with its
spread, each ratio taken within its own run), and writes:

- ``latest.json``: all three documents and one headline;
- ``latest.md``: the summary the README includes (``--update-readme`` fills its
  ``<!-- bench:latest:begin/end -->`` block);
- PNG plots: ``peers_dense.png``, ``peers_sparse.png``, ``training.png``,
  ``scaling_workers.png``, ``scaling_size.png``, ``scaling_cluster.png``.

Usage: ``python bench/report.py [--results DIR] [--update-readme]``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from plots import draw

RESULTS = Path(__file__).resolve().parent / "results"
PARTS = ("peers", "training", "scaling")


def load(folder: Path) -> dict:
    found = {}
    for part in PARTS:
        path = folder / f"{part}.json"
        if path.is_file():
            found[part] = json.loads(path.read_text())
    return found


def build(folder: Path, update: bool = False) -> str:
    """Write latest.json, latest.md and the plots from the parts found."""
    parts = load(folder)
    document = {
        "headline": {part: parts[part]["headline"] for part in parts},
        **parts,
    }
    (folder / "latest.json").write_text(json.dumps(document, indent=1) + "\n")
    plots = draw(parts, folder)
    summary = markdown(parts, plots, folder)
    (folder / "latest.md").write_text(summary)
    if update:
        from readme import update_readme

        update_readme("latest", summary)
    return summary


# Markdown. -------------------------------------------------------------------------


def markdown(parts: dict, plots: list[str], folder: Path) -> str:
    lines = [
        "Against the peers, measured side by side in one run on this machine "
        f"({_machine(parts)}); medians of interleaved rounds [min-max], every "
        "ratio taken within its run. Full tables: "
        + ", ".join(f"[{p}.md](bench/results/{p}.md)" for p in parts)
        + ".",
        "",
    ]
    if "peers" in parts:
        lines += _peers(parts["peers"])
    if "training" in parts:
        lines += _training(parts["training"])
    if "scaling" in parts:
        lines += _scaling(parts["scaling"])
    if plots:
        lines.append(" ".join(f"![{p[:-4]}](bench/results/{p})" for p in plots) + "\n")
    return "\n".join(lines)


def _machine(parts: dict) -> str:
    for part in parts.values():
        m = part.get("machine")
        if m:
            return f"{m['cores']} cores, {m['machine']}, Python {m['python']}"
    return "this machine"


def _peers(peers: dict) -> list[str]:
    n = max(peers["dense"], key=int)
    rows = peers["dense"][n]
    lines = [
        f"| dense Adamax step, {float(n):.0e} float32, {peers['threads']} threads "
        "| ms | G params/s | GB/s | time / adamax-ps |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        s = r["seconds"]
        lines.append(
            f"| {name} | {s['median'] * 1e3:.1f} [{s['min'] * 1e3:.1f}-"
            f"{s['max'] * 1e3:.1f}] | {r['params_per_s'] / 1e9:.2f} | "
            f"{r['gb_per_s']:.1f} | {r['time_over_ours']['median']:.2f} |"
        )
    lines += [
        "",
        "| sparse push, 1e6 x 64 table, 8192 Zipf ids | ms | time / adamax-ps |",
        "|---|---:|---:|",
    ]
    for name, r in peers["sparse"]["cases"].items():
        s = r["seconds"]
        lines.append(
            f"| {name} | {s['median'] * 1e3:.1f} [{s['min'] * 1e3:.1f}-"
            f"{s['max'] * 1e3:.1f}] | {r['time_over_ours']['median']:.1f} |"
        )
    return [*lines, ""]


def _training(training: dict) -> list[str]:
    settings = training["settings"]
    total = settings["lockstep"] + settings["rounds"] * settings["steps"]
    lines = [
        "| recommendation model, 2 workers | servers | steps/s | gradient MB/s | "
        f"x TensorFlow | held-out loss after {total} steps |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for n, r in training["servers"].items():
        for name, label in (
            ("tensorflow", "TensorFlow ParameterServerStrategy"),
            ("adamax-ps", "adamax-ps"),
        ):
            s = r[name]["steps_per_s"]
            ratio = 1.0 if name == "tensorflow" else r["speedup"]["median"]
            lines.append(
                f"| {label} | {n} | {s['median']:.1f} [{s['min']:.1f}-{s['max']:.1f}]"
                f" | {r[name]['gradient_bytes_per_s']['median'] / 1e6:.0f} | "
                f"{ratio:.2f} | {r[name]['final_heldout_loss']:.4f} |"
            )
    same = training["headline"]["lockstep_identical"]
    lines += [
        "",
        "Both systems train the same model: the first "
        f"{settings['lockstep']} steps taken one at a time give "
        + ("bit-identical losses and weights" if same else "DIFFERENT weights")
        + "; after the asynchronous rounds the held-out losses differ by at most "
        f"{training['headline']['loss_relative_difference']:.1%} (from "
        f"{training['initial_heldout_loss']:.4f} at the start).",
        "",
    ]
    return lines


def _scaling(scaling: dict) -> list[str]:
    lines = [
        "| adamax-ps scaling | pushes/s | p50 ms | p99 ms | x first |",
        "|---|---:|---:|---:|---:|",
    ]
    labels = {"workers": "workers", "shards": "shards", "servers": "servers"}
    for sweep, column in labels.items():
        for row in scaling["sweeps"].get(sweep, []):
            if sweep == "workers" and row["kind"] != "sparse":
                continue
            lines.append(
                f"| {row['push']}, {row[column]} {column} | "
                f"{row['pushes_per_s']['median']:,.0f} | {row['p50_ms']['median']:.2f}"
                f" | {row['p99_ms']['median']:.2f} | {row['x_first']['median']:.2f} |"
            )
    head = scaling["headline"]
    last = scaling["checkpoints"][-1]
    lines += [
        "",
        f"Memory: resident {head['resident_over_state']:.2f}x the 12 bytes of state "
        "per parameter (whole server processes). Checkpoint of "
        f"{last['state_bytes'] / 1e9:.1f} GB: write {last['write_gb_per_s']:.2f} "
        f"GB/s ({last['write_gb_per_s'] / last['plain_write_gb_per_s']:.2f}x a "
        f"plain file), restore {last['restore_gb_per_s']:.2f} GB/s "
        f"({last['restore_gb_per_s'] / last['plain_read_gb_per_s']:.2f}x).",
        "",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="results folder")
    parser.add_argument("--update-readme", action="store_true")
    args = parser.parse_args()
    print(build(args.results, update=args.update_readme))


if __name__ == "__main__":
    main()
