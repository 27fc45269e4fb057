"""The integer reference: an SFN graph written as a plain ONNX model onnxruntime runs.

Float32 ops on integer values (exact: every accumulator is statically bounded below 2²⁴); the
neuron arithmetic (division by θ, floor) in float64, exact for 24-bit operands. It spells out the
T = 1 equations of `sim.semantics` with standard ops, so it is an independent oracle for both
simulators. Outputs: `output` (the readout, before any softmax) and `accumulator` (integers).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from sim import semantics
from sim.artifact import Artifact
from toolchain.errors import UnsupportedOpError

OPSET = 17


class _Builder:
    def __init__(self):
        self.nodes, self.inits, self.count = [], [], 0

    def const(self, value, dtype=np.float32) -> str:
        self.count += 1
        name = f"c{self.count}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type, inputs, **attrs) -> str:
        self.count += 1
        out = f"t{self.count}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out


def _batched(a: np.ndarray) -> np.ndarray:
    return np.asarray(a)[None]


def _neuron(b: _Builder, node, x: str) -> str:
    if node.decay < semantics.LEAK_ONE:
        raise UnsupportedOpError(f"neuron {node.name!r}: leaky neurons have no T = 1 reference")
    v = b.op("Cast", [x], to=TensorProto.DOUBLE)
    offset = 0 if node.fire == "adaptive" else node.threshold // 2
    v = b.op("Add", [v, b.const(_batched(node.bias + offset), np.float64)])
    v = b.op("Clip", [v, b.const(-semantics.V_MAX, np.float64), b.const(semantics.V_MAX, np.float64)])
    if node.fire == "adaptive":
        ge = b.op("GreaterOrEqual", [b.op("Unsqueeze", [v, b.const([-1], np.int64)]),
                                     b.const(_batched(node.thresholds), np.float64)])
        count = b.op("ReduceSum", [b.op("Cast", [ge], to=TensorProto.INT64),
                                   b.const([-1], np.int64)], keepdims=0)
        n = b.op("Gather", [b.const(node.payload, np.float32), count], axis=0)
        return n
    q = b.op("Floor", [b.op("Div", [v, b.const(_batched(node.threshold), np.float64)])])
    q = b.op("Clip", [q, b.const(node.lo, np.float64), b.const(node.hi, np.float64)])
    return b.op("Cast", [q], to=TensorProto.FLOAT)


def _shift(b: _Builder, x: str, exp: int) -> str:
    return b.op("Mul", [x, b.const(2.0 ** exp)]) if exp else x


def emit_reference(art: Artifact) -> onnx.ModelProto:
    b = _Builder()
    values: dict[str, str] = {}
    for node in art.nodes:
        ins = [values[i] for i in node.inputs]
        k = node.kind
        if k == "input":
            x = b.op("Mul", ["input", b.const(np.float32(node.inv_scale))])
            x = b.op("Floor", [b.op("Add", [x, b.const(0.5)])])
            out = b.op("Clip", [x, b.const(node.lo), b.const(node.hi)])
        elif k == "dense":
            out = _shift(b, b.op("MatMul", [ins[0], b.const(node.weight.T)]), node.weight_exp)
        elif k == "conv":
            out = b.op("Conv", [ins[0], b.const(node.weight)], strides=list(node.stride),
                       pads=[node.pads[0], node.pads[1], node.pads[2], node.pads[3]],
                       dilations=list(node.dilation), group=node.groups)
            out = _shift(b, out, node.weight_exp)
        elif k == "sumpool":
            c = node.shape[0]
            out = b.op("Conv", [ins[0], b.const(np.ones((c, 1) + tuple(node.kernel)))],
                       strides=list(node.stride), pads=list(node.pads), group=c)
        elif k == "maxpool":
            out = b.op("MaxPool", [ins[0]], kernel_shape=list(node.kernel),
                       strides=list(node.stride), pads=list(node.pads),
                       dilations=list(node.dilation))
        elif k == "add":
            terms = [b.op("Mul", [x, b.const(_batched(node.gains[i] * 2.0 ** node.exps[i]))])
                     for i, x in enumerate(ins)]
            out = terms[0]
            for t in terms[1:]:
                out = b.op("Add", [out, t])
        elif k == "neuron":
            out = _neuron(b, node, ins[0])
        elif k == "concat":
            out = b.op("Concat", ins, axis=node.axis + 1)
        elif k == "reshape":
            out = b.op("Reshape", [ins[0], b.const([-1] + list(node.shape), np.int64)])
        elif k == "transpose":
            out = b.op("Transpose", [ins[0]], perm=[0] + [p + 1 for p in node.perm])
        elif k == "readout":
            b.nodes.append(helper.make_node("Identity", [ins[0]], ["accumulator"]))
            y = b.op("Add", [ins[0], b.const(_batched(node.bias))])
            b.nodes.append(helper.make_node("Mul", [y, b.const(_batched(node.scale))], ["output"]))
            out = "output"
        else:
            raise UnsupportedOpError(f"node {node.name!r}: no reference for kind {k!r}")
        values[node.name] = out
    dyn = lambda shape: ["N"] + list(shape)
    graph = helper.make_graph(
        b.nodes, "sfn_reference",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, dyn(art.input_shape))],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, dyn(art.output_shape)),
         helper.make_tensor_value_info("accumulator", TensorProto.FLOAT, dyn(art.output_shape))],
        b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="sfn-toolchain reference")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
