"""Reading an ONNX file safely: bound what parsing it will cost, parse, check every tensor's
declared size before its data is read, drop what the graph's outputs do not depend on, resolve
external data inside the model's folder, check the graph's structure, pin the batch axis, run
shape inference on a copy that carries no large constant data.

Limits (module constants, read at call time, so a test or a caller may change them):
`MAX_MODEL_BYTES` bounds the file and `MAX_EXTERNAL_BYTES` all its external data together;
`PARSE_MEMORY_FACTOR` × the file size + `PARSE_MEMORY_SLACK` bounds what protobuf may allocate
parsing it (estimated from the wire format before parsing); `MAX_TENSOR_ELEMENTS` bounds any
tensor whose data the file carries (initializers, Constant values, folded constants),
`MAX_ACTIVATION_ELEMENTS` any tensor shape the graph declares or shape inference derives (inputs,
outputs, value_info, batch included), `MAX_RANK` the rank of either.
"""
from __future__ import annotations

import hashlib
import math
import os
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.descriptor import FieldDescriptor
from onnx import TensorProto, external_data_helper, helper, numpy_helper, version_converter

from sim.files import file_kind, read_user_file
from toolchain.errors import InputFileError, ModelError, ShapeError, UnsupportedOpError
from toolchain.onnx_import.registry import MAX_OPSET, MIN_OPSET

MAX_MODEL_BYTES = 2 * 1024 ** 3
MAX_EXTERNAL_BYTES = 2 * 1024 ** 3  # all external data of one model together
MAX_TENSOR_ELEMENTS = 200_000_000
MAX_ACTIVATION_ELEMENTS = 2 ** 22   # per tensor, batch included: 4 Mi (four Loihi 2 chips of neurons)
MAX_RANK = 32                       # numpy's limit on dimensions
PARSE_MEMORY_FACTOR = 4             # parsing may cost 4 × the file size …
PARSE_MEMORY_SLACK = 64 * 1024 ** 2  # … + 64 MiB
MAX_NESTING = 64                    # messages inside messages (protobuf itself stops at 100)
SHAPE_DATA_ELEMENTS = 1024          # constants up to this size feed shape inference their values
DEFAULT_DOMAINS = ("", "ai.onnx")
UPGRADE_OPSET = 13   # a model below MIN_OPSET is converted to this opset

# Data types a tensor may carry, with bytes per element: the ones the converters can read as
# numbers. Strings, complex and sub-byte/float8 types have no use in an SFN network.
TENSOR_TYPES = {t: helper.tensor_dtype_to_np_dtype(t).itemsize for t in (
    TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16,
    TensorProto.INT8, TensorProto.UINT8, TensorProto.INT16, TensorProto.UINT16, TensorProto.INT32,
    TensorProto.UINT32, TensorProto.INT64, TensorProto.UINT64, TensorProto.BOOL)}
FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16)
_DATA_TYPES = frozenset(TensorProto.DataType.values())


def read_model(path: str | os.PathLike) -> tuple[onnx.ModelProto, str]:
    """Parse `path`; return the model (external data loaded) and the SHA-256 of its bytes.

    In this order, each step before anything the next one allocates: the wire format is walked
    to bound what parsing costs; every tensor's type, rank and size is checked and every
    external-data entry (location, range, overlap, total) validated, data unread; the graph's
    structure is checked; initializers and nodes that no graph output depends on are dropped;
    only then is external data read and every remaining tensor's data checked (length,
    finite values)."""
    path = Path(path)
    where = str(path)
    data = read_user_file(path, MAX_MODEL_BYTES)
    if not data:
        raise InputFileError(f"{path}: empty file, not an ONNX model")
    check_wire(data, where)
    try:
        model = onnx.load_from_string(data)  # protobuf keeps tensor bytes as bytes: no allocation
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise InputFileError(f"{path}: not an ONNX model or truncated ({type(exc).__name__}: "
                             f"{str(exc)[:200]})") from None
    sha = hashlib.sha256(data).hexdigest()
    del data
    if not model.HasField("graph") or not model.graph.node:
        raise InputFileError(f"{path}: not an ONNX model (no graph or no nodes)")
    base = path.parent.resolve()
    tensors = list(_tensors(model.graph, where))
    for tensor in tensors:
        _check_declared(tensor, where)
    _check_external(tensors, base, where)
    del tensors
    check_graph(model.graph, where)
    prune(model.graph)
    for tensor in _tensors(model.graph, where):
        if tensor.data_location == TensorProto.EXTERNAL:
            _read_external(tensor, base, where)
        _check_data(tensor, where)
    return model, sha


