"""E/I RNN cells compile to recurrent SFN graphs: Dale's law is verified on the integers, the cell
must match its metadata, and the runtime follows the integer equations step by step."""
import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import sim.cpu
import sim.reference
from exporters.rnn.export import export_rnn_onnx
from toolchain.rnn import run_onnx_trials
from exporters.rnn.model import EIRNN
from sim import semantics
from toolchain.compiler import compile_onnx
from toolchain.errors import ModelError, QuantizationError


def _cell(tmp_path, activation="relu", dale=True, units=24, seed=0):
    torch.manual_seed(seed)
    model = EIRNN(6, 2, n_units=units, activation=activation, dale=dale, seed=seed)
    return export_rnn_onnx(model, tmp_path / f"{activation}_{dale}.onnx"), model


def _trials(n=6, T=40, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (n, T, 6)).astype(np.float32)


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
def test_recurrent_graph_structure(tmp_path, activation):
    path, model = _cell(tmp_path, activation)
    art = compile_onnx(path, calib=_trials()).artifact
    kinds = {n.name: n for n in art.nodes}
    assert art.recurrent and kinds["y_prev"].kind == "delay" and kinds["y_prev"].source == "y"
    f, y = kinds["f"], kinds["y"]
    assert f.fire == ("uniform" if activation == "relu" else "adaptive")
    assert y.reset == "none" and y.decay == round(0.1 * 4096) == 410
    if activation == "tanh":
        assert f.lo == -255 and f.hi == 255 and y.lo == -255   # signed payloads
    if activation == "sigmoid":
        # non-uniform thresholds: sigmoid steps are densest around z = 0
        steps = np.diff(f.thresholds[0])
        assert steps.min() < steps.max() / 5
    out = sim.cpu.run(art, _trials(3, 25, 1))
    assert out.output.shape == (3, 25, 2) and out.accumulator.dtype == np.int64


