"""Transport benchmark on loopback: pushes through a real server against floors.

Side by side in one run, interleaved round by round (this machine's pace
drifts by up to 2x within minutes, so figures taken one after the other
compare the minutes, not the transports). Every row runs in its own long-lived
client process, so the malloc setting of one does not leak into another, and
each round measures every row once, in an order rotated from round to round:

- floors: raw TCP between two processes (64 MB messages into a preallocated
  buffer), and a bare gRPC server taking the same 64 MB as a client stream of
  1 MB raw-bytes chunks (no protobuf, no numpy, no update);
- a 64 MB dense push applied end to end by ``adamax-ps serve`` (decode,
  validation, the fused update), with glibc malloc tuning on and off;
- a 1 KB push, sequential (p50/p99), against a bare gRPC 1 KB unary call;
- 8192-row Zipf sparse pushes of 64-float rows into a 1,000,000-row table
  from 4 client threads, in input rows per second.

Usage: ``python bench/transport.py [--json] [--quick] [--update-readme]``;
writes ``bench/results/transport.json`` and its rendering ``transport.md``
(``bench/tables.py``).
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent import futures
from pathlib import Path

import numpy as np
from measure import Child, percentile, run_threads, serve_commands, spread
from readme import save, update_readme

RESULTS = Path(__file__).resolve().parent / "results"
MB = 1 << 20
DENSE_BYTES = 64 * MB


# Floors -------------------------------------------------------------------------


def tcp_receiver() -> None:
    """Child: accept one connection, read 64 MB messages, ack each with a byte."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    print(server.getsockname()[1], flush=True)
    conn, _ = server.accept()
    buffer = memoryview(bytearray(DENSE_BYTES))
    while True:
        got = 0
        while got < DENSE_BYTES:
            n = conn.recv_into(buffer[got:])
            if n == 0:
                return
            got += n
        conn.sendall(b"k")


class TcpFloor:
    """The parent's side of the raw TCP floor: one connection, kept open."""

    def __init__(self) -> None:
        self.child = subprocess.Popen(
            [sys.executable, __file__, "--child", "tcp"],
            stdout=subprocess.PIPE,
            text=True,
        )
        port = int(self.child.stdout.readline())
        self.conn = socket.create_connection(("127.0.0.1", port))
        self.payload = memoryview(np.ones(DENSE_BYTES, np.uint8))
        self.push()  # warm: the receiver's buffer is faulted in

    def push(self) -> float:
        start = time.perf_counter()
        self.conn.sendall(self.payload)
        self.conn.recv(1)
        return time.perf_counter() - start

    def close(self) -> None:
        self.conn.close()
        self.child.wait(30)


def grpc_sink() -> None:
    """Child: a bare gRPC server with raw-bytes methods (no protobuf at all)."""
    import grpc

    from adamax_ps.common.malloc import tune_malloc

    tune_malloc()

    def push(chunks, context):
        total = 0
        for chunk in chunks:
            total += len(chunk)
        return b""

    def echo(request, context):
        return request

    handler = grpc.method_handlers_generic_handler(
        "bench.Sink",
        {
            "Push": grpc.stream_unary_rpc_method_handler(push),
            "Echo": grpc.unary_unary_rpc_method_handler(echo),
        },
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(8),
        options=[("grpc.max_receive_message_length", 64 * MB)],
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    sys.stdin.readline()
    server.stop(0)


def bare_client(port: str) -> None:
    """Child: the bare gRPC floors, one round per command."""
    import grpc

    channel = grpc.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 64 * MB)]
    )
    push = channel.stream_unary("/bench.Sink/Push")
    echo = channel.unary_unary("/bench.Sink/Echo")
    view = memoryview(np.ones(DENSE_BYTES, np.uint8))
    small = b"x" * 1024

    def stream(pushes: int) -> dict:
        return {"samples": _timed(pushes, lambda: push(_chunks(view)))}

    def unary(calls: int) -> dict:
        return {"samples": _timed(calls, lambda: echo(small))}

    stream(1)
    unary(50)
    serve_commands({"dense": stream, "small": unary})
    channel.close()


def _chunks(view: memoryview):
    return (bytes(view[i : i + MB]) for i in range(0, DENSE_BYTES, MB))


# Our client, in child processes ---------------------------------------------------


