"""The integer reference: an SFN graph written as a plain ONNX model onnxruntime runs.

Float32 ops on integer values (exact: every accumulator is statically bounded below 2²⁴); the
neuron arithmetic (division by θ, floor) in float64, exact for 24-bit operands. Each node kind
writes its own T = 1 equations with standard ops (`Node.emit`, sim.ops), so the model is an
oracle independent of both simulators. Outputs, as the simulators' SimResult names them:
`output` (what the ONNX model outputs: the readout through its final softmax, if it had one),
`logits` (the readout before it) and `accumulator` (integers).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from sim.artifact import Artifact

OPSET = 17


class Builder:
    """What a node kind's `emit` writes with: constants, ops, the graph's named outputs."""
    DOUBLE, INT64, FLOAT = TensorProto.DOUBLE, TensorProto.INT64, TensorProto.FLOAT
    model_input = "input"

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

    def output(self, name: str, op_type: str, inputs, **attrs) -> str:
        """An op whose result is the graph output `name`."""
        self.nodes.append(helper.make_node(op_type, inputs, [name], **attrs))
        return name

    def shift(self, x: str, exp: int) -> str:
        """sim.semantics.shift: x · 2^exp, floored when exp < 0 (exact in float32: x is an
        integer below 2²⁴ and a power of two scales it without rounding)."""
        return self.floor_below_one(self.op("Mul", [x, self.const(2.0 ** exp)]), exp) \
            if exp else x

    def shift_round(self, x: str, shift: int) -> str:
        """floor((x + 2^(shift−1)) / 2^shift) of an integer x (float64: exact below 2⁵³)."""
        if not shift:
            return x
        y = self.op("Add", [x, self.const(2.0 ** (shift - 1), np.float64)])
        return self.op("Floor", [self.op("Mul", [y, self.const(2.0 ** -shift, np.float64)])])

    def floor_below_one(self, x: str, exp: int) -> str:
        """x floored when it was scaled by 2^exp with exp < 0 (an integer otherwise)."""
        return self.op("Floor", [x]) if exp < 0 else x


def emit_reference(art: Artifact) -> onnx.ModelProto:
    b = Builder()
    values: dict[str, str] = {}
    for node in art.nodes:
        values[node.name] = node.emit(b, [values[i] for i in node.inputs])
    dyn = lambda shape: ["N"] + list(shape)
    graph = helper.make_graph(
        b.nodes, "sfn_reference",
        [helper.make_tensor_value_info(b.model_input, TensorProto.FLOAT, dyn(art.input_shape))],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, dyn(art.output_shape)),
         helper.make_tensor_value_info("accumulator", TensorProto.FLOAT, dyn(art.output_shape)),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, dyn(art.output_shape))],
        b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="sfn-toolchain reference")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
