"""Rescale benchmark: the pause of resizing 2 servers to 3, against plain files.

One run on this machine's disk (the temporary folder), round by round, the
floor measured right before and right after each rescale (their mean is the
round's floor: this machine's pace depends on its recent past, see below):

- the rescale, as a cluster is resized today: 2 ``adamax-ps serve`` processes
  hold about 2 GB of variables and slots (a float32 variable of ``ROWS`` x
  64, split by rows, and a hash-keyed table of ``KEYS`` x 64, pushed once by
  Adamax so ``m`` and ``v`` exist: 12 bytes per parameter); SIGTERM goes to
  both (each writes a final checkpoint), then 3 new servers start at once
  with ``--restore-from`` the old folders (each imports its rows,
  checkpoints, then serves). The pause runs from the SIGTERMs until every new
  server is ready (its ready line: ``/readyz`` answers 200); the servers'
  log lines split it (final checkpoint; process start, import, first
  checkpoint, warm-up), and ``/proc`` gives each new server's CPU time. New
  server 2 is then started once more alone, from the same checkpoints: what
  a server on a machine of its own would take;
- the online rescale (``bench/rescale_online.py``): ``adamax-ps rescale``
  of a running cluster of 2 servers and a spare to 3, timed from the freeze
  until the commit, after the offline one; and again with
  ``--transfer-port-only``, the cuts sent over the transfer port as between
  servers on different machines (the two in turn: one first in even rounds,
  the other in odd ones). Each online rescale's floor is the mean of one
  right before the freeze and one right after the settle, the servers up
  and holding their state, each run twice and taken the second time: the
  first warms the machine's memory for the second as that one does for the
  rescale after it, so the pause and its floor are both measured warm (on
  this machine cold memory costs up to 2 s per GB more, see below);
- the floor: the same bytes as plain files, one file per old server written
  by one thread each (``os.write``, each chunk's writeback started at once as
  a checkpoint does, ``fsync``), then the bytes that move (rows
  whose server changes from 2 to 3 servers by the placement rule, table keys
  by the jump hash) read back into fresh memory, one thread per new server
  (``os.preadv``).

The goal (issue 16): pause <= 1.5 x (floor write + floor read), taken round
by round. Both read files written a moment before (in the page cache). On a
virtual machine that hands freed memory back to its host within seconds,
memory touched again costs up to 2 s per GB instead of 0.13 s: whatever ran
just before a phase changes its pace, hence the floor on both sides.

Usage: ``python bench/rescale.py [--quick] [--json] [--update-readme]``;
writes ``bench/results/rescale.json`` and its rendering ``rescale.md``
(``bench/tables_rescale.py``).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import numpy as np
from embedding_tables import code
from measure import machine
from readme import save, update_readme
from rescale_online import online, push_state

from adamax_ps.common.keys import server_of
from adamax_ps.common.placement import place_rows
from adamax_ps.server.durable import start_writeback
from adamax_ps.server.launcher import LocalServer, addresses

RESULTS = Path(__file__).resolve().parent / "results"
DIM = 64
ROWS, KEYS = 2_560_000, 65_536  # 1.97 GB + 50 MB of w, m, v
QUICK_ROWS, QUICK_KEYS = 300_000, 8192  # 76.8 MB of w: still split by rows
SPLIT = 64 << 20  # the servers' and the clients' --cluster-split-bytes
OLD, NEW = 2, 3
SLOTS = 3  # w, m, v
CHUNK = 16 << 20
GB = 1e9
PORT_ONLY = ("--transfer-port-only",)


# The layout: what each server holds before and after, what moves. ------------


def plan(rows: int, keys: np.ndarray) -> dict:
    """Bytes held by each old server, owned by each new one, and moved from
    old server ``s`` to new server ``k != s`` (placement rule and jump hash):
    ``moves`` lists ``(s, k, variable rows, table keys)``."""
    row = DIM * 4
    old = place_rows("emb", (rows, DIM), 4, OLD, SPLIT)
    new = place_rows("emb", (rows, DIM), 4, NEW, SPLIT)
    assert len(old) == OLD and len(new) == NEW, "the variable must be split"
    before, after = server_of(keys, OLD), server_of(keys, NEW)
    moves = []
    for s, lo, hi in old:
        for k, lo2, hi2 in new:
            overlap = max(0, min(hi, hi2) - max(lo, lo2))
            taken = int(np.sum((before == s) & (after == k)))
            if k != s and (overlap or taken):
                moves.append((s, k, overlap, taken))
    held = [(hi - lo, int(np.sum(before == s))) for s, lo, hi in old]
    owned = [(hi - lo, int(np.sum(after == k))) for k, lo, hi in new]
    nbytes = lambda r, t: (r + t) * row * SLOTS  # noqa: E731
    moved = sum(nbytes(r, t) for _, _, r, t in moves)
    return {
        "rows": rows,
        "keys": len(keys),
        "dim": DIM,
        "held": held,
        "old_bytes": [nbytes(r, t) for r, t in held],
        "new_bytes": [nbytes(r, t) for r, t in owned],
        "moves": moves,
        "moved_bytes": moved,
        "moved_to": [
            sum(nbytes(r, t) for _, k2, r, t in moves if k2 == k) for k in range(NEW)
        ],
        "total_bytes": sum(nbytes(r, t) for r, t in held),
    }


def table_keys(count: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    keys = np.unique(rng.integers(-(2**62), 2**62, count + count // 8))
    return rng.permutation(keys)[:count].astype(np.int64)


def size_to_fit(rows: int) -> tuple[int, float]:
    """Rows scaled down (halved) until twice the state and 1 GB fit in the
    memory available now (old servers and the pushed gradient, then the new
    servers); and the GB available."""
    with open("/proc/meminfo") as f:
        fields = dict(line.split(":", 1) for line in f)
    available = int(fields["MemAvailable"].split()[0]) * 1024
    while rows * DIM * 4 * SLOTS * 2 + (1 << 30) > available and rows > QUICK_ROWS:
        rows //= 2
    return rows, available / GB


# Servers. -----------------------------------------------------------------------


def at_once(jobs: list[Callable[[], object]]) -> list[float]:
    """Run every job on its own thread; the seconds until each returned (an
    error is raised once all are done)."""
    began = time.perf_counter()

    def timed(job: Callable[[], object]) -> float:
        job()
        return time.perf_counter() - began

    with ThreadPoolExecutor(len(jobs)) as pool:
        return list(pool.map(timed, jobs))


def cpu_seconds(server: LocalServer) -> float:
    """User and system CPU time the server's process has used so far."""
    fields = Path(f"/proc/{server.process.pid}/stat").read_text().rsplit(")", 1)[1]
    utime, stime = fields.split()[11:13]
    return (int(utime) + int(stime)) / os.sysconf("SC_CLK_TCK")


