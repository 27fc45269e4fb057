"""The onnx package's nine light model-zoo graphs (onnx/backend/test/data/light: AlexNet,
DenseNet-121, Inception-v1/v2, ResNet-50, ShuffleNet, SqueezeNet, VGG-19, ZFNet; opset 9, 224×224
inputs) with seeded He-normal weights in place of their ConstantOfShape weights
(`light_zoo.model`). Every graph either imports to a float graph with the ops counted here, or is
refused with a message naming the node, the op and the reason. The unchanged SqueezeNet file
imports too: opset 9 converted to 13, its ConstantOfShape weights folded.
"""
from __future__ import annotations

import collections

import numpy as np
import onnx
import pytest

import light_zoo
from toolchain.errors import ToolchainError
from toolchain.onnx_import import import_onnx

# float-graph op counts of the graphs that import (BatchNorm folded into the conv before it, or
# with the Mul and Add after it into one affine; an LRN as x² and power tables, a 1×1 band conv
# and a product), or the refusal
EXPECTED = {
    "alexnet": {"input": 1, "conv": 7, "relu": 7, "table": 4, "affine": 2, "mul2": 2,
                "maxpool": 3, "reshape": 1, "dense": 3},
    "densenet121": {"input": 1, "conv": 121, "relu": 121, "affine": 62, "concat": 58,
                    "maxpool": 1, "avgpool": 4},
    "inception_v1": {"input": 1, "conv": 59, "relu": 57, "maxpool": 13, "table": 4, "affine": 2,
                     "mul2": 2, "concat": 9, "avgpool": 1, "reshape": 1, "dense": 1},
    "inception_v2": {"input": 1, "conv": 69, "relu": 69, "concat": 10, "maxpool": 5,
                     "avgpool": 8, "reshape": 1, "dense": 1},
    "resnet50": {"input": 1, "conv": 53, "relu": 49, "add": 16, "maxpool": 1, "avgpool": 1,
                 "reshape": 1, "dense": 1},
    "shufflenet": {"input": 1, "conv": 49, "relu": 33, "add": 13, "concat": 3, "maxpool": 1,
                   "avgpool": 4, "reshape": 33, "transpose": 16, "dense": 1},
    "squeezenet": {"input": 1, "conv": 26, "relu": 26, "concat": 8, "maxpool": 3, "avgpool": 1,
                   "reshape": 1},
    "vgg19": {"input": 1, "conv": 16, "relu": 18, "maxpool": 5, "reshape": 1, "dense": 3},
    "zfnet": {"input": 1, "conv": 7, "relu": 7, "table": 4, "affine": 2, "mul2": 2,
              "maxpool": 3, "reshape": 1, "dense": 3},
}
SLOW = {"vgg19", "alexnet", "zfnet", "densenet121"}   # 15–50 s each


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in sorted(EXPECTED)])
def test_light_zoo_imports_or_is_refused_by_name(name, tmp_path):
    path = tmp_path / f"{name}.onnx"
    onnx.save(light_zoo.model(name), path)   # the proto is freed before the import reads it
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
    assert graph[graph.input]["shape"] == (3, 224, 224)
    if name in ("inception_v2", "shufflenet"):   # 3×3 average pools, count_include_pad=0
        divided = [n for n, d in graph.g.nodes(data=True)
                   if d["op"] == "avgpool" and "divisor" in d["params"]]
        assert len(divided) == {"inception_v2": 7, "shufflenet": 3}[name]
    if name in ("squeezenet", "inception_v2", "resnet50", "shufflenet"):   # Softmax → readout
        assert imported.softmax == "softmax"


def test_the_unchanged_light_squeezenet_imports():
    """The file as the onnx package ships it: opset 9 (converted to 13, a note says so), every
    weight a ConstantOfShape (folded to a constant, not counted as an activation)."""
    imported = import_onnx(light_zoo.LIGHT / "light_squeezenet.onnx")
    assert "opset 9 converted to 13 by onnx.version_converter" in imported.notes
    convs = [d for _, d in imported.graph.g.nodes(data=True) if d["op"] == "conv"]
    assert len(convs) == 26 and all(np.ptp(d["params"]["W"]) == 0 for d in convs)
