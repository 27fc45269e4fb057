"""sim.cpu: execute an SFN artifact on a batch, bit-exact to the integer contract.

T = 1 (default): one pass, every neuron a multi-threshold neuron. T > 1: the network runs T steps
on the same encoded input, neurons keep their state and reset by subtraction, spikes are graded
(levels per step) or binary; the readout averages the accumulator over T. Counts spikes, synaptic
operations and state saturations per node.
"""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field

import numpy as np

from sim import semantics
from sim.artifact import Artifact
from sim.cpu import kernels, torch_ops
from toolchain.errors import ShapeError, SimulationError


@dataclass
class LayerStats:
    """Totals over all samples and timesteps of one node."""
    spikes: int = 0          # nonzero payloads emitted (neurons)
    payload: int = 0         # Σ|payload| emitted (neurons)
    synops: int = 0          # synaptic operations: nonzero input × fan-out (synapses)
    saturations: int = 0     # 24-bit state clips (neurons)
    neurons: int = 0         # neurons per sample


@dataclass
class SimResult:
    output: np.ndarray                    # float32 (N, *output_shape), before softmax
    accumulator: np.ndarray               # int64 (N, *output_shape), Σ_t readout accumulator
    stats: dict[str, LayerStats] = field(default_factory=dict)
    samples: int = 0
    timesteps: int = 1
    # integer values of the nodes asked for with run(record=...): (N, *shape), summed over the
    # steps of a feed-forward run, or (N, T, *shape) per step of a recurrent one
    recorded: dict[str, np.ndarray] = field(default_factory=dict)

    def probabilities(self, softmax: str) -> np.ndarray:
        if softmax in ("softmax", "logsoftmax"):
            return semantics.softmax(self.output, log=softmax == "logsoftmax")
        return self.output


def _out_hw(node):
    return node.shape[-2:]


_FANOUT: dict = {}

# The batched runner's matrix products and convolutions go through torch's oneDNN/MKL kernels
# when torch imports and can vouch for exactness (sim/cpu/torch_ops.py), else numpy's BLAS.
# False: numpy only. `evaluate_synapse` (what the Lava process models call) is numpy only.
USE_TORCH = True


def _fanout(node, in_hw):
    key = (node.kind, tuple(in_hw), tuple(node.kernel if node.kind == "sumpool" else
                                          node.weight.shape[2:]), node.stride, node.pads,
           getattr(node, "dilation", (1, 1)), tuple(node.shape[-2:]))
    if key not in _FANOUT:
        _FANOUT[key] = kernels.fanout_map(in_hw, key[2], node.stride, node.pads, key[5],
                                          node.shape[-2:])
    return _FANOUT[key]


def evaluate_synapse(node, ins: list[np.ndarray], count: bool) -> tuple[np.ndarray, int]:
    """Value and synaptic operations of one synapse or index node on a batch (shared by both
    backends). SynOps: nonzero input × fan-out for dense/conv/sum-pool, nonzero inputs for add,
    none for max-pool and index maps."""
    kind = node.kind
    if kind == "add":
        total, synops = 0, 0
        for gain, x, exp in zip(node.gains, ins, node.exps):
            total = total + ((_broadcast(gain) * x) << exp)
            synops += int(np.count_nonzero(x)) if count else 0
        return total, synops
    if kind == "concat":
        return np.concatenate(ins, axis=node.axis + 1), 0
    if kind == "reshape":
        return ins[0].reshape((len(ins[0]),) + tuple(node.shape)), 0
    if kind == "transpose":
        return ins[0].transpose((0,) + tuple(p + 1 for p in node.perm)), 0
    return _synapse(node, ins[0], count)


