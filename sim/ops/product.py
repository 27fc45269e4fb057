"""The product of two activations: Loihi 2's programmable neurons multiply two graded inputs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import math

import numpy as np

from sim.ops.base import MICROCODE, SYNAPSE, Node, is_int, register, rounded_magnitude


def shift_round(p: np.ndarray, shift: int) -> np.ndarray:
    """round_half_up(p / 2^shift) = floor((p + 2^(shift−1)) / 2^shift), int64 (p for shift 0)."""
    return p if shift == 0 else (p + (1 << (shift - 1))) >> shift


def _broadcast_tables(shapes, out) -> list[np.ndarray]:
    """For each input, the element of that input every output element reads (broadcasting)."""
    return [np.broadcast_to(np.arange(int(np.prod(s))).reshape(s), out).ravel() for s in shapes]


@register
@dataclass
class Product(Node):
    """I = round_half_up(a · b / 2^shift) elementwise, a and b the integer payloads of its two
    inputs broadcast against each other (numpy's rules on per-sample shapes of equal rank); the neuron that
    reads I fires it (its scale folded into θ). On Loihi 2 a programmable neuron multiplies two
    graded inputs (Lava's ProdNeuron computes (a·b) >> exp); one product neuron per element.
    Product operations: the nonzero products (a ≠ 0 and b ≠ 0), counted as SynOps."""
    shift: int = 0
    kind: ClassVar[str] = "product"
    role: ClassVar[str] = SYNAPSE
    connectivity: ClassVar[str | None] = "full"
    compartment: ClassVar[str | None] = "product"
    new_current: ClassVar[bool] = True
    hardware: ClassVar[str] = MICROCODE
    synops: ClassVar[str | None] = "pairs"
    primitive: ClassVar[str] = "ProdNeuron-like: (a·b) rounded half up >> shift, then a threshold"
    arity: ClassVar[int | None] = 2

    def _check(self, inputs):
        if len(inputs[0]) != len(inputs[1]):
            # both carry the batch axis in front: their axes pair up only at equal ranks
            return f"inputs {inputs[0]} and {inputs[1]} differ in rank"
        try:
            out = np.broadcast_shapes(*inputs)
        except ValueError:
            return f"inputs {inputs} do not broadcast"
        if tuple(out) != tuple(self.shape):
            return f"inputs {inputs} broadcast to {tuple(out)}, not {tuple(self.shape)}"
        if not is_int(self.shift) or not 0 <= self.shift <= 31:
            return f"shift {self.shift!r} is not an integer in [0, 31]"
        return None

    def apply(self, ins, count):
        a, b = (np.asarray(i, np.int64) for i in ins)
        ops = int(np.count_nonzero(np.logical_and(a != 0, b != 0))) if count else 0
        return shift_round(a * b, int(self.shift)), ops

    def value_range(self, ranges):
        (a0, a1), (b0, b1) = ranges
        corners = [a0 * b0, a0 * b1, a1 * b0, a1 * b1]
        s = int(self.shift)
        return (int(shift_round(np.int64(min(corners)), s)),
                int(shift_round(np.int64(max(corners)), s)))

    def magnitude(self, inputs):
        return rounded_magnitude(inputs[0] * inputs[1], self.shift)

    def macs(self) -> int:
        return math.prod(self.shape)

    def synapse_reads(self, k: int, in_shapes) -> np.ndarray:
        """(outputs, 1): the element of input k each product neuron reads (by broadcasting)."""
        return _broadcast_tables(in_shapes, tuple(self.shape))[k][:, None].astype(np.int64)

    def emit(self, b, ins):
        a = b.op("Cast", [ins[0]], to=b.DOUBLE)
        c = b.op("Cast", [ins[1]], to=b.DOUBLE)
        return b.op("Cast", [b.shift_round(b.op("Mul", [a, c]), int(self.shift))], to=b.FLOAT)
