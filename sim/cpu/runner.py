"""sim.cpu: execute an SFN artifact on a batch, bit-exact to the integer contract.

T = 1 (default): one pass, every neuron a multi-threshold neuron. T > 1: the network runs T steps
on the same encoded input, neurons keep their state and reset by subtraction, spikes are graded
(levels per step) or binary; the readout averages the accumulator over T. Counts spikes, synaptic
operations and state saturations per node.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sim import semantics
from sim.artifact import Artifact
from sim.cpu import kernels
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
    return x, {n.name: LayerStats(neurons=int(np.prod(n.shape)) if n.kind == "neuron" else 0)
               for n in art.nodes}


def run(art: Artifact, x: np.ndarray, timesteps: int = 1, binary: bool = False,
        batch_size: int = 1024, count: bool = True, progress=None,
        record: tuple[str, ...] = ()) -> SimResult:
    """Run `art` on float inputs x and return the readout.

    Feed-forward networks: x is (N, *input_shape); the graph runs `timesteps` steps on the same
    encoded input and the readout averages the accumulator (T = 1: one multi-threshold pass).
    Recurrent networks (a Delay node): x is (N, T, *input_shape), one trial per row; every step
    encodes x[:, t], memoryless neurons start afresh, leaky (reset "none") neurons and delays carry
    their state through the trial, and the readout is per step: output (N, T, *output_shape).
    `progress(n)` is called after each batch of n samples; `record` names nodes whose integer
    values are returned in `SimResult.recorded`.
    """
    x, stats = prepare_run(art, x, timesteps)
    unknown = [r for r in record if r not in stats]
    if unknown:
        raise SimulationError(f"cannot record {unknown}: no such nodes")
    outs, accs = [], []
    kept: dict[str, list[np.ndarray]] = {r: [] for r in record}
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


def _step(art, x, values, previous, state, binary, count, stats):
    """Evaluate every node once; `previous` holds last step's values (for Delay nodes)."""
    for node in art.nodes:
        ins = [values[i] for i in node.inputs]
        kind = node.kind
        if kind == "input":
            values[node.name] = semantics.encode_input(x, node.inv_scale, node.lo, node.hi)
        elif kind == "neuron":
            values[node.name] = _neuron_step(node, ins[0], state, binary, stats[node.name])
        elif kind == "delay":
            prev = previous.get(node.source)
            values[node.name] = np.zeros((len(x),) + tuple(node.shape), np.int64) \
                if prev is None else prev
        elif kind == "readout":
            values[node.name] = ins[0]
        else:
            values[node.name], synops = evaluate_synapse(node, ins, count)
            stats[node.name].synops += synops
    return values


def _run_batch(art, x, timesteps, binary, count, stats, record=()):
    # one graded pass (T = 1) keeps no neuron state: the one-pass neuron applies. Binary spikes
    # at T = 1 are the integrate-and-fire form, which the general path computes.
    state: dict[str, np.ndarray] | None = {} if timesteps > 1 or binary else None
    acc_sum = 0
    rec = {r: 0 for r in record}
    for _ in range(timesteps):
        values = _step(art, x, {}, {}, state, binary, count, stats)
        acc_sum = acc_sum + values[art.output]
        for r in record:
            rec[r] = rec[r] + values[r]
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
        values = _step(art, x[:, t], {}, values, state, False, count, stats)
        accs.append(values[art.output])
        for r in record:
            rec[r].append(values[r])
    acc = np.stack(accs, axis=1)
    readout = art.node(art.output)
    out = semantics.readout(acc, _broadcast(readout.bias)[:, None], _broadcast(readout.scale)[:, None], 1)
    return out, acc, {r: np.stack(v, axis=1) for r, v in rec.items()}


def _neuron_step(node, current, state, binary, st: LayerStats):
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
    st.saturations += sat
    st.spikes += int(np.count_nonzero(out))
    st.payload += int(np.abs(out).sum())
    return out
