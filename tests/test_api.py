"""The Python API and the readout rule the CLI shares with it: `toolchain.compile` takes a
torch.nn.Module with an example input; `SimResult.output` is what the ONNX model outputs (its
final softmax included), `logits` the readout before it — the same on sim.cpu, sim.lava and in
`toolchain run`'s output file."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import sim.cpu
import sim.lava
import toolchain
from toolchain.cli import main
from toolchain.errors import InputFileError


def _softmax_mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3),
                               torch.nn.Softmax(dim=1))


def _data(n=64):
    return np.random.default_rng(0).normal(size=(n, 4)).astype(np.float32)


@pytest.fixture(scope="module")
def compiled():
    model, x = _softmax_mlp(), _data()
    return model, x, toolchain.compile(model, calib=x, example_input=torch.zeros(1, 4))


def test_torch_module_compiles_and_output_is_the_models_output(compiled):
    model, x, art = compiled
    assert art.meta["source"]["file"] == "torch.nn.Module (Sequential)"
    assert model.training          # restored after the export
    res = sim.cpu.run(art, x)
    np.testing.assert_allclose(res.output.sum(1), 1.0, rtol=1e-6)
    assert np.abs(res.logits.sum(1) - 1.0).max() > 0.1          # logits are not probabilities
    np.testing.assert_array_equal(res.output, toolchain_softmax(res.logits))
    with torch.no_grad():
        float_out = model.eval()(torch.from_numpy(x)).numpy()
    model.train()
    assert np.abs(res.output - float_out).max() < 0.05
    assert art.meta["agreement"]["max_abs_error"] == pytest.approx(
        float(np.abs(res.output - float_out).max()), rel=1e-5)


def toolchain_softmax(logits):
    from sim import semantics
    return semantics.softmax(logits)


@pytest.mark.lava
def test_cli_api_and_lava_share_the_readout_rule(compiled, tmp_path):
    _, x, art = compiled
    art.save(tmp_path / "m.sfn")
    np.save(tmp_path / "x.npy", x)
    res = CliRunner().invoke(main, ["run", str(tmp_path / "m.sfn"), "--input",
                                    str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy"),
                                    "--logits", str(tmp_path / "z.npy")])
    assert res.exit_code == 0, res.output
    cpu = sim.cpu.run(art, x)
    lava = sim.lava.run(art, x)
    y, z = np.load(tmp_path / "y.npy"), np.load(tmp_path / "z.npy")
    np.testing.assert_array_equal(y, cpu.output)
    np.testing.assert_array_equal(z, cpu.logits)
    np.testing.assert_array_equal(lava.output, cpu.output)
    np.testing.assert_array_equal(lava.logits, cpu.logits)
    np.testing.assert_allclose(y.sum(1), 1.0, rtol=1e-6)


def test_example_input_is_required_for_a_module_and_only_for_one():
    with pytest.raises(InputFileError, match="example_input"):
        toolchain.compile(_softmax_mlp(), calib=_data())
    with pytest.raises(InputFileError, match="example_input= is for a torch.nn.Module"):
        toolchain.compile(toolchain.examples.DIGITS_CNN, example_input=torch.zeros(1, 1, 8, 8))


def test_integer_reference_outputs_follow_the_same_rule(compiled):
    """The emitted reference ONNX names its outputs as SimResult does: `output` (softmax
    included), `logits`, `accumulator`; all three equal sim.cpu's bit for bit."""
    import onnxruntime as ort
    from toolchain.reference import emit_reference
    _, x, art = compiled
    sess = ort.InferenceSession(emit_reference(art).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    out, logits, acc = sess.run(["output", "logits", "accumulator"], {"input": x})
    res = sim.cpu.run(art, x)
    np.testing.assert_array_equal(out, res.output)
    np.testing.assert_array_equal(logits, res.logits)
    np.testing.assert_array_equal(acc, res.accumulator.astype(np.float32))
