"""Plan an artifact as a Lava process graph: stages, chains, delays. Pure Python, no Lava import.

One Lava process per compute node: the input encoder (source), one per neuron layer (its synapse
chain plus its neurons), and the readout (its chain plus the accumulator, the sink). Every stage
sends last step's result before it receives (Lava's Dense does the same), so each neuron layer
adds one step of delay and all processes work in parallel within a step.

Timing: the source sends encoder step u = t − 1 at Lava step t (t ≥ 1); a neuron layer whose
input offset is M receives the data of step u = t − 1 − M and its output has offset M + 1. An
input from a shallower producer (offset o < M) is held M − o extra steps in the consumer, so
every value a stage combines belongs to the same sample. Step u is timestep u mod T of sample
u // T; the readout's offset is the graph's latency D.

Lanes: every message is a (B, *shape) batch of B samples side by side, and every stage holds its
state for B samples, so the per-step cost of Lava (~0.1 ms per process, docs/lava.md) is shared
by B samples. Step u is then timestep u mod T of group g = u // T, the samples g·B … g·B + B − 1
(the last group may hold fewer: its padding rows are sent as zeros and never evaluated), and
N samples take ⌈N/B⌉·T + D steps. B = 1 is the one-sample-per-step pipeline.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.artifact import Artifact
from sim.errors import SimulationError, UnsupportedOpError
from sim.lava.chain import Chain
from sim.ops import Input, Node
from sim.ops.base import EDGE, INDEX, NEURON, SINK, SOURCE, SYNAPSE

MAX_INPUTS = 8  # in-ports of a stage process (Lava models declare ports statically)
# a stage process per neuron layer and for the readout; synapse and index nodes are computed in
# the chain of the stage they feed; delays only inside a recurrent cell (sim.lava.recurrent)
COMPUTE_ROLES = (NEURON, SINK)
CHAIN_ROLES = (SYNAPSE, INDEX)
MAPPED_ROLES = (SOURCE,) + COMPUTE_ROLES + CHAIN_ROLES
DEFAULT_LANES = 64         # samples side by side when lanes is not given
MAX_PROCESSES = 512        # Lava processes of one run (one OS process each): the source and stages
MESSAGE_BYTES = 1 << 20    # largest (B, *shape) message; Lava allocates 64 per channel


@dataclass
class Stage:
    """One Lava process: a neuron layer or the readout, with the chain that feeds it."""
    node: Node
    chain: Chain
    input_shapes: list[tuple[int, ...]]  # per in-port: the shape of the chain source it carries
    delays: list[int]   # extra steps each in-port's data is held
    offset: int         # this stage's input is encoder step u = t − 1 − offset


@dataclass
class Plan:
    input: Input
    stages: list[Stage]  # topological order
    timesteps: int
    binary: bool
    lanes: int = 1       # B: samples side by side in every message (module docstring)

    @property
    def readout(self) -> Stage:
        return next(s for s in self.stages if s.node.role == SINK)

    @property
    def latency(self) -> int:
        """Steps between the source sending a value and the readout accumulating its result."""
        return self.readout.offset

    def groups(self, samples: int) -> int:
        """⌈N/B⌉: groups of B samples, each T steps."""
        return -(-samples // self.lanes)

    def num_steps(self, samples: int) -> int:
        return self.groups(samples) * self.timesteps + self.latency

    def widest(self) -> int:
        """Elements of the largest per-sample payload a stage sends or receives."""
        shapes = [self.input.shape] + [s.node.shape for s in self.stages]
        return max(int(np.prod(shape)) for shape in shapes)

    def macs_per_sample(self) -> int:
        """Multiply-accumulates of one sample's timestep (dense and conv nodes; a node shared
        by two chains counted twice, as it is computed twice)."""
        total = 0
        for stage in self.stages:
            total += sum(node.macs() for node in stage.chain.nodes)
        return total


def choose_lanes(p: Plan, samples: int, lanes: int | None = None) -> int:
    """B for N = `samples`: min(N, `lanes` (default DEFAULT_LANES), what keeps one
    (B, *shape) message under MESSAGE_BYTES). The result does not depend on B."""
    if lanes is not None and (isinstance(lanes, bool) or not isinstance(lanes, (int, np.integer))
                              or lanes < 1):
        raise SimulationError(f"lanes must be an integer ≥ 1, got {lanes!r}")
    cap = max(1, MESSAGE_BYTES // (8 * max(p.widest(), 1)))
    return max(1, min(samples, DEFAULT_LANES if lanes is None else int(lanes), cap))


def refuse_unmapped(art: Artifact, roles: tuple[str, ...] = MAPPED_ROLES,
                    recurrent: bool = False) -> None:
    """Raise UnsupportedOpError naming the first node sim.lava cannot map, before anything runs:
    a role outside `roles`, or (feed-forward only) a neuron that does not reset by subtraction."""
    defined = set()
    for node in art.nodes:
        where = f"node {node.name!r} ({node.kind})"
        if node.role not in roles or (node.role in CHAIN_ROLES
                                      and type(node).apply is Node.apply):
            what = "a recurrent edge outside a recurrent cell" if node.role == EDGE else \
                f"its kind defines no integer map for a {node.role!r} node"
            raise UnsupportedOpError(
                f"{where} has no Lava mapping ({what}); run this artifact with the cpu backend")
        later = [i for i in node.inputs if i not in defined]
        if later:
            raise UnsupportedOpError(f"{where} reads {later} before they are computed; a "
                                     "recurrent edge must be a delay node")
        if not recurrent and node.role == NEURON and node.reset != "subtract":
            raise UnsupportedOpError(
                f"{where}: reset {node.reset!r} is mapped only in a recurrent network's cell "
                "(sim.lava.recurrent); a feed-forward layer resets by subtraction; use the cpu "
                "backend")
        if node.role == SOURCE and node.name != art.input:
            raise UnsupportedOpError(f"{where}: sim.lava maps one input node ({art.input!r})")
        if node.role == SINK and node.name != art.output:
            raise UnsupportedOpError(f"{where}: sim.lava maps one readout ({art.output!r})")
        defined.add(node.name)
    for node in art.nodes:
        if node.role == EDGE and node.source not in defined:
            raise UnsupportedOpError(f"delay {node.name!r} reads unknown node {node.source!r}")


def plan(art: Artifact, timesteps: int = 1, binary: bool = False, lanes: int = 1) -> Plan:
    """Partition `art` into stages and time them for B = `lanes` samples side by side; refuse
    what cannot be mapped."""
    refuse_unmapped(art)
    processes = 1 + sum(n.role in COMPUTE_ROLES for n in art.nodes)
    if processes > MAX_PROCESSES:
        raise SimulationError(f"the network needs {processes} Lava processes (one per neuron "
                              f"layer), more than the {MAX_PROCESSES} sim.lava starts; run it on "
                              "sim.cpu")
    if timesteps < 1:
        raise SimulationError(f"timesteps must be ≥ 1, got {timesteps}")
    if timesteps > 1 and any(getattr(n, "fire", "") == "adaptive" for n in art.nodes):
        raise SimulationError("adaptive fire functions are defined for T = 1 only")
    by_name = {n.name: n for n in art.nodes}
    order = {n.name: i for i, n in enumerate(art.nodes)}
    out_offset = {art.input: 0}
    counted: set[str] = set()
    stages = []
    for node in art.nodes:
        if node.role not in COMPUTE_ROLES:
            continue
        members, sources = set(), set()
        pending = list(node.inputs)
        while pending:
            upstream = by_name[pending.pop()]
            if upstream.role in (NEURON, SOURCE):
                sources.add(upstream.name)
            elif upstream.name not in members:
                members.add(upstream.name)
                pending.extend(upstream.inputs)
        if len(sources) > MAX_INPUTS:
            raise UnsupportedOpError(
                f"node {node.name!r} ({node.kind}) reads {len(sources)} neuron layers through its "
                f"synapses; a Lava stage process has at most {MAX_INPUTS} in-ports")
        sources = sorted(sources, key=order.get)
        mine = frozenset(members - counted)
        counted |= mine
        chain = Chain([by_name[m] for m in sorted(members, key=order.get)], sources,
                      node.inputs[0], mine)
        offset = max(out_offset[s] for s in sources)
        stages.append(Stage(node, chain, [tuple(by_name[s].shape) for s in sources],
                            [offset - out_offset[s] for s in sources], offset))
        out_offset[node.name] = offset + 1
    if lanes < 1:
        raise SimulationError(f"lanes must be ≥ 1, got {lanes}")
    return Plan(by_name[art.input], stages, timesteps, binary, int(lanes))
