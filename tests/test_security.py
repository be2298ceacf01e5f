"""Bearer tokens and TLS on both transports, against real server processes."""

from __future__ import annotations

import hmac
import os
import subprocess

import grpc
import httpx
import numpy as np
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers.servers import SCRIPT, Server

from adamax_ps.client import Adamax, RetryPolicy, connect, errors
from adamax_ps.server.errors import UnauthenticatedError
from adamax_ps.server.security import TokenCheck

TOKEN = "s3cret-token-value"
ONCE = RetryPolicy(attempts=1)


@pytest.fixture
def token_file(tmp_path):
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    return path


def serve(tmp_path, *args, env=None) -> Server:
    return Server(
        ["--grpc-port", "0", "--http-port", "0", *args], tmp_path / "server.log"
    ).start(env)


@pytest.mark.parametrize("scheme", ["grpc", "http"])
def test_mutations_need_the_token_and_reads_are_open(tmp_path, token_file, scheme):
    server = serve(tmp_path, "--token-file", str(token_file))
    address = server.grpc_address if scheme == "grpc" else server.http_address
    try:
        with (
            connect(address, retry=ONCE) as anonymous,
            pytest.raises(errors.UnauthenticatedError, match="bearer token"),
        ):
            Adamax(cluster=anonymous)
        with (
            connect(address, token="wrong", retry=ONCE) as wrong,
            pytest.raises(errors.UnauthenticatedError),
        ):
            wrong.variable("w", shape=(2,))
        with connect(address, token=TOKEN) as cluster:
            opt = Adamax(cluster=cluster)
            w = cluster.variable("w", shape=(2,))
            opt.apply_gradients([(np.ones(2, np.float32), w)])
        with connect(address, retry=ONCE) as reader:  # reads need no token
            assert reader.read("w").shape == (2,)
    finally:
        server.kill()


def test_token_from_the_environment_and_reads_protected(tmp_path):
    server = serve(tmp_path, "--auth-reads", env={"ADAMAX_PS_TOKEN": TOKEN})
    try:
        response = httpx.get(server.http_address + "/api/v1/optimizers")
        assert response.status_code == 401
        assert response.json()["error"] == "UnauthenticatedError"
        ok = httpx.get(
            server.http_address + "/api/v1/optimizers",
            headers={"authorization": f"Bearer {TOKEN}"},
        )
        assert ok.status_code == 200
        metrics = httpx.get(server.http_address + "/metrics")
        assert metrics.status_code == 401  # the counters are reads too
        scraped = httpx.get(
            server.http_address + "/metrics",
            headers={"authorization": f"Bearer {TOKEN}"},
        )
        assert scraped.status_code == 200 and "adamax_ps_" in scraped.text
        assert httpx.get(server.http_address + "/healthz").status_code == 200
        channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest()
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING  # probes open
        channel.close()
        with pytest.raises(errors.UnauthenticatedError):
            connect(server.grpc_address, retry=ONCE).read("anything")
    finally:
        server.kill()


def test_workers_take_the_token_from_the_environment(tmp_path, monkeypatch):
    """connect() given no token uses ADAMAX_PS_TOKEN, as the servers do: a
    worker pod (deploy/) gets its token and its servers from its environment."""
    server = serve(tmp_path, "--auth-reads", env={"ADAMAX_PS_TOKEN": TOKEN})
    try:
        monkeypatch.setenv("ADAMAX_PS_ADDRESS", server.grpc_address)
        monkeypatch.setenv("ADAMAX_PS_TOKEN", TOKEN)
        with connect() as cluster:
            w = cluster.variable("w", shape=(2,))
            Adamax(cluster=cluster).apply_gradients([(np.ones(2, np.float32), w)])
            assert cluster.read("w").shape == (2,)
        monkeypatch.setenv("ADAMAX_PS_TOKEN", "wrong")
        with pytest.raises(errors.UnauthenticatedError):
            connect(retry=ONCE)
    finally:
        server.kill()


