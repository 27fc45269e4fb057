"""The networks the speed benchmarks run, built once and cached under a folder.

- `digits`: the bundled digits CNN (toolchain/data/digits_cnn_relu.onnx), calibrated on the
  digits training split, 1×8×8 inputs.
- `mlp`: an MLP 784-1024-1024-10 with ReLUs, PyTorch's default initialization.
- `resnet18`, `resnet18_q`: tests/zoo.py's ResNet18 with the CIFAR stem (conv 3×3, no pooling)
  on 3×32×32 inputs, 10 classes, width 64 (the full ResNet-18: ×1) and 16 (×¼), BatchNorm
  statistics measured in training mode on random inputs (sane activation ranges).

Every network is exported with the legacy exporter (opset 17, dynamic batch) and compiled on
random calibration inputs (the digits CNN on its own training split). `ort_int8(path, fmt)`
quantizes a float model with onnxruntime's `quantize_static` (per-channel weights, QOperator or
QDQ format), calibrated on the same inputs, the fair anchor for an integer simulator.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "toolchain" / "data" / "digits_cnn_relu.onnx"

NETS = {
    "digits": "digits CNN (1×8×8)",
    "mlp": "MLP 784-1024-1024-10",
    "resnet18": "ResNet-18 ×1 (3×32×32)",
    "resnet18_q": "ResNet-18 ×¼ (3×32×32)",
}


def input_shape(name: str) -> tuple[int, ...]:
    return {"digits": (1, 8, 8), "mlp": (784,)}.get(name, (3, 32, 32))


def _torch_model(name: str):
    import torch
    from torch import nn
    torch.manual_seed(0)
    if name == "mlp":
        model = nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                              nn.Linear(1024, 10))
        model.input_shape = (784,)
        return model.eval()
    sys.path.insert(0, str(ROOT / "tests"))
    import zoo
    model = zoo.ResNet18(width=64 if name == "resnet18" else 16, in_ch=3, classes=10, size=32,
                         stem="cifar")
    return zoo.settle_batchnorm(model, (3, 32, 32))


def onnx_path(name: str, folder: Path) -> Path:
    """The float ONNX model of `name`, exported into `folder` on first use."""
    if name == "digits":
        return DIGITS
    path = folder / f"{name}.onnx"
    if not path.exists():
        sys.path.insert(0, str(ROOT / "tests"))
        import zoo
        zoo.export(_torch_model(name), path)
    return path


def calibration(name: str, n: int = 64) -> np.ndarray:
    if name == "digits":
        from exporters.digits import load_digits_split
        return load_digits_split()[0]
    return np.random.default_rng(0).random((n,) + input_shape(name)).astype(np.float32)


def inputs(name: str, batch: int) -> np.ndarray:
    """`batch` samples: the digits test split repeated, or uniform random inputs."""
    if name == "digits":
        from exporters.digits import load_digits_split
        x = load_digits_split()[2]
        return np.ascontiguousarray(np.concatenate([x] * (batch // len(x) + 1))[:batch])
    return np.random.default_rng(1).random((batch,) + input_shape(name)).astype(np.float32)


def artifact(name: str, folder: Path):
    """The compiled artifact of `name` (compiled once, saved as `folder`/name.sfn)."""
    import toolchain
    from toolchain.compiler import compile_onnx
    path = folder / f"{name}.sfn"
    if path.exists():
        return toolchain.load(path)
    art = compile_onnx(onnx_path(name, folder), calib=calibration(name)).artifact
    art.save(path)
    return art


def ort_int8(name: str, folder: Path, fmt: str = "QOperator") -> Path:
    """onnxruntime's static int8 quantization of `name` (per-channel weights, u8 activations,
    s8 weights), in the QOperator or QDQ format, calibrated on `calibration(name)`."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process
    out = folder / f"{name}_int8_{fmt.lower()}.onnx"
    if out.exists():
        return out
    src = onnx_path(name, folder)
    pre = folder / f"{name}_pre.onnx"
    if not pre.exists():
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    calib = calibration(name)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.rows = iter([{"input": calib[i:i + 16]} for i in range(0, len(calib), 16)])

        def get_next(self):
            return next(self.rows, None)

    quantize_static(str(pre), str(out), Reader(), per_channel=True,
                    quant_format=QuantFormat.QOperator if fmt == "QOperator" else
                    QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    return out
