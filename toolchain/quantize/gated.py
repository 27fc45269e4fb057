"""Quantization rules of gated recurrent cells (LSTM, GRU; toolchain.rnn.gated): the state
neuron that turns a cell's new state (a current: a sum of gate products) into the payloads its
delay reads the next step, and the complement gate 1 − σ(z) of a GRU.

A delay's unit is fixed before its source is quantized (op_delay: the calibrated range / L,
which breaks the cycle). The state neuron realizes exactly that unit: θ = s / unit_in, an
integer where the input unit divides s (the sum's recurrent term f⊙c_prev has unit
s·2^shift / L, times a power-of-two gain, so θ = L·2^k), otherwise the current is first made
finer by a power-of-two gain 2^k (the largest the state headroom allows) and θ = round(s·2^k /
unit_in), within 1/(2θ) of s.
"""
from __future__ import annotations

import numpy as np

from sim import ir
from sim.ops.base import THRESHOLD_MAX
from toolchain.quantize.tensor import HEADROOM, LayerRow, current, payloads


class GatedRules:
    def op_state(self, name, d, ins):
        """A gated cell's state (c' or h'): a uniform neuron [−L, L] whose output unit is the
        unit op_delay gave the delayed state, s = the calibrated range / L per channel."""
        x = ins[0]
        L = d["params"].get("levels") or self.opts.levels
        shape = tuple(d["shape"])
        s = np.broadcast_to(self.act_scale(name, None, True, L), shape).astype(np.float64)
        ratio = s / x.unit
        if np.all(ratio >= 1) and np.all(np.abs(ratio - np.rint(ratio)) <= 1e-9 * ratio):
            k = 0                       # the input unit divides s: θ is exact
        else:
            reach = float(np.max(x.bound + np.abs(x.bias) + ratio))
            k = int(max(0, min(20, np.floor(np.log2(HEADROOM / max(2 * reach, 1))))))
        if k:
            self.emit(ir.Add(f"{name}/in", (x.node,), shape,
                             gains=np.full((1, 1), 2 ** k, np.int64), exps=(0,)))
            self.layers.append(LayerRow(f"{name}/in", "add", shape, synapses=int(np.prod(shape)),
                                        gain_max=2 ** k, gain_exp=0, detail="state scale"))
            x = current(f"{name}/in", x.fname, x.unit / 2.0 ** k, x.bias * 2 ** k,
                        x.bound * 2.0 ** k)
        theta = np.maximum(np.rint(s / x.unit), 1).astype(np.int64)
        if int(theta.max()) > THRESHOLD_MAX:
            self.fail(name, f"the state's threshold {int(theta.max())} exceeds "
                            f"{THRESHOLD_MAX}: its range is far beyond the current's unit")
        margin = self.check_state(name, x, theta)
        node = self.emit(ir.Neuron(name, (x.node,), shape, threshold=theta,
                                   bias=x.bias.astype(np.int64), lo=-L, hi=L))
        unit = theta * x.unit
        self.record[f"{name}/act_scale"] = unit
        self.layers.append(LayerRow(name, f"{node.kind} (state)", shape,
                                    neurons=int(np.prod(shape)), levels=(-L, L),
                                    threshold=(int(theta.min()), int(theta.max())),
                                    margin_bits=round(margin, 1)))
        return payloads(name, name, unit, np.zeros(shape, np.int64), np.full(shape, float(L)))

    def op_sigmoid_complement(self, name, d, ins):
        """1 − σ(z) as the table of σ(z) with its payloads reversed: n = L − #{k : v ≥ t_k}, the
        same thresholds as the sigmoid neuron reading the same current, so the two add to
        exactly L."""
        L = self.opts.levels
        p = (np.arange(1, L + 1) - 0.5) / L
        edges = np.log(p / (1 - p))
        return self._table(name, ins[0], edges, L - np.arange(0, L + 1))

