"""Transport benchmark on loopback: pushes through a real server against floors.

Side by side in one run (each measurement in its own client process, so the
malloc setting of one does not leak into another):

- floors: raw TCP between two processes (64 MB messages into a preallocated
  buffer), and a bare gRPC server taking the same 64 MB as a client stream of
  1 MB raw-bytes chunks (no protobuf, no numpy, no update);
- a 64 MB dense push applied end to end by ``adamax-ps serve`` (decode,
  validation, the fused update), with glibc malloc tuning on and off;
- a 1 KB push, sequential (p50/p99), against a bare gRPC 1 KB unary call;
- 8192-row Zipf sparse pushes of 64-float rows into a 1,000,000-row table
  from 4 client threads, in input rows per second.

Usage: ``python bench/transport.py [--json] [--quick]``; writes
``bench/results/transport.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent import futures
from pathlib import Path

import numpy as np
from measure import run_threads
from readme import update_readme

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


def tcp_floor(rounds: int) -> dict:
    child = subprocess.Popen(
        [sys.executable, __file__, "--child", "tcp"], stdout=subprocess.PIPE, text=True
    )
    port = int(child.stdout.readline())
    payload = np.ones(DENSE_BYTES, np.uint8)
    times = []
    with socket.create_connection(("127.0.0.1", port)) as conn:
        for _ in range(rounds + 1):
            start = time.perf_counter()
            conn.sendall(memoryview(payload))
            conn.recv(1)
            times.append(time.perf_counter() - start)
    child.wait(30)
    return _rate(times[1:], DENSE_BYTES)


def grpc_sink() -> None:
    """Child: a bare gRPC server with raw-bytes methods (no protobuf at all)."""
    import grpc

    from adamax_ps.proto.malloc import tune_malloc

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


# Our client, in child processes ---------------------------------------------------


def client_dense(address: str, rounds: int) -> dict:
    from adamax_ps.client import Adamax, connect

    cluster = connect(address)
    opt = Adamax(name="dense", cluster=cluster)
    params = DENSE_BYTES // 4
    var = cluster.variable("dense64", shape=(params,))
    g = np.random.default_rng(0).normal(size=params).astype(np.float32)
    times = []
    for _ in range(rounds + 1):
        start = time.perf_counter()
        opt.apply_gradients([(g, var)])
        times.append(time.perf_counter() - start)
    return _rate(times[1:], DENSE_BYTES)


def client_small(address: str, calls: int) -> dict:
    from adamax_ps.client import Adamax, connect

    cluster = connect(address)
    opt = Adamax(name="small", cluster=cluster)
    var = cluster.variable("small1k", shape=(256,))
    g = np.ones(256, np.float32)
    latencies = []
    for _ in range(calls + 50):
        start = time.perf_counter()
        opt.apply_gradients([(g, var)])
        latencies.append(time.perf_counter() - start)
    return _latency(latencies[50:])


def client_sparse(address: str, seconds: float) -> dict:
    from adamax_ps.client import Adamax, IndexedSlices, connect

    cluster = connect(address)
    opt = Adamax(name="sparse", cluster=cluster)
    table = cluster.variable("table", shape=(1_000_000, 64))
    rng = np.random.default_rng(1)
    batches = []
    for _ in range(16):
        ranks = rng.zipf(1.2, size=8192 * 4)
        ranks = ranks[ranks <= 1_000_000][:8192] - 1
        batches.append(rng.permutation(1_000_000)[ranks].astype(np.int64))
    values = rng.normal(size=(8192, 64)).astype(np.float32)
    opt.apply_gradients([(IndexedSlices(values, batches[0]), table)])  # warm

    def push(k: int, sequence: int):
        slices = IndexedSlices(values, batches[(k + 4 * sequence) % 16])
        return lambda: opt.apply_gradients([(slices, table)])

    every, elapsed = run_threads(4, seconds, push)
    pushes = len(every)
    return {"pushes_per_s": pushes / elapsed, "rows_per_s": pushes * 8192 / elapsed}


def bare_grpc(port: int, rounds: int, calls: int) -> dict:
    import grpc

    channel = grpc.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 64 * MB)]
    )
    push = channel.stream_unary("/bench.Sink/Push")
    echo = channel.unary_unary("/bench.Sink/Echo")
    payload = np.ones(DENSE_BYTES, np.uint8)
    view = memoryview(payload)
    times = []
    for _ in range(rounds + 1):
        start = time.perf_counter()
        push(bytes(view[i : i + MB]) for i in range(0, DENSE_BYTES, MB))
        times.append(time.perf_counter() - start)
    small = b"x" * 1024
    latencies = []
    for _ in range(calls + 50):
        start = time.perf_counter()
        echo(small)
        latencies.append(time.perf_counter() - start)
    channel.close()
    return {
        "stream": _rate(times[1:], DENSE_BYTES),
        "unary_1kb": _latency(latencies[50:]),
    }


def _rate(times: list[float], nbytes: int) -> dict:
    median = statistics.median(times)
    return {
        "median_s": median,
        "gb_per_s": nbytes / median / 1e9,
        "best_gb_per_s": nbytes / min(times) / 1e9,
    }


def _latency(latencies: list[float]) -> dict:
    ordered = sorted(latencies)
    return {
        "p50_ms": ordered[len(ordered) // 2] * 1e3,
        "p99_ms": ordered[int(len(ordered) * 0.99)] * 1e3,
        "calls_per_s": len(ordered) / sum(ordered),
    }


def run_child(kind: str, address: str, amount: str, tune: str) -> dict:
    env = {**os.environ, "ADAMAX_PS_MALLOC_TUNE": tune}
    result = subprocess.run(
        [sys.executable, __file__, "--child", kind, address, amount],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr)
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure(quick: bool) -> dict:
    from adamax_ps.server.launcher import start_cluster

    rounds, calls, seconds = (3, 300, 2.0) if quick else (9, 2000, 6.0)
    results: dict = {"tcp": tcp_floor(rounds)}
    sink = subprocess.Popen(
        [sys.executable, __file__, "--child", "sink"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    port = int(sink.stdout.readline())
    results["bare_grpc"] = run_child("bare", str(port), f"{rounds},{calls}", "1")
    sink.stdin.close()
    sink.wait(30)
    with tempfile.TemporaryDirectory() as folder:
        for tune in ("1", "0"):
            (server,) = start_cluster(
                1, Path(folder), checkpoints=False, env={"ADAMAX_PS_MALLOC_TUNE": tune}
            )
            try:
                address = server.grpc_address
                key = "tuned" if tune == "1" else "untuned"
                results[f"dense_{key}"] = run_child("dense", address, str(rounds), tune)
                if tune == "1":
                    results["small"] = run_child("small", address, str(calls), tune)
                    results["sparse"] = run_child("sparse", address, str(seconds), tune)
                    http = server.http_address
                    results["http_dense"] = run_child("dense", http, str(rounds), tune)
                    results["http_small"] = run_child("small", http, str(calls), tune)
                    results["http_sparse"] = run_child(
                        "sparse", http, str(seconds), tune
                    )
            finally:
                server.stop()
    return results


def markdown(r: dict) -> str:
    floor = r["bare_grpc"]
    lines = [
        "Transport benchmark (loopback, one server process; "
        "`python bench/transport.py`)",
        "",
        "| 64 MB push | GB/s (median) | GB/s (best) | x raw TCP |",
        "|---|---:|---:|---:|",
    ]
    tcp = r["tcp"]["gb_per_s"]
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
            f"{row['gb_per_s'] / tcp:.2f} |"
        )
    small, bare = r["small"], floor["unary_1kb"]
    lines += [
        "",
        "| 1 KB, sequential | p50 ms | p99 ms | calls/s |",
        "|---|---:|---:|---:|",
        f"| bare gRPC unary echo (floor) | {bare['p50_ms']:.3f} | "
        f"{bare['p99_ms']:.3f} | {bare['calls_per_s']:,.0f} |",
        f"| adamax-ps push (256 float32), grpc:// | {small['p50_ms']:.3f} | "
        f"{small['p99_ms']:.3f} | {small['calls_per_s']:,.0f} |",
        f"| adamax-ps push (256 float32), http:// | {r['http_small']['p50_ms']:.3f} | "
        f"{r['http_small']['p99_ms']:.3f} | {r['http_small']['calls_per_s']:,.0f} |",
        "",
        "| sparse, 8192 Zipf rows x 64 floats into 1e6 rows, 4 threads | pushes/s | "
        "M input rows/s |",
        "|---|---:|---:|",
        f"| adamax-ps, grpc:// | {r['sparse']['pushes_per_s']:.0f} | "
        f"{r['sparse']['rows_per_s'] / 1e6:.2f} |",
        f"| adamax-ps, http:// | {r['http_sparse']['pushes_per_s']:.0f} | "
        f"{r['http_sparse']['rows_per_s'] / 1e6:.2f} |",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        kind = sys.argv[2]
        if kind == "tcp":
            tcp_receiver()
            return
        if kind == "sink":
            grpc_sink()
            return
        from adamax_ps.proto.malloc import tune_malloc

        tune_malloc()
        run = {
            "dense": lambda a, n: client_dense(a, int(n)),
            "small": lambda a, n: client_small(a, int(n)),
            "sparse": lambda a, n: client_sparse(a, float(n)),
            "bare": lambda port, n: bare_grpc(int(port), *map(int, n.split(","))),
        }[kind]
        print(json.dumps(run(sys.argv[3], sys.argv[4])))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--update-readme", action="store_true")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    results = measure(args.quick)
    table = markdown(results)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "transport.md").write_text(table)
    (args.results / "transport.json").write_text(json.dumps(results, indent=1) + "\n")
    if args.update_readme:
        update_readme("transport", table)
    summary = {
        "dense_gb_per_s": results["dense_tuned"]["gb_per_s"],
        "small_p50_ms": results["small"]["p50_ms"],
        "small_p99_ms": results["small"]["p99_ms"],
        "sparse_rows_per_s": results["sparse"]["rows_per_s"],
        "tcp_gb_per_s": results["tcp"]["gb_per_s"],
    }
    print(json.dumps(summary) if args.json else table)


if __name__ == "__main__":
    main()