# --- the wire format, walked before protobuf parses it ------------------------------------------
# protobuf allocates far more than a field's bytes for some fields: a packed varint of value 0 is
# one byte in the file and 8 (16 while the array grows) in memory, an empty sub-message two bytes
# and ~150. `check_wire` adds up an upper estimate of what parsing allocates, field by field,
# skipping over byte strings (tensor data) without reading them, and refuses a file whose estimate
# exceeds PARSE_MEMORY_FACTOR × its size + PARSE_MEMORY_SLACK. It also refuses what protobuf would
# accept but the toolchain cannot use: text fields that are not UTF-8 (protobuf hands those back
# as bytes) and messages nested deeper than MAX_NESTING.
_F = FieldDescriptor
_VARINT = {_F.TYPE_INT64: 8, _F.TYPE_UINT64: 8, _F.TYPE_SINT64: 8, _F.TYPE_INT32: 4,
           _F.TYPE_UINT32: 4, _F.TYPE_SINT32: 4, _F.TYPE_ENUM: 4, _F.TYPE_BOOL: 1}
_FIXED = {_F.TYPE_FLOAT: 4, _F.TYPE_FIXED32: 4, _F.TYPE_SFIXED32: 4, _F.TYPE_DOUBLE: 8,
          _F.TYPE_FIXED64: 8, _F.TYPE_SFIXED64: 8}
_MESSAGE, _TEXT, _BYTES, _NUMBER, _VARINT_NUMBER = range(5)
_LAST_BYTES = bytes(range(128))  # a varint ends on a byte below 0x80: one per value
_STRING_COST, _FIELD_COST = 32, 16  # upb's string view + slack; an unknown field's record
_LAYOUTS: dict[str, dict] = {}
# the field that names an object of each message type, for error messages
_NAMES = {"onnx.TensorProto": (8, "tensor"), "onnx.NodeProto": (3, "node"),
          "onnx.ValueInfoProto": (1, "value_info"), "onnx.GraphProto": (2, "graph"),
          "onnx.AttributeProto": (1, "attribute"), "onnx.SparseTensorProto": (None, "tensor"),
          "onnx.FunctionProto": (4, "function")}


class _WireError(Exception):
    """Raised inside the walk; `owner` collects the names of the objects it happened in, `parts`
    the estimate so far by (message type, field name)."""

    def __init__(self, kind: str, detail: str, field: tuple | None = None):
        super().__init__(detail)
        self.kind, self.detail, self.field = kind, detail, field
        self.owner: list[str] = []
        self.parts: dict[tuple[str, str], int] = {}


def _layout(desc) -> dict:
    """field number → (kind, cost, sub-layout, repeated, name, cost of one unpacked element);
    None → the message type's name, -1 → one more than the largest field number."""
    key = desc.full_name
    if key in _LAYOUTS:
        return _LAYOUTS[key]
    layout: dict = {None: key, -1: max((f.number for f in desc.fields), default=0) + 1}
    _LAYOUTS[key] = layout  # before the fields: message types refer to each other
    for f in desc.fields:
        if f.type == _F.TYPE_MESSAGE:  # cost: the message's own record
            layout[f.number] = (_MESSAGE, 48 + 8 * len(f.message_type.fields),
                                _layout(f.message_type), f.is_repeated, f.name, 0)
        elif f.type in (_F.TYPE_STRING, _F.TYPE_BYTES):  # cost: on top of the bytes
            layout[f.number] = (_TEXT if f.type == _F.TYPE_STRING else _BYTES, _STRING_COST,
                                None, f.is_repeated, f.name, 0)
        else:  # cost, packed: per varint (counted) or per byte (fixed size), ×2 while growing
            size = _VARINT.get(f.type) or _FIXED.get(f.type, 8)
            layout[f.number] = (_VARINT_NUMBER if f.type in _VARINT else _NUMBER,
                                2 * size if f.type in _VARINT else 2, None, f.is_repeated,
                                f.name, 2 * size)
    return layout


