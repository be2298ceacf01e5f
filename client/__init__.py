"""adamax-ps client: a Keras-compatible Adamax whose state lives on servers.

from adamax_ps.client import Adamax, IndexedSlices, connect

cluster = connect("grpc://ps-0:50051,grpc://ps-1:50051")
emb = cluster.variable("emb", shape=(1_000_000, 64), initializer="glorot_uniform")
opt = Adamax(learning_rate=1e-3, cluster=cluster)
opt.apply_gradients([(IndexedSlices(rows_grad, row_ids, emb.shape), emb)])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from adamax_ps.client.cluster import Cluster
from adamax_ps.client.discovery import (
    addresses_from_environment,
    token_from_environment,
    wire_from_environment,
)
from adamax_ps.client.errors import (
    ClusterViewError,
    InvalidArgumentError,
    ParameterServerError,
    StalePushError,
    SyncTimeoutError,
    TransportError,
)
from adamax_ps.client.optimizer import Adamax
from adamax_ps.client.retry import RetryPolicy
from adamax_ps.client.tables import RemoteTable, TableExport
from adamax_ps.client.variables import IndexedSlices, RemoteSlot, RemoteVariable


def connect(
    addresses: str | Sequence[str] | None = None,
    *,
    token: str | None = None,
    tls: Any = None,
    timeout: float | None = None,
    retry: RetryPolicy | None = None,
    replica: int | None = None,
    wire_dtype: str | None = None,
) -> Cluster:
    """Connect to a cluster: ``"grpc://a:50051,grpc://b:50051"`` or a list.

    With no addresses, the environment names them: ``ADAMAX_PS_ADDRESS``, else
    the ``ps`` tasks of ``TF_CONFIG`` (``ValueError`` when neither does).
    With no token, ``ADAMAX_PS_TOKEN``'s, if set.

    Checks that server ``i`` of the list is server ``i`` of a cluster of that
    size (``ClusterViewError`` otherwise). ``timeout`` bounds each call in
    seconds; unreachable servers are retried per ``retry`` before a
    ``TransportError``. ``replica`` is the worker's replica id in
    synchronous training (default: its rank, from ``RANK`` or ``TF_CONFIG``;
    else its client id): a step's pushes are summed in rank order.
    ``wire_dtype`` ("float16" or "bfloat16"; default ``ADAMAX_PS_WIRE_DTYPE``,
    else float32) sends float32 variables' gradients and gathered rows in
    reduced precision over gRPC; the servers keep and update float32.
    """
    if addresses is None:
        addresses = addresses_from_environment()
    if token is None:
        token = token_from_environment()
    return Cluster(
        addresses,
        token=token,
        tls=tls,
        timeout=timeout,
        retry=retry,
        replica=replica,
        wire_dtype=wire_dtype if wire_dtype is not None else wire_from_environment(),
    )


__all__ = [
    "Adamax",
    "Cluster",
    "ClusterViewError",
    "IndexedSlices",
    "InvalidArgumentError",
    "ParameterServerError",
    "RemoteSlot",
    "RemoteTable",
    "RemoteVariable",
    "RetryPolicy",
    "StalePushError",
    "SyncTimeoutError",
    "TableExport",
    "TransportError",
    "connect",
]
