"""The input encoder: float samples in, integer payloads out."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from sim import semantics
from sim.ops.base import HOST, SOURCE, Node, is_int, register


@register
@dataclass
class Input(Node):
    """Input encoder: n = clip(floor(x · inv_scale + 1/2), lo, hi), float32 arithmetic; every
    element the clip changes is counted (`LayerStats.clipped`)."""
    inv_scale: float = 1.0
    lo: int = 0
    hi: int = 255
    kind: ClassVar[str] = "input"
    role: ClassVar[str] = SOURCE
    hardware: ClassVar[str] = HOST
    arity: ClassVar[int | None] = 0

    def _check(self, inputs):
        if not (is_int(self.lo) and is_int(self.hi) and self.lo <= self.hi):
            return f"levels [{self.lo!r}, {self.hi!r}]"
        if not isinstance(self.inv_scale, (int, float)) or not np.isfinite(self.inv_scale) \
                or self.inv_scale <= 0:
            return f"inv_scale {self.inv_scale!r} is not a finite number > 0"
        return None

    def evaluate(self, ins, step) -> np.ndarray:
        n, clipped = semantics.encode_input_counted(step.x, self.inv_scale, self.lo, self.hi)
        step.stats[self.name].clipped += clipped
        return n

    def value_range(self, ranges):
        return self.lo, self.hi

    def emit(self, b, ins):
        x = b.op("Mul", [b.model_input, b.const(np.float32(self.inv_scale))])
        x = b.op("Floor", [b.op("Add", [x, b.const(0.5)])])
        return b.op("Clip", [x, b.const(self.lo), b.const(self.hi)])
