"""An artifact compiled for sim.cpu's batched runner: one operation per node, in graph order.

What does not depend on the data is decided once, when the program is built: which values are
non-negative, a bound on every value the graph proves one for (inputs and one-pass neurons by
their levels, products and sums from those), hence the float dtype each product is exact in, the
weights cast to it, which dense/conv adds its neuron's offset as a bias (`fusions`), which
convolutions may run in int8, and the fire constants. A bound the graph cannot prove (a stateful
neuron's output, a product whose static bound is too loose for float32) is measured on the data
when a reader needs it. Inside a step values are exact integers held in float32/float64
wherever a bound proves that exact (sim.kernels); the driver converts what it keeps to int64.

Each kind with a fast form has a builder here, registered by kind (`@builds`); any other kind
runs its own int64 `evaluate` (sim.ops), so a new kind runs in sim.cpu before it has a fast
form. `mode`: "once" (T = 1, graded, feed-forward: no neuron keeps a state), "trials" (a
recurrent trial: only the leaky neurons, reset "none", keep theirs; every other neuron starts
afresh each step) or "state" (T > 1 or binary spikes: every neuron keeps its state). Where a
neuron starts afresh, the one-pass multi-threshold neuron applies.
"""
from __future__ import annotations

import math
import weakref

import numpy as np

from sim import driver, kernels, ops, semantics
from sim.artifact import Artifact
from sim.cpu import torch_ops
from sim.cpu.kernels import (Fire, FirePlan, conv2d_exact, dense_exact, encode_input_exact,
                             sum_pool_exact)
from sim.cpu.weights import Weights
from sim.driver import as_int
from sim.ops.base import batched
from sim.results import LayerStats

BUILDERS: dict = {}


def builds(*kinds: str):
    """Register `fn(program, node) -> op` as the fast form of the given kinds."""
    def register(fn):
        for kind in kinds:
            BUILDERS[kind] = fn
        return fn
    return register


class Run(driver.Step):
    """One program step: the Step every node's `evaluate` reads, plus the values made so far,
    their bounds (static ones seeded, others measured once when asked), which products added
    their neuron's offset, per-step nonzero counts and the neurons already fired."""
    __slots__ = ("values", "bounds", "biased", "counts", "done")

    def bound(self, name: str) -> float:
        b = self.bounds.get(name)
        if b is None:
            b = self.bounds[name] = kernels.max_abs(self.values[name])
        return b

    def nonzero(self, name: str) -> np.ndarray:
        """A value's nonzero_counts, computed once for all who count it."""
        c = self.counts.get(name)
        if c is None:
            c = self.counts[name] = kernels.nonzero_counts(self.values[name])
        return c


class Program:
    """The operations of one artifact in one mode (module docstring); `keep`: nodes whose values
    the caller reads after a step (never fused away)."""

    def __init__(self, art: Artifact, keep, mode: str, use_torch: bool):
        self.use_torch = use_torch
        self.afresh = mode in ("once", "trials")
        self.fused = fusions(art, keep) if self.afresh else {}
        self.static: dict[str, float] = {}
        self.nonneg = ops.nonnegative(art.nodes)
        self.fires: dict[str, Fire] = {}
        self.biased: set[str] = set()     # products that add their neuron's offset, statically
        self.ops = [BUILDERS.get(node.kind, _generic)(self, node) for node in art.nodes]
        # a value is dropped after its last reader's operation (a large network's activations
        # are not all held at once), except what the driver reads after the step: the readout's
        # input, recorded nodes, and the sources of recurrent edges (next step's `previous`)
        last: dict[str, int] = {}
        for i, node in enumerate(art.nodes):
            for name in node.inputs:
                last[name] = i
        kept = set(keep) | {art.output} | {getattr(n, "source", None) for n in art.nodes}
        self.frees: list[list[str]] = [[] for _ in art.nodes]
        for name, i in last.items():
            if name not in kept:
                self.frees[i].append(name)

    def step(self, s: driver.Step) -> dict[str, np.ndarray]:
        r = Run(s.x, s.previous, s.state, s.binary, s.count, s.stats)
        r.values, r.bounds, r.biased, r.counts, r.done = {}, dict(self.static), set(), {}, set()
        for op, free in zip(self.ops, self.frees):
            op(r)
            for name in free:
                r.values.pop(name, None)
        return r.values

    def fire(self, node) -> Fire:
        if node.name not in self.fires:
            self.fires[node.name] = Fire(batched(node.bias), batched(node.threshold), node.lo,
                                         node.hi)
        return self.fires[node.name]

    def derived(self, node, rule) -> None:
        """A static bound for `node` by `rule(input bounds)` when every input has one."""
        if all(i in self.static for i in node.inputs):
            self.static[node.name] = rule([self.static[i] for i in node.inputs])


