"""sim.cpu.fused's one-pass kernels equal the contract's int64 definitions bit for bit — fires
at the edges of each float form (float32's 2²⁴, the multiplying form's 2²², float64, 24-bit
saturation), sums of shifted terms under every broadcast they take, table gathers from small
and recast tables, row reductions — and whole networks give the same integers and statistics
with the kernels on and off."""
import numpy as np
import pytest
import torch

import nets
import sim.cpu
import sim.reference
from compare import assert_same
from sim import semantics
from sim.cpu import fused, program
from sim.cpu.kernels import Fire, FirePlan
from toolchain import examples
from toolchain.compiler import compile_onnx

pytestmark = pytest.mark.skipif(not fused.available(), reason="numba is not installed")


def _layout(x: np.ndarray, how: str):
    t = torch.from_numpy(np.ascontiguousarray(x))
    if how == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if how == "permuted":       # a (B, C, H, W) view of a (B, H, C, W) tensor
        return t.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)
    return t


FIRES = [  # (current bound, θ max, levels, u8)
    (2 ** 20, 3000, (-127, 127), False),          # float32, multiplying form
    (2 ** 22 - 40, 3000, (-127, 127), False),     # the multiplying form's edge
    (2 ** 22 + 40, 3000, (-127, 127), False),     # float32, dividing form
    (2 ** 23 + 5000, 2 ** 23, (-127, 127), False),  # saturating, θ at float32's edge
    (2 ** 30, 2 ** 20, (-1000, 1000), False),     # float64, saturating
    (2 ** 12, 40, (0, 255), True),                # uint8 payloads
    (2 ** 12, 40, (0, 15), True),
]


@pytest.mark.parametrize("bound,theta_max,levels,u8", FIRES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "permuted"])
@pytest.mark.parametrize("biased", [False, True])
def test_fire_equals_the_definition(bound, theta_max, levels, u8, layout, biased):
    rng = np.random.default_rng(bound % 1000 + len(layout))
    shape = (70, 6, 5, 7)
    current = rng.integers(-bound, bound + 1, shape)
    current[0, 0, 0, :2] = (-bound, bound)
    bias = rng.integers(-300, 300, (1, 6, 1, 1))
    theta = rng.integers(1, theta_max + 1, (1, 6, 1, 1))
    theta[0, 0] = theta_max
    lo, hi = levels
    fire = Fire(bias, theta, lo, hi)
    plan = FirePlan(fire, float(bound) + (fire.offset_max if biased else 0), biased)
    assert plan.dtype is not None
    want, want_sat = semantics.fire_once(current, bias, theta, lo, hi)
    held = (current + fire.offset) if biased else current
    if biased and plan.reciprocal:
        held = held + 0.5
    x = _layout(np.asarray(held, plan.dtype), layout)
    kernel = fused.FireKernel(shape[1:], None if biased else plan.offset, plan.factor,
                              plan.dtype, lo, hi, plan.saturate, plan.reciprocal)
    got, sat = kernel(x, u8)
    assert got.dtype == (np.uint8 if u8 else plan.dtype)
    assert np.array_equal(got.astype(np.int64), want)
    assert sat == want_sat
    assert got.strides == np.empty_like(x.numpy(), got.dtype).strides or layout == "contiguous"


