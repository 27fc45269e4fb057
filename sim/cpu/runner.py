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


_CONSTS: dict[int, tuple] = {}


def _consts(node, params: tuple, make):
    """Constants derived from a node's parameters, made once and reused while the node holds
    the very same parameter objects (a parameter replaced by another object remakes them;
    artifact arrays are not changed in place). The entry keeps the objects alive, so their ids
    cannot be reused while it stands."""
    ids = tuple(map(id, params))
    hit = _CONSTS.get(id(node))
    if hit is not None and hit[1] == ids and hit[0]() is node:
        return hit[3]
    value = make()
    key = id(node)
    _CONSTS[key] = (weakref.ref(node, lambda _r, k=key: _CONSTS.pop(k, None)), ids, params, value)
    return value


class _Weights:
    """A dense/conv node's weights · 2^exp as float arrays (one per dtype) and Σ|W|·2^exp, the
    largest over output channels."""

    def __init__(self, node):
        axes = tuple(range(1, node.weight.ndim))
        self.scale = _pow2(node.weight_exp)
        self.absum = float(np.abs(node.weight.astype(np.int64)).sum(axis=axes).max(initial=0)) \
            * self.scale
        self.weight, self._cast = node.weight, {}
        self._int8: tuple | None = None          # (geometry, packed or None)

    def int8(self, node):
        """The oneDNN int8 packing of a conv node's weights (torch_ops.pack_int8_conv), made
        on first use; None where that path does not apply."""
        geometry = (tuple(node.stride), tuple(node.pads), tuple(node.dilation), node.groups)
        if self._int8 is None or self._int8[0] != geometry:
            self._int8 = (geometry, torch_ops.pack_int8_conv(self.weight, node.weight_exp,
                                                             *geometry))
        return self._int8[1]

    def cast(self, dtype) -> np.ndarray:
        key = np.dtype(dtype)
        if key not in self._cast:
            w = self.weight.astype(dtype) * dtype(self.scale)
            if w.ndim == 4:   # channels-last memory, the layout the kernels take without a copy
                w = np.ascontiguousarray(w.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
            self._cast[key] = w
        return self._cast[key]


def _weights(node) -> _Weights:
    return _consts(node, (node.weight, node.weight_exp), lambda: _Weights(node))


def _fire(node) -> kernels.Fire:
    return _consts(node, (node.bias, node.threshold, node.lo, node.hi),
                   lambda: kernels.Fire(_broadcast(node.bias), _broadcast(node.threshold),
                                        node.lo, node.hi))


def _weight_exact(node, bx, x, neuron=None):
    """(float weight · 2^exp in the exact dtype, bound of the output, bias) or (None, None, None).

    With `neuron` (the one-pass neuron that alone reads this node) the product also adds the
    neuron's offset b + θ//2 per output channel, in the dtype the neuron's fire needs (bias
    None when the offset is not channel-wise or no float dtype is exact)."""
    w = _weights(node)
    if w.absum * bx >= kernels.F32_EXACT:           # static bound too loose? measure the input
        bx = min(bx, kernels.max_abs(x))
    bound, bias = w.absum * bx, None
    dtype = kernels.exact_dtype(bound)
    if neuron is not None:
        fire = _fire(neuron)
        offset = fire.offset[0]                 # (C, 1, 1) or (C,): channel-wise?
        if offset.ndim and offset.shape[0] == node.weight.shape[0] \
                and all(d == 1 for d in offset.shape[1:]):
            vbound = bound + fire.offset_max
            fdtype = fire.dtype(vbound)
            if fdtype is not None:
                dtype, bound, bias = fdtype, vbound, fire.cast(fdtype)[0].reshape(-1)
    if dtype is None:
        return None, None, None
    return w.cast(dtype), bound, bias


def _synapse_exact(node, ins, bounds, count, use_torch, neuron=None, nonzero=None,
                   nonneg=False):
    """evaluate_synapse for the batched runner: inputs and output are exact integers held in
    float32/float64 where a bound proves it exact (else int64). Returns (value, bound of |value|
    or None when unknown, synops, biased): biased when a dense/conv node fed only by `neuron`
    (one-pass) added that neuron's offset b + θ//2 (see _weight_exact). `nonzero(k)`: the
    nonzero_counts of input k (shared with whoever else counts that value). `nonneg`: the input
    is known ≥ 0 — with a bound ≤ 255 and a float32 result a conv may run as oneDNN's int8
    convolution (torch_ops.conv2d_int8), same values."""
    nonzero = nonzero or (lambda k: kernels.nonzero_counts(ins[k]))
    kind = node.kind
    x = ins[0]
    if kind in ("dense", "conv"):
        wf, bound, bias = _weight_exact(node, bounds[0], x, neuron)
        if wf is None:
            out, synops = _synapse(node, _as_int(x), count)
            return out, None, synops, False
        if kind == "dense":
            out = kernels.dense_exact(x, wf, use_torch, bias)
            synops = int(nonzero(0).sum()) * node.weight.shape[0] if count else 0
        else:
            out = None
            if use_torch and nonneg and bounds[0] <= 255 and wf.dtype == np.float32:
                packed = _weights(node).int8(node)
                if packed is not None:
                    out = torch_ops.conv2d_int8(x, packed, bias)
            if out is None:
                out = kernels.conv2d_exact(x, wf, node.stride, node.pads, node.dilation,
                                           node.groups, _out_hw(node), use_torch, bias)
            synops = kernels.window_synops(x, _fanout(node, x.shape[-2:]),
                                           node.weight.shape[0] // node.groups,
                                           nonzero(0)) if count else 0
        return out, bound, synops, bias is not None
    if kind == "sumpool":
        bound = bounds[0] * math.prod(node.kernel)
        dtype = kernels.exact_dtype(bound) or np.int64
        out = kernels.sum_pool(x if dtype is not np.int64 else _as_int(x), node.kernel,
                               node.stride, node.pads, _out_hw(node), dtype, use_torch)
        synops = kernels.window_synops(x, _fanout(node, x.shape[-2:]), 1,
                                       nonzero(0)) if count else 0
        return out, bound, synops, False
    if kind == "maxpool":
        return kernels.max_pool(x, node.kernel, node.stride, node.pads, node.dilation,
                                _out_hw(node)), bounds[0], 0, False
    if kind == "add":
        gains = [np.asarray(g, dtype=np.int64) for g in node.gains]
        bound = sum(float(np.abs(g).max(initial=0)) * _pow2(e) * b
                    for g, e, b in zip(gains, node.exps, bounds))
        dtype = kernels.exact_dtype(bound)
        if dtype is None:
            out, synops = evaluate_synapse(node, [_as_int(i) for i in ins], count)
            return out, None, synops, False
        total, synops = None, 0
        for k, (g, e, xi) in enumerate(zip(gains, node.exps, ins)):
            term = np.multiply((g * 2 ** int(e)).astype(dtype)[None], xi, dtype=dtype)
            total = term if total is None else np.add(total, term, out=total)
            synops += int(nonzero(k).sum()) if count else 0
        return total, bound, synops, False
    if kind == "concat":
        if len({i.dtype for i in ins}) > 1:
            ins = [_as_int(i) for i in ins] if any(np.issubdtype(i.dtype, np.integer)
                                                   for i in ins) \
                else [i.astype(np.float64, copy=False) for i in ins]
        return np.concatenate(ins, axis=node.axis + 1), max(bounds), 0, False
    out, synops = evaluate_synapse(node, ins, count)   # reshape, transpose: index maps
    return out, bounds[0], synops, False


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
        record: tuple[str, ...] = (), threads: int | None = 1) -> SimResult:
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
    intra-op threads during the run, restored after (None: torch's own setting). One thread by
    default: on a shared machine every multi-threaded kernel waits for a busy core, which costs
    more than the second thread saves on these small layers (README, "Speed").
    """
    x, stats = prepare_run(art, x, timesteps)
    unknown = [r for r in record if r not in stats]
    if unknown:
        raise SimulationError(f"cannot record {unknown}: no such nodes")
    outs, accs = [], []
    kept: dict[str, list[np.ndarray]] = {r: [] for r in record}
    with torch_ops.session(threads if USE_TORCH else None):
        for start in range(0, len(x), batch_size):
            chunk = x[start:start + batch_size]
            if art.recurrent:
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
    shape = (0,) + ((x.shape[1],) if art.recurrent else ()) + tuple(readout.shape)
    lead = shape[:-len(readout.shape)] if readout.shape else shape
    recorded = {r: np.concatenate(v) if v else np.zeros(lead + tuple(art.node(r).shape), np.int64)
                for r, v in kept.items()}
    return SimResult(np.concatenate(outs) if outs else np.zeros(shape, np.float32),
                     np.concatenate(accs) if accs else np.zeros(shape, np.int64),
                     stats, len(x), timesteps, recorded)


def _one_pass(node, state) -> bool:
    """The T = 1 multi-threshold neuron (semantics.fire_once) applies to this neuron node."""
    return state is None and node.fire == "uniform" and node.reset == "subtract" \
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
        if n.kind == "neuron" and _one_pass(n, None):
            src = n.inputs[0]
            if readers.get(src) == 1 and src not in keep and src != art.output \
                    and kinds[src] in ("conv", "dense"):
                out[src] = n
    return out


def _step(art, x, values, previous, state, binary, count, stats, fast=False, keep=()):
    """Evaluate every node once; `previous` holds last step's values (for Delay nodes).

    fast=False: every value is int64 (the contract's form). fast=True (the batched runner): values
    may be float32/float64 arrays of exact integers — each kernel picks the dtype from a bound on
    its inputs — and the callers convert what they keep (readout, records) to int64. `keep`
    names nodes the caller reads after the step: their values stay the node's own."""
    use_torch = fast and USE_TORCH
    bounds: dict[str, float] = {}
    fused = _fusions(art, keep) if fast and state is None else {}
    biased: set[str] = set()
    counts: dict[str, np.ndarray] = {}
    nonneg: set[str] = set()    # values known ≥ 0: neurons with lo ≥ 0 and index maps of them

    def nonzero(name):      # a value's nonzero_counts, computed once for all who count it
        if name not in counts:
            counts[name] = kernels.nonzero_counts(values[name])
        return counts[name]

    def bound(name):
        if name not in bounds:
            bounds[name] = kernels.max_abs(values[name])
        return bounds[name]

    for node in art.nodes:
        ins = [values[i] for i in node.inputs]
        kind = node.kind
        name = node.name
        if (kind in ("input", "neuron") and node.lo >= 0) or (
                kind in ("sumpool", "maxpool", "concat", "reshape", "transpose")
                and all(i in nonneg for i in node.inputs)):
            nonneg.add(name)
        if kind == "input":
            if fast:
                values[name] = kernels.encode_input_exact(x, node.inv_scale, node.lo, node.hi)
                bounds[name] = float(max(abs(node.lo), abs(node.hi)))
            else:
                values[name] = semantics.encode_input(x, node.inv_scale, node.lo, node.hi)
        elif kind == "neuron":
            if fast and _one_pass(node, state):     # the one-pass neuron, in floats
                out, sat, bounds[name] = kernels.fire_once_exact(
                    ins[0], bound(node.inputs[0]), _broadcast(node.bias),
                    _broadcast(node.threshold), node.lo, node.hi, use_torch,
                    biased=node.inputs[0] in biased, fire=_fire(node))
                values[name] = out
                _count_neuron(stats[name], out, sat, node.lo, node.hi, count,
                              (lambda: nonzero(name)) if count else None)
            else:
                values[name] = _neuron_step(node, _as_int(ins[0]), state, binary, stats[name],
                                            count)
        elif kind == "delay":
            prev = previous.get(node.source)
            values[name] = np.zeros((len(x),) + tuple(node.shape), np.int64) \
                if prev is None else prev
        elif kind == "readout":
            values[name] = ins[0]
        elif fast:
            values[name], b, synops, with_offset = _synapse_exact(
                node, ins, [bound(i) for i in node.inputs], count, use_torch, fused.get(name),
                lambda k: nonzero(node.inputs[k]), nonneg=node.inputs[0] in nonneg)
            if b is not None:
                bounds[name] = b
            if with_offset:
                biased.add(name)
            stats[name].synops += synops
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
                       keep=record)
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
