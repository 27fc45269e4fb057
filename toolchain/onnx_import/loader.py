"""Reading an ONNX file safely: parse, bound every tensor's size before anything is allocated,
resolve external data inside the model's folder, check the graph's structure, pin the batch
axis, run shape inference.

Limits (module constants, read at call time, so a test or a caller may change them):
`MAX_MODEL_BYTES` bounds the file, `MAX_TENSOR_ELEMENTS` any tensor whose data the file carries
(initializers, Constant values, folded constants), `MAX_ACTIVATION_ELEMENTS` any tensor shape the
graph declares or shape inference derives (inputs, outputs, value_info, batch included).
"""
from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, external_data_helper, helper, numpy_helper

from sim.files import file_kind, read_user_file
from toolchain.errors import InputFileError, ModelError, ShapeError, UnsupportedOpError
from toolchain.onnx_import.registry import MAX_OPSET, MIN_OPSET

MAX_MODEL_BYTES = 2 * 1024 ** 3
MAX_TENSOR_ELEMENTS = 200_000_000
MAX_ACTIVATION_ELEMENTS = 2 ** 22   # per tensor, batch included: 4 Mi (four Loihi 2 chips of neurons)
DEFAULT_DOMAINS = ("", "ai.onnx")

# Data types a tensor may carry, with bytes per element: the ones the converters can read as
# numbers. Strings, complex and sub-byte/float8 types have no use in an SFN network.
TENSOR_TYPES = {t: helper.tensor_dtype_to_np_dtype(t).itemsize for t in (
    TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16,
    TensorProto.INT8, TensorProto.UINT8, TensorProto.INT16, TensorProto.UINT16, TensorProto.INT32,
    TensorProto.UINT32, TensorProto.INT64, TensorProto.UINT64, TensorProto.BOOL)}
FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16)


def read_model(path: str | os.PathLike) -> tuple[onnx.ModelProto, str]:
    """Parse `path`; return the model (external data loaded) and the SHA-256 of its bytes.
    Every tensor is checked (type, size, data length) before its data is read or converted."""
    path = Path(path)
    data = read_user_file(path, MAX_MODEL_BYTES)
    if not data:
        raise InputFileError(f"{path}: empty file, not an ONNX model")
    try:
        model = onnx.load_from_string(data)  # protobuf keeps tensor bytes as bytes: no allocation
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise InputFileError(f"{path}: not an ONNX model or truncated ({type(exc).__name__}: "
                             f"{str(exc)[:200]})") from None
    if not model.HasField("graph") or not model.graph.node:
        raise InputFileError(f"{path}: not an ONNX model (no graph or no nodes)")
    base = path.parent.resolve()
    for tensor in _tensors(model.graph, str(path)):
        _check_tensor(tensor, base, str(path))
    return model, hashlib.sha256(data).hexdigest()


def _tensors(graph: onnx.GraphProto, where: str):
    """Every dense tensor the graph carries (initializers, attribute values, subgraphs')."""
    if graph.sparse_initializer:
        raise UnsupportedOpError(f"{where}: sparse initializer "
                                 f"{graph.sparse_initializer[0].values.name!r} is not supported")
    yield from graph.initializer
    for node in graph.node:
        for a in node.attribute:
            if a.HasField("sparse_tensor") or a.sparse_tensors:
                raise UnsupportedOpError(f"{where}: {_label(node)} attribute {a.name!r} is a "
                                         "sparse tensor, which is not supported")
            if a.HasField("t"):
                yield a.t
            yield from a.tensors
            for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                yield from _tensors(g, where)


def _check_tensor(t: TensorProto, base: Path, where: str) -> None:
    """Type and size first, then the data length the type and dims need (reading external data
    from inside `base`), then finite values: afterwards converting the tensor allocates at most
    what its dims say."""
    what = f"{where}: tensor {t.name!r}"
    if t.data_type not in TENSOR_TYPES:
        raise UnsupportedOpError(f"{what} has data type {_type_name(t.data_type)}; supported: "
                                 + ", ".join(_type_name(k) for k in TENSOR_TYPES))
    if any(d < 0 for d in t.dims):
        raise ModelError(f"{what} has negative dimensions {list(t.dims)}")
    count = math.prod(t.dims)
    if count > MAX_TENSOR_ELEMENTS:
        raise ShapeError(f"{what} declares {count} elements (dims {list(t.dims)}), over the "
                         f"{MAX_TENSOR_ELEMENTS} limit; refused before reading its data")
    need = count * TENSOR_TYPES[t.data_type]
    if t.data_location == TensorProto.EXTERNAL:
        _load_external(t, need, base, what)
    if t.HasField("raw_data"):
        if len(t.raw_data) != need:
            raise ModelError(f"{what} has {len(t.raw_data)} bytes of data; its dims "
                             f"{list(t.dims)} and type need {need}")
    else:
        field = helper.tensor_dtype_to_field(t.data_type)
        have = len(getattr(t, field))
        if have != count:
            raise ModelError(f"{what} has {have} values in {field}; its dims {list(t.dims)} "
                             f"need {count}")
    if t.data_type in FLOAT_TYPES:
        values = np.frombuffer(t.raw_data, helper.tensor_dtype_to_np_dtype(t.data_type)) \
            if t.HasField("raw_data") else numpy_helper.to_array(t)
        bad = values.size - np.count_nonzero(np.isfinite(values))
        if bad:
            raise ModelError(f"{what} has {bad} NaN/Inf values; a deployable network needs "
                             "finite weights")


