"""The placement: where every compartment sits, how it is recorded in an artifact, and the
table `toolchain compile` and `report` print."""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
from rich.table import Table

from sim.artifact import Artifact
from toolchain.errors import MappingError
from toolchain.mapping.cost import Cost
from toolchain.mapping.graph import Graph
from toolchain.mapping.limits import check_fixed_limits
from toolchain.mapping.packing import pack, pop_cost, units_of
from toolchain.mapping.split import split_fan_in
from toolchain.tables import columns, fitted, short
from toolchain.target import Target

PLACEMENT_VERSION = 1


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
        _check_record(data)
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


def _check_record(data: dict) -> None:
    """Every field the placement table and graph read, by type: an artifact's placement record
    may be forged (the content hash proves consistency, not sanity)."""
    def num(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    def count(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    def strings(v) -> bool:
        return isinstance(v, list) and all(isinstance(x, str) for x in v)

    def dicts(v) -> bool:
        return isinstance(v, dict) and all(isinstance(k, str) and isinstance(x, dict)
                                           for k, x in v.items())

    lim, lb, cores, layers = (data.get(k) for k in ("limits", "lower_bound", "cores", "layers"))
    checks = {
        "target": isinstance(data.get("target"), str) and isinstance(data.get("input", ""), str),
        "limits": isinstance(lim, dict) and all(
            num(lim.get(k)) and lim[k] > 0
            for k in ("neurons_per_core", "synaptic_memory_bits_per_core")),
        "lower_bound": isinstance(lb, dict) and count(lb.get("cores")) and
        num(lb.get("by_neurons")) and num(lb.get("by_memory")),
        "notes": strings(data.get("notes", [])),
        "cores": isinstance(cores, list) and all(
            isinstance(c, dict) and count(c.get("chip")) and num(c.get("neurons")) and
            num(c.get("memory_bits")) and dicts(c.get("layers")) for c in cores),
        "layers": dicts(layers) and all(
            isinstance(x.get("role"), str) and count(x.get("neurons")) and
            num(x.get("memory_bits")) and strings(x.get("sources")) and
            isinstance(x.get("cores"), list) and all(count(c) for c in x["cores"]) and
            isinstance(x.get("connections"), dict) and
            all(isinstance(f, str) for f in x["connections"].values())
            for x in layers.values()),
    }
    bad = [k for k, ok in checks.items() if not ok]
    if bad:
        raise MappingError(f"placement record: {', '.join(bad)} malformed; re-run the mapping "
                           "(toolchain compile)")


def map_artifact(art: Artifact, target: Target) -> Placement:
    """Place `art` on `target`'s cores; raise MappingError for a limit no split can fix."""
    g = Graph(art, target)
    width_notes = check_fixed_limits(g, target)
    width_notes += split_fan_in(g, target)
    n_core, m_core = target["neurons_per_core"], target["synaptic_memory_bits_per_core"]
    axons_on = target["input_axons_per_core"] is not None
    whole = [pop_cost(g, p, np.ones(p.size, bool), target, False) for p in g.populations]
    units = [u for k, p in enumerate(g.populations) for u in units_of(g, k, p, target)]
    total_n = sum(c.neurons for c in whole)
    total_m = sum(c.memory_bits for c in whole)
    ratio = (total_m / m_core) / max(total_n / n_core, 1e-12)
    heavy = {k for k, c in enumerate(whole)
             if c.memory_bits / m_core > ratio * c.neurons / n_core}
    packed = pack(units, heavy, g, target)
    cores, layer_cores = [], {p.name: [] for p in g.populations}
    chip, chip_n, chip_syn, on_chip = 0, 0, 0, 0
    for core in packed:
        layers, blocks, total = {}, [], Cost()
        for k, mask in sorted(core.masks.items()):
            pop = g.populations[k]
            exact = pop_cost(g, pop, mask, target, True)
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
        columns = [x.columns for x in p.connections if x.columns is not None]
        if columns:   # a fan-in split into partial sums (toolchain.mapping.split)
            layers[p.name]["columns"] = [int(columns[0][0]), int(columns[0][-1]) + 1]
            if p.partial_of:
                layers[p.name]["partial_of"] = p.partial_of
            else:
                layers[p.name]["partial_sums"] = [r.name for r in g.populations
                                                  if r.partial_of == p.name]
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


def _notes(g: Graph, target: Target, axons_on: bool) -> list[str]:
    notes = []
    if g.relays:
        notes.append(f"relay compartments for {', '.join(sorted(g.relays))}: their integer "
                     "output feeds another weighted map, so it is forwarded as a graded spike")
    if not axons_on:
        notes.append(f"input axons per core are not published for {target.name}; counted, not "
                     "enforced")
    hang = target.sections.get("reference", {}).get("conv_input_hang")
    if hang is not None and hang.value:
        big = [n.name for n in g.art.nodes
               if n.connectivity == "window" and n.mantissas() is not None
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
    columns(t, [("layer", "name"), ("role", "text"), ("neurons", "number"),
                ("synaptic memory (KiB)", "number"), ("format", "text"), ("cores", "long")])
    for name, layer in placement.layers.items():
        fmts = sorted(set(layer["connections"].values()))
        t.add_row(short(name), layer["role"], f"{layer['neurons']:,}",
                  f"{layer['memory_bits'] / 8192:,.1f}", "/".join(fmts),
                  f"{len(layer['cores'])}: {_ranges(layer['cores'])}")
    n_used = sum(c["neurons"] for c in placement.cores)
    m_used = sum(c["memory_bits"] for c in placement.cores)
    k = max(placement.cores_used, 1)
    t.caption = (f"utilization: neurons {100 * n_used / (k * n_core):.1f}%, synaptic memory "
                 f"{100 * m_used / (k * m_core):.1f}% of the cores used")
    t.caption_justify = "left"
    return fitted(t)
