"""sim.lava.run: execute an artifact as a Lava process graph (Loihi2SimCfg), under a guard.

The graph is SpikeSource → `Network` (sim.lava.procs.network) → AccumulatorSink: every sample is
in the source from the start, rounded to integers bounded one past the input levels
(sim.semantics.encode_input_bounded), so the Network takes integers and its encoder clips and
counts what sim.cpu's encoder clips. Samples are pipelined: every timestep carries B = `lanes`
samples side by side (sim.lava.graph; B = 1 is one sample per timestep at T = 1), so Lava's
per-step cost (~0.1 ms per process) is shared by B samples; the sink keeps each sample's
accumulator from the Network's `out` stream and sends them all once after the run. The result does not depend on B. Recurrent artifacts run as one cell
process over batches of trials (sim.lava.recurrent), under the same guard (sim.lava.guard).
The result is the `SimResult` every backend returns (same output, accumulator and per-node
statistics as sim.cpu), so the backends compare directly.
"""
from __future__ import annotations

import numpy as np

from sim import semantics
from sim.artifact import Artifact
from sim.lava import graph, recurrent
from sim.lava.builder import lane_major
from sim.lava.compat import load_lava
from sim.lava.guard import GuardedRun, check_tag, default_timeout
from sim.results import LayerStats, SimResult, prepare_run

PROGRESS_SAMPLES = 256   # samples per run() call when progress is reported


def run(art: Artifact, x: np.ndarray, timesteps: int = 1, binary: bool = False,
        tag: str = "fixed_pt", timeout: float | None = None, progress=None,
        batch: int | None = None, lanes: int | None = None) -> SimResult:
    """Run `art` on float inputs x (N, *input_shape) as Lava processes; see the module docstring.

    `tag` selects the ProcessModels ("fixed_pt": bit-exact to sim.cpu; "floating_pt": float64
    neurons, see sim.lava.procs.models). `timeout` bounds the whole run in seconds (default:
    `default_timeout`). `progress(n)` is called as n more samples complete. `lanes` (B) is the
    number of samples every Lava timestep carries side by side: default
    min(N, graph.DEFAULT_LANES = 64), always capped so one (B, *shape) message of the widest
    layer stays under graph.MESSAGE_BYTES (1 MiB); lanes=1 is one sample per timestep.

    A recurrent artifact (a Delay node) takes x (N, T, *input_shape), one trial per row, and
    returns per-step outputs (N, T, *output_shape) like sim.cpu; it runs as a source, one cell
    process and a sink with `batch` trials side by side (sim.lava.recurrent); `lanes`, when
    given and `batch` is not, is that number.
    """
    if art.recurrent:
        return recurrent.run(art, x, timesteps, binary, tag, timeout, progress,
                             lanes if batch is None else batch)
    plan = graph.plan(art, timesteps, binary)  # refuses unmapped nodes before anything else
    x, stats = prepare_run(art, x, timesteps)
    check_tag(tag)
    plan.lanes = graph.choose_lanes(plan, len(x), lanes)
    readout = art.node(art.output)
    if len(x) == 0:
        empty = np.zeros((0,) + tuple(readout.shape))
        return SimResult(empty.astype(np.float32), empty.astype(np.int64), stats, 0, timesteps,
                         softmax=readout.softmax)
    load_lava()
    from lava.magma.core.run_configs import Loihi2SimCfg

    from sim.lava.procs.network import Network
    from sim.lava.procs.process import AccumulatorSink, SpikeSource

    inp = plan.input
    net = Network(art, timesteps=timesteps, binary=binary, lanes=plan.lanes, encoded=True,
                  samples=len(x))
    valid = np.minimum(plan.lanes, len(x) - plan.lanes * np.arange(plan.groups(len(x))))
    source = SpikeSource(samples=lane_major(plan, x), valid=valid, inv_scale=inp.inv_scale,
                         lo=inp.lo, hi=inp.hi, timesteps=timesteps, clip=False,
                         name=f"{inp.name} (source)")
    sink = AccumulatorSink(shape=readout.shape, lanes=plan.lanes, samples=len(x),
                           timesteps=timesteps, latency=net.latency)
    source.s_out.connect(net.inp)
    net.out.connect(sink.a_in)
    total = plan.num_steps(len(x))
    processes = 3 + len(plan.stages)     # source, encoder, stages, sink
    limit = default_timeout(total, processes,
                            plan.macs_per_sample() * len(x) * timesteps) \
        if timeout is None else float(timeout)
    guarded = GuardedRun(sink, Loihi2SimCfg(select_tag=tag), limit)
    with guarded.watching():
        done = 0
        for end in _run_ends(plan, len(x), progress is not None):
            guarded.advance(end - done)
            if progress is not None:
                progress(_completed(plan, end, len(x)) - _completed(plan, done, len(x)))
            done = end
        accumulator = np.rint(guarded.receive(sink.result)).astype(np.int64)
        _collect_stats(plan, net, stats)
        guarded.stop()
    output = semantics.readout(accumulator, readout.bias[None], readout.scale[None], timesteps)
    return SimResult(output, accumulator, stats, len(x), timesteps, softmax=readout.softmax)


def _completed(plan: graph.Plan, steps: int, samples: int) -> int:
    """Samples whose readout is complete after `steps` Lava steps."""
    return min(samples, max(0, steps - plan.latency) // plan.timesteps * plan.lanes)


def _run_ends(plan: graph.Plan, samples: int, chunked: bool) -> list[int]:
    """Step counts at which run() calls end: one call, or one per ⌈PROGRESS_SAMPLES / B⌉ groups
    of B samples."""
    total = plan.num_steps(samples)
    if not chunked:
        return [total]
    every = -(-PROGRESS_SAMPLES // plan.lanes) * plan.timesteps
    return list(range(plan.latency + every, total, every)) + [total]


def _collect_stats(plan: graph.Plan, net, stats: dict[str, LayerStats]) -> None:
    """Per-node statistics from the Network's encoder and stage processes' Vars (each read
    once)."""
    from sim.lava.procs.network import stage_name

    stats[plan.input.name].clipped = int(net.procs.encoder.clipped.get()[0])
    for i, stage in enumerate(plan.stages):
        proc = getattr(net.procs, stage_name(i))
        synops = proc.synops.get()
        for node, count in zip(stage.chain.nodes, synops):
            stats[node.name].synops += int(count)
        if stage.node.role == "neuron":
            st = stats[stage.node.name]
            st.spikes = int(proc.spikes.get()[0])
            st.payload = int(proc.payload_total.get()[0])
            st.saturations = int(proc.saturations.get()[0])
