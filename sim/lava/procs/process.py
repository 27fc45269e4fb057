"""Lava Processes (interfaces: ports and Vars) of an SFN artifact; their models are in models.py,
the hierarchical `Network` that assembles them in network.py.

- `InputEncoder`: the input encoder: float samples (or their encoded integers) in, the
  encoder's integers out, (B, *in) per step.
- `SFNNeuronLayer`: one SFN neuron layer together with the synapse chain that feeds it, its
  state held for B samples side by side.
- `ReadoutStage`: the readout's synapse chain and the running integer accumulator of the B
  samples of the current step, sent every step.
- `SpikeSource`: holds every sample back to back and sends one step's (B, *in) batch per
  Lava step (sim.lava.run's source; encoded integers for a feed-forward run).
- `AccumulatorSink`: collects each sample's complete accumulator from the readout stream and
  sends them all once at the end through an external pipe (sim.lava.run's sink).
- `RecurrentCell`, `TrialSink`: a recurrent artifact (sim.lava.recurrent): every node but the
  input and the readout in one process, B trials side by side; the per-step accumulator.

Feed-forward messages are (B, *shape) batches, B = `lanes` samples side by side (sim.lava.graph).
Stage processes have `MAX_INPUTS` in-ports `in_0 … in_{MAX_INPUTS-1}`: port k carries the payload
(B, *shape) of the chain's k-th source (a neuron layer or the input); unused ports have shape (1,)
and stay unconnected. Timing Vars: `offset` (this stage reads encoder step u = t − 1 − offset at
Lava step t), `timesteps` (T: neurons reset, and the readout starts a new accumulation, every T
steps). proc_params `lanes` (B) and `samples`: N for a run of N samples (group (u // T) mod ⌈N/B⌉
holds samples g·B … min(g·B + B, N) − 1; the last group's lanes past N are padding, never
computed; statistics count steps u < ⌈N/B⌉·T only, not the pipeline's fill and drain), or None
for an open stream (every lane computed and counted).
"""
from __future__ import annotations

import numpy as np

from sim.lava.compat import load_lava
from sim.lava.graph import MAX_INPUTS

load_lava()

from lava.magma.core.process.ports.ports import InPort, OutPort  # noqa: E402
from lava.magma.core.process.process import AbstractProcess  # noqa: E402
from lava.magma.core.process.variable import Var  # noqa: E402


def _scalar(value) -> Var:
    return Var(shape=(1,), init=np.asarray([value]))


def _add_stage_ports(proc: AbstractProcess, input_shapes: list[tuple[int, ...]],
                     lanes: int) -> None:
    if len(input_shapes) > MAX_INPUTS:
        raise ValueError(f"{len(input_shapes)} inputs, a stage has {MAX_INPUTS} in-ports")
    for k in range(MAX_INPUTS):
        shape = (lanes,) + tuple(input_shapes[k]) if k < len(input_shapes) else (1,)
        setattr(proc, f"in_{k}", InPort(shape=shape))


class SpikeSource(AbstractProcess):
    """Input encoder: at Lava step t sends n = clip(floor(x · inv_scale + 1/2), lo, hi) of row
    ((t − 1) // T) mod G of `samples` (G, *shape) (sim.semantics.encode_input). Feed-forward:
    G groups of B lanes, shape (B, *in); recurrent: step-major trial batches. Set once at
    construction, never per sample. `valid` (G,): the lanes of each row that hold samples (the
    rest is padding, sent as zeros); `clipped` counts the elements the encoder clipped over the
    first G·T steps (each row's T steps once, valid lanes only), as sim.cpu does. With
    `clip=False` (sim.lava.run's source before a Network's InputEncoder) it sends
    sim.semantics.encode_input_bounded's integers instead, one past the levels where the clip
    applies, and the InputEncoder clips and counts them; `clipped` stays 0."""

    def __init__(self, *, samples: np.ndarray, valid: np.ndarray, inv_scale: float, lo: int,
                 hi: int, timesteps: int, name: str, clip: bool = True):
        super().__init__(name=name)
        self.samples = Var(shape=samples.shape, init=samples)
        self.valid = Var(shape=(len(samples),), init=np.asarray(valid, np.int64))
        self.inv_scale = _scalar(np.float32(inv_scale))
        self.lo = _scalar(lo)
        self.hi = _scalar(hi)
        self.timesteps = _scalar(timesteps)
        self.clip = _scalar(int(clip))
        self.clipped = _scalar(0)
        self.s_out = OutPort(shape=samples.shape[1:])


