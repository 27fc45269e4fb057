"""Quantization rules of the synapses: the input encoder, dense and convolution weights (8-bit
mantissas per output channel, one power-of-two exponent per connection), per-channel affines,
and the Add of several currents (integer gains; inputs that only feed it re-quantized jointly).

- Input: 8-bit encoder, unit = 1 / inv_scale.
- Conv/Dense: W_eff = W · unit_in (per input channel), quantized per output channel to 8-bit
  mantissas (mixed sign: even values in [−256, 254], since Lava drops the lowest bit; one sign:
  [0, 255] or [−255, 0]); one `weight_exp` per connection in [−8, 7], the largest that keeps
  twice the static bound Σ|W|·bound_in·2^e under 2²¹ (2¹³ feeding an Add, so the Add can scale
  up; not below exponent 0 for that) and bound plus bias under ¾ of the state. A negative exponent right-shifts the
  accumulator: the layer's unit gets coarser and its weights keep their 8 bits.
- Add: output unit = finest input unit / 2^k (k from −8 to 8: coarser when the inputs' bounds do
  not fit the headroom); integer gains (8-bit mantissa per channel, one exponent per input, a
  negative one a right shift).
"""
from __future__ import annotations

import numpy as np

from sim import ir
from toolchain.quantize.tensor import (BIAS_HEADROOM, HEADROOM, HEADROOM_BEFORE_ADD,
                                       STATE_HEADROOM,
                                       MAX_ADD_SHIFT, MAX_WEIGHT_EXP, MIN_WEIGHT_EXP, LayerRow,
                                       QTensor, current, gain_exponent, largest_exponent,
                                       compact, payloads, per_channel)


