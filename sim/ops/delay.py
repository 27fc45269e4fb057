"""The recurrent edge: last step's value of a node."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from sim.ops.base import CHIP_SYNAPSE, EDGE, Node, register


@register
@dataclass
class Delay(Node):
    """out(t) = value of node `source` at step t − 1 (zeros at t = 0): the recurrent edge.

    `source` is not in `inputs`, so the node list stays topologically ordered; it may name a node
    defined later. A connection on a core (Lava's Dense already delivers one step late)."""
    source: str = ""
    kind: ClassVar[str] = "delay"
    role: ClassVar[str] = EDGE
    hardware: ClassVar[str] = CHIP_SYNAPSE
    synops: ClassVar[str | None] = ""
    arity: ClassVar[int | None] = 0

    def _check(self, inputs):
        if not isinstance(self.source, str) or not self.source:
            return f"source {self.source!r} is not a node name"
        return None

    def evaluate(self, ins, step) -> np.ndarray:
        prev = step.previous.get(self.source)
        return np.zeros((len(step.x),) + tuple(self.shape), np.int64) if prev is None else prev

    def index_tables(self, in_shapes) -> list[np.ndarray | None]:
        return [None]
