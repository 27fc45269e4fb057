"""Products of two activations (Loihi 2's product neurons): the Product and MatMul kinds are
exact to their equations in sim.reference, sim.cpu, the reference ONNX and Lava."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sim.cpu
import sim.reference
from compare import assert_same, reference_onnx_outputs
from sim.artifact import Artifact
from sim.ir import Constant, Input, MatMul, Neuron, Product, Readout, Reshape, SumPool, Transpose
from sim.ops.product import shift_round


def _all_agree(art, x, record=()):
    ref = sim.reference.run(art, x, record=record)
    assert_same(sim.cpu.run(art, x, record=record), ref)
    out, acc = reference_onnx_outputs(art, x)
    np.testing.assert_array_equal(acc, ref.accumulator.astype(np.float32))
    np.testing.assert_array_equal(out, ref.output)
    return ref


def test_shift_round_is_round_half_up():
    p = np.array([-9, -8, -7, -5, -4, -3, 0, 3, 4, 5, 7, 8, 9], np.int64)
    assert shift_round(p, 2).tolist() == [-2, -2, -2, -1, -1, -1, 0, 1, 1, 1, 2, 2, 2]
    assert shift_round(p, 0).tolist() == p.tolist()


def _product_net(rows, cols, shift, signed_a, signed_b, theta_a, theta_b):
    """x (1, rows, cols) → two neurons a, b; b pooled over the last axis to (1, rows, 1);
    Product(a, pooled b) broadcast → a neuron → readout."""
    lo_a, lo_b = (-15 if signed_a else 0), (-7 if signed_b else 0)
    nodes = [Input("x", (), (1, rows, cols), inv_scale=10.0, lo=-127, hi=127),
             Neuron("a", ("x",), (1, rows, cols), threshold=np.full((1, 1, 1), theta_a),
                    bias=np.zeros((1, 1, 1), np.int64), lo=lo_a, hi=15),
             SumPool("s", ("x",), (1, rows, 1), kernel=(1, cols), stride=(1, 1)),
             Neuron("b", ("s",), (1, rows, 1), threshold=np.full((1, 1, 1), theta_b),
                    bias=np.zeros((1, 1, 1), np.int64), lo=lo_b, hi=7),
             Product("p", ("a", "b"), (1, rows, cols), shift=shift),
             Neuron("n", ("p",), (1, rows, cols), threshold=np.full((1, 1, 1), 4),
                    bias=np.zeros((1, 1, 1), np.int64), lo=-31, hi=31),
             Readout("y", ("n",), (1, rows, cols), scale=np.full((1, 1, 1), 0.5, np.float32),
                     bias=np.zeros((1, 1, 1), np.int64))]
    art = Artifact(nodes, "x", "y")
    art.validate()
    return art


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 6), cols=st.integers(1, 7), shift=st.integers(0, 6),
       signed_a=st.booleans(), signed_b=st.booleans(), theta_a=st.integers(1, 40),
       theta_b=st.integers(1, 200), seed=st.integers(0, 2 ** 16))
def test_product_equals_its_equation_everywhere(rows, cols, shift, signed_a, signed_b, theta_a,
                                                 theta_b, seed):
    art = _product_net(rows, cols, shift, signed_a, signed_b, theta_a, theta_b)
    x = np.random.default_rng(seed).uniform(-12, 12, (9, 1, rows, cols)).astype(np.float32)
    ref = _all_agree(art, x, record=("a", "b", "p"))
    a, b, p = (ref.recorded[k] for k in ("a", "b", "p"))
    np.testing.assert_array_equal(p, (a * b + (1 << shift >> 1)) >> shift if shift else a * b)
    assert ref.stats["p"].synops == int(np.count_nonzero((a != 0) & (b != 0)))


def _attention(heads, tokens, dim, shift_s, shift_o):
    """x (heads, tokens, dim) → q = neuron(x); scores = MatMul(q, qᵀ) → neuron (the weights);
    out = MatMul(weights, q) → neuron → readout: attention's two products of activations."""
    one = np.ones((1, 1, 1), np.int64)
    nodes = [Input("x", (), (heads, tokens, dim), inv_scale=8.0, lo=-127, hi=127),
             Neuron("q", ("x",), (heads, tokens, dim), threshold=4 * one, bias=0 * one, lo=-15,
                    hi=15),
             Transpose("qt", ("q",), (heads, dim, tokens), perm=(0, 2, 1)),
             MatMul("s", ("q", "qt"), (heads, tokens, tokens), inner=dim, shift=shift_s),
             Neuron("w", ("s",), (heads, tokens, tokens), threshold=8 * one, bias=0 * one,
                    lo=0, hi=15),
             MatMul("o", ("w", "q"), (heads, tokens, dim), inner=tokens, shift=shift_o),
             Neuron("h", ("o",), (heads, tokens, dim), threshold=6 * one, bias=one, lo=-15,
                    hi=15),
             Reshape("f", ("h",), (heads * tokens * dim,)),
             Readout("y", ("f",), (heads * tokens * dim,),
                     scale=np.full(heads * tokens * dim, 0.1, np.float32),
                     bias=np.zeros(heads * tokens * dim, np.int64))]
    art = Artifact(nodes, "x", "y")
    art.validate()
    return art