class SynapseRules:
    def op_input(self, name, d, ins):
        st = self.stats[name]
        bits = self.opts.input_bits
        if st.min >= 0:
            lo, hi = 0, 2 ** bits - 1
        else:
            lo, hi = -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
        scale = self.opts.input_step or max(float(st.max_abs.max()), 1e-12) / hi
        inv = np.float32(1.0 / scale)
        shape = d["shape"]
        node = self.emit(ir.Input(name, (), shape, inv_scale=float(inv), lo=lo, hi=hi))
        unit = np.full(shape, 1.0 / float(inv))
        self.layers.append(LayerRow(name, node.kind, shape, neurons=int(np.prod(shape)),
                                    levels=(lo, hi), detail="grid" if self.opts.input_step else ""))
        return payloads(name, name, unit, np.zeros(shape, np.int64), np.full(shape, float(hi)))

    def _weights(self, name, w_eff, bound_of, b=None):
        """Quantize W_eff (out, ...) per output channel to 8-bit mantissas; choose weight_exp,
        the largest in [MIN_WEIGHT_EXP, MAX_WEIGHT_EXP] with twice the accumulator bound under
        the headroom (HEADROOM_BEFORE_ADD where an Add reads it) and the bound plus the float bias `b` (in accumulator units) under
        BIAS_HEADROOM. Returns (W, unit_w, exp, bound after the shift, bits)."""
        bad = int(np.size(w_eff) - np.count_nonzero(np.isfinite(w_eff)))
        if b is not None:
            bad += int(np.size(b) - np.count_nonzero(np.isfinite(b)))
        if bad:
            self.fail(name, f"{bad} of its weights and biases are not finite (NaN or ±Inf) once "
                            "the scales around it are folded in; the model's values overflow or "
                            "divide by zero")
        # the float weights stay only where an Add may re-quantize them jointly (_joint): a
        # large network's float weights are much of the compiler's memory
        consumers = self.fg.consumers(name)
        joint = len(consumers) == 1 and self.fg[consumers[0]]["op"] == "add"
        self.synapses[name] = dict(w_eff=w_eff if joint else None, bound_of=bound_of)
        pos, neg = bool(np.any(w_eff > 0)), bool(np.any(w_eff < 0))
        m = np.abs(w_eff).reshape(len(w_eff), -1).max(axis=1)
        m = np.where(m > 0, m, 1.0)
        mshape = (-1,) + (1,) * (w_eff.ndim - 1)
        bits = 8
        if pos and neg:   # mixed sign: Lava drops the lowest bit → even values 2k
            kmax = 2 ** (bits - 1) - 1
            w_int = 2 * np.rint(w_eff / (m / kmax).reshape(mshape))
            unit_w = m / kmax / 2
        else:
            kmax = 2 ** bits - 1
            w_int = np.rint(w_eff / (m / kmax).reshape(mshape))
            unit_w = m / kmax
        bound = bound_of(np.abs(w_int))
        exp = largest_exponent(2 * float(bound.max()), HEADROOM)
        if any(self.fg[c]["op"] == "add" for c in self.fg.consumers(name)):
            exp = max(largest_exponent(2 * float(bound.max()), HEADROOM_BEFORE_ADD),
                      min(exp, 0))
        if b is not None:
            # a bias larger than the current (a channel almost never active, driven by its
            # folded BatchNorm shift) lowers the exponent; below 0 (a coarser unit for the whole
            # layer) only as far as the state itself needs
            need = float((bound + np.abs(np.asarray(b, np.float64)).reshape(-1) / unit_w).max())
            exp = min(exp, max(largest_exponent(need, BIAS_HEADROOM),
                               min(0, largest_exponent(need, STATE_HEADROOM))))
        return w_int.astype(np.int64), unit_w, exp, bound * 2.0 ** exp, bits

    def _synapse_out(self, name, fname, node, unit_w, exp, bound, b, shape, synapses, bits):
        self.emit(node)
        self.synapses[name].update(node=node, b=b, shape=shape, row=len(self.layers))
        unit_acc = unit_w / 2 ** exp
        self.record[f"{name}/weight_scale"] = unit_w
        bshape = (-1,) + (1,) * (len(shape) - 1)
        unit = np.broadcast_to(unit_acc.reshape(bshape), shape).astype(np.float64)
        bias = np.broadcast_to(np.rint(b / unit_acc).reshape(bshape), shape).astype(np.int64)
        bound = np.broadcast_to(bound.reshape(bshape), shape).astype(np.float64)
        self.layers.append(LayerRow(name, node.kind, shape, synapses=synapses, weight_bits=bits,
                                    weight_exp=exp))
        return current(name, fname, unit, bias, bound)

    def op_dense(self, name, d, ins):
        x = self.spikes_in(ins[0])
        p = d["params"]
        w_eff = p["W"] * x.unit.reshape(1, -1)
        bin_ = x.bound.reshape(-1)
        w_int, unit_w, exp, bound, bits = self._weights(name, w_eff, lambda a: a @ bin_, p["b"])
        node = ir.Dense(name, (x.node,), d["shape"], weight=w_int.astype(np.int16), weight_exp=exp)
        return self._synapse_out(name, name, node, unit_w, exp, bound, p["b"], d["shape"],
                                 int(w_int.size), bits)

    def op_conv(self, name, d, ins):
        x = self.spikes_in(ins[0])
        p = d["params"]
        w, g = p["W"], p["groups"]
        co, cg = w.shape[:2]
        u_c = per_channel(x.unit)
        b_c = per_channel(x.bound)
        # input channel of weight [o, i] is (o // (co/g))·cg + i
        chan = (np.arange(co)[:, None] // (co // g)) * cg + np.arange(cg)[None, :]
        w_eff = w * u_c[chan][:, :, None, None]
        w_int, unit_w, exp, bound, bits = self._weights(
            name, w_eff, lambda a: (a * b_c[chan][:, :, None, None]).sum(axis=(1, 2, 3)), p["b"])
        node = ir.Conv(name, (x.node,), d["shape"], weight=w_int.astype(np.int16), weight_exp=exp,
                       stride=tuple(p["stride"]), pads=tuple(p["pads"]),
                       dilation=tuple(p["dilation"]), groups=int(g))
        synapses = int(np.count_nonzero(w_int) * np.prod(d["shape"][1:]))
        return self._synapse_out(name, name, node, unit_w, exp, bound, p["b"], d["shape"],
                                 synapses, bits)

    def op_affine(self, name, d, ins):
        """scale·x + shift. A positive scale that is the same for every element changes the
        unit, not the integers; a shift on a current joins its pending bias. Per-channel
        scales on spikes are a depthwise synapse (conv/dense); per-element ones (`full`: a
        positional embedding, a LayerNorm scale along a token tensor's features) an Add of
        one input with gains ±1 whose output unit is |scale|·unit_in per element, exact."""
        x = ins[0]
        p = d["params"]
        shape = tuple(d["shape"])
        bshape = (-1,) + (1,) * (len(shape) - 1)
        full = bool(p.get("full"))
        as_full = lambda v: np.broadcast_to(np.asarray(v, np.float64) if full else
                                            np.asarray(v, np.float64).reshape(bshape), shape)
        scale, shift = as_full(p["scale"]), as_full(p["shift"])
        s0 = float(scale.reshape(-1)[0])
        if np.all(scale == s0) and s0 > 0 and (not x.spikes or not np.any(shift)):
            # the integers stay; the unit scales, the shift joins a current's pending bias
            unit = x.unit * s0
            bias = x.bias + np.rint(shift / unit).astype(np.int64)
            return QTensor(x.node, name, unit, bias, x.bound, spikes=x.spikes,
                           synapse_ok=x.synapse_ok and not np.any(bias))
        if full or len(shape) not in (1, 3):
            return self._element_affine(name, x, scale, shift)
        c = shape[0]
        scale, shift = np.asarray(p["scale"]), np.asarray(p["shift"])
        if np.all(scale == 1.0) and not x.synapse_ok:
            # a bias on a current: exact in the pending integer bias
            extra = np.rint(np.broadcast_to(shift.reshape(bshape), shape) / x.unit)
            return current(x.node, name, x.unit, x.bias + extra.astype(np.int64), x.bound)
        if len(shape) == 3:
            d2 = dict(d, params=dict(W=scale.reshape(c, 1, 1, 1), b=shift, groups=c,
                                     stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1)))
            return self.op_conv(name, d2, ins)
        d2 = dict(d, params=dict(W=np.diag(scale), b=shift))
        return self.op_dense(name, d2, ins)

    def _element_affine(self, name, x: QTensor, scale: np.ndarray, shift: np.ndarray):
        """An Add reading x with gain sign(scale) per element: out = ±I, unit |scale|·unit_in
        (an element with scale 0 gets gain 0 and keeps unit_in), pending bias ±b + shift/unit."""
        shape = x.unit.shape
        sign = np.sign(scale).astype(np.int64)
        unit = np.where(scale != 0, np.abs(scale) * x.unit, x.unit)
        bias = sign * x.bias + np.rint(shift / unit).astype(np.int64)
        node = self.emit(ir.Add(name, (x.node,), shape, gains=compact(sign)[None], exps=(0,)))
        self.layers.append(LayerRow(name, node.kind, shape, synapses=int(np.prod(shape)),
                                    gain_max=1, gain_exp=0, detail="±1 per element"))
        return current(name, name, unit, bias, np.abs(sign) * x.bound)

    def _joint(self, name, ins: list[QTensor]) -> list[QTensor]:
        """Re-quantize the dense/conv inputs of Add `name` (each read by nothing else) with one
        per-channel scale u[c] shared by all of them, each connection keeping its own power-of-two
        prescale 2^p_i and weight_exp; their accumulators then share a unit and add with gain 1."""
        joint = [k for k, x in enumerate(ins) if x.node in self.synapses and x.fname == x.node
                 and self.fg.consumers(x.node) == [name]
                 and self.synapses[x.node]["w_eff"] is not None]
        if len(joint) < 2:
            return ins
        info = [self.synapses[ins[k].node] for k in joint]
        rows = [np.abs(i["w_eff"]).reshape(len(i["w_eff"]), -1).max(axis=1) for i in info]
        # power-of-two prescales align the connections' typical row magnitudes (an all-zero
        # connection keeps 0)
        typical = [float(np.median(r[r > 0])) if np.any(r > 0) else 0.0 for r in rows]
        top_mag = max(typical) or 1.0
        pre = [int(np.rint(np.log2(top_mag / t))) if t > 0 else 0 for t in typical]
        pre = [min(p - min(pre), MAX_WEIGHT_EXP - MIN_WEIGHT_EXP) for p in pre]
        mixed = any(np.any(i["w_eff"] > 0) and np.any(i["w_eff"] < 0) for i in info)
        bits = 8
        kmax = 2 ** (bits - 1) - 1 if mixed else 2 ** bits - 1
        u = np.max([r * 2.0 ** p for r, p in zip(rows, pre)], axis=0) / kmax
        u = np.where(u > 0, u, 1.0)
        w_ints, bounds = [], []
        for i, p in zip(info, pre):
            scale = (u / 2.0 ** p).reshape((-1,) + (1,) * (i["w_eff"].ndim - 1))
            # mixed sign: Lava drops the lowest bit, so the 8-bit mantissa k (|k| ≤ kmax)
            # is stored as 2k and one weight unit is half a step (as in _weights)
            w = np.rint(i["w_eff"] / scale)
            w_ints.append(2 * w if mixed else w)
            bounds.append(i["bound_of"](np.abs(w_ints[-1])))
        # connection i's exponent is (top + extra) − p_i: the largest shared `top + extra` that
        # keeps every exponent within range and twice the summed shifted bounds in the headroom
        total = sum(float(b.max()) * 2.0 ** -p for b, p in zip(bounds, pre))
        top, extra = max(pre), 0
        shared = largest_exponent(2 * total, HEADROOM)
        shared = min(max(shared, MIN_WEIGHT_EXP + top), MAX_WEIGHT_EXP + min(pre))
        extra = shared - top
        out = list(ins)
        for k, i, w, b, p in zip(joint, info, w_ints, bounds, pre):
            exp = top + extra - p
            node = i["node"]
            node.weight, node.weight_exp = w.astype(np.int16), int(exp)
            unit_w = u / 2.0 ** p / (2 if mixed else 1)
            self.record[f"{node.name}/weight_scale"] = unit_w
            row = self.layers[i["row"]]
            row.weight_bits, row.weight_exp, row.detail = bits, int(exp), "joint"
            bshape = (-1,) + (1,) * (len(i["shape"]) - 1)
            unit_acc = unit_w / 2.0 ** exp
            out[k] = current(
                node.name, node.name,
                np.broadcast_to(unit_acc.reshape(bshape), i["shape"]).astype(np.float64),
                np.broadcast_to(np.rint(i["b"] / unit_acc).reshape(bshape),
                                i["shape"]).astype(np.int64),
                np.broadcast_to((b * 2.0 ** exp).reshape(bshape),
                                i["shape"]).astype(np.float64))
        return out

    def op_add(self, name, d, ins):
        """Σ coef_i · x_i (coef ±1: Add, Sub). Output unit: the finest input unit (elementwise;
        on a token tensor the finest of all its elements) / 2^k; each input's gain
        g_i = coef_i · unit_i / unit_out as an 8-bit mantissa and one exponent per input, per
        channel where the units are, per element otherwise.

        `exact` (a parameter: an input's index) takes that input's unit as the base instead, so
        its gain is a power of two, exact: the recurrent term of a gated cell's state (f⊙c,
        z⊙h), whose gain error the loop would compound step after step."""
        shape = d["shape"]
        coef = d["params"].get("coef") or (1.0,) * len(ins)
        ins = self._joint(name, ins)
        exact = d["params"].get("exact")
        base = np.minimum.reduce([x.unit for x in ins]) if exact is None else \
            np.broadcast_to(ins[exact].unit, shape).astype(np.float64)
        if exact is None and d["params"].get("per_tensor"):
            # a token tensor: one unit for the whole sum (the gains absorb the inputs' per-element
            # units), so that the neuron reading it and a pool over its features see one unit
            base = np.full_like(base, float(base.min()))
        ratio = [x.unit / base for x in ins]
        # output unit base / 2^k: the finest k whose summed bounds (twice) fit the headroom, down
        # to a unit 2^8 coarser than the finest input (right-shift gains) when nothing finer fits
        total = sum(float((r * x.bound).max()) for r, x in zip(ratio, ins))
        k = min(largest_exponent(2 * total, HEADROOM), MAX_ADD_SHIFT) if total > 0 else 0
        unit = base / 2.0 ** k
        gains, exps = [], []
        for r, c in zip(ratio, coef):
            g = np.broadcast_to(r, shape) * 2.0 ** k
            e = gain_exponent(self.fail, name, g)
            gains.append(np.rint(g / 2.0 ** e).astype(np.int64) * int(c))
            exps.append(e)
        small = [compact(g) for g in gains]
        gains = np.stack(small) if len({g.shape for g in small}) == 1 else \
            np.stack([np.broadcast_to(g, shape) for g in gains])
        real = [gains[i] * 2.0 ** exps[i] for i in range(len(ins))]
        bias = np.rint(sum(r * x.bias for r, x in zip(real, ins)))
        bound = sum(np.abs(r) * x.bound for r, x in zip(real, ins))
        node = self.emit(ir.Add(name, tuple(x.node for x in ins), shape, gains=gains,
                                exps=tuple(exps)))
        # the realized unit: Σ gains·x in units of `unit` within the gain rounding
        self.layers.append(LayerRow(name, node.kind, shape,
                                    synapses=int(np.prod(shape)) * len(ins),
                                    gain_max=int(np.abs(gains).max()), gain_exp=max(exps)))
        return current(name, name, unit, np.broadcast_to(bias, shape).astype(np.int64),
                       np.broadcast_to(bound, shape).astype(np.float64))
