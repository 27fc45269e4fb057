"""The digits example: the bundled CNNs convert at T = 1 within 0.1 point of float accuracy."""
import json
from pathlib import Path

import numpy as np
import pytest

import sim.cpu
from exporters.digits import load_digits_split
from toolchain.calibrate import grid_step
from toolchain.compiler import compile_onnx

MODELS = Path(__file__).resolve().parents[1] / "toolchain" / "data"


@pytest.fixture(scope="module")
def digits():
    return load_digits_split()


@pytest.mark.parametrize("name, bound", [("relu", 0.010), ("clipfloor", 0.003)])
def test_bundled_cnn_converts_within_bound(digits, name, bound):
    x_train, _, x_test, y_test = digits
    path = MODELS / f"digits_cnn_{name}.onnx"
    float_acc = json.loads((MODELS / "digits_models.json").read_text())[f"digits_cnn_{name}"][
        "test_accuracy"]
    compiled = compile_onnx(path, calib=x_train)
    res = sim.cpu.run(compiled.artifact, x_test)
    snn_acc = float((res.output.argmax(1) == y_test).mean())
    assert float_acc >= 0.97
    assert snn_acc >= float_acc - bound, (snn_acc, float_acc)
    assert compiled.agreement["top1_agreement"] >= 0.99
    assert sum(s.saturations for s in res.stats.values()) == 0


def test_clipfloor_levels_come_from_the_model(digits):
    compiled = compile_onnx(MODELS / "digits_cnn_clipfloor.onnx", calib=digits[0][:64])
    assert compiled.artifact.meta["levels"] == 15
    neurons = [n for n in compiled.artifact.nodes if n.kind == "neuron"]
    assert neurons and all(n.hi == 15 and n.lo == 0 for n in neurons)


def test_grid_inputs_are_encoded_losslessly(digits):
    x = digits[0]
    assert grid_step(x, 255) == pytest.approx(1 / 16)
    assert grid_step(x + 0.01, 255) is None                      # off the grid
    assert grid_step(np.linspace(0, 1, 1000), 255) is None       # more values than levels
    compiled = compile_onnx(MODELS / "digits_cnn_relu.onnx", calib=x)
    inp = compiled.artifact.nodes[0]
    from sim.semantics import encode_input
    n = encode_input(x, inp.inv_scale, inp.lo, inp.hi)
    assert np.array_equal(n, np.rint(x * 16).astype(np.int64))
