"""The adamax-ps command line, run as a user runs it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.servers import start_cluster

from adamax_ps.client import Adamax, IndexedSlices, connect

SCRIPT = Path(sys.executable).parent / "adamax-ps"


def run(*args: str, env: dict | None = None, timeout: float = 300):
    return subprocess.run(
        [SCRIPT, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(
    "command", ["serve", "cluster", "demo", "inspect", "checkpoint", "health"]
)
def test_every_command_has_help(command):
    result = run(command, "--help")
    assert result.returncode == 0 and "ADAMAX_PS_" in result.stdout


def test_health_probes_a_server_without_loading_the_server(tmp_path):
    (server,) = start_cluster(1, tmp_path, checkpoints=False)
    try:
        up = run("health", server.http_address)
        assert up.returncode == 0 and "/healthz: ok" in up.stdout, up.stderr
        ready = run("health", "--ready", env={"ADAMAX_PS_URL": server.http_address})
        assert ready.returncode == 0 and "/readyz: ready" in ready.stdout
        local = run("health", env={"ADAMAX_PS_HTTP_PORT": str(server.http_port)})
        assert local.returncode == 0, local.stderr  # the container's own probe
    finally:
        server.stop()
    gone = run("health", server.http_address, "--timeout", "2")
    assert gone.returncode == 1 and "cannot reach the server" in gone.stderr
    probe = (
        "import sys; from adamax_ps.cli import main as cli\n"
        f"code = cli.main(['health', '{server.http_address}'])\n"
        "heavy = [m for m in ('numba', 'grpc', 'adamax_ps.server.service') "
        "if m in sys.modules]\n"
        "print(code, heavy)"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60
    )
    assert loaded.stdout.strip() == "1 []", loaded.stderr


def test_the_cli_spells_the_environment_prefix_as_the_settings_do():
    from adamax_ps.cli import main as cli
    from adamax_ps.server import config

    assert cli.ENV == config.ENV_PREFIX


def test_unknown_command_is_a_usage_error():
    result = run("fly")
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_demo_trains_a_local_cluster_and_stops_it(tmp_path):
    """2 servers, 4 worker processes: the loss falls, the held-out error beats
    predicting the mean, the dashboard URL is printed, checkpoints are written.
    Steps come from the environment, as every option may."""
    result = run(
        "demo", "--checkpoint-dir", str(tmp_path), env={"ADAMAX_PS_STEPS": "120"}
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert re.search(r"dashboard: http://127\.0\.0\.1:\d+/", out)
    assert "training with 4 asynchronous workers x 120 steps" in out
    first, last = map(float, re.search(r"loss ([\d.]+) -> ([\d.]+)", out).groups())
    assert last < first / 10
    mse, baseline = map(
        float,
        re.search(
            r"held-out MSE ([\d.]+)  \(predicting the mean: ([\d.]+)\)", out
        ).groups(),
    )
    assert mse < baseline / 5
    for index in range(2):
        assert (
            tmp_path / f"server-{index}" / "ckpt-000001" / "manifest.json"
        ).is_file()


def test_demo_workers_against_running_servers_in_sync_mode(tmp_path):
    servers = start_cluster(2, tmp_path, "--replicas", "2")
    try:
        address = ",".join(s.grpc_address for s in servers)
        result = run("demo", "--address", address, "--workers", "2", "--steps", "30")
        assert result.returncode == 0, result.stdout + result.stderr
        with connect(address) as cluster:
            assert (
                int(
                    Adamax(
                        name="demo/adamax", learning_rate=0.02, cluster=cluster
                    ).iterations
                )
                == 30
            )  # one per round
    finally:
        for server in servers:
            server.kill()


def test_cluster_inspect_checkpoint_and_ctrl_c(tmp_path):
    process = subprocess.Popen(
        [
            SCRIPT,
            "cluster",
            "--servers",
            "2",
            "--grpc-port",
            "0",
            "--http-port",
            "0",
            "--checkpoint-dir",
            str(tmp_path),
            "--",
            "--shards",
            "3",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = []
        for line in process.stdout:
            lines.append(line)
            if line.startswith("ps-1 dashboard"):
                break
        text = "".join(lines)
        assert "[ps-0] adamax-ps serving" in text and "[ps-1] adamax-ps serving" in text
        address = re.search(r"ADAMAX_PS_ADDRESS=(\S+)", text).group(1)
        urls = ",".join(re.findall(r"dashboard: (http://\S+)/", text))
        with connect(address) as cluster:
            opt = Adamax(cluster=cluster)
            w = cluster.variable("w", shape=(4,))
            ids = cluster.embedding_table("ids", 3, capacity=100)
            keys = np.arange(-5, 5)
            grads = IndexedSlices(np.ones((10, 3), np.float32), keys)
            opt.apply_gradients([(w.numpy() + 1, w), (grads, ids)])
        table = run("inspect", urls)
        assert table.returncode == 0, table.stderr
        assert "server 0 of 2, 3 shards" in table.stdout
        assert re.search(r"Adamax\s+0\.001\s+1\s+1", table.stdout)
        assert re.search(r"ids\s+3\s+float32\s+\d+\s+100\s", table.stdout)
        report = json.loads(run("inspect", urls, "--json").stdout)
        assert [r["server"]["server_index"] for r in report] == [0, 1]
        assert sum(len(r["variables"]) for r in report) == 1
        assert sum(t["size"] for r in report for t in r["tables"]) == 10
        exported = tmp_path / "ids.npz"
        saved = run("export", "ids", "--address", address, "--out", str(exported))
        assert saved.returncode == 0, saved.stderr
        assert sorted(np.load(exported)["keys"].tolist()) == keys.tolist()
        saved = run("checkpoint", urls)
        assert saved.returncode == 0 and saved.stdout.count("checkpoint 1 at") == 2
        process.send_signal(signal.SIGINT)  # what Ctrl-C sends
        rest = process.communicate(timeout=120)[0]
        assert process.returncode == 0, rest
        assert rest.count("adamax-ps final checkpoint") == 2
        assert "cluster stopped (exit codes [0, 0])" in rest
    finally:
        if process.poll() is None:
            process.kill()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["inspect"], "http://host:port"),
        (["inspect", "ps-0:8080"], "not an http:// or https:// address"),
        (["checkpoint", "http://127.0.0.1:1"], "cannot reach the server"),
        (["demo", "--workers", "0"], "at least 1"),
        (
            ["serve", "--checkpoint-dir", "/etc/hostname"],
            "not a readable, writable folder",
        ),
    ],
)
def test_clear_errors(args, message):
    result = run(*args, timeout=60)
    assert result.returncode != 0 and message in result.stderr + result.stdout
