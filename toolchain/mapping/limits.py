"""Limits no split across cores can get around: payload and weight widths."""
from __future__ import annotations

import numpy as np

from toolchain.errors import MappingError
from sim.ops.base import SINK, SYNAPSE
from toolchain.mapping.graph import Graph
from toolchain.target import Target


def _bits(lo: int, hi: int) -> int:
    """Payload bits of values in [lo, hi]: magnitude bits, plus a sign bit when lo < 0."""
    return max(int(max(abs(lo), abs(hi))).bit_length(), 1) + (1 if lo < 0 else 0)


def value_ranges(nodes) -> dict[str, tuple[int, int]]:
    """A bound [lo, hi] on the integers each node emits (Node.value_range, interval arithmetic),
    in graph order. Two passes: a recurrent edge reads a node defined after it, whose range the
    first pass finds (a recurrent loop closes on a neuron, whose range is its own levels)."""
    ranges: dict[str, tuple[int, int]] = {}
    for _ in range(2):
        for n in nodes:
            ups = (n.source,) if n.role == "edge" else n.inputs
            ranges[n.name] = n.value_range([ranges.get(i, (0, 0)) for i in ups])
    return ranges


def check_fixed_limits(g: Graph, target: Target) -> list[str]:
    """Payload and weight widths: limits no split across cores can get around.

    A neuron's or the input encoder's payload range is exact (its levels clip it), and so is a
    pool maximum's over spikes; a relay's or readout accumulator's range is a worst-case bound
    (Σ|w|·max|input|), so going beyond the payload or state bits there is a note, not an error."""
    payload_bits, state_bits = target["payload_bits"], target["state_bits"]
    ranges = value_ranges(g.art.nodes)
    notes = []
    for name in [g.art.input] + [p.name for p in g.populations]:
        node = g.nodes[name]
        lo, hi = ranges[name]
        bits = _bits(lo, hi)
        # a compartment computed from windows over a relay's values (a pool maximum of currents)
        over_relay = node.role == SYNAPSE and node.compartment is not None and \
            any(leaf in g.relays for leaf in g.leaves(node.inputs[0]))
        if node.role == SINK or name in g.relays or over_relay:
            if bits > min(payload_bits, state_bits):
                what = "readout accumulator" if node.role == SINK else \
                    node.kind if over_relay else "relay"
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
    notes += _check_exponents(g, target)
    limit = 2 ** target["weight_bits"]
    for node in g.art.nodes:
        values = node.mantissas()
        if values is None or np.asarray(values).size == 0:
            continue
        peak = int(np.abs(np.asarray(values, dtype=np.int64)).max())
        if peak > limit:
            need = (peak - 1).bit_length()
            raise MappingError(
                f"layer {node.name!r}: {'gain' if node.sums_inputs else 'weight'} magnitude "
                f"{peak} needs a {need}-bit mantissa, the target allows {target['weight_bits']} "
                f"bits (|w| ≤ {limit}; over by {need - target['weight_bits']} bits). Fix: "
                f"re-quantize to {target['weight_bits']}-bit mantissas with a per-connection "
                f"exponent (the compiler's quantizer does this).")
    return notes


def _check_exponents(g: Graph, target: Target) -> list[str]:
    """Weight exponents of the connections within the target's range (when the target states
    one). An Add's gains are not connections of their own: on a core each folds into the
    weights and exponent of the connection that delivers its input (docs/hardware.md)."""
    try:
        lo, hi = target["weight_exp_min"], target["weight_exp_max"]
    except KeyError:
        return ["the target states no weight exponent range; exponents are not checked"]
    for node in g.art.nodes:
        exps = [node.weight_exp] if hasattr(node, "weight_exp") else []
        bad = [int(e) for e in exps if (lo is not None and e < lo) or (hi is not None and e > hi)]
        if bad:
            raise MappingError(
                f"layer {node.name!r}: exponent {bad[0]} is outside {target.name}'s range "
                f"[{lo}, {hi}] (a power-of-two shift per connection); no split across cores "
                "changes it. Fix: recompile for this target (the quantizer keeps exponents in "
                "that range), or give a target file whose weight_exp_min/max allow it.")
    return []
