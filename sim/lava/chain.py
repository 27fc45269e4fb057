"""Synapse chains: the synapse and index nodes between one compute node (a neuron layer or the
readout) and the neuron/input nodes that feed it, evaluated on one sample.

A Lava process per synapse node would cost ~84 µs per step each (notes/lava.md), so each neuron
layer's process computes its whole chain (conv, sum-pool, add, concat, ...) in numpy with
sim.cpu's own kernels; the integer results and the synops counts are sim.cpu's by construction.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.cpu.runner import _synapse
from sim.ir import Node


def step(node: Node, ins: list[np.ndarray], count: bool) -> tuple[np.ndarray, int]:
    """Value and synaptic operations of one synapse or index node on a (1, *shape) batch.

    The equations are sim.ir's; synops are counted as sim.cpu counts them (nonzero input ×
    fan-out for dense/conv/sum-pool, nonzero inputs for add, none for max-pool and index maps).
    """
    kind = node.kind
    if kind == "add":
        total, synops = 0, 0
        for gain, x, exp in zip(node.gains, ins, node.exps):
            total = total + ((np.asarray(gain)[None] * x) << exp)
            synops += int(np.count_nonzero(x)) if count else 0
        return total, synops
    if kind == "concat":
        return np.concatenate(ins, axis=node.axis + 1), 0
    if kind == "reshape":
        return ins[0].reshape((len(ins[0]),) + tuple(node.shape)), 0
    if kind == "transpose":
        return ins[0].transpose((0,) + tuple(p + 1 for p in node.perm)), 0
    return _synapse(node, ins[0], count)


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
        """(input current (1, *shape) int64, synops per chain node) for one sample."""
        values = dict(zip(self.sources, inputs))
        synops = np.zeros(len(self.nodes), dtype=np.int64)
        for i, node in enumerate(self.nodes):
            values[node.name], synops[i] = step(node, [values[n] for n in node.inputs],
                                                count and node.name in self.counted)
        return values[self.output], synops
