"""`Network`: a feed-forward SFN artifact as one hierarchical Lava Process, with an `inp` and an
`out` port, to wire next to Lava's own processes under the run configuration of one's choice.

    net = sim.lava.Network(art, timesteps=T)                   # one sample per Lava step
    src = RingBuffer(data=net.feed(x))                         # lava.proc.io.source
    dst = RingBuffer(shape=net.out.shape, buffer=net.num_steps(len(x)))   # lava.proc.io.sink
    src.s_out.connect(net.inp); net.out.connect(dst.a_in)
    dst.run(RunSteps(net.num_steps(len(x))), Loihi2SimCfg(select_tag="floating_pt"))
    y = net.readout(net.collect(dst.data.get(), len(x)))      # == sim.cpu.run(art, x, T).output

Ports. `inp` takes one sample per Lava step, shape `input_shape` (or (B, *input_shape) with
`lanes=B`: B samples side by side), floats that the encoder inside encodes
n = clip(floor(x·inv_scale + 1/2), lo, hi); with `encoded=True` it takes those integers instead
(`net.encode(x)`), which is what a fixed_pt graph needs: Lava's fixed_pt RingBuffer holds int32.
A sample is held on `inp` for T consecutive steps (`feed` repeats it). `out` sends every step the
readout's **integer accumulator** A of the sample whose step it is, summed over its timesteps so
far: at the sample's last timestep A = Σ_t, the accumulator of sim.cpu's `SimResult.accumulator`.
The host turns it into sim.cpu's float output with `net.readout(A)`: the logits
y = float32(A + T·b) · float32(scale / T) (`net.logits(A)`), through the model's final softmax
where it ended in one — sim.cpu's `SimResult.output` (the readout rule of sim.results).

Latency. A value entering `inp` at Lava step t reaches `out` at step t + `latency`
(`latency` = the number of neuron layers on the longest path: each adds one step, as Lava's
Dense does). So sample k (0-based, one per T steps) is complete on `out` at step
(k + 1)·T + latency, which a sink RingBuffer stores in its column (k + 1)·T − 1 + latency;
`collect` reads exactly those columns. `num_steps(N)` = N·T + latency steps run N samples through.

The sub-processes are those of sim.lava.run: the input encoder, one process per neuron layer with
its synapse chain, the readout stage (sim.lava.procs.process), built by the SubProcessModel below
when Lava compiles the graph; their ProcessModels (fixed_pt, floating_pt) are chosen by the run
configuration. After the run they are `net.procs.encoder`, `net.procs.stage_000`, …; the
encoder's `clipped` Var counts the input elements its clip changed (for `Network(…, samples=N)`
fed by `feed`, sim.cpu's `stats[input].clipped` of those N samples).
Recurrent artifacts (a Delay node) are not a Network; sim.lava.run runs them.
"""
from __future__ import annotations

import numpy as np

from sim import semantics
from sim.artifact import Artifact
from sim.errors import SimulationError, UnsupportedOpError
from sim.lava.graph import plan as plan_stages
from sim.results import apply_softmax
from sim.lava.builder import build_stages
from sim.lava.compat import load_lava

load_lava()

from lava.magma.core.decorator import implements  # noqa: E402
from lava.magma.core.model.sub.model import AbstractSubProcessModel  # noqa: E402
from lava.magma.core.process.ports.ports import InPort, OutPort  # noqa: E402
from lava.magma.core.process.process import AbstractProcess  # noqa: E402
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol  # noqa: E402