def servers(folder: Path, count: int, *extra: str) -> list[LocalServer]:
    folder.mkdir(parents=True)
    made = []
    for i in range(count):
        args = ["--grpc-port", "0", "--http-port", "0", "--server-index", str(i)]
        args += ["--num-servers", str(count), "--cluster-split-bytes", str(SPLIT)]
        args += ["--checkpoint-dir", str(folder / f"server-{i}"), *extra]
        made.append(LocalServer(args, folder / f"server-{i}.log"))
    return made


def start(cluster: list[LocalServer]) -> list[float]:
    try:
        return at_once([s.start for s in cluster])
    except BaseException:
        for server in cluster:
            server.kill()
        raise


def old_cluster(folder: Path, rows: int, keys: np.ndarray) -> tuple[list, list]:
    """The 2-server cluster, started empty, its state pushed once by Adamax;
    and each server's seconds from launch to ready (an empty server), and
    the CPU seconds it used until then."""

    cluster = servers(folder, OLD)
    ready = start(cluster)
    cpu = [cpu_seconds(s) for s in cluster]
    try:
        push_state(addresses(cluster), rows, keys, DIM)
    except BaseException:
        for server in cluster:
            server.kill()
        raise
    return cluster, [{"ready": r, "cpu": c} for r, c in zip(ready, cpu, strict=True)]