def _load_external(t: TensorProto, need: int, base: Path, what: str) -> None:
    """Read `need` bytes for `t` from a file inside `base` (no `..`, no absolute path, no
    symlink that leaves the folder) and make the data inline."""
    try:
        info = external_data_helper.ExternalDataInfo(t)
    except ValueError as exc:  # a non-integer or negative offset/length
        raise ModelError(f"{what}: bad external data entry ({exc})") from None
    location = info.location
    loc = Path(location)
    if not location or "\0" in location or loc.is_absolute() or ".." in loc.parts:
        raise InputFileError(f"{what} points outside the model's folder ({location!r}); refused")
    target = (base / loc).resolve()
    if base not in target.parents:
        raise InputFileError(f"{what} points outside the model's folder ({location!r} resolves "
                             f"to {str(target)!r}); refused")
    if not target.is_file():
        found = "is missing" if not os.path.lexists(target) else \
            f"is a {file_kind(os.stat(target).st_mode)}, not a file"
        raise InputFileError(f"{what}: external data file {location!r} {found}")
    offset = info.offset or 0
    if info.length is not None and info.length != need:
        raise ModelError(f"{what}: external data length {info.length}; its dims {list(t.dims)} "
                         f"and type need {need} bytes")
    size = target.stat().st_size
    if offset + need > size:
        raise InputFileError(f"{what}: external data file {location!r} is {size} bytes, the "
                             f"tensor needs {need} from offset {offset}: the file is short")
    with open(target, "rb") as f:
        f.seek(offset)
        t.raw_data = f.read(need)
    t.data_location = TensorProto.DEFAULT
    del t.external_data[:]


def opset_of(model: onnx.ModelProto, where: str) -> int:
    for imp in model.opset_import:
        if imp.domain in DEFAULT_DOMAINS:
            if not MIN_OPSET <= imp.version <= MAX_OPSET:
                raise UnsupportedOpError(f"{where}: opset {imp.version}; supported opsets are "
                                         f"{MIN_OPSET} to {MAX_OPSET} (re-export with opset_version="
                                         f"{min(max(imp.version, MIN_OPSET), MAX_OPSET)})")
            return imp.version
    raise ModelError(f"{where}: the model imports no default-domain opset")


def _type_name(code: int) -> str:
    return TensorProto.DataType.Name(code) if code in TensorProto.DataType.values() \
        else f"unknown type {code}"


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def _label(node: onnx.NodeProto, index: int | None = None) -> str:
    name = node.name or (node.output[0] if node.output and node.output[0] else f"#{index}")
    return f"node {name!r} ({node.op_type})"


def check_graph(graph: onnx.GraphProto, where: str) -> None:
    """Name the structural defects onnx.checker reports only generically: an op from another
    domain, a tensor produced twice, a graph output listed twice or never produced, an input no
    one produces, a cycle, nodes out of topological order."""
    for i, node in enumerate(graph.node):
        if node.domain not in DEFAULT_DOMAINS:
            raise UnsupportedOpError(f"{where}: {_label(node, i)} is from domain {node.domain!r}; "
                                     "only default-domain (ai.onnx) ops are supported")
    producer: dict[str, int | str] = {}
    for kind, names in (("graph input", [v.name for v in graph.input]),
                        ("initializer", [t.name for t in graph.initializer])):
        seen = set()
        for name in names:
            if name in seen:
                raise ModelError(f"{where}: {kind} {name!r} is declared twice")
            seen.add(name)
            producer.setdefault(name, kind)
    for i, node in enumerate(graph.node):
        for out in filter(None, node.output):
            if out in producer:
                first = producer[out]
                by = _label(graph.node[first], first) if isinstance(first, int) else f"the {first}"
                raise ModelError(f"{where}: tensor {out!r} is produced twice: by {by} and by "
                                 f"{_label(node, i)}; every tensor needs one producer")
            producer[out] = i
    outputs = [o.name for o in graph.output]
    for name in outputs:
        if outputs.count(name) > 1:
            raise ModelError(f"{where}: graph output {name!r} is listed {outputs.count(name)} times")
        if name not in producer:
            raise ModelError(f"{where}: graph output {name!r} is not produced by any node, graph "
                             "input or initializer")
    for i, node in enumerate(graph.node):
        for name in filter(None, node.input):
            if name not in producer:
                raise ModelError(f"{where}: {_label(node, i)} reads {name!r}, which no node, graph "
                                 "input or initializer produces")
    _check_order(graph, producer, where)


