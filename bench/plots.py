"""The plots of the peer benchmarks' summary (matplotlib, written as PNG).

Every figure shows medians with error bars from the smallest to the largest
of the repeated runs; adamax-ps is drawn in red where peers share a chart.
"""

from __future__ import annotations

from pathlib import Path

OURS_COLOR = "#c0392b"


def draw(parts: dict, folder: Path) -> list[str]:
    """Every plot whose data is present; returns the file names written."""
    import matplotlib

    matplotlib.use("Agg")
    written = []
    painters = {
        "peers": (_peers_dense, _peers_sparse),
        "training": (_training_plot,),
        "scaling": (_scaling_workers, _scaling_size, _scaling_cluster),
    }
    for part, functions in painters.items():
        if part in parts:
            for function in functions:
                written.append(function(parts[part], folder))
    return written


def _errorbars(series: list[dict], scale: float = 1.0):
    median = [s["median"] * scale for s in series]
    low = [m - s["min"] * scale for m, s in zip(median, series, strict=True)]
    high = [s["max"] * scale - m for m, s in zip(median, series, strict=True)]
    return median, [low, high]


def _save(figure, folder: Path, name: str) -> str:
    figure.tight_layout()
    figure.savefig(folder / name, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(figure)
    return name


def _peers_dense(peers: dict, folder: Path) -> str:
    import matplotlib.pyplot as plt

    sizes = sorted(peers["dense"], key=int)
    names = list(peers["dense"][sizes[0]])
    figure, axis = plt.subplots(figsize=(11, 5))
    for name in names:  # a peer that failed at a size has no point there
        measured = [n for n in sizes if "seconds" in peers["dense"][n].get(name, {})]
        if not measured:
            continue
        x = [int(n) for n in measured]
        seconds = [peers["dense"][n][name]["seconds"] for n in measured]
        rates = [
            {k: int(n) / s[k] for k in ("median", "min", "max")}
            for n, s in zip(measured, seconds, strict=True)
        ]
        median, error = _errorbars(
            [{"median": r["median"], "min": r["max"], "max": r["min"]} for r in rates],
            1e-9,
        )
        ours = name.startswith("adamax-ps")
        style = "--" if name.startswith(("probe", "copy")) else "-"
        axis.errorbar(
            x,
            median,
            yerr=[error[1], error[0]],
            label=name,
            linestyle=style,
            marker="o",
            linewidth=2.5 if ours else 1.2,
            capsize=3,
        )
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("parameters (float32)")
    axis.set_ylabel("G params/s (copy: floats copied; probes: a step's bytes)")
    axis.set_title("Dense Adamax step: adamax-ps against the peers")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(figure, folder, "peers_dense.png")


def _peers_sparse(peers: dict, folder: Path) -> str:
    import matplotlib.pyplot as plt

    cases = peers["sparse"]["cases"]
    names = [n for n in cases if "seconds" in cases[n]]  # failed ones have none
    median, error = _errorbars([cases[n]["seconds"] for n in names], 1e3)
    figure, axis = plt.subplots(figsize=(8, 1.2 + 0.55 * len(names)))
    colors = [OURS_COLOR if n.startswith("adamax-ps") else "#7f8c8d" for n in names]
    axis.barh(range(len(names)), median, xerr=error, color=colors, capsize=4)
    axis.set_yticks(range(len(names)), [n.replace(", ", ",\n", 1) for n in names])
    axis.set_xscale("log")
    axis.set_xlabel("ms per push (log)")
    axis.set_title("Sparse push: 8192 Zipf ids into a 1e6 x 64 table")
    axis.invert_yaxis()
    axis.grid(True, axis="x", which="both", alpha=0.3)
    return _save(figure, folder, "peers_sparse.png")


def _training_plot(training: dict, folder: Path) -> str:
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 3.8))
    labels, series, colors = [], [], []
    for n, r in training["servers"].items():
        for name, label in (
            ("tensorflow", "TensorFlow PS"),
            ("adamax-ps", "adamax-ps"),
        ):
            labels.append(f"{label}\n{n} server(s)")
            series.append(r[name]["steps_per_s"])
            colors.append(OURS_COLOR if name == "adamax-ps" else "#7f8c8d")
    median, error = _errorbars(series)
    axis.bar(range(len(labels)), median, yerr=error, color=colors, capsize=4)
    axis.set_xticks(range(len(labels)), labels, fontsize=8)
    axis.set_ylabel("training steps/s (2 workers)")
    axis.set_title("Same model, data and Adamax: steps per second")
    axis.grid(True, axis="y", alpha=0.3)
    return _save(figure, folder, "training.png")


