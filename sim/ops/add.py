"""Several currents summed into one neuron's input, each with integer per-channel gains."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from sim.ops.base import (CHIP_SYNAPSE, GAIN_LIMIT, SYNAPSE, Node, batched, broadcasts,
                          check_ints, is_int, register)


@register
@dataclass
class Add(Node):
    """I = Σ_i gains[i] · x_i · 2^exps[i]  (integer gains broadcast per channel).

    SynOps: every nonzero input (one synapse each). On a core it costs nothing by itself: the
    connections of its inputs sum into the same compartments (dendritic accumulation)."""
    gains: np.ndarray = None
    exps: tuple[int, ...] = ()
    kind: ClassVar[str] = "add"
    role: ClassVar[str] = SYNAPSE
    sums_inputs: ClassVar[bool] = True
    hardware: ClassVar[str] = CHIP_SYNAPSE
    array_dtypes: ClassVar[dict] = {"gains": np.int64}
    arity: ClassVar[int | None] = None

    def _check(self, inputs):
        shape = tuple(self.shape)
        if any(i != shape for i in inputs):
            return f"inputs {inputs} must all have the output shape {shape}"
        problem = check_ints("gains", self.gains, -GAIN_LIMIT, GAIN_LIMIT)
        if problem:
            return problem
        if not isinstance(self.exps, tuple):
            return f"exps {self.exps!r} is not a list of exponents"
        if np.shape(self.gains)[0:1] != (len(inputs),) or len(self.exps) != len(inputs) or \
                not all(is_int(e) and 0 <= e < 32 for e in self.exps) or \
                not all(broadcasts(g, shape) for g in self.gains):
            return "gains/exps do not match the inputs"
        return None

    def apply(self, ins, count):
        total, synops = 0, 0
        for gain, x, exp in zip(self.gains, ins, self.exps):
            total = total + ((batched(gain) * x) << exp)
            synops += int(np.count_nonzero(x)) if count else 0
        return total, synops

    def value_range(self, ranges):
        lo = hi = 0
        for k, (a, b) in enumerate(ranges):
            gain = np.asarray(self.gains[k], dtype=np.int64) * 2 ** self.exps[k]
            lo += int(np.minimum(gain * a, gain * b).min())
            hi += int(np.maximum(gain * a, gain * b).max())
        return lo, hi

    def magnitude(self, inputs):
        return sum(float(np.abs(g.astype(np.float64)).max(initial=0.0)) * 2.0 ** float(e) * m
                   for g, e, m in zip(self.gains, self.exps, inputs))

    def mantissas(self):
        return self.gains

    def emit(self, b, ins):
        terms = [b.op("Mul", [x, b.const(batched(self.gains[i] * 2.0 ** self.exps[i]))])
                 for i, x in enumerate(ins)]
        out = terms[0]
        for t in terms[1:]:
            out = b.op("Add", [out, t])
        return out
