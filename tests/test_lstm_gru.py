"""The ONNX LSTM and GRU operators (torch.nn.LSTM / nn.GRU + nn.Linear through the legacy
exporter) deploy: the cell read from the model equals torch, a 32-unit network trained on
Go/NoGo deploys within 0.02 R² of float on held-out trials, the int64 reference, sim.cpu and
sim.lava agree bit for bit, the CLI compiles and runs them, and what is not supported is refused
naming the node."""
import importlib.util
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import sim.cpu
import sim.reference
from compare import assert_same
from toolchain.cli import main
from toolchain.compiler import compile_onnx
from toolchain.errors import ModelError
from toolchain.rnn.evaluate import float_trials
from toolchain.rnn.gated import read_gated
from toolchain.tasks import make_task

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("lstm", "gru")
MAX_DR2 = 0.02


def _script():
    spec = importlib.util.spec_from_file_location("gated_rnn_gonogo",
                                                  ROOT / "examples" / "gated_rnn_gonogo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """kind → (torch module, ONNX path, measure() row): 32 units, 300 Adam steps (≈ 6 s each
    on a 2-core VM), compiled calibrated on the task's 11 trials."""
    script = _script()
    out = tmp_path_factory.mktemp("gated")
    found = {}
    for kind in KINDS:
        net = script.train(kind, units=32, steps=300)
        path = script.export(net, out / f"go_nogo_{kind}.onnx")
        found[kind] = (net, path, script.measure(path))
    return found


def _held_out(n=20, T=60):
    return make_task("go_nogo", values=np.linspace(0.025, 0.975, n), T=T)


@pytest.mark.parametrize("kind", KINDS)
def test_float_cell_equals_torch(trained, kind):
    net, path, _ = trained[kind]
    cell = read_gated(onnx.load(path), str(path))
    assert cell.kind == kind and cell.n_units == 32 and cell.onnx_io == (
        (True, True) if kind == "lstm" else (False, False))
    x = _held_out(5, 40).inputs
    with torch.no_grad():
        xt = torch.from_numpy(x)
        ref = net(xt).numpy() if net.batch_first else \
            net(xt.transpose(0, 1)).transpose(0, 1).numpy()
    assert np.abs(cell.outputs(x.astype(np.float64)) - ref).max() < 1e-5
    assert np.abs(float_trials(onnx.load(path), str(path), x) - ref).max() < 1e-5


@pytest.mark.parametrize("kind", KINDS)
def test_deployed_within_002_r2_of_float(trained, kind):
    _, _, row = trained[kind]
    assert row["float_r2"] >= 0.85, row
    assert abs(row["deployed_r2"] - row["float_r2"]) <= MAX_DR2, row
    assert abs(row["deployed_accuracy"] - row["float_accuracy"]) <= 0.05, row
    art = row["compiled"].artifact
    assert art.recurrent and art.meta["source"]["kind"] == f"onnx_{kind}"
    kinds = [n.kind for n in art.nodes]
    # gates are table neurons, gate products Product nodes, the states read back by delays
    tables = [n for n in art.nodes if n.kind == "neuron" and n.fire == "adaptive"]
    assert len(tables) == (5 if kind == "lstm" else 4)
    assert kinds.count("product") == (3 if kind == "lstm" else 3)
    delays = {n.source for n in art.nodes if n.kind == "delay"}
    assert delays == ({"c", "h"} if kind == "lstm" else {"h"})
    # the recurrent term (f⊙c, z⊙h) arrives with a power-of-two gain: the state's threshold is
    # the gate's level count times a power of two, so its unit is exactly its delay's
    state = art.node("c" if kind == "lstm" else "h")
    theta = np.unique(state.threshold)
    levels = art.meta["levels"]
    assert len(theta) == 1 and theta[0] % levels == 0
    k = theta[0] // levels
    assert k & (k - 1) == 0
    assert (state.lo, state.hi) == (-art.meta["state_levels"], art.meta["state_levels"])


@pytest.mark.parametrize("kind", KINDS)
def test_reference_equals_cpu(trained, kind):
    art = trained[kind][2]["compiled"].artifact
    x = _held_out(7, 40).inputs
    result = sim.cpu.run(art, x)
    assert_same(sim.reference.run(art, x), result)
    assert sum(st.saturations for st in result.stats.values()) == 0
    assert np.abs(result.accumulator).max() > 0


@pytest.mark.lava
@pytest.mark.parametrize("kind", KINDS)
def test_lava_equals_cpu(trained, kind):
    import sim.lava
    art = trained[kind][2]["compiled"].artifact
    x = _held_out(5, 30).inputs
    assert_same(sim.lava.run(art, x, batch=3, timeout=120), sim.cpu.run(art, x))


def test_cli_compile_run_and_eval(trained, tmp_path):
    _, path, _ = trained["gru"]
    task = _held_out(6, 50)
    np.save(tmp_path / "calib.npy", make_task("go_nogo").inputs)
    np.save(tmp_path / "x.npy", task.inputs)
    np.save(tmp_path / "y.npy", task.targets)
    runner = CliRunner()
    r = runner.invoke(main, ["compile", str(path), "-o", str(tmp_path / "m.sfn"), "--calib",
                             str(tmp_path / "calib.npy")])
    assert r.exit_code == 0, r.output
    assert "ONNX GRU operator: 32 units, linear_before_reset = 1" in r.output
    r = runner.invoke(main, ["run", str(tmp_path / "m.sfn"), "--input", str(tmp_path / "x.npy"),
                             "--output", str(tmp_path / "out.npy")])
    assert r.exit_code == 0, r.output
    from sim.artifact import load
    out = np.load(tmp_path / "out.npy")
    assert out.shape == (6, 50, 1)
    assert np.array_equal(out, sim.cpu.run(load(tmp_path / "m.sfn"), task.inputs).output)
    r = runner.invoke(main, ["rnn", "eval", str(tmp_path / "m.sfn"), "--trials",
                             str(tmp_path / "x.npy"), "--targets", str(tmp_path / "y.npy"),
                             "--onnx", str(path)])
    assert r.exit_code == 0, r.output
    assert "deployed R²" in r.output
    r = runner.invoke(main, ["compile", str(path), "-o", str(tmp_path / "n.sfn")])
    assert r.exit_code == 2 and "pass --calib trials (N, T, n_inputs)" in r.output


# --- handmade models: GRU linear_before_reset = 0 and the refusals ----------------------------

N_IN, H = 3, 8


def _gated_model(path, op="LSTM", opset=17, inputs=None, consts=(), outputs=("Y",), extra=(),
                 final="out", **attrs):
    """One LSTM/GRU node X → Y (seq, 1, batch, H) → Squeeze → MatMul (H, 1): random weights."""
    rng = np.random.default_rng(7)
    k = 4 if op == "LSTM" else 3
    arrays = {"W": rng.normal(0, 0.8, (1, k * H, N_IN)),
              "R": rng.normal(0, 0.8 / np.sqrt(H), (1, k * H, H)),
              "B": rng.normal(0, 0.3, (1, 2 * k * H)), "W_o": rng.normal(0, 0.5, (H, 1)),
              "axes": np.array([1], np.int64)}
    arrays.update(dict(consts))
    inits = [numpy_helper.from_array(a if a.dtype.kind == "i" else a.astype(np.float32), n)
             for n, a in arrays.items()]
    node_inputs = inputs or ["X", "W", "R", "B"]
    nodes = [helper.make_node(op, node_inputs, list(outputs), name="cell", hidden_size=H,
                              **attrs),
             helper.make_node("Squeeze", ["Y", "axes"], ["Ys"]),
             helper.make_node("MatMul", ["Ys", "W_o"], ["out"])] + list(extra)
    graph = helper.make_graph(
        nodes, "gated", [helper.make_tensor_value_info("X", TensorProto.FLOAT,
                                                       ["seq", "batch", N_IN])],
        [helper.make_tensor_value_info(final, TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _trials(n=6, T=30, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.uniform(0, 1, (n, T, N_IN)) * rng.uniform(0.3, 1, (n, 1, 1))).astype(np.float32)


@pytest.mark.parametrize("op,attrs", [pytest.param("GRU", dict(linear_before_reset=0),
                                                   marks=pytest.mark.slow),
                                      ("GRU", dict(linear_before_reset=1)), ("LSTM", {})],
                         ids=["gru-lbr0", "gru-lbr1", "lstm"])
def test_handmade_cells_track_onnxruntime(tmp_path, op, attrs):
    """Both GRU forms (the reset gate before or after R_n) and an LSTM built by hand: the cell
    equals onnxruntime, the deployed network tracks it, reference == sim.cpu."""
    path = _gated_model(tmp_path / "m.onnx", op, **attrs)
    cell = read_gated(onnx.load(path), str(path))
    assert cell.linear_before_reset == bool(attrs.get("linear_before_reset", 0))
    art = compile_onnx(path, calib=_trials(16, 40, 1)).artifact
    x = _trials(7, 50, 2)
    deployed = sim.cpu.run(art, x)
    reference = float_trials(onnx.load(path), str(path), x)
    rel = np.sqrt(np.mean((deployed.output - reference) ** 2) / np.mean(reference ** 2))
    assert rel < 0.03, rel
    assert_same(sim.reference.run(art, x), deployed)


def _lstm_torch(tmp_path, name, **kw):
    torch.manual_seed(0)
    cls = kw.pop("cls", nn.LSTM)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = cls(N_IN, H, **kw)
            self.lin = nn.Linear(H * (2 if kw.get("bidirectional") else 1), 1)

        def forward(self, x):
            return self.lin(self.rnn(x)[0])

    path = tmp_path / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Net().eval(), (torch.zeros(5, 2, N_IN),), str(path), dynamo=False,
                          opset_version=17, input_names=["x"],
                          dynamic_axes={"x": {0: "seq", 1: "batch"}})
    return path


def test_refusals(tmp_path):
    nonzero = np.full((1, 2, H), 0.5)
    cases = [
        (_lstm_torch(tmp_path, "bi", bidirectional=True),
         "direction 'bidirectional' is not supported", "(LSTM)"),
        (_lstm_torch(tmp_path, "two", cls=nn.GRU, num_layers=2),
         "2 GRU nodes", "several layers are not supported"),
        (_gated_model(tmp_path / "peep.onnx", inputs=["X", "W", "R", "B", "", "", "", "P"],
                      consts={"P": np.full((1, 3 * H), 0.1)}),
         "peepholes P 'P' are not supported", "'cell' (LSTM)"),
        (_gated_model(tmp_path / "clip.onnx", clip=3.0), "attribute 'clip' is not supported",
         "'cell' (LSTM)"),
        (_gated_model(tmp_path / "acts.onnx", activations=["Sigmoid", "Relu", "Tanh"]),
         "activations ['Sigmoid', 'Relu', 'Tanh'] are not supported", "'cell' (LSTM)"),
        (_gated_model(tmp_path / "gacts.onnx", "GRU", activations=["HardSigmoid", "Tanh"]),
         "activations ['HardSigmoid', 'Tanh'] are not supported", "'cell' (GRU)"),
        (_gated_model(tmp_path / "h0.onnx", inputs=["X", "W", "R", "B", "", "h0"],
                      consts={"h0": nonzero}),
         "initial_h 'h0' is not a zero constant", "'cell' (LSTM)"),
        (_gated_model(tmp_path / "c0.onnx", inputs=["X", "W", "R", "B", "", "", "c0"],
                      consts={"c0": nonzero}),
         "initial_c 'c0' is not a zero constant", "'cell' (LSTM)"),
        (_gated_model(tmp_path / "fgt.onnx", input_forget=1),
         "input_forget = 1 is not supported", "'cell' (LSTM)"),
        (_gated_model(tmp_path / "yc.onnx", outputs=("Y", "", "Y_c"), final="sum",
                      extra=[helper.make_node("MatMul", ["Y_c", "W_o"], ["c_out"]),
                             helper.make_node("Add", ["out", "c_out"], ["sum"])]),
         "its last state Y_c 'Y_c' is used", "'cell' (LSTM)"),
        (_gated_model(tmp_path / "lens.onnx", "GRU", inputs=["X", "W", "R", "B", "lens"],
                      consts={"lens": np.array([5, 5], np.int32)}),
         "sequence_lens is not supported", "'cell' (GRU)"),
    ]
    for path, *needles in cases:
        with pytest.raises(ModelError) as err:
            compile_onnx(path, calib=_trials())
        for needle in needles:
            assert needle in str(err.value), str(err.value)
        assert str(path) in str(err.value)
    # zero initial states and zero peepholes are the defaults: accepted, the same cell
    zero = _gated_model(tmp_path / "zero.onnx", inputs=["X", "W", "R", "B", "", "h0", "c0", "P"],
                        consts={"h0": 0 * nonzero, "c0": 0 * nonzero, "P": np.zeros((1, 3 * H))})
    a = read_gated(onnx.load(zero), "zero")
    b = read_gated(onnx.load(_gated_model(tmp_path / "plain.onnx")), "plain")
    assert all(np.array_equal(a.R[g], b.R[g]) for g in a.R)
    with pytest.raises(ModelError, match="Dale's law"):
        compile_onnx(zero, calib=_trials(), dale=True)
