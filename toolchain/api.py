"""The Python entry point: `toolchain.compile(model, calib=None, **options) -> Artifact`."""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

from sim.artifact import Artifact
from toolchain.compiler import compile_onnx
from toolchain.errors import InputFileError


def compile(model, calib: np.ndarray | None = None, *, example_input=None,  # noqa: A001
            **options) -> Artifact:
    """Compile `model` into an SFN artifact and return it.

    `model`: the path of an ONNX file (or of a NIR file: toolchain.nir_io), its bytes, an
    `onnx.ModelProto`, or a `torch.nn.Module` with `example_input` (a tensor of shape
    (1, *input_shape); the module is exported with torch.onnx.export — the legacy exporter,
    opset 17, checked against onnxruntime — into a temporary file and compiled from there).
    `calib`: calibration inputs (N, *input_shape) float32 — (N, T, n_in) trials for a
    recurrent cell; without them the compiler calibrates on N(0, 1) noise and says so in
    `artifact.meta["notes"]`. `options` are `toolchain.compiler.compile_onnx`'s: levels,
    percentile, per_channel, timesteps, target, fire, scale, scale_search, … (for NIR:
    timesteps, dt, target). The artifact's `meta` holds the per-layer table ("layers"), the
    agreement with the float model on the calibration data ("agreement") and the notes;
    `artifact.save(path)` writes it, `sim.cpu.run(artifact, x)` and `sim.lava.run(artifact, x)`
    run it; their `SimResult.output` is what the model outputs (its final softmax included,
    `logits` before it: sim.results.SimResult)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(model, torch.nn.Module):
        if example_input is None:
            raise InputFileError("a torch.nn.Module needs example_input=, a tensor of shape "
                                 "(1, *input_shape), to be exported to ONNX")
        from toolchain.torch_export import to_onnx   # torch is already loaded by the caller
        proto = to_onnx(model, torch.as_tensor(example_input))
        art = _compile_bytes(proto.SerializeToString(), calib, options)
        art.meta["source"]["file"] = f"torch.nn.Module ({type(model).__name__})"
        return art
    if example_input is not None:
        raise InputFileError("example_input= is for a torch.nn.Module; this model is a "
                             f"{type(model).__name__}")
    if isinstance(model, (str, os.PathLike)):
        from toolchain.nir_io.importer import compile_nir, is_nir
        if is_nir(model):
            return compile_nir(model, calib=calib, **options).artifact
        return compile_onnx(model, calib=calib, **options).artifact
    if isinstance(model, onnx.ModelProto):
        data, label = model.SerializeToString(), "onnx.ModelProto"
    elif isinstance(model, (bytes, bytearray, memoryview)):
        data, label = bytes(model), "ONNX bytes"
    else:
        raise InputFileError(f"model is a {type(model).__name__}; give the path of an ONNX or "
                             "NIR file, ONNX bytes, an onnx.ModelProto, or a torch.nn.Module "
                             "with example_input=")
    art = _compile_bytes(data, calib, options)
    art.meta["source"]["file"] = label
    return art


def _compile_bytes(data: bytes, calib, options) -> Artifact:
    with tempfile.TemporaryDirectory(prefix="sfn-compile-") as folder:
        path = Path(folder) / "model.onnx"
        path.write_bytes(data)
        return compile_onnx(path, calib=calib, **options).artifact
