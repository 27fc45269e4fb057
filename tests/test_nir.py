"""NIR out and in.

Export: the digits CNN's binary integrate-and-fire form written by `toolchain export --format
nir` is read back by `nir.read` and run by an independent consumer — nirtorch's graph
interpreter with its own Conv2d/SumPool2d maps, and an IF neuron written from NIR's equations —
which reproduces sim.cpu's binary T-step outputs bit for bit when it honours the node metadata
(start at v_initial + 1/2, reset by subtraction); reading NIR's equations alone (start at 0),
each neuron of the first layer fires the same or one spike fewer over the T steps.

Import: NIR graphs compile to artifacts of leaky binary neurons that run bit-exact on sim.cpu,
sim.reference and Lava; an snnTorch-trained LIF CNN exported by snnTorch compiles with
`toolchain compile model.nir` and its accuracy is within 1 point of snnTorch's own simulation.
"""
from __future__ import annotations

import keyword
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import sim.cpu
import sim.lava
import sim.reference
import toolchain
from sim.artifact import Artifact, load
from sim.ir import Input, MaxPool, Neuron, Readout
from toolchain.cli import main
from toolchain.errors import UnsupportedOpError
from toolchain.nir_io.export import NIRExportError, to_nir
from toolchain.nir_io.importer import compile_nir

nir = pytest.importorskip("nir")
nirtorch = pytest.importorskip("nirtorch")
from nir_consumer import run_consumer  # noqa: E402  (needs nirtorch)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    x_calib, _, x_test, y_test = toolchain.examples.load_digits_split()
    folder = tmp_path_factory.mktemp("digits")
    art = toolchain.compile(toolchain.examples.DIGITS_CNN, calib=x_calib)
    art.save(folder / "digits.sfn")
    return art, folder, x_test, y_test


@pytest.mark.parametrize("timesteps", [4, 16])
def test_digits_export_round_trip_reproduces_binary_cpu_run(digits, tmp_path, timesteps):
    art, folder, x_test, _ = digits
    out = tmp_path / "digits.nir"
    res = CliRunner().invoke(main, ["export", str(folder / "digits.sfn"), "--format", "nir",
                                    "-o", str(out), "--timesteps", str(timesteps)])
    assert res.exit_code == 0, res.output
    graph = nir.read(str(out))
    kinds = sorted(type(n).__name__ for n in graph.nodes.values())
    assert kinds == ["Affine", "Conv2d", "Conv2d", "Conv2d", "Flatten", "IF", "IF", "IF",
                     "Input", "Output", "SumPool2d", "SumPool2d"]
    assert all(k.isidentifier() and not keyword.iskeyword(k) for k in graph.nodes)
    # integers with their scales: weights W·2^e·K, thresholds K·θ
    conv = graph.nodes["conv_3"]
    node = art.node(conv.metadata["sfn_name"])
    np.testing.assert_array_equal(conv.weight, node.weight * 2 ** node.weight_exp * 15)
    assert np.all(graph.nodes["if_2"].v_threshold % 15 == 0)
    reference = sim.cpu.run(art, x_test, timesteps=timesteps, binary=True)
    exact, _ = run_consumer(graph, x_test, "metadata")
    np.testing.assert_array_equal(exact, reference.output)


def test_nir_equations_alone_fire_fewer_spikes_bounded(digits):
    """The first IF layer sees the same input current in every reading. Started at 0 instead of
    (K·θ)//2 + 1/2, each neuron fires the same or one spike fewer over T = 16 steps; reset to 0
    as well (NIR's equations alone), never more spikes, at most 8 fewer on the digits."""
    art, _, x_test, _ = digits
    graph = to_nir(art, 16)
    _, exact = run_consumer(graph, x_test, "metadata", record="if_2")
    _, start0 = run_consumer(graph, x_test, "start 0", record="if_2")
    _, plain = run_consumer(graph, x_test, "nir", record="if_2")
    assert (exact - start0).min() == 0 and (exact - start0).max() == 1
    assert (exact - plain).min() == 0 and (exact - plain).max() == 8


def test_export_refuses_what_nir_cannot_express_naming_every_node(tmp_path):
    art = Artifact([
        Input("x", (), (1, 4, 4), inv_scale=10.0, lo=0, hi=255),
        MaxPool("mp", ("x",), (1, 2, 2), kernel=(2, 2), stride=(2, 2)),
        Neuron("signed", ("mp",), (1, 2, 2), threshold=np.full((1, 1, 1), 8),
               bias=np.zeros((1, 1, 1), np.int64), lo=-3, hi=3),
        Readout("y", ("signed",), (1, 2, 2), scale=np.ones((1, 2, 2), np.float32),
                bias=np.zeros((1, 2, 2), np.int64))], "x", "y")
    with pytest.raises(NIRExportError) as info:
        to_nir(art)
    message = str(info.value)
    assert "'mp' (maxpool)" in message and "'signed' (neuron): signed levels" in message
    assert "'y' (readout)" in message
    art.save(tmp_path / "a.sfn")
    res = CliRunner().invoke(main, ["export", str(tmp_path / "a.sfn"), "--format", "nir", "-o",
                                    str(tmp_path / "a.nir")])
    assert res.exit_code == 2 and "cannot export to NIR" in res.output
    assert not (tmp_path / "a.nir").exists()


