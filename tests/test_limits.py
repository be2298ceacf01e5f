"""One request cannot exhaust a server: its limits, on real server processes.

The state budget (``--memory-limit``) refuses a variable or slot that would
exceed it before anything is allocated; the in-flight budget holds many
concurrent large bodies to what it allows; reads are limited in rows
(``--max-request-rows``) and JSON answers in values, and the ones that scan a
whole variable (top rows) never hold a per-row array of it. Peak memory is
read from the kernel (VmHWM, reset through ``clear_refs`` before each check).
"""

from __future__ import annotations

import json
import re
import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from helpers import memory
from helpers.servers import Server

from adamax_ps.cli.main import build_parser
from adamax_ps.client import Adamax, IndexedSlices, connect, errors
from adamax_ps.proto import codec
from adamax_ps.proto.v1 import parameter_server_pb2 as pb
from adamax_ps.proto.v1 import parameter_server_pb2_grpc as pb_grpc
from adamax_ps.proto.wire import INLINE_READ_BYTES
from adamax_ps.server import config

F32 = np.float32
MB = 1 << 20


def start(tmp_path: Path, *flags: str, name: str = "ps") -> Server:
    args = ["--grpc-port", "0", "--http-port", "0", "--shards", "2", *flags]
    return Server(args, tmp_path / f"{name}.log").start()


def reset_peak(server: Server) -> int:
    return memory.reset_peak(server.process.pid)


def peak(server: Server) -> int:
    return memory.peak(server.process.pid)


def http(server: Server, method: str, path: str, body: bytes | None = None, **headers):
    request = urllib.request.Request(
        server.http_address + path, data=body, method=method, headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def headers_only(server: Server, path: str, length: int) -> bytes:
    """The status line the server answers a POST that declares ``length``
    bytes of body and sends none of them: it must decide from the headers."""
    host, port = server.http_address.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nhost: {host}\r\n"
            f"content-type: {codec.FRAMED}\r\ncontent-length: {length}\r\n\r\n".encode()
        )
        return sock.makefile("rb").readline()


def framed(header: dict, arrays=()) -> bytes:
    return b"".join(bytes(p) for p in codec.frame(header, list(arrays)))


def server_info(server: Server) -> dict:
    status_code, body = http(server, "GET", "/api/v1/server")
    assert status_code == 200
    return json.loads(body)


def test_sizes_take_suffixes(tmp_path):
    server = start(tmp_path, "--memory-limit", "1.5G", "--max-inflight-bytes", "96M")
    try:
        limits = server_info(server)["limits"]
        assert limits["memory_limit_bytes"] == 3 << 29
        assert limits["max_inflight_bytes"] == 96 * MB
    finally:
        server.kill()


def test_the_memory_limit_refuses_variables_and_slots_before_allocating(tmp_path):
    server = start(tmp_path, "--memory-limit", "48M")
    try:
        with connect(server.grpc_address) as cluster:
            before = reset_peak(server)
            with pytest.raises(errors.MemoryBudgetError, match="--memory-limit"):
                cluster.variable("huge", shape=(16 * MB,))  # 64 MB of float32
            assert peak(server) - before < 8 * MB  # nothing was allocated
            small = cluster.variable("small", shape=(2 * MB,))  # 8 MB
            wide = cluster.variable("wide", shape=(5 * MB,))  # 20 MB
            opt = Adamax(cluster=cluster)
            opt.apply_gradients([(np.ones(2 * MB, F32), small)])  # + 16 MB of slots
            # wide's m and v (40 MB) would pass the limit: the push is refused
            # whole, small is not touched either.
            value, iterations = small.numpy(), int(opt.iterations)
            with pytest.raises(errors.MemoryBudgetError, match="slots"):
                opt.apply_gradients(
                    [(np.ones(2 * MB, F32), small), (np.ones(5 * MB, F32), wide)]
                )
            assert small.numpy().tobytes() == value.tobytes()
            assert int(opt.iterations) == iterations
            with pytest.raises(KeyError):  # Keras: a variable without slots
                opt.get_slot(wide, "m")
        used = server_info(server)["limits"]["memory_used_bytes"]
        assert used == (2 + 5 + 2 * 2) * MB * 4
        code, body = http(
            server,
            "POST",
            "/api/v1/variables",
            framed(
                {"variables": [{"name": "h", "global_shape": [9 * MB], "rows": 9 * MB}]}
            ),
            **{"content-type": codec.FRAMED},
        )
        assert code == 507 and json.loads(body)["error"] == "MemoryBudgetError"
        metrics = http(server, "GET", "/metrics")[1].decode()
        assert "adamax_ps_memory_refusals_total 3.0" in metrics
    finally:
        server.kill()


def test_reads_are_limited_in_rows_and_the_client_splits_them(tmp_path):
    server = start(tmp_path, "--max-request-rows", "100")
    try:
        with connect(server.grpc_address) as cluster:
            emb = cluster.variable("emb", shape=(1000, 4), initializer="glorot_uniform")
            rows = np.random.default_rng(0).integers(0, 1000, 750)
            np.testing.assert_array_equal(emb.gather(rows), emb.numpy()[rows])
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            stub = pb_grpc.ParameterServerStub(channel)
            request = pb.ReadRequest(variable="emb", rows=codec.encode(np.arange(101)))
            with pytest.raises(grpc.RpcError) as refused:
                list(stub.Read(request, timeout=10))
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "--max-request-rows" in refused.value.details()
        code, body = http(
            server,
            "POST",
            "/api/v1/variables/emb/rows",
            framed({"rows": codec.describe(np.arange(101))}, [np.arange(101)]),
            **{"content-type": codec.FRAMED},
        )
        assert code == 413 and "at most 100" in json.loads(body)["message"]
    finally:
        server.kill()