@pytest.mark.parametrize("shape, shifts", [((2, 5, 3), (2, 3)), ((4, 3, 8), (0, 5)),
                                           ((1, 7, 2), (4, 0))])
def test_activation_matmul_equals_its_equation_everywhere(shape, shifts):
    art = _attention(*shape, *shifts)
    x = np.random.default_rng(sum(shape)).uniform(-16, 16, (11,) + shape).astype(np.float32)
    ref = _all_agree(art, x, record=("q", "w", "s", "o"))
    q, w = ref.recorded["q"], ref.recorded["w"]
    s = q @ np.swapaxes(q, -1, -2)
    np.testing.assert_array_equal(ref.recorded["s"], shift_round(s, shifts[0]))
    np.testing.assert_array_equal(ref.recorded["o"], shift_round(w @ q, shifts[1]))
    terms = (q != 0).astype(np.int64) @ np.swapaxes((q != 0).astype(np.int64), -1, -2)
    assert ref.stats["s"].synops == int(terms.sum())


@pytest.mark.lava
def test_products_on_lava_equal_cpu():
    import sim.lava
    art = _attention(2, 5, 3, 2, 3)
    x = np.random.default_rng(1).uniform(-16, 16, (20, 2, 5, 3)).astype(np.float32)
    assert_same(sim.lava.run(art, x, timeout=120), sim.cpu.run(art, x))


def test_constant_is_the_same_for_every_sample():
    nodes = [Input("x", (), (3,), inv_scale=1.0, lo=0, hi=255),
             Constant("c", ("x",), (2, 3), value=np.array([[1, -2, 3], [4, 5, -6]])),
             Reshape("f", ("c",), (6,)),
             Readout("y", ("f",), (6,), scale=np.ones(6, np.float32), bias=np.zeros(6, np.int64))]
    art = Artifact(nodes, "x", "y")
    art.validate()
    x = np.random.default_rng(0).uniform(0, 9, (4, 3)).astype(np.float32)
    ref = _all_agree(art, x)
    assert ref.accumulator.tolist() == [[1, -2, 3, 4, 5, -6]] * 4


def test_product_checks_refuse_what_does_not_fit():
    art = _product_net(3, 4, 2, True, True, 3, 9)
    art.node("p").shift = 40
    with pytest.raises(Exception, match="shift 40 is not an integer in \\[0, 31\\]"):
        art.validate()
    art = _attention(2, 5, 3, 2, 3)
    art.node("s").inner = 4
    with pytest.raises(Exception, match="cannot be multiplied as matrices over 4"):
        art.validate()


def test_products_map_onto_cores_as_product_neurons():
    from toolchain.mapping import map_artifact
    from toolchain.target import load_target
    art = _attention(2, 5, 3, 2, 3)
    placement = map_artifact(art, load_target("loihi2"))
    layers = placement.layers
    assert layers["s"]["role"] == "product" and layers["s"]["neurons"] == 2 * 5 * 5
    assert set(layers["s"]["connections"]) == {"s", "s#1"}
    # each score reads its row of q and its column of qᵀ: 2·3 synapses, fan-in 6
    assert layers["s"]["synapses"] == 2 * 5 * 5 * 6


def test_inspect_names_the_product_primitive(tmp_path):
    import json

    from click.testing import CliRunner

    from toolchain.cli import main
    path = tmp_path / "p.sfn"
    _attention(2, 5, 3, 2, 3).save(path)
    done = CliRunner().invoke(main, ["inspect", str(path), "--json"])
    assert done.exit_code == 0, done.output
    hardware = json.loads(done.output)["hardware"]
    assert hardware["per_node"]["s"] == "microcode"
    assert hardware["primitives"]["s"].startswith("ProdNeuron-like per term (M·N·K)")
    assert set(hardware["primitives"]) == {n.name for n in _attention(2, 5, 3, 2, 3).nodes
                                           if n.kind in ("product", "matmul")}
