"""Bring your own recurrent network: a leaky E/I cell written in plain torch (not exporters.rnn),
trained on a perceptual-decision task written here in numpy, exported as a one-step cell
(u, h) → (y, h') by both torch exporters, compiles as it is: the graph is read into the E/I cell
(biases, E-only read-out), the deployed network is bit-exact (int64 reference = sim.cpu =
sim.lava) and decides as the float one does; Dale's law holds on the integer weights; graphs
outside the recognized form are refused naming the node."""
import warnings

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import sim.cpu
import sim.reference
from toolchain.cli import main
from toolchain.compiler import compile_onnx
from toolchain.errors import ModelError
from toolchain.rnn import cell_graph_trials, is_cell_graph, read_cell_graph
from toolchain.rnn.cell import check_dale_signs

N_IN, UNITS, N_EXC, N_OUT, ALPHA = 3, 40, 32, 2, 0.2
FIX, STIM, DEC = 5, 15, 10
T = FIX + STIM + DEC
COHERENCES = (0.05, 0.1, 0.2, 0.4)


def pdm_trials(n, seed, noise=0.4):
    """PerceptualDecisionMaking: a fixation cue (channel 0) until the decision period; during
    the stimulus, evidence (1 ± c)/2 plus noise for the two choices (channels 1, 2); the target
    is the one-hot choice during the decision period, where the mask is on."""
    rng = np.random.default_rng(seed)
    choice = rng.integers(0, 2, n)
    coh = rng.choice(COHERENCES, n) * np.where(choice == 0, 1, -1)
    x = np.zeros((n, T, N_IN), np.float32)
    x[:, :FIX + STIM, 0] = 1
    stim = slice(FIX, FIX + STIM)
    x[:, stim, 1] = ((1 + coh) / 2)[:, None] + noise * rng.standard_normal((n, STIM))
    x[:, stim, 2] = ((1 - coh) / 2)[:, None] + noise * rng.standard_normal((n, STIM))
    y = np.zeros((n, T, N_OUT), np.float32)
    y[np.arange(n), FIX + STIM:, :] = np.eye(N_OUT)[choice][:, None]
    mask = np.zeros((n, T), bool)
    mask[:, FIX + STIM:] = True
    return x, y, mask, choice


def accuracy(out, choice):
    """The choice: argmax of the read-out averaged over the decision period."""
    return float(np.mean(out[:, FIX + STIM:].mean(1).argmax(-1) == choice))


