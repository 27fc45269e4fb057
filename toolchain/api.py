"""The Python entry point: `toolchain.compile(model, calib=None, **options) -> Artifact`."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx

from sim.artifact import Artifact
from toolchain.compiler import compile_onnx
from toolchain.errors import InputFileError


def compile(model, calib: np.ndarray | None = None, **options) -> Artifact:  # noqa: A001
    """Compile `model` into an SFN artifact and return it.

    `model`: the path of an ONNX file, its bytes, or an `onnx.ModelProto`. `calib`: calibration
    inputs (N, *input_shape) float32 — (N, T, n_in) trials for a recurrent cell; without them the
    compiler calibrates on N(0, 1) noise and says so in `artifact.meta["notes"]`. `options` are
    `toolchain.compiler.compile_onnx`'s: levels, percentile, per_channel, timesteps, target,
    fire, scale, scale_search, … The artifact's `meta` holds the per-layer table ("layers"),
    the agreement with the float model on the calibration data ("agreement") and the notes;
    `artifact.save(path)` writes it, `sim.cpu.run(artifact, x)` and `sim.lava.run(artifact, x)`
    run it."""
    if isinstance(model, (str, os.PathLike)):
        return compile_onnx(model, calib=calib, **options).artifact
    if isinstance(model, onnx.ModelProto):
        data, label = model.SerializeToString(), "onnx.ModelProto"
    elif isinstance(model, (bytes, bytearray, memoryview)):
        data, label = bytes(model), "ONNX bytes"
    else:
        raise InputFileError(f"model is a {type(model).__name__}; give the path of an ONNX file, "
                             "its bytes, or an onnx.ModelProto")
    with tempfile.TemporaryDirectory(prefix="sfn-compile-") as folder:
        path = Path(folder) / "model.onnx"
        path.write_bytes(data)
        art = compile_onnx(path, calib=calib, **options).artifact
    art.meta["source"]["file"] = label
    return art
