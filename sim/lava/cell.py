"""One step of a recurrent artifact's cell: every node except the input and the readout, for a
batch of trials, evaluated in artifact order (the body of sim.lava's RecurrentCell models).

Pure numpy, no Lava. The synapse and index nodes go through sim.cpu's `evaluate_synapse`; the
neurons follow the integer contract through sim.semantics (`fixed_pt`) or in float64 without the
24-bit state clip (`floating_pt`, the tolerance of sim.lava.procs.models):

- a Delay outputs its source's value from the previous step of the trial, zeros at t = 0;
- a neuron with reset "none" (leaky integrator) keeps v through the trial, v = 0 at t = 0:
  v ← sat(v + floor(d·(I + b − v)/4096)) (v = sat(I + b) when d = 4096), out = fire_state(v);
- every other neuron starts afresh every step (T = 1 semantics): uniform fire from
  v = θ//2, or the adaptive payload table.

Statistics are counted on every row the cell is given, exactly as sim.cpu counts them.
"""
from __future__ import annotations

import numpy as np

from sim import semantics
from sim.cpu.runner import evaluate_synapse
from sim.ir import Node

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
        self.sources = sorted({n.source for n in self.nodes if n.kind == "delay"})
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
        fire = self._neuron_float if self.floating else self._neuron_fixed
        for i, node in enumerate(self.nodes):
            kind = node.kind
            if kind == "delay":
                prev = self.previous.get(node.source)
                values[node.name] = np.zeros((rows,) + tuple(node.shape), INT) \
                    if prev is None else prev
            elif kind == "neuron":
                out, saturations = fire(node, values[node.inputs[0]])
                values[node.name] = out
                self.stats[1, i] += np.count_nonzero(out)
                self.stats[2, i] += int(np.abs(out).sum())
                self.stats[3, i] += saturations
            else:
                values[node.name], synops = evaluate_synapse(
                    node, [values[n] for n in node.inputs], True)
                self.stats[0, i] += synops
        values[self.readout_name] = values[self.feed]
        self.previous = {name: values[name] for name in self.sources}
        return values[self.feed]

    def _neuron_fixed(self, node, current: np.ndarray) -> tuple[np.ndarray, int]:
        """The integer contract, every equation a sim.semantics call."""
        bias, theta = node.bias[None], node.threshold[None]
        if node.fire == "adaptive":
            v, saturations = semantics.saturate(current + bias)
            return semantics.fire_adaptive(v, node.thresholds[None], node.payload), saturations
        if node.reset == "none":
            if node.decay < semantics.LEAK_ONE:
                v = self.state.get(node.name, 0)
                v, saturations = semantics.saturate(semantics.leak(v, current + bias, node.decay))
            else:
                v, saturations = semantics.saturate(current + bias)
            self.state[node.name] = v
            return semantics.fire_state(v, theta, node.lo, node.hi), saturations
        if node.decay == semantics.LEAK_ONE:  # the T = 1 neuron, residual state unread
            return semantics.fire_once(current, bias, theta, node.lo, node.hi)
        k, lo_q, hi_q = semantics.spike_unit(node.lo, node.hi, False)
        v = semantics.initial_state(theta, k)
        v, saturations = semantics.saturate(semantics.leak(v, current + bias, node.decay))
        out, _ = semantics.fire_uniform(v, theta, k, lo_q, hi_q)
        return out, saturations

    def _neuron_float(self, node, current: np.ndarray) -> tuple[np.ndarray, int]:
        """float64 arithmetic, v never clipped (a would-be clip is still counted); the payload
        goes on as the integer it is."""
        drive = current.astype(FLOAT) + node.bias[None].astype(FLOAT)
        theta = node.threshold[None].astype(FLOAT)
        if node.fire == "adaptive":
            saturations = int(np.count_nonzero(np.abs(drive) > semantics.V_MAX))
            crossed = np.sum(drive[..., None] >= node.thresholds[None].astype(FLOAT), axis=-1)
            return np.asarray(node.payload, INT)[crossed], saturations
        decay = float(node.decay)
        if node.reset == "none":
            if node.decay < semantics.LEAK_ONE:
                v = self.state.get(node.name, 0.0)
                v = v + np.floor(decay * (drive - v) / semantics.LEAK_ONE)
            else:
                v = drive
            self.state[node.name] = v
            q = np.clip(np.floor((v + np.floor(theta / 2)) / theta), node.lo, node.hi)
        else:
            v = np.floor(theta / 2)
            if node.decay < semantics.LEAK_ONE:
                v = v + np.floor(decay * (drive - v) / semantics.LEAK_ONE)
            else:
                v = v + drive
            q = np.clip(np.floor(v / theta), node.lo, node.hi)
        saturations = int(np.count_nonzero(np.abs(v) > semantics.V_MAX))
        return q.astype(INT), saturations
