"""One server process: restore, warm up, serve gRPC and HTTP, stop cleanly.

Start: tune malloc, restore the newest checkpoint (if any), run every kernel
once, bind both ports, then report ready (gRPC health SERVING, ``/readyz``
200) and print one line with the bound addresses. On SIGTERM or SIGINT: stop
accepting calls, let in-flight ones finish (``--shutdown-grace``), write a
final checkpoint when a folder is configured, exit 0.

Fail-stop: when the write-ahead log fails (``--durability wal``), the server
keeps answering reads and health, reports NOT_SERVING (gRPC health and
``/readyz``) with the reason, writes no final checkpoint, and exits 1 when
stopped: a restart recovers every acknowledged change from disk.
"""

from __future__ import annotations

import faulthandler
import ipaddress
import logging
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import uvicorn

from adamax_ps.common.malloc import tune_malloc
from adamax_ps.proto.streams import BufferPool
from adamax_ps.server import adamax
from adamax_ps.server.config import ServerConfig
from adamax_ps.server.cut_transfer import DirectReads
from adamax_ps.server.errors import CheckpointError
from adamax_ps.server.grpc.server import SERVICE_NAME, GrpcServer, create_grpc_server
from adamax_ps.server.http.app import create_app
from adamax_ps.server.hyperparams import AdamaxConfig
from adamax_ps.server.inspection import Inspector
from adamax_ps.server.security import (
    GrpcTokenInterceptor,
    TokenCheck,
    load_token,
    server_credentials,
)
from adamax_ps.server.service import ParameterService
from adamax_ps.server.version import server_version

log = logging.getLogger("adamax_ps.serve")
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def peer_credentials(config: ServerConfig) -> grpc.ChannelCredentials | None:
    """How a TLS server reaches its peers (their cuts, in a rescale): TLS,
    trusting ``--tls-ca`` (else the system's CAs); None without TLS."""
    if config.tls_cert is None:
        return None
    roots = config.tls_ca.read_bytes() if config.tls_ca is not None else None
    return grpc.ssl_channel_credentials(root_certificates=roots)


