"""Markdown of the rescale benchmark (bench/rescale.py), from its JSON.

Pure, like ``tables.py``: a results document in, markdown out. Every figure
is a spread over the rounds; ratios and shares are taken round by round. The
parts of the new servers' start are those of the one ready last (the one the
pause waits for), those of the stop of the old server that exited last; a
new server's parts add up to its time to ready within its log's rounding
(10 ms; ``start_rest`` in ``parts``).
"""

from __future__ import annotations

from tables import GB, spread

GOAL = 1.5
TIMED = ("before_import", "import", "first_checkpoint", "after_checkpoint")


def _span(s: dict, digits: int = 2, suffix: str = "") -> str:
    f = f"{{:.{digits}f}}"
    median, low, high = (f.format(s[k]) for k in ("median", "min", "max"))
    return f"{median}{suffix} [{low}-{high}]"


def _percent(s: dict) -> str:
    return f"{s['median'] * 100:.0f}% [{s['min'] * 100:.0f}-{s['max'] * 100:.0f}%]"


def _start(new: dict) -> dict[str, float]:
    """A new server's launch to ready, split by its log."""
    return {
        "start": new["ready"],
        **{key: new[key] for key in TIMED},
        "start_rest": new["ready"] - sum(new[key] for key in TIMED),
        "cpu": new["cpu"],
    }


def parts(sample: dict) -> dict[str, float]:
    """One round's pause split along its critical path, in seconds; and new
    server 2 started alone (``alone_*``)."""
    old = max(sample["old"], key=lambda o: o["exit"])
    last = max(sample["new"], key=lambda n: n["ready"])
    floor = sample["floor"]
    online = {}
    if "online" in sample:  # results from before the online rescale lack it
        on, base = sample["online"], sample["online_floor"]
        online = {
            "online_pause": on["pause"],
            "online_freeze": on["freeze"],
            "online_adopt": on["adopt"],
            "online_commit": on["commit"],
            "online_floor": base["write"] + base["read"],
            "online_ratio": on["pause"] / (base["write"] + base["read"]),
        }
        if "settle" in on:  # after the pause, from results that have it
            online.update(online_settle=on["settle"], online_release=on["release"])
        if "online_port" in sample:  # the cuts over the transfer port
            port, floor = sample["online_port"], sample["online_port_floor"]
            online.update(
                online_port_pause=port["pause"],
                online_port_freeze=port["freeze"],
                online_port_adopt=port["adopt"],
                online_port_floor=floor["write"] + floor["read"],
                online_port_ratio=port["pause"] / (floor["write"] + floor["read"]),
            )
    return {
        **online,
        "pause": sample["pause"],
        "stop": sample["stop"],
        "stop_before": old["before_checkpoint"],
        "final_checkpoint": old["final_checkpoint"],
        "stop_after": old["after_checkpoint"],
        **_start(last),
        "start": sample["pause"] - sample["stop"],  # launch to the last ready
        "cpu": sum(n["cpu"] for n in sample["new"]),
        **{f"alone_{k}": v for k, v in _start(sample["alone"]).items()},
        "floor_write": floor["write"],
        "floor_read": floor["read"],
        "floor": floor["write"] + floor["read"],
        "floor_before": sum(sample["before"].values()),
        "floor_after": sum(sample["after"].values()),
        "ratio": sample["pause"] / (floor["write"] + floor["read"]),
    }


def figures(doc: dict) -> dict[str, dict]:
    """Every part's spread over the rounds, and its share of the pause."""
    each = [parts(s) for s in doc["rounds"]]
    out = {key: spread([r[key] for r in each]) for key in each[0]}
    for key in each[0]:
        whole = "online_pause" if key.startswith("online_") else "pause"
        out[f"{key}_share"] = spread([r[key] / r[whole] for r in each])
    cores = doc["machine"]["cores"]
    out["busy"] = spread([r["cpu"] / (cores * r["start"]) for r in each])
    return out