def test_fire_plan_takes_the_kernel_above_its_size_and_not_below():
    fire = Fire(np.zeros((1, 8, 1, 1), np.int64), np.full((1, 8, 1, 1), 7), -5, 5)
    plan = FirePlan(fire, 1000.0)
    calls = []
    before = fused.FireKernel.__call__

    def spy(self, *a, **k):
        calls.append(1)
        return before(self, *a, **k)
    fused.FireKernel.__call__ = spy
    try:
        for batch in (1, fused.MIN_VALUES // 64 + 1):
            x = np.random.default_rng(batch).integers(-1000, 1001, (batch, 8, 4, 2))
            got, _ = plan.run(torch.from_numpy(x.astype(np.float32)), use_torch=True)
            assert np.array_equal(np.asarray(got, np.int64),
                                  semantics.fire_once(x, fire.bias, fire.theta, -5, 5)[0])
    finally:
        fused.FireKernel.__call__ = before
    assert len(calls) == 1


def _definition(xs, gains, exps):
    total = 0
    for x, g, e in zip(xs, gains, exps):
        t = np.asarray(x, np.int64) * np.asarray(g, np.int64)
        total = total + (t << e if e >= 0 else t >> -e)
    return total


SUMS = [  # (node shape, input shapes (batch 1: broadcast over the batch), gain shapes, exps)
    ((17, 32), [(17, 32), (17, 1)], [(17, 32), (17, 1)], (-8, -8)),   # x − row mean
    ((17, 32), [(17, 1), (17, 32)], [(17, 1), (1, 1)], (-8, 3)),       # the broadcast one first
    ((4, 17, 17), [(4, 17, 17), (4, 17, 1)], [(1,), (1,)], (0, 0)),    # x − row max
    ((6, 5, 5), [(6, 5, 5), (6, 5, 5)], [(6, 1, 1), (6, 1, 1)], (-3, 2)),  # residual
    ((6, 5, 5), [(6, 5, 5)], [(6, 1, 1)], (-5,)),                      # one term
    ((17, 32), [(17, 32), "batch1"], [(1,), (1,)], (0, 0)),             # + a constant
    ((17, 32), [(17, 32), (1, 1)], [(1,), (17, 32)], (0, -1)),          # + a scalar
]


@pytest.mark.parametrize("shape,ins,gshapes,exps", SUMS)
@pytest.mark.parametrize("bound", [2 ** 10, 2 ** 26], ids=["small", "wide"])
def test_sum_equals_the_definition(shape, ins, gshapes, exps, bound):
    rng = np.random.default_rng(len(shape) + bound % 97 + len(ins))
    batch = 40
    xs = []
    for s in ins:
        lead, tail = (1, shape) if s == "batch1" else (batch, s)
        a = rng.integers(-bound, bound + 1, (lead,) + tuple(tail))
        a.flat[:2] = (-bound, bound)
        xs.append(torch.from_numpy(a.astype(np.float64)).expand((batch,) + shape))
    gains = [rng.integers(-255, 256, g) for g in gshapes]
    want = _definition([x.numpy() for x in xs], gains, exps)
    got, peak = fused.SumKernel(shape, gains, exps)(xs, np.float64)
    assert np.array_equal(got, want)
    assert peak == np.abs(want).max()


@pytest.mark.parametrize("shape,ins,gshapes,exps,layout",
                         [case + ("contiguous",) for case in SUMS[:5]] +
                         [case + ("channels_last",) for case in SUMS[3:5]])
@pytest.mark.parametrize("bound,levels,u8", [(2 ** 12, (-127, 127), False),
                                             (2 ** 21, (0, 255), True),
                                             (2 ** 24, (-40, 40), False)])
def test_sum_then_fire_equals_the_definition(shape, ins, gshapes, exps, layout, bound,
                                             levels, u8):
    rng = np.random.default_rng(bound % 1000 + len(shape))
    batch = 40
    xs = []
    for s in ins:
        a = rng.integers(-bound, bound + 1, (batch,) + tuple(s)).astype(np.float64)
        xs.append(torch.from_numpy(a).expand((batch,) + shape))
    if layout == "channels_last":
        xs = [x.contiguous(memory_format=torch.channels_last) for x in xs]
    gains = [rng.integers(-255, 256, g) for g in gshapes]
    total = _definition([x.numpy() for x in xs], gains, exps)
    lo, hi = levels
    bias = rng.integers(-500, 500, (1,) + shape)
    theta = rng.integers(1, 4000, (1, shape[0]) + (1,) * (len(shape) - 1))
    fire = Fire(bias, theta, lo, hi)
    plan = FirePlan(fire, float(np.abs(total).max()))
    assert plan.dtype is not None
    want, want_sat = semantics.fire_once(total, bias, theta, lo, hi)
    got, sat = fused.SumKernel(shape, gains, exps, plan)(xs, u8=u8)
    assert np.array_equal(got.astype(np.int64), want)
    assert sat == want_sat


def test_sum_refuses_what_it_does_not_take():
    k = fused.SumKernel((3, 4), [np.ones(1)] * 3, (0, 0, 0))
    x = torch.ones(5, 3, 4)
    assert k([x, x, x], np.float32) is None                 # three terms
    k2 = fused.SumKernel((3, 4), [np.ones(1)] * 2, (0, 0))
    middle = torch.ones(5, 1, 4).expand(5, 3, 4)           # broadcast along a middle axis
    assert k2([x, middle], np.float32) is None


@pytest.mark.parametrize("recast", [False, True], ids=["direct", "blocks"])
@pytest.mark.parametrize("gap", [1, 37, 5000])
def test_table_gather_equals_counting_thresholds(recast, gap, monkeypatch):
    rng = np.random.default_rng(gap)
    shape, k = (6, 9), 12
    rows = rng.integers(-10 ** 5, 10 ** 5, (3, 1)) + np.cumsum(
        rng.integers(gap, 3 * gap + 1, (3, k)), axis=1)
    rows[1, 4] = rows[1, 3]                                   # a repeated threshold
    thresholds = rows[rng.integers(0, 3, shape)]
    payload = rng.integers(-60, 60, k + 1)                    # not monotone
    bias = rng.integers(-50, 50, (1,) + shape)
    bands = program.table_bands(thresholds[None], payload)
    table, start, low, high, row = bands
    monkeypatch.setattr(fused, "DIRECT_ENTRIES", 0 if recast else 2 ** 30)
    kernel = fused.TableKernel(table, start, low, high, np.broadcast_to(row, (1,) + shape),
                               shape, bias)
    assert (kernel.recast is not None) == recast or gap == 1
    span = int(np.abs(rows).max()) + 3 * gap
    current = rng.integers(-span, span + 1, (50,) + shape)
    current[0] = thresholds[..., 0] - bias[0]                 # on a threshold
    current[1] = thresholds[..., -1] - bias[0] - 1            # just below the last
    count = (np.minimum(np.maximum(current + bias, -semantics.V_MAX), semantics.V_MAX)[..., None]
             >= thresholds).sum(-1)
    want = payload[count]
    for dtype in (np.float32, np.float64):
        got = kernel(torch.from_numpy(current.astype(np.float32)), dtype, np.float32)
        assert np.array_equal(got, want.astype(np.float32))


@pytest.mark.parametrize("shift", [0, 1, 7])
def test_onnxruntime_matrix_products_equal_int64(shift):
    from sim.cpu import ort_ops
    assert ort_ops.matmul_usable()
    rng = np.random.default_rng(shift)
    a = rng.integers(-255, 256, (3, 4, 17, 19))
    b = rng.integers(-127, 128, (3, 4, 19, 9))
    a[0, 0, 0] = 255
    b[0, 0, :, 0] = 127                     # the largest partial sum: 19 · 255 · 127
    want = a @ b
    if shift:
        want = (want + (1 << (shift - 1))) >> shift
    strided = np.ascontiguousarray(a.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)
    got = ort_ops.matmul(strided, b.astype(np.float32), shift)
    assert got.dtype == np.float32 and np.array_equal(got, want)


def test_blocks_hold_at_most_one_change_each():
    table = np.repeat(np.arange(10), [3, 1, 7, 20, 2, 2, 9, 30, 1, 5])
    start, width = np.array([0, 40]), np.array([40, table.size - 40])
    s, first, last, change, base = fused.blocks(table, start, width)
    size = 1 << s
    for band, (b0, w) in enumerate(zip(start, width)):
        for q in range(w):
            at = base[band] + q
            c = at >> s
            assert (first[c] if at < change[c] else last[c]) == table[b0 + q]
    assert size <= 2


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8])
def test_last_axis_sums_and_maxima(dtype):
    rng = np.random.default_rng(3)
    x = rng.integers(0 if dtype == np.uint8 else -2 ** 20, 255 if dtype == np.uint8 else 2 ** 20,
                     (9, 4, 7, 17)).astype(dtype)
    assert np.array_equal(fused.last_axis(x, "max"), x.max(-1, keepdims=True))
    sums = fused.last_axis(x, "sum", np.float64)
    assert np.array_equal(sums, x.astype(np.int64).sum(-1, keepdims=True))
    assert fused.last_axis(x.transpose(0, 1, 3, 2), "max") is None