def _generic(p: Program, node):
    """Any kind without a fast form: its own int64 evaluation."""
    name, srcs = node.name, node.inputs

    def op(r):
        r.values[name] = node.evaluate([as_int(r.values[i]) for i in srcs], r)
    return op


@builds("input")
def _input(p: Program, node):
    name, inv, lo, hi = node.name, node.inv_scale, node.lo, node.hi
    p.static[name] = float(max(abs(lo), abs(hi)))

    def op(r):
        r.values[name], clipped = encode_input_exact(r.x, inv, lo, hi)
        r.stats[name].clipped += clipped
    return op


def one_pass(node) -> bool:
    """The T = 1 multi-threshold neuron (semantics.fire_once) applies to this neuron node when
    it starts afresh (no state kept from an earlier step)."""
    return node.fire == "uniform" and node.reset == "subtract" \
        and node.decay == semantics.LEAK_ONE and node.start == "half"


@builds("neuron")
def _neuron(p: Program, node):
    name, src, lo, hi = node.name, node.inputs[0], node.lo, node.hi
    # in a trial, one_pass picks the neurons with reset "subtract": the ones whose state the
    # driver drops after every step (a leaky neuron, reset "none", keeps its own)
    if not (p.afresh and one_pass(node)):
        return _generic(p, node)
    fire, use_torch = p.fire(node), p.use_torch
    p.static[name] = fire.levels
    # the fire's plan made here when its input's bound (so its form) is static; a product
    # whose dtype and bias wait for the data has no static bound
    plan = FirePlan(fire, p.static[src], src in p.biased) if src in p.static else None

    def op(r):       # the one-pass neuron, in floats
        if name in r.done:          # fired by its convolution (`joined` in _product)
            return
        fp = plan or FirePlan(fire, r.bound(src), src in r.biased)
        out, sat = fp.apply(r.values[src], use_torch)
        r.values[name] = out
        count_neuron(r.stats[name], out, sat, lo, hi, r.count,
                     (lambda: r.nonzero(name)) if r.count else None)
    return op


@builds("readout")
def _readout(p: Program, node):
    name, src = node.name, node.inputs[0]
    p.derived(node, lambda b: b[0])

    def op(r):
        r.values[name] = r.values[src]
    return op


@builds("dense", "conv")
def _product(p: Program, node):
    """Exact float products (int8 convolutions where they apply)."""
    name, src, dense = node.name, node.inputs[0], node.connectivity == "full"
    w, use_torch = Weights(node), p.use_torch
    neuron = p.fused.get(name)
    fire = p.fire(neuron) if neuron is not None else None
    bx = p.static.get(src)
    fixed = None
    if bx is not None and w.absum_int * bx < kernels.F32_EXACT:
        fixed = w.exact(bx, None, fire)
        p.static[name] = fixed[1]
        if fixed[2] is not None:
            p.biased.add(name)
    # a non-negative payload ≤ 255 with a float32 result: oneDNN's u8·s8 convolution
    int8 = not dense and use_torch and src in p.nonneg
    per_input = node.weight.shape[0] // (1 if dense else node.groups)
    out_hw = node.shape[-2:]
    # an int8 convolution with a static float32 bound and its neuron's offset as the bias
    # hands its output tensor straight to the neuron's fire (one call, no numpy round trip;
    # not when counting, which needs the current): the neuron then has nothing left to do
    joined = None
    if int8 and fixed is not None and fixed[2] is not None and fixed[0].dtype == np.float32 \
            and bx <= 255 and not w.floor and w.int8() is not None:
        plan = FirePlan(fire, fixed[1], biased=True)
        if plan.dtype is np.float32 and not plan.saturate:
            torch = torch_ops._torch()
            joined = (neuron.name, torch.from_numpy(fixed[2]), torch.from_numpy(plan.factor),
                      fire.lo, fire.hi, plan.reciprocal)

    def op(r):
        x = r.values[src]
        if joined is not None and not r.count:
            nname, bias_t, factor_t, lo, hi, reciprocal = joined
            n = torch_ops.conv_fire_int8(x, w.int8(), bias_t, factor_t, lo, hi, reciprocal)
            if n is not None:
                # the product's value is the array the fire overwrote, as in the fused
                # form below: nobody else reads it
                r.values[name] = r.values[nname] = n
                r.done.add(nname)
                return
        wf, bound, bias = fixed if fixed is not None else w.exact(r.bound(src), x, fire)
        if wf is None:
            r.values[name] = node.evaluate([as_int(x)], r)
            return
        if dense:
            out = dense_exact(x, wf, use_torch, bias)
        else:
            out = None
            if int8 and wf.dtype == np.float32 and r.bound(src) <= 255:
                packed = w.int8()
                if packed is not None:
                    out = torch_ops.conv2d_int8(x, packed, bias)
            if out is None:
                out = conv2d_exact(x, wf, node.stride, node.pads, node.dilation, node.groups,
                                   out_hw, use_torch, bias)
        if w.floor:     # a negative exponent: the contract's right shift of the accumulator
            np.floor(out, out=out)
        r.values[name] = out
        r.bounds[name] = bound
        if bias is not None:
            r.biased.add(name)
        if r.count:
            if dense:
                r.stats[name].synops += int(r.nonzero(src).sum()) * per_input
            else:
                r.stats[name].synops += node.window_synops(x, r.nonzero(src))
    return op


