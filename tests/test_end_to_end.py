"""Real server processes driven as users drive them: lifecycle, clusters,
status codes, limits, concurrency and synchronous training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from helpers.servers import SCRIPT, Server, addresses, start_cluster

from adamax_ps.client import Adamax, IndexedSlices, RetryPolicy, connect, errors
from adamax_ps.client import placement as placement_module
from adamax_ps.proto import codec
from adamax_ps.proto.v1 import parameter_server_pb2 as pb
from adamax_ps.proto.v1 import parameter_server_pb2_grpc as pb_grpc

F32 = np.float32
WORKER = Path(__file__).with_name("worker_process.py")


@pytest.fixture
def servers(tmp_path):
    made: list[list[Server]] = []

    def start(count: int = 1, *extra: str, **options) -> list[Server]:
        cluster = start_cluster(count, tmp_path, *extra, **options)
        made.append(cluster)
        return cluster

    yield start
    for cluster in made:
        for server in cluster:
            server.kill()


def stub(server: Server):
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    return channel, pb_grpc.ParameterServerStub(channel)


def plan(steps: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [
        (
            IndexedSlices(
                rng.normal(size=(16, 8)).astype(F32), rng.integers(0, 500, 16)
            ),
            rng.normal(size=(32,)).astype(F32),
        )
        for _ in range(steps)
    ]


def train(cluster, steps, start=0, name="Adamax"):
    opt = Adamax(learning_rate=0.01, name=name, cluster=cluster)
    emb = cluster.variable("emb", shape=(500, 8), initializer="glorot_uniform")
    dense = cluster.variable("dense", shape=(32,), initializer="ones")
    for sparse, g in steps[start:]:
        opt.apply_gradients([(sparse, emb), (g, dense)])
    return opt, emb, dense


def test_sigterm_stops_cleanly_after_a_final_checkpoint(servers, tmp_path):
    (server,) = servers(1)
    with connect(server.grpc_address) as cluster:
        train(cluster, plan(3))
    assert server.stop() == 0
    assert any("final checkpoint" in line for line in server.output())
    assert (tmp_path / "server-0" / "ckpt-000001" / "manifest.json").is_file()


def test_a_server_restarted_from_its_checkpoint_mid_run(servers, monkeypatch):
    """Two servers, variables split over both; server 1 is stopped (SIGTERM,
    final checkpoint) and restarted on its port in the middle of training. The
    worker keeps its connection (retries bridge the gap) and ends with exactly
    the bits of an uninterrupted run."""
    monkeypatch.setattr(placement_module, "SPLIT_BYTES", 1)
    steps = plan(20)
    first = servers(2)
    with connect(addresses(first)) as cluster:
        opt, emb, dense = train(cluster, steps[:10])
        second = first[1]
        assert second.stop() == 0
        second.args[second.args.index("--grpc-port") + 1] = str(second.grpc_port)
        second.start()
        for sparse, g in steps[10:]:
            opt.apply_gradients([(sparse, emb), (g, dense)])
        restarted = (emb.numpy(), dense.numpy(), [w.copy() for w in opt.get_weights()])
        assert int(opt.iterations) == 20
    reference_servers = servers(2, checkpoints=False)
    with connect(addresses(reference_servers)) as cluster:
        ropt, remb, rdense = train(cluster, steps)
        assert remb.numpy().tobytes() == restarted[0].tobytes()
        assert rdense.numpy().tobytes() == restarted[1].tobytes()
        for a, b in zip(ropt.get_weights(), restarted[2], strict=True):
            assert a.tobytes() == b.tobytes()


def test_a_misconfigured_cluster_view_is_rejected(servers, tmp_path):
    a = Server(
        [
            "--grpc-port",
            "0",
            "--http-port",
            "0",
            "--server-index",
            "0",
            "--num-servers",
            "2",
        ],
        tmp_path / "a.log",
    ).start()
    b = Server(
        [
            "--grpc-port",
            "0",
            "--http-port",
            "0",
            "--server-index",
            "0",
            "--num-servers",
            "2",
        ],
        tmp_path / "b.log",
    ).start()
    try:
        with pytest.raises(
            errors.ClusterViewError,
            match="says it is server 0 of 2, but was given as server 1",
        ):
            connect([a.grpc_address, b.grpc_address])
        with pytest.raises(errors.ClusterViewError, match="of 1"):
            connect(a.grpc_address)
        channel, raw = stub(a)
        with pytest.raises(grpc.RpcError) as info:
            raw.CreateOptimizer(
                pb.CreateOptimizerRequest(
                    view=pb.ClusterView(server_index=1, num_servers=2), config_json="{}"
                )
            )
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "this server is 0 of 2" in info.value.details()
        channel.close()
    finally:
        a.kill()
        b.kill()


def test_domain_errors_map_to_status_codes(servers):
    (server,) = servers(1, checkpoints=False)
    channel, raw = stub(server)
    view = pb.ClusterView(server_index=0, num_servers=1)
    spec = pb.VariableSpec(name="w", global_shape=[2], dtype=pb.FLOAT32, rows=2)
    raw.CreateVariables(pb.CreateVariablesRequest(view=view, variables=[spec]))
    raw.CreateOptimizer(pb.CreateOptimizerRequest(view=view, config_json="{}"))

    def code_of(call, request):
        with pytest.raises(grpc.RpcError) as info:
            call(request)
        return info.value.code(), info.value.details()

    wider = pb.VariableSpec(name="w", global_shape=[3], dtype=pb.FLOAT32, rows=3)
    assert (
        code_of(
            raw.CreateVariables, pb.CreateVariablesRequest(view=view, variables=[wider])
        )[0]
        == grpc.StatusCode.ALREADY_EXISTS
    )
    code, details = code_of(
        raw.ApplyGradients,
        pb.ApplyRequest(
            view=view,
            optimizer="Adamax",
            gradients=[pb.Gradient(variable="w", values=codec.encode(np.ones(3, F32)))],
        ),
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "'w' must have shape" in details
    code, details = code_of(
        raw.ApplyGradients,
        pb.ApplyRequest(
            view=view,
            optimizer="Adamax",
            gradients=[
                pb.Gradient(variable="nope", values=codec.encode(np.ones(3, F32)))
            ],
        ),
    )
    assert code == grpc.StatusCode.NOT_FOUND and "'nope' does not exist" in details
    code, details = code_of(
        raw.ApplyGradients,
        pb.ApplyRequest(
            view=view,
            optimizer="Adamax",
            gradients=[
                pb.Gradient(
                    variable="w",
                    values=pb.Tensor(shape=[2], dtype=pb.FLOAT32, data=b"123"),
                )
            ],
        ),
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "needs 8 bytes" in details
    assert code_of(raw.GetOptimizer, pb.OptimizerRequest(optimizer="x"))[0] == (
        grpc.StatusCode.NOT_FOUND
    )
    channel.close()


def test_health_and_reflection_are_served(servers):
    (server,) = servers(1, checkpoints=False)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "adamax_ps.v1.ParameterServer"):
        status = health.Check(health_pb2.HealthCheckRequest(service=service)).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    answers = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = {s.name for a in answers for s in a.list_services_response.service}
    assert {"adamax_ps.v1.ParameterServer", "grpc.health.v1.Health"} <= names
    channel.close()
    with urllib.request.urlopen(server.http_address + "/readyz") as response:
        assert json.load(response) == {"status": "ready"}


def test_request_size_limits(servers):
    (server,) = servers(1, "--max-request-bytes", str(4 << 20), checkpoints=False)
    with connect(server.grpc_address) as cluster:
        opt = Adamax(cluster=cluster)
        small = cluster.variable("small", shape=(2_000_000,))  # 8 MB: streamed
        with pytest.raises(
            errors.ResourceExhaustedError,
            match=r"request limit of 4194304 bytes.*--max",
        ):
            opt.apply_gradients([(np.ones(2_000_000, F32), small)])
        assert int(opt.iterations) == 0
    channel, raw = stub(server)
    huge = pb.ApplyRequest(
        optimizer="Adamax",
        gradients=[
            pb.Gradient(
                variable="small",
                values=pb.Tensor(
                    shape=[17_000_000], dtype=pb.FLOAT32, data=bytes(68_000_000)
                ),
            )
        ],
    )
    with pytest.raises(grpc.RpcError) as info:
        raw.ApplyGradients(huge)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    channel.close()


def test_streamed_and_unary_pushes_agree(servers):
    (server,) = servers(1, checkpoints=False)
    rng = np.random.default_rng(2)
    g = rng.normal(size=600_000).astype(F32)  # 2.4 MB: streamed
    with connect(server.grpc_address) as cluster:
        opt = Adamax(cluster=cluster)
        big = cluster.variable("big", shape=(600_000,))
        halves = [cluster.variable(f"half{k}", shape=(300_000,)) for k in range(2)]
        opt.apply_gradients([(g, big)])
        opt2 = Adamax(name="second", cluster=cluster)
        opt2.apply_gradients([(g[:300_000], halves[0])])
        opt2.apply_gradients([(g[300_000:], halves[1])])
        whole = big.numpy()
        assert whole[:300_000].tobytes() == halves[0].numpy().tobytes()


def test_large_http_bodies_land_as_the_same_pushes_over_grpc(servers):
    """HTTP bodies of 6 MB are read into pooled buffers (the pool the gRPC
    streams use too; the second push reuses the first's buffer), and a chunked
    body without a length into a growing one: each leaves the bytes the same
    pushes leave over gRPC."""
    import httpx

    (server,) = servers(1, checkpoints=False)
    rng = np.random.default_rng(5)
    n = 1_500_000  # 6 MB of float32: above the pool's 4 MB
    pushes = [rng.normal(size=n).astype(F32) for _ in range(2)]
    finals = {}
    for name, address in (("grpc", server.grpc_address), ("http", server.http_address)):
        with connect(address) as cluster:
            w = cluster.variable(f"{name}/w", shape=(n,), initializer="ones")
            opt = Adamax(name=name, cluster=cluster)
            for g in pushes:
                opt.apply_gradients([(g, w)])
            finals[name] = w.numpy().tobytes()
    with connect(server.http_address) as cluster:
        w = cluster.variable("chunked/w", shape=(n,), initializer="ones")
        Adamax(name="chunked", cluster=cluster).apply_gradients([(pushes[0], w)])
    header = {
        "gradients": [{"variable": "chunked/w", "values": codec.describe(pushes[1])}],
        "push_id": {"client": "chunked", "sequence": 1},
    }
    body = b"".join(codec.frame(header, [pushes[1]]))
    pieces = (body[i : i + 100_003] for i in range(0, len(body), 100_003))
    response = httpx.post(
        f"{server.http_address}/api/v1/optimizers/chunked/apply",
        content=pieces,  # an iterator: sent chunked, with no content-length
        headers={"content-type": codec.FRAMED},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert "content-length" not in response.request.headers
    with connect(server.http_address) as cluster:
        finals["chunked"] = cluster.variable("chunked/w", shape=(n,)).numpy().tobytes()
    assert finals["http"] == finals["grpc"] == finals["chunked"]
    assert finals["grpc"] != np.ones(n, F32).tobytes()


def test_a_streamed_sparse_and_dense_push_equals_the_same_push_unary(
    servers, monkeypatch
):
    """Indices, values and a dense gradient in one stream (over 1 MB) land as
    the same call sent as one unary message does."""
    from adamax_ps.client import grpc_transport

    (server,) = servers(1, checkpoints=False)
    rng = np.random.default_rng(4)
    rows = rng.integers(0, 5000, 6000)  # repeated ids: summed before sending
    values = rng.normal(size=(6000, 64)).astype(F32)
    dense = rng.normal(size=1000).astype(F32)
    finals = []
    with connect(server.grpc_address) as cluster:
        for name, stream_above in (("streamed", 1 << 10), ("unary", 1 << 30)):
            monkeypatch.setattr(grpc_transport, "STREAM_ABOVE", stream_above)
            emb = cluster.variable(f"{name}/emb", shape=(5000, 64), initializer="ones")
            w = cluster.variable(f"{name}/w", shape=(1000,), initializer="ones")
            opt = Adamax(name=name, cluster=cluster)
            for _ in range(2):
                opt.apply_gradients([(IndexedSlices(values, rows), emb), (dense, w)])
            finals.append([emb.numpy().tobytes(), w.numpy().tobytes()])
    assert finals[0] == finals[1]
    assert finals[0][0] != np.ones((5000, 64), F32).tobytes()


def test_concurrent_worker_processes_count_every_call(servers, tmp_path):
    cluster_servers = servers(2, checkpoints=False)
    env = {**os.environ, "ADAMAX_PS_ADDRESS": addresses(cluster_servers)}
    workers = [
        subprocess.Popen(
            [sys.executable, WORKER, str(k), "40"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(4)
    ]
    for worker in workers:
        _out, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err
    with connect(addresses(cluster_servers)) as cluster:
        opt = Adamax(cluster=cluster)
        assert int(opt.iterations) == 160


def test_synchronous_replicas_across_servers(servers, monkeypatch):
    monkeypatch.setattr(placement_module, "SPLIT_BYTES", 1)
    sync = servers(2, "--replicas", "2", "--sync-timeout", "60", checkpoints=False)
    rng = np.random.default_rng(4)
    grads = [rng.normal(size=(6, 2)).astype(F32) for _ in range(2)]
    results = []

    def replica(k: int) -> None:
        with connect(addresses(sync)) as cluster:
            opt = Adamax(cluster=cluster)
            w = cluster.variable("w", shape=(6, 2))
            results.append(opt.apply_gradients([(grads[k], w)]))

    threads = [threading.Thread(target=replica, args=(k,)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert results == [1, 1]
    reference = servers(1, checkpoints=False)
    with connect(addresses(sync)) as cluster, connect(addresses(reference)) as single:
        w = cluster.variable("w", shape=(6, 2))
        opt = Adamax(cluster=single)
        ref = single.variable("w", shape=(6, 2))
        opt.apply_gradients([(grads[0] + grads[1], ref)])  # x + y == y + x
        assert w.numpy().tobytes() == ref.numpy().tobytes()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--server-index", "3", "--num-servers", "2"], "must be below --num-servers"),
        (["--durability", "wal"], "--durability wal needs --checkpoint-dir"),
        (["--durability", "paper"], "--durability"),
        (["--grpc-port", "70000"], "--grpc-port"),
        (["--checkpoint-every", "5"], "needs --checkpoint-dir"),
        (["--shards", "zero"], "--shards"),
    ],
)
def test_bad_settings_are_refused_clearly(args, message):
    result = subprocess.run(
        [SCRIPT, "serve", *args], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert message in result.stderr


def test_a_port_in_use_is_a_clear_error(servers, tmp_path):
    (first,) = servers(1, checkpoints=False)
    result = subprocess.run(
        [
            SCRIPT,
            "serve",
            "--host",
            "127.0.0.1",
            "--grpc-port",
            "0",
            "--http-port",
            str(first.http_port),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert f"cannot listen on 127.0.0.1:{first.http_port} for HTTP" in result.stderr


def test_settings_from_the_environment(tmp_path):
    server = Server(["--grpc-port", "0", "--http-port", "0"], tmp_path / "env.log")
    server.start(env={"ADAMAX_PS_SHARDS": "3", "ADAMAX_PS_REPLICAS": "2"})
    try:
        channel, raw = stub(server)
        info = raw.GetServerInfo(pb.ServerInfoRequest())
        assert (info.shards, info.replicas) == (3, 2)
        channel.close()
    finally:
        server.kill()


def test_transport_errors_after_the_server_is_gone(servers):
    (server,) = servers(1, checkpoints=False)
    cluster = connect(
        server.grpc_address, retry=RetryPolicy(attempts=3, initial_backoff=0.01)
    )
    w = cluster.variable("w", shape=(2,))
    server.kill()
    with pytest.raises(errors.TransportError, match="UNAVAILABLE"):
        w.numpy()
    cluster.close()


def test_server_index_from_the_hostname():
    from adamax_ps.server.config import index_from_hostname

    assert index_from_hostname("ps-3") == 3
    assert index_from_hostname("ps-12.ps.default.svc.cluster.local") == 12
    with pytest.raises(ValueError, match="hostname ending in -<number>"):
        index_from_hostname("laptop")
