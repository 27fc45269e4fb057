"""The integer contract: fire functions, saturation, and temporal-to-spatial equivalence."""
import numpy as np
import pytest

import sim.cpu
from sim import ir, semantics
from sim.artifact import Artifact


def test_uniform_fire_is_round_half_up_clip():
    theta = np.array([10])
    v = np.arange(-30, 200)
    k, lo, hi = semantics.spike_unit(0, 15, binary=False)
    n, _ = semantics.fire_uniform(v + semantics.initial_state(theta, k), theta, k, lo, hi)
    expected = np.clip(np.floor(v / 10 + 0.5), 0, 15)
    assert np.array_equal(n, expected)
    assert n[list(v).index(5)] == 1 and n[list(v).index(4)] == 0  # half rounds up


def test_saturation_is_counted():
    v, count = semantics.saturate(np.array([0, semantics.V_MAX + 5, -semantics.V_MAX - 1, 7]))
    assert count == 2 and v.tolist() == [0, semantics.V_MAX, -semantics.V_MAX, 7]


def test_adaptive_fire_counts_thresholds():
    n = semantics.fire_adaptive(np.array([-5, 0, 3, 9, 100]), np.array([0, 4, 9]),
                                np.array([0, 1, 3, 7]))
    assert n.tolist() == [0, 1, 1, 7, 7]


def test_leak_no_memory_and_half():
    v, i = np.array([100, -50]), np.array([20, 30])
    assert np.array_equal(semantics.leak(v, i, 4096), i)
    assert semantics.leak(v, i, 2048).tolist() == [60, -10]


def _one_layer(weight, theta, levels, in_shape):
    """input → dense → neuron(L levels) → readout on the spikes (unit scale)."""
    out = weight.shape[0]
    return Artifact([
        ir.Input("x", (), in_shape, inv_scale=1.0, lo=0, hi=255),
        ir.Dense("fc", ("x",), (out,), weight=weight.astype(np.int16), weight_exp=0),
        ir.Neuron("n", ("fc",), (out,), threshold=theta, bias=np.zeros(out, np.int64), lo=0,
                  hi=levels),
        ir.Readout("y", ("n",), (out,), scale=np.ones(out, np.float32),
                   bias=np.zeros(out, np.int64)),
    ], "x", "y")


@pytest.mark.parametrize("levels", [1, 3, 7, 15, 31])
def test_temporal_to_spatial_equivalence(levels):
    """A one-timestep multi-threshold neuron with L levels fires what an integrate-and-fire
    neuron (binary spikes, reset by subtraction) fires in T = L steps on the same constant input."""
    rng = np.random.default_rng(levels)
    w = 2 * rng.integers(-60, 60, size=(40, 16))
    theta = 2 * rng.integers(50, 400, size=40)
    art = _one_layer(w, theta, levels, (16,))
    x = rng.integers(0, 256, size=(300, 16)).astype(np.float32)
    mtn = sim.cpu.run(art, x, timesteps=1)
    integrate_and_fire = sim.cpu.run(art, x, timesteps=levels, binary=True)
    # each binary spike carries payload L, so L·(spike count) = L·n
    assert np.array_equal(integrate_and_fire.accumulator, levels * mtn.accumulator)
    assert integrate_and_fire.stats["n"].spikes == mtn.stats["n"].payload
    assert mtn.stats["n"].payload > 0 and np.any(mtn.accumulator == levels)  # not trivial


def test_graded_timesteps_integrate_finer():
    """Graded spikes over T steps on constant input I: Σ_t q_t = floor((θ//2 + T·I)/θ) while no
    step exceeds its levels, and 0 for I < 0 — T times finer than the one-step neuron."""
    rng = np.random.default_rng(0)
    w, theta = 2 * rng.integers(-60, 60, size=(20, 8)), 2 * rng.integers(50, 400, size=20)
    art = _one_layer(w, theta, 15, (8,))
    x = rng.integers(0, 256, size=(100, 8)).astype(np.float32)
    current = x.astype(np.int64) @ w.T
    T = 4
    total = sim.cpu.run(art, x, timesteps=T).accumulator
    expect = np.where(current < 0, 0, (theta // 2 + T * current) // theta)
    uncapped = current <= 14 * theta
    assert uncapped.mean() > 0.5
    assert np.array_equal(total[uncapped], expect[uncapped])


def test_encoder_matches_float32_formula():
    x = np.array([[0.0, 0.49, 0.5, 1.5, 2.5, -3.0, 400.0]], np.float32)
    assert semantics.encode_input(x, np.float32(1.0), -2, 255).tolist() == [[0, 0, 1, 2, 3, -2, 255]]


@pytest.mark.parametrize("geometry", [(8, 3, 1, (1, 1, 1, 1), 1, 1), (9, 3, 2, (1, 1, 2, 2), 1, 2),
                                      (9, 3, 1, (2, 2, 2, 2), 2, 2), (7, 1, 2, (0, 0, 0, 0), 1, 1)])
def test_conv_synops_equal_brute_force(geometry):
    """SynOps = Σ over outputs of the nonzero inputs in their receptive field, counted directly
    with a convolution of the nonzero mask by an all-ones kernel."""
    from sim import kernels
    size, k, s, pads, d, g = geometry
    ci, co = 4, 6
    rng = np.random.default_rng(size + k)
    x = (rng.random((5, ci, size, size)) < 0.4) * rng.integers(1, 5, (5, ci, size, size))
    ho = (size + pads[0] + pads[2] - (d * (k - 1) + 1)) // s + 1
    brute = kernels.conv2d((x != 0).astype(np.int64), np.ones((co, ci // g, k, k)), (s, s), pads,
                           (d, d), g, (ho, ho)).sum()
    fan = kernels.fanout_map((size, size), (k, k), (s, s), pads, (d, d), (ho, ho))
    assert kernels.window_synops(x, fan, co // g) == brute > 0


def test_one_pass_neuron_equals_first_step_of_the_general_form():
    rng = np.random.default_rng(7)
    current = rng.integers(-2 ** 23, 2 ** 23, size=(50, 30))
    bias, theta = rng.integers(-5000, 5000, 30), 2 * rng.integers(1, 40000, 30)
    n1, sat1 = semantics.fire_once(current, bias, theta, -7, 15)
    v, sat2 = semantics.saturate(semantics.initial_state(theta, 1) + current + bias)
    n2, _ = semantics.fire_uniform(v, theta, 1, -7, 15)
    assert np.array_equal(n1, n2) and sat1 == sat2 > 0


def test_binary_flag_is_honoured_at_one_timestep():
    """T = 1 with binary spikes fires at most one spike (payload L) per neuron."""
    rng = np.random.default_rng(3)
    art = _one_layer(2 * rng.integers(-60, 60, size=(20, 8)), 2 * rng.integers(50, 400, size=20),
                     15, (8,))
    x = rng.integers(0, 256, size=(100, 8)).astype(np.float32)
    graded, binary = sim.cpu.run(art, x), sim.cpu.run(art, x, binary=True)
    assert set(np.unique(binary.accumulator)) <= {0, 15}
    assert np.array_equal(binary.accumulator, 15 * (graded.accumulator >= 8))
