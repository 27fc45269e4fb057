"""Recurrent artifacts (a Delay node) as Lava processes: plan, build, run under the guard.

Process graph: three Lava processes,

    SpikeSource (encoder) ─(B, *in)→ RecurrentCell ─(B, *out)→ TrialSink (per-step accumulator)

The cell computes every node of the artifact except the input and the readout, in artifact
order, one trial step per Lava step (sim.lava.cell). A Delay reads its source's value from the
previous Lava step inside the same process, so the recurrent loop has exactly one step of delay
whatever the number of neuron layers on it (one process per layer would add a step per layer and
break the loop's timing). The synapse chains are each kind's integer map and the neurons the
contract's step (sim.lava.cell), so fixed_pt is bit-exact to sim.reference by construction.

Schedule: the N trials run in groups of B side by side (every message is a (B, …) batch), the
groups back to back, T Lava steps each; padding rows of the last group are sent but never
evaluated. Lava step s: the source sends trial step u = s − 1 (step u mod T of group u // T; all
inputs are in the source from the start, reordered step-major); the cell sends last step's
result, receives step u and evaluates it (state reset at u mod T = 0: leaky v = 0, delays 0);
the sink receives step u − 1. So N trials take ⌈N/B⌉·T + 1 Lava steps, and the per-step cost of
Lava (~0.1 ms per process) is shared by B trials. B = min(N, batch) with batch 1024 by default,
lowered so that one message stays under 1 MiB (Lava gives every channel 64 message buffers).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim import semantics
from sim.artifact import Artifact
from sim.errors import SimulationError
from sim.lava.cell import STATS
from sim.lava.compat import load_lava
from sim.lava.graph import MAPPED_ROLES, refuse_unmapped as _refuse
from sim.lava.guard import GuardedRun, check_tag, default_timeout as per_step
from sim.ops import Input, Node, Readout
from sim.ops.base import EDGE
from sim.results import SimResult, prepare_run

RECURRENT_ROLES = MAPPED_ROLES + (EDGE,)
DEFAULT_BATCH = 1024       # trials side by side in one Lava step (sim.cpu's batch_size)
MESSAGE_BYTES = 1 << 20    # largest (B, …) message; Lava allocates 64 per channel
MAC_SECONDS = 5e-8         # timeout allowance per multiply-accumulate (numpy: ~1 ns)


@dataclass
class TrialPlan:
    input: Input
    readout: Readout
    nodes: list[Node]   # the cell: every node but the input and the readout, artifact order
    feed: str           # the readout's input node: the cell's output
    trials: int         # N
    trial_steps: int    # T
    batch: int          # B

    @property
    def groups(self) -> int:
        return -(-self.trials // self.batch)

    latency = 1  # the sink stores trial step u one Lava step after the cell computed it

    @property
    def num_steps(self) -> int:
        return self.groups * self.trial_steps + self.latency

    def rows(self, group: int) -> int:
        return min(self.batch, self.trials - group * self.batch)

    def group_ends(self) -> list[int]:
        """The Lava step after which each group's last trial step is in the sink."""
        return [(g + 1) * self.trial_steps + self.latency for g in range(self.groups)]

    def macs_per_step(self) -> int:
        """Multiply-accumulates of one trial step (dense and conv nodes)."""
        return sum(node.macs() for node in self.nodes)


