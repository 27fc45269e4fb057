"""The cheap linear ops real networks need: the select kind (constant gathers) and what imports
through it — Slice, Gather, Split, Expand, Tile, nearest and bilinear Resize, ConvTranspose —
1-D convolution and pooling, per-token Linear, AveragePool with per-position divisors.

Each network is exported from torch with both exporters and compiled; sim.cpu equals
sim.reference and the emitted integer reference ONNX bit for bit, and every layer's integers,
times their units, follow onnxruntime's float tensor of the same name (compiled at 63 levels
without clipping, so a layer's error is a few level steps; a wrong coordinate, flip or divisor
is an error of the order of the values themselves).
"""
from __future__ import annotations

import functools
import json
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import nets
import sim.cpu
import sim.reference
from compare import assert_same, reference_onnx_outputs
from sim.artifact import Artifact, load, save
from sim import semantics
from sim.ir import Dense, Input, Neuron, Readout, Reshape, Select
from toolchain.calibrate import run_float
from toolchain.compiler import compile_onnx
from toolchain.quantize.quantizer import QuantizerBase
from toolchain.errors import ToolchainError
from toolchain.onnx_import import import_onnx, loader

_DIR = Path(tempfile.mkdtemp(prefix="sfn-test-real-ops-"))
EXPORTERS = [pytest.param(False, id="legacy"), pytest.param(True, id="dynamo")]


def assert_exact(art, x):
    """sim.cpu == sim.reference == the reference ONNX, output and accumulator."""
    res = sim.cpu.run(art, x)
    assert_same(res, sim.reference.run(art, x))
    out, acc = reference_onnx_outputs(art, x)
    assert np.array_equal(res.accumulator.astype(np.float32), acc)
    assert np.array_equal(res.output, out)
    assert sum(s.spikes for s in res.stats.values()) > 0
    return res


# --- the select kind ----------------------------------------------------------------------------

def _select_net(table, in_shape=(2, 3, 4), out_shape=None):
    out_shape = out_shape or (len(table),)
    n = int(np.prod(out_shape))
    rng = np.random.default_rng(5)
    nodes = [Input("x", (), in_shape, inv_scale=10.0, lo=-127, hi=127),
             Select("s", ("x",), out_shape, table=np.asarray(table, np.int64)),
             Reshape("flat", ("s",), (n,)),
             Dense("d", ("flat",), (4,), weight=(rng.integers(-60, 60, (4, n)) * 2)),
             Neuron("h", ("d",), (4,), threshold=np.full(4, 8), bias=np.arange(4), lo=-15, hi=15),
             Dense("d2", ("h",), (3,), weight=(rng.integers(-60, 60, (3, 4)) * 2)),
             Readout("y", ("d2",), (3,), scale=np.ones(3, np.float32), bias=np.zeros(3, np.int64))]
    art = Artifact(nodes, "x", "y")
    art.validate()
    return art


def test_select_equation_on_hostile_values():
    """out.flat[i] = in.flat[table[i]], 0 where −1: repeated, reversed and zero entries, values
    at the encoder's extremes, one element read by every output."""
    rng = np.random.default_rng(0)
    table = np.concatenate([[-1, 23, 0, 0, -1], rng.integers(0, 24, 40), [23] * 5, [-1] * 6])
    art = _select_net(table)
    x = rng.choice([-13.0, 0.0, 13.0, 0.05], size=(37, 2, 3, 4)).astype(np.float32)
    sel = art.node("s")
    enc = semantics.encode_input(x, 10.0, -127, 127)
    out, synops = sel.apply([enc], True)
    flat = enc.reshape(len(x), -1)
    expect = np.where(table < 0, 0, flat[:, np.maximum(table, 0)])
    assert synops == 0 and np.array_equal(out.reshape(len(x), -1), expect)
    assert out.dtype == enc.dtype
    assert sel.value_range([(3, 9)]) == (0, 9)          # a −1 entry makes 0 reachable
    assert _select_net(np.arange(24)).node("s").value_range([(3, 9)]) == (3, 9)
    assert np.array_equal(sel.index_tables([(2, 3, 4)])[0], table)
    assert_exact(art, x)


