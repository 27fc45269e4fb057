"""Sequence models: a leaky E/I ReLU cell written in plain torch (tests/test_byo_rnn.py's EICell,
biases, read-out from the excitatory units), applied over time in a Python loop and exported as
the unrolled recurrence — batch-first and time-major, by both torch exporters — folds back into
the cell of its one-step export: the same Cell, the same artifact, bit-exact (int64 reference =
sim.cpu = sim.lava), deciding a perceptual-decision task as the float model does, Dale's law on
the integer weights. torch.nn.RNN through the dynamo exporter (unrolled, no RNN node) compiles
to the artifact of the legacy exporter's RNN operator. Loops that are no cell applied at every
step are refused in one line."""
import warnings

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import sim.cpu
import sim.reference
from test_byo_rnn import EICell, N_EXC, N_IN, N_OUT, T, UNITS, accuracy, export, pdm_trials
from toolchain.cli import main
from toolchain.compiler import compile_onnx
from toolchain.errors import ModelError
from toolchain.rnn import (cell_graph_trials, is_cell_graph, is_sequence_graph, read_cell_graph,
                           read_sequence, sequence_trials)
from toolchain.rnn.cell import check_dale_signs

LAYOUTS = {"batch_first": "batch-first (N, T, n_in)", "time_major": "time-major (T, N, n_in)"}
SEQUENCES = [f"{e}_{layout}" for e in ("legacy", "dynamo") for layout in LAYOUTS]


class Loop(nn.Module):
    """The cell applied at every step of x (N, T, n_in), or (T, N, n_in) time-major, from h = 0;
    the read-outs stacked on the time axis. With several cells, step t applies cells[t % k]."""

    def __init__(self, *cells, time_major=False, body=None):
        super().__init__()
        self.cells, self.time_major, self.body = nn.ModuleList(cells), time_major, body

    def forward(self, x):
        if self.body is not None:
            return self.body(self, x)
        n, steps = (x.shape[1], x.shape[0]) if self.time_major else x.shape[:2]
        h, ys = torch.zeros(n, UNITS), []
        for t in range(steps):
            y, h = self.cells[t % len(self.cells)](x[t] if self.time_major else x[:, t], h)
            ys.append(y)
        return torch.stack(ys, 0 if self.time_major else 1)


def export_loop(module, path, dynamo=False, steps=T, batch=8):
    shape = (steps, batch, N_IN) if module.time_major else (batch, steps, N_IN)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(module, (torch.zeros(shape),), str(path), dynamo=True,
                              input_names=["x"], output_names=["y"], verbose=False)
        else:
            torch.onnx.export(module, (torch.zeros(shape),), str(path), dynamo=False,
                              input_names=["x"], output_names=["y"],
                              dynamic_axes={"x": {1 if module.time_major else 0: "b"}})
    return path


