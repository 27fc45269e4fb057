"""The standard ONNX RNN operator (torch.nn.RNN + nn.Linear through the legacy exporter, or built
by hand) compiles to the same recurrent SFN graph as the one-step cell: the converted float cell
equals onnxruntime on whole trials, the deployed network tracks it, sim.lava equals sim.cpu, and
unsupported variants are refused naming the node and the feature."""
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import sim.cpu
from toolchain import rnn
from toolchain.cli import main
from toolchain.compiler import compile_onnx
from toolchain.errors import ModelError, ShapeError

N_IN, HIDDEN, N_OUT = 3, 16, 2
# onnx opset per activation: the three span the supported range 11–21
OPSETS = {"relu": 14, "tanh": 21, "sigmoid": 11}
# relative RMS error of the deployed output against the float model on held-out trials,
# measured 0.0142 (relu), 0.0125 (tanh), 0.0174 (sigmoid) with 255 levels; bound with margin
DEPLOYED_REL_RMS = 0.03


class TorchRNN(nn.Module):
    def __init__(self, nonlinearity="relu", cls=nn.RNN, linear=True, extra=None, n_out=N_OUT,
                 **kw):
        super().__init__()
        kw = kw if cls is not nn.RNN else dict(kw, nonlinearity=nonlinearity)
        self.rnn = cls(N_IN, HIDDEN, **kw)
        out = HIDDEN * (2 if kw.get("bidirectional") else 1)
        self.lin = nn.Linear(out, n_out) if linear else None
        self.extra = extra

    def forward(self, x):
        y = self.rnn(x)[0]
        y = self.lin(y) if self.lin is not None else y
        return self.extra(y) if self.extra is not None else y


def _export(module, path, opset=17, outputs=("o",)):
    with warnings.catch_warnings():  # the legacy exporter is chosen on purpose
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(5, 2, N_IN),), str(path), dynamo=False,
                          opset_version=opset, input_names=["x"], output_names=list(outputs),
                          dynamic_axes={"x": {0: "seq", 1: "batch"}})
    return path


def _torch_model(tmp_path, nonlinearity, seed=0, **kw):
    torch.manual_seed(seed)
    module = TorchRNN(nonlinearity, **kw).eval()
    return _export(module, tmp_path / f"{nonlinearity}.onnx", OPSETS.get(nonlinearity, 17)), module


