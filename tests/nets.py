"""Small networks the exactness tests share: built in torch, exported, compiled (cached).

`NETS` names each network; `compiled(name)` returns (Compiled, calib_x, test_x) — the compile
runs once per session per network and per options.
"""
from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from toolchain.compiler import compile_onnx

_DIR = Path(tempfile.mkdtemp(prefix="sfn-test-nets-"))


class MLP(nn.Module):
    input_shape = (20,)

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(),
                                 nn.Linear(24, 5))

    def forward(self, x):
        return self.net(x)


class AvgPoolCNN(nn.Module):
    input_shape = (1, 8, 8)

    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                               nn.AvgPool2d(2), nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(),
                               nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 10))

    def forward(self, x):
        return self.f(x)


class MaxPoolCNN(nn.Module):
    input_shape = (2, 9, 9)

    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(2, 8, 3, stride=1, padding=1), nn.ReLU6(),
                               nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
                               nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=2), nn.ReLU(),
                               nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 2 * 2, 6))

    def forward(self, x):
        return self.f(x)


class Residual(nn.Module):
    """Two branches at different scales joined by Add: a conv path and an identity path."""
    input_shape = (3, 8, 8)

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.branch = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                    nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.proj = nn.Sequential(nn.Conv2d(8, 8, 1, stride=2), nn.BatchNorm2d(8))
        self.branch2 = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8))
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(self.branch(x) * 3.0 + x)           # identity shortcut, scaled branch
        x = torch.relu(self.branch2(x) + self.proj(x))     # projection shortcut: two currents
        return self.head(x.mean(dim=(2, 3)))


class ConcatNet(nn.Module):
    """Inception-style channel concat of branches with different activation ranges."""
    input_shape = (2, 8, 8)

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(2, 4, 1), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.ReLU6())
        self.c = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), nn.Conv2d(2, 3, 1), nn.ReLU())
        self.out = nn.Sequential(nn.Conv2d(13, 8, 3, stride=2, padding=1), nn.ReLU(),
                                 nn.Flatten(), nn.Linear(8 * 4 * 4, 5), nn.Softmax(dim=-1))

    def forward(self, x):
        return self.out(torch.cat([self.a(x), 4.0 * self.b(x), self.c(x)], dim=1))


NETS = {"mlp": MLP, "avgpool_cnn": AvgPoolCNN, "maxpool_cnn": MaxPoolCNN, "residual": Residual,
        "concat": ConcatNet}


def build(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = NETS[name]()
    for m in model.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def data(name: str, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.random((n,) + NETS[name].input_shape).astype(np.float32)


def export(model: nn.Module, path: Path, dynamo: bool = False, opset: int = 17) -> Path:
    example = torch.randn((1,) + model.input_shape)
    if dynamo:
        torch.onnx.export(model, (example,), str(path), dynamo=True, opset_version=max(opset, 18),
                          dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
    else:
        torch.onnx.export(model, example, str(path), dynamo=False, opset_version=opset,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    return path


@functools.lru_cache(maxsize=None)
def onnx_path(name: str, dynamo: bool = False) -> Path:
    return export(build(name), _DIR / f"{name}{'_dynamo' if dynamo else ''}.onnx", dynamo)


@functools.lru_cache(maxsize=None)
def compiled(name: str, dynamo: bool = False, levels: int = 15):
    """(Compiled, calibration inputs (256), test inputs (200)) for network `name`."""
    calib, test = data(name, 256, 1), data(name, 200, 2)
    return compile_onnx(onnx_path(name, dynamo), calib=calib, levels=levels), calib, test
