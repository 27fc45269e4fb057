"""The model zoo (tests/zoo.py: narrow ResNet-18, MobileNetV2, DenseNet) through both torch
exporters; elementwise activations as table neurons; zero Pad folding; the ops that stay refused.

Every compiled network is checked bit for bit: sim.cpu against onnxruntime on the emitted integer
reference (`toolchain.reference.emit_reference`).
"""
from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import sim.cpu
from compare import reference_onnx_outputs
import zoo
from toolchain.compiler import compile_onnx
from toolchain.errors import ToolchainError
from toolchain.quantize import function_steps

DATA = Path(__file__).parent / "data"
_DIR = Path(tempfile.mkdtemp(prefix="sfn-test-zoo-"))
EXPORTERS = [pytest.param(False, id="legacy"), pytest.param(True, id="dynamo")]


def assert_bit_exact(art, x):
    out, acc = reference_onnx_outputs(art, x)
    res = sim.cpu.run(art, x)
    assert np.array_equal(res.accumulator.astype(np.float32), acc)
    assert np.array_equal(res.output, out)
    assert sum(s.spikes for s in res.stats.values()) > 0
    return res


def _float(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


# --- the zoo, untrained (non-trivial BatchNorm statistics), both exporters ----------------------

@functools.lru_cache(maxsize=None)
def _zoo_compiled(name, dynamo):
    model = zoo.build(name)
    x_tr, _, x_te, _ = zoo.digits(model.input_shape[-1])
    path = zoo.export(model, _DIR / f"{name}_{'dynamo' if dynamo else 'legacy'}.onnx", dynamo)
    return compile_onnx(path, calib=x_tr[:256]), x_te[:200]


@pytest.mark.parametrize("dynamo", EXPORTERS)
@pytest.mark.parametrize("name", sorted(zoo.ZOO))
def test_zoo_is_bit_exact(name, dynamo):
    compiled, x = _zoo_compiled(name, dynamo)
    assert_bit_exact(compiled.artifact, x)
    # measured 1.0 top-1 agreement and 0.6-2.1% relative RMS error with the float model
    assert compiled.agreement["top1_agreement"] >= 0.95
    assert compiled.agreement["rel_rms_error"] <= 0.05
    nodes = compiled.artifact.nodes
    kinds = {n.kind for n in nodes}
    if name == "resnet18":      # residual Adds into ReLU neurons, the stem's padded MaxPool
        assert {"add", "maxpool"} <= kinds
    if name == "mobilenetv2":   # depthwise convs; linear bottleneck Adds read by requantizers
        assert any(n.kind == "conv" and n.groups > 1 and n.groups == n.weight.shape[0]
                   for n in nodes)
        assert any(n.kind == "neuron" and n.lo < 0 for n in nodes)
        assert sum(n.kind == "add" for n in nodes) == 5
    if name == "densenet":      # concatenations of all earlier features
        assert sum(n.kind == "concat" for n in nodes) >= 6


def test_exporters_give_the_same_network():
    """Both exporters' models compile to the same SFN graph (kinds, shapes, levels, weight
    exponents). Their float weights and calibration statistics differ in the last bits (the
    exporters fold BatchNorm with different float arithmetic), so a threshold or a bias rounded
    from them may differ by one step: the outputs agree closely, not bit for bit."""
    a, x = _zoo_compiled("mobilenetv2", False)
    b, _ = _zoo_compiled("mobilenetv2", True)
    shape = lambda art: [(n.kind, tuple(n.shape), getattr(n, "weight_exp", None),
                          getattr(n, "lo", None), getattr(n, "hi", None)) for n in art.nodes]
    assert shape(a.artifact) == shape(b.artifact)
    ya, yb = sim.cpu.run(a.artifact, x).output, sim.cpu.run(b.artifact, x).output
    assert (ya.argmax(1) == yb.argmax(1)).mean() >= 0.99
    assert np.abs(ya - yb).max() <= 0.02 * np.abs(ya).max()


def test_large_folded_bias_lowers_the_weight_exponent():
    """An untrained MobileNetV2 has depthwise channels whose input is almost never nonzero and
    whose output is the folded BatchNorm shift: the bias, not the current, sets the state bound
    (it overflowed 24 bits before the exponent accounted for it)."""
    compiled, _ = _zoo_compiled("mobilenetv2", False)
    assert all(row.margin_bits is None or row.margin_bits > 0 for row in compiled.layers)


# --- trained on digits: T = 1 within 1.0 point of float -----------------------------------------

def _shipped():
    return json.loads((DATA / "zoo_models.json").read_text())


@pytest.mark.parametrize("name", zoo.SHIPPED)
def test_shipped_trained_models_convert_within_one_point(name):
    """tests/data/zoo_<name>.onnx: trained by `python tests/zoo.py --write-data` (8 epochs,
    legacy export); default settings, calibration = the digits train split, 360 test samples."""
    meta = _shipped()[name]
    path = DATA / f"zoo_{name}.onnx"
    x_tr, _, x_te, y_te = zoo.digits(meta["size"])
    float_acc = zoo.accuracy_of(_float(path, x_te), y_te)
    assert abs(float_acc - meta["float_accuracy"]) < 0.003   # onnxruntime vs torch: ≤ 1 sample
    compiled = compile_onnx(path, calib=x_tr)
    res = assert_bit_exact(compiled.artifact, x_te)
    assert zoo.accuracy_of(res.output, y_te) >= float_acc - 0.010 + 1e-9


@pytest.mark.slow
def test_trained_resnet18_converts_within_one_point(tmp_path):
    """The ResNet-18 (0.7 MB of weights, not shipped) trains here: 8 epochs, about 8 s."""
    model, float_acc, _ = zoo.train("resnet18", zoo.EPOCHS)
    x_tr, _, x_te, y_te = zoo.digits(model.input_shape[-1])
    path = zoo.export(model, tmp_path / "resnet18.onnx")
    float_acc = zoo.accuracy_of(_float(path, x_te), y_te)
    res = assert_bit_exact(compile_onnx(path, calib=x_tr).artifact, x_te)
    assert zoo.accuracy_of(res.output, y_te) >= float_acc - 0.010 + 1e-9


@pytest.mark.slow
@pytest.mark.parametrize("dynamo", EXPORTERS)
@pytest.mark.parametrize("name", sorted(zoo.ZOO))
def test_trained_from_scratch_converts_within_one_point(name, dynamo, tmp_path):
    """Train (8 epochs, about 10 s on one thread), export, compile with the defaults."""
    model, float_acc, _ = zoo.train(name, zoo.EPOCHS)
    x_tr, _, x_te, y_te = zoo.digits(model.input_shape[-1])
    path = zoo.export(model, tmp_path / "m.onnx", dynamo)
    assert abs(zoo.accuracy_of(_float(path, x_te), y_te) - float_acc) < 0.003
    res = sim.cpu.run(compile_onnx(path, calib=x_tr).artifact, x_te)
    assert zoo.accuracy_of(res.output, y_te) >= float_acc - 0.010 + 1e-9


# --- elementwise functions of one tensor: one adaptive (table) neuron each ---------------------

class ActNet(nn.Module):
    """conv → act → conv (stride 2) → act → flatten → linear: a table read by a synapse."""
    input_shape = (2, 6, 6)

    def __init__(self, act):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(2, 6, 3, padding=1), nn.Conv2d(6, 4, 3, 2, 1)
        self.act, self.fc = act, nn.Linear(4 * 3 * 3, 5)

    def forward(self, x):
        return self.fc(self.act(self.c2(self.act(self.c1(x)))).flatten(1))


class ManualHardSwish(nn.Module):   # MobileNetV3's h_swish written by hand
    def forward(self, x):
        return x * F.relu6(x + 3.0) / 6.0


ACTS = {
    "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "hardsigmoid": nn.Hardsigmoid,
    "hardswish": nn.Hardswish, "silu": nn.SiLU, "gelu": nn.GELU,
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"), "leaky_relu": lambda: nn.LeakyReLU(0.1),
    "elu": nn.ELU, "softplus": nn.Softplus, "mish": nn.Mish, "manual_hardswish": ManualHardSwish,
}
# where the two exporters write different graphs (the others are one op in both)
DYNAMO_DIFFERS = ("silu", "gelu", "gelu_tanh", "softplus", "mish", "manual_hardswish")
ACT_CASES = [pytest.param(a, False, id=f"{a}-legacy") for a in ACTS] + \
            [pytest.param(a, True, id=f"{a}-dynamo") for a in DYNAMO_DIFFERS]


def _act_data(n, seed):
    return np.random.default_rng(seed).standard_normal((n, 2, 6, 6)).astype(np.float32)


@pytest.mark.parametrize("act,dynamo", ACT_CASES)
def test_activation_is_one_table_neuron(act, dynamo):
    torch.manual_seed(0)
    model = ActNet(ACTS[act]()).eval()
    path = zoo.export(model, _DIR / f"act_{act}_{int(dynamo)}.onnx", dynamo)
    compiled = compile_onnx(path, calib=_act_data(256, 1))
    art = compiled.artifact
    neurons = [n for n in art.nodes if n.kind == "neuron"]
    # each activation, however the exporter spells it, is one adaptive neuron: nothing else
    assert [n.fire for n in neurons] == ["adaptive", "adaptive"]
    assert [n.kind for n in art.nodes] == ["input", "conv", "neuron", "conv", "neuron", "reshape",
                                           "dense", "readout"]
    assert_bit_exact(art, _act_data(200, 2))
    # measured: top-1 agreement 0.93-1.0, relative RMS error 1.5-8% at 15 levels
    assert compiled.agreement["top1_agreement"] >= 0.85
    assert compiled.agreement["rel_rms_error"] <= 0.15


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_onnx_gelu_op(tmp_path, approximate):
    """The Gelu op of opset 20 (the exporters at 17/18 decompose it; see the cases above)."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 2, 3, 3)).astype(np.float32), "W")
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Gelu", ["c"], ["g"], approximate=approximate),
             helper.make_node("Flatten", ["g"], ["y"])]
    graph = helper.make_graph(nodes, "gelu", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["N", 2, 6, 6])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, ["N", 144])], [w])
    path = tmp_path / "gelu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), path)
    compiled = compile_onnx(path, calib=_act_data(256, 1))
    assert [n.kind for n in compiled.artifact.nodes] == ["input", "conv", "neuron", "reshape",
                                                         "readout"]
    assert_bit_exact(compiled.artifact, _act_data(100, 2))
    assert compiled.agreement["rel_rms_error"] <= 0.15


FUNCS = {
    "sigmoid": (lambda z: 1 / (1 + np.exp(-z)), 1 / 15),
    "silu": (lambda z: z / (1 + np.exp(-z)), 0.4),
    "hardswish": (lambda z: z * np.clip(z / 6 + 0.5, 0, 1), 0.05),
    "cube": (lambda z: z ** 3, 2.0),
    "bump": (lambda z: np.exp(-z * z) * 3 - 1, 0.1),   # non-monotone both ways
}


@pytest.mark.parametrize("fn", sorted(FUNCS))
def test_function_steps_are_the_rounded_function(fn):
    f, s = FUNCS[fn]
    edges, payload = function_steps(f, s, -15, 15, 40.0)
    assert len(payload) == len(edges) + 1 and np.all(np.diff(edges) > 0)
    assert np.all(payload[1:] != payload[:-1])
    z = np.random.default_rng(0).uniform(-40, 40, 200_000)
    z = z[np.min(np.abs(z[:, None] - edges[None]), axis=1) > 1e-9]
    want = np.clip(np.floor(f(z) / s + 0.5), -15, 15)
    assert np.array_equal(payload[np.searchsorted(edges, z, side="right")], want)


# --- zero Pad folds into the next Conv / AveragePool -------------------------------------------

def _pad_model(tmp_path, after="Conv", mode="constant", value=0.0, pads=(0, 0, 1, 2, 0, 0, 2, 1)):
    rng = np.random.default_rng(0)
    # 6×6 padded to 9×9; conv 3×3 with pads (1, 0, 0, 1) → 8×8; pad + 3×3 pool → 9×9 / 7×7
    flat = {"Conv": 4 * 8 * 8, "AveragePool": 4 * 9 * 9, "MaxPool": 2 * 7 * 7}[after]
    inits = [numpy_helper.from_array(np.array(pads, np.int64), "pads"),
             numpy_helper.from_array(np.array(value, np.float32), "value"),
             numpy_helper.from_array(rng.standard_normal((4, 2, 3, 3)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.standard_normal((3, flat)).astype(np.float32) * 0.1, "F")]
    nodes = [helper.make_node("Pad", ["x", "pads", "value"], ["p"], mode=mode)]
    if after == "Conv":
        nodes.append(helper.make_node("Conv", ["p", "W"], ["c"], pads=[1, 0, 0, 1]))
    elif after == "AveragePool":
        nodes += [helper.make_node("Conv", ["p", "W"], ["c0"], pads=[1, 0, 0, 1]),
                  helper.make_node("Relu", ["c0"], ["r"]),
                  helper.make_node("Pad", ["r", "pads", "value"], ["p2"]),
                  helper.make_node("AveragePool", ["p2"], ["c"], kernel_shape=[3, 3])]
    else:
        nodes.append(helper.make_node(after, ["p"], ["c"], kernel_shape=[3, 3]))
    nodes += [helper.make_node("Relu", ["c"], ["r2"]), helper.make_node("Flatten", ["r2"], ["f"]),
              helper.make_node("Gemm", ["f", "F"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "pad", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                           ["N", 2, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / f"pad_{after}_{mode}.onnx"
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("after", ["Conv", "AveragePool"])
def test_zero_pad_folds_into_the_next_window(tmp_path, after):
    path = _pad_model(tmp_path, after)
    x = _act_data(200, 3)
    compiled = compile_onnx(path, calib=_act_data(128, 4))
    art = compiled.artifact
    window = [n for n in art.nodes if n.kind in ("conv", "sumpool")][-1]
    # ONNX pads (0,0,1,2, 0,0,2,1) = top 1, left 2, bottom 2, right 1, plus the conv's own
    assert tuple(window.pads) == ((2, 2, 2, 2) if after == "Conv" else (1, 2, 2, 1))
    assert_bit_exact(art, x)
    assert compiled.agreement["rel_rms_error"] <= 0.15   # measured 0.077-0.080 (random weights)


@pytest.mark.parametrize("mode,value,match", [
    ("reflect", 0.0, "only constant"), ("constant", 1.0, "only zero padding")])
def test_other_pads_are_refused(tmp_path, mode, value, match):
    with pytest.raises(ToolchainError, match=match):
        compile_onnx(_pad_model(tmp_path, mode=mode, value=value), calib=_act_data(16, 0))


def test_pad_before_maxpool_is_refused(tmp_path):
    with pytest.raises(ToolchainError, match="supported only where a Conv or AveragePool"):
        compile_onnx(_pad_model(tmp_path, "MaxPool"), calib=_act_data(16, 0))


def test_legacy_functional_pad(tmp_path):
    class PadConv(nn.Module):
        input_shape = (2, 6, 6)

        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(2, 4, 3)

        def forward(self, x):
            return torch.relu(self.c(F.pad(x, (1, 2, 0, 1)))).flatten(1)

    torch.manual_seed(0)
    path = zoo.export(PadConv().eval(), tmp_path / "padconv.onnx", False)
    compiled = compile_onnx(path, calib=_act_data(64, 0))
    assert_bit_exact(compiled.artifact, _act_data(50, 1))


# --- what stays refused, with a message that says why ------------------------------------------

class LRNNet(nn.Module):
    input_shape = (2, 6, 6)

    def __init__(self):
        super().__init__()
        self.c, self.lrn = nn.Conv2d(2, 4, 3, padding=1), nn.LocalResponseNorm(3)

    def forward(self, x):
        return self.lrn(torch.relu(self.c(x))).flatten(1)


class ProductNet(nn.Module):
    """A squeeze-and-excitation gate: x · hardsigmoid(fc(pool(x))) — two activations."""
    input_shape = (2, 6, 6)

    def __init__(self):
        super().__init__()
        self.c, self.g = nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        x = torch.relu(self.c(x))
        return (x * F.hardsigmoid(self.g(F.adaptive_avg_pool2d(x, 1)))).flatten(1)


class TwoBranchProduct(nn.Module):
    input_shape = (2, 6, 6)

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(2, 4, 3, padding=1)

    def forward(self, x):
        return (torch.sigmoid(self.a(x)) * torch.tanh(self.b(x))).flatten(1)


class MiddleSoftmax(nn.Module):
    input_shape = (2, 6, 6)

    def __init__(self):
        super().__init__()
        self.c, self.fc = nn.Conv2d(2, 4, 3, padding=1), nn.Linear(4 * 36, 3)

    def forward(self, x):
        return self.fc(torch.softmax(self.c(x).flatten(1), dim=-1))


class HalfPower(nn.Module):
    input_shape = (2, 6, 6)

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(2, 4, 3, padding=1)

    def forward(self, x):
        return (torch.relu(self.c(x)) ** 0.5).flatten(1)


PRODUCTS = {"se_gate": ProductNet, "two_branch_product": TwoBranchProduct,
            "middle_softmax": MiddleSoftmax, "fractional_power": HalfPower}


@pytest.mark.parametrize("dynamo", EXPORTERS)
@pytest.mark.parametrize("name", sorted(PRODUCTS))
def test_products_and_a_softmax_in_the_middle_convert(name, dynamo, tmp_path):
    """A gate x·σ(…), a product of two branches, a Softmax over (N, F) features in the middle
    of a network and a fractional power: products of activations, the Softmax written out as
    primitive ops and the power as a table, bit for bit against the integer reference, within
    0.1 relative RMS error of the float output."""
    torch.manual_seed(0)
    path = zoo.export(PRODUCTS[name]().eval(), tmp_path / f"{name}.onnx", dynamo)
    compiled = compile_onnx(path, calib=_act_data(256, 0))
    kinds = {type(n).__name__ for n in compiled.artifact.nodes}
    assert "Product" in kinds or name == "fractional_power"   # relu(x)^0.5: one table
    x = _act_data(64, 1)
    res = assert_bit_exact(compiled.artifact, x)
    ref = _float(path, x)
    err = _rms_error(res.output, ref)
    assert err < 0.1, err


def _rms_error(out, ref) -> float:
    return float(np.sqrt(np.mean((out - ref) ** 2) / np.mean(ref ** 2)))


REFUSED = {
    # torch writes LocalResponseNorm as x², a channel-axis Pad, AveragePool 3-D, Pow, Div
    "lrn": (LRNNet, "pad a non-spatial axis"),
}


@pytest.mark.parametrize("size,channels", [(3, 6), (5, 4), (7, 3)])
def test_onnx_lrn_op_converts(tmp_path, size, channels):
    """LRN after a conv and ReLU in AlexNet's strong form (α = 1, k = 2, β = 0.75, so the
    normalization changes the output), windows narrower and wider than the channels: bit-exact
    against the reference; relative RMS error against float 0.11–0.16 at the default levels
    and 0.018–0.026 at 255 (measured), bounded with margin."""
    w = np.random.default_rng(3).standard_normal((channels, 2, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("LRN", ["r"], ["n"], size=size, alpha=1.0, beta=0.75, bias=2.0),
             helper.make_node("Flatten", ["n"], ["y"])]
    graph = helper.make_graph(nodes, "lrn", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["N", 2, 6, 6])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, ["N", channels * 36])], [numpy_helper.from_array(w, "w")])
    path = tmp_path / "lrn.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    x = _act_data(64, 1)
    ref = _float(path, x)
    for levels, bound in ((None, 0.25), (255, 0.04)):
        compiled = compile_onnx(path, calib=_act_data(256, 0), levels=levels,
                                internal_levels=255 if levels else 63)
        assert "product" in {n.kind for n in compiled.artifact.nodes}
        res = assert_bit_exact(compiled.artifact, x)
        assert _rms_error(res.output, ref) < bound


def test_onnx_lrn_with_default_attributes_is_nearly_the_identity(tmp_path):
    """With ONNX's defaults (α = 10⁻⁴, k = 1) the power of the window sum is constant at the
    calibrated range: a table with one unreachable threshold, the LRN a product by one."""
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("LRN", ["r"], ["n"], size=3),
             helper.make_node("Flatten", ["n"], ["y"])]
    graph = helper.make_graph(nodes, "lrn", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["N", 2, 6, 6])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, ["N", 72])])
    path = tmp_path / "lrn.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    art = compile_onnx(path, calib=_act_data(128, 0)).artifact
    power = [n for n in art.nodes if n.name.endswith("/inverse")]
    assert len(power) == 1 and power[0].thresholds.shape[-1] == 1
    assert len(set(power[0].payload.tolist())) == 1
    x = _act_data(32, 1)
    res = assert_bit_exact(art, x)
    assert _rms_error(res.output, _float(path, x)) < 0.1   # the ReLU's 15 levels: 0.065


@pytest.mark.parametrize("dynamo", EXPORTERS)
@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_with_a_clear_message(name, dynamo, tmp_path):
    cls, match = REFUSED[name]
    torch.manual_seed(0)
    path = zoo.export(cls().eval(), tmp_path / f"{name}.onnx", dynamo)
    with pytest.raises(ToolchainError, match=match) as info:
        compile_onnx(path, calib=_act_data(16, 0))
    assert "node" in str(info.value)   # names where
