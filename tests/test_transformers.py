"""Transformers and gated networks: attention, mid-network softmax, LayerNorm (the ONNX op and
its written-out form), RMSNorm, squeeze-excitation and GLU gates, from both torch exporters.
Each block's integer graph is checked three ways (the reference ONNX, sim.cpu and the int64
oracle, bit for bit) and against the float model; the shipped digits ViT and SE CNN against
their float accuracy."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import sim.artifact
import sim.cpu
from compare import assert_same
from exporters import export_onnx
from exporters.transformer import Attention, Block, DigitsViT, Norm, SqueezeExcite
from sim import reference
from toolchain.compiler import compile_onnx
from toolchain.errors import UnsupportedOpError
from toolchain.reference import emit_reference

TOKENS, DIM = 6, 16


class GLU(nn.Module):
    """Linear → GLU (a · sigmoid(b) over the halves of the features) → Linear."""

    def __init__(self):
        super().__init__()
        self.up, self.down = nn.Linear(DIM, 2 * DIM), nn.Linear(DIM, 8)

    def forward(self, x):
        return self.down(nn.functional.glu(self.up(x), dim=-1))


class Head(nn.Module):
    """A token block, then a linear head on the mean over tokens (a per-sample output)."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body, self.head = body, nn.Linear(DIM, 8)

    def forward(self, x):
        return self.head(self.body(x).mean(1))


class SEBlock(nn.Sequential):
    def __init__(self):
        super().__init__(nn.Conv2d(2, 12, 3, padding=1), nn.ReLU(), SqueezeExcite(12, 4),
                         nn.Conv2d(12, 4, 1))


def _blocks() -> dict:
    return {
        "attention": lambda: Head(Attention(DIM, 4)),
        "block_layernorm": lambda: Head(Block(DIM, 4, 32, "layer")),
        "block_rmsnorm": lambda: Head(Block(DIM, 2, 32, "rms")),
        "layernorm": lambda: Head(nn.Sequential(nn.Linear(DIM, DIM), Norm(DIM, "layer"))),
        "glu": lambda: GLU(),
        "squeeze_excite": lambda: SEBlock(),
        "vit": lambda: DigitsViT(dim=16, depth=1, heads=2, hidden=32),
    }


SHAPES = {"squeeze_excite": (2, 6, 6), "vit": (1, 8, 8)}
# relative RMS error of the output against the float model on 200 random samples at the
# default options (levels 15, internal levels 63), measured the same for both exporters: single
# blocks 0.025–0.094, the untrained one-block ViT 0.164 (0.078 with internal levels 255); the
# bounds leave a margin of about 1.5×
MAX_REL_ERROR = {"vit": 0.25}
BLOCK_REL_ERROR = 0.15


def _data(name: str, n: int, seed: int) -> np.ndarray:
    shape = SHAPES.get(name, (TOKENS, DIM))
    x = np.random.default_rng(seed).standard_normal((n,) + shape).astype(np.float32)
    if name in ("attention", "block_layernorm"):
        x[..., 3] *= 8.0          # one feature far wider than the rest (an outlier dimension)
        x[..., 5] = 0.0           # and one dead
    return x


def _model(name: str, tmp_path, exporter: str, opset: int | None = None):
    torch.manual_seed(1)
    model = _blocks()[name]().eval()
    example = torch.from_numpy(_data(name, 2, 0))
    dynamo = exporter == "dynamo"
    path = tmp_path / f"{name}_{exporter}.onnx"
    export_onnx(model, example, path, opset=opset or (18 if dynamo else 17), dynamo=dynamo)
    return model, path