_SHIPPED: dict = {}      # the shipped networks compiled once for this file's tests


def _artifact(name):
    if name in nets.NETS:
        compiled, _, test = nets.compiled(name)
        return compiled.artifact, np.tile(test, (2,) + (1,) * (test.ndim - 1))[:300]
    x_train, _, x_test, _ = examples.load_digits_split(0)
    if name not in _SHIPPED:
        onnx = {"vit": examples.DIGITS_VIT, "se": examples.DIGITS_SE}[name]
        _SHIPPED[name] = compile_onnx(onnx, calib=x_train[:256]).artifact
    # 130 samples: every value of the ViT and the SE CNN above the kernels' 2¹⁴ entries
    return _SHIPPED[name], np.ascontiguousarray(x_test[:130])


@pytest.mark.parametrize("name", ["vit", "se", "residual", "concat", "maxpool_cnn"])
def test_networks_through_the_kernels_equal_the_oracle(name, monkeypatch):
    """A batch large enough for the kernels, counted and not: every output, recorded value
    and statistic equals the int64 oracle's, and the kernels did run."""
    art, x = _artifact(name)
    x[::3] *= -4.0           # clipped inputs, negative currents
    runs = []
    for cls in (fused.FireKernel, fused.SumKernel, fused.TableKernel):
        def spy(self, *a, _call=cls.__call__, **k):
            out = _call(self, *a, **k)
            runs.append(out is not None)
            return out
        monkeypatch.setattr(cls, "__call__", spy)
    from sim.cpu import ort_ops
    products = []
    monkeypatch.setattr(ort_ops, "matmul", lambda *a, _f=ort_ops.matmul: products.append(1)
                        or _f(*a))
    keep = tuple(n.name for n in art.nodes if n.kind == "neuron")[:3]
    for count in (False, True):
        got = sim.cpu.run(art, x, count=count, engine="program", record=keep)
        assert_same(got, sim.reference.run(art, x, count=count, record=keep))
    assert sum(runs) >= 2
    assert (len(products) > 0) == (name == "vit")      # attention's ·V through onnxruntime


