"""Rescaling a running cluster (``adamax-ps rescale``): a worker that keeps
pushing is paused by the freeze, follows the new layout, and the result is
bit-identical to one server applying every call once; a crash in the middle
leaves the old layout or the new, each complete, and running the command
again finishes it (or ``--abort`` undoes it)."""

from __future__ import annotations

import subprocess
import sys
import threading

import grpc
import httpx
import pytest
from helpers.rescale_cluster import (
    EXTRA,
    expected_after,
    train,
    two_and_a_spare,
    until,
)
from helpers.rescale_model import SPLIT, Model, state
from helpers.servers import Server, addresses, start_cluster

from adamax_ps.client import connect, errors, placement
from adamax_ps.client.rescale import Phase, _Servers, rescale
from adamax_ps.proto.v1 import parameter_server_pb2 as pb
from adamax_ps.proto.v1 import parameter_server_pb2_grpc as pb_grpc
from adamax_ps.proto.wire import VIEW_HEADER

STEPS = 10


@pytest.fixture(autouse=True)
def _split(monkeypatch):
    monkeypatch.setattr(placement, "SPLIT_BYTES", SPLIT)  # as the servers place rows


def pinned(server: Server) -> Server:
    """The same server, restarted on the ports it had (its peers and the
    rescale's records name them)."""
    args = list(server.args)
    args[args.index("--grpc-port") + 1] = str(server.grpc_port)
    args[args.index("--http-port") + 1] = str(server.http_port)
    return Server(args, server.log)


class Worker(threading.Thread):
    """Trains ``steps`` with one connection throughout; after the call of
    each step in ``waits`` it waits for that event (the rescale begun)."""

    def __init__(self, address: str, steps: range, waits: dict) -> None:
        super().__init__(daemon=True)
        self.address, self.steps, self.waits = address, steps, waits
        self.reached = {step: threading.Event() for step in waits}
        self.followed: list[int] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with connect(self.address) as cluster:
                relayout = cluster.relayout

                def counted(new):
                    relayout(new)
                    self.followed.append(len(new))

                cluster.relayout = counted
                model = Model.on(cluster)
                for step in self.steps:
                    model.step(step)
                    if step in self.waits:
                        self.reached[step].set()
                        assert self.waits[step].wait(120)
        except BaseException as e:
            self.error = e


@pytest.mark.slow
@pytest.mark.parametrize("durability", ["checkpoint", "wal"])
def test_a_worker_pushing_through_two_rescales_ends_bit_identical(tmp_path, durability):
    """2 servers (and a spare) rescaled to 3 while the worker pushes, then
    to 1: weights, slots, table rows and slots and iterations equal one
    server's, bit for bit; the worker followed each new layout. With the
    write-ahead log, the servers then restart from their folders (the new
    layout's checkpoint and the log after it) to the same state."""
    expected = expected_after(tmp_path, 3 * STEPS)
    mode = ("--durability", durability)
    servers = two_and_a_spare(tmp_path / "c", *mode)
    everyone = addresses(servers)
    frozen = [threading.Event(), threading.Event()]
    worker = Worker(
        addresses(servers[:2]),
        range(3 * STEPS),
        {STEPS - 1: frozen[0], 2 * STEPS - 1: frozen[1]},
    )
    try:
        worker.start()
        assert worker.reached[STEPS - 1].wait(120)
        report = rescale(
            everyone,
            3,
            progress=lambda phase: phase == "frozen" and frozen[0].set(),
        )
        assert (report.old_servers, report.new_servers) == (2, 3)
        assert worker.reached[2 * STEPS - 1].wait(120), worker.error
        report = rescale(
            everyone,
            1,
            progress=lambda phase: phase == "frozen" and frozen[1].set(),
        )
        assert report.addresses == [servers[0].grpc_address]
        assert set(report.seconds) == {"freeze", "adopt", "commit", "settle", "release"}
        assert report.paused < sum(report.seconds.values())
        worker.join(120)
        assert worker.error is None, worker.error
        assert worker.followed == [3, 1]
        assert state(servers[0].grpc_address) == expected
        # The servers left out refuse an old view, naming the cluster now.
        with connect(everyone) as cluster:  # follows: server 0 names it
            assert cluster.size == 1
        with pytest.raises(errors.ClusterViewError, match="left the cluster"):
            _old_view_push(servers[1].grpc_address, (1, 3))
        # A read of a slice by an old view is refused too (over HTTP here).
        answer = httpx.get(
            f"{servers[1].http_address}/api/v1/variables/emb/value",
            headers={VIEW_HEADER: "1/3"},
            timeout=30,
        )
        assert answer.status_code == 409 and "left the cluster" in answer.text
        # Settled and released: no server keeps a cut, or needs one.
        statuses = _statuses(everyone.split(","))
        assert [(s.settling, s.cut_sequence) for s in statuses] == [(False, 0)] * 3
        if durability == "wal":  # killed: only the folders and the log remain
            servers = _crash_and_restart(servers)
            assert _states(everyone.split(",")) == ["serving", "retired", "retired"]
            assert state(servers[0].grpc_address) == expected
    finally:
        for server in servers:
            server.stop()


