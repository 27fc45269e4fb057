"""The artifact seen as compartment populations and the connections between them (the roles
and relays of the package docstring), derived from each node kind's traits (sim.ops)."""
from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import numpy as np

from sim.artifact import Artifact
from sim.ops.base import EDGE, INDEX, NEURON, SINK, SOURCE
from toolchain.errors import MappingError
from toolchain.mapping.cost import Connection
from toolchain.target import Target

@dataclass
class Population:
    """Compartments placed together: one SFN node's outputs and their incoming connections."""
    name: str
    role: str                      # the node kind's compartment role (sim.ops), or "relay"
    shape: tuple[int, ...]
    connections: list[Connection] = field(default_factory=list)
    partial_of: str = ""           # a partial-sum relay: the population it feeds (split.py)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


def _upstream(node) -> tuple[str, ...]:
    """The nodes whose values a node reads: its inputs, or a recurrent edge's source."""
    return (node.source,) if node.role == EDGE else tuple(node.inputs)


class Graph:
    """The artifact seen as compartment populations and the connections between them."""

    def __init__(self, art: Artifact, target: Target):
        self.art = art
        self.nodes = {n.name: n for n in art.nodes}
        self.relays = self._relays()
        self.populations: list[Population] = []
        for n in art.nodes:
            role = n.compartment or ("relay" if n.name in self.relays else None)
            if role is None:
                continue
            pop = Population(n.name, role, tuple(n.shape))
            # a neuron or readout integrates the current its input carries; a relay or a
            # windowed compartment (a pool's maximum) is that node's own output
            start = n.inputs[0] if n.role in (NEURON, SINK) else n.name
            self._expand(start, None, pop, top=start == n.name)
            for c in pop.connections:
                c.format = self._format(c, pop, target)
            self.populations.append(pop)
        self.graph = nx.DiGraph()
        self.graph.add_node(art.input, role="input")
        for pop in self.populations:
            self.graph.add_node(pop.name, role=pop.role, size=pop.size)
        for pop in self.populations:
            for c in pop.connections:
                for s in c.sources:
                    self.graph.add_edge(s, pop.name)

    def is_source(self, name: str) -> bool:
        """Does node `name` send spikes: the input encoder, every compartment but the readout's
        accumulator, a relay."""
        node = self.nodes[name]
        return node.role == SOURCE or (node.compartment is not None and node.role != SINK) \
            or name in self.relays

    def _relays(self) -> set[str]:
        """Synapse nodes whose integer output must become compartments (see module docstring):
        new currents and sums read by a node with synapses of its own or by a recurrent edge."""
        relays = set()
        for n in self.art.nodes:
            if n.connectivity is not None or n.role == EDGE:
                for leaf in (f for up in _upstream(n) for f in self.leaves(up)):
                    if self.nodes[leaf].new_current or self.nodes[leaf].sums_inputs:
                        relays.add(leaf)
        return relays

    def leaves(self, name: str) -> list[str]:
        """The nodes that node `name` re-indexes, through index nodes only."""
        node = self.nodes[name]
        if node.role not in (INDEX, EDGE):
            return [name]
        return [leaf for i in _upstream(node) for leaf in self.leaves(i)]

    def _expand(self, name: str, index, pop: Population, top: bool = False) -> None:
        """Follow the current feeding `pop` back from node `name` (index: population element →
        element of `name`'s output, None = identity) and record its connections."""
        node = self.nodes[name]
        size = int(np.prod(node.shape))
        if index is not None and not (index >= 0).any():
            return
        if not top and self.is_source(name):
            pop.connections.append(Connection(None, (name,), index, size, tuple(node.shape)))
        elif node.fixed:      # a constant: a bias on the core, no synapses
            return
        elif node.connectivity is not None:
            shapes = tuple(tuple(self.nodes[i].shape) for i in node.inputs)
            for k, i in enumerate(node.inputs if node.connectivity == "full" else
                                  node.inputs[:1]):
                pop.connections.append(Connection(node, tuple(self.leaves(i)), index, size,
                                                  tuple(node.shape), input=k,
                                                  input_shapes=shapes))
        elif node.sums_inputs:
            for i in node.inputs:
                self._expand(i, index, pop)
        elif node.role in (INDEX, EDGE):
            ups = _upstream(node)
            tables = node.index_tables([tuple(self.nodes[i].shape) for i in ups])
            for i, table in zip(ups, tables):
                self._expand(i, index if table is None else _compose(table, index), pop)
        else:
            raise MappingError(f"node {name!r}: the mapper does not know how a {node.kind!r} "
                               f"node reaches the compartments of {pop.name!r}")

    def _format(self, c: Connection, pop: Population, target: Target) -> str:
        """The synapse format of a connection, chosen once for the whole layer."""
        shared = target["conv_weight_sharing"]
        if c.node is None:
            return "shared" if shared and len(c.shape) > 1 else "sparse"
        if c.node.connectivity != "full":
            return "shared" if shared else "sparse"
        if not target["sparse_format"]:
            return "dense"
        if not target["dense_format"]:
            return "sparse"
        everything = np.ones(pop.size, bool)
        costs = {}
        for fmt in ("dense", "sparse"):
            c.format = fmt
            costs[fmt] = c.cost(everything, target, None, False).memory_bits
        return min(costs, key=costs.get)

    def input_shape(self, c: Connection):
        return self.nodes[c.node.inputs[c.input]].shape if c.node is not None else None


def _compose(table: np.ndarray, index) -> np.ndarray:
    """table[index] where index ≥ 0, −1 elsewhere; a None index is the identity."""
    if index is None:
        return table
    return np.where(index >= 0, table[np.maximum(index, 0)], -1)

