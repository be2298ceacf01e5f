"""The optimizer calls of ``Cluster`` (a mixin): create or attach on every
server, the coordinator's counter and weights, slots where variables live."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from adamax_ps.client.calls import COORDINATOR
from adamax_ps.client.placement import Placement
from adamax_ps.client.relayout import follows_rescale
from adamax_ps.client.transport import OptimizerInfo, Transport, View


class OptimizerCalls:
    """Optimizers across the servers."""

    transports: list[Transport]
    size: int
    map: Callable[..., list]
    view: Callable[[int], View]
    placement: Callable[[str], Placement]

    @follows_rescale
    def create_optimizer(self, config: dict[str, Any]) -> OptimizerInfo:
        """Create (or attach to) the optimizer on every server."""
        infos = self.map(
            lambda i: self.transports[i].create_optimizer(self.view(i), config),
            range(self.size),
        )
        return infos[COORDINATOR]

    @follows_rescale
    def optimizer(self, name: str, create_iterations: bool = False) -> OptimizerInfo:
        """The optimizer as the coordinator knows it (global iterations, weights)."""
        return self.transports[COORDINATOR].get_optimizer(name, create_iterations)

    @follows_rescale
    def set_iterations(self, optimizer: str, iterations: int) -> None:
        self.map(
            lambda i: self.transports[i].set_iterations(
                self.view(i), optimizer, iterations
            ),
            range(self.size),
        )

    @follows_rescale
    def add_slot(
        self, optimizer: str, variable: str, slot: str, initializer: str
    ) -> None:
        """Slot arrays on the servers holding the variable; order at the coordinator."""
        servers = set(self.placement(variable).servers()) | {COORDINATOR}
        self.map(
            lambda i: self.transports[i].add_slot(
                self.view(i), optimizer, variable, slot, initializer
            ),
            sorted(servers),
        )

    @follows_rescale
    def add_weight(
        self,
        optimizer: str,
        name: str,
        shape: tuple[int, ...],
        dtype: np.dtype,
        initializer: str,
    ) -> np.ndarray:
        return self.transports[COORDINATOR].add_weight(
            self.view(COORDINATOR), optimizer, name, shape, dtype, initializer
        )

    @follows_rescale
    def read_weight(self, optimizer: str, name: str) -> np.ndarray:
        return self.transports[COORDINATOR].read(optimizer=optimizer, weight=name)

    @follows_rescale
    def assign_weight(self, optimizer: str, name: str, value: np.ndarray) -> None:
        self.transports[COORDINATOR].assign(
            self.view(COORDINATOR), np.asarray(value), optimizer=optimizer, weight=name
        )
