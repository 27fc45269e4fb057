"""The product of two activation matrices: attention's Q·Kᵀ and weights·V on product neurons."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import math

import numpy as np

from sim.ops.base import MICROCODE, SYNAPSE, Node, is_int, register, rounded_magnitude
from sim.ops.product import shift_round


@register
@dataclass
class MatMul(Node):
    """I[..., m, n] = round_half_up(Σ_k A[..., m, k] · B[..., k, n] / 2^shift), k < `inner`: the
    product of two activations (batched over the leading axes, broadcast), as product neurons
    (one per term: M·N·K per batch element) and a synapse summing each row of K. Attention's
    Q·Kᵀ and its weights · V. Product operations: the nonzero terms, counted as SynOps."""
    inner: int = 1
    shift: int = 0
    kind: ClassVar[str] = "matmul"
    role: ClassVar[str] = SYNAPSE
    connectivity: ClassVar[str | None] = "full"
    compartment: ClassVar[str | None] = "product"
    new_current: ClassVar[bool] = True
    hardware: ClassVar[str] = MICROCODE
    synops: ClassVar[str | None] = "inner"
    primitive: ClassVar[str] = "ProdNeuron-like per term (M·N·K), a Dense summing each K"
    arity: ClassVar[int | None] = 2

    def _check(self, inputs):
        a, b = inputs
        if not is_int(self.inner):
            return f"inner {self.inner!r} is not an integer"
        if len(a) != len(b):
            # both carry the batch axis in front: their axes pair up only at equal ranks
            return f"inputs {a} and {b} differ in rank"
        if len(a) < 2 or a[-1] != b[-2] or a[-1] != self.inner:
            return f"inputs {a} and {b} cannot be multiplied as matrices over {self.inner}"
        try:
            lead = np.broadcast_shapes(a[:-2], b[:-2])
        except ValueError:
            return f"the leading axes of {a} and {b} do not broadcast"
        if tuple(lead) + (a[-2], b[-1]) != tuple(self.shape):
            return f"inputs {a} × {b} give {tuple(lead) + (a[-2], b[-1])}, not {self.shape}"
        if not is_int(self.shift) or not 0 <= self.shift <= 31:
            return f"shift {self.shift!r} is not an integer in [0, 31]"
        return None

    def apply(self, ins, count):
        a, b = (np.asarray(i, np.int64) for i in ins)
        # exact in float64 while K·max|a|·max|b| < 2⁵³; integer matmul otherwise
        bound = float(a.shape[-1]) * float(np.abs(a).max(initial=0)) * \
            float(np.abs(b).max(initial=0))
        if bound < 2 ** 53:
            acc = np.matmul(a.astype(np.float64), b.astype(np.float64)).astype(np.int64)
        else:
            acc = np.matmul(a, b)
        ops = int(np.matmul((a != 0).astype(np.float64), (b != 0).astype(np.float64)).sum()) \
            if count else 0
        return shift_round(acc, int(self.shift)), ops

    def value_range(self, ranges):
        (a0, a1), (b0, b1) = ranges
        k = int(self.inner)
        corners = [a0 * b0, a0 * b1, a1 * b0, a1 * b1]
        s = int(self.shift)
        return (int(shift_round(np.int64(k * min(corners)), s)),
                int(shift_round(np.int64(k * max(corners)), s)))

    def magnitude(self, inputs):
        return rounded_magnitude(float(self.inner) * inputs[0] * inputs[1], self.shift)

    def macs(self) -> int:
        return math.prod(self.shape) * int(self.inner)

    def synapse_reads(self, k: int, in_shapes) -> np.ndarray:
        """(outputs, K): output element (…, m, n) reads row m of A (…, m, :) and column n of B
        (…, :, n)."""
        out = tuple(self.shape)
        ia = np.arange(int(np.prod(in_shapes[0]))).reshape(in_shapes[0])
        ib = np.arange(int(np.prod(in_shapes[1]))).reshape(in_shapes[1])
        lead = out[:-2]
        ia = np.broadcast_to(ia, lead + ia.shape[-2:])
        ib = np.broadcast_to(ib, lead + ib.shape[-2:])
        m, kk, n = ia.shape[-2], ia.shape[-1], ib.shape[-1]
        if k == 0:     # element (…, m, n) ← A[…, m, 0..K)
            reads = np.broadcast_to(ia[..., :, None, :], lead + (m, n, kk))
        else:          # element (…, m, n) ← B[…, 0..K, n]
            reads = np.broadcast_to(np.swapaxes(ib, -1, -2)[..., None, :, :],
                                    lead + (m, n, kk))
        return reads.reshape(-1, kk).astype(np.int64)

    def emit(self, b, ins):
        a = b.op("Cast", [ins[0]], to=b.DOUBLE)
        c = b.op("Cast", [ins[1]], to=b.DOUBLE)
        return b.op("Cast", [b.shift_round(b.op("MatMul", [a, c]), int(self.shift))],
                    to=b.FLOAT)
