"""``adamax-ps inspect``: what servers hold, as readable tables (or JSON)."""

from __future__ import annotations

import json
import sys
from typing import Any

import httpx


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [
        max(len(str(x)) for x in column) for column in zip(header, *rows, strict=False)
    ]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += [
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows
    ]
    return "\n".join(lines)


def _norm(stats: dict[str, Any] | None, key: str) -> str:
    if not stats or key not in stats:
        return "-"
    return f"{stats[key]['l2_norm']:.4g}"


def describe(
    url: str,
    server: dict,
    optimizers: list[dict],
    variables: list[dict],
    tables: list[dict] = (),
) -> str:
    age = server["checkpoint"]["age_seconds"]
    lines = [
        f"{url}  server {server['server_index']} of {server['num_servers']}, "
        f"{server['shards']} shards, {_size(server['state_bytes'])} of state, "
        f"{_size(server['resident_bytes'])} resident, last checkpoint "
        + (f"{age:.0f} s ago" if age is not None else "never"),
        "",
    ]
    rows = []
    for o in optimizers:
        lr = o["config"].get("learning_rate")
        lr = lr.get("class_name", "schedule") if isinstance(lr, dict) else f"{lr:.4g}"
        rate = o["push_rate"]
        rows.append(
            [
                o["name"],
                lr,
                o["iterations"],
                o["pushes"],
                "-" if rate is None else f"{rate:.1f}",
                ",".join(o["slot_names"]),
            ]
        )
    lines += [
        _table(
            rows,
            ["optimizer", "learning rate", "iterations", "pushes", "pushes/s", "slots"],
        ),
        "",
    ]
    rows = []
    for v in variables:
        stats = v["stats"] or {}
        slots = {f"{s['optimizer']}/{s['slot']}" for s in v["slots"]}
        m = next((k for k in sorted(slots) if k.endswith("/m")), None)
        s = next((k for k in sorted(slots) if k.endswith("/v")), None)
        rows.append(
            [
                v["name"],
                "x".join(map(str, v["shape"])) or "scalar",
                v["dtype"],
                _size(v["bytes"]),
                _norm(stats, "w"),
                _norm(stats, m) if m else "-",
                _norm(stats, s) if s else "-",
                stats.get("w", {}).get("nonzero_rows", "-"),
            ]
        )
    lines.append(
        _table(
            rows,
            ["variable", "shape", "dtype", "bytes", "|w|", "|m|", "|v|", "rows w!=0"],
        )
    )
    if tables:
        rows = [
            [
                t["name"],
                t["dim"],
                t["dtype"],
                t["size"],
                "-" if t["capacity"] is None else t["capacity"],
                _size(t["bytes"]),
                f"{t['bytes_per_row']:.0f}",
                t["admitted"],
                t["evicted"],
                t["filtered"],
            ]
            for t in tables
        ]
        header = ["table", "dim", "dtype", "rows here", "capacity", "bytes"]
        header += ["B/row", "admitted", "evicted", "filtered"]
        lines += ["", _table(rows, header)]
    return "\n".join(lines)


def inspect(urls: list[str], token: str | None, as_json: bool) -> int:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    reports = []
    for url in urls:
        try:
            with httpx.Client(
                base_url=url + "/api/v1", headers=headers, timeout=60
            ) as api:
                answers = {
                    name: api.get(path)
                    for name, path in (
                        ("server", "/server"),
                        ("optimizers", "/optimizers"),
                        ("variables", "/variables"),
                        ("tables", "/tables"),
                    )
                }
        except httpx.HTTPError as e:
            print(f"{url}: cannot reach the server: {e}", file=sys.stderr)
            return 1
        for response in answers.values():
            if response.status_code != 200:
                print(
                    f"{url}: {response.json().get('message', response.text)}",
                    file=sys.stderr,
                )
                return 1
        reports.append({"url": url, **{k: r.json() for k, r in answers.items()}})
    if as_json:
        print(json.dumps(reports, indent=1))
    else:
        print(
            "\n\n".join(
                describe(
                    r["url"], r["server"], r["optimizers"], r["variables"], r["tables"]
                )
                for r in reports
            )
        )
    return 0