class SFNNeuronLayer(AbstractProcess):
    """SFN neuron layer (sim.ir.Neuron, sim.semantics) fed by its synapse chain.

    Per step, for each of the B lanes: send last step's payload; receive the chain's sources;
    I = chain(sources); at a sample's first timestep v = (K·θ)//2; v ← sat(v + I + b) (or the
    leak when decay < 4096); uniform fire q = clip(floor(v / (K·θ)), lo_q, hi_q), payload q·K,
    v ← v − q·K·θ; or adaptive fire payload[#{k : sat(I + b) ≥ t_k}].

    Vars: v (state, (B, *shape)), bias, threshold (per neuron, broadcast shape), lo, hi (levels),
    adaptive (0 uniform, 1 adaptive), thresholds (..., K) and payload (K+1,) of the adaptive fire
    function, decay (leak d, 4096 = none), start_zero (1: a sample starts at v = 0), binary (0 graded spikes, 1 binary), timesteps (reset
    period T), offset, and the statistics spikes, payload_total, saturations, synops (one entry
    per chain node).
    """

    def __init__(self, *, neuron, chain, input_shapes, delays, offset: int, timesteps: int,
                 binary: bool, num_samples: int | None = None, lanes: int = 1):
        super().__init__(name=neuron.name, chain=chain, delays=list(delays),
                         input_shapes=[tuple(s) for s in input_shapes], shape=tuple(neuron.shape),
                         lanes=lanes, samples=num_samples)
        adaptive = neuron.fire == "adaptive"
        self.v = Var(shape=(lanes,) + tuple(neuron.shape), init=0)
        self.bias = Var(shape=neuron.bias.shape, init=neuron.bias)
        self.threshold = Var(shape=neuron.threshold.shape, init=neuron.threshold)
        self.lo = _scalar(neuron.lo)
        self.hi = _scalar(neuron.hi)
        self.adaptive = _scalar(int(adaptive))
        thresholds = neuron.thresholds if adaptive else np.zeros(1, np.int64)
        payload = neuron.payload if adaptive else np.zeros(1, np.int64)
        self.thresholds = Var(shape=thresholds.shape, init=thresholds)
        self.payload = Var(shape=payload.shape, init=payload)
        self.decay = _scalar(neuron.decay)
        self.start_zero = _scalar(int(neuron.start == "zero"))
        self.binary = _scalar(int(binary))
        self.timesteps = _scalar(timesteps)
        self.offset = _scalar(offset)
        self.spikes = _scalar(0)
        self.payload_total = _scalar(0)
        self.saturations = _scalar(0)
        self.synops = Var(shape=(max(len(chain.nodes), 1),), init=0)
        _add_stage_ports(self, input_shapes, lanes)
        self.s_out = OutPort(shape=(lanes,) + tuple(neuron.shape))


class ReadoutStage(AbstractProcess):
    """Readout chain and its running accumulator: at Lava step t it receives encoder step
    u = t − 1 − offset, sets A = the chain's output when u is a sample's first timestep
    (u mod T = 0) and adds it otherwise, and sends A through `s_out` the same step (zeros while
    the pipeline fills). At u mod T = T − 1, A is the sample's integer accumulator
    A = Σ_t chain output; the float readout y = float32(A + T·b) · float32(scale / T) is the
    host's (`Network.readout`). `out_shape` is the port's shape: (B, *out), or *out for a
    one-sample Network."""

    def __init__(self, *, readout, chain, input_shapes, delays, offset: int, timesteps: int,
                 num_samples: int | None = None, lanes: int = 1, out_shape=None):
        out_shape = tuple(out_shape) if out_shape is not None else \
            (lanes,) + tuple(readout.shape)
        super().__init__(name=readout.name, chain=chain, delays=list(delays),
                         input_shapes=[tuple(s) for s in input_shapes], lanes=lanes,
                         samples=num_samples, shape=tuple(readout.shape), out_shape=out_shape)
        self.timesteps = _scalar(timesteps)
        self.offset = _scalar(offset)
        self.synops = Var(shape=(max(len(chain.nodes), 1),), init=0)
        _add_stage_ports(self, input_shapes, lanes)
        self.s_out = OutPort(shape=out_shape)


