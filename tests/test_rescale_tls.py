"""A cluster that serves TLS (``--tls-cert``) and wants a token is rescaled
online: the command speaks TLS to the servers (``--tls-ca``), the servers
read each other's cuts over TLS (trusting their own ``--tls-ca``), and a
worker connected with TLS follows the new layout. The result is
bit-identical to one server's."""

from __future__ import annotations

import re
import ssl
import subprocess
import sys

import httpx
import pytest
import trustme
from helpers.rescale_cluster import expected_after, two_and_a_spare
from helpers.rescale_model import SPLIT, Model, state
from helpers.servers import addresses

from adamax_ps.client import connect, placement

STEPS = 6
TOKEN = "rescale-token"


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

    expected = expected_after(tmp_path, 2 * STEPS)
    servers = two_and_a_spare(tmp_path / "c", *tls)
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
            # The cuts went over gRPC (TLS), never by a direct read.
            sent = [_cut_sent(s.http_port, ca_path) for s in servers]
            assert sum(s.get("grpc", 0) for s in sent) > 0, sent
            assert all(not s.get("direct") and not s.get("local") for s in sent), sent
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


def _cut_sent(http_port: int, ca_path) -> dict[str, float]:
    """A server's ``adamax_ps_cut_sent_bytes_total`` by way, over HTTPS."""
    verify = ssl.create_default_context(cafile=str(ca_path))
    text = httpx.get(
        f"https://127.0.0.1:{http_port}/metrics", verify=verify, timeout=30
    ).text
    found = re.findall(
        r'^adamax_ps_cut_sent_bytes_total\{way="(\w+)"\} (\S+)$', text, re.M
    )
    return {way: float(value) for way, value in found}