def _varint(data: bytes, i: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= end or shift > 63:
            raise _WireError("truncated", "a varint runs past its message")
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def _walk(data: bytes, i: int, end: int, layout: dict, depth: int, budget: int) -> int:
    """The estimated bytes protobuf allocates for the message between i and end (its fields and
    sub-messages; its own record is the caller's); _WireError past `budget`."""
    if depth > MAX_NESTING:
        raise _WireError("nesting", f"messages nested more than {MAX_NESTING} deep")
    start, total, get, last = i, 0, layout.get, layout[-1]
    spent = [0] * (last + 1)  # by field number; the last slot for unknown numbers
    try:
        while i < end:
            tag = data[i]
            if tag < 0x80:
                i += 1
            else:
                tag, i = _varint(data, i, end)
            number, wire = tag >> 3, tag & 7
            f = get(number)
            if wire == 2:
                n = data[i] if i < end else 0x80
                if n < 0x80:
                    i += 1
                else:
                    n, i = _varint(data, i, end)
                j = i + n
                if j > end:
                    raise _WireError("truncated", "a field runs past its message")
                if f is None:
                    cost = n + _FIELD_COST
                else:
                    kind = f[0]
                    if kind == _MESSAGE:
                        cost = f[1] + _walk(data, i, j, f[2], depth + 1, budget - total - f[1])
                    elif kind == _NUMBER:  # packed, or (not repeated) an unknown field
                        cost = f[1] * n if f[3] else n + _FIELD_COST
                    elif kind == _VARINT_NUMBER:
                        if not f[3]:
                            cost = n + _FIELD_COST
                        elif n <= 4096:  # at most one value per byte
                            cost = f[1] * n
                        else:  # count the values: bytes that end a varint
                            cost = f[1] * (n - len(data[i:j].translate(None, _LAST_BYTES)))
                    else:
                        cost = n + f[1]
                        if kind == _TEXT:
                            try:
                                data[i:j].decode("utf-8")
                            except UnicodeDecodeError:
                                raise _WireError("text", f"{f[4]} {data[i:j][:60]!r} is not "
                                                 "UTF-8 text", (layout[None], number)) from None
                i = j
            elif wire == 0 or wire == 1 or wire == 5:
                if wire == 0:
                    _, i = _varint(data, i, end)
                else:
                    i += 8 if wire == 1 else 4
                if f is None or f[0] < _NUMBER:
                    cost = _FIELD_COST  # an unknown field (or a known one of another type)
                else:
                    cost = f[5] if f[3] else 0
            else:
                raise _WireError("truncated", f"wire type {wire} (groups or garbage)")
            total += cost
            spent[number if number < last else last] += cost
            if total > budget:
                raise _WireError("memory", "")
        if i != end:
            raise _WireError("truncated", "a field runs past its message")
    except _WireError as exc:
        for k, cost in enumerate(spent):
            if cost:
                f = get(k) if k < last else None
                part = (layout[None], f[4] if f else "unknown field")
                exc.parts[part] = exc.parts.get(part, 0) + cost
        number, kind = _NAMES.get(layout[None], (None, None))
        if exc.field == (layout[None], number) and not exc.owner:  # the name itself
            exc.detail = f"{kind} {exc.detail}"
        elif kind and len(exc.owner) < 3:
            name = _field_text(data, start, end, number) if number else None
            exc.owner.append(f"{kind} {name!r}" if name else kind)
        raise
    return total


def _field_text(data: bytes, i: int, end: int, number: int) -> str | None:
    """The text of field `number` among the fields between i and end, if it can be found."""
    try:
        while i < end:
            tag, i = _varint(data, i, end)
            wire = tag & 7
            if wire == 2:
                n, i = _varint(data, i, end)
                if tag >> 3 == number:
                    return data[i:min(i + n, end, i + 200)].decode("utf-8", "backslashreplace")
                i += n
            elif wire == 0:
                _, i = _varint(data, i, end)
            elif wire in (1, 5):
                i += 8 if wire == 1 else 4
            else:
                return None
    except _WireError:
        return None
    return None


def check_wire(data: bytes, where: str) -> int:
    """Walk the protobuf wire format of a ModelProto without parsing it; return the estimated
    bytes protobuf will allocate parsing it. Refuses (before any allocation that depends on the
    content) a file whose estimate exceeds PARSE_MEMORY_FACTOR × its size + PARSE_MEMORY_SLACK,
    text fields that are not UTF-8, nesting deeper than MAX_NESTING, and truncated fields."""
    budget = PARSE_MEMORY_FACTOR * len(data) + PARSE_MEMORY_SLACK
    try:
        return _walk(data, 0, len(data), _layout(onnx.ModelProto.DESCRIPTOR), 0, budget)
    except _WireError as exc:
        inside = f" (in {', '.join(reversed(exc.owner))})" if exc.owner else ""
        if exc.kind == "truncated":
            raise InputFileError(f"{where}: not an ONNX model or truncated ({exc.detail}"
                                 f"{inside})") from None
        if exc.kind == "text":
            raise ModelError(f"{where}: {exc.detail}{inside}; names and other text must be "
                             "UTF-8") from None
        if exc.kind == "nesting":
            raise ModelError(f"{where}: {exc.detail}{inside}; refused before parsing") from None
        (message, field), size = max(exc.parts.items(), key=lambda kv: kv[1])
        raise ModelError(
            f"{where}: parsing would allocate over {budget} bytes for a {len(data)}-byte file, "
            f"the limit ({PARSE_MEMORY_FACTOR} × its size + {PARSE_MEMORY_SLACK} bytes); "
            f"{message.removeprefix('onnx.')}.{field} alone accounts for {size} bytes{inside} "
            "(packed numbers or many small fields); refused before parsing") from None


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


def _check_declared(t: TensorProto, where: str) -> None:
    """Type, rank and size of a tensor, before its data is read."""
    what = f"{where}: tensor {t.name!r}"
    if t.data_type not in TENSOR_TYPES:
        raise UnsupportedOpError(f"{what} has data type {_type_name(t.data_type)}; supported: "
                                 + ", ".join(_type_name(k) for k in TENSOR_TYPES))
    if len(t.dims) > MAX_RANK:
        raise ShapeError(f"{what} has {len(t.dims)} dimensions, over the limit of {MAX_RANK}")
    if any(d < 0 for d in t.dims):
        raise ModelError(f"{what} has negative dimensions {list(t.dims)}")
    count = math.prod(t.dims)
    if count > MAX_TENSOR_ELEMENTS:
        raise ShapeError(f"{what} declares {count} elements (dims {list(t.dims)}), over the "
                         f"{MAX_TENSOR_ELEMENTS} limit; refused before reading its data")


def _check_data(t: TensorProto, where: str) -> None:
    """The data length the type and dims need, then finite values: afterwards converting the
    tensor allocates at most what its dims say."""
    what = f"{where}: tensor {t.name!r}"
    count = math.prod(t.dims)
    need = count * TENSOR_TYPES[t.data_type]
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
    if t.data_type in FLOAT_TYPES and count:
        values = np.frombuffer(t.raw_data, helper.tensor_dtype_to_np_dtype(t.data_type)) \
            if t.HasField("raw_data") else numpy_helper.to_array(t).reshape(-1)
        bad = 0
        for k in range(0, values.size, 1 << 22):  # a bounded temporary, not one bool per value
            chunk = values[k:k + (1 << 22)]
            bad += chunk.size - np.count_nonzero(np.isfinite(chunk))
        if bad:
            raise ModelError(f"{what} has {bad} NaN/Inf values; a deployable network needs "
                             "finite weights")


def _check_external(tensors, base: Path, where: str) -> None:
    """Validate every external-data entry without reading data: a location inside `base`, an
    existing file long enough for offset + the bytes the dims need, ranges of different tensors
    that do not overlap, and all of them together within MAX_EXTERNAL_BYTES."""
    total, ranges = 0, {}
    for t in tensors:
        if t.data_location != TensorProto.EXTERNAL:
            continue
        what = f"{where}: tensor {t.name!r}"
        need = math.prod(t.dims) * TENSOR_TYPES[t.data_type]
        target, offset = _external_entry(t, need, base, what)
        total += need
        if total > MAX_EXTERNAL_BYTES:
            raise InputFileError(f"{what}: the model's external data adds up to {total} bytes "
                                 f"so far, over the {MAX_EXTERNAL_BYTES}-byte limit")
        if need:
            ranges.setdefault(target, []).append((offset, offset + need, t.name))
    for target, spans in ranges.items():
        spans.sort()
        for (a0, a1, a), (b0, b1, b) in zip(spans, spans[1:]):
            if b0 < a1:
                raise ModelError(f"{where}: external data of tensors {a!r} (bytes {a0}–{a1}) and "
                                 f"{b!r} (bytes {b0}–{b1}) overlap in "
                                 f"{target.relative_to(base).as_posix()!r}; every tensor needs "
                                 "its own bytes")


def _external_entry(t: TensorProto, need: int, base: Path, what: str) -> tuple[Path, int]:
    """The file (inside `base`: no `..`, no absolute path, no symlink that leaves the folder) and
    offset of `t`'s external data, checked against the bytes its dims need."""
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
    return target, offset


def _read_external(t: TensorProto, base: Path, where: str) -> None:
    """Read exactly the bytes `t` needs (its entry checked again) and make the data inline."""
    what = f"{where}: tensor {t.name!r}"
    need = math.prod(t.dims) * TENSOR_TYPES[t.data_type]
    target, offset = _external_entry(t, need, base, what)
    try:
        with open(target, "rb") as f:
            f.seek(offset)
            data = f.read(need)
    except OSError as exc:
        raise InputFileError(f"{what}: cannot read external data ({exc.strerror or exc})") \
            from None
    if len(data) != need:
        raise InputFileError(f"{what}: external data file {target.name!r} ended early")
    t.raw_data = data
    del data
    t.data_location = TensorProto.DEFAULT
    del t.external_data[:]


def upgrade_opset(model: onnx.ModelProto, where: str) -> tuple[onnx.ModelProto, str | None]:
    """A model whose default-domain opset is below MIN_OPSET, converted to UPGRADE_OPSET with
    onnx's version converter, and a note saying so; any other model as it is, and None."""
    version = next((imp.version for imp in model.opset_import if imp.domain in DEFAULT_DOMAINS),
                   None)
    if version is None or version >= MIN_OPSET:
        return model, None
    try:
        upgraded = version_converter.convert_version(model, UPGRADE_OPSET)
    except Exception as exc:  # the converter raises RuntimeError / ValueError / its own errors
        raise UnsupportedOpError(f"{where}: opset {version}; supported opsets are {MIN_OPSET} to "
                                 f"{MAX_OPSET}, and onnx's version converter could not convert "
                                 f"it to {UPGRADE_OPSET} ({_first_line(exc)}); re-export with "
                                 f"opset_version={UPGRADE_OPSET}") from None
    return upgraded, f"opset {version} converted to {UPGRADE_OPSET} by onnx.version_converter"


WEIGHT_PATHS = ("Reshape", "Unsqueeze", "Squeeze", "Flatten", "Transpose", "Cast", "Identity")


def weight_tensors(graph: onnx.GraphProto) -> set[str]:
    """Weights computed in the graph: tensors computed from initializers and Constant nodes
    alone (ConstantOfShape, a Reshape of an initializer …) whose every reader takes them as a
    parameter (an input after the first) of an op on activations, directly or through
    reshapes and casts of constants. The importer folds them, bounded by MAX_TENSOR_ELEMENTS;
    they are not activations. A large constant read as data (a Range read by Size) is not one."""
    known = {t.name for t in graph.initializer}
    inputs = {i.name for i in graph.input} - known
    constant_nodes = []
    for node in graph.node:
        if all(i in known for i in node.input if i) and not any(i in inputs for i in node.input) \
                and not any(a.HasField("g") or a.graphs for a in node.attribute):
            known.update(o for o in node.output if o)
            constant_nodes.append(node)
    readers: dict[str, list] = {}
    for node in graph.node:
        for k, i in enumerate(node.input):
            readers.setdefault(i, []).append((node, k))
    constant_ids = {id(n) for n in constant_nodes}
    weights: set[str] = set()
    for node in reversed(constant_nodes):   # readers before what they read
        for out in filter(None, node.output):
            uses = readers.get(out, [])
            if uses and all(k >= 1 and id(r) not in constant_ids or
                            r.op_type in WEIGHT_PATHS and r.output[0] in weights
                            for r, k in uses):
                weights.add(out)
    return weights


def _reads(node: onnx.NodeProto) -> list[str]:
    """Names a node reads: its inputs and every name its subgraphs read (a subgraph may read
    tensors of the enclosing graph)."""
    names = list(node.input)
    for a in node.attribute:
        for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
            for n in g.node:
                names += _reads(n)
    return names


def prune(graph: onnx.GraphProto) -> tuple[int, int]:
    """Drop the nodes and initializers no graph output depends on (and the graph-input entries
    of dropped initializers), in place, without copying any tensor. Returns (nodes, initializers)
    dropped."""
    producer = {out: i for i, node in enumerate(graph.node) for out in node.output if out}
    live_nodes: set[int] = set()
    live = {o.name for o in graph.output}
    stack = list(live)
    while stack:
        i = producer.get(stack.pop())
        if i is None or i in live_nodes:
            continue
        live_nodes.add(i)
        for name in _reads(graph.node[i]):
            if name not in live:
                live.add(name)
                stack.append(name)
    dead_nodes = len(graph.node) - len(live_nodes)
    if dead_nodes:  # a stable sort moves the dead ones last, keeping the live ones' order
        graph.node.sort(key=lambda n: not any(o in live for o in n.output if o))
        del graph.node[len(live_nodes):]
    dead = {t.name for t in graph.initializer if t.name not in live}
    if dead:
        graph.initializer.sort(key=lambda t: t.name in dead)
        del graph.initializer[sum(t.name not in dead for t in graph.initializer):]
        graph.input.sort(key=lambda v: v.name in dead)
        del graph.input[sum(v.name not in dead for v in graph.input):]
    return dead_nodes, len(dead)


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
    listed = Counter(o.name for o in graph.output)
    for name, times in listed.items():
        if times > 1:
            raise ModelError(f"{where}: graph output {name!r} is listed {times} times")
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
    """A cycle is named by its nodes; an acyclic graph must list producers before readers.
    Linear in the number of nodes and edges."""
    readers = [{producer[n] for n in node.input if isinstance(producer.get(n), int)}
               for node in graph.node]
    late = next(((i, j) for i, deps in enumerate(readers) for j in deps if j >= i), None)
    if late is None:
        return
    waiting = [len(deps) for deps in readers]  # Kahn: producers not yet placed
    users: list[list[int]] = [[] for _ in readers]
    for i, deps in enumerate(readers):
        for j in deps:
            users[j].append(i)
    placed = [i for i, w in enumerate(waiting) if not w]
    for i in placed:  # the list grows while it is walked
        for k in users[i]:
            waiting[k] -= 1
            if not waiting[k]:
                placed.append(k)
    if len(placed) < len(readers):
        # every unplaced node waits on another unplaced node: walk back until one repeats
        pending = set(range(len(readers))).difference(placed)
        path: dict[int, int] = {}
        i = min(pending)
        while i not in path:
            path[i] = len(path)
            i = min(readers[i] & pending)
        cycle = list(path)[path[i]:][::-1]
        names = " → ".join(_label(graph.node[k], k) for k in (cycle + cycle[:1])[:9])
        if len(cycle) > 8:
            names += f" → … ({len(cycle)} nodes in all)"
        raise ModelError(f"{where}: the graph has a cycle: {names}")
    i, j = late
    raise ModelError(f"{where}: {_label(graph.node[i], i)} reads the output of "
                     f"{_label(graph.node[j], j)}, which comes later; nodes must be in "
                     "topological order")


def check_shapes(values, where: str, what: str, constants=frozenset()) -> None:
    """Refuse a declared or inferred tensor whose element type is unknown, or whose shape has
    more than MAX_RANK dimensions, a negative dimension or more than MAX_ACTIVATION_ELEMENTS
    elements (dynamic dimensions count as 1). Tensors named in `constants` (weight_tensors) are
    not activations: the size limit skips them."""
    for v in values:
        if v.type.WhichOneof("value") != "tensor_type":
            continue
        tt = v.type.tensor_type
        if tt.elem_type == TensorProto.UNDEFINED or tt.elem_type not in _DATA_TYPES:
            raise ModelError(f"{where}: {what} {v.name!r} has element type "
                             f"{_type_name(tt.elem_type)}")
        if len(tt.shape.dim) > MAX_RANK:
            raise ShapeError(f"{where}: {what} {v.name!r} has rank {len(tt.shape.dim)}, over the "
                             f"limit of {MAX_RANK}")
        shape = [d.dim_value if d.HasField("dim_value") else d.dim_param or "?"
                 for d in tt.shape.dim]
        dims = [d for d in shape if isinstance(d, int)]
        if any(d < 0 for d in dims):
            raise ShapeError(f"{where}: {what} {v.name!r} has a negative dimension {shape}")
        count = math.prod(dims)
        if count > MAX_ACTIVATION_ELEMENTS and v.name not in constants:
            raise ShapeError(f"{where}: {what} {v.name!r} has shape {shape} ({count} elements), "
                             f"over the {MAX_ACTIVATION_ELEMENTS}-element limit")


def _constant_type(node: onnx.NodeProto) -> tuple[int, list[int]] | None:
    """(element type, shape) of a Constant node's value, from its attribute, data unread."""
    if node.op_type != "Constant" or len(node.attribute) != 1:
        return None
    a = node.attribute[0]
    if a.name == "value" and a.HasField("t"):
        return a.t.data_type, list(a.t.dims)
    if a.name in ("value_floats", "value_ints"):
        return (TensorProto.FLOAT if a.name == "value_floats" else TensorProto.INT64,
                [len(a.floats) if a.name == "value_floats" else len(a.ints)])
    return None


def shape_model(model: onnx.ModelProto, nodes, consts: dict | None = None) -> onnx.ModelProto:
    """A model to run shape inference on, carrying no large constant data: `model`'s IR version,
    opsets, functions, graph inputs, outputs and value_info, and `nodes`. Constants with at most
    SHAPE_DATA_ELEMENTS elements keep their values (shape arithmetic reads them); larger ones —
    `model`'s initializers (or, given `consts`, the arrays in it that `nodes` read) and the
    values of Constant nodes — become graph inputs of their type and shape."""
    sk = onnx.ModelProto()
    sk.ir_version = model.ir_version
    sk.opset_import.extend(model.opset_import)
    sk.functions.extend(model.functions)
    g, out = model.graph, sk.graph
    out.name = g.name
    declared: list = []
    if consts is None:
        for t in g.initializer:
            if math.prod(t.dims) <= SHAPE_DATA_ELEMENTS:
                out.initializer.append(t)
            else:
                declared.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    else:
        read = {name for node in nodes for name in _reads(node)}
        for name in sorted(read.intersection(consts)):
            v = np.asarray(consts[name])
            if v.size <= SHAPE_DATA_ELEMENTS:
                out.initializer.append(numpy_helper.from_array(v, name))
            else:
                declared.append(helper.make_tensor_value_info(
                    name, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape)))
    for node in nodes:
        kind = _constant_type(node)
        if kind and math.prod(kind[1]) > SHAPE_DATA_ELEMENTS:
            declared.append(helper.make_tensor_value_info(node.output[0], *kind))
        else:
            out.node.append(node)
    replaced = {v.name: v for v in declared}
    for v in g.input:  # IR < 4 lists initializers as inputs too: their data decides the type
        out.input.append(replaced.pop(v.name, v))
    out.input.extend(replaced.values())
    out.output.extend(g.output)
    # a shape with a symbolic or missing dimension is left for inference to derive: kept, it
    # would stay symbolic after constant folding has made it static (a class token's Expand)
    out.value_info.extend(v for v in g.value_info if _static(v))
    return sk


