"""2-D convolution synapses: integer kernels with a power-of-two exponent."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import math

import numpy as np

from sim import kernels, semantics
from sim.ops.base import (CHIP_SYNAPSE, SYNAPSE, WEIGHT_MAX, WEIGHT_MIN, Windowed, check_ints,
                          is_int, register, weighted_magnitude)
from sim.ops.dense import _accumulator, _check_exp, _weighted_range


@register
@dataclass
class Conv(Windowed):
    """I = shift(conv2d(n, W; stride, pads (top, left, bottom, right), dilation, groups),
    weight_exp), shift as in Dense (a negative exponent floors the accumulator / 2^−e).

    Zero padding; W has shape (C_out, C_in / groups, kh, kw); integer arithmetic. SynOps: every
    nonzero input times the output positions it reaches times C_out / groups."""
    weight: np.ndarray = None
    weight_exp: int = 0
    stride: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    kind: ClassVar[str] = "conv"
    role: ClassVar[str] = SYNAPSE
    new_current: ClassVar[bool] = True
    hardware: ClassVar[str] = CHIP_SYNAPSE
    synops: ClassVar[str | None] = "window"
    array_dtypes: ClassVar[dict] = {"weight": np.int16}

    def window(self):
        c_out, c_in_g, kh, kw = self.weight.shape
        return self.groups, c_in_g, kh, kw, self.stride, self.pads, self.dilation

    def _check(self, inputs):
        (x,) = inputs
        problem = check_ints("weight", self.weight, WEIGHT_MIN, WEIGHT_MAX)
        if problem:
            return problem
        if np.ndim(self.weight) != 4:
            return f"weight rank {np.ndim(self.weight)}, expected 4"
        problem = _check_exp(self.weight_exp)
        if problem:
            return problem
        co, cg = self.weight.shape[:2]
        g = self.groups
        if len(x) != 3:
            return f"input {x} and output {tuple(self.shape)} must be (C, H, W)"
        if not is_int(g) or g < 1 or x[0] % g or co % g or cg * g != x[0]:
            return f"weight {self.weight.shape} with groups {g!r} does not fit {x[0]} channels"
        return self._check_window(x, self.weight.shape[2:], co, cg)

    def apply(self, ins, count):
        (x,) = ins
        absum = np.abs(self.weight.astype(np.int64)).sum(axis=(1, 2, 3)).max(initial=0)
        dtype = kernels.exact_float_dtype(float(absum) * float(np.abs(x).max(initial=0)))
        out = semantics.shift(kernels.conv2d(x, self.weight, self.stride, self.pads,
                                             self.dilation, self.groups, self.shape[-2:], dtype),
                              self.weight_exp)
        return out, (self.window_synops(x) if count else 0)

    def value_range(self, ranges):
        return _weighted_range(self.weight.reshape(self.weight.shape[0], -1), self.weight_exp,
                               ranges[0])

    def magnitude(self, inputs):
        return weighted_magnitude(self.weight, self.weight_exp, (1, 2, 3), inputs[0])

    def macs(self) -> int:
        c_out, c_in_g, kh, kw = self.weight.shape
        return math.prod(self.shape) * c_in_g * kh * kw

    def mantissas(self):
        return self.weight

    def emit(self, b, ins):
        """In float32 while Σ|W|·max|n| < 2²⁴. Beyond (one group), the input channels are cut
        into slices whose partial sums float32 holds, each slice's convolution is summed in
        float64 (onnxruntime has no float64 convolution) and the shifted sum cast back; a
        grouped convolution, or one input channel alone beyond 2²⁴, has no exact form."""
        if _accumulator(self.weight, (1, 2, 3), b) < b.FLOAT_EXACT:
            return b.shift(self._conv(b, ins[0], self.weight), self.weight_exp)
        if self.groups != 1:
            b.exact(float("inf"), self)
        reach = np.abs(self.weight.astype(np.float64)).sum(axis=(2, 3)) * b.in_bounds[0]
        total, start = None, 0
        while start < reach.shape[1]:
            stop, acc = start, np.zeros(reach.shape[0])
            while stop < reach.shape[1] and (acc + reach[:, stop]).max() < b.FLOAT_EXACT:
                acc += reach[:, stop]
                stop += 1
            if stop == start:          # one channel alone beyond float32
                b.exact(float(reach[:, start].max()), self)
            part = b.op("Slice", [ins[0], b.const([start], np.int64), b.const([stop], np.int64),
                                  b.const([1], np.int64)])
            part = b.op("Cast", [self._conv(b, part, self.weight[:, start:stop])], to=b.DOUBLE)
            total = part if total is None else b.op("Add", [total, part])
            start = stop
        return b.op("Cast", [b.shift(total, self.weight_exp, np.float64)], to=b.FLOAT)

    def _conv(self, b, x: str, weight: np.ndarray, bias: str | None = None) -> str:
        """This node's convolution of `x` by `weight` (float32 constants), plus `bias`."""
        return b.op("Conv", [x, b.const(weight)] + ([bias] if bias else []),
                    strides=list(self.stride), pads=list(self.pads),
                    dilations=list(self.dilation), group=self.groups)
