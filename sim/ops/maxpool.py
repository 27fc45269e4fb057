"""Max pooling of spikes (or of currents whose bias is constant per channel)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from sim import kernels
from sim.ops.base import MICROCODE, SYNAPSE, Windowed, register


@register
@dataclass
class MaxPool(Windowed):
    """out[c, y, x] = max over the window (padding never wins). Exact on spikes because every
    fire function is monotone, and on currents whose bias is constant per channel. No synaptic
    operations; a maximum needs a compartment of its own on a core."""
    kernel: tuple[int, int] = (2, 2)
    stride: tuple[int, int] = (2, 2)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilation: tuple[int, int] = (1, 1)
    kind: ClassVar[str] = "maxpool"
    role: ClassVar[str] = SYNAPSE
    compartment: ClassVar[str | None] = "maxpool"
    keeps_sign: ClassVar[bool] = True
    # no chip-supported connection computes a maximum
    hardware: ClassVar[str] = MICROCODE
    synops: ClassVar[str | None] = ""

    def _check(self, inputs):
        (x,) = inputs
        return self._check_window(x, self.kernel, x[0] if x else 0)

    def apply(self, ins, count):
        (x,) = ins
        return kernels.max_pool(x, self.kernel, self.stride, self.pads, self.dilation,
                                self.shape[-2:]), 0

    def emit(self, b, ins):
        return b.op("MaxPool", [ins[0]], kernel_shape=list(self.kernel),
                    strides=list(self.stride), pads=list(self.pads),
                    dilations=list(self.dilation))