def test_tls_on_both_transports(tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path, ca_path = (
        tmp_path / n for n in ("cert.pem", "key.pem", "ca.pem")
    )
    cert.cert_chain_pems[0].write_to_path(cert_path)
    cert.private_key_pem.write_to_path(key_path)
    ca.cert_pem.write_to_path(ca_path)
    server = (
        serve(
            tmp_path,
            "--tls-cert",
            str(cert_path),
            "--tls-key",
            str(key_path),
            "--token-file",
            str(tmp_path / "token"),
            env=None,
        )
        if (tmp_path / "token").write_text(TOKEN)
        else None
    )
    try:
        for address in (server.grpc_address, f"https://127.0.0.1:{server.http_port}"):
            with connect(address, tls=str(ca_path), token=TOKEN) as cluster:
                opt = Adamax(cluster=cluster)
                w = cluster.variable("w", shape=(3,))
                opt.apply_gradients([(np.ones(3, np.float32), w)])
                assert cluster.read("w").shape == (3,)
        with pytest.raises(errors.TransportError):
            connect(
                server.grpc_address, retry=RetryPolicy(attempts=2, initial_backoff=0.01)
            )
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"https://127.0.0.1:{server.http_port}/healthz")  # untrusted CA
        check_health_probe(tmp_path, server.http_port, cert_path, ca_path)
    finally:
        server.kill()


def check_health_probe(tmp_path, port: int, cert_path, ca_path) -> None:
    """``adamax-ps health`` as the image's HEALTHCHECK runs it beside a TLS
    server (https from the server's settings, loopback not verified), and
    verifying against a CA when given one."""
    url = f"https://127.0.0.1:{port}"
    environment = {
        "ADAMAX_PS_TLS_CERT": str(cert_path),
        "ADAMAX_PS_HTTP_PORT": str(port),
    }
    probes = [
        ((), environment, 0),
        ((url, "--tls-ca", str(ca_path)), {}, 0),
        ((url.replace("https", "http"),), {}, 1),
    ]
    stranger = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(stranger)
    probes.append(((url, "--tls-ca", str(stranger)), {}, 1))
    for args, env, expected in probes:
        result = subprocess.run(
            [SCRIPT, "health", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **env},
        )
        assert result.returncode == expected, (args, result.stdout, result.stderr)


def test_tokens_are_compared_in_constant_time(monkeypatch):
    seen = []
    original = hmac.compare_digest

    def spy(a, b):
        seen.append((a, b))
        return original(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    check = TokenCheck(TOKEN)
    check.check(f"Bearer {TOKEN}", mutating=True)
    with pytest.raises(UnauthenticatedError):
        check.check("Bearer nope", mutating=True)
    assert [b for _, b in seen] == [f"Bearer {TOKEN}".encode()] * 2
    check.check(None, mutating=False)  # reads open without auth_reads


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.key"],
            "not a readable file",
        ),
        (["--tls-cert", "/etc/hostname"], "go together"),
        (["--token-file", "/nonexistent-token"], "not a readable file"),
    ],
)
def test_bad_security_settings(args, message):
    result = subprocess.run(
        [SCRIPT, "serve", *args], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0 and message in result.stderr


def test_every_http_route_that_changes_state_needs_the_token(tmp_path, token_file):
    """Each route the schema tags ``writes`` (every change) answers 401 without
    the token, before anything else; no GET is one of them, and every other
    route (reads, including the POST of a row list) answers without it
    (``--auth-reads`` off)."""
    server = serve(tmp_path, "--token-file", str(token_file))
    try:
        with httpx.Client(base_url=server.http_address, timeout=30) as http:
            schema = http.get("/openapi.json").json()
            writes = 0
            for path, operations in schema["paths"].items():
                concrete = path.replace("{name}", "w").replace("{weight}", "x")
                for method, operation in operations.items():
                    response = http.request(method.upper(), concrete)
                    if "writes" not in operation.get("tags", []):
                        assert response.status_code != 401, (method, path)
                        continue
                    writes += 1
                    assert method != "get", path
                    assert response.status_code == 401, (method, path)
            assert writes >= 10
    finally:
        server.kill()


def test_every_grpc_method_that_changes_state_needs_the_token():
    """A method outside the token-checked set only reads: its name says so
    (a new RPC that changes state, such as CreateTable once, cannot slip
    through unchecked)."""
    from adamax_ps.proto.v1 import parameter_server_pb2 as pb
    from adamax_ps.server.security import MUTATING_METHODS

    methods = set(pb.DESCRIPTOR.services_by_name["ParameterServer"].methods_by_name)
    assert methods >= MUTATING_METHODS
    reads = methods - MUTATING_METHODS
    assert reads and all(
        name.startswith(("Get", "List", "Read", "Describe", "Export")) for name in reads
    ), sorted(reads)