def fit_readout(cell, n=512, seed=7, ridge=30.0):
    """Train the read-out: ridge regression of the targets on the excitatory states over the
    decision period (the recurrent and input weights stay at their E/I initialization). The
    ridge keeps the read-out weights small (|W| ≤ 1), so that they do not amplify the deployed
    state's rounding: at 1e-3 they reach |W| 39–61 and the deployed output is 4–26% (relative
    RMS) off the float one for seeds 0–2, at 30 it is 0.7–1.1%."""
    x, y, mask, _ = pdm_trials(n, seed)
    with torch.no_grad():
        h, states = torch.zeros(n, UNITS), []
        for t in range(T):
            _, h = cell(torch.from_numpy(x[:, t]), h)
            states.append(h[:, :N_EXC])
        H = torch.stack(states, 1).numpy()[mask].astype(np.float64)
        A = np.c_[H, np.ones(len(H))]
        W = np.linalg.solve(A.T @ A + ridge * np.eye(A.shape[1]), A.T @ y[mask])
        cell.out.weight.copy_(torch.from_numpy(W[:-1].T))
        cell.out.bias.copy_(torch.from_numpy(W[-1]))
    return cell.eval()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The cell (read-out trained), its one-step export and four unrolled exports of 30 steps."""
    cell = fit_readout(EICell(seed=1))
    folder = tmp_path_factory.mktemp("seq")
    paths = {"cell": export(cell, folder / "cell.onnx")}
    for name in SEQUENCES:
        exporter, layout = name.split("_", 1)
        paths[name] = export_loop(Loop(cell, time_major=layout == "time_major"),
                                  folder / f"{name}.onnx", dynamo=exporter == "dynamo")
    return cell, paths


def _loop_in_torch(cell, x):
    with torch.no_grad():
        return Loop(cell)(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("name", SEQUENCES)
def test_folded_into_the_one_step_cell(trained, name):
    module, paths = trained
    model = onnx.load(paths[name])
    assert is_sequence_graph(model) and not is_cell_graph(model)
    assert not any(n.op_type in ("RNN", "Loop", "Scan") for n in model.graph.node)
    seq = read_sequence(model, name)
    one = read_cell_graph(onnx.load(paths["cell"]), "cell")
    for field in ("W_inp", "W_rec", "W_out", "bias", "b_out"):
        assert np.array_equal(getattr(seq, field), getattr(one, field)), field
    assert (seq.activation, seq.alpha, seq.steps) == (one.activation, one.alpha, T)
    assert seq.origin == "onnx_sequence" and seq.onnx_io == ((name.endswith("first"),) * 2)
    layout = LAYOUTS[name.split("_", 1)[1]]
    assert seq.describe().startswith(f"read: unrolled recurrence, {T} steps, {layout} → folded "
                                     f"into its cell: {UNITS} units, relu, α = 0.2, input 'x'")
    x = pdm_trials(8, 7)[0]
    expect = _loop_in_torch(module, x)
    got = sequence_trials(model, x, seq)   # onnxruntime on the unrolled graph
    assert got.shape == (8, T, N_OUT) and np.abs(got - expect).max() < 1e-5
    one_step = cell_graph_trials(onnx.load(paths["cell"]), x, one)[0]
    assert np.abs(got - one_step).max() < 1e-5


@pytest.fixture(scope="module")
def deployed(trained):
    _, paths = trained
    calib = pdm_trials(64, 1)[0]
    return {k: compile_onnx(p, calib=calib, dale=True) for k, p in paths.items()}


def _same_nodes(a, b):
    assert [n.name for n in a.nodes] == [n.name for n in b.nodes]
    for m, n in zip(a.nodes, b.nodes):
        assert (m.kind, list(m.inputs), tuple(m.shape), m.params()) == \
            (n.kind, list(n.inputs), tuple(n.shape), n.params()), m.name
        am, an = m.arrays(), n.arrays()
        assert am.keys() == an.keys() and all(np.array_equal(am[k], an[k]) for k in am), m.name
    assert a.record.keys() == b.record.keys()
    assert all(np.array_equal(a.record[k], b.record[k]) for k in a.record)


@pytest.mark.parametrize("name", SEQUENCES)
def test_same_artifact_as_the_one_step_export(deployed, name):
    compiled, one = deployed[name], deployed["cell"]
    _same_nodes(compiled.artifact, one.artifact)
    meta = compiled.artifact.meta
    assert meta["source"]["kind"] == "onnx_sequence" and meta["rnn"] == one.artifact.meta["rnn"]
    assert meta["rnn"]["dale"] is True and meta["rnn"]["n_exc"] == N_EXC
    assert compiled.notes[0].startswith(f"read: unrolled recurrence, {T} steps, "
                                        f"{LAYOUTS[name.split('_', 1)[1]]} → folded into its "
                                        "cell")
    assert compiled.notes[1:] == one.notes[1:]


def test_deployed_bit_exact_and_decides_as_float(trained, deployed):
    """One artifact stands for the four (their nodes are the same); the float side is each
    unrolled graph under onnxruntime."""
    _, paths = trained
    art = deployed["dynamo_time_major"].artifact
    w = art.node("z_rec").weight
    signs = np.r_[np.ones(N_EXC), -np.ones(UNITS - N_EXC)].astype(np.int64)
    assert check_dale_signs(w, signs) == (N_EXC, UNITS - N_EXC) and np.any(w < 0)
    x, _, _, choice = pdm_trials(400, 99)   # held out
    run = sim.cpu.run(art, x)
    reference = sim.reference.run(art, x)
    assert run.output.shape == (400, T, N_OUT)
    assert np.array_equal(run.output, reference.output)
    assert np.array_equal(run.accumulator, reference.accumulator)
    deployed_acc = accuracy(run.output, choice)
    for name in SEQUENCES:
        model = onnx.load(paths[name])
        float_acc = accuracy(sequence_trials(model, x, read_sequence(model, name)), choice)
        # measured: float 0.8225, deployed 0.8225 (every export)
        assert float_acc > 0.75, name                  # the task was learned
        assert abs(deployed_acc - float_acc) <= 0.01, (name, float_acc, deployed_acc)


@pytest.mark.lava
def test_lava_equals_cpu(deployed):
    import sim.lava
    from lava_helpers import assert_same
    art = deployed["legacy_time_major"].artifact
    x = pdm_trials(4, 11)[0]
    reference = sim.cpu.run(art, x)
    assert np.abs(reference.accumulator).max() > 0
    assert_same(sim.lava.run(art, x, batch=4, timeout=180), reference)


class TorchRNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.RNN(N_IN, 16, batch_first=True, nonlinearity="relu")
        self.lin = nn.Linear(16, N_OUT)

    def forward(self, x):
        return self.lin(self.rnn(x)[0])


def test_torch_rnn_from_the_default_exporter(tmp_path):
    """nn.RNN + nn.Linear: the default (dynamo) exporter unrolls it; it compiles to the same
    artifact as the legacy exporter's RNN operator."""
    torch.manual_seed(1)
    module, steps = TorchRNN().eval(), 12
    paths = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for dynamo in (False, True):
            paths[dynamo] = tmp_path / f"rnn_{dynamo}.onnx"
            torch.onnx.export(module, (torch.zeros(4, steps, N_IN),), str(paths[dynamo]),
                              dynamo=dynamo, input_names=["x"], output_names=["y"],
                              **({} if dynamo else {"dynamic_axes": {"x": {0: "b"}}}))
    unrolled = onnx.load(paths[True])
    assert not any(n.op_type == "RNN" for n in unrolled.graph.node)
    assert any(n.op_type == "RNN" for n in onnx.load(paths[False]).graph.node)
    calib = np.random.default_rng(0).uniform(0, 1, (16, steps, N_IN)).astype(np.float32)
    legacy, dynamo = (compile_onnx(paths[k], calib=calib) for k in (False, True))
    _same_nodes(dynamo.artifact, legacy.artifact)
    assert dynamo.artifact.meta["rnn"] == legacy.artifact.meta["rnn"]
    assert dynamo.notes[0].startswith(f"read: unrolled recurrence, {steps} steps, batch-first "
                                      "(N, T, n_in) → folded into its cell: 16 units, relu, "
                                      "α = 1, input 'x', with bias")
    x = calib[:4]
    with torch.no_grad():
        expect = module(torch.from_numpy(x)).numpy()
    assert np.abs(sequence_trials(unrolled, x, read_sequence(unrolled, "d")) - expect).max() \
        < 1e-5


