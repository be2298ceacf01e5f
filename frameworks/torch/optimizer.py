"""``Adamax``: a ``torch.optim.Optimizer`` whose step is Keras 2's Adamax,
applied on the servers.

A step's push is one call of the client's ``Adamax`` (every parameter with
the same ``t``, exactly once): an ``adamax_ps.torch.Embedding``'s rows to its
table (``IndexedSlices`` of its keys, for a hash-keyed table), every other
parameter to a server variable of its name (``model.named_parameters()``) or
of its place (``<optimizer name>/param_<i>`` for plain ``model.parameters()``).
Those dense parameters live on the servers so that every worker trains one
model: each worker's copy takes the servers' value when the optimizer is made,
and again after every step.

When the optimizer steps an ``Embedding``, ``step()`` holds its push back
until the next forward (``pending``), which sends it with the read of the new
batch's rows: the push applied, then the rows and the dense parameters as
they are after it, in one round trip a server. The values a forward sees are
exactly those of a push sent at once. ``prefetch=1`` instead sends each push
in the background while the next batch computes, whose rows are read beside
it, not after it: rows and dense parameters at most one step stale, the
push's round trip off the step's path.

The arithmetic is Keras's, not ``torch.optim.Adamax``'s: ``v = max(b2*v,
|g|)`` and ``w -= lr/(1-b1^t) * m/(v+eps)`` (torch adds ``eps`` inside the
max), ``eps`` defaults to 1e-7 (torch: 1e-8), and duplicate embedding rows are
summed before the step. One learning rate serves all parameter groups: a
group with its own, or a changed ``lr`` (an ``lr_scheduler``), is a clear
error; give ``lr`` a Keras schedule config to decay it on the servers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from adamax_ps.client.cluster import Cluster, default_cluster
from adamax_ps.client.optimizer import Adamax as RemoteAdamax
from adamax_ps.client.tables import RemoteTable
from adamax_ps.client.transport import Read
from adamax_ps.client.variables import IndexedSlices, RemoteSlot, RemoteVariable
from adamax_ps.torch import pending

STATE_KEY = "adamax_ps"


class Adamax(torch.optim.Optimizer):
    """Keras Adamax for PyTorch training loops; see the module docstring."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: Any = 0.001,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-7,
        *,
        cluster: Cluster | None = None,
        name: str = "Adamax",
        weight_decay: float = 0.0,
        prefetch: int = 0,
        **kwargs: Any,
    ) -> None:
        if weight_decay:
            raise ValueError(
                "weight_decay is not part of Keras's Adamax: add the penalty to "
                "the loss instead"
            )
        if prefetch not in (0, 1):
            raise ValueError(
                f"prefetch is 0 (exact) or 1 (rows at most one step stale). "
                f"Received: {prefetch!r}"
            )
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps}
        super().__init__(params, defaults)
        for group in self.param_groups:
            for key, value in defaults.items():
                if group[key] != value:
                    raise ValueError(
                        f"a parameter group sets {key}={group[key]!r}: the servers "
                        f"apply one {key} per optimizer ({value!r}); use another "
                        "Adamax (another name) for these parameters"
                    )
        self._cluster = cluster if cluster is not None else default_cluster()
        self.remote = RemoteAdamax(
            lr, betas[0], betas[1], eps, name, cluster=self._cluster, **kwargs
        )
        self._lr = lr
        self.prefetch = prefetch
        self._dense: dict[torch.Tensor, RemoteVariable] = {}
        self._embeddings: list[Any] = []
        index = 0
        for group in self.param_groups:
            names = group.get("param_names") or [None] * len(group["params"])
            for param, param_name in zip(group["params"], names, strict=True):
                embedding = _embedding_of(param)
                if embedding is None:
                    self._dense[param] = self._attach(
                        param, param_name or f"{name}/param_{index}"
                    )
                else:
                    self._embeddings.append(embedding)
                    embedding.stepped_by(self)
                index += 1
        self._dense_ids = {id(p) for p in self._dense}
        self._held: list[tuple[Any, RemoteVariable]] | None = None
        self._in_flight: Future | None = None
        self._background = (
            ThreadPoolExecutor(1, thread_name_prefix="adamax-ps-push")
            if prefetch
            else None
        )
        self._cluster.before_close(self.flush)

    def _attach(self, param: torch.Tensor, name: str) -> RemoteVariable:
        remote = self._cluster.variable(
            name, initial_value=param.detach().cpu().numpy()
        )
        with torch.no_grad():
            param.copy_(torch.from_numpy(remote.numpy()))
        return remote

    # One step -----------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Push this step's gradients (embeddings' pending rows, parameters'
        ``.grad``): held back until the next forward, or sent in the
        background (``prefetch=1``), or, with no embedding, at once; the dense
        parameters take the servers' values after it (see the module
        docstring)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        gradients = self._gradients()
        self.flush()  # a push still held back, or in flight, goes first
        if not gradients:
            params = list(self._dense)
            values = self._cluster.map(lambda p: self._dense[p].numpy(), params)
            self._set_dense(values)
        elif self._background is not None:
            self._in_flight = self._background.submit(self._push, gradients, [])
        elif self._embeddings:
            self._held = gradients
            pending.hold(self)
        else:
            self._set_dense(self._push(gradients, [])[1])
        return loss

    def _gradients(self) -> list[tuple[Any, RemoteVariable]]:
        gradients: list[tuple[Any, RemoteVariable]] = []
        for group in self.param_groups:
            if group["lr"] != self._lr:
                raise ValueError(
                    f"lr changed to {group['lr']!r} (from {self._lr!r}): the servers "
                    "apply the learning rate set when the optimizer was made; "
                    "decay it with a Keras schedule, e.g. lr={'class_name': "
                    "'ExponentialDecay', 'config': {...}}"
                )
            for param in group["params"]:
                embedding = _embedding_of(param)
                if embedding is not None:
                    taken = embedding.take_gradient()
                    if taken is not None:
                        gradients.append(
                            (IndexedSlices(taken[1], taken[0]), embedding.table)
                        )
                elif param.grad is not None:
                    gradients.append((_numpy_gradient(param.grad), self._dense[param]))
        return gradients

    def _push(
        self, gradients: list[tuple[Any, RemoteVariable]], reads: list[Read]
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """The push, then ``reads`` and the dense parameters' values after it:
        (the reads' values, the dense values)."""
        params = list(self._dense)
        dense = [Read(self._dense[p].name) for p in params]
        _, values = self.remote.apply_and_read(gradients, reads + dense)
        return values[: len(reads)], values[len(reads) :]

    def _set_dense(self, values: list[np.ndarray]) -> None:
        with torch.no_grad():
            for param, value in zip(self._dense, values, strict=True):
                param.copy_(torch.from_numpy(value))

    # Held-back pushes ---------------------------------------------------------------

    def flush(self) -> None:
        """Send the push held back (or wait for the one in flight) and give
        the dense parameters the servers' values after it. Called for you
        before anything reads them (see ``pending``); call it yourself before
        reading the servers' state from elsewhere mid-training."""
        self.send_with(None)

    def send_with(
        self, rows: tuple[RemoteVariable | RemoteTable, np.ndarray] | None
    ) -> Any:
        """``flush``; with ``rows`` (a table, ids), their values after the
        held push, read with it (None when no push is held back: read them
        yourself)."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None:
            self._set_dense(in_flight.result()[1])
        held, self._held = self._held, None
        if held is None:
            return None
        pending.release(self)
        reads = [] if rows is None else [Read(rows[0].name, rows[1])]
        values, dense = self._push(held, reads)
        self._set_dense(dense)
        return values[0] if reads else None

    def holds(self, table: RemoteVariable | RemoteTable) -> bool:
        """Whether a held-back push may change ``table``."""
        return self._held is not None and any(v is table for _, v in self._held)

    def uses_directly(self, module: torch.nn.Module) -> bool:
        """Whether ``module``'s own parameters include a dense one of this
        optimizer (its forward must see them after the held push)."""
        return self._held is not None and any(
            id(p) in self._dense_ids for p in module.parameters(recurse=False)
        )

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)
        for group in self.param_groups:
            for param in group["params"]:
                embedding = _embedding_of(param)
                if embedding is not None:
                    embedding.pending.clear()

    # State --------------------------------------------------------------------------

    def _variables(self) -> list[RemoteVariable | RemoteTable]:
        tables = [
            _embedding_of(p).table
            for g in self.param_groups
            for p in g["params"]
            if _embedding_of(p) is not None
        ]
        return tables + list(self._dense.values())

    def state_dict(self) -> dict[str, Any]:
        """torch's ``state_dict`` plus the servers' state of this optimizer:
        ``iterations`` and the ``m``/``v`` slots of every variable it has
        stepped (embedding tables' included: as large as the tables). A
        hash-keyed table's slots stay on the servers (their checkpoints and
        write-ahead log keep them); ``gather_slot(keys, ...)`` reads them."""
        self.flush()
        state = super().state_dict()
        slots: dict[str, dict[str, np.ndarray]] = {}
        ours = {
            variable.name
            for variable in self._variables()
            if not isinstance(variable, RemoteTable)
        }
        for weight in self.remote.weights:  # the optimizer's slots, listed once
            if isinstance(weight, RemoteSlot) and weight.variable.name in ours:
                slots.setdefault(weight.variable.name, {})[weight.slot] = weight.numpy()
        state[STATE_KEY] = {
            "iterations": int(self.remote.iterations.numpy()),
            "slots": slots,
        }
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore ``state_dict()``'s parameter groups and the servers' state."""
        self.flush()
        state_dict = dict(state_dict)
        ours = state_dict.pop(STATE_KEY, None)
        super().load_state_dict(state_dict)
        if ours is None:
            return
        known = {v.name: v for v in self._variables()}
        unknown = sorted(set(ours["slots"]) - set(known))
        if unknown:
            raise ValueError(f"the state holds slots of unknown variables {unknown}")
        for name, slots in ours["slots"].items():
            for slot, value in slots.items():
                self.remote.add_slot(known[name], slot).assign(value)
        self.remote.iterations.assign(ours["iterations"])

    def __repr__(self) -> str:
        return f"<adamax_ps.torch.Adamax {self.remote.name!r}>"


def _embedding_of(param: torch.Tensor) -> Any:
    return getattr(param, "_adamax_ps_embedding", None)


def _numpy_gradient(grad: torch.Tensor) -> Any:
    if grad.is_sparse:
        grad = grad.coalesce()
        return IndexedSlices(
            grad.values().cpu().numpy(), grad.indices()[0].cpu().numpy()
        )
    return grad.detach().cpu().numpy()
