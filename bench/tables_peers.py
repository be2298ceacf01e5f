"""Markdown of the peer benchmarks (peers, training) and the peers' summary.

Pure functions of the JSON documents bench/peers.py, bench/training.py and
bench/scaling.py write (``readme.render`` calls them); the row labels of
bench/peers.py live here so the script and its rendering share them.
"""

from __future__ import annotations

from measure import spread
from tables import NOT_RECORDED, inverse, rate_text, span

PARTS = ("peers", "training", "scaling")
PLOTS = {
    "peers": ("peers_dense.png", "peers_sparse.png"),
    "training": ("training.png",),
    "scaling": ("scaling_workers.png", "scaling_size.png", "scaling_cluster.png"),
}
OURS = "adamax-ps"
SPARSE = {
    "ours": f"{OURS} (lazy)",
    "tf_keras": "tf_keras legacy Adamax, IndexedSlices (lazy)",
    "tf_keras_plain": "tf_keras legacy Adamax, IndexedSlices, no input_signature",
    "tf_keras_no_reads": "tf_keras legacy Adamax minus its 3 whole-table reads "
    "(diagnostic)",
    "keras3": "Keras 3 Adamax, IndexedSlices (NOT lazy: every row moves)",
    "keras3_xla": "Keras 3 Adamax, IndexedSlices, XLA (NOT lazy)",
}
BRACKETS = "Brackets: the fastest and slowest round; ratios taken round by round."


def peer_names(threads: int) -> dict[str, str]:
    """The dense rows' labels."""
    return {
        "tf_keras": "tf_keras legacy Adamax (tf.function)",
        "raw": "tf.raw_ops.ResourceApplyAdaMax (eager)",
        "keras3": "Keras 3 Adamax (tf.function)",
        "keras3_xla": "Keras 3 Adamax (tf.function, jit_compile=True: XLA)",
        "torch": "torch.optim.Adamax foreach=False",
        "torch_foreach": "torch.optim.Adamax foreach=True",
        "torch_compile": "torch.optim.Adamax, torch.compile(step)",
        "ours_1": f"{OURS}, 1 thread",
        "ours_n": f"{OURS}, {threads} threads",
    }


def _first(row: dict) -> str:
    first = row.get("first_call_seconds")
    return "" if first is None else f"{first:.2f}"


def _error(row: dict) -> str:
    return f"failed: {row['error']}"


def _rounds(doc: dict) -> int:
    big = doc["dense"][max(doc["dense"], key=int)]
    return next(r["seconds"]["n"] for r in big.values() if "seconds" in r)


# bench/peers.py ---------------------------------------------------------------------


