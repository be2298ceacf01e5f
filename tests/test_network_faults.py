"""Faults across real network hosts: each server runs in its own network
namespace behind a veth pair, as a separate machine would; the test process is
the workers' host. Faults: SIGKILL and restart, a partition (nftables drops),
random loss (nftables), a slow link (tc tbf; this kernel has no netem), and a
dying synchronous replica. Results are compared bit for bit with a fault-free
run of the same deterministic calls. Root only: namespaces need it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from helpers import skips
from helpers.servers import addresses, start_cluster

from adamax_ps.client import Adamax, IndexedSlices, RetryPolicy, connect, errors
from adamax_ps.client import placement as placement_module
from adamax_ps.server.launcher import LocalServer
from adamax_ps.server.service import ParameterService, ServiceSettings

F32 = np.float32
TOOLS = ("ip", "nft", "tc")
pytestmark = pytest.mark.slow


def require_root_and_tools() -> None:
    skips.require(*TOOLS, root="network namespaces need it")


def sh(*args: str, stdin: str | None = None, check: bool = True) -> None:
    subprocess.run(
        args, input=stdin, text=True, check=check, capture_output=True, timeout=60
    )


class Host:
    """A network namespace joined to this host by a veth pair."""

    def __init__(self, tag: str, index: int, subnet: int) -> None:
        self.ns = f"aps{tag}h{index}"
        self.outer = f"aps{tag}o{index}"
        self.inner = f"aps{tag}i{index}"
        self.ip = f"10.{subnet}.{index}.2"
        self.gateway = f"10.{subnet}.{index}.1"

    def create(self) -> None:
        sh("ip", "netns", "add", self.ns)
        sh("ip", "link", "add", self.outer, "type", "veth", "peer", "name", self.inner)
        sh("ip", "link", "set", self.inner, "netns", self.ns)
        sh("ip", "addr", "add", f"{self.gateway}/24", "dev", self.outer)
        sh("ip", "link", "set", self.outer, "up")
        sh("ip", "-n", self.ns, "addr", "add", f"{self.ip}/24", "dev", self.inner)
        sh("ip", "-n", self.ns, "link", "set", self.inner, "up")
        sh("ip", "-n", self.ns, "link", "set", "lo", "up")

    def remove(self) -> None:
        sh("ip", "netns", "del", self.ns, check=False)
        sh("ip", "link", "del", self.outer, check=False)

    def drop(self, rule: str) -> None:
        """Drop incoming TCP packets matching ``rule`` (nftables syntax)."""
        sh(
            "ip",
            "netns",
            "exec",
            self.ns,
            "nft",
            "-f",
            "-",
            stdin=(
                "table inet chaos {\n chain input {\n"
                "  type filter hook input priority 0; policy accept;\n"
                f"  ip protocol tcp {rule} counter drop\n }}\n}}\n"
            ),
        )

    def heal(self) -> None:
        sh(
            "ip",
            "netns",
            "exec",
            self.ns,
            "nft",
            "delete",
            "table",
            "inet",
            "chaos",
            check=False,
        )

    def slow(self, rate: str) -> None:
        sh(
            "ip",
            "netns",
            "exec",
            self.ns,
            "tc",
            "qdisc",
            "replace",
            "dev",
            self.inner,
            "root",
            "tbf",
            "rate",
            rate,
            "burst",
            "32kbit",
            "latency",
            "400ms",
        )

    def server(self, folder: Path, *args: str) -> LocalServer:
        return LocalServer(
            ["--grpc-port", "0", "--http-port", "0", *args],
            folder / f"{self.ns}.log",
            host="0.0.0.0",
            reach=self.ip,
            prefix=["ip", "netns", "exec", self.ns],
        )


@pytest.fixture
def hosts():
    require_root_and_tools()
    tag = f"{os.getpid() % 1000}"
    # Apart from another run's (the pid) and from this run's other pytest-xdist
    # worker (gw0, gw1, ...: a different remainder of 3).
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    subnet = 100 + (os.getpid() % 50) * 3 + worker % 3
    made: list[Host] = []

    def make(count: int) -> list[Host]:
        for index in range(len(made), len(made) + count):
            host = Host(tag, index, subnet)
            made.append(host)
            host.create()
        return made[-count:]

    try:
        yield make
    finally:
        for host in made:
            host.remove()


def start_servers(hosts: list[Host], folder: Path, *args: str) -> list[LocalServer]:
    servers = []
    try:
        for index, host in enumerate(hosts):
            servers.append(
                host.server(
                    folder,
                    "--server-index",
                    str(index),
                    "--num-servers",
                    str(len(hosts)),
                    "--checkpoint-dir",
                    str(folder / f"ps-{index}"),
                    *args,
                ).start()
            )
    except BaseException:
        for server in servers:
            server.kill()
        raise
    return servers


def kill_and_restart(server: LocalServer) -> None:
    """SIGKILL the server process in its namespace; start it again on the same
    ports from the same folder."""
    server.process.kill()
    server.process.wait(30)
    server.args[server.args.index("--grpc-port") + 1] = str(server.grpc_port)
    server.args[server.args.index("--http-port") + 1] = str(server.http_port)
    server.start()


def call(step: int):
    rng = np.random.default_rng(step)
    return (
        IndexedSlices(rng.normal(size=(32, 8)).astype(F32), rng.integers(0, 900, 32)),
        rng.normal(size=(64,)).astype(F32),
    )


def train(cluster, steps) -> None:
    opt = Adamax(learning_rate=0.01, cluster=cluster)
    emb = cluster.variable("emb", shape=(900, 8), initializer="glorot_uniform")
    dense = cluster.variable("dense", shape=(64,), initializer="ones")
    for step in steps:
        sparse, g = call(step)
        opt.apply_gradients([(sparse, emb), (g, dense)])


def state(address: str):
    with connect(address) as cluster:
        opt = Adamax(learning_rate=0.01, cluster=cluster)
        emb = cluster.variable("emb", shape=(900, 8), initializer="glorot_uniform")
        dense = cluster.variable("dense", shape=(64,), initializer="ones")
        return [
            emb.numpy().tobytes(),
            dense.numpy().tobytes(),
            [w.tobytes() for w in opt.get_weights()],
            int(opt.iterations),
        ]


def reference(folder: Path, count: int, calls: int):
    (folder / "reference").mkdir(parents=True, exist_ok=True)
    servers = start_cluster(count, folder / "reference", checkpoints=False)
    try:
        with connect(addresses(servers)) as cluster:
            train(cluster, range(calls))
        return state(addresses(servers))
    finally:
        for server in servers:
            server.kill()


@pytest.fixture(autouse=True)
def split_everything(monkeypatch):
    """Every variable split by rows over the servers: each call spans hosts."""
    monkeypatch.setattr(placement_module, "SPLIT_BYTES", 1)


def test_sigkill_and_restart_on_another_host(hosts, tmp_path):
    machines = hosts(3)
    servers = start_servers(machines, tmp_path, "--durability", "wal")
    try:
        with connect(
            addresses(servers), retry=RetryPolicy(attempts=80, max_backoff=0.5)
        ) as cluster:
            train(cluster, range(30))
            kill_and_restart(servers[1])
            train(cluster, range(30, 60))
        after = state(addresses(servers))
    finally:
        for server in servers:
            server.kill()
    assert after == reference(tmp_path, 3, 60)


def test_checkpoint_mode_restarts_on_its_host_at_exactly_a_checkpoint(hosts, tmp_path):
    """Without the log a SIGKILL loses what followed the last checkpoint; the
    restarted state is exactly that checkpoint's, a prefix of the calls."""
    (machine,) = hosts(1)
    (server,) = start_servers([machine], tmp_path, "--checkpoint-every", "0.05")
    try:
        with connect(server.grpc_address) as cluster:
            train(cluster, range(20))
            cluster.checkpoint()
            train(cluster, range(20, 60))  # periodic checkpoints race these
        kill_and_restart(server)
        after = state(server.grpc_address)
    finally:
        server.kill()
    kept = after[3]
    assert 20 <= kept <= 60
    assert after == reference(tmp_path, 1, kept)


