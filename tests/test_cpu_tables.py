"""sim.cpu's table neurons (one gather from program.table_bands' table) and its products of two
activations (torch_ops.product) against the int64 definitions, at the edges of their float
forms: thresholds and biases at the 24-bit state limit (saturation counted), payloads beyond
uint8, duplicated and distinct threshold rows, the float32/float64 switch of the index and of
the product's partial sums, inputs of different per-sample ranks, and the int64 fallbacks."""
import numpy as np
import pytest

import sim.cpu
import sim.reference
from compare import assert_same
from sim import ir, semantics
from sim.artifact import Artifact
from sim.cpu import program, torch_ops

pytest.importorskip("torch")
V = semantics.V_MAX


def _spy(monkeypatch, name):
    """Count the calls of torch_ops.`name` (the fast form really ran)."""
    calls = []
    real = getattr(torch_ops, name)

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)
    monkeypatch.setattr(torch_ops, name, spy)
    return calls


def _table_net(rng, shape, k, in_hi, t_edge, bias_edge, rows, pay_lo, pay_hi):
    """x (shape) in [−in_hi, in_hi] → a table neuron with `rows` distinct ascending threshold
    rows of k thresholds within ±t_edge spread over its neurons, biases within ±bias_edge and
    a payload table in [pay_lo, pay_hi] → readout."""
    n = int(np.prod(shape))
    distinct = np.sort(rng.integers(-t_edge, t_edge + 1, (rows, k)), axis=1)
    thresholds = distinct[rng.integers(0, rows, n)].reshape(shape + (k,))
    nodes = [ir.Input("x", (), shape, inv_scale=1.0, lo=-in_hi, hi=in_hi),
             ir.Neuron("t", ("x",), shape, threshold=np.ones((1,) * len(shape), np.int64),
                       bias=rng.integers(-bias_edge, bias_edge + 1, shape), lo=pay_lo,
                       hi=pay_hi, fire="adaptive", thresholds=thresholds,
                       payload=np.sort(rng.integers(pay_lo, pay_hi + 1, k + 1))),
             ir.Readout("y", ("t",), shape, scale=np.full(shape, 0.5, np.float32),
                        bias=np.zeros(shape, np.int64))]
    art = Artifact(nodes, "x", "y")
    art.validate()
    return art


TABLES = [  # shape, k, input bound, threshold edge, bias edge, rows, payload range
    ((3, 5), 12, 300, 200, 40, 1, (0, 63)),               # one row, uint8 payloads
    ((2, 4, 3), 9, 5000, 4000, 900, 24, (-40, 90)),         # a row per neuron, int8 payloads
    ((6,), 17, V, 2 ** 20, V + 1, 3, (-3000, 3000)),        # the state limit: saturation
    ((4, 4), 30, 2 ** 20, 2 ** 21, V + 1, 2, (-2 ** 23, 2 ** 23 - 1)),    # float64 index
]


@pytest.mark.parametrize("case", range(len(TABLES)))
def test_table_neuron_gather_equals_its_definition(case, monkeypatch):
    shape, k, in_hi, t_edge, b_edge, rows, (lo, hi) = TABLES[case]
    rng = np.random.default_rng(40 + case)
    art = _table_net(rng, shape, k, in_hi, t_edge, b_edge, rows, lo, hi)
    calls = _spy(monkeypatch, "table")
    x = rng.integers(-in_hi - 3, in_hi + 4, (64,) + shape).astype(np.float32)
    # every threshold ±1 reached (and the state limit where the input goes there)
    t = np.asarray(art.nodes[1].thresholds)
    b = np.broadcast_to(art.nodes[1].bias, shape)
    x[:3] = np.clip(t[..., 0] - b + np.array([-1, 0, 1])[:, None].reshape((3,) + (1,) * len(shape)),
                    -in_hi, in_hi)
    ref = sim.reference.run(art, x, record=("t",))
    assert_same(sim.cpu.run(art, x, record=("t",)), ref)
    assert_same(sim.cpu.run(art, x, count=False), sim.reference.run(art, x, count=False))
    assert calls, "the table neuron took the int64 definition"
    if in_hi + b_edge > V:
        assert ref.stats["t"].saturations > 0


def test_table_neuron_over_its_entry_limit_takes_the_definition(monkeypatch):
    rng = np.random.default_rng(7)
    art = _table_net(rng, (5, 3), 10, 3000, 2000, 100, 15, -7, 7)
    x = rng.integers(-3000, 3000, (32, 5, 3)).astype(np.float32)
    monkeypatch.setattr(program, "TABLE_ENTRIES", 1000)
    program.PROGRAMS.clear()
    calls = _spy(monkeypatch, "table")
    assert_same(sim.cpu.run(art, x), sim.reference.run(art, x))
    assert not calls


