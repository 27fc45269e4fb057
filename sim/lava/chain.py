"""Synapse chains: the synapse and index nodes between one compute node (a neuron layer or the
readout) and the neuron/input nodes that feed it, evaluated on a batch of lanes (the samples
one Lava step carries side by side; sim.cpu's kernels take a leading batch axis).

A Lava process per synapse node would cost ~0.1 ms per step each (docs/lava.md), so each neuron
layer's process computes its whole chain in numpy with each kind's own integer map (sim.ops, the
contract); the integer results and the synops counts are sim.reference's by construction.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.ops import Node


@dataclass
class Chain:
    """The synapse/index nodes feeding one compute node, in topological order.

    `sources` are the neuron or input nodes the chain reads (one Lava in-port each), `output` the
    node whose value is the compute node's input current, `counted` the synapse nodes whose synops
    this chain reports (a node shared by two chains is computed by both, counted by one).
    """
    nodes: list[Node]
    sources: list[str]
    output: str
    counted: frozenset[str]

    def evaluate(self, inputs: list[np.ndarray], count: bool) -> tuple[np.ndarray, np.ndarray]:
        """(input current (rows, *shape) int64, synops per chain node) for the chain's
        sources, (rows, *shape) each."""
        values = dict(zip(self.sources, inputs))
        synops = np.zeros(len(self.nodes), dtype=np.int64)
        for i, node in enumerate(self.nodes):
            values[node.name], synops[i] = node.apply(
                [values[n] for n in node.inputs], count and node.name in self.counted)
        return values[self.output], synops
