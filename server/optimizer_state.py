"""OptimizerState: one named Adamax optimizer's config, counter and weight order.

Keras keeps an optimizer's ``weights`` in creation order: ``iterations`` first
(created on first read or first apply), then, per ``apply_gradients`` call,
every ``m`` of the variables new in that call, then every ``v``; slots added
with ``add_slot`` and weights with ``add_weight`` append where they are made.
The slot arrays themselves live with the variable's parts in the store.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from adamax_ps.server.hyperparams import AdamaxConfig

SLOT_NAMES = ("m", "v")


@dataclass(frozen=True)
class WeightRef:
    """One entry of ``weights``: iterations, a slot, or an extra weight."""

    kind: str  # "iterations" | "slot" | "weight"
    variable: str = ""
    name: str = ""

    def to_json(self) -> list[str]:
        return [self.kind, self.variable, self.name]

    @classmethod
    def from_json(cls, item: list[str]) -> WeightRef:
        return cls(*item)


ITERATIONS = WeightRef("iterations")


@dataclass(frozen=True)
class OptimizerSummary:
    """What an optimizer is at one moment, for answers (a copy: no lock)."""

    name: str
    config: dict[str, Any]
    iterations: int
    pushes: int
    slot_names: tuple[str, ...]
    weights: tuple[WeightRef, ...]


@dataclass
class OptimizerState:
    """Mutable state of one optimizer; guard every access with ``lock``."""

    config: AdamaxConfig
    iterations: int = 0
    iterations_created: bool = False
    hypers_created: bool = False
    weights: list[WeightRef] = field(default_factory=list)
    slot_names: list[str] = field(default_factory=lambda: list(SLOT_NAMES))
    slot_initializers: dict[str, str] = field(default_factory=dict)
    slotted: dict[str, set[str]] = field(default_factory=dict)  # local slot arrays
    ordered: set[str] = field(
        default_factory=set
    )  # variables whose m, v are in weights
    extra_weights: dict[str, np.ndarray] = field(default_factory=dict)
    pushes: int = 0
    # The coordinator's next step to hand out; above ``iterations`` while
    # steps handed out ahead are not pushed yet. In memory only.
    next_step: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def name(self) -> str:
        return self.config.name

    def summary(self) -> OptimizerSummary:
        """A copy of what it is now (call with ``lock`` held)."""
        return OptimizerSummary(
            self.name,
            self.config.get_config(hypers_created=self.hypers_created),
            self.iterations,
            self.pushes,
            tuple(self.slot_names),
            tuple(self.weights),
        )

    def take_step(self) -> int:
        """Hand out the next step (the coordinator's reservations)."""
        step = max(self.iterations, self.next_step)
        self.next_step = step + 1
        return step

    def create_iterations(self) -> None:
        """Keras creates ``iterations`` on first read or first apply."""
        if not self.iterations_created:
            self.iterations_created = True
            self.weights.insert(0, ITERATIONS)

    def without_slots(self, names: list[str]) -> list[str]:
        """Of ``names`` (maybe repeated), those missing an m or v array here."""
        return [n for n in dict.fromkeys(names) if self.missing_slots(n)]

    def missing_slots(self, variable: str) -> list[str]:
        """Of m and v, those not made here yet for ``variable`` (add_slot may
        have made one, or only slots of other names)."""
        return [s for s in SLOT_NAMES if s not in self.slotted.get(variable, ())]

    def record_call(self, variables: list[str]) -> None:
        """Append m, then v, of the call's variables new to ``weights``: Keras's
        order. In a cluster, the coordinator (server 0) keeps the order of the
        whole cluster; other servers keep their own, unused.

        Slots added with ``add_slot`` belong to one variable and are not
        created for others, as in Keras.
        """
        new = [n for n in dict.fromkeys(variables) if n not in self.ordered]
        self.ordered.update(new)
        listed = set(self.weights)  # an add_slot "m" is listed already
        for slot in SLOT_NAMES:
            for variable in new:
                if WeightRef("slot", variable, slot) not in listed:
                    self.weights.append(WeightRef("slot", variable, slot))

    def created_slots(self, variables: list[str]) -> None:
        """m and v arrays now exist here for these variables."""
        for variable in variables:
            self.slotted.setdefault(variable, set()).update(SLOT_NAMES)

    def to_json(self) -> dict[str, Any]:
        return {
            "config": self.config.get_config(),
            "iterations": self.iterations,
            "iterations_created": self.iterations_created,
            "hypers_created": self.hypers_created,
            "weights": [w.to_json() for w in self.weights],
            "slot_names": list(self.slot_names),
            "slot_initializers": dict(self.slot_initializers),
            "slotted": {k: sorted(v) for k, v in self.slotted.items()},
            "ordered": sorted(self.ordered),
            "extra_weights": sorted(self.extra_weights),
            "pushes": self.pushes,
        }

    @classmethod
    def from_json(
        cls, data: dict[str, Any], extra_weights: dict[str, np.ndarray]
    ) -> OptimizerState:
        return cls(
            config=AdamaxConfig.from_config(data["config"]),
            iterations=int(data["iterations"]),
            iterations_created=bool(data["iterations_created"]),
            hypers_created=bool(data["hypers_created"]),
            weights=[WeightRef.from_json(w) for w in data["weights"]],
            slot_names=list(data["slot_names"]),
            slot_initializers=dict(data["slot_initializers"]),
            slotted={k: set(v) for k, v in data["slotted"].items()},
            ordered=set(data["ordered"]),
            extra_weights=extra_weights,
            pushes=int(data["pushes"]),
        )
