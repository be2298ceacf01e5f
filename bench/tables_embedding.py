"""Markdown of the embedding-table benchmark (bench/embedding_tables.py), from its JSON.

Pure, like ``tables.py``: a results document in, markdown out; ratios are
taken round by round from the samples the document keeps.
"""

from __future__ import annotations

from tables import per_round, span

BATCH = 8192
OURS = "adamax-ps lookup (TablePart.rows_of)"
PUSHED = ("grpc", "local")
PUSH_ROWS = [
    ("push over gRPC (`adamax-ps serve`)", "grpc", "push"),
    ("gather over gRPC", "grpc", "gather"),
    ("push in-process (`ParameterService.apply`)", "local", "push"),
    ("gather in-process (`gather` / `gather_keys`)", "local", "gather"),
]


def _code(doc: dict) -> str:
    code = doc.get("code")
    if code is None:
        return "code not recorded"
    changed = len(code["changed"])
    return f"code {code['commit']}" + (
        f" with {changed} uncommitted files in server/, client/, common/"
        if changed
        else ""
    )


def _ms(s: dict) -> str:
    return span(s, 1e3, 3)


def _mrows(s: dict, n: int = BATCH) -> str:
    return f"{n / s['median'] / 1e6:.2f}"


def _ratio(base: dict, row: dict) -> dict:
    """How many times ``row``'s rate is ``base``'s, round by round."""
    return per_round(base["samples"], row["samples"])


def push_ratio(doc: dict, transport: str, op: str) -> dict:
    rows = doc["pushes"]
    return _ratio(rows[f"{transport} fixed {op}"], rows[f"{transport} keyed {op}"])


def _group(name: str) -> str:
    if "insert" in name:
        return "insert 8192 new keys"
    if "gather" in name or "value[rows]" in name or "float32[64]" in name:
        return "gather 64 float32 per key"
    return "lookup: key -> row"


