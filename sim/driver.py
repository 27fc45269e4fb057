"""The loop every interpreter of the contract shares: batches, timesteps (feed-forward) or trial
steps (recurrent), the readout and what is recorded. A `step` function evaluates every node once
for one `Step` (sim.reference's in int64, sim.cpu's through its compiled program).

Feed-forward networks: x is (N, *input_shape); the graph runs T steps on the same encoded input
and the readout averages the accumulator. One graded pass (T = 1) keeps no neuron state
(`Step.state` None). Recurrent networks (a Delay node): x is (N, T, *input_shape), one trial per
row; every step encodes x[:, t], memoryless neurons start afresh, leaky (reset "none") neurons and
delays carry their state through the trial, and the readout is per step.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from sim import semantics
from sim.artifact import Artifact
from sim.errors import SimulationError
from sim.ops.base import batched
from sim.results import LayerStats, SimResult, prepare_run


class Step:
    """What the nodes of one timestep share: the batch `x` (floats, the encoder's input), the
    previous step's values (for delays), the neurons' state (None: a one-pass T = 1 step, no
    state survives it), binary spikes or graded, whether activity is counted, the statistics."""
    __slots__ = ("x", "previous", "state", "binary", "count", "stats")

    def __init__(self, x, previous, state, binary, count, stats):
        self.x, self.previous, self.state, self.binary, self.count, self.stats = \
            x, previous, state, binary, count, stats


# step(s, keep, trials) → {node: value}; `keep`: nodes the caller reads afterwards (records);
# `trials`: a step of a recurrent trial. A step function may also carry `layered(s, T, keep)`:
# all T steps of a feed-forward run at once, returning (Σ_t readout accumulator,
# {kept node: Σ_t value}), which the loop then uses instead of T calls.
StepFn = Callable[[Step, tuple, bool], dict]


def as_int(x: np.ndarray) -> np.ndarray:
    """x as int64 (itself when it is already)."""
    return x if x.dtype == np.int64 else x.astype(np.int64)


def execute(art: Artifact, x: np.ndarray, step: StepFn, timesteps: int = 1,
            binary: bool = False, batch_size: int = 1024, count: bool = True, progress=None,
            record: tuple[str, ...] = ()) -> SimResult:
    """Run `art` on float inputs x batch by batch with `step` (module docstring). `progress(n)`
    is called after each batch of n samples; `record` names nodes whose integer values are
    returned in `SimResult.recorded`: (N, *shape) summed over the steps of a feed-forward run,
    (N, T, *shape) per step of a recurrent one. count=False skips spikes, payload and SynOps
    (saturations are counted either way)."""
    x, stats = prepare_run(art, x, timesteps)
    unknown = [r for r in record if r not in stats]
    if unknown:
        raise SimulationError(f"cannot record {unknown}: no such nodes")
    outs, accs = [], []
    kept: dict[str, list[np.ndarray]] = {r: [] for r in record}
    recurrent = art.recurrent
    for start in range(0, len(x), batch_size):
        chunk = x[start:start + batch_size]
        run_chunk = _trials if recurrent else _batch
        out, acc, rec = run_chunk(art, chunk, step, timesteps, binary, count, stats, record)
        outs.append(out)
        accs.append(acc)
        for r in record:
            kept[r].append(rec[r])
        if progress is not None:
            progress(len(out))
    readout = art.node(art.output)
    shape = (0,) + ((x.shape[1],) if recurrent else ()) + tuple(readout.shape)
    lead = shape[:-len(readout.shape)] if readout.shape else shape
    recorded = {r: joined(v, lambda r=r: np.zeros(lead + tuple(art.node(r).shape), np.int64))
                for r, v in kept.items()}
    return SimResult(joined(outs, lambda: np.zeros(shape, np.float32)),
                     joined(accs, lambda: np.zeros(shape, np.int64)),
                     stats, len(x), timesteps, recorded, readout.softmax)


def joined(parts: list[np.ndarray], empty) -> np.ndarray:
    """The batches' arrays end to end (one batch: itself, no copy; none: `empty()`)."""
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(parts) if parts else empty()


def _batch(art, x, step: StepFn, timesteps, binary, count, stats: dict[str, LayerStats],
           record):
    # one graded pass (T = 1) keeps no neuron state: the one-pass neuron applies. Binary spikes
    # at T = 1 are the integrate-and-fire form, which keeps its state.
    state: dict[str, np.ndarray] | None = {} if timesteps > 1 or binary else None
    layered = getattr(step, "layered", None)
    if state is not None and layered is not None:
        # the backend runs all steps at once, layer by layer: (Σ_t output, {r: Σ_t value})
        acc_sum, rec = layered(Step(x, {}, state, binary, count, stats), timesteps, record)
    else:
        acc_sum = 0
        rec = {r: 0 for r in record}
        for _ in range(timesteps):
            values = step(Step(x, {}, state, binary, count, stats), record, False)
            acc_sum = acc_sum + as_int(values[art.output])
            for r in record:
                rec[r] = rec[r] + as_int(values[r])
    readout = art.node(art.output)
    out = semantics.readout(acc_sum, batched(readout.bias), batched(readout.scale), timesteps)
    return out, acc_sum, rec


def _trials(art, x, step: StepFn, timesteps, binary, count, stats, record):
    persistent = {n.name for n in art.nodes if getattr(n, "reset", "") == "none"}
    state: dict[str, np.ndarray] = {}
    values: dict[str, np.ndarray] = {}
    accs = []
    rec = {r: [] for r in record}
    for t in range(x.shape[1]):
        state = {k: v for k, v in state.items() if k in persistent}
        values = step(Step(x[:, t], values, state, False, count, stats), record, True)
        accs.append(as_int(values[art.output]))
        for r in record:
            rec[r].append(as_int(values[r]))
    acc = np.stack(accs, axis=1)
    readout = art.node(art.output)
    out = semantics.readout(acc, batched(readout.bias)[:, None], batched(readout.scale)[:, None],
                            1)
    return out, acc, {r: np.stack(v, axis=1) for r, v in rec.items()}
