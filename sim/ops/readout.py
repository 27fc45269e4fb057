"""The readout: the last synapse's integer accumulator as floats."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from sim.ops.base import (HOST, SINK, VALUE_LIMIT, Node, batched, broadcasts, check_floats,
                          check_ints, register)


@register
@dataclass
class Readout(Node):
    """y = float32(A + T·bias) · float32(scale / T); then softmax/log-softmax if `softmax` says so.

    `A` is the integer accumulator of the input summed over the T timesteps. Each accumulator
    element is a compartment on a core; the float product runs on the host."""
    scale: np.ndarray = None
    bias: np.ndarray = None
    softmax: str = ""
    kind: ClassVar[str] = "readout"
    role: ClassVar[str] = SINK
    compartment: ClassVar[str | None] = "readout"
    hardware: ClassVar[str] = HOST
    synops: ClassVar[str | None] = ""
    array_dtypes: ClassVar[dict] = {"scale": np.float32, "bias": np.int64}

    def _check(self, inputs):
        (x,) = inputs
        if x != tuple(self.shape):
            return f"input {x} differs from its shape {tuple(self.shape)}"
        problem = check_floats("scale", self.scale) or \
            check_ints("bias", self.bias, -VALUE_LIMIT, VALUE_LIMIT)
        if problem:
            return problem
        if not broadcasts(self.scale, self.shape) or not broadcasts(self.bias, self.shape):
            return f"scale {self.scale.shape} or bias {self.bias.shape} does not broadcast to " \
                   f"the shape {tuple(self.shape)}"
        if self.softmax not in ("", "softmax", "logsoftmax"):
            return f"softmax {self.softmax!r} is not one of '', 'softmax', 'logsoftmax'"
        return None

    def magnitude(self, inputs):
        return inputs[0] + float(np.abs(self.bias).max(initial=0))

    def evaluate(self, ins, step) -> np.ndarray:
        return ins[0]

    def value_range(self, ranges):
        return ranges[0]

    def emit(self, b, ins):
        """Outputs `accumulator`, `logits` (the dequantized readout) and `output`: the logits
        through the final softmax when there is one, spelled as sim.semantics.softmax computes
        it (float64: z − max, log Σ exp, then exp), cast to float32."""
        b.output("accumulator", "Identity", [ins[0]])
        y = b.op("Add", [ins[0], b.const(batched(self.bias))])
        logits = b.output("logits", "Mul", [y, b.const(batched(self.scale))])
        if not self.softmax:
            return b.output("output", "Identity", [logits])
        z = b.op("Cast", [logits], to=b.DOUBLE)
        z = b.op("Sub", [z, b.op("ReduceMax", [z], axes=[-1], keepdims=1)])
        lse = b.op("Log", [b.op("ReduceSum", [b.op("Exp", [z]), b.const([-1], np.int64)],
                                keepdims=1)])
        r = b.op("Sub", [z, lse])
        if self.softmax == "softmax":
            r = b.op("Exp", [r])
        return b.output("output", "Cast", [r], to=b.FLOAT)
