"""Quantization rules of recurrent rate units: the delay that closes the loop and the leaky
integrator y ← y + α(f − y) (a neuron with reset "none" and decay d = round(α·4096))."""
from __future__ import annotations

import numpy as np

from sim import ir, semantics
from toolchain.quantize.tensor import LEAK_SHIFT, LayerRow, gain_exponent, payloads, per_channel


class RecurrentRules:
    def op_delay(self, name, d, ins):
        """Last step's spikes of a leaky unit; their unit is fixed by calibration alone (the leaky
        neuron's threshold is 2^LEAK_SHIFT in its state units), which breaks the cycle. A
        `levels` parameter gives the source's level count where it is not --levels (the state
        neurons of gated cells)."""
        src = d["params"]["source"]
        shape = d["shape"]
        self.emit(ir.Delay(name, (), shape, source=src))
        L = d["params"].get("levels") or self.opts.levels
        unit = self.act_scale(src, None, False, L)
        return payloads(name, name, unit.astype(np.float64), np.zeros(shape, np.int64),
                        np.full(shape, float(L)))

    def op_leaky(self, name, d, ins):
        """y ← y + α(x − y) with x the input spikes: v in units ≈ s_y / 2^LEAK_SHIFT, input
        gains G = s_x / unit_v (8-bit mantissa, one exponent), d = round(α·4096), no reset.

        The 8-bit gains round s_x / unit_v by up to half a mantissa step — 3% where a unit's
        gain is small — and a leaky integrator's gain error is a systematic error of its fixed
        point, which decision networks (line attractors) amplify. So the rounded gain G is kept
        and the threshold absorbs it instead: θ = round(s_y·G / s_x) per unit, so one output
        step is s_y within 1/(2θ) (θ ≈ 2^LEAK_SHIFT), the scale y_prev was given by op_delay."""
        x = ins[0]
        shape = d["shape"]
        signed = d["params"]["signed"]
        L = self.opts.levels
        s_y = self.act_scale(name, None, signed)
        s_x = per_channel(x.unit)
        g = s_x / (s_y / 2 ** LEAK_SHIFT)
        e = gain_exponent(self.fail, name, g)
        gains = np.maximum(np.rint(g / 2 ** e), 1).astype(np.int64)
        self.emit(ir.Add(f"{name}/in", (x.node,), shape, gains=gains[None], exps=(e,)))
        decay = int(round(d["params"]["alpha"] * semantics.LEAK_ONE))
        theta = np.maximum(np.rint(s_y * (gains * 2.0 ** e) / s_x), 1).astype(np.int64)
        theta = np.broadcast_to(theta.reshape((-1,) + (1,) * (len(shape) - 1)), shape).copy()
        bound = gains * 2 ** e * x.bound
        margin = float(np.log2(semantics.V_MAX / max(float(bound.max()) + float(theta.max()), 1)))
        if margin < 0:
            self.fail(name, f"leaky state bound {bound.max():.0f} exceeds 24 bits")
        lo = -L if signed else 0
        node = self.emit(ir.Neuron(name, (f"{name}/in",), shape, threshold=theta,
                                   bias=np.zeros(shape, np.int64), lo=lo, hi=L, decay=decay,
                                   reset="none"))
        self.record[f"{name}/act_scale"] = s_y
        self.layers.append(LayerRow(name, f"{node.kind} (leaky)", shape,
                                    neurons=int(np.prod(shape)), synapses=int(np.prod(shape)),
                                    levels=(lo, L), threshold=(int(theta.min()),
                                                               int(theta.max())),
                                    margin_bits=round(margin, 1)))
        return payloads(name, name, np.broadcast_to(s_y, shape).astype(np.float64),
                        np.zeros(shape, np.int64), np.full(shape, float(L)))