def _lines(axis, rows: list[dict], x_key: str, field: str, scale: float = 1.0):
    for push in dict.fromkeys(r["push"] for r in rows):
        chosen = [r for r in rows if r["push"] == push]
        median, error = _errorbars([r[field] for r in chosen], scale)
        axis.errorbar(
            [r[x_key] for r in chosen],
            median,
            yerr=error,
            marker="o",
            capsize=3,
            label=push,
        )


def _latencies(axis, x: list, rows: list[dict], color: int, label: str) -> None:
    """p50 (solid) and p99 (dashed) latency of ``rows`` in one color."""
    for field, style in (("p50_ms", "-"), ("p99_ms", "--")):
        median, error = _errorbars([r[field] for r in rows])
        axis.errorbar(
            x,
            median,
            yerr=error,
            color=f"C{color}",
            linestyle=style,
            marker="o",
            capsize=3,
            label=f"{label} {field[:3]}",
        )


def _scaling_workers(scaling: dict, folder: Path) -> str:
    import matplotlib.pyplot as plt

    rows = scaling["sweeps"]["workers"]
    figure, (rate, latency) = plt.subplots(1, 2, figsize=(10, 4))
    _lines(rate, rows, "workers", "pushes_per_s")
    rate.set_ylabel("pushes/s")
    for color, push in enumerate(dict.fromkeys(r["push"] for r in rows)):
        chosen = [r for r in rows if r["push"] == push]
        _latencies(latency, [r["workers"] for r in chosen], chosen, color, push)
    latency.set_ylabel("latency ms")
    latency.set_yscale("log")
    counts = sorted({r["workers"] for r in rows})
    for axis in (rate, latency):
        axis.set_xscale("log", base=2)
        axis.set_xticks(counts, [str(n) for n in counts])
        axis.set_xlabel("concurrent worker processes (1 server)")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    figure.suptitle("adamax-ps: throughput and latency against workers")
    return _save(figure, folder, "scaling_workers.png")


def _scaling_size(scaling: dict, folder: Path) -> str:
    import matplotlib.pyplot as plt

    rows = scaling["sweeps"]["size"]
    figure, (rate, latency) = plt.subplots(1, 2, figsize=(10, 4))
    for color, workers in enumerate(dict.fromkeys(r["workers"] for r in rows)):
        chosen = [r for r in rows if r["workers"] == workers]
        x = [r["payload_bytes"] for r in chosen]
        median, error = _errorbars([r["bytes_per_s"] for r in chosen], 1e-6)
        rate.errorbar(
            x,
            median,
            yerr=error,
            color=f"C{color}",
            marker="o",
            capsize=3,
            label=f"{workers} worker(s)",
        )
        _latencies(latency, x, chosen, color, f"{workers} worker(s)")
    rate.set_ylabel("gradient MB/s applied")
    latency.set_ylabel("latency ms")
    for axis in (rate, latency):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("dense push size, bytes")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    figure.suptitle("adamax-ps: throughput and latency against tensor size")
    return _save(figure, folder, "scaling_size.png")


def _scaling_cluster(scaling: dict, folder: Path) -> str:
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, sweep in zip(axes, ("shards", "servers"), strict=True):
        rows = scaling["sweeps"].get(sweep, [])
        _lines(axis, rows, sweep, "pushes_per_s")
        workers = rows[0]["workers"] if rows else 0
        axis.set_xlabel(f"{sweep} ({workers} worker processes)")
        axis.set_ylabel("pushes/s (log)")
        axis.set_yscale("log")
        axis.set_xticks(sorted({r[sweep] for r in rows}))
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=7)
    figure.suptitle("adamax-ps: shards per server and servers on one machine")
    return _save(figure, folder, "scaling_cluster.png")
