"""Build the Lava process graph of a plan (sim.lava.graph): one source holding every sample, one
process per neuron layer, the readout sink; each stage's in-port k connected to the out-port of
its chain's k-th source. Every port carries (B, *shape) batches, B = the plan's lanes."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.lava.graph import Plan


@dataclass
class Network:
    source: object                 # SpikeSource
    layers: dict[str, object]      # neuron node name → SFNNeuronLayer
    readout: object                # ReadoutSink

    @property
    def processes(self) -> list:
        return [self.source, *self.layers.values(), self.readout]


def lane_major(plan: Plan, x: np.ndarray) -> np.ndarray:
    """x (N, *in) → (⌈N/B⌉, B, *in) float32: group g is what the source sends during its T steps
    (rows past N are zero padding, never evaluated)."""
    n, lanes = len(x), plan.lanes
    groups = plan.groups(n)
    padded = np.zeros((groups * lanes,) + tuple(x.shape[1:]), np.float32)
    padded[:n] = x
    return padded.reshape((groups, lanes) + tuple(x.shape[1:]))


def build(plan: Plan, x: np.ndarray) -> Network:
    """Processes and connections for running `plan` on the float inputs x (N, *input_shape)."""
    from sim.lava.procs.process import ReadoutSink, SFNNeuronLayer, SpikeSource

    inp = plan.input
    groups = plan.groups(len(x))
    valid = np.minimum(plan.lanes, len(x) - plan.lanes * np.arange(groups))
    source = SpikeSource(samples=lane_major(plan, x), valid=valid, inv_scale=inp.inv_scale,
                         lo=inp.lo, hi=inp.hi, timesteps=plan.timesteps, name=inp.name)
    senders = {inp.name: source}
    layers, readout = {}, None
    for stage in plan.stages:
        common = dict(chain=stage.chain, input_shapes=stage.input_shapes, delays=stage.delays,
                      offset=stage.offset, timesteps=plan.timesteps, num_samples=len(x),
                      lanes=plan.lanes)
        if stage.node.role == "neuron":
            proc = SFNNeuronLayer(neuron=stage.node, binary=plan.binary, **common)
            layers[stage.node.name] = senders[stage.node.name] = proc
        else:
            proc = readout = ReadoutSink(readout=stage.node, **common)
        for k, name in enumerate(stage.chain.sources):
            senders[name].s_out.connect(getattr(proc, f"in_{k}"))
    return Network(source, layers, readout)