def trial_batch(art: Artifact, trials: int, batch: int | None = None) -> int:
    """B: trials side by side, at most `batch` (default DEFAULT_BATCH) and at most what keeps
    one (B, *shape) message of the input or the readout under MESSAGE_BYTES."""
    if batch is not None and batch < 1:
        raise SimulationError(f"batch must be ≥ 1, got {batch}")
    widest = max(int(np.prod(art.input_shape)), int(np.prod(art.output_shape)), 1)
    cap = max(1, MESSAGE_BYTES // (8 * widest))
    return max(1, min(trials, batch or DEFAULT_BATCH, cap))


def plan(art: Artifact, trials: int, trial_steps: int, batch: int | None = None) -> TrialPlan:
    _refuse(art, RECURRENT_ROLES, recurrent=True)
    readout = art.node(art.output)
    cell = [n for n in art.nodes if n.name not in (art.input, art.output)]
    return TrialPlan(art.node(art.input), readout, cell, readout.inputs[0], trials, trial_steps,
                     trial_batch(art, trials, batch))


def step_major(p: TrialPlan, x: np.ndarray) -> np.ndarray:
    """x (N, T, *in) → (groups·T, B, *in) float32: row s − 1 is what the source sends at Lava
    step s (trials past N are zero padding)."""
    n, steps, shape = p.trials, p.trial_steps, x.shape[2:]
    padded = np.zeros((p.groups * p.batch, steps) + shape, np.float32)
    padded[:n] = x
    grouped = padded.reshape((p.groups, p.batch, steps) + shape).swapaxes(1, 2)
    return np.ascontiguousarray(grouped.reshape((p.groups * steps, p.batch) + shape))


def default_timeout(p: TrialPlan, processes: int = 3) -> float:
    return per_step(p.num_steps, processes) + \
        MAC_SECONDS * p.macs_per_step() * p.trials * p.trial_steps


def run(art: Artifact, x: np.ndarray, timesteps: int = 1, binary: bool = False,
        tag: str = "fixed_pt", timeout: float | None = None, progress=None,
        batch: int | None = None) -> SimResult:
    """sim.lava.run for a recurrent artifact: x (N, T, *input_shape), one trial per row; the
    result is sim.cpu's: output (N, T, *output_shape), accumulator int64, per-node statistics.

    `timesteps` and `binary` are taken exactly as sim.cpu takes them for a recurrent artifact
    (checked, recorded in the result, not used: a trial step is one T = 1 step). `batch` bounds
    the trials run side by side (module docstring). `progress(n)` is called as each group of n
    trials completes.
    """
    _refuse(art, RECURRENT_ROLES, recurrent=True)
    x, stats = prepare_run(art, x, timesteps)
    check_tag(tag)
    readout = art.node(art.output)
    trials, steps = x.shape[:2]
    if trials == 0:
        empty = np.zeros((0, steps) + tuple(readout.shape))
        return SimResult(empty.astype(np.float32), empty.astype(np.int64), stats, 0, timesteps,
                         softmax=readout.softmax)
    if steps == 0:
        raise SimulationError("a trial needs at least one step (x has shape "
                              f"{tuple(x.shape)})")
    p = plan(art, trials, steps, batch)
    load_lava()
    from lava.magma.core.run_configs import Loihi2SimCfg

    net = build(p, x)
    limit = default_timeout(p) if timeout is None else float(timeout)
    guarded = GuardedRun(net.sink, Loihi2SimCfg(select_tag=tag), limit)
    with guarded.watching():
        ends = p.group_ends() if progress is not None else [p.num_steps]
        done = 0
        for g, end in enumerate(ends):
            guarded.advance(end - done)
            done = end
            if progress is not None:
                progress(p.rows(g))
        accumulator = np.rint(guarded.receive(net.sink.result)).astype(np.int64)
        stats[p.input.name].clipped = int(net.source.clipped.get()[0])
        for k, name in enumerate(STATS):
            totals = getattr(net.cell, name).get()
            for node, total in zip(p.nodes, totals):
                setattr(stats[node.name], "payload" if name == "payload_total" else name,
                        int(total))
        guarded.stop()
    output = semantics.readout(accumulator, readout.bias[None, None], readout.scale[None, None], 1)
    return SimResult(output, accumulator, stats, trials, timesteps, softmax=readout.softmax)


@dataclass
class TrialNetwork:
    source: object   # SpikeSource over the step-major inputs
    cell: object     # RecurrentCell
    sink: object     # TrialSink

    @property
    def processes(self) -> list:
        return [self.source, self.cell, self.sink]


def build(p: TrialPlan, x: np.ndarray) -> TrialNetwork:
    """The three processes of the module docstring, connected, for inputs x (N, T, *in)."""
    from sim.lava.procs.process import RecurrentCell, SpikeSource, TrialSink

    inp, readout = p.input, p.readout
    valid = np.repeat([p.rows(g) for g in range(p.groups)], p.trial_steps)
    source = SpikeSource(samples=step_major(p, x), valid=valid, inv_scale=inp.inv_scale,
                         lo=inp.lo, hi=inp.hi, timesteps=1, name=inp.name)
    common = dict(trials=p.trials, batch=p.batch, trial_steps=p.trial_steps)
    cell = RecurrentCell(nodes=p.nodes, input_name=inp.name, input_shape=inp.shape, feed=p.feed,
                         readout_name=readout.name, output_shape=readout.shape, **common)
    sink = TrialSink(name=readout.name, shape=readout.shape, **common)
    source.s_out.connect(cell.u_in)
    cell.s_out.connect(sink.a_in)
    return TrialNetwork(source, cell, sink)
