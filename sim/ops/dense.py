"""Dense synapses: an integer weight matrix with a power-of-two exponent."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from sim import kernels, semantics
from sim.ops.base import (CHIP_SYNAPSE, SYNAPSE, WEIGHT_MAX, WEIGHT_MIN, Node, check_ints,
                          is_int, register, weighted_magnitude)


@register
@dataclass
class Dense(Node):
    """I[o] = shift(Σ_i W[o, i] · n[i], weight_exp);  W int (8-bit mantissa), shift(a, e) = a·2^e,
    or floor(a / 2^−e) for a negative exponent (sim.semantics.shift: the accumulator is
    right-shifted, as Lava's Dense does).

    SynOps: every nonzero input times the F_out synapses it reaches."""
    weight: np.ndarray = None
    weight_exp: int = 0
    kind: ClassVar[str] = "dense"
    role: ClassVar[str] = SYNAPSE
    connectivity: ClassVar[str | None] = "full"
    new_current: ClassVar[bool] = True
    hardware: ClassVar[str] = CHIP_SYNAPSE
    synops: ClassVar[str | None] = "outputs"
    array_dtypes: ClassVar[dict] = {"weight": np.int16}

    def _check(self, inputs):
        (x,), w, shape = inputs, self.weight, tuple(self.shape)
        problem = check_ints("weight", w, WEIGHT_MIN, WEIGHT_MAX)
        if problem:
            return problem
        if np.ndim(w) != 2 or len(x) != 1 or w.shape != (shape[0], x[0]) or len(shape) != 1:
            return f"weight {np.shape(w)} does not map input {x} to {shape}"
        return _check_exp(self.weight_exp)
        return None

    def apply(self, ins, count):
        (x,) = ins
        absum = np.abs(self.weight.astype(np.int64)).sum(axis=1).max(initial=0)
        dtype = kernels.exact_float_dtype(float(absum) * float(np.abs(x).max(initial=0)))
        out = semantics.shift(kernels.dense(x, self.weight, dtype), self.weight_exp)
        return out, (int(np.count_nonzero(x)) * self.weight.shape[0] if count else 0)

    def value_range(self, ranges):
        return _weighted_range(self.weight.reshape(self.weight.shape[0], -1), self.weight_exp,
                               ranges[0])

    def magnitude(self, inputs):
        return weighted_magnitude(self.weight, self.weight_exp, (1,), inputs[0])

    def macs(self) -> int:
        return int(self.weight.size)

    def mantissas(self):
        return self.weight

    def emit(self, b, ins):
        """In float32 while Σ|W|·max|n| < 2²⁴; beyond, the product in float64 and its shifted
        result cast back (sim.emit's module docstring: a result beyond 2²⁴ rounds)."""
        if _accumulator(self.weight, (1,), b) < b.FLOAT_EXACT:
            return b.shift(b.op("MatMul", [ins[0], b.const(self.weight.T)]), self.weight_exp)
        x = b.op("Cast", [ins[0]], to=b.DOUBLE)
        out = b.shift(b.op("MatMul", [x, b.const(self.weight.T, np.float64)]), self.weight_exp,
                      np.float64)
        return b.op("Cast", [out], to=b.FLOAT)


def _weighted_range(w: np.ndarray, exp: int, rng: tuple[int, int]) -> tuple[int, int]:
    """[lo, hi] of shift(Σ_i w[o, i]·x_i, exp) over x_i ∈ [a, b] ∪ {0} (zero padding), over
    every o (shift is monotone, so it maps the accumulator's range)."""
    a, b = min(rng[0], 0), max(rng[1], 0)
    w = w.astype(np.int64)
    w_pos, w_neg = np.clip(w, 0, None).sum(1), np.clip(w, None, 0).sum(1)
    lo, hi = int((w_pos * a + w_neg * b).min()), int((w_pos * b + w_neg * a).max())
    return int(semantics.shift(np.int64(lo), exp)), int(semantics.shift(np.int64(hi), exp))


def weight_sum(weight: np.ndarray, axes: tuple, nonneg: bool = False) -> float:
    """The largest Σ|W| over output units (summing `axes`): with the input's bound, a bound on
    every partial sum of Σ W·n. For an input known to be non-negative every partial sum, in any
    order, lies between −Σ|W⁻|·max n and ΣW⁺·max n: `nonneg` gives the larger one-sided sum."""
    w = np.asarray(weight, dtype=np.int64)
    if not w.size:
        return 0.0
    rows = np.maximum(np.clip(w, 0, None).sum(axis=axes), -np.clip(w, None, 0).sum(axis=axes)) \
        if nonneg else np.abs(w).sum(axis=axes)
    return float(rows.max(initial=0))


def _accumulator(weight: np.ndarray, axes: tuple, b, nonneg: bool = False) -> float:
    """A bound on every partial sum of Σ W·n before the shift (the builder's input bound;
    `weight_sum`)."""
    return weight_sum(weight, axes, nonneg) * (b.in_bounds[0] if b.in_bounds else 0.0)


def _check_exp(exp) -> str | None:
    if not is_int(exp) or not semantics.MIN_EXP <= exp <= semantics.MAX_EXP:
        return (f"weight_exp {exp!r} is not an integer in [{semantics.MIN_EXP}, "
                f"{semantics.MAX_EXP}]")
    return None
