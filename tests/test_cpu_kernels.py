"""sim.cpu's fast kernels (float-held exact integers, torch's oneDNN/MKL products) equal the
int64 definitions bit for bit, fall back to numpy without torch, and stay out of the Lava path."""
from pathlib import Path

import numpy as np
import pytest

import nets
import sim.cpu
import sim.reference
from compare import assert_same as _same
from sim import kernels as contract
from sim import semantics
from sim.cpu import kernels, program, runner, torch_ops
from sim.ir import Conv, Dense, SumPool
from sim.ops import base
from toolchain.compiler import compile_onnx

DIGITS = Path(__file__).resolve().parents[1] / "toolchain" / "data" / "digits_cnn_relu.onnx"

GEOMETRIES = [  # (C_in, C_out, size, k, stride, pads, dilation, groups)
    (1, 16, 8, 3, 1, (1, 1, 1, 1), 1, 1),
    (16, 32, 8, 3, 1, (1, 1, 1, 1), 1, 1),
    (6, 8, 9, 3, 2, (1, 0, 2, 1), 1, 2),      # asymmetric padding, groups
    (8, 8, 9, 3, 1, (2, 2, 2, 2), 2, 2),      # dilation
    (6, 6, 7, 3, 1, (1, 1, 1, 1), 1, 6),      # depthwise
    (4, 5, 6, 1, 2, (0, 0, 0, 0), 1, 1),      # 1×1, strided
    (3, 8, 7, 3, 2, (1, 1, 1, 1), 1, 1),      # three channels (padded to four), strided
    (5, 4, 6, 3, 1, (0, 0, 0, 0), 2, 1),      # five (padded to eight), dilated
    (1, 5, 9, 4, 2, (0, 1, 2, 1), 1, 1),      # one channel (a matrix product), strided, uneven
    (1, 3, 7, 3, 1, (1, 1, 1, 1), 2, 1),      # one channel, dilated (oneDNN's kernel)
]


def _conv_int(x, w, stride, pads, dilation, groups, out_hw):
    """Brute-force int64 convolution: the definition, no floats anywhere."""
    b, c = x.shape[:2]
    co, cg, kh, kw = w.shape
    top, left, bottom, right = pads
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    out = np.zeros((b, co) + tuple(out_hw), np.int64)
    cog = co // groups
    for o in range(co):
        g = o // cog
        for i in range(kh):
            for j in range(kw):
                win = xp[:, g * cg:(g + 1) * cg,
                         i * dilation: i * dilation + stride * (out_hw[0] - 1) + 1: stride,
                         j * dilation: j * dilation + stride * (out_hw[1] - 1) + 1: stride]
                out[:, o] += np.einsum("bchw,c->bhw", win, w[o, :, i, j].astype(np.int64))
    return out


def _out(size, k, stride, pads, dilation):
    return tuple((size + pads[a] + pads[a + 2] - dilation * (k - 1) - 1) // stride + 1
                 for a in (0, 1))