def _steps(x, step):
    """Apply `step(t, u, states)` → (y, h) over the steps of x (N, T, n_in); the ys."""
    states, ys = [torch.zeros(x.shape[0], UNITS)], []
    for t in range(x.shape[1]):
        y, h = step(t, x[:, t], states)
        states.append(h)
        ys.append(y)
    return ys


def _stack_of(x, step):
    return torch.stack(_steps(x, step), 1)


REFUSED = {
    "different_weights": (
        None, r"the steps apply different weights: the input weights into node '[^']+' "
              r"\(Relu\) \(step 0\) differ from step 1's by [0-9.e-]+ \(relative\); one cell "
              r"applied at every step folds, a loop over different cells does not"),
    "last_step_only": (
        lambda m, x: _steps(x, lambda t, u, s: m.cells[0](u, s[-1]))[-1],
        r"output 'y' of node '[^']+' \(Gemm\) is one step's tensor \(stack the read-out of "
        r"every step\)"),
    "two_steps_back": (
        lambda m, x: _stack_of(x, lambda t, u, s: m.cells[0](u, s[-2 if t else -1])),
        r"combines tensors of steps 0 and 2: a recurrence over more than one step is not a "
        r"cell"),
    "input_in_readout": (
        lambda m, x: _stack_of(x, lambda t, u, s: (
            lambda y, h: (y + u[:, 1:], h))(*m.cells[0](u, s[-1]))),
        r"the read-out of step 0 depends on the step's input directly"),
    "gated": (
        lambda m, x: _stack_of(x, lambda t, u, s: m.cells[0](u, s[-1] * s[-1])),
        r"\(Mul\) multiplies two computed tensors"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_in_one_line(tmp_path, name):
    body, message = REFUSED[name]
    cells = (EICell(seed=0), EICell(seed=1)) if name == "different_weights" else (EICell(),)
    path = export_loop(Loop(*cells, body=body).eval(), tmp_path / f"{name}.onnx", steps=5)
    assert is_sequence_graph(onnx.load(path))
    with pytest.raises(ModelError, match=message) as err:
        compile_onnx(path, calib=np.zeros((2, 5, N_IN), np.float32))
    assert "\n" not in str(err.value) and str(err.value).startswith(str(path))


def test_cli_reads_the_layout_and_scores_the_float_model(trained, deployed, tmp_path):
    """`toolchain compile` prints the layout it read; `toolchain run` and `rnn eval` take trials
    (N, T, n_in) whatever the model's layout; `--onnx` runs the unrolled graph, which needs its
    number of steps."""
    _, paths = trained
    x, y, m, choice = pdm_trials(40, 98)
    for name, a in (("calib", pdm_trials(32, 1)[0]), ("x", x), ("y", y), ("m", m),
                    ("short", x[:, :20]), ("short_y", y[:, :20])):
        np.save(tmp_path / f"{name}.npy", a)
    runner = CliRunner()
    r = runner.invoke(main, ["compile", str(paths["dynamo_time_major"]), "-o",
                             str(tmp_path / "m.sfn"), "--calib", str(tmp_path / "calib.npy"),
                             "--dale"])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert f"note: read: unrolled recurrence, {T} steps, time-major (T, N, n_in) → folded into " \
           "its cell" in text
    assert "Dale's law holds on the integer weights: 32 excitatory, 8 inhibitory units" in text
    r = runner.invoke(main, ["run", str(tmp_path / "m.sfn"), "--input", str(tmp_path / "x.npy"),
                             "--output", str(tmp_path / "out.npy")])
    assert r.exit_code == 0, r.output
    from sim.artifact import load
    out = np.load(tmp_path / "out.npy")
    assert out.shape == (40, T, N_OUT)
    assert np.array_equal(out, sim.cpu.run(load(tmp_path / "m.sfn"), x).output)
    args = ["rnn", "eval", str(tmp_path / "m.sfn"), "--trials", str(tmp_path / "x.npy"),
            "--targets", str(tmp_path / "y.npy"), "--mask", str(tmp_path / "m.npy"), "--onnx",
            str(paths["dynamo_time_major"])]
    r = runner.invoke(main, args)
    assert r.exit_code == 0, r.output
    model = onnx.load(paths["dynamo_time_major"])
    float_out = sequence_trials(model, x, read_sequence(model, "m"))
    assert "float R² " in r.output and f"accuracy {accuracy(float_out, choice):.3f}" in \
        r.output.strip().splitlines()[1].split("|")[1]
    r = runner.invoke(main, args[:3] + ["--trials", str(tmp_path / "short.npy"), "--targets",
                                        str(tmp_path / "short_y.npy"), "--onnx",
                                        str(paths["dynamo_time_major"])])
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and \
        f"the sequence model runs {T} steps" in lines[0], r.output


def _handmade(path, steps=3, n=4, bias_step=0.0, h0=0.0, perm=None, reshape=False):
    """x (b, steps, 2) → h_t = relu(W_in·x_t + W_rec·h_{t−1} + b + t·bias_step), h_{−1} = h0
    (ConstantOfShape of the batch), the states stacked (b, steps, n)."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(a, k) for k, a in (
        ("w_in", rng.normal(0, 1, (2, n)).astype(np.float32)),
        ("w_rec", rng.normal(0, 0.3, (n, n)).astype(np.float32)),
        ("zero", np.array(0, np.int64)), ("one", np.array([1], np.int64)),
        ("width", np.array([n], np.int64)))]
    nodes = [helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
             helper.make_node("Unsqueeze", ["batch", "one_axis"], ["batch1"]),
             helper.make_node("Concat", ["batch1", "width"], ["h_shape"], axis=0),
             helper.make_node("ConstantOfShape", ["h_shape"], ["h_-1"],
                              value=numpy_helper.from_array(np.array([h0], np.float32)))]
    inits.append(numpy_helper.from_array(np.array([0], np.int64), "one_axis"))
    x = "x"
    if perm:
        nodes.append(helper.make_node("Transpose", ["x"], ["xt"], perm=perm))
        x = "xt"
    for t in range(steps):
        inits += [numpy_helper.from_array(np.array(t, np.int64), f"t{t}"),
                  numpy_helper.from_array(np.full(n, 0.1 + t * bias_step, np.float32), f"b{t}")]
        nodes += [helper.make_node("Gather", [x, f"t{t}"], [f"u{t}"], axis=1),
                  helper.make_node("MatMul", [f"u{t}", "w_in"], [f"a{t}"]),
                  helper.make_node("MatMul", [f"h_{t - 1}", "w_rec"], [f"r{t}"]),
                  helper.make_node("Add", [f"a{t}", f"r{t}"], [f"s{t}"]),
                  helper.make_node("Add", [f"s{t}", f"b{t}"], [f"z{t}"]),
                  helper.make_node("Relu", [f"z{t}"], [f"h_{t}"], name=f"relu_{t}"),
                  helper.make_node("Unsqueeze", [f"h_{t}", "one"], [f"y{t}"])]
    nodes.append(helper.make_node("Concat", [f"y{t}" for t in range(steps)],
                                  ["y" if not reshape else "ys"], axis=1, name="stack"))
    if reshape:
        inits.append(numpy_helper.from_array(np.array([-1, n], np.int64), "flat"))
        nodes.append(helper.make_node("Reshape", ["ys", "flat"], ["y"], name="flatten"))
    graph = helper.make_graph(
        nodes, "handmade", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                          ["b", steps, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


HANDMADE = {
    "time_varying_bias": (dict(bias_step=0.5), r"the steps apply different weights: the bias "
                          r"into node 'relu_0' \(Relu\) \(step 0\) differ from step 1's"),
    "nonzero_initial_state": (dict(h0=0.5), r"the bias into node 'relu_0' \(Relu\) \(step 0\) "
                              r"differ from step 1's"),
    "reshaped_output": (dict(reshape=True), r"node 'flatten' \(Reshape\) is not part of the "
                        r"recognized recurrence"),
    "units_moved": (dict(perm=[2, 0, 1]), r"\(Transpose\) transposes with perm \[2, 0, 1\] "
                    r"\(the unit axis must stay last\)"),
}


def test_handmade_graph_reads_and_variants_are_refused(tmp_path):
    """A graph written with onnx.helper (no leak: α = 1, the zero state ConstantOfShape of the
    batch) reads as its cell; a bias that changes with the step, a non-zero initial state, a
    reshaped output and a transpose moving the unit axis are refused in one line, in the CLI
    too."""
    good = _handmade(tmp_path / "good.onnx")
    cell = read_sequence(onnx.load(good), "good")
    assert (cell.alpha, cell.steps, cell.onnx_io, cell.activation) == (1.0, 3, (True, True),
                                                                        "relu")
    assert np.allclose(cell.bias, 0.1) and np.array_equal(cell.W_out, np.eye(4))
    for name, (change, message) in HANDMADE.items():
        path = _handmade(tmp_path / f"{name}.onnx", **change)
        with pytest.raises(ModelError, match=message) as err:
            compile_onnx(path, calib=np.ones((2, 3, 2), np.float32))
        assert "\n" not in str(err.value) and str(err.value).startswith(str(path)), name
    np.save(tmp_path / "c.npy", np.ones((2, 3, 2), np.float32))
    r = CliRunner().invoke(main, ["compile", str(tmp_path / "time_varying_bias.onnx"), "-o",
                                  str(tmp_path / "m.sfn"), "--calib", str(tmp_path / "c.npy")])
    lines = r.output.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and \
        "the steps apply different weights" in lines[0], r.output
