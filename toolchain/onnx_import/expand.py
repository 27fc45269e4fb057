"""Composite ONNX ops written out as the primitive ops they compute, before shape inference and
calibration: every intermediate becomes a named tensor that onnxruntime computes, so calibration
measures the range of each neuron the spiking graph will have.

- LayerNormalization (opset 17+, normalized over the last axis):
  m = mean(x), c = x − m, v = mean(c·c), r = 1/sqrt(v + ε), y = c·r·γ + β.
- Softmax over the last axis that is not the graph's final op (attention weights):
  m = max(x), e = exp(x − m), s = sum(e), y = e · (1/s). Subtracting the row maximum makes
  the largest term exactly 1, so the sum lies in [1, n] whatever the scores' range.
- Div of two tensors (neither an initializer nor a Constant): a · Reciprocal(b), a product and
  a table (RMSNorm's x / sqrt(mean x² + ε)).
- LRN over the channels of (N, C, H, W): s = Conv1×1(x·x) with a band of ones over each
  channel's window, y = x · (bias + α/size · s)^(−β).

The tensors get the composite's output name plus a suffix ("/mean", "/centred", …); the last
op keeps the composite's output name. A final Softmax stays (the readout applies it).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from toolchain.errors import UnsupportedOpError

RESHAPES = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout")


def _reaches_output(model: onnx.ModelProto, name: str, readers: dict) -> bool:
    """Whether tensor `name` reaches the graph output through one-reader reshapes only."""
    out = model.graph.output[0].name
    while name != out:
        r = readers.get(name, [])
        if len(r) != 1 or r[0].op_type not in RESHAPES:
            return False
        name = r[0].output[0]
    return True


class _Writer:
    """Builds the replacement nodes of one composite: reductions in the opset's form."""

    def __init__(self, node: onnx.NodeProto, opset: int, inits: list):
        self.node, self.opset, self.inits, self.nodes = node, opset, inits, []
        self.base = node.output[0]

    def const(self, suffix: str, value) -> str:
        name = f"{self.base}/{suffix}"
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], suffix: str | None, **attrs) -> str:
        out = self.base if suffix is None else f"{self.base}/{suffix}"
        self.nodes.append(helper.make_node(op_type, inputs, [out],
                                           name=f"{self.node.name or self.base}/{op_type}"
                                                f"{len(self.nodes)}", **attrs))
        return out

    def reduce(self, op_type: str, x: str, suffix: str) -> str:
        """op over the last axis, keeping it (size 1)."""
        axes_as_input = self.opset >= (13 if op_type == "ReduceSum" else 18)
        if axes_as_input:
            return self.op(op_type, [x, self.const(f"{suffix}_axes",
                                                   np.array([-1], np.int64))], suffix,
                           keepdims=1)
        return self.op(op_type, [x], suffix, axes=[-1], keepdims=1)


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _layer_norm(node, w: _Writer, rank: int | None, where: str) -> None:
    axis = _attr(node, "axis", -1)
    if rank is not None and axis % rank != rank - 1:
        raise UnsupportedOpError(f"{where}: node {node.name or node.output[0]!r} "
                                 f"(LayerNormalization): normalized over axis {axis} of a "
                                 f"rank-{rank} tensor; only the last axis is supported")
    if any(o for o in node.output[1:]):
        raise UnsupportedOpError(f"{where}: node {node.name or node.output[0]!r} "
                                 "(LayerNormalization): its Mean/InvStdDev outputs are read")
    eps = float(_attr(node, "epsilon", 1e-5))
    x = node.input[0]
    mean = w.reduce("ReduceMean", x, "mean")
    c = w.op("Sub", [x, mean], "centred")
    var = w.reduce("ReduceMean", w.op("Mul", [c, c], "square"), "variance")
    std = w.op("Sqrt", [w.op("Add", [var, w.const("epsilon", np.float32(eps))], "variance_eps")],
               "std")
    y = w.op("Mul", [c, w.op("Reciprocal", [std], "rstd")], "normalized")
    has_bias = len(node.input) > 2 and node.input[2]
    y = w.op("Mul", [y, node.input[1]], "scaled" if has_bias else None)
    if has_bias:
        w.op("Add", [y, node.input[2]], None)


