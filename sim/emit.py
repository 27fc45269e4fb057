"""SFN graphs written as plain ONNX models that onnxruntime runs.

Every node kind writes its own T = 1 equations with standard ONNX ops (`Node.emit`, sim.ops)
through a `Builder`; `model` assembles what they wrote. Two writers use it: the integer
reference (toolchain.reference: the nodes' own forms, an oracle independent of both
simulators) and sim.cpu's graph engine (sim/cpu/graph.py: faster forms where a static bound
proves them exact, the nodes' own forms elsewhere).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


class Builder:
    """What a node kind's `emit` writes with: constants, ops, the graph's named outputs."""
    DOUBLE, INT64, FLOAT = TensorProto.DOUBLE, TensorProto.INT64, TensorProto.FLOAT
    model_input = "input"

    def __init__(self):
        self.nodes, self.inits, self.count = [], [], 0
        self.in_shapes: list[tuple] = []   # per-sample shapes of the inputs of the node written
        self.rank = 1                      # the rank of its output, batch axis included

    def const(self, value, dtype=np.float32) -> str:
        self.count += 1
        name = f"c{self.count}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type, inputs, **attrs) -> str:
        self.count += 1
        out = f"t{self.count}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
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


def write(b: Builder, nodes, form=None) -> dict[str, str]:
    """Every node written in order with `b`: `form(node, ins)` first when given (None: the
    node's own `emit`). Returns {node: its output tensor}."""
    values: dict[str, str] = {}
    shapes: dict[str, tuple] = {}
    for node in nodes:
        ins = [values[i] for i in node.inputs]
        b.in_shapes = [shapes[i] for i in node.inputs]
        b.rank = 1 + len(node.shape)
        out = form(node, ins) if form is not None else None
        values[node.name] = out if out is not None else node.emit(b, ins)
        shapes[node.name] = tuple(node.shape)
    return values


def model(b: Builder, input_shape, outputs: dict[str, tuple], name: str,
          producer: str) -> onnx.ModelProto:
    """The checked ONNX model of what `b` wrote: one float32 input `input` (N, *input_shape),
    the float32 outputs {name: (N, *shape)} (the leading axis dynamic; shape None: a
    scalar)."""
    dyn = lambda shape: [] if shape is None else ["N"] + list(shape)
    graph = helper.make_graph(
        b.nodes, name,
        [helper.make_tensor_value_info(b.model_input, TensorProto.FLOAT, dyn(input_shape))],
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, dyn(s)) for k, s in outputs.items()],
        b.inits)
    out = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                            producer_name=producer)
    out.ir_version = 8
    onnx.checker.check_model(out)
    return out