def peers(doc: dict) -> str:
    threads = doc["threads"]
    lines = [
        f"Kernels against the peers (float32, {threads} threads for everyone: "
        f"TensorFlow intra/inter-op {threads}, torch.set_num_threads({threads}); "
        f"{_rounds(doc)} interleaved rounds, medians [min-max]; every contender "
        "given the same inputs in the same round; `python bench/peers.py`)",
        "",
        "| dense | params | ms per step | M params/s | GB/s (28 B/param) | "
        "time / adamax-ps | first call s (trace, compile) | max diff from "
        "adamax-ps after 3 steps |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    agreement = doc["agreement"]["dense"]
    for n, rows in doc["dense"].items():
        for name, r in rows.items():
            diff = agreement.get(name)
            diff_text = "" if diff is None else _diff_text(diff)
            if name == peer_names(threads)["ours_1"]:
                diff_text = "(reference)"
            if "error" in r:
                lines.append(f"| {name} | {int(n):.0e} | {_error(r)} | | | | | |")
                continue
            lines.append(
                f"| {name} | {int(n):.0e} | {span(r['seconds'], 1e3, 3)} | "
                f"{r['params_per_s'] / 1e6:,.0f} | {r['gb_per_s']:.1f} | "
                f"{span(r['time_over_ours'])} | {_first(r)} | {diff_text} |"
            )
    return "\n".join([*lines, "", *_sparse_table(doc), "", _headline(doc)]) + "\n"


def _sparse_table(doc: dict) -> list[str]:
    sparse = doc["sparse"]
    lines = [
        f"| sparse 1e6 x 64, 8192 Zipf indices (~{sparse['unique_rows']:.0f} unique)"
        " | ms per push | M input rows/s | time / adamax-ps | first call s | "
        "traced again while timed | differs from adamax-ps | rows not pushed keep "
        "their weights |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    checks = doc["agreement"]["sparse"]
    for name, r in sparse["cases"].items():
        check = checks.get(name, {"lazy": True})
        if "error" in check:
            diff, lazy = _error(check), ""
        else:
            diff = _diff_text(check) if "max_abs" in check else "(reference)"
            lazy = "yes" if check.get("lazy") else "no"
        if "error" in r:
            lines.append(f"| {name} | {_error(r)} | | | | | {diff} | {lazy} |")
            continue
        retraces = r.get("retraces")
        lines.append(
            f"| {name} | {span(r['seconds'], 1e3)} | {r['rows_per_s'] / 1e6:.2f} | "
            f"{span(r['time_over_ours'], digits=1)} | {_first(r)} | "
            f"{'' if retraces is None else retraces} | {diff} | {lazy} |"
        )
    refusal = checks["torch.optim.Adamax"]
    if not refusal["supported"]:
        lines.append(
            f"| torch.optim.Adamax | refuses: {refusal['error']} | | | | | | |"
        )
    return lines


def _headline(doc: dict) -> str:
    """Every figure with its rounds' spread; ratios are time over ours."""
    names = peer_names(doc["threads"])
    size = max(doc["dense"], key=int)
    big = doc["dense"][size]
    ours = big[names["ours_n"]]
    probe = big.get(f"probe 4R3W, {doc['threads']} threads (ceiling)")
    text = (
        f"Headline at {int(size):.0e} parameters: adamax-ps "
        f"{span(inverse(ours['seconds'], int(size) / 1e9))} G params/s"
    )
    if probe and "time_over_ours" in probe:
        text += f" = {span(probe['time_over_ours'], 100, 0, '%')} of the 4R3W probe"
    slower = [
        f"{label} {span(big[names[key]]['time_over_ours'], suffix='x')}"
        for key, label in (
            ("tf_keras", "tf_keras legacy Adamax"),
            ("raw", "ResourceApplyAdaMax"),
            ("keras3", "Keras 3"),
            ("keras3_xla", "Keras 3 with XLA"),
            ("torch", "torch"),
            ("torch_compile", "torch.compile"),
        )
        if "time_over_ours" in big.get(names[key], {})
    ]
    text += "; the peers take " + ", ".join(slower) + " our time"
    return (
        f"{text}. {_sparse_sentence(doc)} {BRACKETS} torch places epsilon inside "
        "the max (not Keras's rule), so it never matches bit for bit; Keras 3 "
        "rounds differently."
    )


def _sparse_sentence(doc: dict) -> str:
    cases = doc["sparse"]["cases"]
    ours, tf = cases[SPARSE["ours"]], cases.get(SPARSE["tf_keras"], {})
    if "seconds" not in tf:
        return "Sparse: tf_keras legacy was not measured."
    text = (
        f"Sparse push: adamax-ps {span(ours['seconds'], 1e3)} ms, tf_keras legacy "
        f"Adamax {span(tf['seconds'], 1e3, 1)} ms, "
        f"{span(tf['time_over_ours'], digits=0, suffix='x')} our time"
    )
    plain = cases.get(SPARSE["tf_keras_no_reads"], {})
    if "time_over_ours" in plain:
        text += (
            f"; without its three whole-table reads "
            f"{span(plain['seconds'], 1e3, 1)} ms, "
            f"{span(plain['time_over_ours'], digits=1, suffix='x')}"
        )
    return text + "."


def _diff_text(diff: dict) -> str:
    if "error" in diff:
        return _error(diff)
    return "identical" if diff["identical"] else f"{diff['max_abs']:.1e}"


# bench/training_fit.py --------------------------------------------------------------


def _range_text(low: float, high: float) -> str:
    return f"{low:.4f}" if f"{low:.4f}" == f"{high:.4f}" else f"{low:.4f}-{high:.4f}"


def _per_round(seconds: dict, baseline: str, name: str) -> dict:
    """The baseline's time over ``name``'s, round by round, as a spread."""
    pairs = zip(seconds[baseline], seconds[name], strict=True)
    return spread([b / s for b, s in pairs])


def training_fit(doc: dict) -> str:
    settings = doc["settings"]
    lines = [
        "Training as users write it: model.fit and PyTorch loops (same model, data "
        f"and initial values; 2 workers; {settings['rounds']} interleaved rounds "
        f"of {settings['steps']} steps after {settings['warmup']} warm-up steps, "
        "medians [min-max]; `python bench/training_fit.py`)",
        "",
        "| servers | system | steps/s | x tf fit | x tf fit tuned | held-out loss "
        f"after {settings['total_steps']} steps |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    labels = {
        "tf fit": "TensorFlow PS strategy, model.fit",
        "tf fit x10": "TensorFlow PS strategy, model.fit, tuned (steps_per_execution"
        "=10, tf.data autotune off)",
        "adamax-ps keras": "adamax-ps, Keras 3 model.fit",
        "adamax-ps keras tuned": "adamax-ps, Keras 3 model.fit, tf.data autotune off",
        "adamax-ps tf_keras": "adamax-ps, tf_keras model.fit",
        "adamax-ps keras tuned prefetch": "adamax-ps, Keras 3 model.fit, tf.data "
        "autotune off, prefetch=1",
        "adamax-ps torch": "adamax-ps, PyTorch loop",
        "adamax-ps torch prefetch": "adamax-ps, PyTorch loop, prefetch=1",
        "adamax-ps torch bfloat16": "adamax-ps, PyTorch loop, bfloat16 wire",
    }
    for n, systems in doc["servers"].items():
        seconds = {name: r["seconds"] for name, r in systems.items()}
        for name, r in systems.items():
            tuned = _per_round(seconds, "tf fit x10", name)
            lines.append(
                f"| {n} | {labels.get(name, name)} | {span(r['steps_per_s'], digits=1)}"
                f" | {span(r['x_tf_fit'])} | {span(tuned)} | "
                f"{r['final_heldout_loss']:.4f} |"
            )
    first = doc["servers"][min(doc["servers"], key=int)]
    seconds = {name: r["seconds"] for name, r in first.items()}
    ours = [name for name in first if name.startswith("adamax-ps")]
    losses = [first[n]["final_heldout_loss"] for n in ours]
    tf, workers = doc["threads"]["tensorflow"], doc["threads"]["adamax_ps_workers"]
    lines += [
        "",
        "Training steps/s with "
        f"{min(doc['servers'], key=int)} server(s), against TensorFlow's model.fit "
        "(default / tuned): "
        + "; ".join(
            f"{labels[n].removeprefix('adamax-ps, ')} "
            f"{span(first[n]['x_tf_fit'])} / "
            f"{span(_per_round(seconds, 'tf fit x10', n))}"
            for n in ours
        )
        + f". Held-out loss after the same steps: TensorFlow "
        f"{first['tf fit']['final_heldout_loss']:.4f} (default) and "
        f"{first['tf fit x10']['final_heldout_loss']:.4f} (tuned), adamax-ps "
        f"{_range_text(min(losses), max(losses))} (from "
        f"{doc['initial_heldout_loss']:.4f} at the start).",
        "",
        "![held-out loss against steps](bench/results/training_fit.png)",
        "",
        f"- Threads: TensorFlow's in-process cluster intra-op {tf['intra_op']}, "
        f"inter-op {tf['inter_op']}; each adamax-ps worker intra-op "
        f"{workers['intra_op']}, inter-op {workers['inter_op']}. An adamax-ps "
        "step is one request a server: the push held back from the step before, "
        "sent with the read of the batch's rows and the dense layer. "
        "prefetch=1 sends the push in the background and reads the rows beside "
        "it (at most one step stale); the bfloat16 wire halves the gradient and "
        "row bytes (exact float32 on the servers).",
    ]
    return "\n".join(lines) + "\n"


# bench/training.py ------------------------------------------------------------------


def _total_steps(doc: dict) -> int:
    settings = doc["settings"]
    return settings["lockstep"] + settings["rounds"] * settings["steps"]


def training(doc: dict) -> str:
    settings = doc["settings"]
    lines = [
        "End to end against TensorFlow ParameterServerStrategy (same model, data, "
        f"initial values and Keras 2 Adamax; 2 workers; {settings['rounds']} "
        f"interleaved rounds of {settings['steps']} steps, medians [min-max]; "
        "`python bench/training.py`)",
        "",
        "| servers | system | steps/s | gradient MB/s | x TensorFlow | "
        f"held-out loss after {_total_steps(doc)} steps |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for n, r in doc["servers"].items():
        for name in ("tensorflow", "adamax-ps"):
            s = r[name]["steps_per_s"]
            mb = r[name]["gradient_bytes_per_s"]["median"] / 1e6
            ratio = "1.00" if name == "tensorflow" else span(r["speedup"])
            label = "TensorFlow PS strategy" if name == "tensorflow" else "adamax-ps"
            lines.append(
                f"| {n} | {label} | {span(s, digits=1)} | {mb:.1f} | {ratio} | "
                f"{r[name]['final_heldout_loss']:.4f} |"
            )
    lines.append("")
    for n, r in doc["servers"].items():
        lock = r["lockstep"]
        verdict = "identical" if lock["identical"] else "DIFFERENT"
        lines.append(
            f"- {n} server(s): the first {lock['steps']} steps taken one at a time "
            f"gave {verdict} weights ({lock['differing']} values differ, max "
            f"{lock['max_abs']:.2g}) and "
            f"{'identical' if lock['losses_identical'] else 'different'} losses; "
            f"after asynchronous training the held-out losses differ by "
            f"{r['loss_relative_difference']:.2%} (from "
            f"{doc['initial_heldout_loss']:.4f} at the start)."
        )
    threads, model = doc["threads"], doc["model"]
    tf, workers = threads["tensorflow"], threads["adamax_ps_workers"]
    lines.append(
        f"- Threads: TensorFlow's in-process servers intra-op {tf['intra_op']}"
        f", inter-op {tf['inter_op']}; adamax-ps workers compute gradients "
        f"with TensorFlow at intra-op {workers['intra_op']}, inter-op "
        f"{workers['inter_op']} each. A step's gradient is "
        f"{model['step_bytes'] / 1e6:.2f} MB ({model['rows']} rows x "
        f"{model['dim']} float32 + int64 ids + the dense layer)."
    )
    return "\n".join(lines) + "\n"


# The summary (README's latest block) ------------------------------------------------


def latest(parts: dict) -> str:
    """The peers' summary from the parts present; the plots are linked."""
    lines = [
        "Against the peers, measured side by side in one run on this machine "
        f"({_machine(parts)}); medians of interleaved rounds [min-max], every "
        "ratio taken within its run. Full tables: "
        + ", ".join(f"[{p}.md](bench/results/{p}.md)" for p in parts)
        + ".",
        "",
    ]
    if "peers" in parts:
        lines += _peers_summary(parts["peers"])
    if "training" in parts:
        lines += _training_summary(parts["training"])
    if "scaling" in parts:
        lines += _scaling_summary(parts["scaling"])
    plots = [p for part in parts for p in PLOTS[part]]
    if plots:
        lines.append(" ".join(f"![{p[:-4]}](bench/results/{p})" for p in plots) + "\n")
    return "\n".join(lines)


def _machine(parts: dict) -> str:
    for part in parts.values():
        m = part.get("machine")
        if m:
            return f"{m['cores']} cores, {m['machine']}, Python {m['python']}"
    return "this machine"


def _peers_summary(doc: dict) -> list[str]:
    n = max(doc["dense"], key=int)
    lines = [
        f"| dense Adamax step, {float(n):.0e} float32, {doc['threads']} threads "
        "| ms | G params/s | GB/s | time / adamax-ps | first call s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in doc["dense"][n].items():
        if "error" in r:
            lines.append(f"| {name} | {_error(r)} | | | | |")
            continue
        lines.append(
            f"| {name} | {span(r['seconds'], 1e3, 1)} | "
            f"{r['params_per_s'] / 1e9:.2f} | {r['gb_per_s']:.1f} | "
            f"{span(r['time_over_ours'])} | {_first(r)} |"
        )
    lines += [
        "",
        "| sparse push, 1e6 x 64 table, 8192 Zipf ids | ms | time / adamax-ps | "
        "first call s |",
        "|---|---:|---:|---:|",
    ]
    for name, r in doc["sparse"]["cases"].items():
        if "error" in r:
            lines.append(f"| {name} | {_error(r)} | | |")
            continue
        lines.append(
            f"| {name} | {span(r['seconds'], 1e3, 1)} | "
            f"{span(r['time_over_ours'], digits=1)} | {_first(r)} |"
        )
    note = ""
    if SPARSE["tf_keras_no_reads"] not in doc["sparse"]["cases"]:
        note = (
            " This run predates the shared inputs and the comparison of "
            "TensorFlow's sparse paths (warm, with and without a fixed input "
            "signature and its whole-table reads); a new `bench/peers.py` run "
            "replaces it."
        )
    return [*lines, "", f"{_sparse_sentence(doc)} {BRACKETS}{note}", ""]


def _training_summary(doc: dict) -> list[str]:
    lines = [
        "| recommendation model, 2 workers | servers | steps/s | gradient MB/s | "
        f"x TensorFlow | held-out loss after {_total_steps(doc)} steps |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for n, r in doc["servers"].items():
        for name, label in (
            ("tensorflow", "TensorFlow ParameterServerStrategy"),
            ("adamax-ps", "adamax-ps"),
        ):
            s = r[name]["steps_per_s"]
            ratio = "1.00" if name == "tensorflow" else span(r["speedup"])
            lines.append(
                f"| {label} | {n} | {span(s, digits=1)} | "
                f"{r[name]['gradient_bytes_per_s']['median'] / 1e6:.0f} | "
                f"{ratio} | {r[name]['final_heldout_loss']:.4f} |"
            )
    head, settings = doc["headline"], doc["settings"]
    same = head["lockstep_identical"]
    first = doc["servers"][min(doc["servers"], key=int)]
    lines += [
        "",
        f"Training steps/s with {min(doc['servers'], key=int)} server: adamax-ps "
        f"{span(first['speedup'], suffix='x')} TensorFlow's. Both systems train "
        f"the same model: the first {settings['lockstep']} steps taken one at a "
        "time give "
        + ("bit-identical losses and weights" if same else "DIFFERENT weights")
        + "; after the asynchronous rounds the held-out losses differ by at most "
        f"{head['loss_relative_difference']:.1%} (from "
        f"{doc['initial_heldout_loss']:.4f} at the start). {BRACKETS}",
        "",
    ]
    return lines


def _scaling_summary(doc: dict) -> list[str]:
    lines = [
        "| adamax-ps scaling | pushes/s | p50 ms | p99 ms | x first |",
        "|---|---:|---:|---:|---:|",
    ]
    for sweep in ("workers", "shards", "servers"):
        for row in doc["sweeps"].get(sweep, []):
            if sweep == "workers" and row["kind"] != "sparse":
                continue
            rate = row["pushes_per_s"]
            lines.append(
                f"| {row['push']}, {row[sweep]} {sweep} | {rate['median']:,.0f} "
                f"[{rate['min']:,.0f}-{rate['max']:,.0f}] | "
                f"{row['p50_ms']['median']:.2f} | {row['p99_ms']['median']:.2f} | "
                f"{span(row['x_first'])} |"
            )
    head = doc["headline"]
    last = doc["checkpoints"][-1]
    spread_note = (
        f". {BRACKETS}"
        if "write_gb_per_s_rounds" in last
        else f"; medians of {last['rounds']} rounds, {NOT_RECORDED}."
    )
    lines += [
        "",
        f"Memory: resident {head['resident_over_state']:.2f}x the 12 bytes of state "
        "per parameter (whole server processes; one reading per configuration, "
        "not rounds). Checkpoint of "
        f"{last['state_bytes'] / 1e9:.1f} GB: write {rate_text(last, 'write')} "
        f"GB/s ({last['write_gb_per_s'] / last['plain_write_gb_per_s']:.2f}x a "
        f"plain file), restore {rate_text(last, 'restore')} GB/s "
        f"({last['restore_gb_per_s'] / last['plain_read_gb_per_s']:.2f}x)"
        f"{spread_note}",
        "",
    ]
    return lines
