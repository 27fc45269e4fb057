"""Several currents summed into one neuron's input, each with integer per-channel gains."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from sim import semantics
from sim.ops.base import (CHIP_SYNAPSE, GAIN_LIMIT, SYNAPSE, Node, batched, broadcasts,
                          check_ints, is_int, register, shifted_magnitude)


@register
@dataclass
class Add(Node):
    """I = Σ_i shift(gains[i] · x_i, exps[i])  (integer gains broadcast per channel; shift as in
    Dense: a negative exponent floors each term / 2^−e, a right-shift gain).

    SynOps: every nonzero input (one synapse each). On a core it costs nothing by itself: the
    connections of its inputs sum into the same compartments (dendritic accumulation)."""
    gains: np.ndarray = None
    exps: tuple[int, ...] = ()
    kind: ClassVar[str] = "add"
    role: ClassVar[str] = SYNAPSE
    sums_inputs: ClassVar[bool] = True
    hardware: ClassVar[str] = CHIP_SYNAPSE
    synops: ClassVar[str | None] = "inputs"
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
                not all(is_int(e) and semantics.MIN_EXP <= e <= semantics.MAX_EXP
                        for e in self.exps) or \
                not all(broadcasts(g, shape) for g in self.gains):
            return "gains/exps do not match the inputs"
        return None

    def apply(self, ins, count):
        total, synops = 0, 0
        for gain, x, exp in zip(self.gains, ins, self.exps):
            total = total + semantics.shift(batched(gain) * x, exp)
            synops += int(np.count_nonzero(x)) if count else 0
        return total, synops

    def value_range(self, ranges):
        lo = hi = 0
        for k, (a, b) in enumerate(ranges):
            gain = np.asarray(self.gains[k], dtype=np.int64)
            lo += int(semantics.shift(np.minimum(gain * a, gain * b).min(), self.exps[k]))
            hi += int(semantics.shift(np.maximum(gain * a, gain * b).max(), self.exps[k]))
        return lo, hi

    def magnitude(self, inputs):
        return sum(shifted_magnitude(float(np.abs(g.astype(np.float64)).max(initial=0.0)) * m, e)
                   for g, e, m in zip(self.gains, self.exps, inputs))

    def mantissas(self):
        return self.gains

    def emit(self, b, ins):
        """Each term shift(g·x, e) in float32 while |g|·max|x| < 2²⁴, else in float64 and cast
        back; the sum in float32."""
        terms = []
        for i, x in enumerate(ins):
            gain, exp = batched(self.gains[i]), self.exps[i]
            if float(np.abs(gain).max(initial=0)) * b.in_bounds[i] < b.FLOAT_EXACT:
                terms.append(b.floor_below_one(b.op("Mul", [x, b.const(gain * 2.0 ** exp)]),
                                               exp))
            else:
                terms.append(b.wide(x, gain, exp))
        out = terms[0]
        for t in terms[1:]:
            out = b.op("Add", [out, t])
        return out
