"""Fan-in larger than a core: a neuron whose incoming synapses alone exceed a core's synaptic
memory (or its input axons) has its dense fan-in cut into k chunks of consecutive inputs. Chunk
0 stays with the neuron; each other chunk j drives a *partial-sum relay* population of the same
shape on cores of its own, which sums its chunk and forwards the integer partial sum as a
graded spike over a one-to-one connection into the neuron, where the k currents add up
(dendritic accumulation). The sum is the same; each relay costs one compartment per neuron and
its own synapse lists, and the neuron one one-to-one synapse per relay. A partial sum travels
exactly while it fits the payload bits (a worst-case bound beyond them is a note, like any
relay's).

k is the count, among the fewest that make every part fit a core and up to TRIED more, whose
parts need the fewest cores when packed alone (k × ⌈neurons / neurons of a part per core⌉):
a synapse list costs whole 64-bit words per input axon, so fewer inputs per core can let more
neurons share a word.

Allowed when the target says compartments may forward partial sums
(`synapse_encoding.partial_sum_relays`); only dense (full) connections are cut: a window
connection's fan-in is C_in/groups·kh·kw, shared over every position. Everything else that does
not fit is the error no split can fix, which says why the split does not apply.
"""
from __future__ import annotations

import numpy as np

from toolchain.errors import MappingError
from toolchain.mapping.cost import Connection, Cost
from toolchain.mapping.graph import Graph, Population
from toolchain.mapping.limits import value_ranges
from toolchain.target import Target

MAX_CHUNKS = 64
TRIED = 16       # chunk counts tried beyond the fewest that fit


def _fits(cost: Cost, target: Target) -> bool:
    axon_limit = target["input_axons_per_core"]
    return (cost.neurons <= target["neurons_per_core"]
            and cost.memory_bits <= target["synaptic_memory_bits_per_core"]
            and (axon_limit is None or cost.axons <= axon_limit))


def _cost(g: Graph, pop: Population, mask: np.ndarray, target: Target) -> Cost:
    total = Cost(int(mask.sum()))
    for c in pop.connections:
        total = total + c.cost(mask, target, g.input_shape(c), target["input_axons_per_core"]
                               is not None)
    return total


def _element_cost(g: Graph, pop: Population, element: int, target: Target) -> Cost:
    mask = np.zeros(pop.size, bool)
    mask[element] = True
    return _cost(g, pop, mask, target)


def _per_core(g: Graph, pop: Population, target: Target) -> int:
    """How many consecutive elements of `pop` (from the first) fit one core: a binary search on
    the exact cost (0 if not even one)."""
    lo, hi = 0, pop.size
    while lo < hi:
        mid = (lo + hi + 1) // 2
        mask = np.zeros(pop.size, bool)
        mask[:mid] = True
        if _fits(_cost(g, pop, mask, target), target):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _weighted(c: Connection) -> bool:
    """A dense connection through a weight matrix (what a split cuts by input columns; a
    product's operands are not split)."""
    return c.node is not None and c.node.connectivity == "full" and \
        getattr(c.node, "weight", None) is not None


def _widest(pop: Population) -> int:
    """The element with the most nonzero incoming dense synapses (weights or product operands;
    0 without such connections)."""
    fan = np.zeros(pop.size, np.int64)
    for c in pop.connections:
        if c.node is not None and c.node.connectivity == "full":
            rows = np.count_nonzero(c._nz(), axis=1)
            fan += rows if c.index is None else np.where(c.index >= 0,
                                                         rows[np.maximum(c.index, 0)], 0)
    return int(fan.argmax())


def _chunks(n: int, k: int) -> list[tuple[int, int]]:
    edges = np.linspace(0, n, k + 1).round().astype(int)
    return list(zip(edges[:-1], edges[1:]))


def _split(g: Graph, pop: Population, k: int, target: Target) -> list[Population]:
    """Cut every dense connection of `pop` into k chunks of inputs: chunk 0 stays, chunks 1…k−1
    become relay populations feeding `pop` one-to-one. Returns the relays."""
    full = [c for c in pop.connections if _weighted(c)]
    rest = [c for c in pop.connections if c not in full]
    relays = [Population(f"{pop.name}/partial{j}", "relay", pop.shape, partial_of=pop.name)
              for j in range(1, k)]
    mine = []
    for c in full:
        for j, (a, b) in enumerate(_chunks(c.node.weight.shape[1], k)):
            part = Connection(c.node, c.sources, c.index, c.size, c.shape, c.format,
                              columns=np.arange(a, b), input=c.input,
                              input_shapes=c.input_shapes)
            (mine if j == 0 else relays[j - 1].connections).append(part)
    shared = target["conv_weight_sharing"] and len(pop.shape) > 1
    pop.connections = mine + rest + [
        Connection(None, (r.name,), None, pop.size, pop.shape, "shared" if shared else "sparse")
        for r in relays]
    return relays


