"""A cluster that serves TLS (``--tls-cert``) and wants a token is rescaled
online: the command speaks TLS to the servers (``--tls-ca``), the servers
read each other's cuts over TLS (trusting their own ``--tls-ca``), and a
worker connected with TLS follows the new layout. The result is
bit-identical to one server's."""

from __future__ import annotations

import subprocess
import sys

import pytest
import trustme
from helpers.rescale_model import SPLIT, Model, state
from helpers.servers import Server, addresses, start_cluster

from adamax_ps.client import connect, placement

STEPS = 6
TOKEN = "rescale-token"
EXTRA = ["--cluster-split-bytes", str(SPLIT), "--eviction-interval", "0"]


@pytest.fixture(autouse=True)
def _split(monkeypatch):
    monkeypatch.setattr(placement, "SPLIT_BYTES", SPLIT)  # as the servers place rows


@pytest.mark.slow
def test_a_tls_cluster_is_rescaled_online_and_its_worker_follows(tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path, ca_path = (tmp_path / n for n in ("c.pem", "k.pem", "ca.pem"))
    cert.cert_chain_pems[0].write_to_path(cert_path)
    cert.private_key_pem.write_to_path(key_path)
    ca.cert_pem.write_to_path(ca_path)
    (tmp_path / "token").write_text(TOKEN)
    tls = ["--tls-cert", str(cert_path), "--tls-key", str(key_path)]
    tls += ["--tls-ca", str(ca_path), "--token-file", str(tmp_path / "token")]
    secure = {"tls": str(ca_path), "token": TOKEN}

    (tmp_path / "single").mkdir()
    single = start_cluster(1, tmp_path / "single", *EXTRA)
    try:
        with connect(addresses(single)) as cluster:
            model = Model.on(cluster)
            for step in range(2 * STEPS):
                model.step(step)
        expected = state(addresses(single))
    finally:
        single[0].stop()

    (tmp_path / "c").mkdir()
    servers = start_cluster(2, tmp_path / "c", *EXTRA, *tls)
    args = ["--grpc-port", "0", "--http-port", "0", "--shards", "2", *EXTRA, *tls]
    args += ["--server-index", "2", "--num-servers", "2"]
    args += ["--checkpoint-dir", str(tmp_path / "c" / "server-2")]
    servers.append(Server(args, tmp_path / "c" / "server-2.log").start())
    everyone = addresses(servers)
    try:
        with connect(addresses(servers[:2]), **secure) as cluster:
            model = Model.on(cluster)
            for step in range(STEPS):
                model.step(step)
            plain = _rescale(everyone)  # plaintext to a TLS cluster: a clear failure
            assert plain.returncode == 1 and "UNAVAILABLE" in plain.stderr
            done = _rescale(everyone, "--tls-ca", str(ca_path))
            assert done.returncode == 0, done.stderr
            for step in range(STEPS, 2 * STEPS):  # the same worker follows
                model.step(step)
            assert cluster.size == 3
        assert state(everyone, **secure) == expected
    finally:
        for server in servers:
            server.stop()


def _rescale(address: str, *extra: str) -> subprocess.CompletedProcess:
    """``adamax-ps rescale --to 3`` with the token, and ``extra``."""
    command = [sys.executable, "-m", "adamax_ps.cli", "rescale", "--to", "3"]
    return subprocess.run(
        [*command, "--address", address, "--token", TOKEN, *extra],
        capture_output=True,
        text=True,
        timeout=300,
    )