def test_a_partitioned_server_is_waited_for_and_nothing_applies_twice(hosts, tmp_path):
    machines = hosts(3)
    servers = start_servers(machines, tmp_path)
    blocked = threading.Event()
    patient = RetryPolicy(
        attempts=200, max_backoff=0.3, on_retry=lambda address, reason: blocked.set()
    )
    try:
        with connect(addresses(servers), timeout=1.0, retry=patient) as cluster:
            train(cluster, range(20))
            machines[2].drop(f"tcp dport {servers[2].grpc_port}")
            worker = threading.Thread(target=train, args=(cluster, range(20, 40)))
            worker.start()
            assert blocked.wait(60), "no call ever hit the partition"
            machines[2].heal()
            worker.join(300)
            assert not worker.is_alive()
        after = state(addresses(servers))
    finally:
        for server in servers:
            server.kill()
    assert after == reference(tmp_path, 3, 40)


def test_a_partition_that_lasts_is_a_clear_error(hosts, tmp_path):
    machines = hosts(2)
    servers = start_servers(machines, tmp_path)
    try:
        cluster = connect(
            addresses(servers),
            timeout=0.5,
            retry=RetryPolicy(attempts=3, initial_backoff=0.05),
        )
        train(cluster, range(3))
        machines[1].drop("")  # every TCP packet
        with pytest.raises(
            errors.TransportError, match=r"DEADLINE_EXCEEDED|UNAVAILABLE"
        ):
            train(cluster, range(3, 4))
        machines[1].heal()
        cluster.close()
    finally:
        for server in servers:
            server.kill()