@builds("sumpool")
def _sumpool(p: Program, node):
    name, src, use_torch = node.name, node.inputs[0], p.use_torch
    taps = math.prod(node.kernel)
    p.derived(node, lambda b: b[0] * taps)

    def op(r):
        bound = r.bound(src) * taps
        dtype = kernels.exact_dtype(bound) or np.int64
        x = r.values[src]
        r.values[name] = sum_pool_exact(x if dtype is not np.int64 else as_int(x), node.kernel,
                                        node.stride, node.pads, node.shape[-2:], dtype,
                                        use_torch)
        r.bounds[name] = bound
        if r.count:
            r.stats[name].synops += node.window_synops(x, r.nonzero(src))
    return op


@builds("maxpool")
def _maxpool(p: Program, node):
    name, src = node.name, node.inputs[0]
    p.derived(node, lambda b: b[0])

    def op(r):
        r.values[name] = kernels.max_pool(r.values[src], node.kernel, node.stride, node.pads,
                                          node.dilation, node.shape[-2:])
    return op


@builds("add")
def _add(p: Program, node):
    name, srcs = node.name, node.inputs
    gains = [np.asarray(g, dtype=np.int64) for g in node.gains]
    peaks = [float(np.abs(g).max(initial=0)) * 2.0 ** int(e) for g, e in zip(gains, node.exps)]
    floors = [int(e) < 0 for e in node.exps]    # right-shift gains: each term floored
    # the terms' products before the shift must be exact: Σ|g|·bound_i, unshifted
    unshifted = [float(np.abs(g).max(initial=0)) * max(1.0, 2.0 ** int(e))
                 for g, e in zip(gains, node.exps)]
    scaled: dict = {}         # dtype → the gains · 2^exp in it
    p.derived(node, lambda b: sum(pk * bi for pk, bi in zip(peaks, b)))

    def op(r):
        bound = sum(pk * r.bound(i) for pk, i in zip(peaks, srcs))
        dtype = kernels.exact_dtype(max(bound, max(u * r.bound(i)
                                                   for u, i in zip(unshifted, srcs))))
        ins = [r.values[i] for i in srcs]
        if dtype is None:
            r.values[name] = node.evaluate([as_int(i) for i in ins], r)
            return
        if dtype not in scaled:
            scaled[dtype] = [(g * 2.0 ** int(e)).astype(dtype)[None]
                             for g, e in zip(gains, node.exps)]
        total = None
        for g, xi, fl in zip(scaled[dtype], ins, floors):
            term = np.multiply(g, xi, dtype=dtype)
            if fl:
                np.floor(term, out=term)
            total = term if total is None else np.add(total, term, out=total)
        r.values[name] = total
        r.bounds[name] = bound
        if r.count:
            r.stats[name].synops += sum(int(r.nonzero(i).sum()) for i in srcs)
    return op


