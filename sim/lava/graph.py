"""Plan an artifact as a Lava process graph: stages, chains, delays. Pure Python, no Lava import.

One Lava process per compute node: the input encoder (source), one per neuron layer (its synapse
chain plus its neurons), and the readout (its chain plus the accumulator, the sink). Every stage
sends last step's result before it receives (Lava's Dense does the same), so each neuron layer
adds one step of delay and all processes work in parallel within a step.

Timing: the source sends encoder step u = t − 1 at Lava step t (t ≥ 1); a neuron layer whose
input offset is M receives the data of step u = t − 1 − M and its output has offset M + 1. An
input from a shallower producer (offset o < M) is held M − o extra steps in the consumer, so
every value a stage combines belongs to the same sample. Step u is timestep u mod T of sample
u // T; the readout's offset is the graph's latency D, and N samples take N·T + D steps.
"""
from __future__ import annotations

from dataclasses import dataclass

from sim.artifact import Artifact
from sim.ir import Input, Node
from sim.lava.chain import Chain
from toolchain.errors import SimulationError, UnsupportedOpError

MAX_INPUTS = 8  # in-ports of a stage process (Lava models declare ports statically)
COMPUTE_KINDS = ("neuron", "readout")
CHAIN_KINDS = ("dense", "conv", "sumpool", "maxpool", "add", "concat", "reshape", "transpose")
MAPPED_KINDS = ("input",) + COMPUTE_KINDS + CHAIN_KINDS


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

    @property
    def readout(self) -> Stage:
        return next(s for s in self.stages if s.node.kind == "readout")

    @property
    def latency(self) -> int:
        """Steps between the source sending a value and the readout accumulating its result."""
        return self.readout.offset

    def num_steps(self, samples: int) -> int:
        return samples * self.timesteps + self.latency


def refuse_unmapped(art: Artifact, kinds: tuple[str, ...] = MAPPED_KINDS,
                    recurrent: bool = False) -> None:
    """Raise UnsupportedOpError naming the first node sim.lava cannot map, before anything runs:
    a kind outside `kinds`, or (feed-forward only) a neuron that does not reset by subtraction."""
    defined = set()
    for node in art.nodes:
        where = f"node {node.name!r} ({node.kind})"
        if node.kind not in kinds:
            raise UnsupportedOpError(
                f"{where} has no Lava mapping (sim.lava maps {', '.join(kinds)}"
                f"{' in a recurrent network' if recurrent else ''}); run this artifact with the "
                "cpu backend")
        later = [i for i in node.inputs if i not in defined]
        if later:
            raise UnsupportedOpError(f"{where} reads {later} before they are computed; a "
                                     "recurrent edge must be a delay node")
        if not recurrent and node.kind == "neuron" and node.reset != "subtract":
            raise UnsupportedOpError(
                f"{where}: reset {node.reset!r} is mapped only in a recurrent network's cell "
                "(sim.lava.recurrent); a feed-forward layer resets by subtraction; use the cpu "
                "backend")
        if node.kind == "input" and node.name != art.input:
            raise UnsupportedOpError(f"{where}: sim.lava maps one input node ({art.input!r})")
        if node.kind == "readout" and node.name != art.output:
            raise UnsupportedOpError(f"{where}: sim.lava maps one readout ({art.output!r})")
        defined.add(node.name)
    for node in art.nodes:
        if node.kind == "delay" and node.source not in defined:
            raise UnsupportedOpError(f"delay {node.name!r} reads unknown node {node.source!r}")


def plan(art: Artifact, timesteps: int = 1, binary: bool = False) -> Plan:
    """Partition `art` into stages and time them; refuse what cannot be mapped."""
    refuse_unmapped(art)
    if timesteps < 1:
        raise SimulationError(f"timesteps must be ≥ 1, got {timesteps}")
    if timesteps > 1 and any(n.kind == "neuron" and n.fire == "adaptive" for n in art.nodes):
        raise SimulationError("adaptive fire functions are defined for T = 1 only")
    by_name = {n.name: n for n in art.nodes}
    order = {n.name: i for i, n in enumerate(art.nodes)}
    out_offset = {art.input: 0}
    counted: set[str] = set()
    stages = []
    for node in art.nodes:
        if node.kind not in COMPUTE_KINDS:
            continue
        members, sources = set(), set()
        pending = list(node.inputs)
        while pending:
            upstream = by_name[pending.pop()]
            if upstream.kind in ("neuron", "input"):
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
    return Plan(by_name[art.input], stages, timesteps, binary)