ONLINE = [
    ("**online (`adamax-ps rescale`): pause, freeze until commit**", "online_pause"),
    ("- freeze: the old servers' changes drained, their cuts written", "online_freeze"),
    ("- adopt: each new server's import and new-layout checkpoint", "online_adopt"),
    ("- commit: each server's layout recorded, serving", "online_commit"),
]
SETTLED = [  # after the pause (results from before it lack them)
    (
        "after the pause, workers pushing: settle (the new layout's first checkpoints)",
        "online_settle",
    ),
    ("- release (every server lets go of its cut)", "online_release"),
]
PORT = [  # the same, the cuts over the transfer port (results that have it)
    (
        "**online, the cuts over the transfer port as between machines "
        "(`--transfer-port-only`): pause**",
        "online_port_pause",
    ),
    ("- freeze", "online_port_freeze"),
    ("- adopt", "online_port_adopt"),
    ("- its own floor, measured as the one above", "online_port_floor"),
]
ROWS = [
    ("**offline: SIGTERM to the old servers until every new one is ready**", "pause"),
    ("stop: until both old servers exited", "stop"),
    ("- SIGTERM to its final checkpoint (gRPC and HTTP stop)", "stop_before"),
    ("- its final checkpoint (the old server that exited last)", "final_checkpoint"),
    ("- after it (close, process exit)", "stop_after"),
    ("start: until the 3 new servers are ready (the last one)", "start"),
    ("- launch to its import (Python, imports, numba, set-up)", "before_import"),
    ("- import of its rows from the old checkpoints", "import"),
    ("- its own first checkpoint", "first_checkpoint"),
    ("- first checkpoint to ready (warm-up, gRPC, HTTP)", "after_checkpoint"),
]
FLOOR = [
    ("**floor: write all bytes, 2 files (a thread each), fsync**", "floor_write"),
    ("**floor: read the bytes that move (a thread per new server)**", "floor_read"),
    ("**floor: write + read (the mean of the two below)**", "floor"),
    ("- right before the rescale (write + read)", "floor_before"),
    ("- right after the rescale (write + read)", "floor_after"),
]


def rescale(doc: dict) -> str:
    m, lay = doc["machine"], doc["layout"]
    fig = figures(doc)
    cores = m["cores"]
    lines = [
        f"Rescale benchmark ({m['machine']}, {cores} cores, one disk; "
        f"{len(doc['rounds'])} rounds, each a rescale with the floor measured "
        "right before and right after it, medians [min-max] of the rounds, "
        f"per-round ratios and shares; {_code(doc)}; "
        "`python bench/rescale.py`)",
        "",
        _state(doc),
        "",
        f"| 2 -> 3 servers, {lay['total_bytes'] / GB:.2f} GB of w, m, v | s | "
        "share of the pause | new server 2 alone on the machine: s |",
        "|---|---:|---:|---:|",
    ]
    for label, key in ONLINE if "online_pause" in fig else ():
        if key == "online_adopt" and "online_settle" in fig:
            label = "- adopt: each new server's import of its rows"
        lines.append(
            f"| {label} | {_span(fig[key])} | {_percent(fig[f'{key}_share'])} | |"
        )
    for label, key in SETTLED if "online_settle" in fig else ():
        lines.append(f"| {label} | {_span(fig[key])} | | |")
    for label, key in PORT if "online_port_pause" in fig else ():
        lines.append(f"| {label} | {_span(fig[key])} | | |")
    for label, key in ROWS:
        if key == "pause" and "online_pause" not in fig:  # results from before
            label = (
                "**pause: SIGTERM to the old servers until every new server is ready**"
            )
        alone = fig.get(f"alone_{key}")
        lines.append(
            f"| {label} | {_span(fig[key])} | {_percent(fig[f'{key}_share'])} | "
            f"{_span(alone) if alone else ''} |"
        )
    lines.append(
        f"| CPU time until ready: the 3 new servers summed; server 2 alone | "
        f"{_span(fig['cpu'])} | {_percent(fig['busy'])} of {cores} cores through "
        f"the start | {_span(fig['alone_cpu'])} |"
    )
    empty = doc["empty_server_start"]
    lines.append(
        "| an empty server, launch to ready, 2 at once (the old cluster's start); "
        f"CPU s | {_span(spread([e['ready'] for e in empty]))} | | CPU "
        f"{_span(spread([e['cpu'] for e in empty]))} |"
    )
    for label, key in FLOOR:
        lines.append(f"| {label} | {_span(fig[key])} | | |")
    if "online_pause" in fig:
        lines.append(
            "| floor right before the freeze and after the settle, servers up, warm "
            "(write + read) | "
            f"{_span(fig['online_floor'])} | | |"
        )
        lines.append(
            f"| **online pause / floor (goal: at most {GOAL:g}x)** | "
            f"{_span(fig['online_ratio'], suffix='x')} | | |"
        )
        if "online_port_ratio" in fig:
            lines.append(
                "| online over the transfer port, pause / floor | "
                f"{_span(fig['online_port_ratio'], suffix='x')} | | |"
            )
    lines.append(
        f"| **offline pause / floor** | {_span(fig['ratio'], suffix='x')} | | |"
        if "online_pause" in fig
        else f"| **pause / floor (goal: at most {GOAL:g}x)** | "
        f"{_span(fig['ratio'], suffix='x')} | | |"
    )
    lines += ["", *_servers(doc), "", headline_text(doc)]
    return "\n".join(lines) + "\n"