class Network(AbstractProcess):
    """A feed-forward SFN artifact as a hierarchical Lava Process (module docstring).

    `timesteps`: T per sample (default: the artifact's); `binary`: binary spikes per step
    (rate coding) when T > 1; `lanes`: None for one sample per step (ports `input_shape` and
    `output_shape`), or B for B samples side by side (ports (B, *shape)); `encoded`: `inp`
    takes the encoder's integers instead of floats. `samples` is sim.lava.run's: the number of
    samples of a finite run, whose padding lanes are never computed nor counted.
    """

    def __init__(self, artifact: Artifact, *, timesteps: int | None = None, binary: bool = False,
                 lanes: int | None = None, encoded: bool = False, samples: int | None = None,
                 name: str = "sfn_network"):
        if artifact.recurrent:
            raise UnsupportedOpError("a recurrent artifact (a Delay node) is not a Network; "
                                     "run it with sim.lava.run")
        if lanes is not None and (isinstance(lanes, bool) or not isinstance(lanes, (int, np.integer))
                                  or lanes < 1):
            raise SimulationError(f"lanes must be None or an integer ≥ 1, got {lanes!r}")
        T = int(artifact.meta.get("timesteps", 1)) if timesteps is None else int(timesteps)
        plan = plan_stages(artifact, T, binary, 1 if lanes is None else int(lanes))
        lead = () if lanes is None else (int(lanes),)
        in_shape = lead + tuple(artifact.input_shape)
        out_shape = lead + tuple(artifact.output_shape)
        super().__init__(name=name, plan=plan, samples=samples, encoded=bool(encoded),
                         in_shape=in_shape, out_shape=out_shape)
        self.artifact = artifact
        self.plan = plan
        self.timesteps = T
        self.lanes = lanes
        self.inp = InPort(shape=in_shape)
        self.out = OutPort(shape=out_shape)

    def __del__(self):
        if hasattr(self, "_runtime"):    # refused in __init__: nothing of Lava's to release
            super().__del__()

    @property
    def latency(self) -> int:
        """Lava steps from a value entering `inp` to its result leaving `out`."""
        return self.plan.latency

    def num_steps(self, samples: int) -> int:
        """Lava steps that carry `samples` samples through: ⌈N/B⌉·T + latency."""
        return self.plan.groups(samples) * self.timesteps + self.latency

    def encode(self, x: np.ndarray) -> np.ndarray:
        """The encoder's integers n for float samples x (N, *input_shape), as int64."""
        inp = self.plan.input
        return semantics.encode_input(x, inp.inv_scale, inp.lo, inp.hi)

    def feed(self, x: np.ndarray, encoded: bool | None = None) -> np.ndarray:
        """A RingBuffer's `data` for samples x (N, *input_shape): each sample (group of B)
        held T steps, then `latency` steps of zeros so the last result reaches `out`; shape
        (*inp.shape, num_steps(N)). Integers when the Network is `encoded`: the encoder's
        rounding bounded one past its levels (sim.semantics.encode_input_bounded), which the
        encoder clips to `encode(x)` and counts in `procs.encoder.clipped`."""
        encoded = self.proc_params["encoded"] if encoded is None else encoded
        x = np.asarray(x)
        if encoded:
            inp = self.plan.input
            values = semantics.encode_input_bounded(x, inp.inv_scale, inp.lo,
                                                    inp.hi).astype(np.float64)
        else:
            values = x.astype(np.float64)
        lanes = self.plan.lanes
        groups = self.plan.groups(len(x))
        padded = np.zeros((groups * lanes,) + tuple(x.shape[1:]), np.float64)
        padded[:len(x)] = values
        steps = np.repeat(padded.reshape((groups, lanes) + tuple(x.shape[1:])),
                          self.timesteps, axis=0)
        tail = np.zeros((self.latency, lanes) + tuple(x.shape[1:]))
        steps = np.concatenate([steps, tail])
        if self.lanes is None:
            steps = steps[:, 0]
        return np.moveaxis(steps, 0, -1)

    def collect(self, data: np.ndarray, samples: int) -> np.ndarray:
        """The integer accumulators (N, *output_shape) from a sink RingBuffer's `data`
        (*out.shape, steps) that recorded `out` from the first step: column
        (g + 1)·T − 1 + latency holds group g's."""
        data = np.moveaxis(np.asarray(data), -1, 0)
        if self.lanes is None:
            data = data[:, None]
        groups = self.plan.groups(samples)
        columns = np.arange(groups) * self.timesteps + self.timesteps - 1 + self.latency
        if columns.size and columns[-1] >= len(data):
            raise SimulationError(f"the sink holds {len(data)} steps; {samples} samples need "
                                  f"{self.num_steps(samples)}")
        acc = np.rint(data[columns]).astype(np.int64)
        return acc.reshape((groups * self.plan.lanes,) + acc.shape[2:])[:samples]

    def logits(self, accumulator: np.ndarray) -> np.ndarray:
        """sim.cpu's `logits` from integer accumulators (N, *output_shape):
        y = float32(A + T·b) · float32(scale / T)."""
        node = self.plan.readout.node
        return semantics.readout(accumulator, node.bias[None], node.scale[None], self.timesteps)

    def readout(self, accumulator: np.ndarray) -> np.ndarray:
        """sim.cpu's `output` from integer accumulators: the logits through the model's final
        softmax when it ended in one."""
        return apply_softmax(self.logits(accumulator), self.plan.readout.node.softmax)


@implements(proc=Network, protocol=LoihiProtocol)
class SubNetworkModel(AbstractSubProcessModel):
    """Builds the encoder, the neuron-layer stages and the readout stage inside a Network and
    connects them to its ports; every sub-process's model follows the run configuration."""

    def __init__(self, proc: Network):
        params = proc.proc_params
        stages = build_stages(params["plan"], params["samples"], params["in_shape"],
                              params["out_shape"], params["encoded"])
        self.encoder = stages.encoder
        proc.inp.connect(stages.encoder.a_in)
        by_node = {**stages.layers, stages.readout.name: stages.readout}
        for i, stage in enumerate(params["plan"].stages):
            setattr(self, stage_name(i), by_node[stage.node.name])
        stages.readout.s_out.connect(proc.out)


def stage_name(i: int) -> str:
    """The attribute (and `net.procs` member) of the plan's i-th stage process."""
    return f"stage_{i:03d}"