@pytest.mark.parametrize("use_torch", [False, True], ids=["numpy", "torch"])
@pytest.mark.parametrize("xmax", [15, 2 ** 20], ids=["float32", "float64"])
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_conv_exact_equals_integer_definition(geometry, xmax, use_torch):
    ci, co, size, k, s, pads, d, g = geometry
    rng = np.random.default_rng(size * 7 + co)
    x = rng.integers(-xmax, xmax + 1, (5, ci, size, size))
    w = 2 * rng.integers(-128, 128, (co, ci // g, k, k))
    out_hw = _out(size, k, s, pads, d)
    expect = _conv_int(x, w, s, pads, d, g, out_hw) << 3
    bound = float(np.abs(w).sum(axis=(1, 2, 3)).max()) * xmax * 8
    dtype = contract.exact_dtype(bound)
    assert dtype is (np.float32 if xmax == 15 else np.float64)
    x_in = x.astype(dtype)
    got = kernels.conv2d_exact(x_in, w.astype(dtype) * 8, (s, s), pads, (d, d), g, out_hw,
                               use_torch)
    assert got.dtype == dtype and np.array_equal(got, expect)
    if use_torch and torch_ops.available():   # the product really ran in torch here
        assert torch_ops.conv2d(x_in, w.astype(dtype) * 8, (s, s), pads, (d, d), g,
                                dtype) is not None


@pytest.mark.parametrize("use_torch", [False, True], ids=["numpy", "torch"])
@pytest.mark.parametrize("xmax", [15, 2 ** 22], ids=["float32", "float64"])
def test_dense_exact_equals_integer_definition(xmax, use_torch):
    rng = np.random.default_rng(xmax)
    x = rng.integers(-xmax, xmax + 1, (300, 200))
    w = 2 * rng.integers(-128, 128, (70, 200))
    expect = x @ w.T
    dtype = contract.exact_dtype(float(np.abs(w).sum(axis=1).max()) * xmax)
    got = kernels.dense_exact(x.astype(dtype), w.astype(dtype), use_torch)
    assert got.dtype == dtype and np.array_equal(got, expect)


@pytest.mark.parametrize("use_torch", [False, True], ids=["numpy", "torch"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("pool", [((2, 2), (2, 2), (0, 0, 0, 0), 8),
                                  ((3, 3), (2, 2), (1, 1, 1, 1), 9),
                                  ((4, 4), (1, 1), (0, 0, 0, 0), 4),
                                  ((3, 3), (1, 1), (0, 1, 2, 0), 7)])
def test_sum_pool_in_floats_equals_int64(pool, dtype, use_torch):
    kernel, stride, pads, size = pool
    rng = np.random.default_rng(size)
    x = rng.integers(0, 16, (6, 5, size, size))
    out_hw = tuple((size + pads[a] + pads[a + 2] - kernel[a]) // stride[a] + 1 for a in (0, 1))
    expect = contract.sum_pool(x, kernel, stride, pads, out_hw)
    got = kernels.sum_pool_exact(x.astype(dtype), kernel, stride, pads, out_hw, dtype, use_torch)
    assert got.dtype == dtype and np.array_equal(got, expect)


@pytest.mark.parametrize("use_torch", [False, True], ids=["numpy", "torch"])
@pytest.mark.parametrize("case", ["reciprocal", "float32", "float64", "int64", "saturating"])
def test_fire_plan_equals_semantics(case, use_torch):
    rng = np.random.default_rng(3)
    theta = rng.integers(1, 5000, (1, 30, 1, 1))
    bias = rng.integers(-20000, 20000, (1, 30, 1, 1))
    lo, hi = -7, 15
    cmax = {"reciprocal": 2 ** 21, "float32": 2 ** 22, "float64": 2 ** 30, "int64": 2 ** 60,
            "saturating": 2 ** 23}[case]
    if case == "saturating":   # v = I + b + θ//2 clips, yet stays below 2²⁴: float32
        theta, bias = 2 * theta * 400, bias * 100
    current = rng.integers(-cmax, cmax, (40, 30, 3, 3))
    # exact multiples of θ (and one off) around the offset: where a rounded quotient would show
    k = rng.integers(-8, 17, (40, 30, 3, 3))
    edge = k * theta - (bias + theta // 2) + rng.integers(-1, 2, k.shape)
    current = np.clip(np.where(rng.random(current.shape) < 0.5, edge, current), -cmax, cmax)
    bound = float(np.abs(current).max())
    held = current.astype(np.float64 if case != "int64" else np.int64)
    fire = kernels.Fire(bias, theta, lo, hi)
    n, sat = kernels.FirePlan(fire, bound).apply(held, use_torch)
    expect, sat_expect = semantics.fire_once(current, bias, theta, lo, hi)
    assert np.array_equal(n, expect) and sat == sat_expect and fire.levels == 15
    assert {"reciprocal": np.float32, "float32": np.float32, "float64": np.float64,
            "int64": np.int64, "saturating": np.float32}[case] == n.dtype
    assert kernels.Fire.reciprocal(bound + float(np.abs(bias + theta // 2).max()),
                                   n.dtype) == (case == "reciprocal")
    if case == "saturating":
        assert sat > 0


@pytest.mark.parametrize("use_torch", [False, True], ids=["numpy", "torch"])
def test_reciprocal_fire_at_its_limits(use_torch):
    """floor((v + 1/2)·fl(1/θ)) = floor(v/θ) for every |v| < 2²² (Fire.reciprocal's proof):
    checked on the worst places — v a multiple of θ and one either side, up to |v| = 2²² − 1 —
    for θ from 1 to 2²³ (odd, prime, powers of two and their neighbours)."""
    rng = np.random.default_rng(11)
    limit = 2 ** 22 - 1
    thetas = np.unique(np.concatenate([
        np.arange(1, 200), 2 ** np.arange(1, 24), 2 ** np.arange(1, 24) - 1,
        2 ** np.arange(1, 24) + 1, [4093, 65521, 1048573, 4194301, 8388593],
        rng.integers(1, 2 ** 23, 300)]))
    for theta in thetas[thetas <= 2 ** 23]:         # float32's fire takes θ ≤ 2²³
        k = np.unique(np.concatenate([np.arange(-6, 7), rng.integers(-limit // theta,
                                                                      limit // theta + 1, 60),
                                      [limit // theta, -(limit // theta)]]))
        v = (k[:, None] * theta + np.array([-1, 0, 1])).ravel()
        v = np.concatenate([v[np.abs(v) <= limit], [limit, -limit]])
        th = np.full((1, 1), theta)
        zero = np.zeros((1, 1), np.int64)
        # biased: the current already holds v (+ 1/2, the multiplying form's offset), as a
        # convolution that added the neuron's offset hands it over; v's bound is the limit
        assert kernels.Fire.reciprocal(float(limit), np.float32)
        current = (v.reshape(-1, 1) + 0.5).astype(np.float32)
        assert np.array_equal(current - 0.5, v.reshape(-1, 1))        # exact
        fire = kernels.Fire(zero, th, -(2 ** 23), 2 ** 23)
        n, sat = kernels.FirePlan(fire, float(limit), biased=True).apply(current, use_torch)
        assert n.dtype == np.float32 and sat == 0
        np.testing.assert_array_equal(n.ravel(), v // theta, err_msg=f"theta {theta}")
    assert not kernels.Fire.reciprocal(float(limit + 1), np.float32)
    assert not kernels.Fire.reciprocal(100.0, np.float64)


def test_encoder_in_float32_equals_semantics():
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((50, 64)) * 300).astype(np.float32)
    x[0, :4] = [0.5, -0.5, 1.5, 254.5]
    for lo, hi in ((0, 255), (-128, 127)):
        got, clipped = kernels.encode_input_exact(x, np.float32(0.77), lo, hi)
        assert got.dtype == np.float32
        n, expected = semantics.encode_input_counted(x, np.float32(0.77), lo, hi)
        assert np.array_equal(got, n) and clipped == expected > 0


@pytest.mark.parametrize("name", sorted(nets.NETS))
def test_fast_runner_equals_reference(name, monkeypatch):
    compiled, _, test = nets.compiled(name)
    art = compiled.artifact
    record = tuple(n.name for n in art.nodes if n.kind in ("neuron", "conv", "sumpool"))[:4]
    fast = sim.cpu.run(art, test, record=record)
    for timesteps, binary in ((3, False), (2, True)):
        _same(sim.cpu.run(art, test, timesteps=timesteps, binary=binary),
              sim.reference.run(art, test, timesteps=timesteps, binary=binary))
    monkeypatch.setattr(runner, "USE_TORCH", False)
    _same(fast, sim.cpu.run(art, test, record=record))
    _same(fast, sim.reference.run(art, test, record=record))


def test_runs_without_torch(monkeypatch):
    """torch missing (the import fails): numpy kernels, same integers."""
    compiled, _, test = nets.compiled("maxpool_cnn")
    with_torch = sim.cpu.run(compiled.artifact, test)
    monkeypatch.setattr(torch_ops, "_TORCH", None)
    monkeypatch.setitem(__import__("sys").modules, "torch", None)   # `import torch` raises
    assert not torch_ops.available()
    assert torch_ops.conv2d(np.zeros((1, 1, 3, 3)), np.zeros((1, 1, 1, 1)), (1, 1), (0,) * 4,
                            (1, 1), 1, np.float32) is None
    _same(with_torch, sim.cpu.run(compiled.artifact, test))


def test_torch_refused_when_it_could_round():
    """NNPACK (Winograd) or a bf16 oneDNN mode: torch_ops declines, the caller takes numpy."""
    torch = pytest.importorskip("torch")
    x = np.ones((32, 4, 8, 8), np.float32)
    w = np.ones((4, 4, 3, 3), np.float32)
    args = (x, w, (1, 1), (1, 1, 1, 1), (1, 1), 1, np.float32)
    assert torch_ops.conv2d(*args) is not None
    with torch.backends.mkldnn.flags(enabled=False):     # → NNPACK on a batch ≥ 16
        assert torch_ops.conv2d(*args) is None
        got = kernels.conv2d_exact(x, w, *args[2:6], (8, 8), use_torch=True)
        assert np.array_equal(got, contract.conv2d_numpy(x, w, *args[2:6], (8, 8)))
    before = torch.backends.mkldnn.conv.fp32_precision
    try:
        torch.backends.mkldnn.conv.fp32_precision = "bf16"
        assert torch_ops.conv2d(*args) is None
    finally:
        torch.backends.mkldnn.conv.fp32_precision = before
    old = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        assert torch_ops.dense(x[:, :, 0, 0], w[:, :, 0, 0], np.float32) is None
    finally:
        torch.set_float32_matmul_precision(old)


def test_lava_entry_point_never_calls_torch(monkeypatch):
    """A kind's `apply` (what the forked Lava process models call) is numpy only."""
    def boom():
        raise AssertionError("torch used on the Lava path")
    monkeypatch.setattr(torch_ops, "_torch", boom)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 16, (1, 4, 6, 6))
    conv = Conv("c", ("x",), (5, 6, 6), weight=rng.integers(-9, 9, (5, 4, 3, 3)), weight_exp=1,
                pads=(1, 1, 1, 1))
    out, _ = conv.apply([x], True)
    assert out.dtype == np.int64
    assert np.array_equal(out, _conv_int(x, conv.weight, 1, (1, 1, 1, 1), 1, 1, (6, 6)) << 1)
    pool = SumPool("p", ("x",), (4, 3, 3))
    assert pool.apply([x], True)[0].dtype == np.int64
    dense = Dense("d", ("x",), (3,), weight=rng.integers(-9, 9, (3, 144)))
    assert dense.apply([x.reshape(1, -1)], True)[0].dtype == np.int64


def test_thread_count_is_set_for_the_run_and_restored():
    torch = pytest.importorskip("torch")
    compiled, _, test = nets.compiled("avgpool_cnn")
    before = torch.get_num_threads()
    seen = []
    sim.cpu.run(compiled.artifact, test, threads=1,
                progress=lambda n: seen.append(torch.get_num_threads()))
    assert seen == [1] and torch.get_num_threads() == before
    seen.clear()
    sim.cpu.run(compiled.artifact, test,               # the default, on a small run: one thread
                progress=lambda n: seen.append(torch.get_num_threads()))
    assert seen == [1] and torch.get_num_threads() == before


def test_default_threads(monkeypatch):
    """threads=None: one thread below PARALLEL_MACS; above, torch's own setting with OpenMP's
    passive wait policy, and the free cores (at least one) when OpenMP spins."""
    import sim as sim_pkg
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert torch_ops.default_threads(torch_ops.PARALLEL_MACS - 1) == 1
        # many small operations: one thread whatever the total
        assert torch_ops.default_threads(torch_ops.PARALLEL_NODE_MACS * 190 - 1, 190) == 1
        monkeypatch.setattr(sim_pkg, "OMP_PASSIVE", True)
        assert torch_ops.default_threads(torch_ops.PARALLEL_MACS) is None
        monkeypatch.setattr(sim_pkg, "OMP_PASSIVE", False)
        monkeypatch.setattr(torch_ops.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
        monkeypatch.setattr(torch_ops, "_running", lambda: 1)        # only this thread runs
        assert torch_ops.default_threads(torch_ops.PARALLEL_MACS) == 2
        monkeypatch.setattr(torch_ops, "_running", lambda: 2)        # one core taken
        assert torch_ops.default_threads(torch_ops.PARALLEL_MACS) == 1
        monkeypatch.setattr(torch_ops, "_running", lambda: 9)
        assert torch_ops.default_threads(torch_ops.PARALLEL_MACS) == 1
    finally:
        torch.set_num_threads(before)


def test_importing_sim_sets_a_passive_openmp_wait_policy():
    """In a fresh interpreter, `import sim` before torch leaves OMP_WAIT_POLICY=PASSIVE (unless
    the user set it) and says so in sim.OMP_PASSIVE; after torch it changes nothing."""
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    code = "import {0}; import {1}, os; print(os.environ.get('OMP_WAIT_POLICY'), sim.OMP_PASSIVE)"
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    run = lambda first, then, **extra: subprocess.run(
        [sys.executable, "-c", code.format(first, then)], env={**env, **extra},
        capture_output=True, text=True, check=True).stdout.split()
    assert run("sim", "torch") == ["PASSIVE", "True"]
    assert run("torch", "sim") == ["None", "False"]
    assert run("sim", "torch", OMP_WAIT_POLICY="active") == ["active", "False"]


def test_count_false_keeps_saturations_only():
    compiled, _, test = nets.compiled("residual")
    quiet = sim.cpu.run(compiled.artifact, test, count=False)
    full = sim.cpu.run(compiled.artifact, test)
    assert np.array_equal(quiet.accumulator, full.accumulator)
    for name, st in quiet.stats.items():
        assert st.spikes == st.payload == st.synops == 0
        assert st.saturations == full.stats[name].saturations
        assert st.neurons == full.stats[name].neurons


@pytest.mark.parametrize("lut", [True, False])
@pytest.mark.parametrize("k", [1, 8, 9, 15, 16, 17, 255, 256])
def test_fire_adaptive_search_equals_the_count_definition(k, lut, monkeypatch):
    """n = payload[#{k : v ≥ t_k}]: the lookup table and the banded search used above 8
    thresholds give the plain count, for per-neuron and shared rows, ties, repeated thresholds
    and values beyond both ends."""
    if not lut:
        monkeypatch.setattr(semantics, "LUT_ENTRIES", 0)
        monkeypatch.setattr(semantics, "_COUNTERS", {})
    rng = np.random.default_rng(k)
    for shape in [(7,), (3, 4, 5)]:
        t = np.sort(rng.integers(-50, 50, size=shape + (k,)), axis=-1)
        t[..., : k // 3] = t[..., :1]                       # repeated thresholds
        shared = np.sort(rng.integers(-50, 50, size=(k,)))
        payload = rng.integers(-9, 9, size=k + 1)
        v = rng.integers(-70, 70, size=(13,) + shape)
        v[0] = t[..., 0]                                    # ties at the lowest threshold
        v[1] = t[..., -1]                                   # and at the highest
        for th in (t[None], shared, shared.reshape((1,) * len(shape) + (k,))):
            want = payload[np.sum(v[..., None] >= th, axis=-1)]
            np.testing.assert_array_equal(semantics.fire_adaptive(v, th, payload), want)


def test_adaptive_thresholds_must_ascend():
    """The search above relies on ascending thresholds: an artifact with any other is refused."""
    from sim.ir import Neuron, check_node
    th = np.array([[1, 5, 9], [2, 2, 7]])
    node = Neuron("n", ("x",), (2,), lo=0, hi=3, threshold=np.ones(2, np.int64),
                  bias=np.zeros(2, np.int64), fire="adaptive", thresholds=th,
                  payload=np.arange(4))
    assert check_node(node, [(2,)]) is None
    node.thresholds = np.array([[1, 5, 9], [2, 8, 7]])
    assert "not ascending" in check_node(node, [(2,)])


def _int8_or_skip():
    torch = pytest.importorskip("torch")
    if not torch_ops._int8_exact(torch):
        pytest.skip("oneDNN's int8 products are not exact on this CPU (the probe failed)")
    return torch


# operand classes (max x, max |w|): the full u8·s8 range (exact with VNNI only) and the two
# edges of the int16 pair class (8-bit pixels with |w| ≤ 64, 7-bit payloads with any weight)
INT8_CLASSES = [(255, 128), (255, 64), (127, 128)]


def _int8_operands(rng, shape_x, shape_w, xmax, wmax):
    """Random operands of one class with its extremes present: an all-xmax sample, an output
    channel of −wmax and one of the largest positive weight."""
    x = rng.integers(0, xmax + 1, shape_x)
    x[0] = xmax
    w = rng.integers(-wmax, min(wmax, 127) + 1, shape_w)
    w[0] = -wmax
    w[-1] = min(wmax, 127)
    return x, w


@pytest.mark.parametrize("cls", INT8_CLASSES, ids=lambda c: f"x{c[0]}w{c[1]}")
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_int8_conv_equals_integer_definition(geometry, cls):
    """u8·s8 oneDNN convolutions (inputs 0..xmax, even 9-bit weights 2·w with |w| ≤ wmax, a
    power-of-two exponent, a bias) equal the brute-force int64 definition wherever the packed
    weights say they are usable for xmax on this CPU (torch_ops.Int8.usable: the probed class),
    and are declined where they do not apply."""
    _int8_or_skip()
    xmax, wmax = cls
    ci, co, size, k, stride, pads, dilation, groups = geometry
    rng = np.random.default_rng(ci * co + size + xmax)
    x, w = _int8_operands(rng, (5, ci, size, size), (co, ci // groups, k, k), xmax, wmax)
    w = 2 * w
    bias = rng.integers(-3000, 3000, co)
    hw = _out(size, k, stride, pads, dilation)
    packed = torch_ops.pack_int8_conv(w, -1, (stride, stride), pads, (dilation, dilation), groups)
    # one group: input channels padded to a multiple of 4 (zero weights) before the tap count
    cg = -(-ci // 4) * 4 if groups == 1 else ci // groups
    applies = cg * k * k >= torch_ops.INT8_MIN_TAPS and pads[:2] == pads[2:]
    assert (packed is not None) == applies
    if not applies:
        return
    assert packed.wmax == wmax
    assert packed.usable(xmax) == (xmax * wmax <= torch_ops.int8_limit())
    if not packed.usable(xmax):
        return
    got = torch_ops.product_int8(x.astype(np.float32), packed, bias.astype(np.float32))
    assert got.dtype == torch_ops._torch().float32
    want = (_conv_int(x, w, stride, pads, dilation, groups, hw) >> 1) + bias[:, None, None]
    np.testing.assert_array_equal(got.numpy(), want)
    # the same from a uint8 input
    np.testing.assert_array_equal(torch_ops.product_int8(x.astype(np.uint8), packed,
                                                         bias.astype(np.float32)).numpy(), want)
    # one odd weight of 129: no common power of two, beyond int8 → declined
    wide = w.copy()
    wide[0, 0, 0, 0] = 129
    assert torch_ops.pack_int8_conv(wide, 0, (stride, stride), pads, (dilation, dilation),
                                    groups) is None


@pytest.mark.parametrize("cls", INT8_CLASSES, ids=lambda c: f"x{c[0]}w{c[1]}")
@pytest.mark.parametrize("shape", [(40, 20, 7), (17, 500, 64), (9, 513, 10), (256, 3, 5)])
def test_int8_dense_equals_integer_definition(shape, cls):
    """oneDNN's u8·s8 matrix product (qlinear) with a power-of-two scale and a bias equals the
    int64 product, in every class this CPU's probe allows."""
    _int8_or_skip()
    xmax, wmax = cls
    rows, fin, fout = shape
    rng = np.random.default_rng(rows + fin + xmax)
    x, w = _int8_operands(rng, (rows, fin), (fout, fin), xmax, wmax)
    bias = rng.integers(-5000, 5000, fout)
    # the largest inputs whose float32 result is exact: 513 · 255 · 128 < 2²⁴
    assert fin * xmax * wmax + 5000 < 2 ** 24
    packed = torch_ops.pack_int8_dense(2 * w, -1)       # 2·w: the power of two moves out
    assert packed is not None and packed.wmax == wmax
    assert packed.usable(xmax) == (xmax * wmax <= torch_ops.int8_limit())
    if not packed.usable(xmax):
        return
    got = torch_ops.product_int8(x.astype(np.float32), packed, bias.astype(np.float32))
    np.testing.assert_array_equal(got.numpy(), ((x @ (2 * w).T) >> 1) + bias)
    assert torch_ops.pack_int8_dense(np.full((2, 3), 129), 0) is None


def test_int8_probe_classes():
    """The probe's verdict is one of the three classes, and usable() follows it."""
    torch = pytest.importorskip("torch")
    limit = torch_ops.int8_limit(torch)
    assert limit in (0, torch_ops.INT8_PAIRS, torch_ops.INT8_FULL)
    if limit:
        pack = torch_ops.pack_int8_dense(np.array([[-128, 1], [3, 127]]), 0)
        assert pack.usable(limit // 128) and not pack.usable(limit // 128 + 1)
        assert not pack.usable(256)


def test_runner_takes_the_int8_path_and_falls_back(monkeypatch):
    """On the digits CNN the products whose operands lie in this CPU's exact int8 class run as
    int8 (with VNNI all three convolutions, the first on the encoded grey image 0..255 with one
    channel padded to four; with int16 pairs the two on spike payloads), their inputs handed
    over as uint8; with the probe failed everything runs in float32; same integers."""
    _int8_or_skip()
    from exporters.digits import load_digits_split
    x_train, _, test, _ = load_digits_split()
    art = compile_onnx(DIGITS, calib=x_train).artifact
    calls = []
    real, real_fired = torch_ops.product_int8, torch_ops.product_fire_int8
    monkeypatch.setattr(torch_ops, "product_int8",
                        lambda x, p, b: p.conv and calls.append((x.shape[1], str(x.dtype)))
                        or real(x, p, b))
    monkeypatch.setattr(torch_ops, "product_fire_int8",
                        lambda x, p, *a: p.conv and calls.append((x.shape[1], str(x.dtype)))
                        or real_fired(x, p, *a))
    int8 = sim.cpu.run(art, test)
    bounds = {"input": 255, "/2/Relu_output_0": 15, "/6/AveragePool_output_0": 60}
    expect = {n.weight.shape[1] for n in art.nodes if n.kind == "conv" and
              torch_ops.pack_int8_conv(n.weight, n.weight_exp, n.stride, n.pads, n.dilation,
                                       n.groups).usable(bounds[n.inputs[0]])}
    assert {c for c, _ in calls} == expect and {16, 32} <= expect
    # a neuron's spikes reach their int8 convolution as uint8
    assert (16, "torch.uint8") in calls
    quiet = sim.cpu.run(art, test, count=False)
    assert quiet.accumulator.tobytes() == int8.accumulator.tobytes()
    calls.clear()
    monkeypatch.setattr(torch_ops, "_INT8_LIMIT", 0)
    _same(int8, sim.cpu.run(art, test))
    assert calls == []
    _same(int8, sim.reference.run(art, test))


def test_program_follows_replaced_parameters_and_is_dropped_with_its_artifact():
    """The batched runner's program is made once per artifact; replacing a node's parameter by
    another array rebuilds it (the new bias shows in the output, equal to the int64 path), and
    the program goes when its artifact does."""
    import copy
    import gc
    compiled, _, test = nets.compiled("avgpool_cnn")
    art = copy.deepcopy(compiled.artifact)
    before = sim.cpu.run(art, test)
    assert len([k for k in program.PROGRAMS if k[0] == id(art)]) == 1
    assert sim.cpu.run(art, test).accumulator.tobytes() == before.accumulator.tobytes()
    neuron = next(n for n in art.nodes if n.kind == "neuron")
    neuron.bias = neuron.bias + 3 * np.asarray(neuron.threshold)     # three levels up
    after = sim.cpu.run(art, test)
    assert not np.array_equal(after.accumulator, before.accumulator)
    _same(after, sim.reference.run(art, test))
    key = id(art)
    del art
    gc.collect()
    assert not [k for k in program.PROGRAMS if k[0] == key]


@pytest.mark.parametrize("engine", ["program", "graph"])
def test_cached_runs_follow_a_node_swapped_in_the_list(engine):
    """A run trusts its cached program or lowered model while no node or artifact field was
    assigned (sim.ops.base.edits): a node replaced by another object inside the artifact's own
    list — no field assignment anywhere — is still noticed, for both engines."""
    import copy
    compiled, _, test = nets.compiled("avgpool_cnn")
    art = copy.deepcopy(compiled.artifact)
    i, neuron = next((i, n) for i, n in enumerate(art.nodes) if n.kind == "neuron")
    swapped = copy.copy(neuron)
    swapped.bias = neuron.bias + 3 * np.asarray(neuron.threshold)     # three levels up
    count = engine == "program"
    before = sim.cpu.run(art, test, count=count, engine=engine)
    again = sim.cpu.run(art, test, count=count, engine=engine)   # the cache's quick path
    assert again.accumulator.tobytes() == before.accumulator.tobytes()
    edits = base.edits()
    art.nodes[i] = swapped
    assert base.edits() == edits
    after = sim.cpu.run(art, test, count=count, engine=engine)
    assert not np.array_equal(after.accumulator, before.accumulator)
    assert after.accumulator.tobytes() == sim.reference.run(art, test).accumulator.tobytes()
    swapped.bias = neuron.bias                    # a field assigned: counted, noticed
    assert base.edits() == edits + 1
    back = sim.cpu.run(art, test, count=count, engine=engine)
    assert back.accumulator.tobytes() == before.accumulator.tobytes()


@pytest.mark.parametrize("kernel,stride,pads", [((3, 3), (1, 1), (1, 1, 1, 1)),
                                                ((2, 5), (2, 1), (0, 2, 1, 0)),
                                                ((4, 1), (3, 2), (2, 0, 2, 0)),
                                                ((1, 1), (2, 2), (0, 0, 0, 0))])
def test_one_channel_convolution_as_one_matrix_product(kernel, stride, pads):
    """A grey first layer runs as one matrix product over its stacked taps
    (torch_ops._conv_one_channel): non-square kernels, unequal strides and asymmetric padding,
    with and without its neuron's offset, equal to the int64 runner."""
    from sim import ir
    from sim.artifact import Artifact
    rng = np.random.default_rng(sum(kernel) + 10 * sum(stride))
    kh, kw = kernel
    h, w = 11, 9
    ho = (h + pads[0] + pads[2] - kh) // stride[0] + 1
    wo = (w + pads[1] + pads[3] - kw) // stride[1] + 1
    co = 6
    nodes = [ir.Input("x", (), (1, h, w), inv_scale=20.0, lo=0, hi=255),
             ir.Conv("c", ("x",), (co, ho, wo), weight=rng.integers(-127, 128, (co, 1, kh, kw))
                     .astype(np.int16), weight_exp=0, stride=stride, pads=pads, dilation=(1, 1)),
             ir.Neuron("n", ("c",), (co, ho, wo), threshold=rng.integers(1, 900, (co, 1, 1)),
                       bias=rng.integers(-500, 500, (co, 1, 1)), lo=0, hi=15),
             ir.Readout("y", ("n",), (co, ho, wo), scale=np.ones((co, ho, wo), np.float32),
                        bias=np.zeros((co, ho, wo), np.int64))]
    art = Artifact(nodes, "x", "y")
    art.validate()
    x = rng.uniform(0, 14, (40, 1, h, w)).astype(np.float32)
    calls = []
    real = torch_ops._conv_one_channel
    try:
        torch_ops._conv_one_channel = lambda *a: calls.append(1) or real(*a)
        _same(sim.cpu.run(art, x, engine="program"), sim.reference.run(art, x))
        _same(sim.cpu.run(art, x, count=False, threads=1, engine="program"),
              sim.reference.run(art, x, count=False))
    finally:
        torch_ops._conv_one_channel = real
    assert calls


@pytest.mark.parametrize("seed", range(12))
def test_program_equals_reference_on_random_conv_stacks(seed):
    """Random two-conv stacks with few input channels (the int8 path pads them to four), random
    geometry, fused offsets and both fire forms (small bounds multiply by fl(1/θ), large ones
    divide), with counts and without (where an int8 convolution fires its neuron itself): the
    batched runner equals the int64 runner."""
    from sim import ir
    from sim.artifact import Artifact
    rng = np.random.default_rng(seed)
    c0, c1, c2 = int(rng.integers(1, 7)), int(rng.integers(1, 9)), int(rng.integers(1, 6))
    size = int(rng.integers(5, 10))
    nodes, shape, prev = [ir.Input("x", (), (c0, size, size), inv_scale=float(rng.uniform(5, 40)),
                                   lo=0, hi=255)], (c0, size, size), "x"
    for i, co in enumerate((c1, c2)):
        k, s = int(rng.integers(1, 4)), int(rng.integers(1, 3))
        p = int(rng.integers(0, k))
        d = int(rng.integers(1, 3)) if k > 1 else 1
        if d * (k - 1) + 1 > shape[1] + 2 * p:      # the window must fit the padded input
            k, d, p = 1, 1, 0
        hw = (shape[1] + 2 * p - d * (k - 1) - 1) // s + 1
        w = 2 * rng.integers(-127, 128, (co, shape[0], k, k))
        big = bool(rng.integers(0, 2))          # a large offset: the dividing fire
        theta = rng.integers(1, 3000 if not big else 60000, (co, 1, 1))
        bias = rng.integers(-2000, 2000, (co, 1, 1)) * (800 if big else 1)
        nodes += [ir.Conv(f"c{i}", (prev,), (co, hw, hw), weight=w.astype(np.int16),
                          weight_exp=int(rng.integers(0, 3)), stride=(s, s), pads=(p, p, p, p),
                          dilation=(d, d)),
                  ir.Neuron(f"n{i}", (f"c{i}",), (co, hw, hw), threshold=theta, bias=bias,
                            lo=0, hi=int(rng.choice([1, 15, 255])))]
        shape, prev = (co, hw, hw), f"n{i}"
    nodes.append(ir.Readout("y", (prev,), shape, scale=np.ones(shape, np.float32),
                            bias=np.zeros(shape, np.int64)))
    art = Artifact(nodes, "x", "y")
    art.validate()
    x = rng.uniform(0, 10, (37, c0, size, size)).astype(np.float32)
    _same(sim.cpu.run(art, x), sim.reference.run(art, x))
    _same(sim.cpu.run(art, x, count=False, threads=1),
          sim.reference.run(art, x, count=False))
