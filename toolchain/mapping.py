"""Core mapping: place every compartment population and its incoming synapses on neuro-cores.

What occupies a core (docs/report.md states the rules in full):
- compartments ("neurons" in every count): each SFN neuron; each max-pool output (a maximum
  needs a compartment, i.e. microcode); each readout element (its integer accumulator); and a
  *relay* compartment for each output of a synapse node (dense, conv, sum-pool, add) whose integer
  result feeds another weighted map or a max-pool, e.g. sum-pool → conv: only spikes cross
  cores, so the sum is forwarded as a graded spike (exact while it fits the payload bits).
- synapses are stored on the core of the compartments they drive. Add, concat, reshape,
  transpose and delay nodes cost nothing by themselves: an add is several connections summing
  into the same compartments (dendritic accumulation), an index map only changes which
  compartment a synapse targets.
- the input encoder runs on the host; its spikes arrive as input axons.

Synaptic memory per core, per population and incoming connection, counted on the union of that
population's elements on the core (one synapse list per input axon, stored in groups of at most
`synapses_per_group`, each group `group_header_bits` plus its synapses, rounded up to whole
`word_bits` words, grouped optimally):
- dense connection: dense format (weights only, one list of |rows| per input axon with any
  nonzero weight) or sparse format (weight + index per nonzero synapse), whichever is cheaper
  over the whole layer; the layer keeps that format on every core.
- conv, sum-pool, max-pool windows: with `conv_weight_sharing`, one stored kernel slice
  (C_in/groups·kh·kw weights) per output channel present on the core, whatever the number of
  positions; without it, a sparse list per input axon of the synapses it reaches on the core.
- one-to-one connections (an add's identity branch, a delay): one weight per channel when
  weights are shared, else one sparse synapse per element.

Placement: every population is cut into tiles of about 1/8 of a core (channels × row bands), and
cores are filled one at a time from two streams in graph order, the memory-heavy and the
neuron-heavy populations, so that each core takes its balanced share of both resources. Each
addition is checked against every limit with the exact cost of the union on that core, and the
placement records those exact per-core counts. Limits no split can get around (payload and weight
widths, one neuron's own fan-in) raise MappingError saying which layer, which limit, by how much.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
from rich.table import Table

from sim.artifact import Artifact
from toolchain.errors import ToolchainError
from toolchain.target import Target

PLACEMENT_VERSION = 1
WEIGHTED = ("dense", "conv", "sumpool")       # integer maps whose output is a new current
INDEX = ("reshape", "transpose", "concat", "delay")
UNITS_PER_CORE = 8                            # packing granularity: a unit is ≤ 1/8 of a core


class MappingError(ToolchainError):
    """The network does not fit the target: a limit no split across cores can get around."""


# ---------------------------------------------------------------- synapse-list cost

_LIST_TABLES: dict[tuple, np.ndarray] = {}


def list_words(counts, bits: int, target: Target) -> int:
    """Words of synaptic memory for synapse lists of `counts` synapses of `bits` bits each.

    A list is cut into groups of at most `synapses_per_group`; a group of p synapses takes
    ceil((p·bits + group_header_bits) / word_bits) words; the cut is the cheapest one (a dynamic
    programme over list lengths, cached), so the cost of merged lists never exceeds the sum.
    """
    counts = np.asarray(counts, dtype=np.int64).ravel()
    if counts.size == 0:
        return 0
    g, h, w = target["synapses_per_group"], target["group_header_bits"], target["word_bits"]
    key = (bits, g, h, w)
    table = _LIST_TABLES.get(key, np.zeros(1, np.int64))
    need = int(counts.max())
    if need >= len(table):
        group = np.array([0] + [-(-(p * bits + h) // w) for p in range(1, g + 1)], np.int64)
        new = np.zeros(max(need + 1, 2 * len(table)), np.int64)
        new[:len(table)] = table
        for n in range(len(table), len(new)):
            lo = max(0, n - g)
            new[n] = (new[lo:n][::-1] + group[1:n - lo + 1]).min()
        _LIST_TABLES[key] = table = new
    return int(table[counts].sum())


@dataclass
class Cost:
    """Resources of some compartments and their incoming synapses."""
    neurons: int = 0
    memory_bits: int = 0
    axons: int = 0
    synapses: int = 0   # stored synapses (weights in memory)

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.neurons + other.neurons, self.memory_bits + other.memory_bits,
                    self.axons + other.axons, self.synapses + other.synapses)


# ---------------------------------------------------------------- connectivity model

@dataclass
class Connection:
    """One incoming connection of a population.

    `node` is the dense/conv/sum-pool/max-pool node whose synapses these are, or None for a
    one-to-one connection from `sources[0]`; `index[p]` is the element of the node's output (of
    the source, for one-to-one) that population element p receives, −1 where this connection
    does not reach p; None means the identity.
    """
    node: object
    sources: tuple[str, ...]
    index: np.ndarray | None
    size: int                      # elements of the node's output (or of the source)
    shape: tuple[int, ...]
    format: str = ""
    _nonzero: np.ndarray | None = None

    @property
    def name(self) -> str:
        return self.node.name if self.node is not None else self.sources[0]

    def _nz(self) -> np.ndarray:
        if self._nonzero is None:
            self._nonzero = np.asarray(self.node.weight) != 0
        return self._nonzero

    def cost(self, elements: np.ndarray, target: Target, in_shape, axons: bool) -> Cost:
        """Synaptic memory, input axons and stored synapses for population elements `elements`
        (a boolean mask over the population) under this connection's format."""
        if self.index is None:
            mask = elements
        else:
            sel = self.index[elements]
            mask = np.zeros(self.size, bool)
            mask[sel[sel >= 0]] = True
        wb, ib = target["weight_bits"], target["index_bits"]
        if self.node is None:
            n = int(mask.sum())
            if self.format == "shared":
                per = int(np.prod(self.shape[1:])) if len(self.shape) > 1 else 1
                chans = int(mask.reshape(-1, per).any(axis=1).sum())
                return Cost(0, chans * list_words(1, wb, target) * target["word_bits"], n, chans)
            return Cost(0, n * list_words(1, wb + ib, target) * target["word_bits"], n, n)
        if self.node.kind == "dense":
            return self._dense_cost(mask, target, wb, ib)
        return self._window_cost(mask.reshape(self.shape), target, in_shape, axons, wb, ib)

    def _dense_cost(self, mask, target, wb, ib) -> Cost:
        rows = np.flatnonzero(mask)
        per_axon = self._nz()[rows].sum(axis=0)
        used = per_axon[per_axon > 0]
        word = target["word_bits"]
        if self.format == "dense":
            words = len(used) * list_words(len(rows), wb, target)
            return Cost(0, words * word, len(used), len(used) * len(rows))
        return Cost(0, list_words(used, wb + ib, target) * word, len(used), int(used.sum()))

    def _window_cost(self, mask, target, in_shape, axons, wb, ib) -> Cost:
        groups, c_in_g, kh, kw = _window(self.node)[:4]
        c_out = mask.shape[0]
        word = target["word_bits"]
        per_group = mask.reshape(groups, c_out // groups, *mask.shape[1:])
        if self.format == "shared":
            chans = int(mask.any(axis=(1, 2)).sum())
            memory = chans * list_words(c_in_g * kh * kw, wb, target) * word
            n_axons = int(_reach(self.node, per_group.any(axis=1), in_shape).sum()) * c_in_g \
                if axons else 0
            return Cost(0, memory, n_axons, chans * c_in_g * kh * kw)
        per_axon = _reach(self.node, per_group.sum(axis=1), in_shape)
        used = per_axon[per_axon > 0]
        return Cost(0, c_in_g * list_words(used, wb + ib, target) * word, c_in_g * len(used),
                    c_in_g * int(used.sum()))


def _window(node):
    """(groups, C_in/groups, kh, kw, stride, pads, dilation) of a windowed node."""
    if node.kind == "conv":
        c_out, c_in_g, kh, kw = node.weight.shape
        return node.groups, c_in_g, kh, kw, node.stride, node.pads, node.dilation
    c = node.shape[0]
    dilation = getattr(node, "dilation", (1, 1))
    return c, 1, node.kernel[0], node.kernel[1], node.stride, node.pads, dilation


def _reach(node, per_group: np.ndarray, in_shape) -> np.ndarray:
    """Scatter per-output-position values (groups, Ho, Wo) onto the input positions they read:
    Σ (or ∨ for booleans) over kernel taps → (groups, Hi, Wi)."""
    _, _, kh, kw, (sh, sw), (top, left, _, _), (dh, dw) = _window(node)
    hi, wi = in_shape[-2:]
    ho, wo = per_group.shape[-2:]
    out = np.zeros(per_group.shape[:1] + (hi, wi), per_group.dtype)
    for i in range(kh):
        y0, y1 = _valid(i * dh - top, sh, ho, hi)
        for j in range(kw):
            x0, x1 = _valid(j * dw - left, sw, wo, wi)
            if y1 <= y0 or x1 <= x0:
                continue
            ys = slice(y0 * sh + i * dh - top, (y1 - 1) * sh + i * dh - top + 1, sh)
            xs = slice(x0 * sw + j * dw - left, (x1 - 1) * sw + j * dw - left + 1, sw)
            if out.dtype == bool:
                out[:, ys, xs] |= per_group[:, y0:y1, x0:x1]
            else:
                out[:, ys, xs] += per_group[:, y0:y1, x0:x1]
    return out


def _valid(offset: int, stride: int, n_out: int, n_in: int) -> tuple[int, int]:
    """Output range [a, b) whose input coordinate o·stride + offset lies in [0, n_in)."""
    a = max(0, -(offset // stride))
    b = min(n_out, (n_in - 1 - offset) // stride + 1)
    return a, max(a, b)


@dataclass
class Population:
    """Compartments placed together: one SFN node's outputs and their incoming connections."""
    name: str
    role: str                      # neuron | maxpool | readout | relay
    shape: tuple[int, ...]
    connections: list[Connection] = field(default_factory=list)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


class _Graph:
    """The artifact seen as compartment populations and the connections between them."""

    def __init__(self, art: Artifact, target: Target):
        self.art = art
        self.nodes = {n.name: n for n in art.nodes}
        self.relays = self._relays()
        self.populations: list[Population] = []
        for n in art.nodes:
            role = {"neuron": "neuron", "maxpool": "maxpool", "readout": "readout"}.get(
                n.kind, "relay" if n.name in self.relays else None)
            if role is None:
                continue
            pop = Population(n.name, role, tuple(n.shape))
            start = n.inputs[0] if role in ("neuron", "readout") else n.name
            self._expand(start, None, pop, top=role in ("maxpool", "relay"))
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
        kind = self.nodes[name].kind
        return kind in ("input", "neuron", "maxpool") or name in self.relays

    def _relays(self) -> set[str]:
        """Synapse nodes whose integer output must become compartments (see module docstring)."""
        relays = set()
        for n in self.art.nodes:
            if n.kind in WEIGHTED + ("maxpool",) or n.kind == "delay":
                start = n.source if n.kind == "delay" else n.inputs[0]
                for leaf in self.leaves(start):
                    if self.nodes[leaf].kind in WEIGHTED + ("add",):
                        relays.add(leaf)
        return relays

    def leaves(self, name: str) -> list[str]:
        """The nodes that node `name` re-indexes, through index nodes only."""
        node = self.nodes[name]
        if node.kind not in INDEX:
            return [name]
        ins = (node.source,) if node.kind == "delay" else node.inputs
        return [leaf for i in ins for leaf in self.leaves(i)]

    def _expand(self, name: str, index, pop: Population, top: bool = False) -> None:
        """Follow the current feeding `pop` back from node `name` (index: population element →
        element of `name`'s output, None = identity) and record its connections."""
        node = self.nodes[name]
        size = int(np.prod(node.shape))
        if index is not None and not (index >= 0).any():
            return
        if not top and self.is_source(name):
            pop.connections.append(Connection(None, (name,), index, size, tuple(node.shape)))
        elif node.kind in WEIGHTED + ("maxpool",):
            pop.connections.append(Connection(node, tuple(self.leaves(node.inputs[0])), index,
                                              size, tuple(node.shape)))
        elif node.kind == "add":
            for i in node.inputs:
                self._expand(i, index, pop)
        elif node.kind in ("reshape", "delay"):
            self._expand(node.source if node.kind == "delay" else node.inputs[0], index, pop)
        elif node.kind == "transpose":
            src = self.nodes[node.inputs[0]]
            back = np.arange(int(np.prod(src.shape))).reshape(src.shape).transpose(node.perm)
            self._expand(src.name, _compose(back.ravel(), index), pop)
        elif node.kind == "concat":
            shapes = [self.nodes[i].shape for i in node.inputs]
            which = np.concatenate([np.full(s, k) for k, s in enumerate(shapes)], node.axis)
            local = np.concatenate([np.arange(int(np.prod(s))).reshape(s) for s in shapes],
                                   node.axis)
            which, local = which.ravel(), local.ravel()
            full = np.arange(size) if index is None else index
            for k, i in enumerate(node.inputs):
                picked = np.where(full >= 0, which[np.maximum(full, 0)] == k, False)
                self._expand(i, np.where(picked, local[np.maximum(full, 0)], -1), pop)
        else:
            raise MappingError(f"node {name!r}: the mapper does not know how a {node.kind!r} "
                               f"node reaches the compartments of {pop.name!r}")

    def _format(self, c: Connection, pop: Population, target: Target) -> str:
        """The synapse format of a connection, chosen once for the whole layer."""
        shared = target["conv_weight_sharing"]
        if c.node is None:
            return "shared" if shared and len(c.shape) > 1 else "sparse"
        if c.node.kind != "dense":
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
        return self.nodes[c.node.inputs[0]].shape if c.node is not None else None


def _compose(table: np.ndarray, index) -> np.ndarray:
    """table[index] where index ≥ 0, −1 elsewhere; a None index is the identity."""
    if index is None:
        return table
    return np.where(index >= 0, table[np.maximum(index, 0)], -1)


# ---------------------------------------------------------------- limits no split can fix

def _bits(lo: int, hi: int) -> int:
    """Payload bits of values in [lo, hi]: magnitude bits, plus a sign bit when lo < 0."""
    return max(int(max(abs(lo), abs(hi))).bit_length(), 1) + (1 if lo < 0 else 0)


def _value_range(g: _Graph, name: str, memo: dict) -> tuple[int, int]:
    """A bound [lo, hi] on the integers node `name` emits (interval arithmetic)."""
    if name in memo:
        return memo[name]
    memo[name] = (0, 0)  # a delay cycle closes on a neuron, whose range is its own
    node = g.nodes[name]
    kind = node.kind
    if kind == "input":
        out = (node.lo, node.hi)
    elif kind == "neuron":
        if node.fire == "adaptive" and node.payload is not None:
            out = (int(np.min(node.payload)), int(np.max(node.payload)))
        else:
            out = (node.lo, node.hi)
    elif kind in ("reshape", "transpose", "concat", "maxpool", "delay"):
        ins = (node.source,) if kind == "delay" else node.inputs
        ranges = [_value_range(g, i, memo) for i in ins]
        out = (min(r[0] for r in ranges), max(r[1] for r in ranges))
    elif kind == "add":
        lo = hi = 0
        for k, i in enumerate(node.inputs):
            a, b = _value_range(g, i, memo)
            gain = np.asarray(node.gains[k], dtype=np.int64) * 2 ** node.exps[k]
            lo += int(np.minimum(gain * a, gain * b).min())
            hi += int(np.maximum(gain * a, gain * b).max())
        out = (lo, hi)
    elif kind in WEIGHTED:
        a, b = _value_range(g, node.inputs[0], memo)
        a, b = min(a, 0), max(b, 0)  # zero padding
        if kind == "sumpool":
            w = np.full((1, node.kernel[0] * node.kernel[1]), 1, np.int64)
        else:
            w = node.weight.astype(np.int64).reshape(node.weight.shape[0], -1) \
                * 2 ** node.weight_exp
        w_pos, w_neg = np.clip(w, 0, None).sum(1), np.clip(w, None, 0).sum(1)
        out = (int((w_pos * a + w_neg * b).min()), int((w_pos * b + w_neg * a).max()))
    else:
        out = (0, 0)
    memo[name] = out
    return out


def check_fixed_limits(g: _Graph, target: Target) -> list[str]:
    """Payload and weight widths: limits no split across cores can get around.

    A neuron's or the input encoder's payload range is exact (its levels clip it), and so is a
    max-pool's over spikes; a relay's or readout accumulator's range is a worst-case bound
    (Σ|w|·max|input|), so going beyond the payload or state bits there is a note, not an error."""
    payload_bits, state_bits = target["payload_bits"], target["state_bits"]
    memo: dict = {}
    notes = []
    for name in [g.art.input] + [p.name for p in g.populations]:
        node = g.nodes[name]
        lo, hi = _value_range(g, node.inputs[0] if node.kind == "readout" else name, memo)
        bits = _bits(lo, hi)
        bound_only = node.kind == "readout" or name in g.relays or (
            node.kind == "maxpool" and any(leaf in g.relays for leaf in g.leaves(node.inputs[0])))
        if bound_only:
            if bits > min(payload_bits, state_bits):
                what = "readout accumulator" if node.kind == "readout" else node.kind \
                    if node.kind == "maxpool" else "relay"
                notes.append(f"{what} {name!r} can reach [{lo}, {hi}] in the worst case "
                             f"({bits} bits), beyond the {state_bits}-bit state / "
                             f"{payload_bits}-bit payload of {target.name}: it would clip there")
            continue
        if bits > payload_bits:
            what = "input encoder" if name == g.art.input else node.kind
            raise MappingError(
                f"layer {name!r} ({what}): payloads span [{lo}, {hi}] and need {bits} bits, a "
                f"{target.name} graded spike carries {payload_bits} (over by "
                f"{bits - payload_bits} bits); no split across cores changes a payload. Fix: "
                f"fewer levels (--levels) or a coarser scale for this layer so its values fit "
                f"[-2^{payload_bits - 1}, 2^{payload_bits - 1}).")
    limit = 2 ** target["weight_bits"]
    for node in g.art.nodes:
        values = node.weight if node.kind in ("dense", "conv") else \
            node.gains if node.kind == "add" else None
        if values is None or np.asarray(values).size == 0:
            continue
        peak = int(np.abs(np.asarray(values, dtype=np.int64)).max())
        if peak > limit:
            need = (peak - 1).bit_length()
            raise MappingError(
                f"layer {node.name!r}: {'weight' if node.kind != 'add' else 'gain'} magnitude "
                f"{peak} needs a {need}-bit mantissa, the target allows {target['weight_bits']} "
                f"bits (|w| ≤ {limit}; over by {need - target['weight_bits']} bits). Fix: "
                f"re-quantize to {target['weight_bits']}-bit mantissas with a per-connection "
                f"exponent (the compiler's quantizer does this).")
    return notes


# ---------------------------------------------------------------- units and packing

@dataclass
class _Unit:
    """A tile of one population: flat element ranges, and its cost alone on a core."""
    pop: int
    ranges: list[tuple[int, int]]
    cost: Cost


def _pop_cost(g: _Graph, pop: Population, mask: np.ndarray, target: Target, axons: bool) -> Cost:
    total = Cost(int(mask.sum()))
    for c in pop.connections:
        total = total + c.cost(mask, target, g.input_shape(c), axons)
    return total


def _mask(size: int, ranges) -> np.ndarray:
    mask = np.zeros(size, bool)
    for start, stop in ranges:
        mask[start:stop] = True
    return mask


def _fits(cost: Cost, target: Target, share: float = 1.0) -> bool:
    axon_limit = target["input_axons_per_core"]
    return (cost.neurons <= share * target["neurons_per_core"]
            and cost.memory_bits <= share * target["synaptic_memory_bits_per_core"]
            and (axon_limit is None or cost.axons <= axon_limit))


def _units(g: _Graph, k: int, pop: Population, target: Target) -> list[_Unit]:
    """Cut a population into tiles that each fit a core alone, about 1/UNITS_PER_CORE of a core
    where possible. A (C, H, W) population is cut into c_t channels × r_t rows (whole channels
    unless one channel exceeds a core), listed band by band so that tiles reading the same input
    rows follow each other; any other shape into runs of `synapses_per_group` elements."""
    axons = target["input_axons_per_core"] is not None

    def cost(ranges):
        return _pop_cost(g, pop, _mask(pop.size, ranges), target, axons)

    if len(pop.shape) == 3:
        c, h, w = pop.shape

        def tile(c0, c1, r0, r1):
            return [(ch * h * w + r0 * w, ch * h * w + r1 * w) for ch in range(c0, c1)]

        def middle(r):   # an interior band: the edges read fewer (padded) input rows
            return max(0, min(h - r, (h - r) // 2))

        r_t = h
        while r_t > 1 and not _fits(cost(tile(0, 1, middle(r_t), middle(r_t) + r_t)), target):
            r_t = -(-r_t // 2)
        c_t = 1
        while c_t < c and _fits(cost(tile(0, min(c, 2 * c_t), middle(r_t), middle(r_t) + r_t)),
                                target, 1 / UNITS_PER_CORE):
            c_t = min(c, 2 * c_t)
        tiles = [tile(c0, min(c, c0 + c_t), r0, min(h, r0 + r_t))
                 for r0 in range(0, h, r_t) for c0 in range(0, c, c_t)]
    else:
        step = target["synapses_per_group"]   # whole synapse groups: list costs add up
        tiles = [[(a, min(pop.size, a + step))] for a in range(0, pop.size, step)]
    units = []
    for ranges in tiles:
        units.extend(_Unit(k, part, c) for part, c in _fit(ranges, cost, pop, target))
    return units


def _fit(ranges, cost, pop: Population, target: Target) -> list:
    """Split a tile in halves until each part fits a core: by rows when input axons are over
    (fewer channels read the same inputs), else by channels, then rows, then elements. A single
    neuron that does not fit is the error no split can fix."""
    c = cost(ranges)
    if _fits(c, target):
        return [(ranges, c)]
    start, stop = ranges[0]
    if len(ranges) == 1 and stop - start == 1:
        raise _single_neuron_error(pop, start, c, target)
    row = pop.shape[-1] if len(pop.shape) == 3 else 1
    rows = (stop - start) // row
    axon_limit = target["input_axons_per_core"]
    if len(ranges) > 1 and not (rows > 1 and axon_limit is not None and c.axons > axon_limit):
        half = len(ranges) // 2
        parts = [ranges[:half], ranges[half:]]
    elif rows > 1:
        cut = rows // 2 * row
        parts = [[(a, a + cut) for a, _ in ranges], [(a + cut, b) for a, b in ranges]]
    else:
        parts = [[(start, start + (stop - start) // 2)], [(start + (stop - start) // 2, stop)]]
    return [piece for part in parts for piece in _fit(part, cost, pop, target)]


def _single_neuron_error(pop: Population, element: int, single: Cost,
                         target: Target) -> MappingError:
    """A neuron and all its synapses share one core: the error when one neuron alone is over."""
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
            f"{single.memory_bits / m_core:.2f}×); a neuron's synapses must sit on its own core, "
            f"so no split helps. {fix}")
    return MappingError(
        f"{where}: one neuron reads {single.axons:,} input axons (fan-in through {via}), a "
        f"{target.name} core accepts {axon_limit:,} (over by {single.axons - axon_limit:,}); a "
        f"neuron's inputs must all reach its own core, so no split helps. {fix}")


class _Core:
    """A core being filled: the elements of each population on it and their exact cost."""

    def __init__(self):
        self.masks: dict[int, np.ndarray] = {}
        self.costs: dict[int, Cost] = {}
        self.used = Cost()

    def try_add(self, unit: _Unit, g: _Graph, target: Target) -> bool:
        """Add `unit` if the core still fits every limit with it (costs of the union, exact)."""
        pop = g.populations[unit.pop]
        old = self.masks.get(unit.pop)
        mask = _mask(pop.size, unit.ranges) if old is None else old | _mask(pop.size, unit.ranges)
        new = _pop_cost(g, pop, mask, target, target["input_axons_per_core"] is not None)
        before = self.costs.get(unit.pop, Cost())
        total = Cost(self.used.neurons - before.neurons + new.neurons,
                     self.used.memory_bits - before.memory_bits + new.memory_bits,
                     self.used.axons - before.axons + new.axons)
        if not _fits(total, target):
            return False
        self.masks[unit.pop], self.costs[unit.pop], self.used = mask, new, total
        return True


def _pack(units: list[_Unit], heavy: set[int], g: _Graph, target: Target) -> list[_Core]:
    """Fill cores one at a time from two streams (tiles of the memory-heavy and of the
    neuron-heavy populations, each in graph order), drawing from whichever resource the core is
    furthest below its balanced share of what remains; a core is closed when it reaches both
    shares or neither stream's next tile fits."""
    n_core, m_core = target["neurons_per_core"], target["synaptic_memory_bits_per_core"]
    streams = [[u for u in units if u.pop in heavy], [u for u in units if u.pop not in heavy]]
    heads = [0, 0]
    rem_n = sum(u.cost.neurons for u in units)
    rem_m = sum(u.cost.memory_bits for u in units)
    cores = []
    while heads[0] < len(streams[0]) or heads[1] < len(streams[1]):
        k_rem = max(1, math.ceil(rem_n / n_core), math.ceil(rem_m / m_core))
        share_n, share_m = rem_n / k_rem, rem_m / k_rem
        core, placed_n, placed_m = _Core(), 0, 0
        while True:
            need_m = (share_m - placed_m) / m_core
            need_n = (share_n - placed_n) / n_core
            if need_m <= 0 and need_n <= 0:
                break
            for s in ((0, 1) if need_m >= need_n else (1, 0)):
                if heads[s] < len(streams[s]) and core.try_add(streams[s][heads[s]], g, target):
                    unit = streams[s][heads[s]]
                    placed_n += unit.cost.neurons
                    placed_m += unit.cost.memory_bits
                    heads[s] += 1
                    break
            else:
                break
        if not core.masks:   # every tile fits an empty core (checked when cut)
            raise MappingError("internal: a tile does not fit an empty core")
        rem_n -= placed_n
        rem_m -= placed_m
        cores.append(core)
    return cores


# ---------------------------------------------------------------- the placement

@dataclass
class Placement:
    """Where every compartment sits: JSON-able (`to_json`, `from_json`) for `art.meta`.

    `cores[i]` = {"chip", "blocks": [[layer, start, stop], …] (flat element ranges of the
    layer's output, row-major), "neurons", "memory_bits", "input_axons", "synapses",
    "layers": {layer: {"neurons", "memory_bits", "input_axons", "synapses"}}}.
    `layers[name]` = {"role", "shape", "neurons", "cores", "memory_bits", "synapses",
    "connections": {node: format}, "sources": [...]}.
    """
    target: str
    limits: dict
    cores: list[dict]
    layers: dict[str, dict]
    lower_bound: dict
    notes: list[str] = field(default_factory=list)
    input: str = ""

    @property
    def cores_used(self) -> int:
        return len(self.cores)

    @property
    def chips(self) -> int:
        return 1 + max((c["chip"] for c in self.cores), default=0)

    @property
    def ratio(self) -> float:
        """Cores used over the lower bound."""
        return self.cores_used / max(self.lower_bound["cores"], 1)

    def to_json(self) -> dict:
        return {"version": PLACEMENT_VERSION, "target": self.target, "limits": self.limits,
                "input": self.input, "cores_used": self.cores_used, "chips": self.chips,
                "lower_bound": self.lower_bound, "layers": self.layers, "cores": self.cores,
                "notes": self.notes}

    @classmethod
    def from_json(cls, data: dict) -> "Placement":
        version = data.get("version") if isinstance(data, dict) else None
        if version != PLACEMENT_VERSION:
            raise MappingError(f"placement record of version {version!r}; this toolchain reads "
                               f"version {PLACEMENT_VERSION}: re-run the mapping")
        return cls(data["target"], data["limits"], data["cores"], data["layers"],
                   data["lower_bound"], list(data.get("notes", [])), data.get("input", ""))

    @functools.cached_property
    def graph(self) -> nx.DiGraph:
        """Layers and the input, with an edge from each source to every layer it drives."""
        graph = nx.DiGraph()
        graph.add_node(self.input, role="input", cores=[])
        for name, layer in self.layers.items():
            graph.add_node(name, role=layer["role"], cores=layer["cores"])
        for name, layer in self.layers.items():
            graph.add_edges_from((source, name) for source in layer["sources"])
        return graph

    def destination_cores(self, source: str) -> list[int]:
        """Cores holding any compartment that `source`'s spikes reach."""
        if source not in self.graph:
            return []
        return sorted({core for layer in self.graph.successors(source)
                       for core in self.graph.nodes[layer]["cores"]})


def map_artifact(art: Artifact, target: Target) -> Placement:
    """Place `art` on `target`'s cores; raise MappingError for a limit no split can fix."""
    g = _Graph(art, target)
    width_notes = check_fixed_limits(g, target)
    n_core, m_core = target["neurons_per_core"], target["synaptic_memory_bits_per_core"]
    axons_on = target["input_axons_per_core"] is not None
    whole = [_pop_cost(g, p, np.ones(p.size, bool), target, False) for p in g.populations]
    units = [u for k, p in enumerate(g.populations) for u in _units(g, k, p, target)]
    total_n = sum(c.neurons for c in whole)
    total_m = sum(c.memory_bits for c in whole)
    ratio = (total_m / m_core) / max(total_n / n_core, 1e-12)
    heavy = {k for k, c in enumerate(whole)
             if c.memory_bits / m_core > ratio * c.neurons / n_core}
    packed = _pack(units, heavy, g, target)
    cores, layer_cores = [], {p.name: [] for p in g.populations}
    chip, chip_n, chip_syn, on_chip = 0, 0, 0, 0
    for core in packed:
        layers, blocks, total = {}, [], Cost()
        for k, mask in sorted(core.masks.items()):
            pop = g.populations[k]
            exact = _pop_cost(g, pop, mask, target, True)
            layers[pop.name] = {"neurons": exact.neurons, "memory_bits": exact.memory_bits,
                                "input_axons": exact.axons, "synapses": exact.synapses}
            total = total + exact
            blocks.extend([pop.name, int(a), int(b)] for a, b in _runs(mask))
            layer_cores[pop.name].append(len(cores))
        if on_chip == target["cores_per_chip"] or \
                _over(target, "neurons_per_chip", chip_n + total.neurons) or \
                _over(target, "synapses_per_chip", chip_syn + total.synapses):
            chip, chip_n, chip_syn, on_chip = chip + 1, 0, 0, 0
        chip_n, chip_syn, on_chip = chip_n + total.neurons, chip_syn + total.synapses, on_chip + 1
        cores.append({"chip": chip, "blocks": blocks, "neurons": total.neurons,
                      "memory_bits": total.memory_bits,
                      "input_axons": total.axons, "synapses": total.synapses,
                      "layers": layers})
    layers = {}
    for p, c in zip(g.populations, whole):
        layers[p.name] = {"role": p.role, "shape": list(p.shape), "neurons": p.size,
                          "cores": layer_cores[p.name],
                          "memory_bits": sum(core["layers"][p.name]["memory_bits"]
                                             for core in cores if p.name in core["layers"]),
                          "memory_bits_unsplit": c.memory_bits,
                          "synapses": sum(core["layers"][p.name]["synapses"]
                                          for core in cores if p.name in core["layers"]),
                          "connections": {x.name: x.format for x in p.connections},
                          "sources": sorted(g.graph.predecessors(p.name))}
    bound_n, bound_m = total_n / n_core, total_m / m_core
    lower = {"cores": max(1, math.ceil(max(bound_n, bound_m) - 1e-9)), "by_neurons": bound_n,
             "by_memory": bound_m, "neurons": total_n, "memory_bits": total_m}
    limits = {k: target[k] for k in ("cores_per_chip", "neurons_per_core",
                                     "synaptic_memory_bits_per_core", "input_axons_per_core",
                                     "payload_bits", "weight_bits")}
    notes = _notes(g, target, axons_on) + width_notes
    return Placement(target.name, limits, cores, layers, lower, notes, art.input)


def _over(target: Target, key: str, value: int) -> bool:
    limit = target[key]
    return limit is not None and value > limit


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """The [start, stop) runs of True in a boolean mask."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return list(zip(edges[::2], edges[1::2]))


def _notes(g: _Graph, target: Target, axons_on: bool) -> list[str]:
    notes = []
    if g.relays:
        notes.append(f"relay compartments for {', '.join(sorted(g.relays))}: their integer "
                     "output feeds another weighted map, so it is forwarded as a graded spike")
    if not axons_on:
        notes.append(f"input axons per core are not published for {target.name}; counted, not "
                     "enforced")
    hang = target.sections.get("reference", {}).get("conv_input_hang")
    if hang is not None and hang.value:
        big = [n.name for n in g.art.nodes if n.kind == "conv"
               and np.prod(g.nodes[n.inputs[0]].shape) > hang.value]
        if big:
            notes.append(f"{len(big)} conv layer(s) read more than {int(hang.value):,} input "
                         f"elements, the size reported to hang on hardware ({hang.source}): "
                         f"{', '.join(big[:6])}{' …' if len(big) > 6 else ''}")
    return notes


# ---------------------------------------------------------------- the table

def _ranges(ids: list[int]) -> str:
    """[0, 1, 2, 5] → '0–2, 5'."""
    out, ids = [], sorted(ids)
    i = 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        out.append(str(ids[i]) if i == j else f"{ids[i]}–{ids[j]}")
        i = j + 1
    return ", ".join(out)


def placement_table(placement: Placement) -> Table:
    """Cores per layer and utilization, with cores used against the lower bound."""
    lim = placement.limits
    n_core, m_core = lim["neurons_per_core"], lim["synaptic_memory_bits_per_core"]
    lb = placement.lower_bound
    t = Table(title=f"placement on {placement.target}: {placement.cores_used} cores on "
                    f"{placement.chips} chip(s); lower bound {lb['cores']} "
                    f"(neurons {lb['by_neurons']:.2f}, memory {lb['by_memory']:.2f} cores); "
                    f"{placement.ratio:.2f}× the bound", title_justify="left")
    for col in ("layer", "role", "neurons", "synaptic memory (KiB)", "format", "cores"):
        t.add_column(col, justify="right" if col in ("neurons", "synaptic memory (KiB)")
                     else "left")
    for name, layer in placement.layers.items():
        fmts = sorted(set(layer["connections"].values()))
        t.add_row(name[-40:], layer["role"], f"{layer['neurons']:,}",
                  f"{layer['memory_bits'] / 8192:,.1f}", "/".join(fmts),
                  f"{len(layer['cores'])}: {_ranges(layer['cores'])}"[:48])
    n_used = sum(c["neurons"] for c in placement.cores)
    m_used = sum(c["memory_bits"] for c in placement.cores)
    k = max(placement.cores_used, 1)
    t.caption = (f"utilization: neurons {100 * n_used / (k * n_core):.1f}%, synaptic memory "
                 f"{100 * m_used / (k * m_core):.1f}% of the cores used")
    t.caption_justify = "left"
    return t
