"""exporters/: ClipFloor semantics, ONNX export and its check, the digits data and CNN."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from torch import nn

from exporters import (
    ClipFloor,
    DigitsCNN,
    ExportCheckError,
    export_onnx,
    load_digits_split,
    set_quantize,
    train_digits,
)

torch.set_num_threads(2)
MODELS_DIR = Path(__file__).resolve().parents[1] / "toolchain" / "data"


# ---------------------------------------------------------------- ClipFloor

def test_clipfloor_equals_formula_on_half_step_grid():
    # clip = 1, L = 4: s = 0.25 and every multiple of s/2 is exact in float32,
    # so the half points z = (k + 1/2) s are hit exactly.
    levels, step = 4, 0.25
    layer = ClipFloor(levels, init_clip=1.0)
    z = torch.arange(-10, 14, dtype=torch.float32) * (step / 2)
    expected = step * np.clip(np.floor(z.numpy().astype(np.float64) / step + 0.5), 0, levels)
    assert np.array_equal(layer(z).detach().numpy(), expected.astype(np.float32))
    y = {float(zi): float(yi) for zi, yi in zip(z, layer(z).detach())}
    assert y[0.5 * step] == step          # half rounds up, not to 0
    assert y[1.5 * step] == 2 * step
    assert y[2.5 * step] == 3 * step      # torch.round would give 2 s (half to even)
    assert y[-0.5 * step] == 0.0
    assert y[5 * step] == levels * step   # saturates at clip


def test_clipfloor_equals_float32_formula_for_non_dyadic_clip():
    layer = ClipFloor(15, init_clip=1.7)
    z = torch.linspace(-0.5, 2.5, 4001)
    step = np.float32(1.7) / np.float32(15)
    expected = step * np.clip(np.floor(z.numpy() / step + np.float32(0.5)), 0, 15)
    assert np.array_equal(layer(z).detach().numpy(), expected)
    assert len(np.unique(layer(z).detach().numpy())) == 16


def test_clipfloor_unquantized_is_clamp_and_set_quantize_flips_all():
    model = nn.Sequential(ClipFloor(7, 1.3), nn.Identity(), ClipFloor(3, 0.9))
    assert set_quantize(model, False) == 2
    assert [m.quantize for m in model if isinstance(m, ClipFloor)] == [False, False]
    z = torch.linspace(-1, 2, 301)
    assert torch.equal(model[0](z), torch.clamp(z, 0, 1.3))
    assert set_quantize(model, True) == 2 and model[2].quantize


def test_clipfloor_straight_through_gradients():
    levels, clip = 4, 1.0
    layer = ClipFloor(levels, init_clip=clip)
    z = torch.tensor([-0.6, -0.05, 0.1, 0.3, 0.55, 0.8, 1.2, 2.0], requires_grad=True)
    y = layer(z)
    y.sum().backward()
    # floor passes gradient 1 while z/s + 1/2 is within [0, L], i.e. z in [-s/2, clip - s/2].
    assert z.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    # d y / d clip = (y - z) / clip inside the range, 1 above it, 0 below it.
    z_ = z.detach()
    inside = (z_ >= -clip / levels / 2) & (z_ <= clip - clip / levels / 2)
    expected = torch.where(inside, (y.detach() - z_) / clip, (z_ > 0).float()).sum()
    assert layer.clip.grad is not None and layer.clip.grad.item() != 0.0
    assert layer.clip.grad.item() == pytest.approx(expected.item(), abs=1e-6)


# ---------------------------------------------------------------- ONNX export

class SmallNet(nn.Sequential):
    def __init__(self):
        torch.manual_seed(0)
        super().__init__(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), ClipFloor(7, init_clip=1.3),
                         nn.AvgPool2d(2), nn.Flatten(), nn.Linear(64, 3))
        with torch.no_grad():  # non-trivial BatchNorm statistics, so folding it is tested
            self[1].running_mean.uniform_(-0.5, 0.5)
            self[1].running_var.uniform_(0.5, 2.0)


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {init.name: onnx.numpy_helper.to_array(init) for init in model.graph.initializer}


@pytest.mark.parametrize("dynamo,opset", [(False, 17), (False, 18), (True, 17), (True, 18)])
def test_export_roundtrip_clip_node_and_metadata(tmp_path, dynamo, opset):
    net = SmallNet().train()
    path = export_onnx(net, torch.rand(1, 1, 8, 8), tmp_path / "net.onnx", opset=opset, dynamo=dynamo, levels=7)
    assert net.training and net[2].quantize  # restored after export

    proto = onnx.load(path)
    assert [entry.version for entry in proto.opset_import if entry.domain == ""] == [opset]
    assert {p.key: p.value for p in proto.metadata_props}["sfn.levels"] == "7"
    assert [i.name for i in proto.graph.input] == ["input"] and [o.name for o in proto.graph.output] == ["output"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    clips = [node for node in proto.graph.node if node.op_type == "Clip"]
    assert len(clips) == 1 and "Identity" not in {node.op_type for node in proto.graph.node}
    initializers = _initializers(proto)
    _, low, high = clips[0].input
    assert initializers[low] == 0.0 and initializers[high] == np.float32(1.3)

    x = torch.rand(5, 1, 8, 8)
    set_quantize(net, False)
    with torch.no_grad():
        expected = net.eval()(x).numpy()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(["output"], {"input": x.numpy()})
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


class BatchBranchNet(nn.Module):
    """Forward branches on the batch size: tracing bakes the example's branch in."""

    def forward(self, x):
        return x * 2 if x.shape[0] == 1 else x * 3


