"""Quantization rules of products of two activations: the elementwise product (`mul2`: gates,
normalization, softmax's e·(1/s)) and the product of matrices (`matmul2`: attention's Q·Kᵀ and
weights·V), both on Loihi 2's product neurons (sim.ops.Product, sim.ops.MatMul).

A product reads payloads (spikes): a current operand is requantized first. The product of two
integers stands for unit_a·unit_b; a power-of-two right shift (rounded half up) keeps twice its
static bound under the accumulator headroom, and the output is a current the consumer fires.
For a product of matrices the inner axis is summed as integers: both operands need one unit
along it (to within UNIT_SPREAD), which a token tensor's neuron gives (one level step per tensor).
"""
from __future__ import annotations

import numpy as np

from sim import ir
from toolchain.quantize.tensor import HEADROOM, LayerRow, QTensor, current, uniform


def _shift(bound: float) -> int:
    """The smallest right shift s ≥ 0 with 2·bound / 2^s ≤ HEADROOM."""
    s = 0
    while 2 * bound / 2.0 ** s > HEADROOM:
        s += 1
    return s


class ProductRules:
    def _operand(self, name: str, x: QTensor) -> QTensor:
        x = self.spikes_in(x)
        if np.any(x.bias):
            self.fail(name, "an operand of a product carries a pending bias")
        return x

    def op_mul2(self, name, d, ins):
        a, b = (self._operand(name, x) for x in ins)
        shape = tuple(d["shape"])
        unit = np.broadcast_to(a.unit * b.unit if a.unit.shape == b.unit.shape else
                               np.multiply(a.unit, b.unit), shape)
        bound = np.broadcast_to(np.multiply(a.bound, b.bound), shape)
        s = _shift(float(bound.max()))
        node = self.emit(ir.Product(name, (a.node, b.node), shape, shift=s))
        self.layers.append(LayerRow(name, node.kind, shape, synapses=2 * int(np.prod(shape)),
                                    detail=f">>{s}" if s else ""))
        return current(name, name, (unit * 2.0 ** s).astype(np.float64),
                       np.zeros(shape, np.int64), np.ceil(bound / 2.0 ** s))

    def op_matmul2(self, name, d, ins):
        a, b = (self._operand(name, x) for x in ins)
        shape = tuple(d["shape"])
        for x, axis, what in ((a, -1, "first"), (b, -2, "second")):
            rows = np.moveaxis(x.unit, axis, -1).reshape(-1, x.unit.shape[axis])
            if not uniform(rows, 0):
                self.fail(name, f"the {what} operand's unit varies along the summed axis; a "
                                "product of matrices needs one unit along it")
        ua = a.unit.mean(axis=-1, keepdims=True)          # (..., M, 1)
        ub = b.unit.mean(axis=-2, keepdims=True)          # (..., 1, N)
        unit = np.broadcast_to(np.matmul(ua, ub), shape)
        bound = np.broadcast_to(np.matmul(a.bound, b.bound), shape)
        s = _shift(float(bound.max()))
        inner = int(a.unit.shape[-1])
        node = self.emit(ir.MatMul(name, (a.node, b.node), shape, inner=inner, shift=s))
        self.layers.append(LayerRow(name, node.kind, shape,
                                    synapses=2 * int(np.prod(shape)) * inner,
                                    detail=f"K={inner}" + (f" >>{s}" if s else "")))
        return current(name, name, (unit * 2.0 ** s).astype(np.float64),
                       np.zeros(shape, np.int64), np.ceil(bound / 2.0 ** s))
