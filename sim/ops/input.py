"""The input encoder: float samples in, integer payloads out."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from sim import semantics
from sim.ops.base import HOST, PAYLOAD_MAX, PAYLOAD_MIN, SOURCE, Node, int_in, register


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
    synops: ClassVar[str | None] = ""
    arity: ClassVar[int | None] = 0

    def _check(self, inputs):
        if not (int_in(self.lo, PAYLOAD_MIN, PAYLOAD_MAX) and
                int_in(self.hi, PAYLOAD_MIN, PAYLOAD_MAX) and self.lo <= self.hi):
            return f"levels [{self.lo!r}, {self.hi!r}] are not integers lo ≤ hi within 24 bits"
        scale = self.inv_scale
        ok = isinstance(scale, (int, float)) and not isinstance(scale, bool)
        if ok:
            with np.errstate(over="ignore"):
                ok = 0 < np.float32(scale) < np.inf
        if not ok:
            return f"inv_scale {scale!r} is not a number > 0 that is finite as float32"
        return None

    def magnitude(self, inputs):
        return float(max(abs(self.lo), abs(self.hi)))

    def evaluate(self, ins, step) -> np.ndarray:
        n, clipped = semantics.encode_input_counted(step.x, self.inv_scale, self.lo, self.hi)
        step.stats[self.name].clipped += clipped
        return n

    def value_range(self, ranges):
        return self.lo, self.hi

    def emit(self, b, ins):
        return self.clipped(b, self.encoded(b))

    def encoded(self, b) -> str:
        """floor(x·inv_scale + 1/2) in float32, before the clip to the levels."""
        x = b.op("Mul", [b.model_input, b.const(np.float32(self.inv_scale))])
        return b.op("Floor", [b.op("Add", [x, b.const(0.5)])])

    def clipped(self, b, z: str) -> str:
        return b.op("Clip", [z, b.const(self.lo), b.const(self.hi)])