def embedding_tables(doc: dict) -> str:
    m = doc["machine"]
    lines = [
        f"Embedding-table benchmark ({m['machine']}, {m['cores']} cores, "
        f"{doc['shards']} shards, {doc['rounds']} interleaved rounds of "
        f"{doc['reps']} calls, medians [min-max] of the rounds, per-round "
        f"ratios; {_code(doc)}; `python bench/embedding_tables.py`)",
        "",
        f"| 8192 Zipf keys (~{doc['unique_keys']:.0f} unique) x 64 float32, 1e6 "
        "rows held | fixed rows: ms | M rows/s | keyed table: ms | M rows/s | "
        "keyed / fixed |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, transport, op in PUSH_ROWS:
        fixed = doc["pushes"][f"{transport} fixed {op}"]
        keyed = doc["pushes"][f"{transport} keyed {op}"]
        lines.append(
            f"| {label} | {_ms(fixed)} | {_mrows(fixed)} | {_ms(keyed)} | "
            f"{_mrows(keyed)} | {span(push_ratio(doc, transport, op), suffix='x')} |"
        )
    lines += [
        "",
        f"| the same keys, a table of 1e6 keys (TensorFlow {doc['tensorflow']}) "
        "| µs | M keys/s | x dict |",
        "|---|---:|---:|---:|",
    ]
    groups: dict[str, list[str]] = {}
    for name in doc["anchors"]:
        groups.setdefault(_group(name), []).append(name)
    for group, names in groups.items():
        base = doc["anchors"][next(n for n in names if n.startswith("dict"))]
        lines.append(f"| **{group}** | | | |")
        for name in names:
            row = doc["anchors"][name]
            lines.append(
                f"| {name} | {span(row, 1e6, 0)} | {_mrows(row)} | "
                f"{span(_ratio(base, row), suffix='x')} |"
            )
    lines += ["", *_memory(doc["memory"]), "", *_eviction(doc["eviction"])]
    lines += ["", headline_text(doc)]
    return "\n".join(lines) + "\n"


def _memory(mem: dict) -> list[str]:
    ideal = mem["ideal_bytes_per_row"]
    lines = [
        f"| memory, dim 64 float32 + Adamax m, v (ideal {ideal} B/row) | allocated "
        f"rows | reported B/row | x {ideal} | RSS growth B/row | x {ideal} | RSS "
        "growth GB | peak RSS GB | s from empty |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in mem["milestones"]:
        lines.append(
            f"| {row['rows']:,} | {row['allocated']:,} | {row['bytes_per_row']:.0f} | "
            f"{row['bytes_per_row'] / ideal:.2f} | {row['rss_bytes_per_row']:.0f} | "
            f"{row['rss_bytes_per_row'] / ideal:.2f} | {row['rss_growth_gb']:.2f} | "
            f"{row['peak_rss_gb']:.2f} | {row['seconds']:.0f} |"
        )
    reached = [row["rows"] for row in mem["milestones"]]
    if mem["stopped"] or len(reached) < len(mem["targets"]):
        lines += [
            "",
            f"Stopped before {max(mem['targets']):,} rows ({mem['stopped']}); "
            f"{mem['free_gb_before']:.1f} GB were free at the start.",
        ]
    return lines


def _eviction(ev: dict) -> list[str]:
    lines = [
        f"| 8192-key pushes, tables at capacity {ev['capacity']:,} rows (LRU), "
        f"{ev['rounds']} rounds of {ev['seconds']:.1f} s | pushes/s | p50 ms | "
        "p99 ms | max ms | rounds' p50 ms | new keys per push | evicted | eviction "
        "batches | longest lock ms | lock p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in ev["cases"].items():
        lock = row["lock_longest_ms"]
        lock_text = "-" if lock is None else f"{lock:.2f}"
        p99 = "-" if row["lock_p99_ms"] is None else f"{row['lock_p99_ms']:.2f}"
        lines.append(
            f"| {name} | {row['pushes_per_s']:.0f} | {row['p50_ms']:.2f} | "
            f"{row['p99_ms']:.2f} | {row['max_ms']:.1f} | "
            f"{span(row['p50_rounds_ms'])} | {row['admitted_per_push']:.0f} | "
            f"{row['evicted']:,} | {row['lock_batches']} | {lock_text} | {p99} |"
        )
    return lines


def _lookup_ratios(doc: dict) -> tuple[dict, dict]:
    """Our lookup's speed over a dict's and over TF DenseHashTable's."""
    anchors = doc["anchors"]
    ours = anchors[OURS]
    return (
        _ratio(anchors["dict lookup, np.fromiter"], ours),
        _ratio(anchors["TF DenseHashTable lookup"], ours),
    )


def headline(doc: dict) -> dict:
    """The figures bench/embedding_tables.py prints with --json."""
    dict_x, tf_x = _lookup_ratios(doc)
    cases = list(doc["eviction"]["cases"].values())
    return {
        "keyed_vs_fixed_push_grpc": push_ratio(doc, "grpc", "push")["median"],
        "keyed_vs_fixed_push_local": push_ratio(doc, "local", "push")["median"],
        "lookup_vs_dict": dict_x["median"],
        "lookup_vs_tf_dense": tf_x["median"],
        "rows_measured": doc["memory"]["milestones"][-1]["rows"],
        "bytes_per_row": doc["memory"]["milestones"][-1]["bytes_per_row"],
        "evicting_push_p99_ms": cases[0]["p99_ms"],
        "eviction_lock_longest_ms": cases[0]["lock_longest_ms"],
    }


def headline_text(doc: dict) -> str:
    dict_x, tf_x = _lookup_ratios(doc)
    grpc, local = (span(push_ratio(doc, t, "push"), suffix="x") for t in PUSHED)
    mem = doc["memory"]["milestones"][-1]
    bg = next(iter(doc["eviction"]["cases"].values()))
    return (
        f"Headline: a keyed push moves {grpc} the fixed-row push's rows/s over "
        f"gRPC (goal: 0.5x) and {local} in-process; the server's index looks "
        f"keys up {span(dict_x, suffix='x')} as fast as a dict and "
        f"{span(tf_x, suffix='x')} as fast as TF's DenseHashTable; "
        f"{mem['bytes_per_row']:.0f} B/row reported ({mem['rss_bytes_per_row']:.0f} "
        f"resident) at {mem['rows']:,} rows, against 768 B for w, m and v; at "
        f"capacity, pushes of a Zipf stream take p99 {bg['p99_ms']:.1f} ms with the "
        f"evictor, whose longest lock hold was {bg['lock_longest_ms']:.1f} ms. "
        "Brackets: the fastest and slowest round."
    )