@pytest.mark.parametrize("table,shape,message", [
    (np.arange(5), (6,), "table has 5 entries"),
    (np.array([0, 24, 1]), (3,), "outside [−1, 24)"),
    (np.array([0, -2, 1]), (3,), "outside [−1, 24)"),
    (np.arange(6).reshape(2, 3), (2, 3), "1-D integer array"),
    (np.arange(6) * 1.0, (6,), "1-D integer array"),
])
def test_select_check_refuses(table, shape, message):
    node = Select("s", ("x",), shape, table=table)
    assert message in node.check([(2, 3, 4)])


def test_select_table_round_trips_as_int32(tmp_path):
    table = np.array([5, -1, 0, 23, 7, 7])
    art = _select_net(table)
    save(art, tmp_path / "s.sfn")
    back = load(tmp_path / "s.sfn")
    assert back.node("s").table.dtype == np.int64
    assert np.array_equal(back.node("s").table, table)
    rec = json.loads(zipfile.ZipFile(tmp_path / "s.sfn").read("manifest.json"))
    entry = next(r for r in rec["nodes"] if r["name"] == "s")["arrays"]["table"]
    assert entry["dtype"] == "<i4"


# --- networks from torch, both exporters ------------------------------------------------------

class IndexOps(nn.Module):
    """Split, strided and negative Slice, index_select (Gather), Expand of a pooled map, Tile
    (repeat), nearest ×2 (asymmetric, floor)."""
    input_shape = (2, 8, 8)

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(2, 6, 3, padding=1)
        self.c2 = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 12 * 8 * 2, 5)
        self.register_buffer("rows", torch.tensor([0, 2, 5, 1, 1, 3, 4, 0, 2, 5, 5, 3]))

    def forward(self, x):
        x = torch.relu(self.c1(x))
        a, b = torch.split(x, [3, 3], dim=1)
        x = a[:, :, 1:-1, ::2] + b[:, :, 1:-1, 1::2]                   # (3, 6, 4)
        x = x + F.adaptive_avg_pool2d(x, 1).expand(-1, -1, 6, 4)
        x = F.interpolate(x, scale_factor=2, mode="nearest")            # (3, 12, 8)
        x = torch.relu(self.c2(x))
        x = torch.index_select(x, 2, self.rows)
        return self.fc(x.repeat(1, 1, 1, 2).flatten(1))


class Upsampling(nn.Module):
    """ConvTranspose2d (stride, padding, output_padding, groups, dilation; a pad beyond the
    kernel's reach crops), bilinear ×2 and ×4 (align_corners False), bilinear with
    align_corners True at an integer step (4 → 7)."""
    input_shape = (4, 4, 4)

    def __init__(self):
        super().__init__()
        self.t1 = nn.ConvTranspose2d(4, 8, 3, stride=2, padding=1, output_padding=1)
        self.t2 = nn.ConvTranspose2d(8, 8, (4, 3), stride=(2, 1), padding=(1, 2),
                                     dilation=(1, 2), groups=4)
        self.t3 = nn.ConvTranspose2d(8, 4, 3, stride=2, padding=3, output_padding=1)
        self.c = nn.Conv2d(4, 3, 3, padding=1)
        self.fc = nn.LazyLinear(5)

    def forward(self, x):
        x = torch.relu(self.t1(x))              # (8, 8, 8)
        x = torch.relu(self.t2(x))              # (8, 16, 6)
        x = torch.relu(self.t3(x))              # (4, 28, 8)
        y = torch.relu(self.c(x))
        a = F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)
        b = F.interpolate(y[:, :, :4, :4], scale_factor=4, mode="bilinear", align_corners=False)
        c = F.interpolate(y[:, :, :4, :4], size=(7, 7), mode="bilinear", align_corners=True)
        return self.fc(torch.cat([a.flatten(1), b.flatten(1), c.flatten(1)], 1))


