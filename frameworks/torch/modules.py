"""``Embedding``: a ``torch.nn.Module`` whose table lives on the servers.

The worker never holds the table: a row-indexed server variable
(``num_embeddings x embedding_dim``), or a hash-keyed table (``table=``, any
int64 key). ``forward`` fetches the rows of the
batch's distinct ids (with the push its optimizer held back, else one gather
from the servers that hold them) and indexes them into place; ``backward``
keeps the gradient rows with their ids (``pending``) until
``adamax_ps.torch.Adamax.step`` pushes them as a sparse gradient, summed over
duplicate ids the way Keras sums them. The module's one parameter is a scalar
``handle``, so ``model.parameters()`` hands the table to the optimizer like
any other parameter.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np
import torch

from adamax_ps.client.cluster import Cluster, default_cluster
from adamax_ps.client.tables import RemoteTable
from adamax_ps.client.variables import RemoteVariable


class _Lookup(torch.autograd.Function):
    """Rows in the forward pass; in the backward, the rows' gradients are
    kept on the module, and the handle gets a zero (it marks the table as
    having a gradient this step)."""

    @staticmethod
    def forward(ctx: Any, handle: torch.Tensor, ids: torch.Tensor, module: Embedding):
        flat = ids.reshape(-1)
        unique, inverse = torch.unique(flat, return_inverse=True)
        rows = module.rows(unique.numpy())
        ctx.module, ctx.flat = module, flat
        return torch.from_numpy(rows)[inverse].reshape(*ids.shape, -1)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        module = ctx.module
        module.pending.append(
            (ctx.flat.numpy(), grad.reshape(-1, module.embedding_dim).numpy())
        )
        return torch.zeros((), dtype=grad.dtype), None, None


class Embedding(torch.nn.Module):
    """``torch.nn.Embedding`` with its table on the servers: a
    ``num_embeddings x embedding_dim`` float32 variable named ``name`` (by
    default ``embedding``, ``embedding_1``, ... in the order modules are made,
    the same in every worker running the same code), or a hash-keyed table
    (``table=``).

    A table of that name that exists (restored, or created from pretrained
    values) is attached to as it is when its shape matches, else a
    ``ValueError``; otherwise the servers create it with ``initializer`` (a
    Keras initializer name or config: ``"random_normal"`` with stddev 1 by
    default, as ``torch.nn.Embedding`` draws N(0, 1), drawn by numpy on the
    servers). ``weight`` is the server table (``numpy()``, ``gather``,
    ``assign``); ``state_dict()`` holds it as ``weight``.

    ``Embedding(table=t)``, or ``Embedding.from_table(t)`` (as
    ``torch.nn.Embedding.from_pretrained``), looks up ``t``, a hash-keyed
    table made by ``cluster.embedding_table(name, dim)``: ids are int64 keys
    of any value, negative ones too (no ``num_embeddings``; ``embedding_dim``
    is the table's ``dim``; ``name`` defaults to the table's), an unseen key
    reads as its initial row (the table's initializer), and
    ``adamax_ps.torch.Adamax`` pushes the keys' gradient rows. ``weight`` is
    the table (``gather(keys)``, ``assign(keys, rows)``, ``export()``);
    ``state_dict()`` holds every row it has as ``keys`` and ``weight``, and
    ``load_state_dict`` sets those rows (other keys are left as they are).
    """

    def __init__(
        self,
        num_embeddings: int | None = None,
        embedding_dim: int | None = None,
        *,
        table: RemoteTable | None = None,
        cluster: Cluster | None = None,
        name: str | None = None,
        initializer: str | dict | None = None,
    ) -> None:
        super().__init__()
        if table is not None:
            _check_table(table, num_embeddings, embedding_dim, cluster, initializer)
            num_embeddings, embedding_dim = None, table.dim
        elif num_embeddings is None or embedding_dim is None:
            raise TypeError(
                "Embedding takes num_embeddings and embedding_dim (a table of that "
                "shape), or table= (a hash-keyed table: cluster.embedding_table)"
            )
        elif int(num_embeddings) <= 0 or int(embedding_dim) <= 0:
            raise ValueError(
                "num_embeddings and embedding_dim must be positive, got "
                f"{num_embeddings} and {embedding_dim}"
            )
        if name is None:
            name = table.name if table is not None else _default_name()
        self.keyed = table is not None
        self.num_embeddings = None if num_embeddings is None else int(num_embeddings)
        self.embedding_dim = int(embedding_dim)
        self.name = name
        if table is None:
            cluster = cluster if cluster is not None else default_cluster()
            if initializer is None:
                initializer = {"class_name": "RandomNormal", "config": {"stddev": 1.0}}
            table = cluster.variable(
                name,
                shape=(self.num_embeddings, self.embedding_dim),
                dtype="float32",
                initializer=initializer,
            )
        self.table: RemoteVariable | RemoteTable = table
        self.handle = torch.nn.Parameter(torch.zeros(()))
        self.handle._adamax_ps_embedding = self  # what the optimizer pushes to
        self.pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._optimizer: weakref.ref | None = None
        self.register_state_dict_post_hook(_table_in_state_dict)
        self.register_load_state_dict_pre_hook(_table_from_state_dict)

    @classmethod
    def from_table(cls, table: RemoteTable, **kwargs: Any) -> Embedding:
        """The module looking up hash-keyed ``table``: ``Embedding(table=table)``."""
        return cls(table=table, **kwargs)

    @property
    def weight(self) -> RemoteVariable | RemoteTable:
        """The server table, once the push its optimizer held back is sent."""
        self.flush()
        return self.table

    def stepped_by(self, optimizer: Any) -> None:
        """``adamax_ps.torch.Adamax`` steps this table (and may hold a push
        back until this module's next forward)."""
        self._optimizer = weakref.ref(optimizer)

    def flush(self) -> None:
        optimizer = self._optimizer() if self._optimizer is not None else None
        if optimizer is not None:
            optimizer.flush()

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Rows (or keys) ``ids`` of the table as they are after every push of this
        worker: read with the push held back when there is one."""
        optimizer = self._optimizer() if self._optimizer is not None else None
        if optimizer is not None and optimizer.holds(self.table):
            rows = optimizer.send_with((self.table, ids))
            if rows is not None:
                return rows
        return self.table.gather(ids)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.dtype not in (torch.int32, torch.int64):
            raise TypeError(
                f"Embedding ids must be int32 or int64, got {ids.dtype} "
                "(as torch.nn.Embedding)"
            )
        rows = _Lookup.apply(self.handle, ids.detach().cpu().long(), self)
        return rows if ids.device.type == "cpu" else rows.to(ids.device)

    def take_gradient(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The ids and rows of every backward since ``zero_grad``, in order."""
        if not self.pending:
            return None
        ids = np.concatenate([i for i, _ in self.pending])
        rows = np.concatenate([r for _, r in self.pending])
        return ids, rows

    def extra_repr(self) -> str:
        if self.keyed:
            return f"table={self.table.name!r}, dim={self.embedding_dim}"
        return f"{self.num_embeddings}, {self.embedding_dim}, name={self.name!r}"


def _check_table(
    table: Any, num_embeddings: Any, embedding_dim: Any, cluster: Any, initializer: Any
) -> None:
    """``table=`` with the arguments that must agree with it."""
    if not isinstance(table, RemoteTable):
        raise TypeError(
            "table is a hash-keyed table (cluster.embedding_table). "
            f"Received: {type(table).__name__}"
        )
    if num_embeddings is not None:
        raise ValueError(
            f"table {table.name!r} is hash-keyed: any int64 key is an id, there is "
            f"no num_embeddings (got {num_embeddings})"
        )
    if embedding_dim is not None and int(embedding_dim) != table.dim:
        raise ValueError(
            f"embedding_dim {embedding_dim} is not the dim of table "
            f"{table.name!r} ({table.dim})"
        )
    if cluster is not None and cluster is not table.cluster:
        raise ValueError(f"table {table.name!r} belongs to another cluster")
    if initializer is not None:
        raise ValueError(
            f"table {table.name!r} has its own initializer "
            "(cluster.embedding_table(..., initializer=))"
        )


_names: dict[str, int] = {}


def _default_name() -> str:
    """``embedding``, ``embedding_1``, ...: the same sequence in every worker
    that builds the same model, as Keras names its layers."""
    count = _names.get("embedding", 0)
    _names["embedding"] = count + 1
    return "embedding" if count == 0 else f"embedding_{count}"


def _table_in_state_dict(module: Embedding, state: dict, prefix: str, meta: Any):
    if module.keyed:
        exported = module.weight.export()
        state[prefix + "keys"] = torch.from_numpy(exported.keys)
        state[prefix + "weight"] = torch.from_numpy(exported.values)
        return
    state[prefix + "weight"] = torch.from_numpy(module.weight.numpy())


def _table_from_state_dict(
    module: Embedding, state: dict, prefix: str, *args: Any
) -> None:
    value = state.pop(prefix + "weight", None)
    keys = state.pop(prefix + "keys", None) if module.keyed else None
    if value is None:
        return
    module.flush()
    if module.keyed:
        if keys is None:
            raise ValueError(
                f"{prefix}weight of hash-keyed table {module.table.name!r} comes "
                f"with {prefix}keys"
            )
        module.table.assign(keys.detach().cpu().numpy(), value.detach().cpu().numpy())
        return
    value = np.asarray(value.detach().cpu().numpy(), np.float32)
    if value.shape != module.table.shape:
        raise ValueError(
            f"{prefix}weight has shape {value.shape}; table {module.name!r} is "
            f"{module.table.shape}"
        )
    module.table.assign(value)