def our_client(address: str) -> None:
    """Child: pushes through ``adamax-ps`` at ``address``, one round per command.

    Each kind of push makes its variable and warms up on first use."""
    from adamax_ps.client import Adamax, IndexedSlices, connect

    cluster = connect(address)
    made: dict[str, Callable] = {}

    def dense_push(name: str, g: np.ndarray, warm: int) -> Callable[[], object]:
        """One variable of ``g``'s shape, pushed ``g`` at each call."""
        opt = Adamax(name=name, cluster=cluster)
        var = cluster.variable(f"{name}/w", shape=g.shape)

        def run() -> object:
            return opt.apply_gradients([(g, var)])

        _timed(warm, run)
        return run

    def big() -> Callable[[], object]:
        g = np.random.default_rng(0).normal(size=DENSE_BYTES // 4)
        return dense_push("dense", g.astype(np.float32), 1)

    def one_kb() -> Callable[[], object]:
        return dense_push("small", np.ones(256, np.float32), 50)

    def sparse_push() -> Callable[[int, int], Callable[[], object]]:
        opt = Adamax(name="sparse", cluster=cluster)
        table = cluster.variable("table", shape=(1_000_000, 64))
        rng = np.random.default_rng(1)
        batches = []
        for _ in range(16):
            ranks = rng.zipf(1.2, size=8192 * 4)
            ranks = ranks[ranks <= 1_000_000][:8192] - 1
            batches.append(rng.permutation(1_000_000)[ranks].astype(np.int64))
        values = rng.normal(size=(8192, 64)).astype(np.float32)

        def push(k: int, sequence: int):
            slices = IndexedSlices(values, batches[(k + 4 * sequence) % 16])
            return lambda: opt.apply_gradients([(slices, table)])

        _timed(1, push(0, 0))
        return push

    def ready(kind: str, make: Callable):
        if kind not in made:
            made[kind] = make()
        return made[kind]

    def dense(pushes: int) -> dict:
        return {"samples": _timed(pushes, ready("dense", big))}

    def small(calls: int) -> dict:
        return {"samples": _timed(calls, ready("small", one_kb))}

    def sparse(seconds: float) -> dict:
        every, elapsed = run_threads(4, seconds, ready("sparse", sparse_push))
        return {"samples": [{"pushes": len(every), "seconds": elapsed}]}

    serve_commands({"dense": dense, "small": small, "sparse": sparse})


def _timed(count: int, run: Callable[[], object]) -> list[float]:
    times = []
    for _ in range(count):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


# Summaries -------------------------------------------------------------------------


def _rate(times: list[float], nbytes: int) -> dict:
    median = statistics.median(times)
    return {
        "median_s": median,
        "gb_per_s": nbytes / median / 1e9,
        "best_gb_per_s": nbytes / min(times) / 1e9,
        "n": len(times),
    }


def _latency(latencies: list[float]) -> dict:
    ordered = sorted(latencies)
    return {
        "p50_ms": percentile(ordered, 0.5) * 1e3,
        "p99_ms": percentile(ordered, 0.99) * 1e3,
        "calls_per_s": len(ordered) / sum(ordered),
        "n": len(ordered),
    }


def _throughput(rounds: list[dict]) -> dict:
    pushes = sum(r["pushes"] for r in rounds)
    seconds = sum(r["seconds"] for r in rounds)
    per_round = [r["pushes"] * 8192 / r["seconds"] for r in rounds]
    return {
        "pushes_per_s": pushes / seconds,
        "rows_per_s": pushes * 8192 / seconds,
        "rows_per_s_rounds": spread(per_round),
    }


# The run ---------------------------------------------------------------------------


def measure(quick: bool) -> dict:
    """Every row once per round, rounds interleaved; figures over all rounds."""
    from adamax_ps.server.launcher import start_cluster

    rounds, pushes, calls, seconds = (2, 1, 50, 0.3) if quick else (10, 2, 200, 0.6)
    with tempfile.TemporaryDirectory() as folder:
        logs = Path(folder)
        tcp = TcpFloor()
        sink = subprocess.Popen(
            [sys.executable, __file__, "--child", "sink"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        servers, children = [], {}
        try:
            port = sink.stdout.readline().strip()
            children["bare"] = _client("bare", port, "1", logs)
            for tune in ("1", "0"):
                (logs / f"server{tune}").mkdir()
                (server,) = start_cluster(
                    1,
                    logs / f"server{tune}",
                    checkpoints=False,
                    env={"ADAMAX_PS_MALLOC_TUNE": tune},
                )
                servers.append(server)
            tuned, untuned = servers
            children["grpc"] = _client("ours", tuned.grpc_address, "1", logs)
            children["untuned"] = _client("ours", untuned.grpc_address, "0", logs)
            children["http"] = _client("ours", tuned.http_address, "1", logs)
            rows = _rows(tcp, children, pushes, calls, seconds)
            samples: dict[str, list] = {name: [] for name, _ in rows}
            for k in range(rounds):
                for name, run in rows[k % len(rows) :] + rows[: k % len(rows)]:
                    samples[name].append(run())
        finally:
            for child in children.values():
                child.close()
            for server in servers:
                server.stop()
            sink.stdin.close()
            sink.wait(30)
            tcp.close()
    flat = {name: [x for r in got for x in r] for name, got in samples.items()}
    return {
        "rounds": rounds,
        "tcp": _rate(flat["tcp"], DENSE_BYTES),
        "bare_grpc": {
            "stream": _rate(flat["bare_dense"], DENSE_BYTES),
            "unary_1kb": _latency(flat["bare_small"]),
        },
        "dense_tuned": _rate(flat["dense"], DENSE_BYTES),
        "dense_untuned": _rate(flat["dense_untuned"], DENSE_BYTES),
        "http_dense": _rate(flat["http_dense"], DENSE_BYTES),
        "small": _latency(flat["small"]),
        "http_small": _latency(flat["http_small"]),
        "sparse": _throughput(flat["sparse"]),
        "http_sparse": _throughput(flat["http_sparse"]),
    }


def _client(kind: str, target: str, tune: str, logs: Path) -> Child:
    """A client child with malloc tuning ``tune`` ("1" or "0")."""
    name = f"{kind}-{target.rsplit(':', 1)[-1]}-{tune}"
    child = Child(
        __file__,
        "--child",
        kind,
        target,
        log=logs / f"{name}.log",
        env={"ADAMAX_PS_MALLOC_TUNE": tune},
    )
    child.receive()  # ready: connected and warmed
    return child


def _rows(tcp: TcpFloor, children: dict, pushes: int, calls: int, seconds: float):
    """(name, one round of it) for every row of the tables."""

    def ask(child: str, op: str, **args):
        return lambda: children[child].call(op, **args)["samples"]

    return [
        ("tcp", lambda: [tcp.push() for _ in range(pushes)]),
        ("bare_dense", ask("bare", "dense", pushes=pushes)),
        ("dense", ask("grpc", "dense", pushes=pushes)),
        ("dense_untuned", ask("untuned", "dense", pushes=pushes)),
        ("http_dense", ask("http", "dense", pushes=pushes)),
        ("bare_small", ask("bare", "small", calls=calls)),
        ("small", ask("grpc", "small", calls=calls)),
        ("http_small", ask("http", "small", calls=calls)),
        ("sparse", ask("grpc", "sparse", seconds=seconds)),
        ("http_sparse", ask("http", "sparse", seconds=seconds)),
    ]


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        kind = sys.argv[2]
        if kind == "tcp":
            tcp_receiver()
            return
        if kind == "sink":
            grpc_sink()
            return
        from adamax_ps.common.malloc import tune_malloc

        tune_malloc()
        {"bare": bare_client, "ours": our_client}[kind](sys.argv[3])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--update-readme", action="store_true")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    results = measure(args.quick)
    table = save("transport", results, args.results)
    if args.update_readme:
        update_readme("transport", args.results)
    summary = {
        "dense_gb_per_s": results["dense_tuned"]["gb_per_s"],
        "dense_vs_bare_grpc": results["dense_tuned"]["gb_per_s"]
        / results["bare_grpc"]["stream"]["gb_per_s"],
        "small_p50_ms": results["small"]["p50_ms"],
        "small_p99_ms": results["small"]["p99_ms"],
        "sparse_rows_per_s": results["sparse"]["rows_per_s"],
        "tcp_gb_per_s": results["tcp"]["gb_per_s"],
    }
    print(json.dumps(summary) if args.json else table)


if __name__ == "__main__":
    main()
