"""State shared by the converters while one ONNX graph is imported."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from toolchain.errors import ModelError, ShapeError, UnsupportedOpError
from toolchain.fgraph import FloatGraph


class ImportContext:
    """`model`: the model whose shapes (value_info, inputs, outputs) the converters see;
    `consts`: the constant values by name (default: `model`'s initializers, converted).
    `fold_budget`: bytes that constant folding may add to the constants in all
    (`folded_bytes` counts them)."""

    def __init__(self, model: onnx.ModelProto, where: str, opset: int,
                 consts: dict[str, np.ndarray] | None = None, fold_budget: int | None = None):
        self.where = where
        self.opset = opset
        self.fg = FloatGraph()
        self.consts: dict[str, np.ndarray] = {
            t.name: numpy_helper.to_array(t) for t in model.graph.initializer} \
            if consts is None else consts
        self.alias: dict[str, str] = {}
        self.readers: dict[str, list] = {}   # the ONNX nodes reading each tensor (import_onnx)
        self.final: set[str] = set()         # tensors after a final Softmax (its reshapes)
        self.moved: dict[str, tuple] = {}    # index maps with the batch axis moved (index.py)
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.graph_output = model.graph.output[0].name
        self.softmax = ""
        self.fold_budget = fold_budget
        self.folded_bytes = 0
        self.read_shapes(model)

    def read_shapes(self, model: onnx.ModelProto) -> None:
        """Record every fully static shape `model` declares or has inferred."""
        for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
            tt = vi.type.tensor_type
            if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
                self.shapes[vi.name] = tuple(d.dim_value for d in tt.shape.dim)

    # --- lookups -------------------------------------------------------------------------------
    def node_label(self, node: onnx.NodeProto) -> str:
        return f"{self.where}: node {node.name or node.output[0]!r} ({node.op_type}, opset {self.opset})"

    def fail(self, node: onnx.NodeProto, message: str):
        raise UnsupportedOpError(f"{self.node_label(node)}: {message}")

    def const(self, name: str) -> np.ndarray | None:
        return self.consts.get(name) if name else None

    def need_const(self, node, index: int, what: str) -> np.ndarray:
        name = node.input[index] if index < len(node.input) else ""
        value = self.const(name)
        if value is None:
            self.fail(node, f"{what} (input {index}, {name!r}) must be a constant")
        return value

    def tensor(self, node, name: str) -> str:
        """The float-graph node computing tensor `name` (following Identity/Dropout aliases)."""
        name = self.alias.get(name, name)
        if name not in self.fg.g:
            if name in self.consts:
                self.fail(node, f"input {name!r} is a constant where a tensor is expected")
            raise ModelError(f"{self.node_label(node)}: input {name!r} is not produced by any node")
        return name

    def shape(self, node, name: str) -> tuple[int, ...]:
        """Full static shape of tensor `name` (batch pinned to 1)."""
        if name not in self.shapes:
            raise ShapeError(f"{self.node_label(node)}: shape of {name!r} is unknown or dynamic "
                             "after shape inference")
        return self.shapes[name]

    def sample_shape(self, node, name: str) -> tuple[int, ...]:
        full = self.shape(node, name)
        if not full or full[0] != 1:
            self.fail(node, f"tensor {name!r} has shape {full}: the op moves the batch axis")
        return full[1:]

    @staticmethod
    def attr(node: onnx.NodeProto, name: str, default=None):
        for a in node.attribute:
            if a.name == name:
                return onnx.helper.get_attribute_value(a)
        return default

    # --- building ------------------------------------------------------------------------------
    def add(self, node, op: str, inputs: list[str], **params) -> str:
        out = node.output[0]
        if out in self.fg.g:
            raise ModelError(f"{self.node_label(node)}: output {out!r} is produced twice")
        return self.fg.add(out, op, inputs, self.sample_shape(node, out), **params)

    def full_constant(self, node, value: np.ndarray, name: str) -> np.ndarray:
        """A constant operand broadcast to the per-sample shape of tensor `name`."""
        shape = self.sample_shape(node, name)
        try:
            return np.broadcast_to(np.asarray(value, dtype=np.float64),
                                   (1,) + shape).reshape(shape).copy()
        except ValueError:
            self.fail(node, f"constant of shape {np.shape(value)} does not broadcast to {shape}")

    def per_channel_or_full(self, node, value: np.ndarray, name: str) -> tuple[np.ndarray, bool]:
        """(vector, False) for a constant that is the same within each channel of tensor `name`
        (scalar, (C,), (1,C,1,1), (C,1,1)); (the full per-sample array, True) otherwise (a
        positional embedding, a LayerNorm scale along the features of a token tensor)."""
        full = self.full_constant(node, value, name)
        per_channel = full.reshape(full.shape[0], -1)
        if np.all(per_channel == per_channel[:, :1]):
            return per_channel[:, 0].copy(), False
        return full, True

    def channel_vector(self, node, value: np.ndarray, name: str) -> np.ndarray:
        """A constant operand as a per-channel vector for tensor `name` (scalar, (C,), (1,C,1,1),
        (C,1,1) all allowed); anything that varies along other axes is refused."""
        vector, full = self.per_channel_or_full(node, value, name)
        if full:
            self.fail(node, f"constant of shape {np.shape(value)} varies within a channel; only "
                            "per-channel constants are supported")
        return vector
