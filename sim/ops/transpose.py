"""Axis permutations: an index map."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from sim.ops.base import CHIP_SYNAPSE, INDEX, Node, is_int, register


@register
@dataclass
class Transpose(Node):
    """Axis permutation `perm` of the per-sample shape. No arithmetic."""
    perm: tuple[int, ...] = ()
    kind: ClassVar[str] = "transpose"
    role: ClassVar[str] = INDEX
    keeps_sign: ClassVar[bool] = True
    hardware: ClassVar[str] = CHIP_SYNAPSE
    synops: ClassVar[str | None] = ""

    def _check(self, inputs):
        (x,) = inputs
        if not isinstance(self.perm, tuple) or not all(is_int(p) for p in self.perm) or \
                sorted(self.perm) != list(range(len(x))) or \
                tuple(x[p] for p in self.perm) != tuple(self.shape):
            return f"perm {self.perm} does not map {x} to {tuple(self.shape)}"
        return None

    def apply(self, ins, count):
        return ins[0].transpose((0,) + tuple(p + 1 for p in self.perm)), 0

    def index_tables(self, in_shapes) -> list[np.ndarray]:
        (src,) = in_shapes
        return [np.arange(int(np.prod(src))).reshape(src).transpose(self.perm).ravel()]

    def emit(self, b, ins):
        return b.op("Transpose", [ins[0]], perm=[0] + [p + 1 for p in self.perm])
