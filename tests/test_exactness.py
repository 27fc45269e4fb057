"""sim.cpu equals onnxruntime on the emitted integer reference, bit for bit."""
import numpy as np
import onnxruntime as ort
import pytest

import nets
import sim.cpu
from sim import artifact as sfn
from toolchain.reference import emit_reference


def _reference(art, x):
    sess = ort.InferenceSession(emit_reference(art).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    return sess.run(["output", "accumulator"], {"input": x})


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
@pytest.mark.parametrize("name", sorted(nets.NETS))
def test_cpu_equals_reference(name, dynamo):
    compiled, _, test = nets.compiled(name, dynamo)
    out, acc = _reference(compiled.artifact, test)
    res = sim.cpu.run(compiled.artifact, test)
    assert res.output.dtype == np.float32 and res.output.shape == out.shape
    assert np.array_equal(res.accumulator.astype(np.float32), acc)
    assert np.array_equal(res.output, out)
    # the integers are really integers of the contract, and something fired
    assert np.abs(res.accumulator).max() < 2 ** 24
    assert sum(s.spikes for s in res.stats.values()) > 0


@pytest.mark.parametrize("name", sorted(nets.NETS))
def test_agreement_with_float_model(name):
    """Accuracy against the float model is a measured figure; these bounds were measured with
    margin (top-1 0.94–1.0, relative RMS error 0.003–0.033 at 15 levels)."""
    compiled, _, _ = nets.compiled(name)
    assert compiled.agreement["top1_agreement"] >= 0.90
    assert compiled.agreement["rel_rms_error"] <= 0.06


def test_exporters_give_the_same_integers():
    a, _, test = nets.compiled("residual", False)
    b, _, _ = nets.compiled("residual", True)
    assert np.array_equal(sim.cpu.run(a.artifact, test).accumulator,
                          sim.cpu.run(b.artifact, test).accumulator)


def test_artifact_roundtrip_is_deterministic(tmp_path):
    compiled, _, test = nets.compiled("concat")
    p1, p2 = tmp_path / "a.sfn", tmp_path / "b.sfn"
    compiled.save(p1)
    sfn.save(sfn.load(p1), p2)
    assert p1.read_bytes() == p2.read_bytes()
    again = sim.cpu.run(sfn.load(p2), test)
    assert np.array_equal(again.output, sim.cpu.run(compiled.artifact, test).output)


def test_batching_does_not_change_results():
    compiled, _, test = nets.compiled("maxpool_cnn")
    whole = sim.cpu.run(compiled.artifact, test, batch_size=1024)
    pieces = sim.cpu.run(compiled.artifact, test, batch_size=7)
    assert np.array_equal(whole.accumulator, pieces.accumulator)
    assert {k: v.synops for k, v in whole.stats.items()} == \
        {k: v.synops for k, v in pieces.stats.items()}


def test_recorded_values_are_the_node_values():
    compiled, _, test = nets.compiled("avgpool_cnn")
    art = compiled.artifact
    readout = art.node(art.output)
    neurons = [n.name for n in art.nodes if n.kind == "neuron"]
    res = sim.cpu.run(art, test[:50], record=tuple(neurons) + readout.inputs, batch_size=16)
    assert np.array_equal(res.recorded[readout.inputs[0]], res.accumulator)
    for name in neurons:
        v = res.recorded[name]
        node = art.node(name)
        assert v.shape == (50,) + tuple(node.shape) and v.min() >= node.lo and v.max() <= node.hi
        assert np.count_nonzero(v) == res.stats[name].spikes


def test_relu_after_signed_spikes_is_not_skipped(tmp_path):
    """A ReLU reading max-pooled *signed* spikes (a tanh table neuron [−L, L]) needs its own
    neuron; after unsigned spikes it is the identity and is dropped."""
    from torch import nn
    import torch
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.MaxPool2d(2), nn.ReLU(),
                          nn.Flatten(), nn.Linear(64, 3)).eval()
    model.input_shape = (1, 8, 8)
    path = nets.export(model, tmp_path / "signed.onnx")
    from toolchain.compiler import compile_onnx
    x = np.random.default_rng(0).random((64, 1, 8, 8)).astype(np.float32)
    art = compile_onnx(path, calib=x).artifact
    neurons = [n for n in art.nodes if n.kind == "neuron"]
    assert [n.lo < 0 for n in neurons] == [True, False]   # the tanh table, then the ReLU
    out, acc = _reference(art, x)
    assert np.array_equal(sim.cpu.run(art, x).output, out)
