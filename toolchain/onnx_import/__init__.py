"""ONNX → float graph. `import_onnx(path)` reads, checks and converts a model.

Nodes whose inputs are all constants (shape arithmetic such as Shape → Gather → Concat feeding a
Reshape) are evaluated here with onnx's reference evaluator; every other node goes to the
converter registered for its op type.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from toolchain.errors import ModelError, ShapeError, UnsupportedOpError
from toolchain.fgraph import FloatGraph, fold_affine, mark_per_tensor
from toolchain.onnx_import import converters, loader  # noqa: F401  (registers every converter)
from toolchain.onnx_import.context import ImportContext
from toolchain.onnx_import.expand import expand_composites
from toolchain.onnx_import.loader import opset_of, prepare, read_model
from toolchain.onnx_import.registry import CONVERTERS, supported_ops

FOLD_MIN_BYTES = 64 * 1024 ** 2  # folded constants may take max(this, FOLD_FACTOR × the
FOLD_FACTOR = 2                  # bytes of constant data the file carries) in all
MAX_FOLD_PASSES = 64             # fold / infer rounds (one per level of computed shapes)


@dataclass
class ImportedModel:
    graph: FloatGraph
    model: onnx.ModelProto          # the shapes: loader.shape_model of the model (batch pinned to
    #                                 1, large constants declared as inputs without data) with
    #                                 every inferred shape in its value_info
    source: onnx.ModelProto         # the model as read (dynamic batch kept): calibration runs it
    input_name: str
    output_name: str
    sha256: str
    opset: int
    softmax: str = ""
    metadata: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _fold_constant(node, ctx) -> bool:
    """Evaluate `node` if all its inputs are known constants (or it is Shape of a static tensor).
    Control flow is never evaluated (a Loop's trip count is data), and an output whose size is
    unknown, over MAX_TENSOR_ELEMENTS or over what is left of the fold budget is refused before
    anything is computed."""
    if node.op_type == "Constant":
        value = numpy_helper.to_array(helper.get_attribute_value(node.attribute[0])) \
            if node.attribute[0].name == "value" else np.asarray(
                helper.get_attribute_value(node.attribute[0]))
        ctx.consts[node.output[0]] = value
        return True
    if node.op_type == "Shape" and node.input[0] in ctx.shapes:
        start, end = ctx.attr(node, "start", 0), ctx.attr(node, "end", None)
        ctx.consts[node.output[0]] = np.array(ctx.shapes[node.input[0]][start:end], np.int64)
        return True
    if not node.input or any(i and i not in ctx.consts for i in node.input) or \
            any(a.HasField("g") or a.graphs for a in node.attribute):
        return False
    outputs = [o for o in node.output if o]
    need = 0
    for name, (shape, itemsize) in zip(outputs, _folded_shapes(node, ctx, outputs)):
        if shape is None:
            raise ShapeError(f"{ctx.node_label(node)}: the size of constant {name!r} cannot be "
                             "determined before evaluating it; refused")
        if math.prod(shape) > loader.MAX_TENSOR_ELEMENTS:
            raise ShapeError(f"{ctx.node_label(node)}: constant {name!r} would have shape "
                             f"{list(shape)} ({math.prod(shape)} elements), over the "
                             f"{loader.MAX_TENSOR_ELEMENTS} limit; refused before evaluating it")
        need += math.prod(shape) * itemsize
        if ctx.fold_budget is not None and ctx.folded_bytes + need > ctx.fold_budget:
            raise ShapeError(f"{ctx.node_label(node)}: constant {name!r} would have shape "
                             f"{list(shape)} ({math.prod(shape) * itemsize} bytes); constants "
                             f"folded at import may take {ctx.fold_budget} bytes in all "
                             f"({FOLD_FACTOR} × the model's constant data, at least "
                             f"{FOLD_MIN_BYTES}) and {ctx.folded_bytes} are taken; refused "
                             "before evaluating it")
    inputs = [helper.make_tensor_value_info(i, onnx.TensorProto.UNDEFINED, None)
              for i in node.input if i]
    graph = helper.make_graph([node], "fold", inputs, _untyped(outputs))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ctx.opset)])
    try:
        results = ReferenceEvaluator(model).run(None, {i: ctx.consts[i] for i in node.input if i})
    except Exception as exc:
        raise ModelError(f"{ctx.node_label(node)}: constant evaluation failed ({exc})") from None
    for name, value in zip(outputs, results):
        ctx.consts[name] = np.asarray(value)
        ctx.folded_bytes += ctx.consts[name].nbytes
    return True


def _untyped(names):
    return [helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None) for n in names]


def _folded_shapes(node, ctx, outputs) -> list[tuple[tuple[int, ...] | None, int]]:
    """(shape, bytes per element) of each output of a node about to be folded, inferred for this
    node alone from its constant inputs (small ones by value), not from shapes the file declares;
    shape None where unknown. Without data propagation, which would materialize an entry per
    element of a large 1-D input."""
    values, typed = [], []
    try:
        for i in dict.fromkeys(filter(None, node.input)):
            v = np.asarray(ctx.consts[i])
            if v.size <= loader.SHAPE_DATA_ELEMENTS:
                values.append(numpy_helper.from_array(v, i))
            else:
                typed.append(helper.make_tensor_value_info(
                    i, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape))
        graph = helper.make_graph([node], "fold", typed, _untyped(outputs), values)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ctx.opset)])
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=False)
    except Exception as exc:
        raise ModelError(f"{ctx.node_label(node)}: cannot infer the shape of its constant output "
                         f"({str(exc)[:200]})") from None
    shapes = []
    for o in inferred.graph.output:
        tt = o.type.tensor_type
        known = tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim)
        try:
            itemsize = helper.tensor_dtype_to_np_dtype(tt.elem_type).itemsize
        except (KeyError, TypeError, ValueError):
            itemsize = 8
        shapes.append((tuple(d.dim_value for d in tt.shape.dim) if known else None, itemsize))
    return shapes


def _fold_all(model: onnx.ModelProto, shapes: onnx.ModelProto, where: str, opset: int):
    """Fold every constant subgraph of `model`, then — while some remaining tensor's shape is
    still unknown and the last round folded something — run shape inference again on the nodes
    left, the folded values given to it as constants. This does what ONNX's data propagation
    would (Shape → Gather → Concat → Reshape), one level of computed shapes per round, with
    every folded constant bounded before it is computed. The legacy torch exporter computes
    F.pad's pads with ConstantOfShape/Slice/Transpose…, which inference cannot see through until
    they are folded. Returns (shapes, context, nodes left to convert)."""
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    carried = sum(math.prod(t.dims) * loader.TENSOR_TYPES.get(t.data_type, 8)
                  for t in loader._tensors(model.graph, where))
    ctx = ImportContext(shapes, where, opset, consts=consts,
                        fold_budget=max(FOLD_MIN_BYTES, FOLD_FACTOR * carried))
    pending = list(model.graph.node)
    for _ in range(MAX_FOLD_PASSES):
        rest = [n for n in pending if not _fold_constant(n, ctx)]
        unknown = any(o and o not in ctx.shapes for n in rest for o in n.output)
        if not unknown or len(rest) == len(pending):
            return shapes, ctx, rest
        pending = rest
        shapes = loader.infer(loader.shape_model(shapes, rest, ctx.consts), where,
                              " after constant folding", constants=set(ctx.consts))
        ctx.read_shapes(shapes)
    return shapes, ctx, pending


def _check_sizes(node, ctx) -> None:
    """An op the SFN graph computes must read non-empty constants and produce a non-empty
    tensor: a zero-sized weight or shape makes an empty layer."""
    for name in filter(None, node.input):
        value = ctx.consts.get(name)
        if value is not None and np.size(value) == 0:
            raise ShapeError(f"{ctx.node_label(node)}: constant input {name!r} has shape "
                             f"{list(np.shape(value))}, zero elements; a layer needs non-empty "
                             "weights and parameters")
    for name in filter(None, node.output):
        shape = ctx.shapes.get(name)
        if shape is not None and math.prod(shape) == 0:
            raise ShapeError(f"{ctx.node_label(node)}: output {name!r} has shape {list(shape)}, "
                             "zero elements; a layer cannot be empty")


def import_onnx(path: str | os.PathLike, read=None) -> ImportedModel:
    """`read`: the (model, sha256) that loader.read_model already returned for `path`, if any.
    The model is not changed: it is returned as `source`."""
    raw, sha = read or read_model(path)  # every tensor's type, size and data checked
    where = str(path)
    raw, upgraded = loader.upgrade_opset(raw, where)
    opset = opset_of(raw, where)
    shapes, input_name = prepare(raw, where)
    raw, expanded = expand_composites(raw, shapes, where, opset)
    if expanded:
        shapes, input_name = prepare(raw, where)
    shapes, ctx, rest = _fold_all(raw, shapes, where, opset)
    ctx.fg.add(input_name, "input", [], ctx.shapes[input_name][1:])
    for node in rest:
        for i in filter(None, node.input):
            ctx.readers.setdefault(i, []).append(node)
    for node in rest:
        conv = CONVERTERS.get(node.op_type)
        if conv is None:
            raise UnsupportedOpError(f"{ctx.node_label(node)}: op {node.op_type!r} is not "
                                     f"supported. Supported ops: {', '.join(supported_ops())}")
        _check_sizes(node, ctx)
        conv.fn(node, ctx)
    out = ctx.alias.get(ctx.graph_output, ctx.graph_output)
    if out not in ctx.fg.g:
        raise ModelError(f"{where}: graph output {ctx.graph_output!r} is not computed from the input")
    ctx.fg.output = out
    notes = ([upgraded] if upgraded else []) + expanded
    if ctx.softmax:
        notes.append(f"final {ctx.softmax} dropped from the spiking graph; applied by the readout")
    folded = fold_affine(ctx.fg)
    mark_per_tensor(ctx.fg)
    if folded:
        notes.append(f"{folded} BatchNormalization/bias/scale nodes folded into conv/dense weights")
    meta = {p.key: p.value for p in raw.metadata_props}
    return ImportedModel(ctx.fg, shapes, raw, input_name, ctx.graph_output, sha, opset, ctx.softmax,
                         meta, notes)
