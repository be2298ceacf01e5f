"""The optimizer methods of ``ParameterService`` (a mixin over its
``_optimizers``): Keras's optimizer API on one server, its changes gated."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from adamax_ps.server.gate import ChangeGate, gated, gated_unless
from adamax_ps.server.hyperparams import AdamaxConfig
from adamax_ps.server.optimizer_state import (
    OptimizerState,
    OptimizerSummary,
    WeightRef,
)
from adamax_ps.server.optimizers import Optimizers

DEFAULT_NAME = AdamaxConfig.model_fields["name"].default  # Keras's: "Adamax"


class OptimizerMethods:
    """Optimizers: create, counters, slots, weights."""

    _optimizers: Optimizers
    gate: ChangeGate
    pull: Any

    @gated_unless(lambda self, config: self._has_optimizer(config))
    def create_optimizer(
        self, config: AdamaxConfig | Mapping[str, Any]
    ) -> tuple[OptimizerState, bool]:
        """Create the optimizer, or attach to one of that name with the same config."""
        return self._optimizers.create(config)

    def optimizer(self, name: str) -> OptimizerState:
        return self._optimizers.get(name)

    def optimizers(self) -> list[OptimizerState]:
        return self._optimizers.all()

    def describe_optimizer(self, name: str) -> OptimizerSummary:
        """What an optimizer is now: config, counter, weights (a copy)."""
        return self._optimizers.summary(name)

    def get_config(self, optimizer: str) -> dict[str, Any]:
        return self._optimizers.get_config(optimizer)

    @gated_unless(lambda self, optimizer: self._counts(optimizer))
    def iterations(self, optimizer: str) -> int:
        """The optimizer's counter (reading it creates it, as in Keras)."""
        return self._optimizers.iterations(optimizer)

    @gated
    def set_iterations(self, optimizer: str, iterations: int) -> None:
        """Set the counter (``set_weights`` on every server of a cluster)."""
        self._optimizers.set_iterations(optimizer, iterations)

    def slot_names(self, optimizer: str) -> list[str]:
        return self._optimizers.slot_names(optimizer)

    def weight_refs(self, optimizer: str) -> list[WeightRef]:
        return self._optimizers.weight_refs(optimizer)

    def get_weights(self, optimizer: str) -> list[np.ndarray]:
        """Keras ``get_weights()``: iterations, then slots in creation order."""
        return self._optimizers.get_weights(optimizer)

    @gated
    def set_weights(self, optimizer: str, weights: Sequence[Any]) -> None:
        """Keras ``set_weights()``: checks length, then shapes, then assigns all."""
        self._optimizers.set_weights(optimizer, weights)

    def get_slot(self, optimizer: str, variable: str, slot: str) -> np.ndarray:
        return self.pull(variable, optimizer=optimizer, slot=slot)

    @gated
    def add_slot(
        self, optimizer: str, variable: str, slot: str, initializer: str = "zeros"
    ) -> bool:
        """Keras ``add_slot``; see ``Optimizers.add_slot``."""
        return self._optimizers.add_slot(optimizer, variable, slot, initializer)

    @gated
    def add_weight(
        self,
        optimizer: str,
        name: str,
        shape: Sequence[int] = (),
        dtype: Any = "float32",
        initializer: str = "zeros",
    ) -> np.ndarray:
        """Keras ``add_weight`` on an optimizer: an extra weight in ``weights``."""
        return self._optimizers.add_weight(optimizer, name, shape, dtype, initializer)

    def weight(self, optimizer: str, name: str) -> np.ndarray:
        """A copy of an optimizer's extra weight (``add_weight``)."""
        return self._optimizers.weight(optimizer, name)

    @gated
    def assign_weight(self, optimizer: str, name: str, value: Any) -> None:
        self._optimizers.assign_weight(optimizer, name, value)

    def _has_optimizer(self, config: AdamaxConfig | Mapping[str, Any]) -> bool:
        name = config.name if isinstance(config, AdamaxConfig) else config.get("name")
        return self._optimizers.find(name or DEFAULT_NAME) is not None

    def _counts(self, optimizer: str) -> bool:
        """The optimizer exists with its counter (reading it changes nothing)."""
        state = self._optimizers.find(optimizer)
        return state is not None and state.iterations_created