def _code(doc: dict) -> str:
    code = doc["code"]
    changed = len(code["changed"])
    return f"code {code['commit']}" + (
        f" with {changed} uncommitted files in server/, client/, common/"
        if changed
        else ""
    )


def _state(doc: dict) -> str:
    lay = doc["layout"]
    scaled = (
        f" (scaled down to fit the {doc['available_gb']:.1f} GB available)"
        if doc["scaled_down"]
        else ""
    )
    return (
        f"State: `emb`, {lay['rows']:,} x {lay['dim']} float32 split by rows, and a "
        f"hash-keyed table of {lay['keys']:,} keys x {lay['dim']}, each pushed once "
        f"by Adamax: {lay['total_bytes'] / GB:.2f} GB of w, m, v{scaled}. From 2 to "
        f"3 servers, the rows whose server changes (placement rule) and the keys "
        f"whose server changes (jump hash) are {lay['moved_bytes'] / GB:.2f} GB "
        f"({lay['moved_bytes'] / lay['total_bytes']:.0%}). Offline, each new "
        "server nevertheless reads all it owns (below); online, an old server "
        "keeps the rows it still owns in place and reads the rest. Both the "
        "servers' import and the floor's read find the files just written in the "
        "page cache. This virtual machine hands freed memory back to its host "
        "within seconds, and memory touched again then costs up to 2 s per GB "
        "instead of 0.13 s: a phase's pace depends on what ran just before it, "
        "hence the floor on both sides (around the online rescale, run twice "
        "and taken warm)."
    )


