"""Negative weight exponents and right-shift gains: units that get coarser. The accumulator (or an
Add's term) is floored / 2^k, exactly as Lava's Dense right-shifts it; sim.cpu, sim.reference,
the reference ONNX and Lava agree bit for bit."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import sim.cpu
import sim.reference
from compare import assert_same
from sim import semantics
from sim.artifact import Artifact
from sim.ir import Add, Conv, Dense, Input, Neuron, Readout, Reshape
from toolchain.reference import emit_reference


def test_shift_floors_toward_minus_infinity():
    a = np.array([-9, -8, -7, -1, 0, 1, 7, 8, 9], np.int64)
    assert semantics.shift(a, -3).tolist() == [-2, -1, -1, -1, 0, 0, 0, 1, 1]
    assert semantics.shift(a, 2).tolist() == (a * 4).tolist()
    assert semantics.shift(a, 0).tolist() == a.tolist()


def _net(rng, exps=(-3, -2, -4, 1)) -> Artifact:
    """encoder → conv (exps[0]) → neuron → reshape → two dense (exps[1], exps[2]) → add with a
    right-shift gain and a left-shift one → signed neuron → dense (exps[3]) → readout. Wide
    fan-in and large weights make the unshifted accumulators exceed 2²⁴ where the shift is big."""
    c, hw = 6, 6
    w1 = rng.integers(-255, 256, (c, 3, 3, 3))
    th1 = rng.integers(40, 400, (c, 1, 1))
    w2 = rng.integers(-255, 256, (20, c * hw * hw))
    w3 = rng.integers(-255, 256, (20, c * hw * hw))
    gains = rng.integers(1, 256, (2, 20))
    th4 = rng.integers(50, 900, (20,))
    w5 = rng.integers(-255, 256, (4, 20))
    nodes = [Input("x", (), (3, hw, hw), inv_scale=40.0, lo=-127, hi=127),
             Conv("c", ("x",), (c, hw, hw), weight=w1.astype(np.int16), weight_exp=exps[0],
                  pads=(1, 1, 1, 1)),
             Neuron("n", ("c",), (c, hw, hw), threshold=th1, bias=rng.integers(-300, 300, (c, 1, 1)),
                    lo=0, hi=15),
             Reshape("f", ("n",), (c * hw * hw,)),
             Dense("d1", ("f",), (20,), weight=w2.astype(np.int16), weight_exp=exps[1]),
             Dense("d2", ("f",), (20,), weight=w3.astype(np.int16), weight_exp=exps[2]),
             Add("a", ("d1", "d2"), (20,), gains=gains, exps=(-3, 1)),
             Neuron("m", ("a",), (20,), threshold=th4, bias=rng.integers(-500, 500, (20,)),
                    lo=-7, hi=7),
             Dense("d3", ("m",), (4,), weight=w5.astype(np.int16), weight_exp=exps[3]),
             Readout("y", ("d3",), (4,), scale=np.full(4, 0.01, np.float32),
                     bias=np.zeros(4, np.int64))]
    art = Artifact(nodes, "x", "y")
    art.validate()
    return art


@pytest.mark.parametrize("seed", range(6))
def test_negative_exponents_are_bit_exact_everywhere(seed):
    rng = np.random.default_rng(seed)
    exps = tuple(int(e) for e in rng.integers(-6, 3, 4))
    art = _net(rng, exps)
    x = rng.uniform(-3, 3, (40, 3, 6, 6)).astype(np.float32)
    ref = sim.reference.run(art, x, record=("d1", "a", "m"))
    assert_same(sim.cpu.run(art, x, record=("d1", "a", "m")), ref)
    assert_same(sim.cpu.run(art, x, count=False, threads=1),
                sim.reference.run(art, x, count=False))
    sess = ort.InferenceSession(emit_reference(art).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    out, acc = sess.run(["output", "accumulator"], {"input": x})
    np.testing.assert_array_equal(acc, ref.accumulator.astype(np.float32))
    np.testing.assert_array_equal(out, ref.output)
    assert np.abs(ref.recorded["m"]).sum() > 0 and np.abs(ref.recorded["d1"]).max() > 0
    # the shifts really floor: the unshifted accumulator of d1 is not a multiple of 2^k
    if exps[1] < 0:
        f = sim.reference.run(art, x, record=("f",)).recorded["f"]
        raw = f @ art.node("d1").weight.astype(np.int64).T
        np.testing.assert_array_equal(ref.recorded["d1"], raw >> -exps[1])
        assert np.any(raw % (1 << -exps[1]))


@pytest.mark.lava
def test_negative_exponents_on_lava_equal_cpu():
    import sim.lava
    rng = np.random.default_rng(11)
    art = _net(rng)
    x = rng.uniform(-3, 3, (20, 3, 6, 6)).astype(np.float32)
    assert_same(sim.lava.run(art, x, timeout=120), sim.cpu.run(art, x))


def test_exponents_outside_the_contract_are_refused():
    rng = np.random.default_rng(0)
    art = _net(rng)
    art.node("d1").weight_exp = -32
    with pytest.raises(Exception, match=r"weight_exp -32 is not an integer in \[-31, 31\]"):
        art.validate()
    art = _net(rng)
    art.node("a").exps = (-40, 1)
    with pytest.raises(Exception, match="gains/exps do not match"):
        art.validate()


def test_target_range_is_enforced_by_the_mapper():
    from toolchain.errors import MappingError
    from toolchain.mapping import map_artifact
    from toolchain.target import load_target
    rng = np.random.default_rng(1)
    art = _net(rng, exps=(-2, -8, -3, 0))
    map_artifact(art, load_target("loihi2"))
    art = _net(rng, exps=(-2, -9, -3, 0))
    with pytest.raises(MappingError, match=r"layer 'd1': exponent -9 is outside loihi2's range "
                                           r"\[-8, 7\]"):
        map_artifact(art, load_target("loihi2"))