def _lrn(node, w: _Writer, shape: list | None, where: str) -> None:
    """y = x / (bias + α/size · Σ x²)^β, the sum over a window of `size` channels (ONNX's
    bounds): x² a table, the window sum a 1×1 convolution with a band of ones, the power a
    table of that sum, and the division a product."""
    if shape is None or len(shape) != 4 or not isinstance(shape[1], int) or shape[1] < 1:
        raise UnsupportedOpError(f"{where}: node {node.name or node.output[0]!r} (LRN): input "
                                 f"shape {shape}; supported: (N, C, H, W) with a static C")
    size = int(_attr(node, "size"))
    alpha, beta = float(_attr(node, "alpha", 1e-4)), float(_attr(node, "beta", 0.75))
    bias = float(_attr(node, "bias", 1.0))
    channels, below = shape[1], (size - 1) // 2
    band = np.zeros((channels, channels, 1, 1), np.float32)
    for c in range(channels):
        band[c, max(0, c - below):min(channels, c + size - below), 0, 0] = 1.0
    x = node.input[0]
    window = w.op("Conv", [w.op("Mul", [x, x], "square"), w.const("band", band)], "window",
                  kernel_shape=[1, 1])
    scaled = w.op("Add", [w.op("Mul", [window, w.const("alpha", np.float32(alpha / size))],
                               "scaled"), w.const("bias", np.float32(bias))], "base")
    w.op("Mul", [x, w.op("Pow", [scaled, w.const("minus_beta", np.float32(-beta))],
                         "inverse")], None)


def _softmax(node, w: _Writer) -> None:
    x = node.input[0]
    m = w.reduce("ReduceMax", x, "max")
    e = w.op("Exp", [w.op("Sub", [x, m], "shifted")], "exp")
    s = w.reduce("ReduceSum", e, "sum")
    w.op("Mul", [e, w.op("Reciprocal", [s], "inverse")], None)


def expand_composites(model: onnx.ModelProto, shapes: onnx.ModelProto, where: str,
                      opset: int) -> tuple[onnx.ModelProto, list[str]]:
    """The model with its LayerNormalization and LRN ops, non-final last-axis Softmax ops and
    Divs of two activations written
    out (module docstring), and notes saying how many; the model itself when there are none.
    `shapes`: the model with inferred shapes (loader.prepare), for the ranks."""
    g = model.graph
    readers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    dims = {}
    sg = shapes.graph
    for vi in list(sg.input) + list(sg.value_info) + list(sg.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            dims[vi.name] = [d.dim_value if d.HasField("dim_value") else d.dim_param
                             for d in vi.type.tensor_type.shape.dim]
    ranks = {name: len(d) for name, d in dims.items()}
    direct = {t.name for t in g.initializer} | {o for n in g.node if n.op_type == "Constant"
                                                  for o in n.output}
    targets = [k for k, n in enumerate(g.node)
               if n.domain in ("", "ai.onnx") and (
                   n.op_type in ("LayerNormalization", "LRN") or
                   (n.op_type == "Softmax" and not _reaches_output(model, n.output[0], readers))
                   or (n.op_type == "Div" and not (set(n.input) & direct)))]
    if not targets:
        return model, []
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    counts = {"LayerNormalization": 0, "LRN": 0, "Softmax": 0, "Div": 0}
    inits: list = []
    for k, n in enumerate(g.node):
        if k not in targets:
            out.graph.node.append(n)
            continue
        w = _Writer(n, opset, inits)
        if n.op_type == "LayerNormalization":
            _layer_norm(n, w, ranks.get(n.input[0]), where)
        elif n.op_type == "LRN":
            _lrn(n, w, dims.get(n.input[0]), where)
        elif n.op_type == "Div":
            w.op("Mul", [n.input[0], w.op("Reciprocal", [n.input[1]], "reciprocal")], None)
        else:
            rank = ranks.get(n.input[0])
            axis = _attr(n, "axis", -1 if opset >= 13 else 1)
            if rank is None or axis % rank != rank - 1:
                raise UnsupportedOpError(
                    f"{where}: node {n.name or n.output[0]!r} (Softmax): over axis {axis} of a "
                    f"rank-{rank} tensor inside the network; only the last axis is supported")
            _softmax(n, w)
        counts[n.op_type] += 1
        out.graph.node.extend(w.nodes)
    out.graph.initializer.extend(inits)
    notes = [f"{v} {k} written out as primitive ops" for k, v in counts.items() if v]
    return out, notes
