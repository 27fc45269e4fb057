"""Reading an ONNX file safely: parse, check, resolve external data inside the model's folder,
pin the batch axis, run shape inference."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import onnx
from onnx import external_data_helper

from toolchain.errors import InputFileError, ModelError, ShapeError, UnsupportedOpError
from toolchain.onnx_import.registry import MAX_OPSET, MIN_OPSET

MAX_MODEL_BYTES = 2 * 1024 ** 3


def read_model(path: str | os.PathLike) -> tuple[onnx.ModelProto, str]:
    """Parse `path`; return the model (external data loaded) and the SHA-256 of its bytes."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path}: no such file")
    if path.stat().st_size > MAX_MODEL_BYTES:
        raise InputFileError(f"{path}: {path.stat().st_size} bytes, over the {MAX_MODEL_BYTES} limit")
    data = path.read_bytes()
    if not data:
        raise InputFileError(f"{path}: empty file, not an ONNX model")
    try:
        model = onnx.load_from_string(data)
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise InputFileError(f"{path}: not an ONNX model or truncated ({type(exc).__name__}: "
                             f"{str(exc)[:200]})") from None
    if not model.HasField("graph") or not model.graph.node:
        raise InputFileError(f"{path}: not an ONNX model (no graph or no nodes)")
    _load_external(model, path.parent.resolve(), path)
    return model, hashlib.sha256(data).hexdigest()


def _load_external(model: onnx.ModelProto, base: Path, path: Path) -> None:
    tensors = [t for t in external_data_helper._get_all_tensors(model)
               if external_data_helper.uses_external_data(t)]
    for t in tensors:
        info = external_data_helper.ExternalDataInfo(t)
        loc = Path(info.location)
        target = (base / loc).resolve()
        if loc.is_absolute() or ".." in loc.parts or base not in target.parents:
            raise InputFileError(f"{path}: tensor {t.name!r} points outside the model's folder "
                                 f"({info.location!r}); refused")
        if not target.is_file():
            raise InputFileError(f"{path}: external data {info.location!r} of tensor {t.name!r} "
                                 "is missing")
        size = target.stat().st_size
        need = (info.offset or 0) + (info.length or 0)
        if need > size:
            raise InputFileError(f"{path}: external data {info.location!r} is {size} bytes, "
                                 f"tensor {t.name!r} needs {need}")
    if tensors:
        external_data_helper.load_external_data_for_model(model, str(base))


def opset_of(model: onnx.ModelProto, where: str) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            if not MIN_OPSET <= imp.version <= MAX_OPSET:
                raise UnsupportedOpError(f"{where}: opset {imp.version}; supported opsets are "
                                         f"{MIN_OPSET} to {MAX_OPSET} (re-export with opset_version="
                                         f"{min(max(imp.version, MIN_OPSET), MAX_OPSET)})")
            return imp.version
    raise ModelError(f"{where}: the model imports no default-domain opset")


def prepare(model: onnx.ModelProto, where: str) -> tuple[onnx.ModelProto, str]:
    """Check the model, fix the batch axis to 1, infer shapes. Returns (model, input name)."""
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise ModelError(f"{where}: invalid ONNX model: {str(exc).splitlines()[0][:300]}") from None
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise UnsupportedOpError(f"{where}: the model has {len(inputs)} inputs "
                                 f"({[i.name for i in inputs]}); exactly one is supported")
    if len(model.graph.output) != 1:
        raise UnsupportedOpError(f"{where}: the model has {len(model.graph.output)} outputs; "
                                 "exactly one is supported")
    inp = inputs[0]
    dims = inp.type.tensor_type.shape.dim
    if len(dims) < 2:
        raise ShapeError(f"{where}: input {inp.name!r} has rank {len(dims)}; expected (batch, ...)")
    for k, d in enumerate(dims[1:], start=1):
        if not d.HasField("dim_value") or d.dim_value <= 0:
            raise ShapeError(f"{where}: input {inp.name!r} dimension {k} is dynamic "
                             f"({d.dim_param or '?'}); only the batch dimension may be dynamic")
    dims[0].Clear()
    dims[0].dim_value = 1
    for out in model.graph.output:
        if out.type.tensor_type.HasField("shape") and out.type.tensor_type.shape.dim:
            out.type.tensor_type.shape.dim[0].Clear()
            out.type.tensor_type.shape.dim[0].dim_value = 1
    try:
        model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True,
                                                  data_prop=True)
    except Exception as exc:
        raise ShapeError(f"{where}: ONNX shape inference failed: {str(exc).splitlines()[0][:300]}") \
            from None
    return model, inp.name
