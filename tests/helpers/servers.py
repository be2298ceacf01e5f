"""Real ``adamax-ps serve`` processes for the tests, on ports the OS picks.

A server prints ``adamax-ps serving grpc=HOST:PORT http=HOST:PORT ...`` once
it is ready; the tests wait for that line (no sleeps) and stop servers with
SIGTERM, as an orchestrator would.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

SCRIPT = Path(sys.executable).parent / "adamax-ps"
READY = re.compile(r"adamax-ps serving grpc=(\S+):(\d+) http=(\S+):(\d+)")
START_TIMEOUT = 120


@dataclass
class Server:
    """One running server process."""

    args: list[str]
    log: Path
    process: subprocess.Popen | None = None
    grpc_port: int = 0
    http_port: int = 0
    lines: queue.Queue = field(default_factory=queue.Queue)

    @property
    def grpc_address(self) -> str:
        return f"grpc://127.0.0.1:{self.grpc_port}"

    @property
    def http_address(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, env: dict[str, str] | None = None) -> Server:
        self.lines = queue.Queue()  # a restart reads only its own output
        self.process = subprocess.Popen(
            [SCRIPT, "serve", "--host", "127.0.0.1", *self.args],
            stdout=subprocess.PIPE,
            stderr=open(self.log, "ab"),  # noqa: SIM115 - owned by the process
            text=True,
            env={**os.environ, **(env or {})},
        )
        threading.Thread(target=self._read, daemon=True).start()
        while True:
            try:
                line = self.lines.get(timeout=START_TIMEOUT)
            except queue.Empty:
                self.kill()
                raise RuntimeError(
                    f"server did not start: {self.log.read_text()}"
                ) from None
            if line is None:
                code = self.process.wait(START_TIMEOUT)
                raise RuntimeError(f"server exited with {code}: {self.log.read_text()}")
            match = READY.search(line)
            if match:
                self.grpc_port, self.http_port = int(match[2]), int(match[4])
                return self

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, then wait; the exit code (killed after ``timeout``)."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)

    def output(self) -> list[str]:
        """Lines printed on stdout so far (after the ready line)."""
        lines = []
        while not self.lines.empty():
            line = self.lines.get_nowait()
            if line is not None:
                lines.append(line)
        return lines


def start_cluster(
    count: int,
    folder: Path,
    *extra: str,
    checkpoints: bool = True,
    env: dict[str, str] | None = None,
) -> list[Server]:
    """``count`` servers of one cluster, each with its own checkpoint folder."""
    servers = []
    try:
        for index in range(count):
            args = [
                "--grpc-port",
                "0",
                "--http-port",
                "0",
                "--server-index",
                str(index),
                "--num-servers",
                str(count),
                "--shards",
                "2",
                *extra,
            ]
            if checkpoints:
                args += ["--checkpoint-dir", str(folder / f"server-{index}")]
            servers.append(Server(args, folder / f"server-{index}.log").start(env))
    except BaseException:
        for server in servers:
            server.kill()
        raise
    return servers


def addresses(servers: list[Server]) -> str:
    return ",".join(s.grpc_address for s in servers)
