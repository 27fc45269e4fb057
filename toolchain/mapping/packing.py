"""Cutting populations into tiles and packing the tiles onto cores (the placement rule of the
package docstring)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from toolchain.errors import MappingError
from toolchain.mapping.cost import Cost
from toolchain.mapping.graph import Graph, Population
from toolchain.mapping.split import single_neuron_error
from toolchain.target import Target

UNITS_PER_CORE = 8                            # packing granularity: a unit is ≤ 1/8 of a core


@dataclass
class _Unit:
    """A tile of one population: flat element ranges, and its cost alone on a core."""
    pop: int
    ranges: list[tuple[int, int]]
    cost: Cost


def pop_cost(g: Graph, pop: Population, mask: np.ndarray, target: Target, axons: bool) -> Cost:
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


def units_of(g: Graph, k: int, pop: Population, target: Target) -> list[_Unit]:
    """Cut a population into tiles that each fit a core alone, about 1/UNITS_PER_CORE of a core
    where possible. A (C, H, W) population is cut into c_t channels × r_t rows (whole channels
    unless one channel exceeds a core), listed band by band so that tiles reading the same input
    rows follow each other; any other shape into runs of `synapses_per_group` elements."""
    axons = target["input_axons_per_core"] is not None

    def cost(ranges):
        return pop_cost(g, pop, _mask(pop.size, ranges), target, axons)

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
        raise single_neuron_error(pop, start, c, target, "no split applies to it")
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


class _Core:
    """A core being filled: the elements of each population on it and their exact cost."""

    def __init__(self):
        self.masks: dict[int, np.ndarray] = {}
        self.costs: dict[int, Cost] = {}
        self.used = Cost()

    def try_add(self, unit: _Unit, g: Graph, target: Target) -> bool:
        """Add `unit` if the core still fits every limit with it (costs of the union, exact)."""
        pop = g.populations[unit.pop]
        old = self.masks.get(unit.pop)
        mask = _mask(pop.size, unit.ranges) if old is None else old | _mask(pop.size, unit.ranges)
        new = pop_cost(g, pop, mask, target, target["input_axons_per_core"] is not None)
        before = self.costs.get(unit.pop, Cost())
        total = Cost(self.used.neurons - before.neurons + new.neurons,
                     self.used.memory_bits - before.memory_bits + new.memory_bits,
                     self.used.axons - before.axons + new.axons)
        if not _fits(total, target):
            return False
        self.masks[unit.pop], self.costs[unit.pop], self.used = mask, new, total
        return True


def pack(units: list[_Unit], heavy: set[int], g: Graph, target: Target) -> list[_Core]:
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


