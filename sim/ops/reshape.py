"""Row-major reshapes (Flatten, Reshape, Squeeze, Unsqueeze): an index map."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from sim.ops.base import CHIP_SYNAPSE, INDEX, Node, register


@register
@dataclass
class Reshape(Node):
    """Row-major reshape to `shape` (Flatten, Reshape, Squeeze, Unsqueeze). No arithmetic."""
    kind: ClassVar[str] = "reshape"
    role: ClassVar[str] = INDEX
    keeps_sign: ClassVar[bool] = True
    hardware: ClassVar[str] = CHIP_SYNAPSE
    synops: ClassVar[str | None] = ""

    def _check(self, inputs):
        (x,) = inputs
        if int(np.prod(x)) != int(np.prod(self.shape)):
            return f"cannot reshape {x} to {tuple(self.shape)}"
        return None

    def apply(self, ins, count):
        return ins[0].reshape((len(ins[0]),) + tuple(self.shape)), 0

    def index_tables(self, in_shapes) -> list[np.ndarray | None]:
        return [None]      # row-major: output element i is input element i

    def emit(self, b, ins):
        return b.op("Reshape", [ins[0], b.const([-1] + list(self.shape), np.int64)])
