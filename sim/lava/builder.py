"""Build the Lava processes of a plan (sim.lava.graph) inside a `Network` (sim.lava.procs.network):
the input encoder, one process per neuron layer and the readout stage, each stage's in-port k
connected to the out-port of its chain's k-th source. Every port between them carries
(B, *shape) batches, B = the plan's lanes; `lane_major` lays out sim.lava.run's inputs."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.lava.graph import Plan


@dataclass
class Stages:
    encoder: object                # InputEncoder
    layers: dict[str, object]      # neuron node name → SFNNeuronLayer
    readout: object                # ReadoutStage

    @property
    def processes(self) -> list:
        return [self.encoder, *self.layers.values(), self.readout]


def lane_major(plan: Plan, x: np.ndarray) -> np.ndarray:
    """x (N, *in) → (⌈N/B⌉, B, *in) float32: group g is what the source sends during its T steps
    (rows past N are zero padding, never evaluated)."""
    n, lanes = len(x), plan.lanes
    groups = plan.groups(n)
    padded = np.zeros((groups * lanes,) + tuple(x.shape[1:]), np.float32)
    padded[:n] = x
    return padded.reshape((groups, lanes) + tuple(x.shape[1:]))


def build_stages(plan: Plan, samples: int | None, in_shape, out_shape, encoded: bool) -> Stages:
    """The connected processes of `plan`; `samples`: N of a run, or None for an open stream;
    `in_shape`/`out_shape`: the encoder's in-port and the readout's out-port shapes."""
    from sim.lava.procs.process import (InputEncoder, ReadoutStage, SFNNeuronLayer)

    inp = plan.input
    encoder = InputEncoder(in_shape=in_shape, lanes=plan.lanes, sample_shape=inp.shape,
                           inv_scale=inp.inv_scale, lo=inp.lo, hi=inp.hi, encoded=encoded,
                           timesteps=plan.timesteps, samples=samples, name=inp.name)
    senders = {inp.name: encoder}
    layers, readout = {}, None
    for stage in plan.stages:
        common = dict(chain=stage.chain, input_shapes=stage.input_shapes, delays=stage.delays,
                      offset=stage.offset, timesteps=plan.timesteps, num_samples=samples,
                      lanes=plan.lanes)
        if stage.node.role == "neuron":
            proc = SFNNeuronLayer(neuron=stage.node, binary=plan.binary, **common)
            layers[stage.node.name] = senders[stage.node.name] = proc
        else:
            proc = readout = ReadoutStage(readout=stage.node, out_shape=out_shape, **common)
        for k, name in enumerate(stage.chain.sources):
            senders[name].s_out.connect(getattr(proc, f"in_{k}"))
    return Stages(encoder, layers, readout)
