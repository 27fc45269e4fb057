"""Synapse-list cost and the connectivity model: what one population's incoming connections
cost on a core (memory, input axons, stored synapses), per synapse format. The rules are in the
package docstring (toolchain.mapping) and docs/report.md."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from toolchain.target import Target

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
    does not reach p; None means the identity. `columns`: the inputs of a dense connection this
    part carries (a fan-in split into partial sums, toolchain.mapping.split); None: all.
    """
    node: object
    sources: tuple[str, ...]
    index: np.ndarray | None
    size: int                      # elements of the node's output (or of the source)
    shape: tuple[int, ...]
    format: str = ""
    columns: np.ndarray | None = None
    _nonzero: np.ndarray | None = None
    input: int = 0                 # which of the node's inputs (a product reads two)
    input_shapes: tuple = ()       # the node's inputs' shapes (for its synapse mask)

    @property
    def name(self) -> str:
        if self.node is None:
            return self.sources[0]
        return self.node.name if not self.input else f"{self.node.name}#{self.input}"

    def _nz(self) -> np.ndarray:
        """Which input elements each output element reads: a dense layer's nonzero weights, a
        product's operands (Node.synapse_mask)."""
        if self._nonzero is None:
            mask = getattr(self.node, "synapse_mask", None)
            if mask is not None:
                self._nonzero = mask(self.input, self.input_shapes)
            else:
                weight = np.asarray(self.node.weight)
                self._nonzero = (weight if self.columns is None
                                 else weight[:, self.columns]) != 0
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
        if self.node.connectivity == "full":
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
        groups, c_in_g, kh, kw = self.node.window()[:4]
        c_out = mask.shape[0]
        word = target["word_bits"]
        per_group = mask.reshape(groups, c_out // groups, *mask.shape[1:])
        if self.format == "shared":
            chans = int(mask.any(axis=(1, 2)).sum())
            memory = chans * list_words(c_in_g * kh * kw, wb, target) * word
            n_axons = int(reach(self.node, per_group.any(axis=1), in_shape).sum()) * c_in_g \
                if axons else 0
            return Cost(0, memory, n_axons, chans * c_in_g * kh * kw)
        per_axon = reach(self.node, per_group.sum(axis=1), in_shape)
        used = per_axon[per_axon > 0]
        return Cost(0, c_in_g * list_words(used, wb + ib, target) * word, c_in_g * len(used),
                    c_in_g * int(used.sum()))


def reach(node, per_group: np.ndarray, in_shape) -> np.ndarray:
    """Scatter per-output-position values (groups, Ho, Wo) onto the input positions they read:
    Σ (or ∨ for booleans) over kernel taps → (groups, Hi, Wi)."""
    _, _, kh, kw, (sh, sw), (top, left, _, _), (dh, dw) = node.window()
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


