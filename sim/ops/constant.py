"""A constant tensor: the same integers for every sample (a class token, a learned query)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from sim.ops.base import HOST, SYNAPSE, VALUE_LIMIT, Node, broadcasts, check_ints, register


@register
@dataclass
class Constant(Node):
    """out = value for every sample (`value` broadcast to the shape). It reads one node only
    for the batch it belongs to (no arithmetic on it). On a core a constant is a bias, not a
    synapse: nothing to store or send."""
    value: np.ndarray = None
    kind: ClassVar[str] = "constant"
    role: ClassVar[str] = SYNAPSE
    fixed: ClassVar[bool] = True
    hardware: ClassVar[str] = HOST
    synops: ClassVar[str | None] = ""
    array_dtypes: ClassVar[dict] = {"value": np.int64}

    def _check(self, inputs):
        problem = check_ints("value", self.value, -VALUE_LIMIT, VALUE_LIMIT)
        if problem:
            return problem
        if not broadcasts(self.value, tuple(self.shape)):
            return f"value of shape {np.shape(self.value)} does not broadcast to {self.shape}"
        return None

    def magnitude(self, inputs):
        return float(np.abs(self.value).max(initial=0))

    def apply(self, ins, count):
        rows = len(ins[0])
        return np.broadcast_to(np.asarray(self.value, np.int64)[None],
                               (rows,) + tuple(self.shape)).copy(), 0

    def value_range(self, ranges):
        v = np.asarray(self.value, np.int64)
        return (int(v.min()), int(v.max())) if v.size else (0, 0)

    def emit(self, b, ins):
        b.exact(self.magnitude(b.in_bounds), self)        # a value float32 cannot hold
        # zeros of the batch's length (from the node it reads) plus the value, broadcast
        flat = b.op("Flatten", [ins[0]], axis=1)
        zero = b.op("Mul", [b.op("ReduceSum", [flat, b.const([1], np.int64)], keepdims=0),
                            b.const(0.0)])
        zero = b.op("Reshape", [zero, b.const([-1] + [1] * len(self.shape), np.int64)])
        return b.op("Add", [zero, b.const(np.asarray(self.value, np.float32)[None])])