FINAL = re.compile(r"final checkpoint \S+ in ([\d.]+) s")
IMPORTED = re.compile(
    r"imported (\d+) bytes of the \d+-server cluster's cut in ([\d.]+) s"
)
RESTORED = re.compile(r"restored \S+ \((\d+) bytes in ([\d.]+) s\)")
STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def logged(server: LocalServer, pattern: re.Pattern) -> tuple[float, ...]:
    """The figures of the last log line matching ``pattern``, then the wall
    clock time (``time.time()``) the line was logged."""
    for line in reversed(server.log.read_text().splitlines()):
        found, stamp = pattern.search(line), STAMP.match(line)
        if found and stamp:
            when = datetime.strptime(stamp[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            return (*map(float, found.groups()), when)
    raise RuntimeError(f"{server.log}: no line matching {pattern.pattern!r}")


def rescale(folder: Path, old: list[LocalServer], expected: dict) -> dict:
    """Stop ``old`` (SIGTERM, final checkpoints), start the 3 new servers
    from its folders; the pause and its parts, in seconds. The servers' log
    lines (their times to the millisecond) place each part: an old server's
    time before and after its final checkpoint; a new server's time from
    launch to its import, and from its first checkpoint to ready."""
    from adamax_ps.client import Adamax, connect

    folders = [s.args[s.args.index("--checkpoint-dir") + 1] for s in old]
    new = servers(folder / "new", NEW, "--restore-from", ",".join(folders))
    began, wall = time.perf_counter(), time.time()
    for server in old:
        server.process.send_signal(signal.SIGTERM)
    exited = at_once([lambda s=s: s.process.wait(300) for s in old])
    codes = [s.process.returncode for s in old]
    if any(codes):
        raise RuntimeError(f"old servers exited with {codes}")
    launched, launched_wall = time.perf_counter() - began, time.time()
    ready = start(new)
    pause = time.perf_counter() - began
    cpu = [cpu_seconds(s) for s in new]
    try:
        with connect(addresses(new)) as client:
            steps = int(Adamax(cluster=client).iterations)
        if steps != 1:
            raise RuntimeError(f"the new cluster counts {steps} steps, not 1")
    finally:
        for server in new:
            server.kill()  # not measured: no final checkpoint needed
    entries = [
        _started(s, r, launched_wall, c)
        for s, r, c in zip(new, ready, cpu, strict=True)
    ]
    if sum(n["import_bytes"] for n in entries) < expected["total_bytes"]:
        raise RuntimeError(f"imported less than the state: {entries}")
    finals = [logged(s, FINAL) for s in old]
    return {
        "pause": pause,
        "stop": launched,
        "old": [
            {
                "exit": e,
                "final_checkpoint": seconds,
                "before_checkpoint": at - seconds - wall,
                "after_checkpoint": e - (at - wall),
            }
            for e, (seconds, at) in zip(exited, finals, strict=True)
        ],
        "old_checkpoint_bytes": [_du(Path(f)) for f in folders],
        "new": entries,
    }


def alone(folder: Path, old: list[LocalServer]) -> dict:
    """New server 2 started once more, alone on the machine (as on a machine
    of its own), from the old servers' checkpoints: its start's parts."""
    folders = [s.args[s.args.index("--checkpoint-dir") + 1] for s in old]
    server = servers(folder / "alone", NEW, "--restore-from", ",".join(folders))[-1]
    launched = time.time()
    (ready,) = start([server])
    cpu = cpu_seconds(server)
    server.kill()
    return _started(server, ready, launched, cpu)


def _started(server: LocalServer, ready: float, launched: float, cpu: float) -> dict:
    """A new server's start from its log: import and first checkpoint
    (bytes, seconds), the time before and after them (``launched``: the
    wall clock time it was launched)."""
    nbytes, seconds, imported = logged(server, IMPORTED)
    written, first, restored = logged(server, RESTORED)
    return {
        "ready": ready,
        "import": seconds,
        "import_bytes": int(nbytes),
        "before_import": imported - seconds - launched,
        "first_checkpoint": first,
        "checkpoint_bytes": int(written),
        "after_checkpoint": launched + ready - restored,
        "cpu": cpu,
    }


def _du(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# The floor: plain files. ------------------------------------------------------


def floor(folder: Path, layout: dict) -> dict:
    """Write each old server's bytes to its own file (a thread each, fsync),
    then read the bytes that move into fresh memory (a thread per new
    server); seconds of each phase."""
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / f"floor-{s}.bin" for s in range(OLD)]
    chunk = memoryview(np.random.default_rng(1).integers(0, 256, CHUNK, np.uint8))

    def write(s: int) -> None:
        fd = os.open(files[s], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            left, at = layout["old_bytes"][s], 0
            while left:
                wrote = os.write(fd, chunk[: min(left, CHUNK)])
                start_writeback(fd, at, wrote)  # as a checkpoint does
                left, at = left - wrote, at + wrote
            os.fsync(fd)
        finally:
            os.close(fd)

    began = time.perf_counter()
    at_once([lambda s=s: write(s) for s in range(OLD)])
    dir_fd = os.open(folder, os.O_RDONLY)
    os.fsync(dir_fd)  # as a checkpoint's commit does
    os.close(dir_fd)
    write_s = time.perf_counter() - began
    ranges = _floor_ranges(layout)

    def read(k: int) -> None:
        wanted = ranges[k]
        buffer = np.empty(sum(n for _, _, n in wanted), np.uint8)
        view, at = memoryview(buffer), 0
        for s, offset, length in wanted:
            fd = os.open(files[s], os.O_RDONLY)
            try:
                done = 0
                while done < length:
                    got = os.preadv(fd, [view[at + done : at + length]], offset + done)
                    if got == 0:
                        raise RuntimeError(f"{files[s]} is short")
                    done += got
            finally:
                os.close(fd)
            at += length

    read_s = max(at_once([lambda k=k: read(k) for k in range(NEW)]))
    for path in files:
        path.unlink()
    return {"write": write_s, "read": read_s}


def warm_floor(folder: Path, layout: dict) -> dict:
    """The floor measured with warm memory: run once unmeasured first (its
    files and buffers freed a moment before the measured run, as the
    measured run's are before the rescale that follows it)."""
    floor(folder, layout)
    return floor(folder, layout)


def _floor_ranges(layout: dict) -> list[list[tuple[int, int, int]]]:
    """``(old file, offset, length)`` each new server reads: a file holds its
    server's rows of w, m, v, then its table keys' w, m, v; the keys that
    move are read as one range of each (on a server they lie scattered)."""
    row = DIM * 4
    ranges: list[list[tuple[int, int, int]]] = [[] for _ in range(NEW)]
    old = place_rows("emb", (layout["rows"], DIM), 4, OLD, SPLIT)
    new = place_rows("emb", (layout["rows"], DIM), 4, NEW, SPLIT)
    for s, k, moved_rows, moved_keys in layout["moves"]:
        rows, keys = layout["held"][s]
        lo = max(old[s][1], new[k][1])
        for array in range(SLOTS):
            if moved_rows:
                offset = (array * rows + lo - old[s][1]) * row
                ranges[k].append((s, offset, moved_rows * row))
            if moved_keys:
                offset = (SLOTS * rows + array * keys) * row
                ranges[k].append((s, offset, moved_keys * row))
    return ranges


# The run. -------------------------------------------------------------------------


def measure(quick: bool, rounds: int, logs: Path | None = None) -> dict:
    rows, available = size_to_fit(QUICK_ROWS if quick else ROWS)
    keys = table_keys(QUICK_KEYS if quick else KEYS)
    layout = plan(rows, keys)
    samples: list[dict] = []
    empty_starts: list[float] = []
    root = Path(tempfile.mkdtemp(prefix="adamax-ps-rescale-"))
    try:
        for r in range(rounds):
            folder = root / f"round-{r}"
            old, ready = old_cluster(folder / "old", rows, keys)
            empty_starts += ready
            try:
                before = floor(folder, layout)
                sample = rescale(folder, old, layout)
                after = floor(folder, layout)
                sample["alone"] = alone(folder, old)
            finally:
                for server in old:
                    server.kill()
            base = {key: (before[key] + after[key]) / 2 for key in before}
            around = functools.partial(warm_floor, folder, layout)
            # Then as between machines, the cuts over the transfer port
            # (sendfile), each with its own floor; first one, then the other.
            runs = {"online": (), "online_port": PORT_ONLY}
            for name in sorted(runs, reverse=r % 2 == 1):
                sample[name] = on = online(
                    folder / name, rows, keys, DIM, SPLIT, around, runs[name]
                )
                sample[f"{name}_floor"] = {
                    k: (on["floor_before"][k] + on["floor_after"][k]) / 2
                    for k in on["floor_after"]
                }
            last = sample["online"]["floor_after"]
            samples.append({**sample, "floor": base, "before": before, "after": after})
            for log in folder.rglob("*.log") if logs else ():
                shutil.copy(log, logs / f"round-{r}-{log.parent.name}-{log.name}")
            shutil.rmtree(folder, ignore_errors=True)
            floors = [f"{sum(f.values()):.2f}" for f in (before, after, last)]
            print(
                f"round {r}: pause {sample['pause']:.2f} s, online "
                f"{sample['online']['pause']:.2f} s (over the port "
                f"{sample['online_port']['pause']:.2f} s), floor {floors}",
                file=sys.stderr,
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {
        "machine": machine(),
        "code": code(),
        "available_gb": available,
        "scaled_down": rows < (QUICK_ROWS if quick else ROWS),
        "layout": layout,
        "rounds": samples,
        "empty_server_start": empty_starts,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the headline")
    parser.add_argument("--quick", action="store_true", help="1 round, 0.24 GB")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--logs", type=Path, help="keep the servers' logs here")
    parser.add_argument("--update-readme", action="store_true")
    parser.add_argument("--results", type=Path, default=RESULTS, help="output folder")
    args = parser.parse_args()
    from tables_rescale import headline

    if args.logs:
        args.logs.mkdir(parents=True, exist_ok=True)
    results = measure(args.quick, 1 if args.quick else args.rounds, args.logs)
    head = headline(results)
    table = save("rescale", {"headline": head, **results}, args.results)
    if args.update_readme:
        update_readme("rescale", args.results)
    print(json.dumps(head) if args.json else table)


if __name__ == "__main__":
    main()