def test_table_bands_hold_every_count():
    """Each band row r covers [max(t_r0 − 1, −V), min(t_rK−1, V)]: the payload of every state
    v there, and the clamped state's payload outside, equal payload[#{k : v ≥ t_k}]."""
    t = np.array([[-5, -5, 0, 3], [1, 2, 2, 9], [-V - 1, -V, -V + 2, -V + 3],
                  [V - 3, V, V + 1, V + 1]], np.int64)
    pay = np.array([10, 20, 30, 40, 50], np.int64)
    table, shift, low, high, row = program.table_bands(t, pay)
    for i, r in enumerate(row):
        for v in list(range(-12, 14)) + [-V - 5, -V, -V + 1, V - 1, V, V + 5]:
            s = min(max(v, -V), V)      # the 24-bit saturation
            want = pay[np.count_nonzero(s >= t[i])]
            assert table[min(max(s, low[r]), high[r]) + shift[r]] == want, (i, v)


def _product_node(shape, shift, matmul, inner=0, inputs=("a", "b")):
    return ir.MatMul("p", inputs, shape, inner=inner, shift=shift) if matmul else \
        ir.Product("p", inputs, shape, shift=shift)


def _product_net(a_shape, b_shape, out_shape, a_hi, b_hi, shift, matmul, inner=0):
    """x → two neurons of levels ±a_hi, ±b_hi (θ = 1), selected and reshaped into the operands
    a (a_shape) and b (b_shape): a Product (broadcasting) or a MatMul of them, read out."""
    n_a, n_b = int(np.prod(a_shape)), int(np.prod(b_shape))
    one = np.ones((1,), np.int64)
    nodes = [ir.Input("x", (), (n_a + n_b,), inv_scale=1.0, lo=-2 ** 23 + 1, hi=2 ** 23 - 1),
             ir.Neuron("na", ("x",), (n_a + n_b,), threshold=one, bias=0 * one, lo=-a_hi,
                       hi=a_hi),
             ir.Neuron("nb", ("x",), (n_a + n_b,), threshold=one, bias=0 * one, lo=-b_hi,
                       hi=b_hi),
             ir.Select("sa", ("na",), (n_a,), table=np.arange(n_a)),
             ir.Select("sb", ("nb",), (n_b,), table=np.arange(n_a, n_a + n_b)),
             ir.Reshape("a", ("sa",), a_shape), ir.Reshape("b", ("sb",), b_shape),
             _product_node(out_shape, shift, matmul, inner),
             ir.Reshape("f", ("p",), (int(np.prod(out_shape)),))]
    size = int(np.prod(out_shape))
    nodes += [ir.Readout("y", ("f",), (size,), scale=np.full(size, 1e-9, np.float32),
                         bias=np.zeros(size, np.int64))]
    art = Artifact(nodes, "x", "y")
    art.validate()
    return art


PRODUCTS = [  # a shape, b shape, out shape, a levels, b levels, shift, matmul
    ((2, 3, 4), (1, 1, 4), (2, 3, 4), 15, 7, 0, False),         # broadcast over two axes
    ((1, 3, 1), (2, 1, 5), (2, 3, 5), 4095, 4095, 3, False),    # below 2²⁴: float32
    ((1, 3, 1), (2, 1, 5), (2, 3, 5), 4096, 4097, 1, False),    # from 2²⁴ on: float64
    ((2, 3, 6), (1, 6, 4), (2, 3, 4), 255, 127, 5, True),       # B broadcast over heads
    ((2, 3, 8), (2, 8, 4), (2, 3, 4), 1500, 1400, 0, True),     # 8·1500·1400 ≥ 2²⁴: float64
    ((1, 2, 3), (1, 3, 2), (1, 2, 2), 2 ** 23 - 1, 2 ** 23 - 1, 31, True),  # 3·2⁴⁶: float64
]


@pytest.mark.parametrize("case", range(len(PRODUCTS)))
def test_activation_products_equal_their_definition(case, monkeypatch):
    a_shape, b_shape, out_shape, a_hi, b_hi, shift, matmul = PRODUCTS[case]
    inner = a_shape[-1] if matmul else 0
    art = _product_net(a_shape, b_shape, out_shape, a_hi, b_hi, shift, matmul, inner)
    rng = np.random.default_rng(90 + case)
    size = int(np.prod(a_shape)) + int(np.prod(b_shape))
    x = rng.integers(-2 * max(a_hi, b_hi), 2 * max(a_hi, b_hi) + 1, (40, size))
    x[0], x[1] = 2 ** 23 - 1, -2 ** 23 + 1       # every operand at its largest magnitude
    x[2, ::2] = 0                                 # zeros: product operations not counted
    x = x.astype(np.float32)
    calls = _spy(monkeypatch, "product")
    ref = sim.reference.run(art, x, record=("p",))
    assert_same(sim.cpu.run(art, x, record=("p",)), ref)
    assert calls, "the product took the int64 definition"


