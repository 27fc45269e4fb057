"""SFN graphs written as plain ONNX models that onnxruntime runs.

Every node kind writes its own T = 1 equations with standard ONNX ops (`Node.emit`, sim.ops)
through a `Builder`; `model` assembles what they wrote. Tensors hold exact integers in float32:
a product or sum whose unshifted partial sums float32 does not hold (the builder's input
bounds say so) is computed in float64 — a convolution in input-channel slices, onnxruntime
having no float64 convolution — and its result cast back. A result itself beyond 2²⁴ rounds in
that cast; read by a neuron, whose 24-bit state saturates beyond it, that changes nothing, but
anywhere else the ONNX form is exact only while the values stay below 2²⁴ (the compiler's
networks keep them there; sim.cpu's graph engine keeps such values in float64 tensors or
leaves the run to its program).

Two writers use it: the integer reference (toolchain.reference: the nodes' own forms, an oracle
independent of both simulators) and sim.cpu's graph engine (sim/cpu/graph.py: faster forms
where a static bound proves them exact, the nodes' own forms elsewhere).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from sim.errors import UnsupportedOpError

OPSET = 17
# integers up to this magnitude are exact in float32, the dtype the model's tensors hold
FLOAT_EXACT = 2 ** 24


class Builder:
    """What a node kind's `emit` writes with: constants, ops, the graph's named outputs."""
    DOUBLE, INT64, FLOAT = TensorProto.DOUBLE, TensorProto.INT64, TensorProto.FLOAT
    FLOAT_EXACT = FLOAT_EXACT
    model_input = "input"

    def __init__(self):
        self.nodes, self.inits, self.count = [], [], 0
        self.in_shapes: list[tuple] = []   # per-sample shapes of the inputs of the node written
        self.in_bounds: list[float] = []   # bounds on their magnitudes (the kinds' `magnitude`)
        self.bounds: dict[str, float] = {}  # every node's bound, as `write` reaches it
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

    def shift(self, x: str, exp: int, dtype=np.float32) -> str:
        """sim.semantics.shift: x · 2^exp, floored when exp < 0 (exact: x is an integer the
        dtype holds and a power of two scales it without rounding)."""
        return self.floor_below_one(self.op("Mul", [x, self.const(2.0 ** exp, dtype)]), exp) \
            if exp else x

    def exact(self, bound: float, node) -> None:
        """Refuse, naming the node, a value that a float32 tensor cannot hold exactly."""
        if not bound < FLOAT_EXACT:
            raise UnsupportedOpError(
                f"{node.kind} {node.name!r}: values up to {bound:.4g} lie beyond float32's exact "
                "integers (2²⁴), which the ONNX form's tensors hold")

    def wide(self, x: str, scale, exp: int) -> str:
        """shift(x · scale, exp) in float64 (x a float32 tensor of integers, scale an array of
        integers), cast back to float32: for a product whose unshifted value float32 does not
        hold (module docstring)."""
        y = self.op("Mul", [self.op("Cast", [x], to=self.DOUBLE), self.const(scale, np.float64)])
        return self.op("Cast", [self.shift(y, exp, np.float64)], to=self.FLOAT)

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
    bounds = b.bounds
    for node in nodes:
        ins = [values[i] for i in node.inputs]
        b.in_shapes = [shapes[i] for i in node.inputs]
        b.in_bounds = [bounds[i] for i in node.inputs]
        bounds[node.name] = float(node.magnitude(b.in_bounds))
        b.rank = 1 + len(node.shape)
        out = form(node, ins) if form is not None else None
        values[node.name] = out if out is not None else node.emit(b, ins)
        shapes[node.name] = tuple(node.shape)
    return values


def model(b: Builder, input_shape, outputs: dict[str, tuple], name: str,
          producer: str, doubles=()) -> onnx.ModelProto:
    """The checked ONNX model of what `b` wrote: one float32 input `input` (N, *input_shape),
    the outputs {name: (N, *shape)} (the leading axis dynamic; shape None: a scalar), float32
    but for those named in `doubles` (float64)."""
    dyn = lambda shape: [] if shape is None else ["N"] + list(shape)
    kind = lambda k: TensorProto.DOUBLE if k in doubles else TensorProto.FLOAT
    graph = helper.make_graph(
        b.nodes, name,
        [helper.make_tensor_value_info(b.model_input, TensorProto.FLOAT, dyn(input_shape))],
        [helper.make_tensor_value_info(k, kind(k), dyn(s)) for k, s in outputs.items()],
        b.inits)
    out = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                            producer_name=producer)
    out.ir_version = 8
    onnx.checker.check_model(out)
    return out
