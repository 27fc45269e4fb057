"""One step of a recurrent artifact's cell: every node except the input and the readout, for a
batch of trials, evaluated in artifact order (the body of sim.lava's RecurrentCell models).

Pure numpy, no Lava. The synapse and index nodes apply their kind's integer map (sim.ops); the
neurons take the contract's step (`Neuron.step`, `fixed_pt`) or its float64 variant without the
24-bit state clip (`Neuron.step_float`, `floating_pt`, the tolerance of sim.lava.procs.models):

- a Delay outputs its source's value from the previous step of the trial, zeros at t = 0;
- a neuron with reset "none" (leaky integrator) keeps v through the trial, v = 0 at t = 0:
  v ← sat(v + floor(d·(I + b − v)/4096)) (v = sat(I + b) when d = 4096), out = fire_state(v);
- every other neuron starts afresh every step (T = 1 semantics): uniform fire from
  v = θ//2, or the adaptive payload table.

Statistics are counted on every row the cell is given, exactly as sim.cpu counts them.
"""
from __future__ import annotations

import numpy as np

from sim.ops import Node

INT = np.int64
FLOAT = np.float64
STATS = ("synops", "spikes", "payload_total", "saturations")


class Cell:
    """The recurrent cell of an artifact; `reset()` starts new trials, `step(u)` advances one."""

    def __init__(self, nodes: list[Node], input_name: str, feed: str, readout_name: str,
                 floating: bool = False):
        self.nodes = list(nodes)
        self.input_name = input_name
        self.feed = feed
        self.readout_name = readout_name
        self.floating = floating
        self.sources = sorted({n.source for n in self.nodes if n.role == "edge"})
        self.state: dict[str, np.ndarray] = {}     # leaky neurons' v
        self.previous: dict[str, np.ndarray] = {}  # last step's values of the delays' sources
        self.stats = np.zeros((len(STATS), max(len(self.nodes), 1)), INT)

    def reset(self) -> None:
        """New trials: leaky states v = 0, delays output zeros."""
        self.state.clear()
        self.previous.clear()

    def step(self, u: np.ndarray) -> np.ndarray:
        """One trial step for the rows of u (rows, *input_shape), the encoded inputs (integers);
        returns the readout's input (rows, *output_shape) int64 and adds to `stats`."""
        values = {self.input_name: np.asarray(u).astype(INT, copy=False)}
        rows = len(u)
        for i, node in enumerate(self.nodes):
            if node.role == "edge":
                prev = self.previous.get(node.source)
                values[node.name] = np.zeros((rows,) + tuple(node.shape), INT) \
                    if prev is None else prev
            elif node.role == "neuron":
                current = values[node.inputs[0]]
                v = self.state.get(node.name) if node.reset == "none" else None
                if self.floating:
                    out, v, saturations = node.step_float(current, v)
                    out = out.astype(INT)
                else:
                    out, v, saturations = node.step(current, v, keep=node.reset == "none")
                if node.reset == "none":
                    self.state[node.name] = v
                values[node.name] = out
                self.stats[1, i] += np.count_nonzero(out)
                self.stats[2, i] += int(np.abs(out).sum())
                self.stats[3, i] += saturations
            else:
                values[node.name], synops = node.apply([values[n] for n in node.inputs], True)
                self.stats[0, i] += synops
        values[self.readout_name] = values[self.feed]
        self.previous = {name: values[name] for name in self.sources}
        return values[self.feed]
