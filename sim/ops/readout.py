"""The readout: the last synapse's integer accumulator as floats."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from sim.ops.base import HOST, SINK, Node, batched, broadcasts, register


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
    array_dtypes: ClassVar[dict] = {"scale": np.float32, "bias": np.int64}

    def _check(self, inputs):
        (x,) = inputs
        if x != tuple(self.shape) or not broadcasts(self.scale, self.shape) or \
                not broadcasts(self.bias, self.shape) or \
                self.softmax not in ("", "softmax", "logsoftmax"):
            return "scale/bias/softmax do not fit the input"
        if not np.all(np.isfinite(np.asarray(self.scale, np.float64))):
            return "scale has NaN or infinite entries"
        return None

    def evaluate(self, ins, step) -> np.ndarray:
        return ins[0]

    def value_range(self, ranges):
        return ranges[0]

    def emit(self, b, ins):
        b.output("accumulator", "Identity", [ins[0]])
        y = b.op("Add", [ins[0], b.const(batched(self.bias))])
        return b.output("output", "Mul", [y, b.const(batched(self.scale))])