def test_product_beyond_float64_takes_the_definition(monkeypatch):
    """K·|a|·|b| = 2⁵⁴ ≥ 2⁵³: no float holds the partial sums; the int64 matmul runs."""
    art = _product_net((1, 2, 256), (1, 256, 2), (1, 2, 2), 2 ** 23 - 1, 2 ** 23 - 1, 31, True,
                      256)
    x = np.full((3, 1024), 2 ** 23 - 1, np.float32)
    x[1] *= -1
    calls = _spy(monkeypatch, "product")
    assert_same(sim.cpu.run(art, x), sim.reference.run(art, x))
    assert not calls


@pytest.mark.parametrize("matmul", [False, True])
def test_products_of_different_ranks_are_refused(matmul):
    """Both operands carry the batch axis in front, so their per-sample axes pair up only at
    equal ranks: (2, 3, 4) · (4,) is refused, not broadcast against the batch."""
    nodes = [ir.Input("x", (), (2, 3, 4), lo=-7, hi=7), ir.Reshape("v", ("x",), (24,)),
             ir.Select("b", ("v",), (4,), table=np.arange(4)),
             _product_node((2, 3, 4) if not matmul else (2, 3, 1), 0, matmul, 4, ("x", "b"))]
    with pytest.raises(Exception, match="differ in rank"):
        Artifact(nodes, "x", "p").validate()


def test_broadcasting_select_is_a_view_with_the_same_values():
    """A select whose table sends a row statistic back along its row (a softmax's maximum, a
    LayerNorm's mean) runs as a broadcast view; a select that only looks like one at another
    rank, or reorders, keeps its gather."""
    one = np.ones((1, 1, 1), np.int64)
    nodes = [ir.Input("x", (), (1, 3, 4), inv_scale=1.0, lo=-50, hi=50),
             ir.SumPool("s", ("x",), (1, 3, 1), kernel=(1, 4), stride=(1, 1)),
             ir.Select("b", ("s",), (1, 3, 4), table=np.repeat(np.arange(3), 4)),
             ir.Select("p", ("s",), (1, 3, 4), table=np.tile(np.arange(3), 4)),
             ir.Add("d", ("x", "b", "p"), (1, 3, 4), gains=np.stack([4 * one, -one, one]),
                    exps=(0, 0, 0)),
             ir.Neuron("n", ("d",), (1, 3, 4), threshold=3 * one, bias=0 * one, lo=-9, hi=9),
             ir.Readout("y", ("n",), (1, 3, 4), scale=np.full((1, 3, 4), 0.5, np.float32),
                        bias=np.zeros((1, 3, 4), np.int64))]
    art = Artifact(nodes, "x", "y")
    art.validate()
    x = np.random.default_rng(3).integers(-50, 51, (20, 1, 3, 4)).astype(np.float32)
    assert_same(sim.cpu.run(art, x, record=("b", "p", "d")),
                sim.reference.run(art, x, record=("b", "p", "d")))
    ops = program.program(art, frozenset(), "once", True).ops
    assert ops[2].__name__ == "expand" and ops[3].__name__ == "op"


@pytest.mark.parametrize("levels, weight_max, exp", [(15, 127, 0), (2 ** 12, 127, 3),
                                                     (-15, 100, -2)])
def test_pointwise_conv_as_a_matrix_product(levels, weight_max, exp, monkeypatch):
    """A 1×1 convolution (a token linear) runs as one matrix product over the positions, with
    and without the neuron's offset added, in float32 and (partial sums from 2²⁴ on) float64,
    on signed and non-negative inputs; the same integers as the definition."""
    rng = np.random.default_rng(levels + weight_max)
    c_in, c_out, h, w = 24, 10, 17, 1
    lo = min(levels, 0)
    hi = abs(levels)
    w8 = rng.integers(-weight_max, weight_max + 1, (c_out, c_in, 1, 1))
    one = np.ones((c_out, 1, 1), np.int64)
    nodes = [ir.Input("x", (), (c_in, h, w), inv_scale=1.0, lo=lo, hi=hi),
             ir.Conv("c", ("x",), (c_out, h, w), weight=w8.astype(np.int16), weight_exp=exp),
             ir.Neuron("n", ("c",), (c_out, h, w), threshold=rng.integers(1, 900, (c_out, 1, 1)),
                       bias=rng.integers(-50, 50, (c_out, 1, 1)), lo=-63, hi=63),
             ir.Conv("d", ("n",), (c_out, h, w), weight=np.eye(c_out, dtype=np.int16)[
                 :, :, None, None] * 3, weight_exp=0),
             ir.Readout("y", ("d",), (c_out, h, w), scale=np.full((c_out, h, w), 0.1, np.float32),
                        bias=0 * one)]
    art = Artifact(nodes, "x", "y")
    art.validate()
    calls = _spy(monkeypatch, "_conv_pointwise")
    x = rng.integers(lo, hi + 1, (33, c_in, h, w)).astype(np.float32)
    x[0], x[1] = hi, lo
    record = ("c", "n")
    assert_same(sim.cpu.run(art, x, record=record), sim.reference.run(art, x, record=record))
    assert calls
