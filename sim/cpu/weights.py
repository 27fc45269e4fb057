"""A dense or convolution node's weights in the forms sim.cpu's program multiplies with."""
from __future__ import annotations

import numpy as np

from sim import kernels
from sim.cpu import torch_ops
from sim.cpu.kernels import Fire
from sim.ops.dense import weight_sum


class Weights:
    """A dense/conv node's weights · 2^exp as float arrays (one per dtype) and Σ|W|, the largest
    over output channels.

    With a negative exponent the product W·x·2^exp is the exact accumulator scaled by a power of
    two (no rounding while Σ|W|·|x| is exact in the dtype), and `floor` then gives the contract's
    right shift; such a product takes no fused bias (the neuron fires on the floored value)."""

    def __init__(self, node):
        axes = tuple(range(1, node.weight.ndim))
        self.node = node
        self.scale = 2.0 ** int(node.weight_exp)
        self.floor = node.weight_exp < 0
        self.absum_int = weight_sum(node.weight, axes)
        self.absum = self.absum_int * self.scale       # bounds the (shifted) output
        # for non-negative inputs the larger one-sided sum bounds every partial sum
        self.onesided_int = weight_sum(node.weight, axes, nonneg=True)
        self.onesided = self.onesided_int * self.scale
        self.weight, self._cast = node.weight, {}
        self._int8: tuple | None = None          # (packed or None,) once made

    def int8(self):
        """The oneDNN int8 packing of the node's weights (torch_ops.pack_int8_conv or
        pack_int8_dense), made on first use; None where that path does not apply. With a
        negative exponent the kernel's float32 output acc·2^e is exact (a power of two) and the
        caller floors it, as the float path does."""
        if self._int8 is None:
            n = self.node
            if n.kind == "dense":
                self._int8 = (torch_ops.pack_int8_dense(self.weight, n.weight_exp),)
            else:
                self._int8 = (torch_ops.pack_int8_conv(self.weight, n.weight_exp, n.stride,
                                                       n.pads, n.dilation, n.groups),)
        return self._int8[0]

    def cast(self, dtype) -> np.ndarray:
        key = np.dtype(dtype)
        if key not in self._cast:
            w = self.weight.astype(dtype) * dtype(self.scale)
            if w.ndim == 4:   # channels-last memory, the layout the kernels take without a copy
                w = np.ascontiguousarray(w.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
            self._cast[key] = w
        return self._cast[key]

    def sums(self, nonneg: bool) -> tuple[float, float]:
        """(Σ|W| unshifted, shifted) per unit of input bound: the bound of every partial sum
        and of the output; for a non-negative input the one-sided sums."""
        return (self.onesided_int, self.onesided) if nonneg else (self.absum_int, self.absum)

    def exact(self, bx: float, x, fire: Fire | None = None, nonneg: bool = False):
        """(float weight · 2^exp in the exact dtype, bound of the output, bias) for an input
        bounded by `bx` (non-negative: `nonneg`), or (None, None, None) when no float dtype is
        exact. `x`: the input, to measure when the bound is too loose for float32 (None: keep
        the bound).

        With `fire` (the constants of the one-pass neuron that alone reads this node) the
        product also adds the neuron's offset b + θ//2 per output channel, in the dtype the
        fire needs (bias None when the offset is not channel-wise or no float dtype is exact)."""
        unshifted, shifted = self.sums(nonneg)
        if x is not None and unshifted * bx >= kernels.F32_EXACT:
            bx = min(bx, kernels.max_abs(x))
        bound, bias = shifted * bx, None
        dtype = kernels.exact_dtype(unshifted * bx)    # the unshifted partial sums
        if fire is not None and not self.floor:
            offset = fire.offset[0]                 # (C, 1, 1) or (C,): channel-wise?
            if offset.ndim and offset.shape[0] == self.weight.shape[0] \
                    and all(d == 1 for d in offset.shape[1:]):
                vbound = bound + fire.offset_max
                fdtype = fire.dtype(vbound)
                if fdtype is not None:
                    # the offset in the form the fire takes it (+1/2 where it multiplies)
                    offset = fire.cast(fdtype, fire.reciprocal(vbound, fdtype))[0]
                    dtype, bound, bias = fdtype, vbound, offset.reshape(-1)
        if dtype is None:
            return None, None, None
        return self.cast(dtype), bound, bias