def test_export_check_catches_traced_control_flow(tmp_path):
    # the tracer's own warning is let through the exporter's quieting: it names the cause
    with pytest.warns(torch.jit.TracerWarning), pytest.raises(ExportCheckError, match="random batch-3"):
        export_onnx(BatchBranchNet(), torch.ones(1, 4), tmp_path / "bad.onnx")
    assert list(tmp_path.iterdir()) == []  # nothing written, no temp file left


def test_export_check_reports_max_abs_difference(tmp_path, monkeypatch):
    original_run = onnxruntime.InferenceSession.run

    def off_by_a_bit(self, *args, **kwargs):
        return [out + np.float32(0.25) for out in original_run(self, *args, **kwargs)]

    monkeypatch.setattr(onnxruntime.InferenceSession, "run", off_by_a_bit)
    with pytest.raises(ExportCheckError, match=r"max \|diff\| = 0\.25"):
        export_onnx(SmallNet(), torch.rand(1, 1, 8, 8), tmp_path / "net.onnx")
    assert not (tmp_path / "net.onnx").exists()


# ---------------------------------------------------------------- digits

def test_digits_split_is_deterministic_and_stratified():
    first, second = load_digits_split(0), load_digits_split(0)
    for a, b in zip(first, second):
        assert np.array_equal(a, b)
    x_train, y_train, x_test, y_test = first
    assert x_train.shape == (1437, 1, 8, 8) and x_test.shape == (360, 1, 8, 8)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    assert x_train.min() == 0.0 and x_train.max() == 1.0
    totals = np.bincount(np.concatenate([y_train, y_test]), minlength=10)
    assert np.all(np.abs(np.bincount(y_test, minlength=10) - 0.2 * totals) <= 1)
    assert not np.array_equal(load_digits_split(1)[3], y_test)


@pytest.mark.parametrize("act,pool", [("relu", "avg"), ("clipfloor", "max")])
def test_digits_cnn_shapes(act, pool):
    model = DigitsCNN(act=act, levels=15, pool=pool)
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    assert sum(isinstance(m, ClipFloor) for m in model.modules()) == (3 if act == "clipfloor" else 0)
    with pytest.raises(ValueError, match="act must be one of"):
        DigitsCNN(act="gelu")


def test_train_digits_is_deterministic():
    def run():
        torch.manual_seed(3)
        model = DigitsCNN(act="clipfloor", levels=15)
        return train_digits(model, epochs=1, seed=3), model.state_dict()

    # one thread: float sums (hence results) depend on the thread count, and on a busy
    # 2-core machine one thread is several times faster than two
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        (acc_a, state_a), (acc_b, state_b) = run(), run()
    finally:
        torch.set_num_threads(threads)
    assert acc_a == acc_b and acc_a > 0.5
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)


def test_example_models_are_exported_with_levels():
    record_path = MODELS_DIR / "digits_models.json"
    if not record_path.exists():
        pytest.skip("run examples/train_digits_models.py to create toolchain/data/")
    record = json.loads(record_path.read_text())
    # the digits CNNs (the transformer models' entries are tested in test_transformers.py)
    cnns = {name: entry for name, entry in record.items() if entry["file"].startswith("digits_cnn")}
    assert len(cnns) == 2
    for name, entry in cnns.items():
        proto = onnx.load(MODELS_DIR / entry["file"])
        ops = [node.op_type for node in proto.graph.node]
        assert entry["test_accuracy"] >= 0.97
        if entry["levels"] is None:
            assert ops.count("Relu") == 3 and "Clip" not in ops
        else:
            assert ops.count("Clip") == 3 and "Relu" not in ops and "Identity" not in ops
            initializers = _initializers(proto)
            bounds = [[initializers[name] for name in node.input[1:]] for node in proto.graph.node
                      if node.op_type == "Clip"]
            assert all(low == 0.0 and high > 0.0 for low, high in bounds)
            assert {p.key: p.value for p in proto.metadata_props}["sfn.levels"] == str(entry["levels"])