class InputEncoder(AbstractProcess):
    """The input encoder of a `Network`: receives one step's samples through `a_in` (port shape
    `in_shape`: (B, *in), or *in for a one-sample Network) and sends the same step
    n = clip(floor(x · inv_scale + 1/2), lo, hi) as (B, *in) through `s_out`
    (sim.semantics.encode_input). With `encoded`, `a_in` carries integers already (Lava's
    fixed_pt RingBuffer sends int32) and they are only clipped to [lo, hi].

    `clipped` counts the elements the clip changes, as sim.cpu's `stats[input].clipped`: on the
    valid lanes of encoder step u = t − 1 (in a run of `samples` N, group (u // T) mod ⌈N/B⌉
    holds min(B, N − g·B) samples, padding lanes are sent as zeros, and only the ⌈N/B⌉·T steps
    of the samples count, not the pipeline's drain; in an open stream every lane of every step).
    Integers that were clipped before they reach `a_in` (`Network.encode`) are not seen as
    clipped; sim.semantics.encode_input_bounded's are (`Network.feed`, sim.lava.run)."""

    def __init__(self, *, in_shape, lanes: int, sample_shape, inv_scale: float, lo: int,
                 hi: int, encoded: bool, name: str, timesteps: int = 1,
                 samples: int | None = None):
        super().__init__(name=name, lanes=lanes, sample_shape=tuple(sample_shape),
                         inv_scale=float(inv_scale), lo=int(lo), hi=int(hi),
                         encoded=bool(encoded), timesteps=int(timesteps), samples=samples)
        self.clipped = _scalar(0)
        self.a_in = InPort(shape=tuple(in_shape))
        self.s_out = OutPort(shape=(lanes,) + tuple(sample_shape))


class AccumulatorSink(AbstractProcess):
    """sim.lava.run's sink behind a `Network`: at Lava step t the network's `out` carries the
    running accumulator of encoder step u = t − 1 − latency; at each group's last timestep
    (u mod T = T − 1) its valid rows are stored as samples g·B …; after the last group the whole
    (N, *out) accumulator goes out once through `result`, an external pipe the host reads
    after the run (a Var.get would move it one element at a time)."""

    def __init__(self, *, shape, lanes: int, samples: int, timesteps: int, latency: int):
        super().__init__(shape=tuple(shape), lanes=lanes, samples=samples, timesteps=timesteps,
                         latency=latency)
        self.a_in = InPort(shape=(lanes,) + tuple(shape))
        self.result = OutPort(shape=(samples,) + tuple(shape))
        self.result.flag_external_pipe(buffer_size=1)


class RecurrentCell(AbstractProcess):
    """Every node of a recurrent artifact except its input and its readout (sim.lava.recurrent),
    computed for B trials side by side, one trial step per Lava step.

    Per Lava step: send last step's readout input (B, *out); receive the encoded inputs
    (B, *in) of trial step t; evaluate the nodes in artifact order on the group's valid rows
    (delays read last step's values of their sources, zeros at t = 0; leaky reset "none" neurons
    keep v through the trial, v = 0 at t = 0; every other neuron starts afresh each step).
    proc_params: nodes, input (the input node's name), feed (the readout's input node),
    readout (the readout's name), trials (N), batch (B), trial_steps (T).
    Vars: per-node statistics synops, spikes, payload_total, saturations (one entry per node of
    `nodes`), summed over every valid trial and step.
    """

    def __init__(self, *, nodes, input_name: str, input_shape, feed: str, readout_name: str,
                 output_shape, trials: int, batch: int, trial_steps: int, name: str = "cell"):
        super().__init__(name=name, nodes=list(nodes), input=input_name, feed=feed,
                         readout=readout_name, output_shape=tuple(output_shape), trials=trials,
                         batch=batch, trial_steps=trial_steps)
        count = max(len(nodes), 1)
        self.synops = Var(shape=(count,), init=0)
        self.spikes = Var(shape=(count,), init=0)
        self.payload_total = Var(shape=(count,), init=0)
        self.saturations = Var(shape=(count,), init=0)
        self.u_in = InPort(shape=(batch,) + tuple(input_shape))
        self.s_out = OutPort(shape=(batch,) + tuple(output_shape))


class TrialSink(AbstractProcess):
    """Per-step readout accumulator of a recurrent artifact: at Lava step s it receives the
    cell's readout input of trial step u = s − 2 for B trials and stores it at
    accumulator[trials of group u // T, u mod T]. After the last step of the last group the
    whole (N, T, *out) accumulator goes out once through `result`, an external pipe the host
    reads after the run; the float readout is applied on the host."""

    def __init__(self, *, name: str, shape, trials: int, batch: int, trial_steps: int):
        super().__init__(name=name, shape=tuple(shape), trials=trials, batch=batch,
                         trial_steps=trial_steps)
        self.a_in = InPort(shape=(batch,) + tuple(shape))
        self.result = OutPort(shape=(trials, trial_steps) + tuple(shape))
        self.result.flag_external_pipe(buffer_size=1)
