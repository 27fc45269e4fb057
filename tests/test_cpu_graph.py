"""sim.cpu's graph engine (sim/cpu/graph.py: a T = 1 pass lowered to one onnxruntime model of
exact float operations) against the int64 definitions: the test networks with inputs the encoder
clips on both sides, batches cut into chunks and recorded values; the one-pass fire at the edges
of its multiplying and dividing float32 forms; table neurons; products of activations and their
rounding; the refusals (a neuron that could saturate, counting, T > 1) and which engine a run
takes by default; onnxruntime's graph rewrites leaving the fire's multiplication alone."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest

import nets
import sim.cpu
import sim.reference
from compare import assert_same
from sim import ir, semantics
from sim.artifact import Artifact
from sim.cpu import graph, runner
from sim.errors import ShapeError
from toolchain.reference import emit_reference

V = semantics.V_MAX


def _graph(art, x, **options):
    return sim.cpu.run(art, x, count=False, engine="graph", **options)


def _readout(name, shape):
    return ir.Readout("y", (name,), shape, scale=np.full(shape, 0.25, np.float32),
                      bias=np.zeros(shape, np.int64))


@pytest.mark.parametrize("name", sorted(nets.NETS))
def test_graph_engine_equals_the_reference_on_the_test_networks(name):
    compiled, _, test = nets.compiled(name)
    art = compiled.artifact
    x = test[:40].copy()
    x[::3] *= -4.0            # below the encoder's levels
    x[1::5] *= 9.0            # and above them
    neuron = next(n.name for n in art.nodes if n.kind == "neuron")
    ref = sim.reference.run(art, x, count=False, record=(neuron,))
    assert ref.stats[art.input].clipped > 0
    assert_same(_graph(art, x, batch_size=7, record=(neuron,)), ref)
    assert_same(_graph(art, x, threads=2), sim.reference.run(art, x, count=False))
    assert_same(_graph(art, x[:0]), sim.reference.run(art, x[:0], count=False))


def test_products_take_their_neurons_offset_as_bias():
    """The CNNs' convolutions that feed one neuron alone add its offset in the kernel."""
    art = nets.compiled("maxpool_cnn")[0].artifact
    eng = graph.engine(art)
    assert isinstance(eng, graph.Engine)
    convs = {n.name for n in art.nodes if n.kind == "conv" and n.weight_exp >= 0}
    assert convs and convs <= set(eng.lowering.biased)


def _fire_net(theta, offset, in_hi):
    """x (inv_scale 1, levels ±in_hi) → a one-pass neuron (per-channel θ and bias) → readout."""
    shape = (len(theta), 8)
    nodes = [ir.Input("x", (), shape, inv_scale=1.0, lo=-in_hi, hi=in_hi),
             ir.Neuron("n", ("x",), shape, threshold=np.asarray(theta).reshape(-1, 1),
                       bias=np.asarray(offset).reshape(-1, 1), lo=-300, hi=4000),
             _readout("n", shape)]
    art = Artifact(nodes, "x", "y")
    art.validate()
    return art


@pytest.mark.parametrize("limit, form", [(2 ** 22 - 2 ** 12, "reciprocal"),
                                         (V - 2 ** 12, "quotient")])
