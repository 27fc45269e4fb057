"""Layers that train ANNs for lossless conversion to one-timestep spiking neurons."""

from __future__ import annotations

import torch
from torch import nn


class _FloorSTE(torch.autograd.Function):
    """floor(x) forward, identity backward (straight-through estimator).

    A custom Function rather than ``x + (floor(x) - x).detach()``: that sum is not
    always exactly floor(x) in floating point, and the forward must be exact.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return torch.floor(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        return grad_output


class ClipFloor(nn.Module):
    """Clip-floor-shift activation (QCFS, Bu et al. 2022) with ``levels`` = L levels.

    With step ``s = clip / L``, when ``quantize`` is True::

        y = s * clip(floor(z / s + 1/2), 0, L)

    i.e. round half UP (never ``torch.round``, which rounds half to even), so a
    one-timestep multi-threshold neuron with threshold ``s`` and a ``+s/2`` offset
    reproduces ``y`` exactly. ``floor`` has a straight-through gradient; the clip
    gets the gradient that autograd derives from the equation with that estimator,
    ``(y - z) / clip`` inside the range and ``1`` above it (as in QCFS / LSQ / PACT).

    When ``quantize`` is False (ONNX export), ``y = clamp(z, 0, clip)``, which the
    exporters emit as one ``Clip(min=0, max=clip)`` node with both bounds constant
    initializers; the compiler recovers the levels from the model metadata.

    ``clip`` is a 0-d tensor: an ``nn.Parameter`` when ``learnable``, else a buffer.
    """

    def __init__(self, levels: int, init_clip: float = 1.0, learnable: bool = True):
        super().__init__()
        if int(levels) != levels or levels < 1:
            raise ValueError(f"ClipFloor: levels must be a positive integer, got {levels!r}")
        if not init_clip > 0:
            raise ValueError(f"ClipFloor: init_clip must be > 0, got {init_clip!r}")
        self.levels = int(levels)
        self.quantize = True
        clip = torch.tensor(float(init_clip))
        if learnable:
            self.clip = nn.Parameter(clip)
        else:
            self.register_buffer("clip", clip)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if not self.quantize:
            # `clip * 0` rather than zeros_like: the legacy exporter folds it into a
            # 0.0 initializer, but leaves zeros_like as ConstantOfShape + Cast nodes.
            return torch.clamp(z, self.clip * 0, self.clip)
        step = self.clip / self.levels
        count = torch.clamp(_FloorSTE.apply(z / step + 0.5), 0, self.levels)
        return step * count

    def extra_repr(self) -> str:
        return f"levels={self.levels}, clip={float(self.clip.detach()):.4g}, quantize={self.quantize}"


def set_quantize(model: nn.Module, flag: bool) -> int:
    """Set ``quantize = flag`` on every ClipFloor inside ``model``; return how many."""
    modules = [m for m in model.modules() if isinstance(m, ClipFloor)]
    for module in modules:
        module.quantize = bool(flag)
    return len(modules)