class Conv1d(nn.Module):
    """Conv1d (stride, padding, dilation, groups), BatchNorm1d after a ReLU (not foldable) and
    after a conv (folded), MaxPool1d, AvgPool1d with count_include_pad=False, a mean over L."""
    input_shape = (3, 32)

    def __init__(self):
        super().__init__()
        self.a = nn.Conv1d(3, 8, 5, stride=2, padding=2)
        self.bn = nn.BatchNorm1d(8)
        self.b = nn.Conv1d(8, 8, 3, padding=2, dilation=2, groups=2)
        self.bn2 = nn.BatchNorm1d(8)
        self.c = nn.Conv1d(8, 6, 1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        x = self.bn(torch.relu(self.a(x)))
        x = F.max_pool1d(x, 3, 2, 1)
        x = torch.relu(self.bn2(self.b(x)))
        x = F.avg_pool1d(x, 3, 1, 1, count_include_pad=False)
        return self.fc(torch.relu(self.c(x)).mean(dim=2))


class TokenMLP(nn.Module):
    """Linear on every token of an (S, D) input (MatMul + bias Add), a Linear without bias
    straight into another (a current requantized in the token layout), then a head."""
    input_shape = (6, 8)

    def __init__(self):
        super().__init__()
        self.l1, self.l2 = nn.Linear(8, 16), nn.Linear(16, 8, bias=False)
        self.l3, self.fc = nn.Linear(8, 5), nn.Linear(30, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.l3(self.l2(torch.relu(self.l1(x))))).flatten(1))


class PoolDivisors(nn.Module):
    """AveragePool whose border or ceil-mode windows average over fewer elements, read by a
    conv (the per-position gains keep one unit per channel) and by the head."""
    input_shape = (2, 9, 9)

    def __init__(self):
        super().__init__()
        self.c, self.c2 = nn.Conv2d(2, 6, 3, padding=1), nn.Conv2d(6, 4, 1)
        self.fc = nn.LazyLinear(3)

    def forward(self, x):
        x = torch.relu(self.c(x))
        x = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
        x = torch.relu(self.c2(x))
        x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False, ceil_mode=True)
        y = F.avg_pool2d(x, 2, stride=2, ceil_mode=True)
        return self.fc(torch.cat([x.flatten(1), y.flatten(1)], 1))


NETS = {"index_ops": IndexOps, "upsampling": Upsampling, "conv1d": Conv1d,
        "token_mlp": TokenMLP, "pool_divisors": PoolDivisors}


def _build(name):
    torch.manual_seed(0)
    model = NETS[name]()
    model(torch.zeros((1,) + model.input_shape))      # lazy layers take their size
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            # He-normal: activations keep their scale through the stacked layers
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.uniform_(m.bias, -0.05, 0.05)
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _compile_tracked(path, x):
    """Compile at 63 levels, percentile 100, keeping the quantizer's record of every float-graph
    tensor (its SFN node, unit and pending bias): (Compiled, {tensor: QTensor})."""
    box = {}
    run = QuantizerBase.run

    def keep(self, softmax):
        box["q"] = self
        return run(self, softmax)
    QuantizerBase.run = keep
    try:
        cc = compile_onnx(path, calib=x, levels=63, percentile=100)
    finally:
        QuantizerBase.run = run
    q = box["q"]
    present = {n.name for n in cc.artifact.nodes}
    return cc, {n: q.q[n] for n in q.fg.tensors() if n in q.q and q.q[n].node in present}