def _servers(doc: dict) -> list[str]:
    lay = doc["layout"]
    lines = [
        "| new server | owns GB | moves in GB (from another index) | imported GB "
        "(its log) | import s | import GB/s | first checkpoint GB | s | GB/s | "
        "CPU s to ready |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for k in range(len(lay["new_bytes"])):
        per = [s["new"][k] for s in doc["rounds"]]
        imported = per[0]["import_bytes"]
        written = per[0]["checkpoint_bytes"]
        imp = spread([p["import"] for p in per])
        first = spread([p["first_checkpoint"] for p in per])
        lines.append(
            f"| {k} | {lay['new_bytes'][k] / GB:.2f} | {lay['moved_to'][k] / GB:.2f} "
            f"| {imported / GB:.2f} | {_span(imp)} | "
            f"{imported / GB / imp['median']:.2f} | {written / GB:.2f} | "
            f"{_span(first)} | {written / GB / first['median']:.2f} | "
            f"{_span(spread([p['cpu'] for p in per]))} |"
        )
    old = [s["old"] for s in doc["rounds"]]
    for s in range(len(old[0])):
        final = spread([o[s]["final_checkpoint"] for o in old])
        nbytes = doc["rounds"][0]["old_checkpoint_bytes"][s]
        lines.append(
            f"| old {s}: final checkpoint | {lay['old_bytes'][s] / GB:.2f} | | | | | "
            f"{nbytes / GB:.2f} | {_span(final)} | "
            f"{nbytes / GB / final['median']:.2f} | |"
        )
    return lines


def headline(doc: dict) -> dict:
    """The figures bench/rescale.py prints with --json."""
    fig = figures(doc)
    lay = doc["layout"]
    online = {}
    if "online_pause" in fig:
        online = {
            "online_pause_s": fig["online_pause"]["median"],
            "online_pause_over_floor": fig["online_ratio"]["median"],
            "online_goal_met": fig["online_ratio"]["median"] <= GOAL,
        }
        if "online_port_pause" in fig:
            online["online_port_pause_s"] = fig["online_port_pause"]["median"]
            online["online_port_over_floor"] = fig["online_port_ratio"]["median"]
    return {
        **online,
        "total_gb": lay["total_bytes"] / GB,
        "moved_gb": lay["moved_bytes"] / GB,
        "pause_s": fig["pause"]["median"],
        "floor_s": fig["floor"]["median"],
        "pause_over_floor": fig["ratio"]["median"],
        "goal_met": fig["ratio"]["median"] <= GOAL,
        "alone_start_s": fig["alone_start"]["median"],
    }


def headline_text(doc: dict) -> str:
    fig = figures(doc)
    lay = doc["layout"]
    ratio = fig["ratio"]
    verdict = "meets" if ratio["median"] <= GOAL else "misses"
    online = ""
    if "online_pause" in fig:
        on = fig["online_ratio"]
        online = (
            f"Headline: `adamax-ps rescale` of the running cluster, 2 -> 3 servers "
            f"holding {lay['total_bytes'] / GB:.2f} GB of w, m, v, pauses changes "
            f"{_span(fig['online_pause'], 1)} s, {_span(on, suffix='x')} the "
            f"floor measured around it ({_span(fig['online_floor'], 1)} s); it "
            f"{'meets' if on['median'] <= GOAL else 'misses'} the goal of "
            f"{GOAL:g}x. Freeze (the cuts) {_span(fig['online_freeze'], 1)} s, "
            + (
                f"adopt (the imports) {_span(fig['online_adopt'], 1)} s, commit "
                f"{_span(fig['online_commit'], 2)} s; after the pause, the new "
                f"layout's first checkpoints took {_span(fig['online_settle'], 1)} "
                "s while workers could push. "
                if "online_settle" in fig
                else f"adopt (imports and the new layout's checkpoints) "
                f"{_span(fig['online_adopt'], 1)} s, commit "
                f"{_span(fig['online_commit'], 2)} s. "
            )
            + (
                "With the cuts over the transfer port, as between machines "
                f"(`--transfer-port-only`), the pause is "
                f"{_span(fig['online_port_pause'], 1)} s, "
                f"{_span(fig['online_port_ratio'], suffix='x')} its floor. "
                if "online_port_pause" in fig
                else ""
            )
            + "Offline, for comparison: "
        )
        return online + _offline(doc, fig, lay, ratio, verdict)
    return "Headline: " + _offline(doc, fig, lay, ratio, verdict)


def _offline(doc, fig, lay, ratio, verdict) -> str:
    return (
        f"resizing 2 -> 3 servers holding {lay['total_bytes'] / GB:.2f} GB "
        f"of w, m, v pauses the cluster {_span(fig['pause'], 1)} s, "
        f"{_span(ratio, suffix='x')} a plain-file write of all the bytes with "
        f"fsync and a read of the {lay['moved_bytes'] / GB:.2f} GB that move "
        f"({_span(fig['floor'], 1)} s); it {verdict} the goal of {GOAL:g}x. The "
        f"pause is the old servers' final checkpoint "
        f"({_span(fig['final_checkpoint'], 1)} s), then the new servers' process "
        f"start ({_span(fig['before_import'], 1)} s), import "
        f"({_span(fig['import'], 1)} s) and first checkpoint "
        f"({_span(fig['first_checkpoint'], 1)} s), 3 processes on "
        f"{doc['machine']['cores']} cores; one new server alone is ready in "
        f"{_span(fig['alone_start'], 1)} s. Brackets: the fastest and slowest "
        "round."
    )