def _check_order(graph: onnx.GraphProto, producer: dict, where: str) -> None:
    """A cycle is named by its nodes; an acyclic graph must list producers before readers."""
    readers = [{producer[n] for n in node.input if isinstance(producer.get(n), int)}
               for node in graph.node]
    if not any(j >= i for i, deps in enumerate(readers) for j in deps):
        return
    done: set[int] = set()
    pending = set(range(len(graph.node)))
    while True:  # peel off nodes whose producers are all placed (Kahn)
        ready = {i for i in pending if readers[i] <= done}
        if not ready:
            break
        done |= ready
        pending -= ready
    if pending:  # every pending node waits on another pending node: walk back until one repeats
        path, i = [], min(pending)
        while i not in path:
            path.append(i)
            i = min(readers[i] & pending)
        cycle = path[path.index(i):][::-1]
        names = " → ".join(_label(graph.node[k], k) for k in cycle + cycle[:1])
        raise ModelError(f"{where}: the graph has a cycle: {names}")
    i, j = next((i, j) for i, deps in enumerate(readers) for j in deps if j >= i)
    raise ModelError(f"{where}: {_label(graph.node[i], i)} reads the output of "
                     f"{_label(graph.node[j], j)}, which comes later; nodes must be in "
                     "topological order")


def check_shapes(values, where: str, what: str) -> None:
    """Refuse a declared or inferred tensor whose element type is unknown, or whose shape has a
    negative dimension or more than MAX_ACTIVATION_ELEMENTS elements (dynamic dimensions count
    as 1)."""
    for v in values:
        if v.type.WhichOneof("value") != "tensor_type":
            continue
        tt = v.type.tensor_type
        if tt.elem_type == TensorProto.UNDEFINED or tt.elem_type not in \
                TensorProto.DataType.values():
            raise ModelError(f"{where}: {what} {v.name!r} has element type "
                             f"{_type_name(tt.elem_type)}")
        shape = [d.dim_value if d.HasField("dim_value") else d.dim_param or "?"
                 for d in tt.shape.dim]
        dims = [d for d in shape if isinstance(d, int)]
        if any(d < 0 for d in dims):
            raise ShapeError(f"{where}: {what} {v.name!r} has a negative dimension {shape}")
        count = math.prod(dims)
        if count > MAX_ACTIVATION_ELEMENTS:
            raise ShapeError(f"{where}: {what} {v.name!r} has shape {shape} ({count} elements), "
                             f"over the {MAX_ACTIVATION_ELEMENTS}-element limit")


def prepare(model: onnx.ModelProto, where: str) -> tuple[onnx.ModelProto, str]:
    """Check the model, fix the batch axis to 1, infer shapes. Returns (model, input name)."""
    g = model.graph
    check_graph(g, where)
    check_shapes(g.input, where, "graph input")
    check_shapes(g.output, where, "graph output")
    check_shapes(g.value_info, where, "value_info")
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise ModelError(f"{where}: invalid ONNX model: {_first_line(exc)}") from None
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise UnsupportedOpError(f"{where}: the model has {len(inputs)} inputs "
                                 f"({[i.name for i in inputs]}); exactly one is supported")
    if len(model.graph.output) != 1:
        raise UnsupportedOpError(f"{where}: the model has {len(model.graph.output)} outputs; "
                                 "exactly one is supported")
    inp = inputs[0]
    if inp.type.WhichOneof("value") != "tensor_type" or \
            inp.type.tensor_type.elem_type != TensorProto.FLOAT:
        kind = inp.type.WhichOneof("value")
        found = _type_name(inp.type.tensor_type.elem_type) if kind == "tensor_type" else kind
        raise UnsupportedOpError(f"{where}: input {inp.name!r} is {found}; the input must be a "
                                 "FLOAT tensor")
    dims = inp.type.tensor_type.shape.dim
    if len(dims) < 2:
        raise ShapeError(f"{where}: input {inp.name!r} has rank {len(dims)}; expected (batch, ...)")
    if dims[0].HasField("dim_value") and dims[0].dim_value == 0:
        raise ShapeError(f"{where}: input {inp.name!r} has batch dimension 0")
    for k, d in enumerate(dims[1:], start=1):
        if d.HasField("dim_value") and d.dim_value <= 0:
            raise ShapeError(f"{where}: input {inp.name!r} dimension {k} has size "
                             f"{d.dim_value}; every dimension but the batch needs a size ≥ 1")
        if not d.HasField("dim_value"):
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
        raise ShapeError(f"{where}: ONNX shape inference failed: {_first_line(exc)}") from None
    check_shapes(model.graph.value_info, where, "inferred tensor")
    return model, inp.name