def _old_view_push(address: str, view: tuple[int, int]) -> None:
    from adamax_ps.client.grpc_transport import GrpcTransport
    from adamax_ps.client.transport import ApplyOptions, PushId

    transport = GrpcTransport(address)
    try:
        transport.apply(view, "Adamax", [], PushId("x", 0), ApplyOptions())
    finally:
        transport.close()


def _phase(servers: _Servers, index: int, phase, rid: str, **extra):
    return servers.call(index, phase=phase, rescale_id=rid, **extra)


def _freeze_and_adopt(driver: _Servers, rid: str, new: list[str], adopting=(0, 1, 2)):
    """FREEZE the 2 old servers of ``new``, then ADOPT the 3-server layout on
    the servers ``adopting``."""
    for i in (0, 1):
        _phase(driver, i, Phase.FREEZE, rid)
    for i in adopting:
        adopt = dict(server_index=i, num_servers=3, addresses=new)
        _phase(driver, i, Phase.ADOPT, rid, old_addresses=new[:2], **adopt)


@pytest.mark.slow
@pytest.mark.parametrize("durability", ["checkpoint", "wal"])
def test_a_crash_in_the_middle_leaves_one_layout_and_the_command_finishes_it(
    tmp_path, durability
):
    """The driver dies after the old servers froze and two of the three new
    ones adopted; every server is then killed. Restarted, the old layout
    serves reads of the cut (complete) and refuses changes; the spare waits
    again (its adoption, never written, is made again from the cuts).
    ``adamax-ps rescale --abort`` undoes it (the old layout takes pushes);
    a second crash, after server 0 alone committed, leaves server 0 on the
    new layout and the others pending until the command is run again, which
    finishes it: the new layout, complete, bit-identical to one server."""
    expected = expected_after(tmp_path, 3 * STEPS)
    mode = ("--durability", durability)
    servers = two_and_a_spare(tmp_path / "c", *mode)
    everyone = addresses(servers)
    new = [s.grpc_address for s in servers]
    try:
        train(addresses(servers[:2]), range(STEPS))
        before = state(addresses(servers[:2]))
        driver = _Servers(new, None)
        try:
            # server 1 never adopts: the driver died
            _freeze_and_adopt(driver, "r1", new, adopting=(0, 2))
        finally:
            driver.close()
        servers = _crash_and_restart(servers)
        assert _states(new) == ["frozen", "frozen", "spare"]
        assert state(addresses(servers[:2])) == before  # the old layout, whole
        with (
            pytest.raises(errors.RescalingError),
            connect(addresses(servers[:2])) as cluster,
        ):
            cluster.rescale_wait = 0.5
            Model.on(cluster).step(STEPS)
        _cli("--abort", "--address", everyone)
        assert _states(new) == ["serving", "serving", "spare"]
        assert state(addresses(servers[:2])) == before
        train(addresses(servers[:2]), range(STEPS, 2 * STEPS))

        # Again, and this time the driver dies after server 0 committed.
        driver = _Servers(new, None)
        try:
            _freeze_and_adopt(driver, "r2", new)
            _phase(driver, 0, Phase.COMMIT, "r2", addresses=new)
        finally:
            driver.close()
        servers = _crash_and_restart(servers)
        assert _states(new) == ["serving", "frozen", "spare"]
        refused = _cli("--to", "2", "--address", everyone, expect=2)
        assert "rescale r2 is pending to 3 servers" in refused
        _cli("--to", "3", "--address", everyone)
        assert _states(new) == ["serving"] * 3
        train(everyone, range(2 * STEPS, 3 * STEPS))
        assert state(everyone) == expected
    finally:
        for server in servers:
            server.stop()


def _crash_and_restart(servers: list[Server]) -> list[Server]:
    """SIGKILL every server, then start each again on its ports."""
    for server in servers:
        server.kill()
    return [pinned(server).start() for server in servers]


def _statuses(addresses_: list[str]) -> list[pb.RescaleStatus]:
    driver = _Servers(addresses_, None)
    try:
        return [driver.call(i, phase=Phase.STATUS) for i in range(len(addresses_))]
    finally:
        driver.close()


def _states(addresses_: list[str]) -> list[str]:
    return [status.state for status in _statuses(addresses_)]


