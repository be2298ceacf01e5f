"""Gradients from an autodiff library the worker already has, for ``minimize``.

The client computes no gradients itself. ``torch_loss(fn, var_list)`` returns
a loss callable for ``Adamax.minimize`` / ``get_gradients``: it reads the
variables, runs ``fn`` on them as PyTorch tensors that require gradients, and
returns ``(loss_value, gradients)``. It reads whole variables: for large
embedding tables compute ``IndexedSlices`` of the rows you used instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from adamax_ps.client.variables import RemoteVariable


def torch_loss(
    fn: Callable[..., Any], var_list: Sequence[RemoteVariable]
) -> Callable[[], tuple[float, list]]:
    """A loss callable: ``fn(*tensors)`` returns a scalar torch loss."""

    def compute() -> tuple[float, list]:
        import torch

        tensors = [torch.tensor(v.numpy(), requires_grad=True) for v in var_list]
        loss = fn(*tensors)
        loss.backward()
        grads = [t.grad.numpy() if t.grad is not None else None for t in tensors]
        return float(loss.detach()), grads

    return compute
