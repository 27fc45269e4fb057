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
from toolchain.fgraph import FloatGraph, fold_affine
from toolchain.onnx_import import converters, loader  # noqa: F401  (registers every converter)
from toolchain.onnx_import.context import ImportContext
from toolchain.onnx_import.loader import opset_of, prepare, read_model
from toolchain.onnx_import.registry import CONVERTERS, supported_ops

SHAPE_DATA_ELEMENTS = 1024  # constants up to this size feed shape inference their values


@dataclass
class ImportedModel:
    graph: FloatGraph
    model: onnx.ModelProto          # the prepared model (batch pinned to 1, shapes inferred)
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
    unknown or over the limit is refused before anything is computed."""
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
    for name, shape in zip(outputs, _folded_shapes(node, ctx, outputs)):
        if shape is None:
            raise ShapeError(f"{ctx.node_label(node)}: the size of constant {name!r} cannot be "
                             "determined before evaluating it; refused")
        if math.prod(shape) > loader.MAX_TENSOR_ELEMENTS:
            raise ShapeError(f"{ctx.node_label(node)}: constant {name!r} would have shape "
                             f"{list(shape)} ({math.prod(shape)} elements), over the "
                             f"{loader.MAX_TENSOR_ELEMENTS} limit; refused before evaluating it")
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
    return True


def _untyped(names):
    return [helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None) for n in names]


def _folded_shapes(node, ctx, outputs) -> list[tuple[int, ...] | None]:
    """Output shapes of a node about to be folded, inferred for this node alone from its constant
    inputs (small ones by value), not from shapes the file declares; None where unknown."""
    values, typed = [], []
    try:
        for i in dict.fromkeys(filter(None, node.input)):
            v = np.asarray(ctx.consts[i])
            if v.size <= SHAPE_DATA_ELEMENTS:
                values.append(numpy_helper.from_array(v, i))
            else:
                typed.append(helper.make_tensor_value_info(
                    i, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape))
        graph = helper.make_graph([node], "fold", typed, _untyped(outputs), values)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ctx.opset)])
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    except Exception as exc:
        raise ModelError(f"{ctx.node_label(node)}: cannot infer the shape of its constant output "
                         f"({str(exc)[:200]})") from None
    shapes = []
    for o in inferred.graph.output:
        tt = o.type.tensor_type
        known = tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim)
        shapes.append(tuple(d.dim_value for d in tt.shape.dim) if known else None)
    return shapes


def _fold_all(model: onnx.ModelProto, where: str, opset: int):
    """Fold every constant subgraph, then — while some remaining tensor's shape is still unknown —
    write the folded values back as initializers and run shape inference again. The legacy torch
    exporter computes F.pad's pads with ConstantOfShape/Slice/Transpose…, which shape inference
    cannot see through until they are folded. Returns (model, context, nodes left to convert)."""
    for _ in range(4):
        ctx = ImportContext(model, where, opset)
        rest = [n for n in model.graph.node if not _fold_constant(n, ctx)]
        unknown = any(o and o not in ctx.shapes for n in rest for o in n.output)
        if not unknown or len(rest) == len(model.graph.node):
            return model, ctx, rest
        needed = {i for n in rest for i in n.input if i in ctx.consts}
        kept = {t.name for t in model.graph.initializer}
        refolded = onnx.ModelProto()
        refolded.CopyFrom(model)
        del refolded.graph.node[:]
        refolded.graph.node.extend(rest)
        refolded.graph.initializer.extend(numpy_helper.from_array(np.asarray(ctx.consts[i]), i)
                                          for i in sorted(needed - kept))
        try:
            model = onnx.shape_inference.infer_shapes(refolded, check_type=True, strict_mode=True,
                                                      data_prop=True)
        except Exception as exc:
            raise ShapeError(f"{where}: ONNX shape inference failed after constant folding: "
                             f"{str(exc).splitlines()[0][:300]}") from None
        loader.check_shapes(model.graph.value_info, where, "inferred tensor", set(ctx.consts))
    return model, ctx, rest


def import_onnx(path: str | os.PathLike, read=None) -> ImportedModel:
    """`read`: the (model, sha256) that loader.read_model already returned for `path`, if any."""
    raw, sha = read or read_model(path)  # every tensor's type, size and data checked
    where = str(path)
    raw, upgraded = loader.upgrade_opset(raw, where)
    opset = opset_of(raw, where)
    source = onnx.ModelProto()
    source.CopyFrom(raw)
    model, input_name = prepare(raw, where)
    model, ctx, rest = _fold_all(model, where, opset)
    ctx.fg.add(input_name, "input", [], ctx.shapes[input_name][1:])
    for node in rest:
        for i in filter(None, node.input):
            ctx.readers.setdefault(i, []).append(node)
    for node in rest:
        conv = CONVERTERS.get(node.op_type)
        if conv is None:
            raise UnsupportedOpError(f"{ctx.node_label(node)}: op {node.op_type!r} is not "
                                     f"supported. Supported ops: {', '.join(supported_ops())}")
        conv.fn(node, ctx)
    out = ctx.alias.get(ctx.graph_output, ctx.graph_output)
    if out not in ctx.fg.g:
        raise ModelError(f"{where}: graph output {ctx.graph_output!r} is not computed from the input")
    ctx.fg.output = out
    notes = [upgraded] if upgraded else []
    if ctx.softmax:
        notes.append(f"final {ctx.softmax} dropped from the spiking graph; applied by the readout")
    folded = fold_affine(ctx.fg)
    if folded:
        notes.append(f"{folded} BatchNormalization/bias/scale nodes folded into conv/dense weights")
    meta = {p.key: p.value for p in raw.metadata_props}
    return ImportedModel(ctx.fg, model, source, input_name, ctx.graph_output, sha, opset, ctx.softmax,
                         meta, notes)
