"""The integer contract as a public interpreter: the int64 oracle.

`run(artifact, x)` evaluates every node of the artifact, in order, with its kind's own
`evaluate` (sim.ops): plain int64 numpy, one definition per kind, no fusion, no float dtypes, no
torch. sim.cpu's compiled program, the Lava process models and the emitted reference ONNX are
all held to it bit for bit (tests/), and it is what a new kind's tests compare against.
"""
from __future__ import annotations

import numpy as np

from sim import driver
from sim.artifact import Artifact
from sim.results import SimResult


def step(art: Artifact, s: driver.Step) -> dict[str, np.ndarray]:
    """Every node of `art` once, in order, for the timestep `s`: {node name: int64 value}."""
    values: dict[str, np.ndarray] = {}
    for node in art.nodes:
        values[node.name] = node.evaluate([values[i] for i in node.inputs], s)
    return values


def run(art: Artifact, x: np.ndarray, timesteps: int = 1, binary: bool = False,
        batch_size: int = 1024, count: bool = True, progress=None,
        record: tuple[str, ...] = ()) -> SimResult:
    """Run `art` on float inputs x in int64 and return the readout (as sim.cpu.run: the same
    arguments, the same SimResult, bit for bit)."""
    return driver.execute(art, x, lambda s, keep, trials: step(art, s), timesteps, binary,
                          batch_size, count, progress, record)
