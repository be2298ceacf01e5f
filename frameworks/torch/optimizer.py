"""``Adamax``: a ``torch.optim.Optimizer`` whose step is Keras 2's Adamax,
applied on the servers.

``step()`` pushes every gradient of the step in one call of the client's
``Adamax`` (every parameter with the same ``t``, exactly once): an
``adamax_ps.torch.Embedding``'s rows to its table, every other parameter to a
server variable of its name (``model.named_parameters()``) or of its place
(``<optimizer name>/param_<i>`` for plain ``model.parameters()``). Those dense
parameters live on the servers so that every worker trains one model: each
worker's copy takes the servers' value when the optimizer is made, and again
after every step.

The arithmetic is Keras's, not ``torch.optim.Adamax``'s: ``v = max(b2*v,
|g|)`` and ``w -= lr/(1-b1^t) * m/(v+eps)`` (torch adds ``eps`` inside the
max), ``eps`` defaults to 1e-7 (torch: 1e-8), and duplicate embedding rows are
summed before the step. One learning rate serves all parameter groups: a
group with its own, or a changed ``lr`` (an ``lr_scheduler``), is a clear
error; give ``lr`` a Keras schedule config to decay it on the servers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

from adamax_ps.client.cluster import Cluster, default_cluster
from adamax_ps.client.optimizer import Adamax as RemoteAdamax
from adamax_ps.client.variables import IndexedSlices, RemoteSlot, RemoteVariable

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
        **kwargs: Any,
    ) -> None:
        if weight_decay:
            raise ValueError(
                "weight_decay is not part of Keras's Adamax: add the penalty to "
                "the loss instead"
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
        self._dense: dict[torch.Tensor, RemoteVariable] = {}
        index = 0
        for group in self.param_groups:
            names = group.get("param_names") or [None] * len(group["params"])
            for param, param_name in zip(group["params"], names, strict=True):
                if _embedding_of(param) is None:
                    self._dense[param] = self._attach(
                        param, param_name or f"{name}/param_{index}"
                    )
                index += 1

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
        ``.grad``), then refresh every dense parameter from the servers."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
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
        params = list(self._dense)
        if gradients:
            # The dense parameters come back with the push (gRPC: one round trip).
            _, values = self.remote.apply_and_refresh(
                gradients, [self._dense[p] for p in params]
            )
        else:
            values = self._cluster.map(lambda p: self._dense[p].numpy(), params)
        for param, value in zip(params, values, strict=True):
            param.copy_(torch.from_numpy(value))
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)
        for group in self.param_groups:
            for param in group["params"]:
                embedding = _embedding_of(param)
                if embedding is not None:
                    embedding.pending.clear()

    # State --------------------------------------------------------------------------

    def _variables(self) -> list[RemoteVariable]:
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
        stepped (embedding tables' included: as large as the tables)."""
        state = super().state_dict()
        slots: dict[str, dict[str, np.ndarray]] = {}
        ours = {variable.name for variable in self._variables()}
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