class EICell(nn.Module):
    """h' = (1 − α)·h + α·relu(W_in·u + b_in + (|W_rec|∘mask)·h + b_rec); y = W_out·h'[E] + b."""

    def __init__(self, activation=torch.relu, leak_form=False, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.inp, self.rec = nn.Linear(N_IN, UNITS), nn.Linear(UNITS, UNITS)
        self.out = nn.Linear(N_EXC, N_OUT)
        sign = torch.ones(UNITS)
        sign[N_EXC:] = -1
        mask = sign[None, :].repeat(UNITS, 1)
        mask.fill_diagonal_(0)
        self.register_buffer("mask", mask)
        with torch.no_grad():
            self.rec.weight.mul_(0.5)
        self.f, self.leak_form = activation, leak_form

    def w_rec(self):
        return self.rec.weight.abs() * self.mask

    def forward(self, u, h):
        z = self.inp(u) + nn.functional.linear(h, self.w_rec(), self.rec.bias)
        h = h + ALPHA * (self.f(z) - h) if self.leak_form else (1 - ALPHA) * h + ALPHA * self.f(z)
        return self.out(h[:, :N_EXC]), h

    def trials(self, x):
        h, outs = torch.zeros(x.shape[0], UNITS), []
        for t in range(x.shape[1]):
            y, h = self(x[:, t], h)
            outs.append(y)
        return torch.stack(outs, 1)


def export(module, path, dynamo=False, batch=8):
    args = (torch.zeros(batch, N_IN), torch.zeros(batch, UNITS))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(module, args, str(path), dynamo=True, input_names=["u", "h"],
                              output_names=["y", "h_next"], verbose=False)
        else:
            torch.onnx.export(module, args, str(path), dynamo=False, input_names=["u", "h"],
                              output_names=["y", "h_next"],
                              dynamic_axes={"u": {0: "b"}, "h": {0: "b"}})
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The cell trained 300 steps (Adam, batch 64) on fresh trials; both exports."""
    torch.manual_seed(0)
    cell = EICell()
    opt = torch.optim.Adam(cell.parameters(), lr=0.01)
    for step in range(300):
        x, y, mask, _ = pdm_trials(64, 1000 + step)
        out = cell.trials(torch.from_numpy(x))
        m = torch.from_numpy(mask)
        loss = ((out - torch.from_numpy(y)) ** 2)[m].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    cell.eval()
    folder = tmp_path_factory.mktemp("byo")
    return cell, {"legacy": export(cell, folder / "legacy.onnx"),
                  "dynamo": export(cell, folder / "dynamo.onnx", dynamo=True)}


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_graph_read_as_the_cell(trained, exporter):
    module, paths = trained
    model = onnx.load(paths[exporter])
    assert is_cell_graph(model)
    cell = read_cell_graph(model, exporter)
    assert (cell.activation, cell.origin, cell.onnx_names) == ("relu", "onnx_cell",
                                                               ("u", "h", "y", "h_next"))
    assert cell.alpha == pytest.approx(ALPHA, abs=1e-7)
    p = {k: v.detach().numpy().astype(np.float64) for k, v in module.state_dict().items()}
    assert np.array_equal(cell.W_inp, p["inp.weight"])
    assert np.array_equal(cell.W_rec, module.w_rec().detach().numpy().astype(np.float64))
    assert np.abs(cell.bias - (p["inp.bias"] + p["rec.bias"])).max() < 1e-7
    assert np.array_equal(cell.W_out[:, :N_EXC], p["out.weight"])
    assert not np.any(cell.W_out[:, N_EXC:])          # the read-out sees excitatory units only
    assert np.array_equal(cell.b_out, p["out.bias"])
    x = pdm_trials(8, 7)[0]
    with torch.no_grad():
        expect = module.trials(torch.from_numpy(x)).numpy()
    got = cell.trials(x.astype(np.float64))["o"].reshape(T, 8, N_OUT).transpose(1, 0, 2)
    assert np.abs(got - expect).max() < 1e-5
    ort_out, _ = cell_graph_trials(model, x, cell)   # dynamo: batch 8 fixed; legacy: dynamic
    assert np.abs(ort_out - expect).max() < 1e-5


@pytest.fixture(scope="module")
def deployed(trained):
    _, paths = trained
    calib = pdm_trials(64, 1)[0]
    return {k: compile_onnx(p, calib=calib, dale=True) for k, p in paths.items()}


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_deployed_bit_exact_and_decides_as_float(trained, deployed, exporter):
    module, paths = trained
    compiled = deployed[exporter]
    art = compiled.artifact
    assert art.recurrent and art.meta["source"]["kind"] == "onnx_cell"
    assert art.meta["rnn"]["dale"] is True and art.meta["rnn"]["n_exc"] == N_EXC
    assert art.meta["rnn"]["decay"] == round(ALPHA * 4096)
    assert compiled.notes[0].startswith("one-step cell graph: 40 units, relu, α = 0.2, input "
                                        "'u', state 'h' fed back from 'h_next'")
    assert "read-out 'y' = W·h' from 32 of 40 units, with bias" in compiled.notes[0]
    assert f"Dale's law holds on the integer weights: {N_EXC} excitatory, 8 inhibitory units" \
        in compiled.notes
    # Dale's law on the integer recurrent weights: every unit's column keeps its sign
    w = art.node("z_rec").weight
    signs = np.r_[np.ones(N_EXC), -np.ones(UNITS - N_EXC)].astype(np.int64)
    assert check_dale_signs(w, signs) == (N_EXC, UNITS - N_EXC)
    assert np.all(w[:, :N_EXC] >= 0) and np.all(w[:, N_EXC:] <= 0) and np.any(w < 0)
    x, _, _, choice = pdm_trials(400, 99)   # held out
    run = sim.cpu.run(art, x)
    assert run.output.shape == (400, T, N_OUT)
    assert np.array_equal(run.output, sim.reference.run(art, x).output)
    assert np.array_equal(run.accumulator, sim.reference.run(art, x).accumulator)
    model = onnx.load(paths[exporter])
    float_out, _ = cell_graph_trials(model, x, read_cell_graph(model, exporter))
    float_acc, deployed_acc = accuracy(float_out, choice), accuracy(run.output, choice)
    # measured: float 0.8175, deployed 0.8200 (both exporters)
    assert float_acc > 0.75                            # the task was learned
    assert abs(deployed_acc - float_acc) <= 0.01, (float_acc, deployed_acc)


def test_both_exporters_deploy_the_same_network(deployed):
    x = pdm_trials(20, 5)[0]
    a, b = (sim.cpu.run(deployed[k].artifact, x).output for k in ("legacy", "dynamo"))
    assert np.array_equal(a, b)


@pytest.mark.lava
def test_lava_equals_cpu(deployed):
    import sim.lava
    from lava_helpers import assert_same
    art = deployed["legacy"].artifact
    x = pdm_trials(4, 11)[0]
    reference = sim.cpu.run(art, x)
    assert np.abs(reference.accumulator).max() > 0
    assert_same(sim.lava.run(art, x, batch=4, timeout=180), reference)


class Free(nn.Module):
    """A cell whose step is the function `step(self, u, h)`, weights from a fixed seed."""

    def __init__(self, step, n_in=N_IN, units=12, n_out=N_OUT, seed=3):
        super().__init__()
        torch.manual_seed(seed)
        self.inp, self.rec = nn.Linear(n_in, units), nn.Linear(units, units)
        self.both = nn.Linear(n_in + units, units)
        self.out = nn.Linear(units, n_out)
        self.step, self.n_in, self.units = step, n_in, units

    def forward(self, u, h):
        return self.step(self, u, h)


def _export_free(module, path, outputs=("y", "h_next")):
    args = (torch.zeros(2, module.n_in), torch.zeros(2, module.units))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), dynamo=False, input_names=["x", "state"],
                          output_names=list(outputs),
                          dynamic_axes={"x": {0: "b"}, "state": {0: "b"}})
    return path


VARIANTS = {
    # sigmoid, the leak written h + α·(f − h), recurrent weights without bias
    "sigmoid": (lambda s, u, h: (lambda h2: (s.out(h2), h2))(
        h + 0.3 * (torch.sigmoid(s.inp(u) + h @ s.rec.weight.T) - h)), "sigmoid", 0.3),
    # tanh on one Linear of the concatenated [u, h]; read-out of units 2, 5, 7 (Gather)
    "tanh_concat": (lambda s, u, h: (lambda h2: (h2[:, [2, 5, 7]] * 2.0 - 1.0, h2))(
        0.5 * h + 0.5 * torch.tanh(s.both(torch.cat([u, h], 1)))), "tanh", 0.5),
    # no leak (α = 1) and only the state as output
    "relu_state_only": (lambda s, u, h: torch.relu(s.inp(u) - s.rec(h) / 2), "relu", 1.0),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variants_read_as_the_cell(tmp_path, name):
    step, activation, alpha = VARIANTS[name]
    module = Free(step).eval()
    outputs = ("h_next",) if name == "relu_state_only" else ("y", "h_next")
    path = _export_free(module, tmp_path / f"{name}.onnx", outputs)
    model = onnx.load(path)
    cell = read_cell_graph(model, name)
    assert (cell.activation, cell.alpha) == (activation, pytest.approx(alpha, abs=1e-7))
    assert cell.onnx_names == ("x", "state", None if len(outputs) == 1 else "y", "h_next")
    x = np.random.default_rng(2).uniform(-1, 1, (5, 9, N_IN)).astype(np.float32)
    h, expect = torch.zeros(5, 12), []
    with torch.no_grad():
        for t in range(9):
            out = module(torch.from_numpy(x[:, t]), h)
            h = out[1] if isinstance(out, tuple) else out
            expect.append((out[0] if isinstance(out, tuple) else out).numpy())
    expect = np.stack(expect, 1)
    got = cell.trials(x.astype(np.float64))["o"]
    assert np.abs(got.reshape(9, 5, -1).transpose(1, 0, 2) - expect).max() < 1e-5
    if name == "tanh_concat":
        assert np.flatnonzero(np.any(cell.W_out != 0, 0)).tolist() == [2, 5, 7]
        assert np.array_equal(cell.b_out, [-1.0, -1.0, -1.0])
    art = compile_onnx(path, calib=x).artifact
    assert np.array_equal(sim.cpu.run(art, x).output, sim.reference.run(art, x).output)


def test_state_named_when_widths_agree(tmp_path):
    """u and h both 12 wide: the state is found from the graph, or named with state=."""
    step = lambda s, u, h: (lambda h2: (s.out(h2), h2))(0.8 * h + 0.2 * torch.relu(
        s.inp(u) + s.rec(h)))
    path = _export_free(Free(step, n_in=12).eval(), tmp_path / "square.onnx")
    model = onnx.load(path)
    assert read_cell_graph(model, "m").onnx_names[:2] == ("x", "state")
    assert read_cell_graph(model, "m", state="state").onnx_names[:2] == ("x", "state")
    with pytest.raises(ModelError, match=r"m: output 'h_next' of node '/Add_1' \(Add\) with state input 'x': "
                       r"expected h' = \(1 − α\)·h \+ α·f\(z\) per unit; it depends on u"):
        read_cell_graph(model, "m", state="x")
    with pytest.raises(ModelError, match=r"state input 'nope' is not an input of the model"):
        read_cell_graph(model, "m", state="nope")


REFUSED = {
    "second_activation": (lambda s, u, h: (lambda h2: (torch.tanh(s.out(h2)), h2))(
        0.8 * h + 0.2 * torch.relu(s.inp(u) + s.rec(h))),
        r"node '/Tanh' \(Tanh\) is a second activation \(the first: node '/Relu' \(Relu\)\)"),
    "gated": (lambda s, u, h: (lambda h2: (s.out(h2), h2))(
        0.8 * h + 0.2 * torch.relu(s.inp(u) + s.rec(h)) * h),
        r"node '/Mul_2' \(Mul\) multiplies two computed tensors \(expected a constant factor\)"),
    "leak_not_convex": (lambda s, u, h: (lambda h2: (s.out(h2), h2))(
        0.9 * h + 0.2 * torch.relu(s.inp(u) + s.rec(h))),
        r"output 'h_next' of node '/Add_1' \(Add\) with state input 'state': expected h' = \(1 − α\)·h \+ "
        r"α·f\(z\) per unit; it is not a multiple of the identity in h and in f\(z\)"),
    "readout_of_f": (lambda s, u, h: (lambda f: (s.out(f), 0.8 * h + 0.2 * f))(
        torch.relu(s.inp(u) + s.rec(h))),
        r"output 'y' of node '/out/Gemm' \(Gemm\): expected a read-out W·h' \+ b of the state 'h_next'"),
    "max": (lambda s, u, h: (lambda h2: (s.out(h2), h2))(
        0.8 * h + 0.2 * torch.relu(torch.maximum(s.inp(u), s.rec(h)))),
        r"node '/Max' \(Max\) is not part of the recognized cell; a cell is built from MatMul"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_naming_the_node(tmp_path, name):
    step, message = REFUSED[name]
    path = _export_free(Free(step).eval(), tmp_path / f"{name}.onnx")
    with pytest.raises(ModelError, match=message) as err:
        compile_onnx(path, calib=np.zeros((2, 3, N_IN), np.float32))
    assert "\n" not in str(err.value) and str(err.value).startswith(str(path))


def test_dale_asked_of_mixed_weights(tmp_path):
    step = lambda s, u, h: (lambda h2: (s.out(h2), h2))(0.8 * h + 0.2 * torch.relu(
        s.inp(u) + s.rec(h)))
    path = _export_free(Free(step).eval(), tmp_path / "mixed.onnx")
    with pytest.raises(ModelError, match=r"Dale's law asked, but in the float recurrent weights "
                       r"units \[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11\] have outgoing weights of "
                       r"both signs \(12 units\)"):
        compile_onnx(path, calib=np.zeros((2, 3, N_IN), np.float32), dale=True)
    # without Dale's law it compiles
    art = compile_onnx(path, calib=np.ones((2, 3, N_IN), np.float32)).artifact
    assert art.meta["rnn"]["dale"] is False


def test_cli_compile_dale_state_and_refusal(trained, tmp_path):
    _, paths = trained
    np.save(tmp_path / "calib.npy", pdm_trials(32, 1)[0])
    runner = CliRunner()
    r = runner.invoke(main, ["compile", str(paths["legacy"]), "-o", str(tmp_path / "m.sfn"),
                             "--calib", str(tmp_path / "calib.npy"), "--dale", "--state", "h"])
    assert r.exit_code == 0, r.output
    assert "Dale's law holds on the integer weights: 32 excitatory, 8 inhibitory units" in \
        r.output.replace("\n", " ")
    bad = _export_free(Free(REFUSED["gated"][0]).eval(), tmp_path / "gated.onnx")
    np.save(tmp_path / "c3.npy", np.zeros((2, 3, N_IN), np.float32))
    r = runner.invoke(main, ["compile", str(bad), "-o", str(tmp_path / "g.sfn"), "--calib",
                             str(tmp_path / "c3.npy")])
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "multiplies two computed" \
        in lines[0]


def test_cli_rnn_eval_on_your_own_trials(trained, deployed, tmp_path):
    """`toolchain rnn eval --trials --targets --mask --onnx` scores a task the toolchain does not
    know: masked R² and decision accuracy from the masked window, deployed and float, on the
    trials that were not calibration trials (named)."""
    from toolchain.rnn.evaluate import evaluate_arrays
    from toolchain.tasks import masked_r2
    _, paths = trained
    art = deployed["legacy"].artifact
    art.save(tmp_path / "m.sfn")
    # trials 0–3 are calibration trials (pdm_trials(64, 1) begins with them), then 60 held out
    calib_x, calib_y, calib_m, _ = pdm_trials(64, 1)
    x, y, m, choice = pdm_trials(60, 99)
    x, y, m = (np.concatenate([a[:4], b]) for a, b in ((calib_x, x), (calib_y, y), (calib_m, m)))
    for name, a in (("x", x), ("y", y), ("m", m)):
        np.save(tmp_path / f"{name}.npy", a)
    args = ["rnn", "eval", str(tmp_path / "m.sfn"), "--trials", str(tmp_path / "x.npy"),
            "--targets", str(tmp_path / "y.npy"), "--mask", str(tmp_path / "m.npy"),
            "--onnx", str(paths["legacy"])]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    lines = r.output.strip().splitlines()
    assert lines[0] == (f"scored on 60 of 64 trials of {tmp_path / 'x.npy'}: trials 4–63; "
                        "trials 0–3 were calibration trials, left out; decisions from the "
                        "window")
    deployed_out = sim.cpu.run(art, x[4:]).output
    model = onnx.load(paths["legacy"])
    float_out = cell_graph_trials(model, x[4:], read_cell_graph(model, "m"))[0]
    expect = (f"60 trials on cpu: deployed R² {masked_r2(deployed_out, y[4:], m[4:]):.3f}, "
              f"accuracy {accuracy(deployed_out, choice):.3f} | float R² "
              f"{masked_r2(float_out, y[4:], m[4:]):.3f}, accuracy "
              f"{accuracy(float_out, choice):.3f}")
    assert lines[1] == expect
    row = evaluate_arrays(art, x, y, m, str(paths["legacy"]))
    assert row["used"] == list(range(4, 64)) and row["calibration_trials"] == [0, 1, 2, 3]
    assert row["deployed_accuracy"] == accuracy(deployed_out, choice)
    assert row["float_accuracy"] == accuracy(float_out, choice)
    # without a mask: R² over every step, decisions from the last step
    row = evaluate_arrays(art, x, y, include_calibration=True)
    assert row["trials"] == 64 and row["decision"] == "last step"
    out = sim.cpu.run(art, x).output
    assert row["deployed_accuracy"] == float(np.mean(out[:, -1].argmax(-1) ==
                                                     y[:, -1].argmax(-1)))
    assert row["deployed_r2"] == masked_r2(out, y, np.ones(x.shape[:2], bool))
    # one-line refusals, exit code 2
    np.save(tmp_path / "bad.npy", y[:, :, :1])
    for extra, needle in ((["--targets", str(tmp_path / "bad.npy")],
                           "targets have 1 outputs; the network has 2"),
                          (["--task", "cddm"], "--task and --trials are alternatives")):
        r = CliRunner().invoke(main, args[:5] + args[7:] + extra if extra[0] == "--targets"
                               else args + extra)
        assert r.exit_code == 2 and needle in r.output, r.output
    np.save(tmp_path / "c.npy", calib_x[:4])
    np.save(tmp_path / "cy.npy", calib_y[:4])
    r = CliRunner().invoke(main, ["rnn", "eval", str(tmp_path / "m.sfn"), "--trials",
                                  str(tmp_path / "c.npy"), "--targets", str(tmp_path / "cy.npy")])
    assert r.exit_code == 2 and "error: all 4 trials were calibration trials" in r.output


def test_constant_bomb_in_a_cell_graph_refused_before_evaluation(tmp_path):
    """Constant subgraphs of a cell graph are folded with the importer's bounds."""
    from onnx import TensorProto, helper, numpy_helper
    from toolchain.errors import ShapeError
    nodes = [helper.make_node("Abs", ["s"], ["a"], name="abs"),
             helper.make_node("ConstantOfShape", ["a"], ["c"], name="fill"),
             helper.make_node("Add", ["h", "c"], ["h_next"], name="add")]
    graph = helper.make_graph(
        nodes, "bomb", [helper.make_tensor_value_info("u", TensorProto.FLOAT, ["b", 3]),
                        helper.make_tensor_value_info("h", TensorProto.FLOAT, ["b", 4])],
        [helper.make_tensor_value_info("h_next", TensorProto.FLOAT, ["b", 4])],
        [numpy_helper.from_array(np.array([-100000, -100000], np.int64), "s")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "bomb.onnx")
    with pytest.raises(ShapeError, match=r"node 'fill' \(ConstantOfShape.*constant 'c' would "
                       r"have shape \[100000, 100000\].*refused before evaluating it"):
        compile_onnx(tmp_path / "bomb.onnx", calib=np.zeros((2, 3, 3), np.float32))


def test_two_input_graph_without_activation_refused(tmp_path):
    """A two-input graph whose output has the state's shape is read as a cell, and says so."""
    from onnx import TensorProto, helper
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["s"], name="sum")], "sum",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["n", 4]) for n in ("a", "b")],
        [helper.make_tensor_value_info("s", TensorProto.FLOAT, ["n", 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
              tmp_path / "sum.onnx")
    with pytest.raises(ModelError, match=r"sum.onnx: read as a one-step cell \(state input 'b'\), "
                       r"it has no Relu, Sigmoid or Tanh on the path to \['s'\]"):
        compile_onnx(tmp_path / "sum.onnx", calib=np.zeros((2, 3, 4), np.float32))


def test_cli_train_on_your_own_task_module(tmp_path):
    """`toolchain rnn train --task-module FILE.py:FN` trains the E/I RNN on a task the toolchain
    does not know (examples/custom_task.py: PerceptualDecisionMaking in numpy); the cell names
    no task, so compiling asks for --calib trials; on held-out trials the deployed network
    decides as the float one. Bad specs are refused in one line."""
    import json
    import sys
    from pathlib import Path
    example = Path(__file__).resolve().parents[1] / "examples" / "custom_task.py"
    sys.path.insert(0, str(example.parent))
    try:
        import custom_task
    finally:
        sys.path.remove(str(example.parent))
    cell, art = tmp_path / "pdm.onnx", tmp_path / "pdm.sfn"
    r = CliRunner().invoke(main, ["rnn", "train", "--task-module",
                                  f"{example}:perceptual_decision", "--units", "24", "--steps",
                                  "80", "--seed", "1", "-o", str(cell), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["task"] == "perceptual_decision"
    assert not any(p.key == "sfn.task" for p in onnx.load(str(cell)).metadata_props)
    r = CliRunner().invoke(main, ["compile", str(cell), "-o", str(art)])
    assert r.exit_code == 2 and "pass --calib trials" in r.output and not art.exists()
    for name, seed in (("c", 1), ("t", 2)):
        x, y, m, _ = custom_task.perceptual_decision(seed=seed, trials=128)
        for part, a in (("x", x), ("y", y), ("m", m)):
            np.save(tmp_path / f"{name}{part}.npy", a)
    r = CliRunner().invoke(main, ["compile", str(cell), "--calib", str(tmp_path / "cx.npy"),
                                  "-o", str(art)])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["rnn", "eval", str(art), "--json", "--onnx", str(cell)] +
                           [a for p, part in (("trials", "x"), ("targets", "y"), ("mask", "m"))
                            for a in (f"--{p}", str(tmp_path / f"t{part}.npy"))])
    assert r.exit_code == 0, r.output
    row = json.loads(r.output)
    assert row["float_accuracy"] > 0.7, row
    assert abs(row["deployed_accuracy"] - row["float_accuracy"]) <= 0.03, row
    for spec, needle in ((f"{tmp_path}/none.py:f", "no file"),
                         (f"{example}:nope", "has no function 'nope'"),
                         ("custom_task", "expected MODULE:FUNCTION"),
                         ("no_such_module_xyz:f", "importing no_such_module_xyz failed")):
        r = CliRunner().invoke(main, ["rnn", "train", "--task-module", spec, "-o",
                                      str(tmp_path / "z.onnx")])
        assert r.exit_code == 2 and f"error: --task-module {spec!r}" in r.output, r.output
        assert needle in r.output and len(r.output.strip().splitlines()) == 1