def _check(path, name, **options):
    calib, test = _data(name, 256, 1), _data(name, 200, 2)
    compiled = compile_onnx(path, calib=calib, **options)
    art = compiled.artifact
    sess = ort.InferenceSession(emit_reference(art).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    out, acc = sess.run(["output", "accumulator"], {"input": test})
    res = sim.cpu.run(art, test)
    assert np.array_equal(res.output, out)
    assert np.array_equal(res.accumulator.astype(np.float32), acc)
    assert_same(res, reference.run(art, test))
    assert np.abs(res.accumulator).max() < 2 ** 23
    float_sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expect = float_sess.run(None, {float_sess.get_inputs()[0].name: test})[0]
    got = np.asarray(res.output).reshape(expect.shape)
    err = float(np.sqrt(np.mean((got - expect) ** 2)) / np.sqrt(np.mean(expect ** 2)))
    assert err < MAX_REL_ERROR.get(name, BLOCK_REL_ERROR), err
    return art, res, err


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
@pytest.mark.parametrize("name", sorted(_blocks()))
def test_block_is_bit_exact_and_follows_the_float_model(tmp_path, name, exporter):
    _, path = _model(name, tmp_path, exporter)
    art, res, _ = _check(path, name)
    kinds = {n.kind for n in art.nodes}
    if name in ("attention", "block_layernorm", "block_rmsnorm", "vit"):
        assert "matmul" in kinds and "product" in kinds   # Q·Kᵀ, weights·V; e·(1/s)
    if name in ("layernorm", "block_rmsnorm", "glu", "squeeze_excite"):
        assert "product" in kinds
    # products are counted where they happen
    products = sum(res.stats[n.name].synops for n in art.nodes if n.kind in ("product", "matmul"))
    assert products > 0


def test_layernorm_written_out_by_the_exporter_converts_the_same_way(tmp_path):
    """opset 16 has no LayerNormalization op: the legacy exporter writes ReduceMean, Sub, Pow,
    Sqrt, Div, which convert to the same kinds of nodes as the op written out."""
    _, path = _model("layernorm", tmp_path, "legacy", opset=16)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "LayerNormalization" not in ops and {"ReduceMean", "Pow", "Sqrt", "Div"} <= ops
    art, _, err = _check(path, "layernorm")
    op_art, _, op_err = _check(_model("layernorm", tmp_path, "legacy")[1], "layernorm")
    assert {n.kind for n in art.nodes} == {n.kind for n in op_art.nodes}
    assert abs(err - op_err) < 0.05


def test_products_and_shifts_are_recorded_in_the_layer_table(tmp_path):
    _, path = _model("block_layernorm", tmp_path, "legacy")
    compiled = compile_onnx(path, calib=_data("block_layernorm", 128, 1))
    rows = {r["name"]: r for r in compiled.artifact.meta["layers"]}
    matmuls = [r for r in rows.values() if r["op"] == "matmul"]
    assert len(matmuls) == 2 and all(r["detail"].startswith("K=") for r in matmuls)
    assert compiled.artifact.meta["internal_levels"] == 63
    notes = " ".join(compiled.artifact.meta["notes"])
    assert "2 LayerNormalization" in notes and "1 Softmax" in notes   # pre-norm: two


@pytest.mark.slow
def test_finer_internal_levels_halve_the_vit_error(tmp_path):
    _, path = _model("vit", tmp_path, "legacy")
    _, _, coarse = _check(path, "vit")
    _, _, fine = _check(path, "vit", internal_levels=255)
    assert fine < 0.12 and fine < 0.6 * coarse, (fine, coarse)


def test_internal_levels_set_the_requantizing_and_arithmetic_neurons(tmp_path):
    _, path = _model("attention", tmp_path, "legacy")
    calib = _data("attention", 128, 1)
    for internal in (15, 127):
        art = compile_onnx(path, calib=calib, internal_levels=internal).artifact
        requant = [n for n in art.nodes if n.kind == "neuron" and n.name.endswith("/requant")]
        assert requant and all((n.lo, n.hi) == (-internal, internal) for n in requant)
        exp = [n for n in art.nodes if n.name.endswith("/exp")]
        assert len(exp) == 1 and exp[0].payload.max() == internal


def test_compile_cli_internal_levels_option(tmp_path):
    """`toolchain compile --internal-levels N` is QuantOptions.internal_levels: the artifact's
    meta "internal_levels" and the requantizing neurons' levels follow it (63 without it); the
    README's compile row names it."""
    from click.testing import CliRunner

    from toolchain.cli import main
    from toolchain.quantize import QuantOptions
    _, path = _model("attention", tmp_path, "legacy")
    np.save(tmp_path / "calib.npy", _data("attention", 128, 1))
    arts = {}
    for internal in (None, 15):
        out = tmp_path / f"a{internal}.sfn"
        extra = [] if internal is None else ["--internal-levels", str(internal)]
        r = CliRunner().invoke(main, ["compile", str(path), "--calib", str(tmp_path / "calib.npy"),
                                      "-o", str(out), "--json", *extra])
        assert r.exit_code == 0, r.output
        arts[internal] = sim.artifact.load(out)
    assert arts[None].meta["internal_levels"] == QuantOptions.internal_levels == 63
    assert arts[15].meta["internal_levels"] == 15
    requant = [n for n in arts[15].nodes if n.kind == "neuron" and n.name.endswith("/requant")]
    assert requant and all((n.lo, n.hi) == (-15, 15) for n in requant)
    help_text = CliRunner().invoke(main, ["compile", "--help"]).output
    assert f"(default: {QuantOptions.internal_levels})" in " ".join(help_text.split())
    r = CliRunner().invoke(main, ["compile", str(path), "-o", str(tmp_path / "b.sfn"),
                                  "--internal-levels", "0"])
    assert r.exit_code == 2 and "--internal-levels" in r.output
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| `toolchain compile "))
    assert "[--internal-levels N]" in row and "`--internal-levels`" in row


def test_softmax_over_another_axis_and_layernorm_statistics_are_refused(tmp_path):
    class Bad(nn.Module):
        def forward(self, x):
            return (x.softmax(dim=1) * x).sum(1)

    path = tmp_path / "bad.onnx"
    export_onnx(Bad(), torch.randn(2, TOKENS, DIM), path, opset=17)
    with pytest.raises(UnsupportedOpError, match="only the last axis"):
        compile_onnx(path, calib=_data("attention", 16, 1))


@pytest.mark.parametrize("model", ["DIGITS_VIT", "DIGITS_SE"])
def test_shipped_model_is_within_one_point_of_float(model):
    """The models trained by examples/train_transformer_models.py, compiled with the default
    options: top-1 on the digits test split within 1.0 point of the float model's."""
    from toolchain import examples
    x_train, _, x_test, y_test = examples.load_digits_split(0)
    path = getattr(examples, model)
    compiled = compile_onnx(path, calib=x_train[:512])
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    float_acc = float((sess.run(None, {"input": x_test})[0].argmax(1) == y_test).mean())
    res = sim.cpu.run(compiled.artifact, x_test)
    acc = float((np.asarray(res.output).argmax(1) == y_test).mean())
    assert acc >= float_acc - 0.010, (acc, float_acc)
    ref = ort.InferenceSession(emit_reference(compiled.artifact).SerializeToString(),
                               providers=["CPUExecutionProvider"])
    assert np.array_equal(ref.run(["output"], {"input": x_test})[0], res.output)


def test_adaptive_fire_fits_the_internal_neurons_of_the_vit():
    """`fire="adaptive"` fits the levels of every requantizing neuron to its calibration
    sample: one-sided for the softmax's weights, mirrored for the LayerNorm outputs. At 3
    internal levels, where uniform steps lose most of the ViT, the fitted ones keep far more
    of it; the adaptive graph stays bit-exact three ways."""
    from toolchain import examples
    x_train, _, x_test, y_test = examples.load_digits_split(0)
    acc = {}
    for fire in ("uniform", "adaptive"):
        compiled = compile_onnx(examples.DIGITS_VIT, calib=x_train[:512], internal_levels=3,
                                fire=fire)
        res = sim.cpu.run(compiled.artifact, x_test)
        acc[fire] = float((np.asarray(res.output).argmax(1) == y_test).mean())
    art = compiled.artifact
    fitted = art.meta["adaptive"]
    softmax = [v for k, v in fitted.items() if k.endswith("Softmax_output_0/requant")]
    norms = [v for k, v in fitted.items() if k.endswith("LayerNormalization_output_0/requant")]
    assert len(softmax) == 2 and not any(v["signed"] for v in softmax)
    assert len(norms) == 5 and all(v["signed"] for v in norms)
    assert all(len(v["payload"]) == (7 if v["signed"] else 4) for v in softmax + norms)
    assert acc["adaptive"] >= acc["uniform"] + 0.10, acc
    assert_same(res, reference.run(art, x_test))
    ref = ort.InferenceSession(emit_reference(art).SerializeToString(),
                               providers=["CPUExecutionProvider"])
    assert np.array_equal(ref.run(["output"], {"input": x_test})[0], res.output)


@pytest.mark.lava
@pytest.mark.parametrize("fire", [pytest.param("uniform", marks=pytest.mark.slow), "adaptive"])
def test_transformer_block_on_lava_equals_cpu(tmp_path, fire):
    import sim.lava
    _, path = _model("block_layernorm", tmp_path, "legacy")
    art = compile_onnx(path, calib=_data("block_layernorm", 128, 1), fire=fire).artifact
    if fire == "adaptive":
        assert any(n.name.endswith("/requant") and n.fire == "adaptive" for n in art.nodes)
    x = _data("block_layernorm", 6, 3)
    assert_same(sim.lava.run(art, x), sim.cpu.run(art, x))
