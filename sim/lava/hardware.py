"""How each artifact node would reach Loihi 2 (the reasoning is in docs/hardware.md).

Python ProcessModels, sim.lava's included, never run on the chip: a node runs there only as one
of Lava's chip-supported processes (Dense, Sparse, Conv, Sigma-Delta, graded, LIF, through
Intel's proprietary lava-loihi) or as a NeuroCore microcode model.
"""
from __future__ import annotations

import numpy as np

from sim.ir import Node

HOST = "host"
CHIP_SYNAPSE = "chip-synapse"
CHIP_NEURON = "chip-neuron"
MICROCODE = "microcode"
UNMAPPED = "unmapped"

HARDWARE_CASES = {
    HOST: "runs on the host, off the neurocores (input encoding, float readout)",
    CHIP_SYNAPSE: "a chip-supported Lava connection (Dense/Sparse/Conv; index maps fold into "
                  "its connectivity)",
    CHIP_NEURON: "exact with chip-supported Lava processes: 1/θ as a shift in the incoming "
                 "connection's weight exponent, then graded ReLU neurons",
    MICROCODE: "needs a NeuroCore microcode neuron model (Intel's lava-loihi)",
    UNMAPPED: "a node kind sim.lava does not know",
}

_SYNAPSE_KINDS = ("dense", "conv", "sumpool", "add", "concat", "reshape", "transpose", "delay")


def _is_power_of_two(values: np.ndarray) -> bool:
    v = np.asarray(values, dtype=np.int64)
    return bool(np.all((v > 0) & ((v & (v - 1)) == 0)))


def hardware_case(node: Node, timesteps: int = 1, binary: bool = False,
                  feeding: Node | None = None) -> str:
    """One of HARDWARE_CASES for `node` run with `timesteps` steps per sample; `feeding` is the
    node whose value a neuron integrates (`art.node(node.inputs[0])`), when known.

    A neuron is CHIP_NEURON only if it is the T = 1 uniform neuron, without leak, whose
    thresholds are powers of two θ = 2^k and whose offset bias b + θ//2 = β·θ is a multiple of θ:
    then n = clip((I >> k) + β, lo, hi) exactly, the shift done by the weight exponent of the one
    connection that delivers I and the rest by graded ReLU neurons. A neuron fed by an Add sums
    several connections, each of which would round its own shift, so it is MICROCODE, as is every
    other neuron (adaptive payload tables, other thresholds, leak, reset by subtraction at
    T > 1, the leaky integrators of recurrent networks) and max-pooling, which no
    chip-supported connection computes. A delay (recurrent edge) is a connection: Lava's Dense
    already delivers one step late (on the chip every connection of the loop adds its step, so a
    loop through two neuron layers advances one trial step per two chip steps; docs/hardware.md).
    """
    kind = node.kind
    if kind in ("input", "readout"):
        return HOST
    if kind in _SYNAPSE_KINDS:
        return CHIP_SYNAPSE
    if kind == "maxpool":
        return MICROCODE
    if kind != "neuron":
        return UNMAPPED
    if (node.fire != "uniform" or node.decay < 4096 or timesteps > 1 or binary
            or getattr(node, "reset", "subtract") != "subtract"
            or (feeding is not None and feeding.kind == "add")):
        return MICROCODE
    theta = np.asarray(node.threshold, dtype=np.int64)
    if not _is_power_of_two(theta):
        return MICROCODE
    offset_bias = np.asarray(node.bias, dtype=np.int64) + theta // 2
    return CHIP_NEURON if bool(np.all(offset_bias % theta == 0)) else MICROCODE