def test_reads_of_small_values_come_in_one_message_and_large_ones_stream(tmp_path):
    """ReadInline answers at most INLINE_READ_BYTES and refuses more; the
    client reads what fits inline in one message and streams the rest."""
    server = start(tmp_path)
    try:
        rows = INLINE_READ_BYTES // 16 + 1  # float32 x 4: just over the inline size
        with connect(server.grpc_address) as cluster:
            big = cluster.variable("big", shape=(rows, 4), initializer="glorot_uniform")
            value = big.numpy()
            assert value.nbytes > INLINE_READ_BYTES
            picked = np.arange(0, rows, 7)
            np.testing.assert_array_equal(big.gather(picked), value[picked])
            metrics = httpx.get(server.http_address + "/metrics").text
        calls = {
            method: int(float(count))
            for method, count in re.findall(
                r'requests_total\{method="(Read\w*)",transport="grpc"\} (\S+)', metrics
            )
        }
        assert calls.get("Read", 0) >= 1 and calls.get("ReadInline", 0) >= 1, calls
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            stub = pb_grpc.ParameterServerStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                stub.ReadInline(pb.ReadRequest(variable="big"), timeout=10)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "read it with Read, which streams" in refused.value.details()
            small = stub.ReadInline(
                pb.ReadRequest(variable="big", rows=codec.encode(np.array([3]))),
                timeout=10,
            )
            np.testing.assert_array_equal(codec.decode(small), value[[3]])
    finally:
        server.kill()


def test_json_answers_are_refused_before_the_copy_and_top_rows_scan_in_blocks(
    tmp_path,
):
    server = start(tmp_path)
    try:
        with connect(server.grpc_address) as cluster:
            tall = cluster.variable("tall", shape=(4 * MB, 1), initializer="ones")
            opt = Adamax(cluster=cluster)
            rows = np.arange(0, 4 * MB, 4096)
            grad = np.linspace(1, 2, len(rows), dtype=F32).reshape(-1, 1)
            opt.apply_gradients([(IndexedSlices(grad, rows), tall)])
            before = reset_peak(server)
            code, body = http(server, "GET", "/api/v1/variables/tall/value")
            assert code == 413 and "--json-limit" in json.loads(body)["message"]
            code, body = http(
                server, "GET", "/api/v1/variables/tall/top?optimizer=Adamax&k=3&by=m"
            )
            assert code == 200
            top = [r["row"] for r in json.loads(body)["rows"]]
            assert top == rows[::-1][:3].tolist()  # the largest m: largest gradients
            # A per-row array of the whole variable would be 4 M x 8 bytes.
            assert peak(server) - before < 8 * MB
    finally:
        server.kill()


@pytest.mark.parametrize("scheme", ["grpc", "http"])
def test_many_concurrent_large_bodies_stay_within_the_in_flight_budget(
    tmp_path, scheme
):
    """12 pushes of 12 MB at once, 24 MB allowed in flight: they all land
    (waiting their turn), and the server's peak memory grows by about the
    budget, not by the 144 MB sent."""
    server = start(
        tmp_path, "--max-inflight-bytes", "24M", "--max-request-bytes", "16M"
    )
    size = 3 * MB  # float32: 12 MB per push
    try:
        address = server.grpc_address if scheme == "grpc" else server.http_address
        with connect(address) as cluster:
            w = cluster.variable("w", shape=(size,))
            opt = Adamax(cluster=cluster)
            opt.apply_gradients([(np.zeros(size, F32), w)])  # its slots made
            before = reset_peak(server)
            failures: list[BaseException] = []

            def push(k: int) -> None:
                try:
                    opt.apply_gradients([(np.full(size, k, F32), w)])
                except BaseException as e:
                    failures.append(e)

            threads = [threading.Thread(target=push, args=(k,)) for k in range(12)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(300)
            assert not failures, failures
            grown = peak(server) - before
            assert grown < (24 + 16) * MB, f"{grown / MB:.0f} MB more at the peak"
            assert int(opt.iterations) == 13
        if scheme == "http":  # a body over --max-request-bytes: refused at once
            status = headers_only(server, "/api/v1/optimizers/Adamax/apply", 17 * MB)
            assert status.startswith(b"HTTP/1.1 413"), status
    finally:
        server.kill()


def test_the_default_host_is_loopback_and_exposure_without_a_token_warns(tmp_path):
    parser = build_parser()
    assert config.from_arguments(parser.parse_args(["serve"])).host == "127.0.0.1"
    quiet = start(tmp_path, name="quiet")
    quiet.kill()
    assert "without a token" not in (tmp_path / "quiet.log").read_text()
    exposed = Server(
        ["--grpc-port", "0", "--http-port", "0"],
        tmp_path / "exposed.log",
        host="0.0.0.0",
        reach="127.0.0.1",
    ).start()
    exposed.kill()
    text = (tmp_path / "exposed.log").read_text()
    assert "listening on 0.0.0.0 without a token" in text
    assert "anyone who can reach this address can change" in text


def test_a_request_over_the_size_limit_is_a_resource_error_naming_the_flag(tmp_path):
    """The same refusal over both transports: a ResourceExhaustedError (a
    ValueError) whose message names --max-request-bytes; nothing is created."""
    server = start(tmp_path, "--max-request-bytes", "16M")
    try:
        value = np.ones(8 * MB, F32)  # 32 MB: streamed over gRPC
        for address in (server.grpc_address, server.http_address):
            with (
                connect(address) as cluster,
                pytest.raises(
                    errors.ResourceExhaustedError, match="--max-request-bytes"
                ),
            ):
                cluster.variable("too-big", initial_value=value)
        assert server_info(server)["limits"]["memory_used_bytes"] == 0
    finally:
        server.kill()