def warm_up() -> None:
    """Run each kernel once (they are compiled or loaded at import; this also
    faults in their code) so no request pays for it. Also load what a
    rescale's reads of peers' cuts use first: gRPC's client channel code and
    the codec of name lookups. Loaded in the middle of a rescale, on cores
    busy with the other servers' imports, they cost a new server 0.1 s of
    the pause."""
    grpc.insecure_channel("127.0.0.1:1").close()  # never connects
    "localhost".encode("idna")  # what socket name lookups encode hosts with
    config = AdamaxConfig.from_keras()
    for dtype in adamax.FLOAT_DTYPES:
        w, m, v = (np.zeros((4, 2), dtype) for _ in range(3))
        step = config.step_scalars(0, dtype)
        adamax.dense_update(w, m, v, np.ones((4, 2), dtype), step)
        adamax.sparse_update(w, m, v, np.array([1, 1]), np.ones((2, 2), dtype), step)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket for uvicorn, so port 0 is known before it starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise SystemExit(
            f"adamax-ps: cannot listen on {host}:{port} for HTTP: {e}"
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def exposed(host: str) -> bool:
    """Whether ``host`` listens beyond this machine (not a loopback address)."""
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True  # a host name: it may resolve to anything


class ServerProcess:
    """The running pieces of one ``adamax-ps serve``."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        token = load_token(config.token_file)
        self.service = ParameterService(
            config.service_settings(), token, peer_credentials(config)
        )
        self.tokens = TokenCheck(token, config.auth_reads)
        self.inspector = Inspector(self.service, config.history_interval)
        # Large requests' receive buffers, one budget for both transports.
        self.buffers = BufferPool()
        self.ready = False
        self.grpc: GrpcServer | None = None
        self.http: uvicorn.Server | None = None
        self._http_thread: threading.Thread | None = None
        self.direct: DirectReads | None = None
        self.stopped = threading.Event()

    def start(self) -> None:
        config = self.config
        try:
            if config.checkpoint_dir:
                self.service.rescale.recover()  # restores, in its layout
            restored = self.service.last_checkpoint
            standing = self.service.rescale.standing
            if (
                config.restore_from
                and self.service.empty
                and standing.state == "serving"
                and not standing.importing  # rebuilding from a rescale's cuts
            ):
                restored = self.service.import_cut(
                    [Path(p) for p in config.restore_from.split(",") if p.strip()],
                    config.cluster_split_bytes,
                )
        except CheckpointError as e:
            raise SystemExit(f"adamax-ps: cannot restore: {e}") from None
        if self.service.replayed:
            log.info("replayed %d write-ahead log records", self.service.replayed)
        if restored is not None:
            log.info(
                "restored %s (%d bytes in %.2f s)",
                restored.path,
                restored.nbytes,
                restored.seconds,
            )
        warm_up()
        if exposed(config.host) and not self.tokens.enabled:
            log.warning(
                "listening on %s without a token: anyone who can reach this "
                "address can change or overwrite the model. Set --token-file or "
                "ADAMAX_PS_TOKEN (or listen on 127.0.0.1)",
                config.host,
            )
        tls = config.tls_cert is not None
        max_request_bytes = config.request_bytes(self.service.inflight.limit)
        try:
            self.grpc = create_grpc_server(
                self.service,
                f"{config.host}:{config.grpc_port}",
                max_request_bytes=max_request_bytes,
                workers=config.grpc_workers,
                # no token, no interceptor: nothing to check on each call
                interceptors=(
                    (GrpcTokenInterceptor(self.tokens, SERVICE_NAME),)
                    if self.tokens.enabled
                    else ()
                ),
                credentials=(
                    server_credentials(config.tls_cert, config.tls_key) if tls else None
                ),
                buffers=self.buffers,
                version=server_version(),
            )
        except (OSError, RuntimeError) as e:
            raise SystemExit(
                f"adamax-ps: cannot listen on {config.host}:{config.grpc_port} for "
                f"gRPC: {e}"
            ) from None
        sock = bind(config.host, config.http_port)
        self.http_port = sock.getsockname()[1]
        self.service.rescale.http = (self.http_port, tls)
        if not tls and config.transfer_port >= 0:
            try:
                sent = self.service.metrics.cut_sent_bytes
                self.direct = DirectReads(
                    config.host,
                    config.transfer_port,
                    lambda way, nbytes: sent.labels(way).inc(nbytes),
                    local=not config.transfer_port_only,
                )
            except OSError as e:
                raise SystemExit(
                    f"adamax-ps: cannot listen on {config.host}:"
                    f"{config.transfer_port} for direct reads: {e}"
                ) from None
            self.service.rescale.direct = self.direct
        app = create_app(
            self.service,
            lambda: self.ready,
            tokens=self.tokens,
            inspector=self.inspector,
            max_request_bytes=max_request_bytes,
            json_limit=config.json_limit,
            version=server_version(),
            buffers=self.buffers,
        )
        self.http = uvicorn.Server(
            uvicorn.Config(
                app,
                log_level="warning",
                lifespan="off",
                access_log=False,
                ssl_certfile=str(config.tls_cert) if tls else None,
                ssl_keyfile=str(config.tls_key) if tls else None,
            )
        )
        self._http_thread = threading.Thread(
            target=self.http.run, kwargs={"sockets": [sock]}, name="http", daemon=True
        )
        self._http_thread.start()
        if config.checkpoint_every:
            self.service.start_periodic_checkpoints(config.checkpoint_every, _report)
        if config.eviction_interval:
            self.service.start_eviction(config.eviction_interval)
        self.service.journal.on_stop.append(lambda reason: self.grpc.set_ready(False))
        self.ready = True
        self.grpc.set_ready(self.service.writes_stopped is None)
        index, count = self.service.layout
        standing = self.service.rescale.standing.state
        print(
            f"adamax-ps serving grpc={config.host}:{self.grpc.port} "
            f"http={config.host}:{self.http_port} server={index}/{count}"
            f"{' tls' if tls else ''}{'' if standing == 'serving' else ' ' + standing}",
            flush=True,
        )

    def stop(self) -> None:
        """Stop serving, finish in-flight calls, write the final checkpoint."""
        self.ready = False
        if self.grpc is not None:
            self.grpc.stop(self.config.shutdown_grace)
        if self.http is not None:
            self.http.should_exit = True
            self._http_thread.join(self.config.shutdown_grace + 5)
        stopped = self.service.writes_stopped
        standing = self.service.rescale.standing.state
        if stopped is not None:
            log.error("no final checkpoint: %s", stopped)
        elif standing != "serving" or self.service.rescale.standing.importing:
            log.info("no final checkpoint: this server is %s (not whole)", standing)
        elif self.config.checkpoint_dir:
            started = time.perf_counter()
            info = self.service.checkpoint()
            log.info(
                "final checkpoint %s in %.2f s",
                info.path,
                time.perf_counter() - started,
            )
            print(f"adamax-ps final checkpoint {info.path}", flush=True)
        if self.direct is not None:
            self.direct.close()
        self.inspector.close()
        self.service.close()
        self.stopped.set()


def _report(outcome) -> None:
    if isinstance(outcome, Exception):
        log.error("periodic checkpoint failed: %s", outcome)
    else:
        log.info("checkpoint %s (%.2f s)", outcome.path, outcome.seconds)


def run(config: ServerConfig) -> int:
    """Serve until SIGTERM/SIGINT; 0 after a clean stop."""
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    tune_malloc()
    faulthandler.register(signal.SIGUSR1)  # kill -USR1 dumps every thread's stack
    # Blocked in every thread (all are made after this), taken by sigwait on
    # this one: a stop signal delivered to any other thread still stops it.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    process = ServerProcess(config)
    process.start()
    signal.sigwait(STOP_SIGNALS)
    log.info("stopping")
    process.stop()
    return 1 if process.service.writes_stopped else 0
