"""Sum pooling: average pooling with its divisor folded into the next threshold."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from sim import kernels
from sim.ops.base import CHIP_SYNAPSE, SYNAPSE, Windowed, register
from sim.ops.dense import _weighted_range


@register
@dataclass
class SumPool(Windowed):
    """I[c, y, x] = Σ over the window of n[c, ·, ·] (zero padding); average pooling's divisor is
    folded into the next threshold or readout scale. SynOps: every nonzero input times the
    output positions it reaches."""
    kernel: tuple[int, int] = (2, 2)
    stride: tuple[int, int] = (2, 2)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    kind: ClassVar[str] = "sumpool"
    role: ClassVar[str] = SYNAPSE
    new_current: ClassVar[bool] = True
    keeps_sign: ClassVar[bool] = True
    hardware: ClassVar[str] = CHIP_SYNAPSE
    synops: ClassVar[str | None] = "window"

    def _check(self, inputs):
        (x,) = inputs
        return self._check_window(x, self.kernel, x[0] if x else 0)

    def apply(self, ins, count):
        (x,) = ins
        out = kernels.sum_pool(x, self.kernel, self.stride, self.pads, self.shape[-2:])
        return out, (self.window_synops(x) if count else 0)

    def magnitude(self, inputs):
        return float(self.kernel[0] * self.kernel[1]) * inputs[0]

    def whole_axes(self, in_shape) -> list[int] | None:
        """The batched axes (2, 3) a window without padding spans in full, when it spans each
        of its two axes in full or has size 1 along it; None otherwise."""
        if any(self.pads) or len(in_shape) != 3:
            return None
        axes = []
        for axis, (size, k) in enumerate(zip(in_shape[1:], self.kernel)):
            if k == size:
                axes.append(axis + 2)
            elif k != 1:
                return None
        return axes or None

    def value_range(self, ranges):
        return _weighted_range(np.ones((1, self.kernel[0] * self.kernel[1]), np.int64), 0,
                               ranges[0])

    def emit(self, b, ins):
        """A window over whole trailing axes (a mean's sum) as ReduceSum over them, any other
        as a grouped convolution by ones (float32: exact, the sum below 2²⁴)."""
        axes = self.whole_axes(b.in_shapes[0]) if b.in_shapes else None
        if axes:
            return b.op("ReduceSum", [ins[0], b.const(axes, np.int64)], keepdims=1)
        c = self.shape[0]
        return b.op("Conv", [ins[0], b.const(np.ones((c, 1) + tuple(self.kernel)))],
                    strides=list(self.stride), pads=list(self.pads), group=c)