@builds("concat")
def _concat(p: Program, node):
    name, srcs, axis = node.name, node.inputs, node.axis + 1
    p.derived(node, max)

    def op(r):
        ins = [r.values[i] for i in srcs]
        if len({i.dtype for i in ins}) > 1:
            ins = [as_int(i) for i in ins] \
                if any(np.issubdtype(i.dtype, np.integer) for i in ins) \
                else [i.astype(np.float64, copy=False) for i in ins]
        r.values[name] = np.concatenate(ins, axis=axis)
    return op


@builds("reshape", "transpose")
def _index(p: Program, node):
    """Index maps of one input: the value's bound unchanged, its dtype kept."""
    name, src = node.name, node.inputs[0]
    p.derived(node, lambda b: b[0])

    def op(r):
        r.values[name] = node.apply([r.values[src]], False)[0]
    return op


@builds("select")
def _select(p: Program, node):
    """A constant gather on the float array as it is (its dtype kept, no int64 round trip); it
    copies values or writes 0, so its input's bound holds."""
    name, src = node.name, node.inputs[0]
    p.derived(node, lambda b: b[0])

    def op(r):
        r.values[name] = node.apply([r.values[src]], False)[0]
    return op


def fusions(art, keep) -> dict:
    """{dense/conv node: the one-pass neuron that is its only reader} for nodes whose value
    nobody else sees (not kept, recorded, read by a delay or the readout): these add the
    neuron's offset inside their product and the neuron skips that pass."""
    readers: dict[str, int] = {}
    kinds = {n.name: n.kind for n in art.nodes}
    for n in art.nodes:
        for i in n.inputs:
            readers[i] = readers.get(i, 0) + 1
        source = getattr(n, "source", None)
        if source is not None:
            readers[source] = readers.get(source, 0) + 2
    out = {}
    for n in art.nodes:
        if n.kind == "neuron" and one_pass(n):
            src = n.inputs[0]
            if readers.get(src) == 1 and src not in keep and src != art.output \
                    and BUILDERS.get(kinds[src]) is _product:
                out[src] = n
    return out


def count_neuron(st: LayerStats, out: np.ndarray, sat: int, lo: int, hi: int, count: bool,
                 nonzero=None):
    """LayerStats.add_spikes for a float array of payloads: saturations always, spikes and
    payload when counting. `nonzero()`: out's nonzero_counts, shared with the synapses that
    count the same spikes."""
    if not np.issubdtype(out.dtype, np.floating):
        st.add_spikes(out, sat, count)
        return
    st.saturations += sat
    if not count:
        return
    # count_nonzero of a whole float array is ~10× slower than of the comparison's
    # booleans; the payload, a sum of exact integers, is summed in float64 (exact < 2⁵³)
    st.spikes += int(nonzero().sum()) if nonzero else int(np.count_nonzero(out != 0))
    mag = out if lo >= 0 else np.abs(out)
    if out[:1].size * float(max(abs(lo), abs(hi))) < kernels.F32_EXACT:
        # per-sample sums are exact in the array's own dtype: sum those, then them in float64
        st.payload += int(mag.sum(axis=tuple(range(1, out.ndim))).sum(dtype=np.float64))
    else:
        st.payload += int(mag.sum(dtype=np.float64))


PROGRAMS: dict[tuple, tuple] = {}


def _signature(art: Artifact) -> list:
    """The objects a program was built from: the node list, every node and every field value
    (compared by identity: a node or parameter replaced by another object rebuilds the program;
    artifact arrays are not changed in place)."""
    return [art.nodes, art.input, art.output] + \
        [v for n in art.nodes for v in (n, *vars(n).values())]


def program(art: Artifact, keep, mode: str, use_torch: bool) -> Program:
    """The program for `art` in `mode`, made once and reused while the artifact holds the very
    same objects (the entry keeps them alive, so their ids cannot be reused while it stands)."""
    key = (id(art), frozenset(keep), mode, use_torch, torch_ops.int8_state())
    sig = _signature(art)
    hit = PROGRAMS.get(key)
    if hit is not None and hit[0]() is art and len(hit[1]) == len(sig) \
            and all(a is b for a, b in zip(hit[1], sig)):
        return hit[2]
    built = Program(art, keep, mode, use_torch)
    PROGRAMS[key] = (weakref.ref(art, lambda _r, k=key: PROGRAMS.pop(k, None)), sig, built)
    return built