def assert_layers_follow_float(cc, tensors, x, tolerance=0.15):
    """Every tensor's integers × unit (pending bias added) against onnxruntime's float values:
    max error ≤ tolerance × the tensor's largest value (measured: at most 0.093 on these
    networks, the error of a few 63-level steps carried through the layers). The graph's
    output, a sum of many such errors with cancelling weights, is checked by top-1 agreement."""
    tensors = {n: t for n, t in tensors.items() if n != cc.imported.graph.output}
    res = sim.cpu.run(cc.artifact, x, record=tuple({t.node for t in tensors.values()}))
    names = sorted(tensors)
    floats = next(run_float(cc.imported.source, x, names, batch=len(x)))
    worst = {}
    for n in names:
        t = tensors[n]
        value = (res.recorded[t.node] + t.bias[None]) * t.unit[None]
        ref = floats[n].reshape(value.shape)
        worst[n] = float(np.abs(value - ref).max()) / max(float(np.abs(ref).max()), 1e-9)
    assert max(worst.values()) <= tolerance, worst
    return worst


@functools.lru_cache(maxsize=None)
def compiled(name, dynamo):
    model = _build(name)
    path = nets.export(model, _DIR / f"{name}_{'dynamo' if dynamo else 'legacy'}.onnx", dynamo)
    x = np.random.default_rng(0).random((96,) + model.input_shape).astype(np.float32)
    return _compile_tracked(path, x) + (x,)


@pytest.mark.parametrize("dynamo", EXPORTERS)
@pytest.mark.parametrize("name", sorted(NETS))
def test_real_ops_are_bit_exact_and_follow_the_float_model(name, dynamo):
    cc, tensors, x = compiled(name, dynamo)
    assert_exact(cc.artifact, x)
    worst = assert_layers_follow_float(cc, tensors, x)
    print(name, dynamo, max(worst.values()), cc.agreement)
    assert cc.agreement["top1_agreement"] >= 0.8
    kinds = [n.kind for n in cc.artifact.nodes]
    if name == "index_ops":
        assert kinds.count("select") >= 5
    if name == "upsampling":   # three spreads for ConvTranspose, three for the bilinear kernels
        assert kinds.count("select") >= 6 and kinds.count("conv") == 7
    if name == "pool_divisors":  # an Add of per-position gains after each uneven pool
        assert kinds.count("add") == 3
        adds = [n for n in cc.artifact.nodes if n.kind == "add"]
        assert all(n.gains.shape[-2:] == n.shape[-2:] for n in adds)
    if name == "token_mlp":    # one 1×1 conv per Linear, the bias folded in
        assert kinds.count("conv") == 3 and "add" not in kinds


def test_exporters_give_the_same_select_tables():
    a = compiled("index_ops", False)[0]
    b = compiled("index_ops", True)[0]
    tables = lambda art: [n.table.tolist() for n in art.nodes if n.kind == "select"]
    assert tables(a.artifact) == tables(b.artifact)


def test_bilinear_kernel_is_exact_integers():
    """The bilinear kernels are stored as integers, their divisor folded into the unit: per
    axis (1, 3, 3, 1)/4 for ×2 (half-pixel), (1, 3, 5, 7, 7, 5, 3, 1)/8 for ×4, (1, 2, 1)/2 for
    align_corners at step 1/2; the 2-D kernel is the outer product (divisors 16, 64, 4)."""
    cc = compiled("upsampling", False)[0]
    convs = [n for n in cc.artifact.nodes if n.kind == "conv" and n.groups == n.shape[0]
             and n.weight.shape[1] == 1]
    kernels = sorted((tuple(n.weight.shape[2:]), n.weight[0, 0].tolist()) for n in convs)
    k2 = np.outer([1, 3, 3, 1], [1, 3, 3, 1]).tolist()
    k4 = np.outer([1, 3, 5, 7, 7, 5, 3, 1], [1, 3, 5, 7, 7, 5, 3, 1]).tolist()
    k_ac = np.outer([1, 2, 1], [1, 2, 1]).tolist()      # align_corners, step 1/2
    assert kernels == sorted([((3, 3), k_ac), ((4, 4), k2), ((8, 8), k4)])