def test_leaky_neuron_follows_the_integer_equations(tmp_path):
    """Re-run the leaky unit y by hand from the recorded input payloads of its neuron."""
    path, _ = _cell(tmp_path, "relu")
    art = compile_onnx(path, calib=_trials()).artifact
    x = _trials(2, 30, 3)
    y, gain = art.node("y"), art.node("y/in")
    # the f and y payloads of every step, from the int64 oracle (and sim.cpu, identical)
    rec = sim.reference.run(art, x, record=("f", "y")).recorded
    assert all(np.array_equal(a, b) for a, b in
               zip(rec.values(), sim.cpu.run(art, x, record=("f", "y")).recorded.values()))
    v = np.zeros((2, y.shape[0]), np.int64)
    for t in range(x.shape[1]):
        current = (gain.gains[0][None] * rec["f"][:, t]) << gain.exps[0]
        v = np.clip(v + (y.decay * (current - v)) // 4096, -semantics.V_MAX, semantics.V_MAX)
        expect = np.clip(np.floor((v + y.threshold[None] // 2) / y.threshold[None]), y.lo, y.hi)
        assert np.array_equal(rec["y"][:, t], expect)
    assert np.abs(rec["y"]).max() > 0


def test_dale_violation_is_refused_naming_units(tmp_path):
    path, model = _cell(tmp_path, "relu", dale=True, units=20)
    m = onnx.load(path)
    for init in m.graph.initializer:
        if init.name == "W_rec":
            w = numpy_helper.to_array(init).copy()
            w[3, 2] = -0.5 * np.abs(w).max()     # unit 2 is excitatory: make it inhibit unit 3
            w[0, 17] = 0.5 * np.abs(w).max()     # unit 17 is inhibitory: make it excite unit 0
            init.CopyFrom(numpy_helper.from_array(w, "W_rec"))
    onnx.save(m, tmp_path / "bad.onnx")
    with pytest.raises(QuantizationError, match=r"Dale's law violated") as err:
        compile_onnx(tmp_path / "bad.onnx", calib=_trials())
    assert "excitatory units [2]" in str(err.value)
    assert "inhibitory units [17]" in str(err.value)


def test_cell_must_match_its_metadata(tmp_path):
    path, _ = _cell(tmp_path, "relu")
    m = onnx.load(path)
    props = {p.key: p.value for p in m.metadata_props}
    props["sfn.alpha"] = "0.3"
    onnx.helper.set_model_props(m, props)
    onnx.save(m, tmp_path / "lie.onnx")
    with pytest.raises(ModelError, match="differs from its sfn.. metadata"):
        compile_onnx(tmp_path / "lie.onnx", calib=_trials())


def test_deployed_output_tracks_float_on_a_stable_cell(tmp_path):
    """With a contracting recurrence the deployed trajectory stays within a few percent."""
    torch.manual_seed(0)
    model = EIRNN(6, 2, n_units=24, activation="sigmoid", dale=True, seed=0)
    with torch.no_grad():
        model.W_rec.mul_(0.3)
    path = export_rnn_onnx(model, tmp_path / "stable.onnx")
    x = _trials(8, 60, 5)
    compiled = compile_onnx(path, calib=x)
    deployed = sim.cpu.run(compiled.artifact, x).output
    float_out, _ = run_onnx_trials(path, x)
    rel = np.sqrt(np.mean((deployed - float_out) ** 2)) / np.sqrt(np.mean(float_out ** 2))
    assert rel < 0.02, rel


SHIPPED = __import__("pathlib").Path(__file__).parent / "data" / "rnn"


def test_recurrent_scales_per_layer_or_unit_whichever_reads_out_closer():
    """Default: both ways quantized, the lower relative RMS read-out error on the calibration
    trials kept (and said); --per-layer / --per-channel force one."""
    path = SHIPPED / "cddm_sigmoid_dale.onnx"
    layer = compile_onnx(path, per_channel=False)
    unit = compile_onnx(path, per_channel=True)
    chosen = compile_onnx(path)
    errors = {False: layer.agreement["rel_rms_error"], True: unit.agreement["rel_rms_error"]}
    assert errors[False] != errors[True]
    best = min(errors, key=errors.get)
    assert chosen.artifact.meta["rnn"]["per_channel"] == best
    assert chosen.agreement == (unit if best else layer).agreement
    assert any(f"one per {'unit' if best else 'layer'}, the closer read-out" in n
               for n in chosen.notes)
    s_y = {pc: np.asarray(c.artifact.record["y/act_scale"]).reshape(-1)
           for pc, c in ((False, layer), (True, unit))}
    assert np.ptp(s_y[False]) == 0 and np.ptp(s_y[True]) > 0    # one scale, one per unit
    assert "per layer" in layer.artifact.meta["calibration"]


def test_leaky_threshold_absorbs_the_gain_rounding():
    """Per-unit scales give per-unit 8-bit gains G (rounded); θ = round(s_y·G/s_f) keeps each
    unit's output step at s_y within 1/(2θ) — not within half a mantissa step of G."""
    art = compile_onnx(SHIPPED / "cddm_tanh_dale.onnx", per_channel=True).artifact
    gain, y = art.node("y/in"), art.node("y")
    G = gain.gains[0].astype(np.float64) * 2.0 ** gain.exps[0]
    theta = y.threshold.astype(np.float64)
    s_y = np.asarray(art.record["y/act_scale"], np.float64).reshape(-1)
    s_f = 1.0 / art.meta["levels"]                       # tanh payload step
    realized = theta * s_f / G                           # output step the integers give
    assert np.all(np.abs(realized / s_y - 1) <= 1 / (2 * theta) + 1e-12)
    mantissa = gain.gains[0]
    assert mantissa.min() < 64    # gains rounded coarsely here: the old θ = 2⁸ erred by > 0.8%
    assert np.max(np.abs(2.0 ** 8 * s_f / G / s_y - 1)) > 0.008


def test_joint_mixed_sign_weights_keep_eight_bits():
    """z_in and z_rec share one unit per row (joint); W_rec has both signs, so Lava's lowest-bit
    drop stores 2k: the mantissa k must still reach ±127 (stored ±254), not 64."""
    art = compile_onnx(SHIPPED / "cddm_tanh_nodale.onnx").artifact
    w = np.concatenate([art.node("z_in").weight.ravel(), art.node("z_rec").weight.ravel()])
    assert np.all(w % 2 == 0)
    assert np.abs(w).max() == 254
    assert len(np.unique(w // 2)) > 129       # more distinct mantissas than 7 bits hold


def test_cli_run_of_a_recurrent_model_says_trials_steps_and_the_real_shape(tmp_path):
    """`toolchain run` on whole trials writes (N, T, n_out) and says so, on stdout and in
    --json."""
    import json

    from click.testing import CliRunner

    from toolchain.cli import main
    art = compile_onnx(SHIPPED / "go_nogo_relu_dale.onnx").artifact
    art.save(tmp_path / "g.sfn")
    x = np.random.default_rng(0).standard_normal((3, 7, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    runner = CliRunner()
    args = ["run", str(tmp_path / "g.sfn"), "--input", str(tmp_path / "x.npy"), "--output",
            str(tmp_path / "y.npy")]
    r = runner.invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "3 trials × 7 steps on cpu" in r.output and "(3, 7, 1)" in r.output
    assert np.load(tmp_path / "y.npy").shape == (3, 7, 1)
    r = runner.invoke(main, args + ["--json"])
    assert json.loads(r.output)["output_shape"] == [3, 7, 1]