def _handmade_nir(path: Path, reset=0.0):
    """Affine → LIF → Affine → IF → Affine → Output, 6 inputs, written with nir.write."""
    rng = np.random.default_rng(4)
    graph = nir.NIRGraph(nodes={
        "input": nir.Input(input_type={"input": np.array([6])}),
        "fc1": nir.Affine(weight=rng.normal(0, 0.6, (12, 6)), bias=rng.normal(0, 0.1, 12)),
        "lif1": nir.LIF(tau=np.full(12, 1e-4 / 0.2), r=np.full(12, 1 / 0.2),
                        v_leak=np.zeros(12), v_threshold=np.full(12, 0.8),
                        v_reset=np.full(12, reset)),
        "fc2": nir.Affine(weight=rng.normal(0, 0.5, (8, 12)), bias=np.zeros(8)),
        "if2": nir.IF(r=np.ones(8), v_threshold=np.full(8, 1.5), v_reset=np.zeros(8)),
        "fc3": nir.Affine(weight=rng.normal(0, 0.5, (3, 8)), bias=np.array([0.1, -0.2, 0.0])),
        "output": nir.Output(output_type={"output": np.array([3])})},
        edges=[("input", "fc1"), ("fc1", "lif1"), ("lif1", "fc2"), ("fc2", "if2"),
               ("if2", "fc3"), ("fc3", "output")])
    nir.write(str(path), graph)
    return path


@pytest.mark.lava
def test_imported_graph_runs_bit_exact_on_cpu_reference_and_lava(tmp_path):
    x = np.random.default_rng(1).uniform(-1, 1, (40, 6)).astype(np.float32)
    compiled = compile_nir(_handmade_nir(tmp_path / "m.nir"), calib=x, timesteps=12)
    art = compiled.artifact
    lif = art.node("lif1")
    assert lif.decay == round(0.2 * 4096) and lif.start == "zero" and (lif.lo, lif.hi) == (0, 1)
    assert art.node("if2").decay == 4096 and art.node("lif1").threshold.min() >= 2 ** 12
    cpu = sim.cpu.run(art, x, timesteps=12)
    assert sum(s.spikes for s in cpu.stats.values()) > 0
    ref = sim.reference.run(art, x, timesteps=12)
    np.testing.assert_array_equal(cpu.accumulator, ref.accumulator)
    for tag in ("fixed_pt", "floating_pt"):
        lava = sim.lava.run(art, x, timesteps=12, tag=tag)
        np.testing.assert_array_equal(lava.accumulator, cpu.accumulator)
        np.testing.assert_array_equal(lava.output, cpu.output)
    # the float NIR network and the integer one: the Affine readout's mean within 10 %
    assert compiled.agreement["rel_rms_error"] < 0.1


def test_nir_graphs_it_cannot_compile_are_refused_by_name(tmp_path):
    x = np.zeros((4, 6), np.float32)
    with pytest.raises(UnsupportedOpError, match="'lif1' \\(LIF\\): v_reset ≠ 0"):
        compile_nir(_handmade_nir(tmp_path / "r.nir", reset=0.5), calib=x)
    branching = nir.NIRGraph(nodes={
        "input": nir.Input(input_type={"input": np.array([2])}),
        "a": nir.Affine(weight=np.ones((2, 2)), bias=np.zeros(2)),
        "b": nir.Affine(weight=np.ones((2, 2)), bias=np.zeros(2)),
        "output": nir.Output(output_type={"output": np.array([2])})},
        edges=[("input", "a"), ("input", "b"), ("a", "output"), ("b", "output")])
    nir.write(str(tmp_path / "b.nir"), branching)
    res = CliRunner().invoke(main, ["compile", str(tmp_path / "b.nir"), "-o",
                                    str(tmp_path / "b.sfn")])
    assert res.exit_code == 2 and "node 'input' (Input) feeds" in res.output
    assert not (tmp_path / "b.sfn").exists()
    res = CliRunner().invoke(main, ["compile", str(_handmade_nir(tmp_path / "h.nir")), "-o",
                                    str(tmp_path / "h.sfn"), "--levels", "7", "--scale-search",
                                    "--internal-levels", "31"])
    assert res.exit_code == 2 and \
        "--levels, --internal-levels, --scale-search: ONNX options" in res.output


@pytest.mark.slow
@pytest.mark.lava
def test_snntorch_lif_cnn_compiles_from_nir_within_one_point(tmp_path):
    """Train (T = 16, 5 epochs), export with snnTorch, `toolchain compile model.nir`, run on
    sim.cpu and Lava (bit for bit) and compare the accuracy with snnTorch's own simulation."""
    import snn_digits
    T = 16
    net, snn_accuracy, x_train, x_test, y_test = snn_digits.train(T, epochs=5)
    assert snn_accuracy > 0.85
    snn_digits.export(net, tmp_path / "model.nir")
    np.save(tmp_path / "calib.npy", x_train)
    res = CliRunner().invoke(main, ["compile", str(tmp_path / "model.nir"), "--calib",
                                    str(tmp_path / "calib.npy"), "-o", str(tmp_path / "m.sfn"),
                                    "--timesteps", str(T)])
    assert res.exit_code == 0, res.output
    art = load(tmp_path / "m.sfn")
    assert [n.decay for n in art.nodes if n.kind == "neuron"] == [410, 410, 410]
    cpu = sim.cpu.run(art, x_test, timesteps=T)
    accuracy = float((cpu.output.argmax(1) == y_test).mean())
    assert abs(accuracy - snn_accuracy) <= 0.01, (accuracy, snn_accuracy)
    lava = sim.lava.run(art, x_test[:120], timesteps=T)
    np.testing.assert_array_equal(lava.accumulator, cpu.accumulator[:120])
    np.testing.assert_array_equal(lava.output, cpu.output[:120])
