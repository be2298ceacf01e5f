"""Settings of a server process, from flags or ``ADAMAX_PS_*`` environment variables.

Each option of ``adamax-ps serve`` can also be set by the environment variable
named after it (``--grpc-port`` is ``ADAMAX_PS_GRPC_PORT``); a flag wins over
the environment. Values are validated once, here, with messages that name the
option.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from adamax_ps.common import environment
from adamax_ps.server import limits
from adamax_ps.server.service import DEFAULT_MAX_REQUEST_ROWS, ServiceSettings
from adamax_ps.server.sync import SyncSettings
from adamax_ps.server.validation import NonFinitePolicy

ENV_PREFIX = environment.PREFIX
_SIZES = (
    "memory_limit",
    "max_inflight_bytes",
    "max_request_bytes",
    "cluster_split_bytes",
)


class ServerConfig(BaseModel):
    """Everything ``adamax-ps serve`` needs, validated."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    grpc_port: int = Field(50051, ge=0, le=65535)
    http_port: int = Field(8080, ge=0, le=65535)
    shards: int | None = Field(None, ge=1, le=1024)
    checkpoint_dir: Path | None = None
    checkpoint_every: float | None = Field(None, gt=0)
    keep_checkpoints: int = Field(2, ge=1)
    durability: Literal["checkpoint", "wal"] = "checkpoint"
    replicas: int = Field(0, ge=0)
    replicas_to_aggregate: int | None = Field(None, ge=1)
    sync_average: bool = False
    sync_timeout: float = Field(60.0, gt=0)
    server_index: int = Field(0, ge=0)  # "auto" on the command line: see below
    num_servers: int = Field(1, ge=1)
    nonfinite: NonFinitePolicy = NonFinitePolicy.REJECT
    memory_limit: int | None = Field(None, ge=1 << 20)
    max_inflight_bytes: int | None = Field(None, ge=1 << 20)
    max_request_bytes: int | None = Field(None, ge=1 << 20)
    max_request_rows: int = Field(DEFAULT_MAX_REQUEST_ROWS, ge=1)
    grpc_workers: int = Field(32, ge=2)
    shutdown_grace: float = Field(10.0, ge=0)
    token_file: Path | None = None
    auth_reads: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    json_limit: int = Field(100_000, ge=1)
    history_interval: float = Field(1.0, gt=0)
    eviction_interval: float = Field(0.2, ge=0)
    restore_from: str | None = None
    cluster_split_bytes: int = Field(64 << 20, ge=1)
    transfer_port: int = Field(0, ge=-1, le=65535)
    transfer_port_only: bool = False

    @field_validator(*_SIZES, mode="before")
    @classmethod
    def _size(cls, value: object) -> object:
        """Sizes take suffixes: ``8G``, ``512M``."""
        return limits.parse_bytes(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _consistent(self) -> ServerConfig:
        if self.server_index >= self.num_servers and self.checkpoint_dir is None:
            # With a folder it is a spare, waiting for `adamax-ps rescale`
            # (or the folder's committed layout says where it stands).
            raise ValueError(
                f"--server-index {self.server_index} must be below --num-servers "
                f"{self.num_servers} (or, a spare for a rescale, have a "
                "--checkpoint-dir)"
            )
        if self.replicas_to_aggregate and not self.replicas:
            raise ValueError("--replicas-to-aggregate needs --replicas (sync mode)")
        if self.replicas and (self.replicas_to_aggregate or 0) > self.replicas:
            raise ValueError(
                f"--replicas-to-aggregate {self.replicas_to_aggregate} exceeds "
                f"--replicas {self.replicas}"
            )
        if self.restore_from and not self.checkpoint_dir:
            raise ValueError(
                "--restore-from needs --checkpoint-dir (the imported state is "
                "checkpointed there before the server serves)"
            )
        if self.checkpoint_every and not self.checkpoint_dir:
            raise ValueError("--checkpoint-every needs --checkpoint-dir")
        if self.durability == "wal" and not self.checkpoint_dir:
            raise ValueError(
                "--durability wal needs --checkpoint-dir (the log lives there)"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        folder = self.checkpoint_dir
        if (
            folder is not None
            and folder.exists()
            and (
                not folder.is_dir()
                or not os.access(folder, os.R_OK | os.W_OK | os.X_OK)
            )
        ):
            raise ValueError(
                f"--checkpoint-dir {folder} is not a readable, writable folder"
            )
        if (
            self.max_request_bytes
            and self.max_inflight_bytes
            and self.max_request_bytes > self.max_inflight_bytes
        ):
            raise ValueError(
                f"--max-request-bytes {self.max_request_bytes} exceeds "
                f"--max-inflight-bytes {self.max_inflight_bytes}: such a request "
                "could never be received"
            )
        for name in ("token_file", "tls_cert", "tls_key", "tls_ca"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(
                    f"--{name.replace('_', '-')} {path} is not a readable file"
                )
        return self

    def service_settings(self) -> ServiceSettings:
        sync = None
        if self.replicas:
            sync = SyncSettings(
                replicas=self.replicas,
                replicas_to_aggregate=self.replicas_to_aggregate,
                average=self.sync_average,
                timeout=self.sync_timeout,
            )
        return ServiceSettings(
            shards=self.shards,
            nonfinite=self.nonfinite,
            sync=sync,
            checkpoint_dir=self.checkpoint_dir,
            keep_checkpoints=self.keep_checkpoints,
            server_index=self.server_index,
            num_servers=self.num_servers,
            durability=self.durability,
            memory_limit=self.memory_limit,
            max_inflight_bytes=self.max_inflight_bytes,
            max_request_rows=self.max_request_rows,
            cluster_split_bytes=self.cluster_split_bytes,
        )

    def request_bytes(self, inflight_limit: int) -> int:
        """The largest single request: ``--max-request-bytes``, by default
        2 GiB or the whole in-flight budget if that is smaller."""
        return self.max_request_bytes or min(limits.MAX_REQUEST_BYTES, inflight_limit)


_HELP = {
    "host": "address to listen on",
    "grpc_port": "gRPC port (0 picks a free one)",
    "http_port": "HTTP port (0 picks a free one)",
    "shards": "in-memory shards (default: one per core)",
    "checkpoint_dir": "folder of checkpoints: restored at start, written on SIGTERM",
    "checkpoint_every": "seconds between periodic checkpoints",
    "keep_checkpoints": "checkpoints kept on disk",
    "durability": "what an acknowledged push survives: 'checkpoint' (state since the "
    "last checkpoint may be lost on a crash) or 'wal' (a push is answered once it "
    "is in a write-ahead log on disk: it survives SIGKILL and power cuts)",
    "replicas": "synchronous mode: replicas pushing each step (0: asynchronous)",
    "replicas_to_aggregate": "synchronous mode: apply a step after this many "
    "replicas (the rest are backup workers)",
    "sync_average": "synchronous mode: average the replicas' gradients (default: sum)",
    "sync_timeout": "synchronous mode: seconds a replica waits for the others",
    "server_index": "this server's place in the cluster (0-based), or 'auto' to "
    "read it from the hostname (ps-3 is 3, as in a StatefulSet)",
    "num_servers": "servers in the cluster",
    "nonfinite": "NaN/Inf gradients: 'reject' or 'allow'",
    "memory_limit": "state budget: bytes of variables, slots and optimizer weights "
    "this server may hold (suffixes K, M, G, T: 8G); creating more is refused "
    f"(default: {limits.STATE_FRACTION * 100:.0f}%% of the machine's or "
    "container's memory)",
    "max_inflight_bytes": "bytes of request bodies and read copies handled at once, "
    "over both transports; more waits, then is refused as busy (default: "
    f"{limits.INFLIGHT_FRACTION * 100:.0f}%% of the memory)",
    "max_request_bytes": "largest push, assignment or created initial value, in "
    "bytes (default: 2G, or --max-inflight-bytes if smaller)",
    "max_request_rows": "most rows one gather or read may ask for",
    "grpc_workers": "threads serving gRPC calls",
    "shutdown_grace": "seconds in-flight calls get to finish at shutdown",
    "token_file": "file holding the bearer token required by mutating calls "
    "(or set ADAMAX_PS_TOKEN)",
    "auth_reads": "require the token for reads too",
    "tls_cert": "TLS certificate (PEM) for gRPC and HTTP",
    "tls_key": "TLS private key (PEM) for gRPC and HTTP",
    "tls_ca": "with --tls-cert: the CA certificate (PEM) this server trusts when "
    "a rescale has it read its peers' cuts over gRPC (default: the system's CAs)",
    "json_limit": "most numbers in one JSON value answer (larger: ask for .npy)",
    "history_interval": "seconds between history samples while the dashboard is open",
    "restore_from": "checkpoint folders of every server of an old cluster of any "
    "size (comma-separated, or one folder holding them): an empty server takes "
    "its share of their rows, slots, tables, iterations and exactly-once memory, "
    "then checkpoints (its own folder's state wins once it has one)",
    "cluster_split_bytes": "variables of this many bytes or more are split by "
    "rows over the servers: the clients' rule (64M), used to place rows when "
    "restoring from a cluster of another size",
    "transfer_port": "port peers read this server's rescale cut from, the kernel "
    "sending the file's bytes (0 picks a free one; -1: none, the cut goes over "
    "gRPC). Never under TLS: the cut goes over gRPC, encrypted",
    "transfer_port_only": "peers on this machine read this server's rescale cut "
    "over the transfer port too, as peers on other machines do (by default "
    "this server hands them the cut's files over a local socket, and they read "
    "the bytes themselves)",
    "eviction_interval": "seconds between background eviction rounds of hash-keyed "
    "tables (time to live, capacity watermark); 0: none (a full table still "
    "evicts inline, by its policy, as a push needs room)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per field; defaults come from the environment, then the model."""
    for name, field in ServerConfig.model_fields.items():
        flag = "--" + name.replace("_", "-")
        env = environment.variable(name)
        help_text = f"{_HELP[name]} [env {env}]"
        if field.annotation is bool:
            parser.add_argument(flag, action="store_true", default=None, help=help_text)
        else:
            parser.add_argument(flag, default=None, help=help_text)


def index_from_hostname(hostname: str | None = None) -> int:
    """A StatefulSet pod's ordinal: ``ps-3`` is server 3."""
    hostname = hostname or socket.gethostname()
    match = re.search(r"-(\d+)$", hostname.split(".")[0])
    if match is None:
        raise ValueError(
            f"--server-index auto needs a hostname ending in -<number> (a "
            f"StatefulSet pod such as ps-0). This host is {hostname!r}"
        )
    return int(match.group(1))


def from_arguments(args: argparse.Namespace) -> ServerConfig:
    """Flags, else environment variables, else defaults; validated."""
    values: dict[str, Any] = {}
    for name, field in ServerConfig.model_fields.items():
        value = getattr(args, name, None)
        if value is None:
            value = environment.lookup(name)
            if value is not None and field.annotation is bool:
                value = environment.truthy(value)
        if name == "server_index" and value == "auto":
            try:
                value = index_from_hostname()
            except ValueError as e:
                raise SystemExit(f"adamax-ps: {e}") from None
        if value is not None:
            values[name] = value
    try:
        return ServerConfig.model_validate(values)
    except ValidationError as e:
        raise SystemExit(f"adamax-ps: invalid settings:\n{_explain(e)}") from None


def _explain(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        name = ".".join(str(x) for x in item["loc"])
        flag = f"--{name.replace('_', '-')}" if name else "settings"
        lines.append(f"  {flag}: {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)