def test_random_loss_changes_nothing_but_time(hosts, tmp_path):
    machines = hosts(2)
    servers = start_servers(machines, tmp_path)
    try:
        for machine, server in zip(machines, servers, strict=True):
            machine.drop(f"tcp dport {server.grpc_port} numgen random mod 100 < 15")
        with connect(addresses(servers), retry=RetryPolicy(attempts=40)) as cluster:
            train(cluster, range(30))
        for machine in machines:
            machine.heal()
        after = state(addresses(servers))
    finally:
        for server in servers:
            server.kill()
    assert after == reference(tmp_path, 2, 30)


def test_a_checkpoint_over_a_slow_link_is_a_consistent_cut(hosts, tmp_path):
    """Pushes continue over a rate-limited link while the server writes a
    checkpoint: the checkpoint holds exactly the first k calls, for some k."""
    (machine,) = hosts(1)
    (server,) = start_servers([machine], tmp_path)
    machine.slow("4mbit")
    try:
        with connect(server.grpc_address) as cluster:
            warm = threading.Event()
            worker = threading.Thread(
                target=lambda: (
                    train(cluster, range(5)),
                    warm.set(),
                    train(cluster, range(5, 40)),
                )
            )
            worker.start()
            assert warm.wait(120)
            cluster.checkpoint()
            worker.join(300)
    finally:
        server.kill()
    restored = ParameterService(ServiceSettings(shards=1))
    restored.restore(tmp_path / "ps-0")
    kept = restored.optimizer("Adamax").iterations
    assert 5 <= kept <= 40
    (tmp_path / "replay").mkdir()
    (fault_free,) = start_cluster(1, tmp_path / "replay", checkpoints=False)
    try:
        with connect(fault_free.grpc_address) as cluster:
            train(cluster, range(kept))
            for name in ("emb", "dense"):
                assert restored.pull(name).tobytes() == cluster.read(name).tobytes()
                for slot in ("m", "v"):
                    expected = cluster.read(name, optimizer="Adamax", slot=slot)
                    assert restored.get_slot("Adamax", name, slot).tobytes() == (
                        expected.tobytes()
                    )
    finally:
        fault_free.kill()
        restored.close()


def test_sync_training_survives_a_replica_that_dies(hosts, tmp_path):
    """Two replicas train in synchronous rounds; one is killed: the other gets
    a clear timeout error instead of hanging."""
    machines = hosts(2)
    servers = start_servers(
        machines, tmp_path, "--replicas", "2", "--sync-timeout", "3"
    )
    script = (
        "import sys, numpy as np\n"
        "from adamax_ps.client import Adamax, connect\n"
        "c = connect(sys.argv[1]); opt = Adamax(cluster=c)\n"
        "w = c.variable('w', shape=(64, 4))\n"
        "for i in range(10_000):\n"
        "    opt.apply_gradients([(np.ones((64, 4), np.float32), w)])\n"
        "    print(i, flush=True)\n"
    )
    replicas = [
        subprocess.Popen(
            [sys.executable, "-c", script, addresses(servers)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for replica in replicas:
            for line in replica.stdout:
                if int(line) >= 5:
                    break
        replicas[0].kill()
        _, err = replicas[1].communicate(timeout=120)
        assert replicas[1].returncode != 0
        assert "SyncTimeoutError" in err and "waiting for 2 replicas" in err
    finally:
        for process in replicas:
            if process.poll() is None:
                process.kill()
        for server in servers:
            server.kill()
