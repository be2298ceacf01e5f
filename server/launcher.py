"""Local server processes: start ``adamax-ps serve``, learn its ports, stop it.

A server prints ``adamax-ps serving grpc=HOST:PORT http=HOST:PORT ...`` once
ready; the launcher waits for that line (so port 0 works, and nothing polls or
sleeps) and stops servers with SIGTERM, as an orchestrator would. Used by
``adamax-ps cluster``, the benchmarks and the tests.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

READY = re.compile(r"adamax-ps serving grpc=(\S+):(\d+) http=(\S+):(\d+)")
START_TIMEOUT = 120.0


class LocalServer:
    """One ``adamax-ps serve`` child process."""

    def __init__(
        self,
        args: Sequence[str],
        log: Path | None = None,
        *,
        host: str = "127.0.0.1",
        on_line: Callable[[str], None] | None = None,
        prefix: Sequence[str] = (),
        reach: str | None = None,
    ) -> None:
        """``log``: a file for the server's stderr; without one, ``on_line``
        receives every line the server prints, stdout and stderr alike.
        ``prefix`` goes before the command (``ip netns exec NS``); ``reach`` is
        the host clients use when it is not ``host`` (a server on 0.0.0.0)."""
        self.args = list(args)
        self.log = log
        self.host = host
        self.on_line = on_line
        self.prefix = list(prefix)
        self.reach = reach or host
        self.process: subprocess.Popen | None = None
        self.grpc_port = 0
        self.http_port = 0
        self.lines: queue.Queue = queue.Queue()

    @property
    def grpc_address(self) -> str:
        return f"grpc://{self.reach}:{self.grpc_port}"

    @property
    def http_address(self) -> str:
        return f"http://{self.reach}:{self.http_port}"

    def start(self, env: dict[str, str] | None = None) -> LocalServer:
        """Start and wait until it serves (``RuntimeError`` if it cannot)."""
        self.lines = queue.Queue()  # a restart reads only its own output
        if self.log is not None:
            stderr = open(self.log, "ab")  # noqa: SIM115 - closed below
        elif self.on_line is not None:
            stderr = subprocess.PIPE
        else:
            stderr = None
        command = [
            *self.prefix,
            sys.executable,
            "-m",
            "adamax_ps.cli",
            "serve",
            "--host",
            self.host,
            *self.args,
        ]
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env={**os.environ, **(env or {})},
        )
        if self.log is not None:
            stderr.close()
        threading.Thread(target=self._read, daemon=True).start()
        if stderr is subprocess.PIPE:
            threading.Thread(target=self._relay, daemon=True).start()
        while True:
            try:
                line = self.lines.get(timeout=START_TIMEOUT)
            except queue.Empty:
                self.kill()
                raise RuntimeError(
                    f"server did not start: {self._log_text()}"
                ) from None
            if line is None:
                code = self.process.wait(START_TIMEOUT)
                raise RuntimeError(f"server exited with {code}: {self._log_text()}")
            match = READY.search(line)
            if match:
                self.grpc_port, self.http_port = int(match[2]), int(match[4])
                return self

    def _read(self) -> None:
        for line in self.process.stdout:
            if self.on_line is not None:  # first: the ready line is shown
                self.on_line(line)  # before start() returns
            self.lines.put(line)
        self.lines.put(None)

    def _relay(self) -> None:
        for line in self.process.stderr:
            self.on_line(line)

    def _log_text(self) -> str:
        return self.log.read_text() if self.log and self.log.exists() else ""

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
        """Lines printed on stdout since the ready line."""
        lines = []
        while not self.lines.empty():
            line = self.lines.get_nowait()
            if line is not None:
                lines.append(line)
        return lines


def start_cluster(
    count: int,
    folder: Path | None,
    *extra: str,
    host: str = "127.0.0.1",
    env: dict[str, str] | None = None,
    checkpoints: bool = True,
) -> list[LocalServer]:
    """``count`` servers of one cluster on free ports, each with its own
    checkpoint folder under ``folder`` (and its log there)."""
    servers: list[LocalServer] = []
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
                *extra,
            ]
            log = None
            if folder is not None:
                log = Path(folder) / f"server-{index}.log"
                if checkpoints:
                    args += ["--checkpoint-dir", str(Path(folder) / f"server-{index}")]
            servers.append(LocalServer(args, log, host=host).start(env))
    except BaseException:
        for server in servers:
            server.kill()
        raise
    return servers


def addresses(servers: Sequence[LocalServer]) -> str:
    return ",".join(s.grpc_address for s in servers)
