"""Real network structures fit: MobileNetV2 (the paper's channels) and a ResNet-50-shaped network
(bottleneck stages 3-4-6-3) with random weights and BatchNorm statistics compile with the
defaults on any calibration set, run bit-exact against the reference, and agree with float.
What makes them fit: units that can get coarser (negative weight exponents, right-shift Add
gains), each channel's level step capped at what its current can reach, biases clamped at T = 1,
and errors that name the term that overflows. The full-size table is benchmarks/real_networks.py.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

import sim.cpu
import sim.reference
import zoo
from compare import assert_same
from sim.artifact import Artifact
from sim.ir import Dense, Input, Neuron, Readout
from toolchain import calibrate as cal
from toolchain.compiler import compile_onnx
from toolchain.errors import QuantizationError
from toolchain.quantize import QuantOptions, Quantizer
from toolchain.reference import emit_reference

CALIBRATIONS = ("normal", "uniform")


@functools.lru_cache(maxsize=None)
def _exported(name: str, size: int, tmp: str) -> Path:
    torch.manual_seed(0)
    model = zoo.randomize_bn(zoo.REAL[name](size)).eval()
    return zoo.export(model, Path(tmp) / f"{name}_{size}.onnx", dynamo=False), model.input_shape


def _calibration(kind: str, shape, n: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "normal":
        return rng.standard_normal((n,) + tuple(shape)).astype(np.float32)
    return rng.uniform(0, 1, (n,) + tuple(shape)).astype(np.float32)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("calibration", CALIBRATIONS)
@pytest.mark.parametrize("name", ["mobilenetv2_full", "resnet50_narrow"])
def test_real_structures_fit_bit_exact_and_agree(name, calibration, tmp_path_factory):
    path, shape = _exported(name, 32, str(tmp_path_factory.getbasetemp()))
    calib = _calibration(calibration, shape)
    compiled = compile_onnx(path, calib=calib)
    art = compiled.artifact
    x = _calibration(calibration, shape, n=8, seed=1)
    res = sim.cpu.run(art, x)
    assert_same(res, sim.reference.run(art, x))
    sess = ort.InferenceSession(emit_reference(art).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    out, acc = sess.run(["output", "accumulator"], {"input": x})
    np.testing.assert_array_equal(acc, res.accumulator.astype(np.float32))
    np.testing.assert_array_equal(out, res.output)
    float_out = next(cal.run_float(compiled.imported.source, x, [compiled.imported.output_name]))
    float_out = float_out[compiled.imported.output_name]
    # measured: cosine ≥ 0.9997 and relative RMS error 1.4–2.3% on both calibrations
    assert _cosines(res.output, float_out).min() >= 0.99
    err = np.sqrt(np.mean((res.output - float_out) ** 2) / np.mean(float_out ** 2))
    assert err <= 0.05
    assert (res.output.argmax(1) == float_out.argmax(1)).mean() >= 0.875
    # 8-bit weights everywhere; the exponent goes below zero where a layer's bound needs it
    rows = [r for r in compiled.layers if r.weight_bits is not None]
    assert {r.weight_bits for r in rows} == {8}
    assert min(r.weight_exp for r in rows) < 0


def _dead_channel_net(bias_scale: float):
    """input (4) → dense (6 channels) → ReLU neuron: channels 0–1 live, 2–3 dead on the
    calibration data (their current is tiny), 4–5 driven by a bias far above their current."""
    from toolchain.fgraph import FloatGraph
    fg = FloatGraph()
    fg.add("x", "input", [], (4,))
    rng = np.random.default_rng(3)
    w = rng.normal(0, 1, (6, 4))
    w[2:4] *= 1e-6
    b = np.zeros(6)
    b[4:6] = bias_scale
    fg.add("z", "dense", ["x"], (6,), W=w, b=b)
    fg.add("r", "relu", ["z"], (6,), hi=None)
    fg.output = "r"
    x = rng.uniform(-1, 1, (200, 4)).astype(np.float32)
    acts = {"x": x.astype(np.float64), "z": x.astype(np.float64) @ w.T + b}
    acts["r"] = np.maximum(acts["z"], 0)
    acts["z"][:, 2:4] = 0          # the dead channels never move on the calibration data
    acts["r"][:, 2:4] = 0
    return fg, cal.stats_from_arrays(acts, 99.99), x


def test_dead_channel_threshold_is_capped_at_its_reachable_current(monkeypatch):
    fg, stats, x = _dead_channel_net(0.0)
    qz = Quantizer(fg, stats, QuantOptions(levels=15), "dead")
    nodes, inp, out = qz.run("")
    neuron = next(n for n in nodes if n.kind == "neuron")
    dense = next(n for n in nodes if n.kind == "dense")
    bound = np.abs(dense.weight.astype(np.int64)).sum(axis=1) * 255 * 2.0 ** dense.weight_exp
    theta = np.asarray(neuron.threshold).reshape(-1)
    assert np.all(theta <= 2 * np.floor(bound / 15 / 2 + 0.5))
    art = Artifact(nodes, inp, out)
    assert_same(sim.cpu.run(art, x), sim.reference.run(art, x))
    # uncapped, a dead channel takes the layer's range, a θ no current of its own can reach
    # and one over the 24-bit state: the error says so
    fg, stats, x = _dead_channel_net(0.0)
    neuron_rule = Quantizer.neuron
    monkeypatch.setattr(Quantizer, "neuron",
                        lambda self, *a, **k: neuron_rule(self, *a, **{**k, "exact_levels": True}))
    with pytest.raises(QuantizationError, match=r"channel [23] .*the threshold/2 dominates"):
        Quantizer(fg, stats, QuantOptions(levels=15), "dead").run("")


def test_bias_beyond_any_reachable_current_is_clamped_exactly_at_t1():
    fg, stats, x = _dead_channel_net(1e4)
    qz = Quantizer(fg, stats, QuantOptions(levels=15), "bias")
    nodes, inp, out = qz.run("")
    art = Artifact(nodes, inp, out)
    neuron = art.node("r")
    b = np.asarray(neuron.bias).reshape(-1)
    theta = np.asarray(neuron.threshold).reshape(-1)
    assert np.all(b[4:6] <= 15 * theta[4:6] + 2 ** 22)      # clamped, not 10⁴ / unit
    # the same network with the bias a million units higher gives the same outputs (T = 1)
    res = sim.reference.run(art, x)
    raised = Artifact([n if n.name != "r" else
                       Neuron("r", n.inputs, n.shape, threshold=n.threshold,
                              bias=np.where(np.arange(6) >= 4, n.bias + 10 ** 6, n.bias),
                              lo=n.lo, hi=n.hi) for n in art.nodes], inp, out)
    np.testing.assert_array_equal(sim.reference.run(raised, x).accumulator, res.accumulator)
    assert np.all(res.accumulator[:, 4:6] == 15)             # the bias alone fires the top level


def test_an_overflow_names_the_term_the_channel_and_a_remedy():
    """A dense layer of 65,536 inputs at the 8-bit encoder's 255 with 8-bit weights: its bound,
    2^32, is over the 24-bit state even at the lowest exponent (2^-8)."""
    from toolchain.fgraph import FloatGraph
    fg = FloatGraph()
    fg.add("x", "input", [], (1 << 16,))
    fg.add("z", "dense", ["x"], (2,), W=np.ones((2, 1 << 16)), b=np.zeros(2))
    fg.add("r", "relu", ["z"], (2,), hi=None)
    fg.output = "r"
    acts = {"x": np.ones((4, 1 << 16)), "z": np.full((4, 2), 65536.0),
            "r": np.full((4, 2), 65536.0)}
    qz = Quantizer(fg, cal.stats_from_arrays(acts, 99.99), QuantOptions(levels=15), "wide")
    with pytest.raises(QuantizationError, match=r"layer 'r': the neuron state can reach \d+ in "
                                                r"channel 0 \(accumulator bound \d+, bias 0, "
                                                r"threshold/2 \d+\).*the accumulator bound "
                                                r"dominates: .*split this layer's fan-in"):
        qz.run("")


def test_three_calibration_sets_decide_no_refusal(tmp_path_factory):
    """N(0, 1), uniform [0, 1) and 16 real-looking samples (a smoothed ramp): the network
    compiles with each; no refusal depends on the calibration data."""
    path, shape = _exported("mobilenetv2_full", 32, str(tmp_path_factory.getbasetemp()))
    ramp = np.linspace(0, 1, int(np.prod(shape)), dtype=np.float32).reshape(shape)
    sets = {"normal": _calibration("normal", shape), "uniform": _calibration("uniform", shape),
            "ramp": np.stack([np.roll(ramp, k, axis=-1) for k in range(16)])}
    for kind, calib in sets.items():
        art = compile_onnx(path, calib=calib).artifact
        assert art.meta["agreement"]["rel_rms_error"] < 0.1, kind


def test_weight_exponents_reach_below_zero_only_where_needed():
    """A sum pool of 49 taps in front of a Dense multiplies its bound by 49: the Dense keeps
    8-bit weights and takes a negative exponent instead of fewer bits."""
    nodes = [Input("x", (), (3,), inv_scale=1.0, lo=0, hi=255)]
    nodes.append(Dense("d", ("x",), (2,), weight=np.full((2, 3), 255, np.int16), weight_exp=-3))
    nodes.append(Readout("y", ("d",), (2,), scale=np.ones(2, np.float32),
                         bias=np.zeros(2, np.int64)))
    art = Artifact(nodes, "x", "y")
    x = np.full((1, 3), 255.0, np.float32)
    assert sim.reference.run(art, x).accumulator.tolist() == [[(3 * 255 * 255) >> 3] * 2]


def test_low_weight_bits_and_the_lowest_exponent_are_warned_about():
    from toolchain.compiled import weight_warnings
    from toolchain.quantize import LayerRow
    rows = [LayerRow("a", "dense", (4,), weight_bits=5, weight_exp=0),
            LayerRow("b", "conv", (4, 2, 2), weight_bits=8, weight_exp=-8),
            LayerRow("c", "conv", (4, 2, 2), weight_bits=8, weight_exp=-2)]
    assert weight_warnings(rows) == [
        "warning: layer 'a' has 5-bit weights (under 6): expect a visible accuracy loss there",
        "warning: layer 'b' needs the lowest weight exponent (2^-8): its accumulator unit is as "
        "coarse as the target allows"]
