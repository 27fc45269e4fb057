"""Real architectures from the onnx package's light model zoo (`onnx/backend/test/data/light`:
AlexNet, DenseNet-121, Inception-v1/v2, ResNet-50, ShuffleNet, SqueezeNet, VGG-19, ZFNet; opset 9,
every weight a constant) with seeded He-normal weights in place of the constants, so that their
activations have the statistics of a trained network's rather than of a constant one.

`model(name)` returns an `onnx.ModelProto` at opset 13 whose parameters are initializers:
convolution and Gemm weights He-normal (std √(2/fan_in)), biases 0, BatchNormalization scale 1,
shift N(0, 0.1), mean 0, variance 1 (DenseNet-121's decomposed form: Mul by 1, Add N(0, 0.1)).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper, version_converter

LIGHT = Path(os.path.dirname(onnx.__file__)) / "backend" / "test" / "data" / "light"
NAMES = {"alexnet": "light_bvlc_alexnet", "densenet121": "light_densenet121",
         "inception_v1": "light_inception_v1", "inception_v2": "light_inception_v2",
         "resnet50": "light_resnet50", "shufflenet": "light_shufflenet",
         "squeezenet": "light_squeezenet", "vgg19": "light_vgg19", "zfnet": "light_zfnet512"}


def _role(graph: onnx.GraphProto, name: str) -> tuple[str, int]:
    """(op type, input index) of the first node reading tensor `name` through any Unsqueeze."""
    for node in graph.node:
        for k, i in enumerate(node.input):
            if i == name:
                if node.op_type == "Unsqueeze":
                    return _role(graph, node.output[0])
                return node.op_type, k
    return "", -1


def _value(role: tuple[str, int], shape: tuple[int, ...], rng, gemm_trans_b: bool) -> np.ndarray:
    op, k = role
    if op == "Conv" and k == 1:
        fan_in = int(np.prod(shape[1:]))
        return rng.normal(0, np.sqrt(2.0 / fan_in), shape)
    if op == "Gemm" and k == 1:
        fan_in = shape[1] if gemm_trans_b else shape[0]
        return rng.normal(0, np.sqrt(2.0 / fan_in), shape)
    if op == "BatchNormalization":
        return {1: np.ones(shape), 2: rng.normal(0, 0.1, shape), 3: np.zeros(shape),
                4: np.ones(shape)}[k]
    if op == "Mul":
        return np.ones(shape)
    if op == "Add":
        return rng.normal(0, 0.1, shape)
    return np.zeros(shape)           # biases


def model(name: str, seed: int = 0) -> onnx.ModelProto:
    m = onnx.load(str(LIGHT / f"{NAMES[name]}.onnx"))
    g = m.graph
    rng = np.random.default_rng(seed)
    shapes = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    trans_b = {n.input[1]: any(a.name == "transB" and a.i for a in n.attribute)
               for n in g.node if n.op_type == "Gemm"}
    params: dict[str, np.ndarray] = {}
    keep_nodes = []
    for node in g.node:
        if node.op_type == "ConstantOfShape":
            shape = tuple(int(d) for d in shapes[node.input[0]])
            params[node.output[0]] = _value(_role(g, node.output[0]), shape, rng,
                                            trans_b.get(node.output[0], False))
        else:
            keep_nodes.append(node)
    used_shapes = {n.input[0] for n in g.node if n.op_type == "ConstantOfShape"}
    for t in g.initializer:
        if t.name not in used_shapes and t.name not in params:
            a = numpy_helper.to_array(t)
            role = _role(g, t.name)
            params[t.name] = _value(role, a.shape, rng, trans_b.get(t.name, False)) \
                if a.dtype.kind == "f" else a
    del g.node[:]
    g.node.extend(keep_nodes)
    del g.initializer[:]
    g.initializer.extend(numpy_helper.from_array(np.asarray(v, np.float32 if
                                                            np.asarray(v).dtype.kind == "f"
                                                            else np.asarray(v).dtype), k)
                         for k, v in params.items())
    data = [i for i in g.input if i.name not in params and i.name not in used_shapes]
    del g.input[:]
    g.input.extend(data)
    m.ir_version = max(m.ir_version, 7)    # initializers need not be listed as inputs
    m = version_converter.convert_version(m, 13)
    onnx.checker.check_model(m)
    return m


def input_shape(m: onnx.ModelProto) -> tuple[int, ...]:
    return tuple(d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim)
