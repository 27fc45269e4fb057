"""How each artifact node would reach Loihi 2 (the reasoning is in docs/hardware.md).

Python ProcessModels, sim.lava's included, never run on the chip: a node runs there only as one
of Lava's chip-supported processes (Dense, Sparse, Conv, Sigma-Delta, graded, LIF, through
Intel's proprietary lava-loihi) or as a NeuroCore microcode model. Each node kind says which
(`Node.hardware_case`, sim.ops).
"""
from __future__ import annotations

from sim.ops import Node
from sim.ops.base import (CHIP_NEURON, CHIP_SYNAPSE, HARDWARE_CASES, HOST,  # noqa: F401
                          MICROCODE, UNMAPPED)


def hardware_case(node: Node, timesteps: int = 1, binary: bool = False,
                  feeding: Node | None = None) -> str:
    """One of HARDWARE_CASES for `node` run with `timesteps` steps per sample; `feeding` is the
    node whose value a neuron integrates (`art.node(node.inputs[0])`), when known."""
    return node.hardware_case(timesteps, binary, feeding)


__all__ = ["hardware_case", "HARDWARE_CASES", "HOST", "CHIP_SYNAPSE", "CHIP_NEURON", "MICROCODE",
           "UNMAPPED"]