def _sigmoid_model(path, opset=11, h0=None, **attrs):
    """RNN(Sigmoid) → Squeeze(axis 1) → Reshape(−1, H) → Gemm(transB) → (seq·batch, n_out)."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in (
        ("W", rng.normal(0, 1.0, (1, HIDDEN, N_IN))),
        ("R", rng.normal(0, 1.5 / np.sqrt(HIDDEN), (1, HIDDEN, HIDDEN))),
        ("B", rng.normal(0, 0.5, (1, 2 * HIDDEN))),
        ("W_o", rng.normal(0, 0.5, (N_OUT, HIDDEN))), ("b_o", rng.normal(0, 0.2, (N_OUT,))))]
    inits.append(numpy_helper.from_array(np.array([-1, HIDDEN], np.int64), "flat"))
    rnn_inputs = ["X", "W", "R", "B"]
    if h0 is not None:
        inits.append(numpy_helper.from_array(h0.astype(np.float32), "h0"))
        rnn_inputs += ["", "h0"]
    if opset >= 13:
        inits.append(numpy_helper.from_array(np.array([1], np.int64), "axes"))
        squeeze = helper.make_node("Squeeze", ["Y", "axes"], ["Ys"])
    else:
        squeeze = helper.make_node("Squeeze", ["Y"], ["Ys"], axes=[1])
    nodes = [helper.make_node("RNN", rnn_inputs, ["Y", "Y_h"], name="rnn", hidden_size=HIDDEN,
                              activations=attrs.pop("activations", ["Sigmoid"]), **attrs),
             squeeze, helper.make_node("Reshape", ["Ys", "flat"], ["F"]),
             helper.make_node("Gemm", ["F", "W_o", "b_o"], ["out"], transB=1)]
    graph = helper.make_graph(
        nodes, "rnn_sigmoid",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["seq", "batch", N_IN])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [None, N_OUT])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    onnx.save(model, path)
    return path


def _model(tmp_path, activation):
    if activation == "sigmoid":
        return _sigmoid_model(tmp_path / "sigmoid.onnx"), None
    return _torch_model(tmp_path, activation)


def _trials(n=6, T=40, seed=0):
    """Trials (N, T, n_in) in [0, 1], each with its own scale."""
    rng = np.random.default_rng(seed)
    return (rng.uniform(0, 1, (n, T, N_IN)) * rng.uniform(0.3, 1, (n, 1, 1))).astype(np.float32)


def _ort(path, x):
    """onnxruntime on the model itself: X[t, n] = x[n, t]; the output back to (N, T, n_out)."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {sess.get_inputs()[0].name: np.ascontiguousarray(
        x.transpose(1, 0, 2))})
    return out.reshape(x.shape[1], x.shape[0], -1).transpose(1, 0, 2)


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid"])
def test_float_cell_equals_onnxruntime(tmp_path, activation):
    path, module = _model(tmp_path, activation)
    cell = rnn.read_onnx_rnn(onnx.load(path), str(path))
    assert (cell.activation, cell.alpha, cell.dale, cell.origin) == (activation, 1.0, False,
                                                                     "onnx_rnn")
    assert cell.W_inp.shape == (HIDDEN, N_IN) and cell.W_out.shape == (N_OUT, HIDDEN)
    if module is not None:  # the weights are torch's: bias = b_ih + b_hh, W_out = Linear's
        r = module.rnn
        assert np.allclose(cell.W_rec, r.weight_hh_l0.detach().numpy())
        assert np.allclose(cell.bias, (r.bias_ih_l0 + r.bias_hh_l0).detach().numpy(), atol=1e-7)
        assert np.allclose(cell.W_out, module.lin.weight.detach().numpy())
        assert np.allclose(cell.b_out, module.lin.bias.detach().numpy())
    x = _trials(7, 50, 1)
    acts = cell.trials(x.astype(np.float64))
    float_o = acts["o"].reshape(50, 7, N_OUT).transpose(1, 0, 2)
    reference = _ort(path, x)
    assert np.abs(float_o - reference).max() < 1e-5
    assert np.abs(reference).max() > 0.1 and np.std(reference) > 0.01  # not a trivial signal
    assert np.abs(rnn.onnx_rnn_trials(onnx.load(path), x, cell) - reference).max() == 0
    if module is not None:
        with torch.no_grad():
            out = module(torch.from_numpy(x).transpose(0, 1)).transpose(0, 1).numpy()
        assert np.abs(float_o - out).max() < 1e-5


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid"])
def test_deployed_output_tracks_the_float_model(tmp_path, activation):
    path, _ = _model(tmp_path, activation)
    compiled = compile_onnx(path, calib=_trials(16, 60, 2))
    art = compiled.artifact
    assert art.recurrent and art.meta["source"]["kind"] == "onnx_rnn"
    assert art.meta["rnn"]["alpha"] == 1.0 and art.meta["rnn"]["dale"] is False
    assert art.node("y").decay == 4096 and art.node("y_prev").source == "y"
    assert compiled.notes[0].startswith(f"ONNX RNN operator: {HIDDEN} units, {activation}")
    x = _trials(9, 80, 5)  # held out, longer than the calibration trials
    deployed = sim.cpu.run(art, x).output
    reference = _ort(path, x)
    assert deployed.shape == reference.shape == (9, 80, N_OUT)
    rel = np.sqrt(np.mean((deployed - reference) ** 2)) / np.sqrt(np.mean(reference ** 2))
    assert rel < DEPLOYED_REL_RMS, rel
    assert compiled.agreement["rel_rms_error"] < DEPLOYED_REL_RMS


def test_batch_first_model_and_no_bias(tmp_path):
    """batch_first: X is the model input behind Transpose(1, 0, 2) and the output is
    transposed back; the trials feed the model as they are. No bias: none in the cell."""
    torch.manual_seed(4)
    module = TorchRNN("tanh", batch_first=True, bias=False).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(2, 5, N_IN),), str(tmp_path / "bf.onnx"),
                          dynamo=False, opset_version=17, input_names=["x"],
                          dynamic_axes={"x": {0: "batch", 1: "seq"}})
    cell = rnn.read_onnx_rnn(onnx.load(tmp_path / "bf.onnx"), "bf")
    assert cell.onnx_io == (True, True) and cell.bias is None
    x = _trials(5, 30, 6)
    with torch.no_grad():
        out = module(torch.from_numpy(x)).numpy()
    float_o = cell.trials(x.astype(np.float64))["o"].reshape(30, 5, N_OUT).transpose(1, 0, 2)
    assert np.abs(float_o - out).max() < 1e-5


def test_cli_compile_and_run_trials(tmp_path):
    path, _ = _torch_model(tmp_path, "relu")
    np.save(tmp_path / "calib.npy", _trials(16, 60, 2))
    x = _trials(4, 30, 8)
    np.save(tmp_path / "x.npy", x)
    runner = CliRunner()
    r = runner.invoke(main, ["compile", str(path), "-o", str(tmp_path / "m.sfn"), "--calib",
                             str(tmp_path / "calib.npy")])
    assert r.exit_code == 0, r.output
    assert "ONNX RNN operator" in r.output
    r = runner.invoke(main, ["run", str(tmp_path / "m.sfn"), "--input", str(tmp_path / "x.npy"),
                             "--output", str(tmp_path / "y.npy")])
    assert r.exit_code == 0, r.output
    y = np.load(tmp_path / "y.npy")
    from sim.artifact import load
    assert np.array_equal(y, sim.cpu.run(load(tmp_path / "m.sfn"), x).output)
    assert y.shape == (4, 30, N_OUT)
    # no --calib: the model names no task
    r = runner.invoke(main, ["compile", str(path), "-o", str(tmp_path / "n.sfn")])
    assert r.exit_code == 2 and "pass --calib trials (N, T, n_inputs)" in r.output
    with pytest.raises(ShapeError, match=r"expected \(N, T, 3\)"):
        compile_onnx(path, calib=_trials(4, 10, 0)[:, :, :2])