def _synapse(node, x, count):
    if node.kind == "dense":
        absum = np.abs(node.weight.astype(np.int64)).sum(axis=1).max(initial=0)
        dtype = kernels.exact_float_dtype(float(absum) * float(np.abs(x).max(initial=0)))
        out = kernels.dense(x, node.weight, dtype) << node.weight_exp
        synops = int(np.count_nonzero(x)) * node.weight.shape[0] if count else 0
        return out, synops
    if node.kind == "conv":
        absum = np.abs(node.weight.astype(np.int64)).sum(axis=(1, 2, 3)).max(initial=0)
        dtype = kernels.exact_float_dtype(float(absum) * float(np.abs(x).max(initial=0)))
        out = kernels.conv2d(x, node.weight, node.stride, node.pads, node.dilation, node.groups,
                             _out_hw(node), dtype) << node.weight_exp
        synops = kernels.window_synops(x, _fanout(node, x.shape[-2:]),
                                       node.weight.shape[0] // node.groups) if count else 0
        return out, synops
    if node.kind == "sumpool":
        out = kernels.sum_pool(x, node.kernel, node.stride, node.pads, _out_hw(node))
        synops = kernels.window_synops(x, _fanout(node, x.shape[-2:]), 1) if count else 0
        return out, synops
    if node.kind == "maxpool":
        return kernels.max_pool(x, node.kernel, node.stride, node.pads, node.dilation,
                                _out_hw(node)), 0
    raise SimulationError(f"node {node.name!r}: sim.cpu has no kernel for kind {node.kind!r}")


def _as_int(x: np.ndarray) -> np.ndarray:
    return x if np.issubdtype(x.dtype, np.integer) else x.astype(np.int64)


def _pow2(e: int) -> float:
    return float(2 ** int(e))


class _Weights:
    """A dense/conv node's weights · 2^exp as float arrays (one per dtype) and Σ|W|·2^exp, the
    largest over output channels."""

    def __init__(self, node):
        axes = tuple(range(1, node.weight.ndim))
        self.scale = _pow2(node.weight_exp)
        self.absum = float(np.abs(node.weight.astype(np.int64)).sum(axis=axes).max(initial=0)) \
            * self.scale
        self.weight, self._cast = node.weight, {}
        self._int8: tuple | None = None          # (packed or None,) once made

    def int8(self, node):
        """The oneDNN int8 packing of a conv node's weights (torch_ops.pack_int8_conv), made
        on first use; None where that path does not apply."""
        if self._int8 is None:
            self._int8 = (torch_ops.pack_int8_conv(self.weight, node.weight_exp, node.stride,
                                                   node.pads, node.dilation, node.groups),)
        return self._int8[0]

    def cast(self, dtype) -> np.ndarray:
        key = np.dtype(dtype)
        if key not in self._cast:
            w = self.weight.astype(dtype) * dtype(self.scale)
            if w.ndim == 4:   # channels-last memory, the layout the kernels take without a copy
                w = np.ascontiguousarray(w.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
            self._cast[key] = w
        return self._cast[key]

    def exact(self, bx: float, x, fire: kernels.Fire | None = None):
        """(float weight · 2^exp in the exact dtype, bound of the output, bias) for an input
        bounded by `bx`, or (None, None, None) when no float dtype is exact. `x`: the input, to
        measure when the bound is too loose for float32 (None: keep the bound).

        With `fire` (the constants of the one-pass neuron that alone reads this node) the
        product also adds the neuron's offset b + θ//2 per output channel, in the dtype the
        fire needs (bias None when the offset is not channel-wise or no float dtype is exact)."""
        if x is not None and self.absum * bx >= kernels.F32_EXACT:
            bx = min(bx, kernels.max_abs(x))
        bound, bias = self.absum * bx, None
        dtype = kernels.exact_dtype(bound)
        if fire is not None:
            offset = fire.offset[0]                 # (C, 1, 1) or (C,): channel-wise?
            if offset.ndim and offset.shape[0] == self.weight.shape[0] \
                    and all(d == 1 for d in offset.shape[1:]):
                vbound = bound + fire.offset_max
                fdtype = fire.dtype(vbound)
                if fdtype is not None:
                    # the offset in the form the fire takes it (+1/2 where it multiplies)
                    offset = fire.cast(fdtype, fire.reciprocal(vbound, fdtype))[0]
                    dtype, bound, bias = fdtype, vbound, offset.reshape(-1)
        if dtype is None:
            return None, None, None
        return self.cast(dtype), bound, bias


class _Run:
    """What the operations of one program step share: the batch, the values made so far, their
    bounds (static ones seeded, others measured once when asked), and per-step counts."""
    __slots__ = ("x", "previous", "state", "binary", "count", "stats", "values", "bounds",
                 "biased", "counts", "done")

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


class _Program:
    """An artifact compiled for the batched runner: one operation per node, in graph order.

    What does not depend on the data is decided here, once: which values are non-negative, a
    bound on every value the graph proves one for (inputs and one-pass neurons by their levels,
    products and sums from those), hence the float dtype each product is exact in, the weights
    cast to it, which dense/conv adds its neuron's offset as a bias (`_fusions`), which
    convolutions may run in int8, and the fire constants. A bound the graph cannot prove (a
    stateful neuron's output, a product whose static bound is too loose for float32) is measured
    on the data when a reader needs it. `mode`: "once" (T = 1, graded, feed-forward: no neuron
    keeps a state), "trials" (a recurrent trial: only the leaky neurons, reset "none", keep
    theirs; every other neuron starts afresh each step) or "state" (T > 1 or binary spikes: every
    neuron keeps its state). Where a neuron starts afresh, the one-pass multi-threshold neuron
    applies; `keep`: nodes whose values the caller reads after a step (never fused away)."""

    def __init__(self, art: Artifact, keep, mode: str, use_torch: bool):
        self.use_torch = use_torch
        self.afresh = mode in ("once", "trials")
        self.fused = _fusions(art, keep) if self.afresh else {}
        self.static: dict[str, float] = {}
        self.nonneg: set[str] = set()     # values known ≥ 0: neurons with lo ≥ 0, index maps of them
        self.fires: dict[str, kernels.Fire] = {}
        self.biased: set[str] = set()     # products that add their neuron's offset, statically
        self.ops = []
        for node in art.nodes:
            kind = node.kind
            if (kind in ("input", "neuron") and node.lo >= 0) or (
                    kind in ("sumpool", "maxpool", "concat", "reshape", "transpose")
                    and all(i in self.nonneg for i in node.inputs)):
                self.nonneg.add(node.name)
            build = getattr(self, "_" + kind, None)
            if build is None:
                raise SimulationError(f"node {node.name!r}: sim.cpu has no kernel for kind "
                                      f"{kind!r}")
            self.ops.append(build(node))

    def step(self, x, previous, state, binary, count, stats) -> dict[str, np.ndarray]:
        r = _Run()
        r.x, r.previous, r.state, r.binary, r.count, r.stats = x, previous, state, binary, \
            count, stats
        r.values, r.bounds, r.biased, r.counts, r.done = {}, dict(self.static), set(), {}, set()
        for op in self.ops:
            op(r)
        return r.values

    def _fire(self, node) -> kernels.Fire:
        if node.name not in self.fires:
            self.fires[node.name] = kernels.Fire(_broadcast(node.bias),
                                                 _broadcast(node.threshold), node.lo, node.hi)
        return self.fires[node.name]

    def _derived(self, node, rule) -> None:
        """A static bound for `node` by `rule(input bounds)` when every input has one."""
        if all(i in self.static for i in node.inputs):
            self.static[node.name] = rule([self.static[i] for i in node.inputs])

    def _input(self, node):
        name, inv, lo, hi = node.name, node.inv_scale, node.lo, node.hi
        self.static[name] = float(max(abs(lo), abs(hi)))

        def op(r):
            r.values[name] = kernels.encode_input_exact(r.x, inv, lo, hi)
        return op

    def _neuron(self, node):
        name, src, lo, hi = node.name, node.inputs[0], node.lo, node.hi
        # in a trial, _one_pass picks the neurons with reset "subtract": the ones whose state
        # _run_trials drops after every step (a leaky neuron, reset "none", keeps its own)
        if not (self.afresh and _one_pass(node)):
            def op(r):
                r.values[name] = _neuron_step(node, _as_int(r.values[src]), r.state, r.binary,
                                              r.stats[name], r.count)
            return op
        fire, use_torch = self._fire(node), self.use_torch
        self.static[name] = fire.levels
        # the fire's plan made here when its input's bound (so its form) is static; a product
        # whose dtype and bias wait for the data has no static bound
        plan = kernels.FirePlan(fire, self.static[src], src in self.biased) \
            if src in self.static else None

        def op(r):       # the one-pass neuron, in floats
            if name in r.done:          # fired by its convolution (`joined` in _product)
                return
            p = plan or kernels.FirePlan(fire, r.bound(src), src in r.biased)
            out, sat = p.apply(r.values[src], use_torch)
            r.values[name] = out
            _count_neuron(r.stats[name], out, sat, lo, hi, r.count,
                          (lambda: r.nonzero(name)) if r.count else None)
        return op

    def _delay(self, node):
        name, source, shape = node.name, node.source, tuple(node.shape)

        def op(r):
            prev = r.previous.get(source)
            r.values[name] = np.zeros((len(r.x),) + shape, np.int64) if prev is None else prev
        return op

    def _readout(self, node):
        name, src = node.name, node.inputs[0]
        self._derived(node, lambda b: b[0])

        def op(r):
            r.values[name] = r.values[src]
        return op

    def _product(self, node):
        """dense and conv: exact float products (int8 convolutions where they apply)."""
        name, src, kind = node.name, node.inputs[0], node.kind
        w, use_torch = _Weights(node), self.use_torch
        neuron = self.fused.get(name)
        fire = self._fire(neuron) if neuron is not None else None
        bx = self.static.get(src)
        fixed = None
        if bx is not None and w.absum * bx < kernels.F32_EXACT:
            fixed = w.exact(bx, None, fire)
            self.static[name] = fixed[1]
            if fixed[2] is not None:
                self.biased.add(name)
        # a non-negative payload ≤ 255 with a float32 result: oneDNN's u8·s8 convolution
        int8 = kind == "conv" and use_torch and src in self.nonneg
        per_input = node.weight.shape[0] // node.groups if kind == "conv" else node.weight.shape[0]
        out_hw = _out_hw(node)
        # an int8 convolution with a static float32 bound and its neuron's offset as the bias
        # hands its output tensor straight to the neuron's fire (one call, no numpy round trip;
        # not when counting, which needs the current): the neuron then has nothing left to do
        joined = None
        if int8 and fixed is not None and fixed[2] is not None and fixed[0].dtype == np.float32 \
                and bx <= 255 and w.int8(node) is not None:
            plan = kernels.FirePlan(fire, fixed[1], biased=True)
            if plan.dtype is np.float32 and not plan.saturate:
                torch = torch_ops._torch()
                joined = (neuron.name, torch.from_numpy(fixed[2]), torch.from_numpy(plan.factor),
                          fire.lo, fire.hi, plan.reciprocal)

        def op(r):
            x = r.values[src]
            if joined is not None and not r.count:
                nname, bias_t, factor_t, lo, hi, reciprocal = joined
                n = torch_ops.conv_fire_int8(x, w.int8(node), bias_t, factor_t, lo, hi,
                                             reciprocal)
                if n is not None:
                    # the product's value is the array the fire overwrote, as in the fused
                    # form below: nobody else reads it
                    r.values[name] = r.values[nname] = n
                    r.done.add(nname)
                    return
            wf, bound, bias = fixed if fixed is not None else w.exact(r.bound(src), x, fire)
            if wf is None:
                out, synops = _synapse(node, _as_int(x), r.count)
                r.values[name] = out
                r.stats[name].synops += synops
                return
            if kind == "dense":
                out = kernels.dense_exact(x, wf, use_torch, bias)
            else:
                out = None
                if int8 and wf.dtype == np.float32 and r.bound(src) <= 255:
                    packed = w.int8(node)
                    if packed is not None:
                        out = torch_ops.conv2d_int8(x, packed, bias)
                if out is None:
                    out = kernels.conv2d_exact(x, wf, node.stride, node.pads, node.dilation,
                                               node.groups, out_hw, use_torch, bias)
            r.values[name] = out
            r.bounds[name] = bound
            if bias is not None:
                r.biased.add(name)
            if r.count:
                if kind == "dense":
                    r.stats[name].synops += int(r.nonzero(src).sum()) * per_input
                else:
                    r.stats[name].synops += kernels.window_synops(
                        x, _fanout(node, x.shape[-2:]), per_input, r.nonzero(src))
        return op

    _dense = _conv = _product

    def _sumpool(self, node):
        name, src, use_torch = node.name, node.inputs[0], self.use_torch
        taps = math.prod(node.kernel)
        self._derived(node, lambda b: b[0] * taps)

        def op(r):
            bound = r.bound(src) * taps
            dtype = kernels.exact_dtype(bound) or np.int64
            x = r.values[src]
            r.values[name] = kernels.sum_pool(x if dtype is not np.int64 else _as_int(x),
                                              node.kernel, node.stride, node.pads,
                                              _out_hw(node), dtype, use_torch)
            r.bounds[name] = bound
            if r.count:
                r.stats[name].synops += kernels.window_synops(x, _fanout(node, x.shape[-2:]), 1,
                                                              r.nonzero(src))
        return op

    def _maxpool(self, node):
        name, src = node.name, node.inputs[0]
        self._derived(node, lambda b: b[0])

        def op(r):
            r.values[name] = kernels.max_pool(r.values[src], node.kernel, node.stride,
                                              node.pads, node.dilation, _out_hw(node))
        return op

    def _add(self, node):
        name, srcs = node.name, node.inputs
        gains = [np.asarray(g, dtype=np.int64) for g in node.gains]
        peaks = [float(np.abs(g).max(initial=0)) * _pow2(e) for g, e in zip(gains, node.exps)]
        scaled: dict = {}         # dtype → the gains · 2^exp in it
        self._derived(node, lambda b: sum(p * bi for p, bi in zip(peaks, b)))

        def op(r):
            bound = sum(p * r.bound(i) for p, i in zip(peaks, srcs))
            dtype = kernels.exact_dtype(bound)
            ins = [r.values[i] for i in srcs]
            if dtype is None:
                out, synops = evaluate_synapse(node, [_as_int(i) for i in ins], r.count)
                r.values[name] = out
                r.stats[name].synops += synops
                return
            if dtype not in scaled:
                scaled[dtype] = [(g * 2 ** int(e)).astype(dtype)[None]
                                 for g, e in zip(gains, node.exps)]
            total = None
            for g, xi in zip(scaled[dtype], ins):
                term = np.multiply(g, xi, dtype=dtype)
                total = term if total is None else np.add(total, term, out=total)
            r.values[name] = total
            r.bounds[name] = bound
            if r.count:
                r.stats[name].synops += sum(int(r.nonzero(i).sum()) for i in srcs)
        return op

    def _concat(self, node):
        name, srcs, axis = node.name, node.inputs, node.axis + 1
        self._derived(node, max)

        def op(r):
            ins = [r.values[i] for i in srcs]
            if len({i.dtype for i in ins}) > 1:
                ins = [_as_int(i) for i in ins] \
                    if any(np.issubdtype(i.dtype, np.integer) for i in ins) \
                    else [i.astype(np.float64, copy=False) for i in ins]
            r.values[name] = np.concatenate(ins, axis=axis)
        return op

    def _index(self, node):
        """reshape and transpose: index maps, the value's bound unchanged."""
        name, src = node.name, node.inputs[0]
        self._derived(node, lambda b: b[0])

        def op(r):
            r.values[name] = evaluate_synapse(node, [r.values[src]], False)[0]
        return op

    _reshape = _transpose = _index


_PROGRAMS: dict[tuple, tuple] = {}


def _signature(art: Artifact) -> list:
    """The objects a program was built from: the node list, every node and every field value
    (compared by identity: a node or parameter replaced by another object rebuilds the program;
    artifact arrays are not changed in place)."""
    return [art.nodes, art.input, art.output] + \
        [v for n in art.nodes for v in (n, *vars(n).values())]


def _program(art: Artifact, keep, mode: str) -> _Program:
    """The program for `art` in `mode` (see _Program), made once and reused while the artifact
    holds the very same objects (the entry keeps them alive, so their ids cannot be reused while
    it stands)."""
    use_torch = USE_TORCH and torch_ops.available()
    key = (id(art), frozenset(keep), mode, use_torch, torch_ops.int8_state())
    sig = _signature(art)
    hit = _PROGRAMS.get(key)
    if hit is not None and hit[0]() is art and len(hit[1]) == len(sig) \
            and all(a is b for a, b in zip(hit[1], sig)):
        return hit[2]
    program = _Program(art, keep, mode, use_torch)
    _PROGRAMS[key] = (weakref.ref(art, lambda _r, k=key: _PROGRAMS.pop(k, None)), sig, program)
    return program


def _broadcast(param: np.ndarray) -> np.ndarray:
    """Channel-wise parameter → shape broadcastable against a (B, *shape) batch."""
    return np.asarray(param)[None]


def check_input(art: Artifact, x: np.ndarray) -> np.ndarray:
    """x must be finite floats of shape (N, *input_shape), or (N, T, *input_shape) for a
    recurrent artifact; anything else is a ShapeError naming both shapes."""
    x = np.asarray(x)
    expect = tuple(art.input_shape)
    lead = 2 if art.recurrent else 1
    if x.ndim != len(expect) + lead or tuple(x.shape[lead:]) != expect:
        want = "(N, T, " if art.recurrent else "(N, "
        raise ShapeError(f"input has shape {tuple(x.shape)}, the model expects {want}"
                         f"{', '.join(map(str, expect))})")
    if not np.issubdtype(x.dtype, np.floating):
        raise ShapeError(f"input dtype is {x.dtype}, expected a float array")
    if not np.all(np.isfinite(x)):
        raise ShapeError(f"input contains {int(np.count_nonzero(~np.isfinite(x)))} NaN/Inf values")
    return x


def prepare_run(art: Artifact, x: np.ndarray, timesteps: int) -> tuple[np.ndarray,
                                                                        dict[str, LayerStats]]:
    """The checks every backend makes before a run, and empty per-node statistics."""
    x = check_input(art, x)
    if timesteps < 1:
        raise SimulationError(f"timesteps must be ≥ 1, got {timesteps}")
    if timesteps > 1 and any(n.kind == "neuron" and n.fire == "adaptive" for n in art.nodes):
        raise SimulationError("adaptive fire functions are defined for T = 1 only")
    return x, {n.name: LayerStats(neurons=math.prod(n.shape) if n.kind == "neuron" else 0)
               for n in art.nodes}


def run(art: Artifact, x: np.ndarray, timesteps: int = 1, binary: bool = False,
        batch_size: int = 1024, count: bool = True, progress=None,
        record: tuple[str, ...] = (), threads: int | None = None) -> SimResult:
    """Run `art` on float inputs x and return the readout.

    Feed-forward networks: x is (N, *input_shape); the graph runs `timesteps` steps on the same
    encoded input and the readout averages the accumulator (T = 1: one multi-threshold pass).
    Recurrent networks (a Delay node): x is (N, T, *input_shape), one trial per row; every step
    encodes x[:, t], memoryless neurons start afresh, leaky (reset "none") neurons and delays carry
    their state through the trial, and the readout is per step: output (N, T, *output_shape).
    `progress(n)` is called after each batch of n samples; `record` names nodes whose integer
    values are returned in `SimResult.recorded`. count=False skips the activity statistics
    (spikes, payload, SynOps: zero in `stats`); saturations are counted either way.

    Inside a batch the values are exact integers held in float32/float64 wherever a bound proves
    that exact (see kernels.py), with convolutions and matrix products by torch when available
    (USE_TORCH); the readout accumulator and recorded values are int64. `threads`: torch's
    intra-op threads during the run, restored after; None (the default): torch's own setting,
    every core, as onnxruntime does. On the digits CNN two threads run a batch of 256 1.3–1.5×
    faster than one and 4,096 samples 1.6× faster; recurrent cells (many small steps) gain
    nothing from a second thread (README, "Speed"). threads=1 leaves the other cores alone.
    """
    x, stats = prepare_run(art, x, timesteps)
    unknown = [r for r in record if r not in stats]
    if unknown:
        raise SimulationError(f"cannot record {unknown}: no such nodes")
    outs, accs = [], []
    kept: dict[str, list[np.ndarray]] = {r: [] for r in record}
    recurrent = art.recurrent
    with torch_ops.session(threads if USE_TORCH else None):
        for start in range(0, len(x), batch_size):
            chunk = x[start:start + batch_size]
            if recurrent:
                out, acc, rec = _run_trials(art, chunk, count, stats, record)
            else:
                out, acc, rec = _run_batch(art, chunk, timesteps, binary, count, stats, record)
            outs.append(out)
            accs.append(acc)
            for r in record:
                kept[r].append(rec[r])
            if progress is not None:
                progress(len(out))
    readout = art.node(art.output)
    shape = (0,) + ((x.shape[1],) if recurrent else ()) + tuple(readout.shape)
    lead = shape[:-len(readout.shape)] if readout.shape else shape
    recorded = {r: _joined(v, lambda r=r: np.zeros(lead + tuple(art.node(r).shape), np.int64))
                for r, v in kept.items()}
    return SimResult(_joined(outs, lambda: np.zeros(shape, np.float32)),
                     _joined(accs, lambda: np.zeros(shape, np.int64)),
                     stats, len(x), timesteps, recorded)


def _joined(parts: list[np.ndarray], empty) -> np.ndarray:
    """The batches' arrays end to end (one batch: itself, no copy; none: `empty()`)."""
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(parts) if parts else empty()


def _one_pass(node) -> bool:
    """The T = 1 multi-threshold neuron (semantics.fire_once) applies to this neuron node when
    it starts afresh (no state kept from an earlier step)."""
    return node.fire == "uniform" and node.reset == "subtract" \
        and node.decay == semantics.LEAK_ONE


def _fusions(art, keep) -> dict:
    """{dense/conv node: the one-pass neuron that is its only reader} for nodes whose value
    nobody else sees (not kept, recorded, read by a delay or the readout): these add the
    neuron's offset inside their product and the neuron skips that pass."""
    readers: dict[str, int] = {}
    kinds = {n.name: n.kind for n in art.nodes}
    for n in art.nodes:
        for i in n.inputs:
            readers[i] = readers.get(i, 0) + 1
        if n.kind == "delay":
            readers[n.source] = readers.get(n.source, 0) + 2
    out = {}
    for n in art.nodes:
        if n.kind == "neuron" and _one_pass(n):
            src = n.inputs[0]
            if readers.get(src) == 1 and src not in keep and src != art.output \
                    and kinds[src] in ("conv", "dense"):
                out[src] = n
    return out


def _step(art, x, values, previous, state, binary, count, stats, fast=False, keep=(),
          trials=False):
    """Evaluate every node once; `previous` holds last step's values (for Delay nodes).

    fast=False: every value is int64 (the contract's form). fast=True (the batched runner): the
    artifact's program (`_Program`, made once): values may be float32/float64 arrays of exact
    integers — each kernel's dtype follows from a bound on its inputs — and the callers convert
    what they keep (readout, records) to int64. `keep` names nodes the caller reads after the
    step: their values stay the node's own. `trials`: a step of _run_trials (its memoryless
    neurons start afresh)."""
    if fast:
        mode = "once" if state is None else "trials" if trials else "state"
        return _program(art, keep, mode).step(x, previous, state, binary, count, stats)
    for node in art.nodes:
        ins = [values[i] for i in node.inputs]
        kind = node.kind
        name = node.name
        if kind == "input":
            values[name] = semantics.encode_input(x, node.inv_scale, node.lo, node.hi)
        elif kind == "neuron":
            values[name] = _neuron_step(node, _as_int(ins[0]), state, binary, stats[name], count)
        elif kind == "delay":
            prev = previous.get(node.source)
            values[name] = np.zeros((len(x),) + tuple(node.shape), np.int64) \
                if prev is None else prev
        elif kind == "readout":
            values[name] = ins[0]
        else:
            values[name], synops = evaluate_synapse(node, ins, count)
            stats[name].synops += synops
    return values


def _run_batch(art, x, timesteps, binary, count, stats, record=()):
    # one graded pass (T = 1) keeps no neuron state: the one-pass neuron applies. Binary spikes
    # at T = 1 are the integrate-and-fire form, which the general path computes.
    state: dict[str, np.ndarray] | None = {} if timesteps > 1 or binary else None
    acc_sum = 0
    rec = {r: 0 for r in record}
    for _ in range(timesteps):
        values = _step(art, x, {}, {}, state, binary, count, stats, fast=True, keep=record)
        acc_sum = acc_sum + _as_int(values[art.output])
        for r in record:
            rec[r] = rec[r] + _as_int(values[r])
    readout = art.node(art.output)
    out = semantics.readout(acc_sum, _broadcast(readout.bias), _broadcast(readout.scale), timesteps)
    return out, acc_sum, rec


def _run_trials(art, x, count, stats, record=()):
    persistent = {n.name for n in art.nodes if n.kind == "neuron" and n.reset == "none"}
    state: dict[str, np.ndarray] = {}
    values: dict[str, np.ndarray] = {}
    accs = []
    rec = {r: [] for r in record}
    for t in range(x.shape[1]):
        state = {k: v for k, v in state.items() if k in persistent}
        values = _step(art, x[:, t], {}, values, state, False, count, stats, fast=True,
                       keep=record, trials=True)
        accs.append(_as_int(values[art.output]))
        for r in record:
            rec[r].append(_as_int(values[r]))
    acc = np.stack(accs, axis=1)
    readout = art.node(art.output)
    out = semantics.readout(acc, _broadcast(readout.bias)[:, None], _broadcast(readout.scale)[:, None], 1)
    return out, acc, {r: np.stack(v, axis=1) for r, v in rec.items()}


def _neuron_step(node, current, state, binary, st: LayerStats, count: bool = True):
    """One step of a neuron node. `state` None means a single T = 1 pass: no state survives it."""
    theta = _broadcast(node.threshold)
    bias = _broadcast(node.bias)
    sat = 0
    one_pass = state is None
    state = {} if one_pass else state
    if node.fire == "adaptive":
        v, sat = semantics.saturate(current + bias)
        out = semantics.fire_adaptive(v, _broadcast(node.thresholds), node.payload)
    elif node.reset == "none":
        v = state.get(node.name, 0)
        if node.decay < semantics.LEAK_ONE:
            v, sat = semantics.saturate(semantics.leak(v, current + bias, node.decay))
        else:
            v, sat = semantics.saturate(current + bias)
        state[node.name] = v
        out = semantics.fire_state(v, theta, node.lo, node.hi)
    elif one_pass and node.decay == semantics.LEAK_ONE and node.reset == "subtract":
        out, sat = semantics.fire_once(current, bias, theta, node.lo, node.hi)
    else:
        k, lo_q, hi_q = semantics.spike_unit(node.lo, node.hi, binary)
        v = state.get(node.name)
        if v is None:
            v = np.broadcast_to(semantics.initial_state(theta, k), current.shape)
        if node.decay < semantics.LEAK_ONE:
            v, sat = semantics.saturate(semantics.leak(v, current + bias, node.decay))
        else:
            v, sat = semantics.saturate(v + current + bias)
        out, state[node.name] = semantics.fire_uniform(v, theta, k, lo_q, hi_q)
    _count_neuron(st, out, sat, node.lo, node.hi, count)
    return out


def _count_neuron(st: LayerStats, out: np.ndarray, sat: int, lo: int, hi: int, count: bool,
                  nonzero=None):
    """Saturations always (never silent); spikes and payload only when counting. `nonzero()`:
    out's nonzero_counts, shared with the synapses that count the same spikes."""
    st.saturations += sat
    if not count:
        return
    if np.issubdtype(out.dtype, np.floating):
        # count_nonzero of a whole float array is ~10× slower than of the comparison's
        # booleans; the payload, a sum of exact integers, is summed in float64 (exact < 2⁵³)
        st.spikes += int(nonzero().sum()) if nonzero else int(np.count_nonzero(out != 0))
        mag = out if lo >= 0 else np.abs(out)
        if out[:1].size * float(max(abs(lo), abs(hi))) < kernels.F32_EXACT:
            # per-sample sums are exact in the array's own dtype: sum those, then them in float64
            st.payload += int(mag.sum(axis=tuple(range(1, out.ndim))).sum(dtype=np.float64))
        else:
            st.payload += int(mag.sum(dtype=np.float64))
    else:
        st.spikes += int(np.count_nonzero(out))
        st.payload += int(np.abs(out).sum())
