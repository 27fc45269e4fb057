"""The onnx package's nine light model-zoo graphs (onnx/backend/test/data/light: AlexNet,
DenseNet-121, Inception-v1/v2, ResNet-50, ShuffleNet, SqueezeNet, VGG-19, ZFNet; opset 9, 224×224
inputs). Their weights are ConstantOfShape nodes (one value everywhere); each is replaced by a
seeded He-normal initializer (biases and BatchNorm shifts small, BatchNorm statistics mean 0,
variance 1, scale 1). Every graph either imports to a float graph with the ops counted here, or is
refused with a message naming the node, the op and the reason.
"""
from __future__ import annotations

import collections
import os

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from toolchain.errors import ToolchainError
from toolchain.onnx_import import import_onnx

LIGHT = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
FOLLOW = ("Unsqueeze", "Reshape", "Squeeze")
LRN = (r"\(LRN, opset 13\): LRN divides by a function of a sum of squares of activations, a "
       r"product of two activations; it is supported once products of activations are")

# float-graph op counts of the graphs that import (BatchNorm folded into the conv before it, or
# with the Mul and Add after it into one affine), or the refusal
EXPECTED = {
    "bvlc_alexnet": LRN,
    "densenet121": {"input": 1, "conv": 121, "relu": 121, "affine": 62, "concat": 58,
                    "maxpool": 1, "avgpool": 4},
    "inception_v1": LRN,
    "inception_v2": {"input": 1, "conv": 69, "relu": 69, "concat": 10, "maxpool": 5,
                     "avgpool": 8, "reshape": 1, "dense": 1},
    "resnet50": {"input": 1, "conv": 53, "relu": 49, "add": 16, "maxpool": 1, "avgpool": 1,
                 "reshape": 1, "dense": 1},
    "shufflenet": {"input": 1, "conv": 49, "relu": 33, "add": 13, "concat": 3, "maxpool": 1,
                   "avgpool": 4, "reshape": 33, "transpose": 16, "dense": 1},
    "squeezenet": {"input": 1, "conv": 26, "relu": 26, "concat": 8, "maxpool": 3, "avgpool": 1,
                   "reshape": 1},
    "vgg19": {"input": 1, "conv": 16, "relu": 18, "maxpool": 5, "reshape": 1, "dense": 3},
    "zfnet512": LRN,
}
SLOW = {"vgg19", "bvlc_alexnet", "zfnet512", "densenet121"}   # 15–50 s each


def _role(model: onnx.ModelProto, name: str) -> tuple[str, int]:
    """(op type, input index) of the node that finally reads constant `name`, following the
    reshapes a weight passes through."""
    readers = collections.defaultdict(list)
    for node in model.graph.node:
        for k, i in enumerate(node.input):
            readers[i].append((node, k))
    while True:
        (node, k), *_ = readers[name]
        if node.op_type not in FOLLOW:
            return node.op_type, k
        name = node.output[0]


def seeded(name: str, seed: int = 0) -> onnx.ModelProto:
    """The light graph `name` with every ConstantOfShape weight replaced by an initializer."""
    model = onnx.load(os.path.join(LIGHT, f"light_{name}.onnx"))
    rng = np.random.default_rng(seed)
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    kept, inits = [], []
    for node in model.graph.node:
        if node.op_type != "ConstantOfShape":
            kept.append(node)
            continue
        shape = tuple(int(d) for d in consts[node.input[0]])
        op, k = _role(model, node.output[0])
        if (op, k) in (("Conv", 1), ("Gemm", 1)):
            fan_in = int(np.prod(shape[1:]))
            value = rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2 / fan_in))
        elif (op, k) in (("BatchNormalization", 1), ("BatchNormalization", 4), ("Mul", 1)):
            value = np.ones(shape)
        elif (op, k) == ("BatchNormalization", 3):
            value = np.zeros(shape)
        else:                                  # biases, BatchNorm and Add shifts
            value = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.01)
        inits.append(numpy_helper.from_array(value.astype(np.float32), node.output[0]))
    del model.graph.node[:]
    model.graph.node.extend(kept)
    model.graph.initializer.extend(inits)
    model.ir_version = max(model.ir_version, 4)   # initializers need not be graph inputs
    return model


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in sorted(EXPECTED)])
def test_light_zoo_imports_or_is_refused_by_name(name, tmp_path):
    path = tmp_path / f"{name}.onnx"
    onnx.save(seeded(name), path)        # the proto is freed before the import reads the file
    expected = EXPECTED[name]
    if isinstance(expected, str):
        with pytest.raises(ToolchainError, match=expected) as info:
            import_onnx(path)
        assert "node '" in str(info.value)
        return
    imported = import_onnx(path)
    graph = imported.graph
    ops = collections.Counter(d["op"] for _, d in graph.g.nodes(data=True))
    assert dict(ops) == expected
    assert "opset 9 converted to 13 by onnx.version_converter" in imported.notes
    assert graph[graph.input]["shape"] == (3, 224, 224)
    if name in ("inception_v2", "shufflenet"):   # 3×3 average pools, count_include_pad=0
        divided = [n for n, d in graph.g.nodes(data=True)
                   if d["op"] == "avgpool" and "divisor" in d["params"]]
        assert len(divided) == {"inception_v2": 7, "shufflenet": 3}[name]
    if name in ("squeezenet", "inception_v2", "resnet50", "shufflenet"):   # Softmax → readout
        assert imported.softmax == "softmax"