@pytest.mark.lava
def test_lava_equals_cpu_on_onnx_rnn(tmp_path):
    import sim.lava
    from lava_helpers import assert_same
    path, _ = _torch_model(tmp_path, "tanh")
    art = compile_onnx(path, calib=_trials(16, 60, 2)).artifact
    x = _trials(5, 20, 9)
    reference = sim.cpu.run(art, x)
    assert np.abs(reference.accumulator).max() > 0
    assert np.any(art.node("f").bias != 0)  # the RNN bias is in the deployed graph
    assert_same(sim.lava.run(art, x, batch=3, timeout=120), reference)


def _edit_rnn(path, out, **attrs):
    m = onnx.load(path)
    node = next(n for n in m.graph.node if n.op_type == "RNN")
    for k, v in attrs.items():
        node.attribute.append(helper.make_attribute(k, v))
    onnx.save(m, out)
    return out


@pytest.mark.parametrize("variant,needles", [
    (dict(bidirectional=True), ["direction 'bidirectional' is not supported"]),
    (dict(num_layers=2), ["2 RNN nodes", "several layers are not supported"]),
    (dict(extra=nn.ReLU()), ["(Relu) after the RNN is not supported"]),
])
def test_torch_variants_refused(tmp_path, variant, needles):
    path, _ = _torch_model(tmp_path, "relu" if "cls" not in variant else "x", **variant)
    with pytest.raises(ModelError) as err:
        compile_onnx(path, calib=_trials())
    for needle in needles:
        assert needle in str(err.value)
    assert str(path) in str(err.value)


def test_handmade_variants_refused(tmp_path):
    good = _sigmoid_model(tmp_path / "good.onnx")
    cases = [
        (_edit_rnn(good, tmp_path / "clip.onnx", clip=5.0), "attribute 'clip' is not supported"),
        (_edit_rnn(good, tmp_path / "alpha.onnx", activation_alpha=[0.5]),
         "attribute 'activation_alpha' is not supported"),
        (_sigmoid_model(tmp_path / "hs.onnx", activations=["HardSigmoid"]),
         "activations ['HardSigmoid'] are not supported"),
        (_sigmoid_model(tmp_path / "layout.onnx", opset=14, layout=1),
         "layout=1 is not supported"),
        (_sigmoid_model(tmp_path / "h0.onnx", h0=np.full((1, 2, HIDDEN), 0.5)),
         "initial_h 'h0' is not a zero constant"),
    ]
    for path, needle in cases:
        with pytest.raises(ModelError) as err:
            compile_onnx(path, calib=_trials())
        assert needle in str(err.value) and "'rnn' (RNN)" in str(err.value), str(err.value)
    # a zero initial_h is the default state: accepted, same cell
    zero = _sigmoid_model(tmp_path / "h0z.onnx", h0=np.zeros((1, 2, HIDDEN)))
    a = rnn.read_onnx_rnn(onnx.load(zero), "z")
    b = rnn.read_onnx_rnn(onnx.load(good), "g")
    assert np.array_equal(a.W_rec, b.W_rec) and np.array_equal(a.b_out, b.b_out)


def test_both_outputs_refused(tmp_path):
    """torch.nn.RNN on its own returns (Y, h_n): the last state as a second output."""
    torch.manual_seed(0)
    module = nn.RNN(N_IN, HIDDEN)
    path = _export(module, tmp_path / "two_out.onnx", outputs=("y", "h_n"))
    with pytest.raises(ModelError, match=r"has outputs \['y', 'h_n'\]; one output"):
        compile_onnx(path, calib=_trials())


def test_rnn_eval_runs_the_onnx_rnn_model(tmp_path):
    """`toolchain rnn eval --onnx` on an RNN-operator model: the float side is the model itself
    under onnxruntime (here an untrained Go/NoGo-shaped network: 3 inputs, 1 output)."""
    from toolchain.tasks import decision, make_task
    from toolchain.tasks import masked_r2
    from toolchain.rnn.evaluate import evaluate
    torch.manual_seed(2)
    path = _export(TorchRNN("tanh", n_out=1).eval(), tmp_path / "gonogo.onnx")
    task = make_task("go_nogo")
    art = compile_onnx(path, calib=task.inputs).artifact
    row = evaluate(art, "go_nogo", str(path))
    reference = _ort(path, task.inputs)
    assert row["float_r2"] == pytest.approx(masked_r2(reference, task.targets, task.mask))
    assert row["float_accuracy"] == decision(reference, task)
    deployed = sim.cpu.run(art, task.inputs).output
    assert row["deployed_r2"] == pytest.approx(masked_r2(deployed, task.targets, task.mask))
    assert row["output_rms_difference"] == pytest.approx(
        float(np.sqrt(np.mean((deployed - reference) ** 2))), rel=1e-5)
    # measured: 0.0038 against an output RMS of 0.087 (4.3%)
    assert 0 < row["output_rms_difference"] < 0.07 * np.sqrt(np.mean(reference ** 2))