def _static(v: onnx.ValueInfoProto) -> bool:
    tt = v.type.tensor_type
    return v.type.WhichOneof("value") == "tensor_type" and tt.HasField("shape") and \
        all(d.HasField("dim_value") for d in tt.shape.dim)


def infer(model: onnx.ModelProto, where: str, after: str = "",
          constants=frozenset()) -> onnx.ModelProto:
    """ONNX shape inference on a model from shape_model, then check_shapes on what it derived
    (`constants`: weights computed from constants, which the activation limit skips).
    Data propagation is off: it materializes a shape entry per element of every 1-D tensor an
    op such as Size or Add reads (gigabytes for one Range over constants); the importer's
    constant folding, rerun with inference until nothing changes, computes what it would."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True,
                                                     data_prop=False)
    except Exception as exc:
        raise ShapeError(f"{where}: ONNX shape inference failed{after}: {_first_line(exc)}") \
            from None
    check_shapes(inferred.graph.value_info, where, "inferred tensor", constants)
    check_shapes(inferred.graph.output, where, "graph output")
    return inferred


def prepare(model: onnx.ModelProto, where: str) -> tuple[onnx.ModelProto, str]:
    """Check the model, fix the batch axis to 1, infer shapes. Returns (shapes, input name):
    `shapes` is shape_model(model) with the batch axis pinned and every inferred shape in its
    value_info. `model` itself is left as it is."""
    g = model.graph
    check_graph(g, where)
    check_shapes(g.input, where, "graph input")
    check_shapes(g.output, where, "graph output")
    constants = weight_tensors(g)
    check_shapes(g.value_info, where, "value_info", constants)
    shapes = shape_model(model, g.node)
    try:
        onnx.checker.check_model(shapes)
    except Exception as exc:
        raise ModelError(f"{where}: invalid ONNX model: {_first_line(exc)}") from None
    inits = {t.name for t in g.initializer}
    inputs = [i for i in g.input if i.name not in inits]
    if len(inputs) != 1:
        raise UnsupportedOpError(f"{where}: the model has {len(inputs)} inputs "
                                 f"({[i.name for i in inputs]}); exactly one is supported")
    if len(g.output) != 1:
        raise UnsupportedOpError(f"{where}: the model has {len(g.output)} outputs; "
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
    for v in [v for v in shapes.graph.input if v.name == inp.name] + list(shapes.graph.output):
        if v.type.tensor_type.HasField("shape") and v.type.tensor_type.shape.dim:
            v.type.tensor_type.shape.dim[0].Clear()
            v.type.tensor_type.shape.dim[0].dim_value = 1
    return infer(shapes, where, constants=constants), inp.name