def test_the_kernels_switch_off(monkeypatch):
    art, x = _artifact("residual")
    before = fused.enable(False)
    try:
        monkeypatch.setattr(fused, "_fire", None)      # would fail if called
        got = sim.cpu.run(art, x, engine="program")
    finally:
        fused.enable(before)
    assert_same(got, sim.reference.run(art, x))


def test_a_neurons_kernels_outlive_its_plans(monkeypatch):
    """A neuron whose input bound is found at run time makes a FirePlan per run; its one-pass
    kernels (their constants laid out per memory order) are kept on the neuron's Fire, so a
    second run of the ViT prepares nothing again and gives the first run's payloads (which
    test_networks_through_the_kernels_equal_the_oracle checks against the oracle)."""
    art, x = _artifact("vit")
    first = sim.cpu.run(art, x, count=False, engine="program")
    prepared = []
    monkeypatch.setattr(fused, "_laid_out", lambda *a, _f=fused._laid_out:
                        prepared.append(1) or _f(*a))
    got = sim.cpu.run(art, x, count=False, engine="program")
    assert prepared == []
    assert_same(got, first)
    # the plans themselves are made again: measured bounds decide their form per run
    plan = FirePlan(Fire(np.zeros((1, 4)), np.full((1, 4), 9), 0, 15), 100.0)
    again = FirePlan(plan.fire, 100.0)
    current = np.arange(2 ** 14 * 4, dtype=np.float32).reshape(-1, 4) % 97
    a, _ = plan.run(current, use_torch=True)
    b, _ = again.run(current, use_torch=True)
    assert np.array_equal(torch.as_tensor(a).numpy(), torch.as_tensor(b).numpy())
    assert len(plan.fire.kernels) == 1
