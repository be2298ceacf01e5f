"""Markdown of this project's own benchmarks (kernels to scaling), from their JSON.

Every function here is pure: a results document (as read back from
``bench/results/NAME.json``) in, markdown out. ``readme.render`` picks the
function, so README.md's blocks and ``bench/results/*.md`` are one rendering of
one source. Older documents lack some fields (per-round samples, spreads):
those figures are rendered with a note saying the spread was not recorded.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

GB = 1e9
NOT_RECORDED = "spread not recorded in this run"


# Spreads. -------------------------------------------------------------------------


def spread(values: Sequence[float]) -> dict[str, float]:
    values = [float(v) for v in values]
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def per_round(numerators: Sequence[float], denominators: Sequence[float]) -> dict:
    """The spread of a ratio taken round by round (both measured in each round)."""
    return spread([a / b for a, b in zip(numerators, denominators, strict=True)])


def span(s: dict, scale: float = 1.0, digits: int = 2, suffix: str = "") -> str:
    """``median [min-max]`` of a spread, each times ``scale``."""
    f = f"{{:.{digits}f}}"
    median, low, high = (f.format(s[k] * scale) for k in ("median", "min", "max"))
    return f"{median}{suffix} [{low}-{high}]"


def inverse(s: dict, scale: float = 1.0) -> dict:
    """The spread of ``scale / x`` for a spread of ``x`` (min and max swap)."""
    return {
        "median": scale / s["median"],
        "min": scale / s["max"],
        "max": scale / s["min"],
        "n": s.get("n", 0),
    }


# bench/kernels.py -------------------------------------------------------------------


def _ms(row: dict) -> dict:
    return {"median": row["median_ms"], "min": row["min_ms"], "max": row["max_ms"]}


def _ratio(row: dict, base: dict) -> dict | None:
    """``base``'s time over ``row``'s, round by round, if the samples are kept."""
    if "samples_ms" in row and "samples_ms" in base:
        return per_round(base["samples_ms"], row["samples_ms"])
    return None


def kernels(doc: dict) -> str:
    rounds = doc.get("rounds")
    sparse_rounds = doc.get("sparse_rounds")
    sampled = "samples_ms" in doc["sparse"]["adamax-ps"]
    per = "per-round ratios" if sampled else "ratios of medians"
    lines = [
        "Kernel benchmark ("
        + (f"{doc['processor']}, " if "processor" in doc else "")
        + (f"{rounds} interleaved rounds, " if rounds else "")
        + f"medians [min-max], {per}; `python bench/kernels.py`)",
        "",
        "| dense float32 | params | ms | M params/s | GB/s (28 B/param) | "
        "x numpy in-place |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for n, row in doc["dense"].items():
        base = row["numpy in-place (out=, scratch)"]
        for name, r in row.items():
            ratio = _ratio(r, base)
            x = (
                f"{ratio['median']:.2f}"
                if ratio
                else f"{r['params_per_s'] / base['params_per_s']:.2f}"
            )
            lines.append(
                f"| {name} | {float(n):.0e} | {span(_ms(r), digits=3)} | "
                f"{r['params_per_s'] / 1e6:,.0f} | {r['gb_per_s']:.1f} | {x} |"
            )
    lines += [
        "",
        f"| sparse 1e6 x 64 float32, 8192 Zipf indices "
        f"(~{doc['sparse_unique_rows']:.0f} unique"
        + (f"; {sparse_rounds} rounds" if sparse_rounds else "")
        + ") | ms | M input rows/s | x numpy |",
        "|---|---:|---:|---:|",
    ]
    base = doc["sparse"]["numpy argsort + add.reduceat"]
    for name, r in doc["sparse"].items():
        ratio = _ratio(r, base)
        x = ratio["median"] if ratio else r["rows_per_s"] / base["rows_per_s"]
        lines.append(
            f"| {name} | {span(_ms(r), digits=3)} | {r['rows_per_s'] / 1e6:.2f} | "
            f"{x:.2f} |"
        )
    return "\n".join([*lines, "", _kernels_headline(doc)]) + "\n"


def fastest(rows: dict, kind: str) -> dict:
    """Of a size's kernel rows, the faster of ``kind``'s 1- and 2-thread runs
    (``kind``: "adamax-ps fused" or "probe 4R3W")."""
    return max(
        (rows[f"{kind}, 1 thread"], rows[f"{kind}, 2 threads"]),
        key=lambda r: r["params_per_s"],
    )


def _kernels_headline(doc: dict) -> str:
    dense = doc["dense"]
    size = max(dense, key=float)
    big = dense[size]
    ours, probe = fastest(big, "adamax-ps fused"), fastest(big, "probe 4R3W")
    at = next((n for n in dense if float(n) == 1e7), size)  # quick runs stop sooner
    ten = dense[at]
    ours_10 = fastest(ten, "adamax-ps fused")
    numpy_10 = ten["numpy in-place (out=, scratch)"]
    rate = inverse(_ms(ours), float(size) / 1e9 * 1e3)
    sparse = doc["sparse"]["adamax-ps"]
    rows = inverse(_ms(sparse), 8192 / 1e6 * 1e3)
    of_probe, x_numpy = _ratio(ours, probe), _ratio(ours_10, numpy_10)
    if of_probe and x_numpy:
        ratios = (
            f"{span(of_probe, 100, 0, '%')} of the 4R3W probe; "
            f"{span(x_numpy, digits=1, suffix='x')} the best in-place numpy at "
            f"{float(at):.0e}"
        )
    else:
        ratios = (
            f"{ours['gb_per_s'] / probe['gb_per_s']:.0%} of the 4R3W probe; "
            f"{ours_10['params_per_s'] / numpy_10['params_per_s']:.1f}x the best "
            f"in-place numpy at {float(at):.0e} (ratios of medians: per-round "
            f"{NOT_RECORDED})"
        )
    return (
        f"Headline: dense {span(rate)} G params/s at {float(size):.0e} = {ratios}; "
        f"sparse {span(rows, digits=1)} M input rows/s. Brackets: the fastest and "
        "slowest round."
    )


# bench/transport.py -----------------------------------------------------------------


def transport(r: dict) -> str:
    floor = r["bare_grpc"]
    lines = [
        "Transport benchmark (loopback, one server process, "
        f"{r['rounds']} interleaved rounds; `python bench/transport.py`)",
        "",
        "| 64 MB push | GB/s (median) | GB/s (best) | x raw TCP | x bare gRPC |",
        "|---|---:|---:|---:|---:|",
    ]
    tcp = r["tcp"]["gb_per_s"]
    bare = floor["stream"]["gb_per_s"]
    rows = [
        ("raw TCP, 2 processes (floor)", r["tcp"]),
        ("bare gRPC, 1 MB raw chunks, no decode (floor)", floor["stream"]),
        ("adamax-ps dense push applied, grpc://, malloc tuned", r["dense_tuned"]),
        ("adamax-ps dense push applied, grpc://, default malloc", r["dense_untuned"]),
        ("adamax-ps dense push applied, http://, malloc tuned", r["http_dense"]),
    ]
    for name, row in rows:
        lines.append(
            f"| {name} | {row['gb_per_s']:.2f} | {row['best_gb_per_s']:.2f} | "
            f"{row['gb_per_s'] / tcp:.2f} | {row['gb_per_s'] / bare:.2f} |"
        )
    small, unary = r["small"], floor["unary_1kb"]
    lines += [
        "",
        "| 1 KB, sequential | p50 ms | p99 ms | calls/s | p50 - bare p50 |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in (
        ("bare gRPC unary echo (floor)", unary),
        ("adamax-ps push (256 float32), grpc://", small),
        ("adamax-ps push (256 float32), http://", r["http_small"]),
    ):
        lines.append(
            f"| {name} | {row['p50_ms']:.3f} | {row['p99_ms']:.3f} | "
            f"{row['calls_per_s']:,.0f} | {row['p50_ms'] - unary['p50_ms']:+.3f} |"
        )
    lines += [
        "",
        "| sparse, 8192 Zipf rows x 64 floats into 1e6 rows, 4 threads | pushes/s | "
        "M input rows/s | rounds min-max |",
        "|---|---:|---:|---:|",
    ]
    for name, row in (("grpc://", r["sparse"]), ("http://", r["http_sparse"])):
        rounds = row["rows_per_s_rounds"]
        lines.append(
            f"| adamax-ps, {name} | {row['pushes_per_s']:.0f} | "
            f"{row['rows_per_s'] / 1e6:.2f} | "
            f"{rounds['min'] / 1e6:.2f}-{rounds['max'] / 1e6:.2f} |"
        )
    return "\n".join(lines) + "\n"


# bench/service.py -------------------------------------------------------------------


def service(results: dict) -> str:
    t = results["throughput"]
    lines = [
        f"Service benchmark (in-process, {t['shards']} shards; "
        "`python bench/service.py`)",
        "",
        "| push | threads | pushes/s | p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, by_threads in t["cases"].items():
        for threads, r in by_threads.items():
            lines.append(
                f"| {name} | {threads} | {r['pushes_per_s']:,.0f} | {r['p50_ms']:.2f} "
                f"| {r['p99_ms']:.2f} |"
            )
    m = results["memory"]
    limit = 3.15 * GB + 200e6
    share = m["state_bytes"] / m["shards"]
    lines += [
        "",
        f"| memory, {m['variables_bytes'] / GB:.2f} GB of float32 variables + slots "
        f"({m['shards']} shards) | GB | limit GB |",
        "|---|---:|---:|",
        f"| resident at rest (process total) | "
        f"{(m['rss_at_rest'] + m['rss_baseline']) / GB:.3f} | {limit / GB:.3f} |",
        f"| resident at rest (service only) | {m['rss_at_rest'] / GB:.3f} | |",
        f"| resident peak while checkpointing (process total) | "
        f"{(m['rss_peak_checkpoint'] + m['rss_baseline']) / GB:.3f} | "
        f"{(limit + share) / GB:.3f} |",
        "",
        *_checkpoint_rows(m),
    ]
    return "\n".join(lines) + "\n"


def _checkpoint_rows(m: dict) -> list[str]:
    """Checkpoint write and restore, each under the plain file it is held to."""
    size = m["checkpoint_bytes"] / GB
    rows = [
        "| checkpoint of the same state (median of "
        f"{m['rounds']}, interleaved) | GB | seconds | GB/s | x plain file |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, key, plain_label, plain_key in (
        (
            "write (fsync, atomic rename, crc32)",
            "checkpoint_seconds",
            "plain file write + fsync",
            "write_seconds",
        ),
        (
            "restore from disk (read, verify crc32)",
            "restore_seconds",
            "plain file read from disk",
            "read_seconds",
        ),
    ):
        rate = m["checkpoint_bytes"] / m[key] / GB
        plain = m["checkpoint_bytes"] / m["plain"][plain_key] / GB
        rounds = m.get(f"{key}_rounds")
        seconds = span(rounds) if rounds else f"{m[key]:.2f}"
        rows += [
            f"| {label} | {size:.2f} | {seconds} | {rate:.2f} | {rate / plain:.2f} |",
            f"| {plain_label} | {size:.2f} | {m['plain'][plain_key]:.2f} | "
            f"{plain:.2f} | 1.00 |",
        ]
    return rows


# bench/durability.py ----------------------------------------------------------------


def durability(results: dict) -> str:
    floor = results["in_process"]["fsync_floor"]
    recorded = all("appends_per_s_rounds" in f for f in floor.values())
    lines = [
        "Disk floor (one thread appends a record and calls fsync; median of the "
        + ("rounds [min-max]): " if recorded else f"rounds, {NOT_RECORDED}): ")
        + "; ".join(
            f"{size} records {_appends(f)}/s (p50 {f['p50_ms']:.2f} ms, "
            f"{f['mb_per_s']:,.0f} MB/s)"
            for size, f in floor.items()
        )
        + ".",
        "",
        "| push | threads | checkpoint pushes/s | wal pushes/s | wal / checkpoint | "
        "wal p50 ms | pushes per fsync | log MB/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    plain, logged = results["in_process"]["checkpoint"], results["in_process"]["wal"]
    for name, by_threads in plain.items():
        for threads, base in by_threads.items():
            wal = logged[name][threads]
            lines.append(
                f"| {name} | {threads} | {base['pushes_per_s']:,.0f} | "
                f"{wal['pushes_per_s']:,.0f} | "
                f"{wal['pushes_per_s'] / base['pushes_per_s']:.2f} | "
                f"{wal['p50_ms']:.2f} | {wal['pushes_per_fsync']:.1f} | "
                f"{wal['log_mb_per_s']:,.0f} |"
            )
    grpc = results["grpc"]
    lines.append(
        f"| gRPC, 1 KB, one worker | 8 | {grpc['checkpoint']['pushes_per_s']:,.0f} | "
        f"{grpc['wal']['pushes_per_s']:,.0f} | "
        f"{grpc['wal']['pushes_per_s'] / grpc['checkpoint']['pushes_per_s']:.2f} "
        "| | | |"
    )
    return "\n".join(lines) + "\n"


def _appends(floor: dict) -> str:
    rounds = floor.get("appends_per_s_rounds")
    if rounds is None:
        return f"{floor['appends_per_s']:,.0f}"
    return f"{floor['appends_per_s']:,.0f} [{rounds['min']:,.0f}-{rounds['max']:,.0f}]"


# bench/scaling.py -------------------------------------------------------------------


def scaling(doc: dict) -> str:
    lines = [
        f"Scaling on one machine (loopback, real servers and worker processes; "
        f"{doc['rounds']} interleaved rounds of {doc['seconds_per_point']:g} s per "
        "point, medians [min-max]; `python bench/scaling.py`)",
    ]
    titles = {
        "workers": ("concurrent workers, 1 server", "workers"),
        "size": ("tensor size, 1 server", "workers"),
        "shards": ("shards per server (--shards), 1 server", "shards"),
        "servers": ("servers on one machine, 2 shards each", "servers"),
    }
    for sweep, rows in doc["sweeps"].items():
        title, column = titles[sweep]
        first = rows[0][column]
        lines += [
            "",
            f"| {title} | {column} | pushes/s | MB/s | p50 ms | p99 ms | "
            f"x {first} {column} |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for row in rows:
            rate = row["pushes_per_s"]
            lines.append(
                f"| {row['push']} | {row[column]} | {rate['median']:,.0f} "
                f"[{rate['min']:,.0f}-{rate['max']:,.0f}] | "
                f"{row['bytes_per_s']['median'] / 1e6:,.0f} | "
                f"{row['p50_ms']['median']:.2f} | {row['p99_ms']['median']:.2f} | "
                f"{row['x_first']['median']:.2f} |"
            )
    lines += [
        "",
        "| memory of the servers above (value + m + v = 12 B/param) | M params | "
        "resident GB | bytes/param | x 12 B |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, m in doc["server_memory"].items():
        lines.append(
            f"| {name} | {m['params'] / 1e6:.1f} | {m['resident_bytes'] / 1e9:.2f} | "
            f"{m['bytes_per_param']:.2f} | {m['over_state']:.2f} |"
        )
    lines += [
        "",
        "| checkpoint (service, 4 shards; median of 3 interleaved) | state GB | "
        "write GB/s | x plain write | restore GB/s | x plain read | resident / "
        "state |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c in doc["checkpoints"]:
        lines.append(
            f"| {c['variables_gb']:.2f} GB of variables | {c['state_bytes'] / 1e9:.2f}"
            f" | {rate_text(c, 'write')} | "
            f"{c['write_gb_per_s'] / c['plain_write_gb_per_s']:.2f} | "
            f"{rate_text(c, 'restore')} | "
            f"{c['restore_gb_per_s'] / c['plain_read_gb_per_s']:.2f} | "
            f"{c['over_state_service']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def rate_text(checkpoint: dict, kind: str) -> str:
    """A checkpoint's write or restore GB/s, with its rounds' spread if kept."""
    rounds = checkpoint.get(f"{kind}_gb_per_s_rounds")
    if rounds is None:
        return f"{checkpoint[f'{kind}_gb_per_s']:.2f}"
    return span(rounds)
