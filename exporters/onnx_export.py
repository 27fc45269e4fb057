"""ONNX export with an onnxruntime check, for models the SFN compiler imports: the export itself
is toolchain.torch_export's (shared with `toolchain.compile(module, example_input=…)`); this adds
the ClipFloor quantize flags, the sfn.levels metadata and the atomic file.

The two torch exporters and how each is driven (dynamic batch, opset 17 from the dynamo
exporter, BatchNorm folding) are described in toolchain/torch_export.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import torch
from torch import nn

from sim.files import atomic_write
from toolchain.torch_export import (DYNAMO_MIN_OPSET, INPUT_NAME, OUTPUT_NAME,  # noqa: F401
                                    ExportCheckError, check_export, export_proto,
                                    inline_initializer_identities)

from .layers import ClipFloor, set_quantize

LEVELS_KEY = "sfn.levels"


def _write_atomic(proto: onnx.ModelProto, path: Path) -> None:
    """Write whole or not at all (sim.files: a temp file in the target folder, then a rename),
    creating the folder if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, proto.SerializeToString())


def export_onnx(
    model: nn.Module,
    example_input: torch.Tensor,
    path: str | os.PathLike,
    *,
    opset: int = 17,
    dynamo: bool = False,
    levels: int | None = None,
    check: bool = True,
    rtol: float = 1e-4,
    atol: float = 1e-5,
) -> Path:
    """Export ``model`` to ONNX at ``path`` and return the path.

    Contract: input named "input", output named "output", batch axis (0) dynamic;
    exported in eval mode with every ClipFloor at ``quantize=False`` (one Clip node
    each); the model's training mode and ClipFloor flags are restored afterwards.
    ``levels`` (if given) is written as metadata ``sfn.levels`` = str(levels), the
    compiler's default number of levels. With ``check``, onnxruntime must reproduce
    the torch output (``np.allclose(onnx, torch, rtol, atol)``) on ``example_input``
    and on a seeded random batch of 3, else ExportCheckError and nothing is written.
    The file is written atomically (temp file in the same folder + os.replace).
    """
    path = Path(path)
    was_training = model.training
    clip_floors = [m for m in model.modules() if isinstance(m, ClipFloor)]
    saved_flags = [m.quantize for m in clip_floors]
    model.eval()
    set_quantize(model, False)
    try:
        proto = export_proto(model, example_input, opset, dynamo)
        inline_initializer_identities(proto)
        if levels is not None:
            props = {p.key: p.value for p in proto.metadata_props}
            props[LEVELS_KEY] = str(levels)
            onnx.helper.set_model_props(proto, props)
        if check:
            check_export(model, proto, example_input, rtol, atol)
        _write_atomic(proto, path)
    finally:
        for module, flag in zip(clip_floors, saved_flags):
            module.quantize = flag
        model.train(was_training)
    return path