def test_nearest_exact_and_advanced_indexing_from_dynamo():
    """The dynamo exporter writes nearest-exact resizing and x[:, :, idx] as Transpose (batch
    axis moved), GatherND, Transpose back: one select."""
    class Net(nn.Module):
        input_shape = (2, 5, 6)

        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(2, 3, 3, padding=1)
            self.fc = nn.LazyLinear(3)

        def forward(self, x):
            x = torch.relu(self.c(x))
            a = F.interpolate(x, scale_factor=1.5, mode="nearest-exact")
            b = x[:, :, torch.tensor([4, 0, 2, 2])]
            return self.fc(torch.cat([a.flatten(1), b.flatten(1)], 1))
    torch.manual_seed(0)
    model = Net()
    model(torch.zeros(1, 2, 5, 6))
    path = nets.export(model.eval(), _DIR / "nearest_exact.onnx", dynamo=True)
    x = np.random.default_rng(1).random((64, 2, 5, 6)).astype(np.float32)
    cc, tensors = _compile_tracked(path, x)
    assert_exact(cc.artifact, x)
    assert_layers_follow_float(cc, tensors, x)
    assert [n.kind for n in cc.artifact.nodes].count("select") == 2


@pytest.mark.parametrize("scale,mode,message", [
    (1.5, "bilinear", r"only integer upsampling factors"),
    (0.5, "bilinear", r"only integer upsampling factors"),
    (2, "bicubic", r"mode 'cubic': only nearest and linear"),
    (16, "bilinear", r"integer weights reach 961"),
])
def test_resizes_refused_with_node_and_reason(scale, mode, message, tmp_path):
    class Net(nn.Module):
        input_shape = (1, 4, 4)

        def forward(self, x):
            return F.interpolate(x, scale_factor=scale, mode=mode, align_corners=False)
    path = nets.export(Net().eval(), tmp_path / "r.onnx")
    with pytest.raises(ToolchainError, match=r"node .*\(Resize, opset 17\): .*" + message):
        compile_onnx(path, calib=np.random.default_rng(0).random((8, 1, 4, 4), np.float32))


# --- sim.lava ---------------------------------------------------------------------------------

@pytest.mark.lava
@pytest.mark.parametrize("name", ["upsampling", "pool_divisors"])
def test_lava_fixed_pt_equals_cpu(name):
    import sim.lava
    cc, _, x = compiled(name, False)
    ref = sim.cpu.run(cc.artifact, x[:24])
    assert_same(sim.lava.run(cc.artifact, x[:24], timeout=300), ref)


# --- import: opset upgrade, constant weights, final softmax, Dropout, LRN ------------------------