def split_fan_in(g: Graph, target: Target) -> list[str]:
    """Split every population one of whose elements does not fit a core alone (module
    docstring); the relays join `g.populations` after their neuron. Returns notes."""
    notes, out = [], []
    allowed = bool(target.sections["synapse_encoding"].get("partial_sum_relays") and
                   target["partial_sum_relays"])
    for pop in g.populations:
        out.append(pop)
        element = _widest(pop)
        single = _element_cost(g, pop, element, target)
        if _fits(single, target):
            continue
        dense = any(_weighted(c) for c in pop.connections)
        if not allowed:
            raise single_neuron_error(pop, element, single, target, (
                f"{target.name} does not allow splitting a neuron's fan-in into partial sums "
                "on relay compartments (synapse_encoding.partial_sum_relays is not true)"))
        if not dense:
            raise single_neuron_error(pop, element, single, target, (
                "only a dense fan-in (a weight matrix) is split into partial sums; this one "
                "comes through window (convolution or pooling) connections, whose synapses are "
                "shared per channel, or through a product of two activations"))
        # the fewest chunks whose parts fit a core, then up to TRIED more: the count that needs
        # the fewest cores (k parts of ⌈size / elements per core⌉ cores each)
        best, tried = None, 0
        for k in range(2, MAX_CHUNKS + 1):
            trial = Population(pop.name, pop.role, pop.shape, list(pop.connections))
            parts = [trial] + _split(g, trial, k, target)
            if not all(_fits(_element_cost(g, p, element, target), target) for p in parts):
                continue
            per_core = min(_per_core(g, p, target) for p in parts)
            cores = k * -(-pop.size // max(per_core, 1))
            if best is None or cores < best[0]:
                best = (cores, k, trial, parts[1:])
            tried += 1
            if tried > TRIED:
                break
        if best is None:
            raise single_neuron_error(pop, element, single, target, (
                f"even {MAX_CHUNKS} partial sums leave one part over a core"))
        _, k, trial, relays = best
        pop.connections = trial.connections
        out.extend(relays)
        inputs = max(c.node.weight.shape[1] for c in pop.connections
                     if c.node is not None and c.columns is not None)
        notes.append(f"layer {pop.name!r}: one neuron's fan-in ({single.memory_bits:,} bits of "
                     f"synapses, {single.memory_bits / target['synaptic_memory_bits_per_core']:.2f}"
                     f"× a core) split into {k} partial sums of about {inputs // k:,} inputs "
                     f"each; relays {', '.join(r.name for r in relays)}")
        notes.extend(_payload_notes(g, relays, target))
    g.populations = out
    for pop in g.populations:
        g.graph.add_node(pop.name, role=pop.role, size=pop.size)
    for pop in g.populations:
        for c in pop.connections:
            for s in c.sources:
                g.graph.add_edge(s, pop.name)
    return notes


def _payload_notes(g: Graph, relays: list[Population], target: Target) -> list[str]:
    """A partial sum whose worst-case bound exceeds the payload bits (a note, like any relay's:
    a bound, not a value)."""
    ranges = value_ranges(g.art.nodes)
    notes = []
    for r in relays:
        bound = 0
        for c in r.connections:
            lo, hi = ranges[c.node.inputs[0]]
            w = np.abs(np.asarray(c.node.weight, np.int64)[:, c.columns])
            bound += int(w.sum(axis=1).max()) * max(abs(lo), abs(hi)) * 2 ** c.node.weight_exp
        bits = bound.bit_length() + 1
        if bits > target["payload_bits"]:
            notes.append(f"partial sum {r.name!r} can reach ±{bound} in the worst case ({bits} "
                         f"bits), beyond the {target['payload_bits']}-bit payload of "
                         f"{target.name}: it would clip there")
    return notes


def single_neuron_error(pop: Population, element: int, single: Cost, target: Target,
                        why: str) -> MappingError:
    """A neuron and all its synapses share one core: the error when one neuron alone is over and
    its fan-in is not split (`why`)."""
    m_core = target["synaptic_memory_bits_per_core"]
    axon_limit = target["input_axons_per_core"]
    where = f"layer {pop.name!r} (element {element} of {'×'.join(map(str, pop.shape))})"
    via = ", ".join(c.name for c in pop.connections) or "no connection"
    fix = ("Fix: reduce this layer's fan-in — fewer input channels or a smaller kernel, a grouped "
           "convolution, or a narrower layer in between.")
    if single.memory_bits > m_core:
        return MappingError(
            f"{where}: one neuron's incoming synapses (through {via}) need "
            f"{single.memory_bits:,} bits of synaptic memory, a {target.name} core has "
            f"{m_core:,} (over by {single.memory_bits - m_core:,} bits, "
            f"{single.memory_bits / m_core:.2f}×); a neuron's synapses must sit on its own core "
            f"and the fan-in is not split: {why}. {fix}")
    return MappingError(
        f"{where}: one neuron reads {single.axons:,} input axons (fan-in through {via}), a "
        f"{target.name} core accepts {axon_limit:,} (over by {single.axons - axon_limit:,}); a "
        f"neuron's inputs must all reach its own core and the fan-in is not split: {why}. {fix}")
