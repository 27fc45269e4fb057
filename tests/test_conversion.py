"""Conversion quality options: adaptive (non-uniform) fire functions for ReLU layers and the λ
scale search (toolchain.quantize.fit_levels, toolchain.scale_search)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

import nets
import sim.cpu
from exporters.digits import load_digits_split
from sim import artifact as sfn
from toolchain import calibrate as cal
from toolchain import scale_search
from toolchain.cli import main
from toolchain.compiler import compile_onnx
from toolchain.errors import QuantizationError
from toolchain.quantize import fit_levels
from toolchain.reference import emit_reference

DIGITS = Path(__file__).resolve().parents[1] / "toolchain" / "data" / "digits_cnn_relu.onnx"


def _compile(name: str, levels: int = 3, fire: str = "adaptive", **kw):
    return compile_onnx(nets.onnx_path(name), calib=nets.data(name, 256, 1), levels=levels,
                        fire=fire, **kw)


def _mse(u, rho):
    """Squared error of rounding u to the nearest of 0, ρ_1 … ρ_L (ties up), by brute force."""
    levels = np.concatenate([[0.0], rho])
    dist = np.abs(u[:, None] - levels[None, :])
    # nearest level; on a tie the upper one (round half up)
    pick = len(levels) - 1 - np.argmin(dist[:, ::-1], axis=1)
    return float(np.mean((u - levels[pick]) ** 2))


def _relu_neurons(art):
    return [n for n in art.nodes if n.kind == "neuron" and n.name in art.meta.get("adaptive", {})]


# --- bit-exactness --------------------------------------------------------------------------

@pytest.mark.parametrize("name,fire,scale", [(name, "adaptive", 1.0) for name in sorted(nets.NETS)]
                         + [("maxpool_cnn", "adaptive", 2.5), ("residual", "adaptive", 0.75),
                            ("concat", "quantile", 1.0)])
def test_adaptive_relu_networks_are_bit_exact(name, fire, scale):
    """sim.cpu equals onnxruntime on the emitted integer reference, bit for bit, for every test
    network with its ReLU/ReLU6 layers as adaptive neurons (non-uniform thresholds)."""
    compiled = _compile(name, 3, fire, scale=scale)
    art, x = compiled.artifact, nets.data(name, 200, 2)
    adaptive = _relu_neurons(art)
    assert adaptive and all(n.fire == "adaptive" and n.lo == 0 for n in adaptive)
    sess = ort.InferenceSession(emit_reference(art).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    out, acc = sess.run(["output", "accumulator"], {"input": x})
    res = sim.cpu.run(art, x)
    assert np.array_equal(res.accumulator.astype(np.float32), acc)
    assert np.array_equal(res.output, out)
    assert sum(res.stats[n.name].spikes for n in adaptive) > 0
    assert sum(s.saturations for s in res.stats.values()) == 0


def test_adaptive_artifact_roundtrip(tmp_path):
    compiled = _compile("avgpool_cnn", 7)
    x = nets.data("avgpool_cnn", 50, 2)
    compiled.save(tmp_path / "a.sfn")
    loaded = sfn.load(tmp_path / "a.sfn")
    assert loaded.meta["fire"] == "adaptive" and loaded.meta["adaptive"]
    assert np.array_equal(sim.cpu.run(loaded, x).accumulator,
                          sim.cpu.run(compiled.artifact, x).accumulator)


# --- where the thresholds go ----------------------------------------------------------------

def test_fit_levels_quantile_and_lloyd_on_a_known_distribution():
    """Half the values are zero, the rest exponential (a ReLU of a skewed pre-activation)."""
    rng = np.random.default_rng(0)
    a = np.where(rng.random((4, 4000)) < 0.5, 0.0, rng.exponential(1.0, (4, 4000)))
    ranges = np.array([4.0, 4.0, 4.0, 4.0])
    u = np.clip(a / 4.0, 0, 1).reshape(-1)
    pos = u[u > 0]
    q = fit_levels(a, ranges, 3, "quantile")
    assert np.allclose(q["rho"], np.quantile(pos, [1 / 6, 1 / 2, 5 / 6]))
    f = fit_levels(a, ranges, 3, "adaptive")
    rho = f["rho"]
    # a Lloyd-Max fixed point: each level is the mean of the values nearest to it
    levels = np.concatenate([[0.0], rho])
    bins = np.searchsorted((levels[:-1] + levels[1:]) / 2, u, side="right")
    for k in range(1, 4):
        assert rho[k - 1] == pytest.approx(u[bins == k].mean(), rel=1e-6)
    # non-uniform: the gaps grow with the level (an exponential tail), unlike k/L
    gaps = np.diff(levels)
    assert gaps[0] < gaps[1] < gaps[2] and gaps[2] > 1.5 * gaps[0]
    # squared error (measured): fitted 0.00266, uniform k/3 0.00436, pure quantile placement
    # 0.00780 — equal-share levels crowd near zero, where the error is small anyway
    assert f["mse_fitted"] == pytest.approx(0.00266, rel=0.02)
    assert f["mse_uniform"] == pytest.approx(0.00436, rel=0.02)
    assert q["mse_fitted"] == pytest.approx(0.00780, rel=0.02)
    assert f["mse_fitted"] < 0.65 * f["mse_uniform"] < q["mse_fitted"]
    # integer payloads on the grid Q = 2L, within one grid step of the fitted levels, a local
    # optimum of the squared error (no single ±1 move improves it); measured 0.00294, still
    # 0.68× the uniform levels' error
    y, Q = f["payload"], f["q"]
    assert Q == 6 and list(y) == [0, 1, 3, 5]
    assert np.all(np.abs(y[1:] / Q - rho) <= 1 / Q)
    assert f["mse"] == pytest.approx(_mse(u, y[1:] / Q)) == pytest.approx(0.00294, rel=0.02)
    for k in range(1, 4):
        for step in (-1, 1):
            moved = y.copy()
            moved[k] += step
            if 0 < moved[k] <= Q and np.all(np.diff(moved) > 0):
                assert _mse(u, moved[1:] / Q) >= f["mse"]


def test_compiled_thresholds_follow_the_calibration_quantiles():
    """fire="quantile" on the MLP: the fitted levels are the (k − ½)/L quantiles of the positive
    calibration activations of each ReLU (over channels, each divided by its 99.99th percentile),
    recomputed here from onnxruntime; the integer thresholds are non-uniform and sit at the
    midpoints between consecutive levels."""
    L = 7
    compiled = _compile("mlp", L, "quantile")
    art = compiled.artifact
    calib = nets.data("mlp", 256, 1)
    names = list(art.meta["adaptive"])
    acts = next(cal.run_float(compiled.imported.source, calib, names))
    for name in names:
        a = acts[name]
        r = np.percentile(np.abs(a), 99.99, axis=0)
        u = np.clip(a[:, r > 0] / r[r > 0], 0, 1).T.reshape(-1)
        expected = np.quantile(u[u > 0], (np.arange(1, L + 1) - 0.5) / L)
        fitted = np.array(art.meta["adaptive"][name]["levels"])
        assert np.allclose(fitted, expected, atol=2e-6)
        node = art.node(name)
        t = node.thresholds.reshape(-1, L).astype(np.float64)
        unit_out = art.record[f"{name}/act_scale"].reshape(-1, 1)
        steps = np.diff(t, axis=1)
        # non-uniform: threshold steps differ by 22% within a channel here (the MLP's ReLU
        # inputs are near-Gaussian, their positive part not far from flat)
        assert np.all(steps > 0) and np.all(steps.max(axis=1) > 1.15 * steps.min(axis=1))
        # the float value of each threshold is the midpoint of two payload levels, per channel
        payload = node.payload
        mid = (payload[:-1] + payload[1:]) / 2 * unit_out
        unit_in = mid / t   # one input unit per channel: the same for every threshold
        assert np.allclose(unit_in, unit_in[:, :1], rtol=0.02)


def test_levels_never_exceed_a_clip():
    """ReLU6 layers (maxpool_cnn): at λ = 3 the top level stays at 6, uniform and adaptive."""
    for fire in ("uniform", "adaptive"):
        compiled = _compile("maxpool_cnn", 3, fire, scale=3.0)
        fg = compiled.imported.graph
        clips = [n for n in fg.tensors() if fg[n]["op"] == "relu" and fg[n]["params"]["hi"]]
        assert clips
        for name in clips:
            node = compiled.artifact.node(name)
            top = node.payload[-1] if node.fire == "adaptive" else node.hi
            assert np.max(compiled.artifact.record[f"{name}/act_scale"]) * top <= 6.0 * 1.0001


# --- adaptive is more accurate at few levels --------------------------------------------------

@pytest.fixture(scope="module")
def digits():
    x_tr, _, x_te, y_te = load_digits_split()
    return x_tr, x_te, y_te


def test_adaptive_beats_uniform_at_3_levels_on_digits(digits):
    """Digits CNN, calibration = the 1437 training images, 3 levels. Measured: relative RMS error
    of the readout against float 0.279 (uniform) vs 0.178 (adaptive), test accuracy 98.06% vs
    99.17% (float 99.72%), every layer's normalized squared error 0.43–0.50× uniform's; the
    price is 26% more SynOps (129 k vs 163 k per inference)."""
    x_tr, x_te, y_te = digits
    res = {}
    for fire in ("uniform", "adaptive"):
        c = compile_onnx(DIGITS, calib=x_tr, levels=3, fire=fire)
        r = sim.cpu.run(c.artifact, x_te)
        res[fire] = (c, float((r.output.argmax(1) == y_te).mean()),
                     sum(s.synops for s in r.stats.values()) / r.samples)
    uni, ada = res["uniform"], res["adaptive"]
    assert uni[0].agreement["rel_rms_error"] > 0.25
    assert ada[0].agreement["rel_rms_error"] < 0.20
    assert ada[0].agreement["rel_rms_error"] < 0.7 * uni[0].agreement["rel_rms_error"]
    assert uni[1] <= 0.985 and ada[1] >= 0.99
    for layer in ada[0].artifact.meta["adaptive"].values():
        assert layer["mse"] < 0.55 * layer["mse_uniform"]
    assert 1.15 * uni[2] < ada[2] < 1.4 * uni[2]


@pytest.mark.parametrize("name,uniform,adaptive", [("mlp", 0.1695, 0.1399),
                                                   ("maxpool_cnn", 0.1581, 0.1290)])
def test_adaptive_has_smaller_error_at_3_levels(name, uniform, adaptive):
    """Measured relative RMS errors against float on the 256 calibration inputs at L = 3."""
    u = _compile(name, 3, "uniform").agreement["rel_rms_error"]
    a = _compile(name, 3, "adaptive").agreement["rel_rms_error"]
    assert u == pytest.approx(uniform, abs=0.01) and a == pytest.approx(adaptive, abs=0.01)
    assert a < u - 0.015


# --- λ scale search ---------------------------------------------------------------------------

def _rule(curve, tolerance, factor):
    """The selection rule written out again: top-1 within tolerance of the best, error within
    factor of the smallest left, then fewest SynOps."""
    best = max(p["top1_agreement"] for p in curve)
    keep = [p for p in curve if p["top1_agreement"] >= best - tolerance]
    least = min(p["rel_rms_error"] for p in keep)
    keep = [p for p in keep if p["rel_rms_error"] <= factor * least]
    return min(keep, key=lambda p: p["synops"])["lambda"]


@pytest.mark.parametrize("fire", ["uniform", "adaptive"])
def test_scale_search_curve_and_choice(fire):
    compiled = _compile("avgpool_cnn", 7, fire, scale_search=True)
    meta = compiled.artifact.meta["scale"]
    found = meta["search"]
    curve = found["curve"]
    assert [p["lambda"] for p in curve] == list(scale_search.DEFAULT_GRID)
    synops = np.array([p["synops"] for p in curve])
    # a higher threshold scale silences neurons: SynOps fall along the grid (measured 9,425 →
    # 8,272 uniform), each step within 1% of monotone
    assert np.all(synops[1:] <= synops[:-1] * 1.01) and synops[-1] < 0.95 * synops[0]
    chosen = [p for p in curve if p["chosen"]]
    assert len(chosen) == 1 and chosen[0]["lambda"] == meta["lambda"]
    assert meta["lambda"] == _rule(curve, found["tolerance"], found["error_factor"])
    assert meta["lambda"] == {"uniform": 1.5, "adaptive": 2.0}[fire]
    # the artifact is the one compiled directly at the chosen λ
    direct = _compile("avgpool_cnn", 7, fire, scale=meta["lambda"]).artifact
    x = nets.data("avgpool_cnn", 100, 2)
    assert np.array_equal(sim.cpu.run(direct, x).accumulator,
                          sim.cpu.run(compiled.artifact, x).accumulator)


def test_scale_search_rule_filters():
    def p(lam, top1, err, syn):
        return {"lambda": lam, "top1_agreement": top1, "rel_rms_error": err, "synops": syn}
    curve = [p(0.5, 0.99, 0.05, 100), p(1.0, 1.0, 0.02, 90), p(2.0, 0.996, 0.039, 70),
             p(3.0, 0.99, 0.03, 50)]
    # λ = 3 is sparsest but loses a point of agreement; λ = 2 is within 0.5 point and 2× error
    assert scale_search.choose(curve)["lambda"] == 2.0
    # a tighter error factor leaves only λ = 1; a loose agreement tolerance admits λ = 3
    assert scale_search.choose(curve, error_factor=1.5)["lambda"] == 1.0
    assert scale_search.choose(curve, tolerance=0.02)["lambda"] == 3.0
    # outputs that are not class scores: the error filter alone
    plain = [{k: v for k, v in q.items() if k != "top1_agreement"} for q in curve]
    assert scale_search.choose(plain)["lambda"] == 3.0
    with pytest.raises(QuantizationError, match="no λ of the grid"):
        scale_search.choose([{"lambda": 1.0, "error": "too big"}])


def test_bad_options_are_refused():
    path = nets.onnx_path("mlp")
    calib = nets.data("mlp", 32, 1)
    for kw, needle in [(dict(fire="sigmoid"), "choose one of uniform, adaptive, quantile"),
                       (dict(scale=0.0), "scale λ = 0.0"),
                       (dict(scale=float("nan")), "scale λ = nan"),
                       (dict(fire="adaptive", timesteps=4), "T = 1 only"),
                       (dict(scale_search=True, scale_grid=[1.0, -2.0]), "every λ must be"),
                       (dict(scale_search=True, scale_tolerance=3.0), "between 0 and 1"),
                       (dict(scale_search=True, scale_error_factor=0.5), "must be ≥ 1")]:
        with pytest.raises(QuantizationError, match=needle):
            compile_onnx(path, calib=calib, **kw)


def test_recurrent_models_refuse_fire_and_scale_options():
    rnn = Path(__file__).parent / "data" / "rnn" / "go_nogo_relu_dale.onnx"
    trials = np.random.default_rng(0).uniform(0, 1, (2, 5, 3)).astype(np.float32)
    for kw in (dict(fire="adaptive"), dict(scale=2.0), dict(scale_search=True)):
        with pytest.raises(QuantizationError, match="a recurrent model is compiled with its own"):
            compile_onnx(rnn, calib=trials, **kw)


# --- the command line -------------------------------------------------------------------------

def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_cli_fire_adaptive_and_scale_search(tmp_path):
    """The MLP at 7 levels (measured: λ = 0.875, adaptive and uniform)."""
    calib = nets.data("mlp", 256, 1)
    np.save(tmp_path / "calib.npy", calib)
    model = nets.onnx_path("mlp")
    out = tmp_path / "a.sfn"
    r = _invoke("compile", model, "-o", out, "--calib", tmp_path / "calib.npy", "--levels", 7,
                "--fire", "adaptive", "--scale-search", "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert report["fire"] == "adaptive" and report["scale"]["lambda"] == 0.875
    curve = report["scale"]["search"]["curve"]
    assert len(curve) == len(scale_search.DEFAULT_GRID)
    assert [p["lambda"] for p in curve if p["chosen"]] == [0.875]
    art = sfn.load(out)
    assert art.meta["scale"]["search"]["curve"] == curve
    assert any(n.kind == "neuron" and n.fire == "adaptive" for n in art.nodes)
    # the human-readable form prints the curve as a table with the chosen row marked
    r = _invoke("compile", model, "-o", tmp_path / "b.sfn", "--calib", tmp_path / "calib.npy",
                "--levels", 7, "--scale-search")
    assert r.exit_code == 0, r.output
    assert "scale search on 256 calibration samples" in r.output
    assert "SynOps / inference" in r.output and "◀" in r.output
    row = next(line for line in r.output.splitlines() if "◀" in line)
    assert row.split("│")[1].strip() == "0.875"


@pytest.mark.parametrize("options,chosen", [((), 0.875),
                                            (("--scale-tolerance", 0.05), 1.25),
                                            (("--scale-tolerance", 0.05,
                                              "--scale-error-factor", 1.2), 1.0)])
def test_cli_scale_search_knobs(tmp_path, options, chosen):
    """Uniform MLP, 7 levels; measured curve: top-1 agreement 0.961 / 0.973 / 0.945 / 0.945 and
    relative error 0.072 / 0.065 / 0.071 / 0.092 at λ = 0.75 / 0.875 / 1 / 1.25 (λ = 1.5 and
    above under 0.92), SynOps falling with λ. Default: only λ = 0.875 is within half a point of
    the best agreement; a 5-point tolerance admits 0.75–1.25, all within 2× the least error
    (λ = 1.25 the sparsest); an error factor of 1.2 (≤ 0.077) keeps 0.75–1."""
    np.save(tmp_path / "calib.npy", nets.data("mlp", 256, 1))
    r = _invoke("compile", nets.onnx_path("mlp"), "-o", tmp_path / "m.sfn", "--calib",
                tmp_path / "calib.npy", "--levels", 7, "--scale-search", "--json", *options)
    assert r.exit_code == 0, r.output
    found = json.loads(r.output)["scale"]
    assert found["lambda"] == chosen
    assert found["search"]["lambda"] == chosen and found["search"]["curve"][0]["lambda"] == 0.5


@pytest.mark.parametrize("args,needle", [
    (("--fire", "bogus"), "Invalid value for '--fire'"),
    (("--scale", "0"), "Invalid value for '--scale'"),
    (("--scale", "-1"), "Invalid value for '--scale'"),
    (("--scale-tolerance", "2"), "Invalid value for '--scale-tolerance'"),
    (("--scale-error-factor", "0.5"), "Invalid value for '--scale-error-factor'"),
])
def test_cli_bad_values_are_refused(tmp_path, args, needle):
    out = tmp_path / "o.sfn"
    r = _invoke("compile", nets.onnx_path("mlp"), "-o", out, *args)
    assert r.exit_code == 2 and needle in r.output, r.output
    assert "Traceback" not in r.output and not out.exists()


def test_cli_adaptive_with_timesteps_is_refused(tmp_path):
    out = tmp_path / "o.sfn"
    r = _invoke("compile", nets.onnx_path("mlp"), "-o", out, "--fire", "adaptive",
                "--timesteps", 4)
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error:") and "T = 1 only" in r.output
    assert "Traceback" not in r.output and not out.exists()


# --- Lava ---------------------------------------------------------------------------------------

@pytest.mark.lava
def test_adaptive_mlp_on_lava_equals_cpu():
    import sim.lava
    from lava_helpers import assert_same
    compiled = _compile("mlp", 3, "adaptive")
    x = nets.data("mlp", 40, 2)
    assert all(n.fire == "adaptive" for n in _relu_neurons(compiled.artifact))
    assert_same(sim.lava.run(compiled.artifact, x, timeout=120), sim.cpu.run(compiled.artifact, x))