def _graph_model(nodes, inits, in_shape, out_shape, opset, out="y"):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *in_shape])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", *out_shape])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _mlp_nodes(weight_from_constant_of_shape: bool, f_in=8, hidden=6):
    """x → Gemm(W1) → Relu → Dropout (mask output unused) → Gemm(W2) → Softmax → Reshape."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((hidden, f_in)).astype(np.float32), "W1")
    w2 = numpy_helper.from_array(rng.standard_normal((3, hidden)).astype(np.float32), "W2")
    shape = numpy_helper.from_array(np.array([-1, 3, 1], np.int64), "shape")
    nodes = []
    inits = [w2, shape]
    if weight_from_constant_of_shape:   # W1 = 0.25 everywhere, built by the graph
        inits.append(numpy_helper.from_array(np.array([hidden, f_in], np.int64), "w1_shape"))
        nodes.append(helper.make_node("ConstantOfShape", ["w1_shape"], ["W1"],
                                      value=numpy_helper.from_array(np.array([0.25], np.float32))))
    else:
        inits.append(w1)
    nodes += [helper.make_node("Gemm", ["x", "W1"], ["h"], transB=1),
              helper.make_node("Relu", ["h"], ["r"]),
              helper.make_node("Dropout", ["r"], ["d", "mask"]),
              helper.make_node("Gemm", ["d", "W2"], ["z"], transB=1),
              helper.make_node("Softmax", ["z"], ["p"], axis=1),
              helper.make_node("Reshape", ["p", "shape"], ["y"])]
    return nodes, inits


@pytest.mark.parametrize("opset", [9, 13])
def test_old_opset_is_upgraded_and_a_final_softmax_before_a_reshape_is_the_readouts(opset,
                                                                                    tmp_path):
    nodes, inits = _mlp_nodes(False)
    path = tmp_path / f"m{opset}.onnx"
    onnx.save(_graph_model(nodes, inits, (8,), (3, 1), opset), path)
    x = np.random.default_rng(1).standard_normal((64, 8)).astype(np.float32)
    cc = compile_onnx(path, calib=x)
    notes = " ".join(cc.notes)
    assert ("opset 9 converted to 13 by onnx.version_converter" in notes) == (opset == 9)
    readout = cc.artifact.node(cc.artifact.output)
    assert readout.softmax == "softmax" and tuple(readout.shape) == (3,)
    assert cc.agreement["top1_agreement"] >= 0.95
    probs = sim.cpu.run(cc.artifact, x).output     # the readout rule: the final softmax applied
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert_exact(cc.artifact, x)


def test_constant_built_weight_is_not_an_activation(tmp_path, monkeypatch):
    """A ConstantOfShape weight larger than the activation limit imports (it is a constant,
    bounded by the tensor limit); an activation of that size is still refused."""
    monkeypatch.setattr(loader, "MAX_ACTIVATION_ELEMENTS", 40)
    nodes, inits = _mlp_nodes(True)            # W1: 6 × 8 = 48 elements > 40
    path = tmp_path / "cos.onnx"
    onnx.save(_graph_model(nodes, inits, (8,), (3, 1), 13), path)
    imported = import_onnx(path)
    dense = [d for _, d in imported.graph.g.nodes(data=True) if d["op"] == "dense"]
    assert np.all(dense[0]["params"]["W"] == 0.25)
    big = _graph_model([helper.make_node("Relu", ["x"], ["y"])], [], (48,), (48,), 13)
    onnx.save(big, tmp_path / "big.onnx")
    with pytest.raises(ToolchainError, match=r"'x' has shape \['N', 48\] \(48 elements\), over "
                                             r"the 40-element limit"):
        import_onnx(tmp_path / "big.onnx")


def test_softmax_in_the_middle_imports_and_a_dropout_mask_that_is_read_is_refused(tmp_path):
    nodes, inits = _mlp_nodes(False)
    onnx.save(_graph_model(nodes[:-1] + [helper.make_node("Reshape", ["p", "shape"], ["q"]),
                                         helper.make_node("Relu", ["q"], ["y"])],
                           inits, (8,), (3, 1), 13), tmp_path / "mid.onnx")
    # written out as primitive ops: a max pool over the features, an exp table, a sum pool,
    # a reciprocal table and a product of two activations
    ops = {d["op"] for _, d in import_onnx(tmp_path / "mid.onnx").graph.g.nodes(data=True)}
    assert {"maxpool", "avgpool", "mul2"} <= ops
    nodes, inits = _mlp_nodes(False)
    nodes[-1] = helper.make_node("Concat", ["p", "mask_f"], ["y"], axis=1)
    nodes.insert(-1, helper.make_node("Cast", ["mask"], ["mask_f"], to=TensorProto.FLOAT))
    onnx.save(_graph_model(nodes, inits, (8,), (9,), 13), tmp_path / "mask.onnx")
    with pytest.raises(ToolchainError, match=r"\(Dropout, opset 13\): the mask output of "
                                             r"Dropout is read"):
        import_onnx(tmp_path / "mask.onnx")


def test_lrn_is_written_out_as_primitive_ops(tmp_path):
    onnx.save(_graph_model([helper.make_node("LRN", ["x"], ["y"], name="norm1", size=3)], [],
                           (4, 5, 5), (4, 5, 5), 13), tmp_path / "lrn.onnx")
    imported = import_onnx(tmp_path / "lrn.onnx")
    ops = [d["op"] for _, d in imported.graph.g.nodes(data=True)]
    # x² and the power are tables, the channel window a 1×1 conv, the division a product
    assert ops.count("mul2") == 1 and ops.count("conv") == 1 and "1 LRN written out as " \
        "primitive ops" in imported.notes