@pytest.mark.slow
def test_a_crash_before_the_new_layout_settles_rebuilds_it_from_the_cuts(tmp_path):
    """Every server committed the new layout, and the worker pushed on it,
    but none has a checkpoint of it yet (the driver died before SETTLE):
    every server is killed, then started again in reverse order (a new
    server whose old peers are not up yet waits for them). Each rebuilds its
    state from the old servers' cuts and replays its log since the commit:
    the new layout, whole, bit-identical to one server; the command, run
    again, settles and releases it."""
    expected = expected_after(tmp_path, 3 * STEPS)
    mode = ("--durability", "wal")
    servers = two_and_a_spare(tmp_path / "c", *mode)
    everyone = addresses(servers)
    new = [s.grpc_address for s in servers]
    try:
        train(addresses(servers[:2]), range(STEPS))
        driver = _Servers(new, None)
        try:
            _freeze_and_adopt(driver, "r", new)
            for i in (0, 1, 2):
                _phase(driver, i, Phase.COMMIT, "r", addresses=new)
        finally:
            driver.close()
        train(everyone, range(STEPS, 2 * STEPS))
        statuses = _statuses(new)
        assert [s.settling for s in statuses] == [True] * 3
        for server in servers:
            server.kill()
        servers[2] = pinned(servers[2]).start()  # alone: its old peers are down
        until(lambda: _statuses(new[2:])[0].rebuild_error, "a failed rebuild")
        assert "UNAVAILABLE" in _statuses(new[2:])[0].rebuild_error
        with (
            grpc.insecure_channel(new[2].removeprefix("grpc://")) as channel,
            pytest.raises(grpc.RpcError) as refused,
        ):
            pb_grpc.ParameterServerStub(channel).ListVariables(
                pb.ListVariablesRequest()
            )
        assert "its last try failed" in refused.value.details()
        info = httpx.get(f"{servers[2].http_address}/api/v1/server", timeout=30)
        assert "UNAVAILABLE" in info.json()["rebuild_error"]
        servers[:2] = [pinned(server).start() for server in reversed(servers[:2])][::-1]
        with connect(everyone) as cluster:  # waits while they rebuild
            cluster.rescale_wait = 120
            model = Model.on(cluster)
            for step in range(2 * STEPS, 3 * STEPS):
                model.step(step)
        assert state(everyone) == expected
        rebuilt = [s.log.read_text().count("rebuilt") for s in servers]
        assert rebuilt == [1, 1, 1], rebuilt
        assert "trying again" in servers[2].log.read_text()  # server 1 was down
        # Server 2 settles, then a crash before its record says so (the
        # record put back as it was): restarted, it restores its checkpoint.
        record = tmp_path / "c" / "server-2" / "layout.json"
        unsettled = record.read_bytes()
        driver = _Servers(new, None)
        try:
            assert _phase(driver, 2, Phase.SETTLE, "r").settling is False
        finally:
            driver.close()
        servers[2].kill()
        record.write_bytes(unsettled)
        servers[2] = pinned(servers[2]).start()
        assert state(everyone) == expected
        assert servers[2].log.read_text().count("rebuilt") == 1  # not again
        _cli("--to", "3", "--address", everyone)
        statuses = _statuses(new)
        assert [(s.settling, s.cut_sequence) for s in statuses] == [(False, 0)] * 3
        assert state(everyone) == expected
    finally:
        for server in servers:
            server.stop()


def _cli(*args: str, expect: int = 0) -> str:
    """``adamax-ps rescale ARGS``: what it printed (stdout, else stderr)."""
    done = subprocess.run(
        [sys.executable, "-m", "adamax_ps.cli", "rescale", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == expect, done.stderr
    return done.stdout or done.stderr


def test_a_peer_reads_only_the_files_of_a_frozen_servers_cut(tmp_path):
    """ReadCheckpointFile serves the files of this server's cut, and nothing
    else: not before a freeze, not a path out of the folder."""
    servers = start_cluster(1, tmp_path, *EXTRA)
    try:
        address = servers[0].grpc_address
        with connect(address) as cluster:
            Model.on(cluster).step(0)
        channel = grpc.insecure_channel(address.removeprefix("grpc://"))
        stub = pb_grpc.ParameterServerStub(channel)

        def read(name: str, sequence: int = 0) -> bytes:
            request = pb.CheckpointFileRequest(sequence=sequence, file=name)
            return b"".join(c.data for c in stub.ReadCheckpointFile(request))

        with pytest.raises(grpc.RpcError) as refused:
            read("manifest.json")
        assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        driver = _Servers([address], None)
        try:
            _phase(driver, 0, Phase.FREEZE, "r")
            manifest = read("manifest.json")
            assert b"adamax-ps-checkpoint" in manifest
            for bad in ("../server.json", "/etc/passwd", "nothing.bin"):
                with pytest.raises(grpc.RpcError) as refused:
                    read(bad)
                assert refused.value.code() is grpc.StatusCode.NOT_FOUND
            _phase(driver, 0, Phase.ABORT, "r")
        finally:
            driver.close()
            channel.close()
        with connect(address) as cluster:  # serving again: takes pushes
            Model.on(cluster).step(1)
    finally:
        servers[0].stop()


def test_the_cluster_size_never_goes_below_one_or_beyond_its_addresses(tmp_path):
    servers = start_cluster(1, tmp_path, *EXTRA)
    try:
        with pytest.raises(ValueError, match="at least 1"):
            rescale(servers[0].grpc_address, 0)
        with pytest.raises(ValueError, match="needs 2 addresses"):
            rescale(servers[0].grpc_address, 2)
    finally:
        servers[0].stop()