def test_fire_at_the_edges_of_its_float32_forms(limit, form):
    """States v = kθ − 1, kθ, kθ + 1 up to the bound of each form: the multiplication by
    fl(1/θ) below 2²², the float32 quotient up to the 24-bit state limit."""
    rng = np.random.default_rng(len(form))
    theta = np.array([1, 3, 7, 255, 1023, 4093])
    offset = np.array([0, -5, 9, 100, -2000, 2040])
    art = _fire_net(theta, offset, limit - 2050 - 2 ** 12 // 2)
    k = rng.integers(-300, 4001, (50, 6, 1))
    v = k * theta[:, None] + rng.integers(-1, 2, (50, 6, 8))
    x = np.clip(v - offset[:, None] - theta[:, None] // 2, -(limit - 4100), limit - 4100)
    x[0, :, :2] = [limit - 4100, -(limit - 4100)]
    eng = graph.engine(art)
    assert bool(eng.lowering.reciprocals) == (form == "reciprocal")
    assert_same(_graph(art, x.astype(np.float32)),
                sim.reference.run(art, x.astype(np.float32), count=False))


def test_a_neuron_that_could_saturate_runs_in_the_program():
    art = _fire_net(np.full(4, 5), np.zeros(4, np.int64), V)
    assert isinstance(graph.engine(art), graph.NotLowered)
    x = np.full((3, 4, 8), float(V), np.float32)
    x[1] *= -1
    with pytest.raises(ValueError, match="saturate"):
        _graph(art, x)
    res = sim.cpu.run(art, x, count=False)           # the default falls back to the program
    assert_same(res, sim.reference.run(art, x, count=False))
    assert res.stats["n"].saturations > 0            # what the graph engine could not count
    with pytest.raises(ValueError, match="count"):
        sim.cpu.run(art, x, engine="graph")
    with pytest.raises(ValueError, match="T = 1"):
        sim.cpu.run(art, x, count=False, timesteps=2, engine="graph")
    with pytest.raises(ValueError, match="not one of"):
        sim.cpu.run(art, x, engine="onnx")


def test_table_neurons_and_products():
    """A table neuron with a threshold row per channel, its payload times another neuron's
    (with a rounded right shift), and a matrix product of two activations."""
    rng = np.random.default_rng(5)
    shape, k = (3, 6), 9
    thresholds = np.sort(rng.integers(-400, 400, (3, 1, k)), axis=-1)
    nodes = [ir.Input("x", (), shape, inv_scale=1.0, lo=-500, hi=500),
             ir.Neuron("t", ("x",), shape, threshold=np.ones((1, 1), np.int64),
                       bias=rng.integers(-30, 30, (3, 1)), lo=-20, hi=40, fire="adaptive",
                       thresholds=np.broadcast_to(thresholds, shape + (k,)).copy(),
                       payload=np.sort(rng.integers(-20, 41, k + 1))),
             ir.Neuron("u", ("x",), shape, threshold=np.full((1, 1), 7), bias=np.zeros((1, 1)),
                       lo=-15, hi=15),
             ir.Product("p", ("t", "u"), shape, shift=3),
             ir.Transpose("ut", ("u",), (6, 3), perm=(1, 0)),
             ir.MatMul("m", ("p", "ut"), (3, 3), shift=2, inner=6),
             _readout("m", (3, 3))]
    art = Artifact(nodes, "x", "y")
    art.validate()
    x = rng.uniform(-600, 600, (33,) + shape).astype(np.float32)
    x[::4] = 0.0                            # rows of zeros: products with a silent operand
    kept = ("x", "t", "p", "m", "y")        # m: the readout's input, y: the readout
    assert_same(_graph(art, x, record=kept), sim.reference.run(art, x, count=False, record=kept))
    counted = sim.cpu.run(art, x, engine="graph", batch_size=10)
    assert_same(counted, sim.reference.run(art, x))
    assert counted.stats["p"].synops > 0 and counted.stats["m"].synops > 0


@pytest.mark.parametrize("name", sorted(nets.NETS))
def test_counted_runs_equal_the_oracle(name):
    """The activity counts computed in the model (spikes, payload, SynOps of dense,
    convolution, sum pool and add nodes, clipped inputs), summed over batches, equal the int64
    runner's, on the test networks (inputs clipped on both sides)."""
    compiled, _, test = nets.compiled(name)
    art = compiled.artifact
    x = test[:30].copy()
    x[::3] *= -4.0
    x[1::5] *= 9.0
    want = sim.reference.run(art, x)
    assert sum(s.synops for s in want.stats.values()) > 0
    assert_same(sim.cpu.run(art, x, engine="graph", batch_size=7), want)
    assert_same(sim.cpu.Session(art, engine="graph").run(x[:1]), sim.reference.run(art, x[:1]))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_input_is_refused(bad):
    art = nets.compiled("mlp")[0].artifact
    x = nets.compiled("mlp")[2][:5].copy()
    x[3, 7] = bad
    with pytest.raises(ShapeError, match="1 NaN/Inf"):
        _graph(art, x)
    x[3, 7] = 3e38                 # finite, beyond what the encoder's product holds: clipped
    assert_same(_graph(art, x), sim.reference.run(art, x, count=False))


def test_counted_payload_sums_beyond_float32():
    """A neuron of 64 payloads up to ±2²⁰: its per-sample Σ|payload| passes 2²⁴, so the model
    sums it in float64; the counts equal the int64 runner's."""
    rng = np.random.default_rng(8)
    level = 2 ** 20
    nodes = [ir.Input("x", (), (64,), inv_scale=1.0, lo=-level, hi=level),
             ir.Dense("d", ("x",), (64,), weight=np.eye(64, dtype=np.int16), weight_exp=0),
             ir.Neuron("n", ("d",), (64,), threshold=np.ones(64, np.int64),
                       bias=np.zeros(64, np.int64), lo=-level, hi=level),
             _readout("n", (64,))]
    art = Artifact(nodes, "x", "y")
    art.validate()
    x = rng.uniform(-level, level, (12, 64)).astype(np.float32)
    x[:, ::7] = 0.0
    want = sim.reference.run(art, x)
    assert want.stats["n"].payload > 12 * 2 ** 24
    assert_same(sim.cpu.run(art, x, engine="graph"), want)


def test_the_default_takes_the_graph_engine_for_small_runs(monkeypatch):
    """From an artifact's second small run on (the first does not repay lowering), counted or
    not (one engine each)."""
    compiled, _, test = nets.compiled("mlp")
    art = Artifact(list(compiled.artifact.nodes), compiled.artifact.input,
                   compiled.artifact.output)          # an artifact no test has run yet
    calls = []
    real = graph.Engine.simulate

    def spy(self, *args, **kwargs):
        calls.append(len(args[0]))
        return real(self, *args, **kwargs)
    monkeypatch.setattr(graph.Engine, "simulate", spy)
    for rows, count, expect in ((1, False, []), (1, False, [1]),
                                (runner.GRAPH_ROWS, False, [runner.GRAPH_ROWS]),
                                (runner.GRAPH_ROWS + 1, False, []), (4, True, []),
                                (4, True, [4])):
        calls.clear()
        sim.cpu.run(art, test[:rows], count=count)
        assert calls == expect, (rows, count)
    calls.clear()
    sim.cpu.run(art, test[:40], count=False, batch_size=8)   # batches of 8 rows
    assert calls == [40]
    calls.clear()
    sim.cpu.run(art, test[:4], count=False, engine="program")
    assert calls == []
    assert sim.cpu.engine_for(art, test[:4], count=False) == "graph"
    assert sim.cpu.engine_for(art, test[:4]) == "graph"
    assert sim.cpu.engine_for(art, test[:40], count=False) == "program"


def test_onnxruntime_keeps_the_fires_multiplication(tmp_path):
    """The rewrites that fold a following constant into a convolution's weights are off: every
    multiplication by fl(1/θ) is still in the model onnxruntime runs (the layout rewrite may
    turn it into a per-channel node of its own, under a name that starts with the same)."""
    art = nets.compiled("maxpool_cnn")[0].artifact
    eng = graph.engine(art)
    assert eng.lowering.reciprocals
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(eng.bytes, opts, providers=["CPUExecutionProvider"],
                         disabled_optimizers=graph.UNSAFE)
    names = [n.name for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    for mul in eng.lowering.reciprocals:
        assert any(n == mul or n.startswith(mul + "_") for n in names), mul


def test_a_model_onnxruntime_refuses_runs_in_the_program(monkeypatch):
    """A lowered model onnxruntime will not load: the default runs the program (and does not
    try again), engine="graph" says why."""
    art = _fire_net(np.array([3, 5]), np.array([1, -1]), 1000)
    x = np.random.default_rng(0).uniform(-1200, 1200, (4, 2, 8)).astype(np.float32)
    tries = []

    def refuse(*args, **kwargs):
        tries.append(1)
        raise RuntimeError("no kernel for this op\nsecond line")
    monkeypatch.setattr(ort, "InferenceSession", refuse)
    want = sim.reference.run(art, x, count=False)
    assert_same(sim.cpu.run(art, x, count=False), want)
    assert_same(sim.cpu.run(art, x, count=False), want)
    assert_same(sim.cpu.Session(art, count=False).run(x), want)
    assert tries == [1]
    with pytest.raises(ValueError, match="onnxruntime refused the lowered model: RuntimeError: "
                                         "no kernel for this op$"):
        _graph(art, x)


def _wide_nets(rng):
    """Products and sums whose unshifted values float32 does not hold (positive weights: every
    partial sum grows) and whose shifted results it does: a dense layer of 4096 inputs, a
    convolution over 600 channels, an Add with gains near 2²⁰."""
    def net(shape, synapse, x_levels, neuron_shape=None):
        shape_n = neuron_shape or synapse.shape
        ones = np.ones((1,) * len(shape_n), np.int64)
        return Artifact([ir.Input("x", (), shape, inv_scale=1.0, lo=x_levels[0],
                                  hi=x_levels[1]),
                         synapse,
                         ir.Neuron("n", (synapse.name,), shape_n, threshold=3 * ones,
                                   bias=0 * ones, lo=-10 ** 6, hi=10 ** 6),
                         _readout("n", shape_n)], "x", "y")
    dense = net((4096,), ir.Dense("d", ("x",), (8,), weight_exp=-8,
                                  weight=rng.integers(100, 128, (8, 4096)).astype(np.int16)),
                (0, 255))
    conv = net((600, 5, 5), ir.Conv("c", ("x",), (4, 5, 5), weight_exp=-12, stride=(1, 1),
                                    pads=(1, 1, 1, 1), dilation=(1, 1), groups=1,
                                    weight=rng.integers(100, 128, (4, 600, 3, 3))
                                    .astype(np.int16)), (0, 255))
    gains = np.array([[2 ** 20 - 3], [-(2 ** 19) + 7]]) * np.ones((2, 64), np.int64)
    add = net((64,), ir.Add("a", ("x", "x"), (64,), gains=gains, exps=(-19, -20)),
              (-2 ** 20, 2 ** 20))
    return {"dense": (dense, rng.integers(0, 256, (400, 4096))),
            "conv": (conv, rng.integers(0, 256, (60, 600, 5, 5))),
            "add": (add, rng.integers(-2 ** 20, 2 ** 20, (400, 64)))}


@pytest.mark.parametrize("name", ["dense", "conv", "add"])
def test_products_beyond_float32_stay_exact(name):
    """The kinds' ONNX forms compute such values in float64 (the convolution in channel slices
    whose partial sums float32 holds): the reference ONNX and the graph engine equal the int64
    oracle."""
    art, x = _wide_nets(np.random.default_rng(2))[name]
    art.validate()
    x = x.astype(np.float32)
    want = sim.reference.run(art, x, count=False)
    sess = ort.InferenceSession(emit_reference(art).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    acc = sess.run(["accumulator"], {"input": x})[0]
    np.testing.assert_array_equal(acc.astype(np.int64), want.accumulator)
    assert_same(_graph(art, x, batch_size=len(x)), want)


@pytest.mark.parametrize("conv", [False, True])
def test_one_sided_bound_keeps_pixel_layers_in_float32(conv):
    """8-bit pixels (never negative) into weights whose Σ|w|·255 passes 2²⁴ but whose larger
    one-sided sum Σw⁺·255 stays below (a right shift keeps the neuron's state within 24 bits):
    every partial sum lies within the one-sided bounds, so
    the graph engine multiplies in float32 (no float64 cast in its model) and equals the int64
    oracle at the extremes (all pixels 255, the positive and the negative weights' halves
    lit)."""
    fan = 2048
    w = np.resize(np.array([64, -64], np.int16), (4, fan))      # Σw⁺·255 = 1.67·10⁷
    w[1:] = np.resize(np.array([60, -60, 3], np.int16), (3, fan))
    if conv:
        shape, kernel = (fan // 16, 4, 4), w.reshape(4, fan // 16, 4, 4)
        layer = ir.Conv("p", ("x",), (4, 1, 1), weight=kernel, weight_exp=-2,
                        stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1), groups=1)
    else:
        shape = (fan,)
        layer = ir.Dense("p", ("x",), (4,), weight=w, weight_exp=-2)
    out = (4, 1, 1) if conv else (4,)
    art = Artifact([ir.Input("x", (), shape, inv_scale=1.0, lo=0, hi=255), layer,
                    ir.Neuron("n", ("p",), out, threshold=np.full(out, 2 ** 12),
                              bias=np.zeros(out, np.int64), lo=-2 ** 11, hi=2 ** 11),
                    _readout("n", out)], "x", "y")
    art.validate()
    assert float(np.abs(w.astype(np.int64)).sum(axis=1).max()) * 255 >= 2 ** 24
    x = np.random.default_rng(4).uniform(0, 255, (40, fan)).astype(np.float32)
    x[:3] = 255.0
    x[3:6] = np.resize(np.array([255.0, 0.0], np.float32), fan)
    x[6:9] = np.resize(np.array([0.0, 255.0], np.float32), fan)
    x = x.reshape((40,) + shape)
    model = graph.Lowering(art).model
    assert not [n for n in model.graph.node if n.op_type == "Cast"]
    assert_same(_graph(art, x), sim.reference.run(art, x, count=False))


def test_a_current_beyond_float32_saturates_its_neuron_alike():
    """A current beyond 2²⁴ (a dense layer without a right shift): the reference ONNX rounds it
    to float32, which the neuron's saturation makes harmless; the graph engine takes no such
    artifact and leaves the run to the program."""
    w = np.full((4, 2048), 127, np.int16)
    art = Artifact([ir.Input("x", (), (2048,), inv_scale=1.0, lo=0, hi=255),
                    ir.Dense("d", ("x",), (4,), weight=w, weight_exp=0),
                    ir.Neuron("n", ("d",), (4,), threshold=np.full(4, 2 ** 10),
                              bias=np.zeros(4, np.int64), lo=0, hi=2 ** 14),
                    _readout("n", (4,))], "x", "y")
    art.validate()
    x = np.random.default_rng(0).uniform(0, 255, (30, 2048)).astype(np.float32)
    x[:10] = 255.0                  # 2048·127·255 = 6.6·10⁷: saturated
    want = sim.reference.run(art, x, count=False)
    assert want.stats["n"].saturations > 0
    sess = ort.InferenceSession(emit_reference(art).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    acc = sess.run(["accumulator"], {"input": x})[0]
    np.testing.assert_array_equal(acc.astype(np.int64), want.accumulator)
    assert_same(sim.cpu.run(art, x, count=False), want)
    with pytest.raises(ValueError, match="dense 'd': values beyond float32's exact integers "
                                         r"\(up to 6.6"):
        _graph(art, x)


def test_a_layernorm_sum_beyond_float32_runs_in_float64():
    """x (17 tokens × 32 features, levels ±2²⁰) → the feature sum of each token (whole-row sum
    pool, bound 3.4·10⁷) → broadcast back along the row (a select) → x·128 − 4·sum, both
    shifted by 2⁻⁸ → a neuron: the sum and its broadcast are float64 tensors in the graph
    engine, the centred value float32 again, and everything equals the int64 oracle (the data
    reaches sums beyond 2²⁴)."""
    shape = (1, 17, 32)
    table = (np.arange(17)[:, None] * np.ones(32, np.int64)).reshape(-1)
    art = Artifact([ir.Input("x", (), shape, inv_scale=1.0, lo=-2 ** 20, hi=2 ** 20),
                    ir.SumPool("s", ("x",), (1, 17, 1), kernel=(1, 32), stride=(1, 32)),
                    ir.Select("m", ("s",), shape, table=table),
                    ir.Add("c", ("x", "m"), shape, exps=(-8, -8),
                           gains=np.stack([np.full(shape, 128), np.full(shape, -4)])),
                    ir.Neuron("n", ("c",), shape, threshold=np.full((1, 1, 1), 5),
                              bias=np.zeros((1, 1, 1), np.int64), lo=-2 ** 20, hi=2 ** 20),
                    _readout("n", shape)], "x", "y")
    art.validate()
    eng = graph.engine(art)
    assert isinstance(eng, graph.Engine) and {"s", "m"} <= eng.lowering.double
    x = np.random.default_rng(4).integers(2 ** 19, 2 ** 20, (30,) + shape).astype(np.float32)
    x[::2] *= -1
    want = sim.reference.run(art, x, count=False, record=("s", "c"))
    assert np.abs(want.recorded["s"]).max() > 2 ** 24
    assert_same(_graph(art, x, record=("s", "c")), want)
