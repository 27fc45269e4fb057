"""Joining tensors along an axis: an index map, no arithmetic."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from sim.ops.base import CHIP_SYNAPSE, INDEX, Node, is_int, register


@register
@dataclass
class Concat(Node):
    """Concatenation along `axis` of the per-sample shape (0 = channels). No arithmetic."""
    axis: int = 0
    kind: ClassVar[str] = "concat"
    role: ClassVar[str] = INDEX
    keeps_sign: ClassVar[bool] = True
    hardware: ClassVar[str] = CHIP_SYNAPSE
    synops: ClassVar[str | None] = ""
    arity: ClassVar[int | None] = None

    def _check(self, inputs):
        shape = tuple(self.shape)
        ranks = {len(i) for i in inputs}
        if ranks != {len(shape)} or not is_int(self.axis) or not 0 <= self.axis < len(shape):
            return f"inputs {inputs} cannot be joined along axis {self.axis} into {shape}"
        joined = list(inputs[0])
        joined[self.axis] = sum(i[self.axis] for i in inputs)
        if any(tuple(np.delete(i, self.axis)) != tuple(np.delete(shape, self.axis))
               for i in inputs) or tuple(joined) != shape:
            return f"inputs {inputs} do not join into {shape}"
        return None

    def apply(self, ins, count):
        return np.concatenate(ins, axis=self.axis + 1), 0

    def index_tables(self, in_shapes) -> list[np.ndarray]:
        """For each input, the element of that input each output element holds (−1: another
        input's), flat row-major."""
        which = np.concatenate([np.full(s, k) for k, s in enumerate(in_shapes)], self.axis)
        local = np.concatenate([np.arange(int(np.prod(s))).reshape(s) for s in in_shapes],
                               self.axis)
        which, local = which.ravel(), local.ravel()
        return [np.where(which == k, local, -1) for k in range(len(in_shapes))]

    def emit(self, b, ins):
        return b.op("Concat", ins, axis=self.axis + 1)
