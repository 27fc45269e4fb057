"""Quantization rules of the synapses: the input encoder, dense and convolution weights (8-bit
mantissas per output channel, one power-of-two exponent per connection), per-channel affines,
and the Add of several currents (integer gains; inputs that only feed it re-quantized jointly).

- Input: 8-bit encoder, unit = 1 / inv_scale.
- Conv/Dense: W_eff = W · unit_in (per input channel), quantized per output channel to 8-bit
  mantissas (mixed sign: even values in [−256, 254], since Lava drops the lowest bit; one sign:
  [0, 255] or [−255, 0]); one `weight_exp` per connection, the largest that keeps the static bound
  Σ|W|·bound_in·2^e under the headroom (2²¹, or 2¹³ feeding an Add so the Add can scale up).
- Add: output unit = finest input unit / 2^k; integer gains (8-bit mantissa per channel, one
  exponent per input).
"""
from __future__ import annotations

import numpy as np

from sim import ir
from toolchain.quantize.tensor import (BIAS_HEADROOM, HEADROOM, HEADROOM_BEFORE_ADD,
                                       MAX_ADD_SHIFT, MAX_WEIGHT_EXP, WEIGHT_BOUND, LayerRow,
                                       QTensor, current, gain_exponent, payloads, per_channel)


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
        """Quantize W_eff (out, ...) per output channel; choose bits and weight_exp (lowered
        while the bound plus the float bias `b` in accumulator units exceeds BIAS_HEADROOM)."""
        bad = int(np.size(w_eff) - np.count_nonzero(np.isfinite(w_eff)))
        if b is not None:
            bad += int(np.size(b) - np.count_nonzero(np.isfinite(b)))
        if bad:
            self.fail(name, f"{bad} of its weights and biases are not finite (NaN or ±Inf) once "
                            "the scales around it are folded in; the model's values overflow or "
                            "divide by zero")
        self.synapses[name] = dict(w_eff=w_eff, bound_of=bound_of)
        pos, neg = bool(np.any(w_eff > 0)), bool(np.any(w_eff < 0))
        head = HEADROOM_BEFORE_ADD if any(self.fg[c]["op"] == "add"
                                          for c in self.fg.consumers(name)) else HEADROOM
        m = np.abs(w_eff).reshape(len(w_eff), -1).max(axis=1)
        m = np.where(m > 0, m, 1.0)
        mshape = (-1,) + (1,) * (w_eff.ndim - 1)
        for bits in range(8, 1, -1):
            if pos and neg:   # mixed sign: Lava drops the lowest bit → even values 2k
                kmax = 2 ** (bits - 1) - 1
                w_int = 2 * np.rint(w_eff / (m / kmax).reshape(mshape))
                unit_w = m / kmax / 2
            else:
                kmax = 2 ** bits - 1
                w_int = np.rint(w_eff / (m / kmax).reshape(mshape))
                unit_w = m / kmax
            bound = bound_of(np.abs(w_int))
            if bound.max() <= WEIGHT_BOUND:
                break
        else:
            self.fail(name, f"accumulator bound {bound.max():.0f} exceeds the 24-bit state even "
                            "with 2-bit weights")
        exp = 0
        while exp < MAX_WEIGHT_EXP and bound.max() * 2 ** (exp + 1) <= head:
            exp += 1
        if b is not None:
            need = bound + np.abs(np.asarray(b, np.float64)).reshape(-1) / unit_w
            while exp > 0 and need.max() * 2 ** exp > BIAS_HEADROOM:
                exp -= 1
        return w_int.astype(np.int64), unit_w, exp, bound * 2 ** exp, bits

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
        x = ins[0]
        p = d["params"]
        shape = d["shape"]
        if np.all(p["scale"] == 1.0) and not x.synapse_ok:
            # a bias on a current: exact in the pending integer bias
            bshape = (-1,) + (1,) * (len(shape) - 1)
            extra = np.rint(np.broadcast_to(p["shift"].reshape(bshape), shape) / x.unit)
            return current(x.node, name, x.unit, x.bias + extra.astype(np.int64), x.bound)
        c = shape[0]
        if len(shape) == 3:
            d2 = dict(d, params=dict(W=p["scale"].reshape(c, 1, 1, 1), b=p["shift"], groups=c,
                                     stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1)))
            return self.op_conv(name, d2, ins)
        d2 = dict(d, params=dict(W=np.diag(p["scale"]), b=p["shift"]))
        return self.op_dense(name, d2, ins)

    def _joint(self, name, ins: list[QTensor]) -> list[QTensor]:
        """Re-quantize the dense/conv inputs of Add `name` (each read by nothing else) with one
        per-channel scale u[c] shared by all of them, each connection keeping its own power-of-two
        prescale 2^p_i and weight_exp; their accumulators then share a unit and add with gain 1."""
        joint = [k for k, x in enumerate(ins) if x.node in self.synapses and x.fname == x.node
                 and self.fg.consumers(x.node) == [name]]
        if len(joint) < 2:
            return ins
        info = [self.synapses[ins[k].node] for k in joint]
        rows = [np.abs(i["w_eff"]).reshape(len(i["w_eff"]), -1).max(axis=1) for i in info]
        # power-of-two prescales align the connections' typical row magnitudes (an all-zero
        # connection keeps 0)
        typical = [float(np.median(r[r > 0])) if np.any(r > 0) else 0.0 for r in rows]
        top_mag = max(typical) or 1.0
        pre = [int(np.rint(np.log2(top_mag / t))) if t > 0 else 0 for t in typical]
        pre = [min(p - min(pre), MAX_WEIGHT_EXP) for p in pre]
        mixed = any(np.any(i["w_eff"] > 0) and np.any(i["w_eff"] < 0) for i in info)
        for bits in range(8, 1, -1):
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
            if max(b.max() for b in bounds) * 2 ** max(pre) <= WEIGHT_BOUND:
                break
        else:
            self.fail(name, "inputs cannot be quantized jointly within the 24-bit state")
        top = max(pre)
        extra = 0
        while top + extra < MAX_WEIGHT_EXP and sum(b.max() * 2 ** (top + extra + 1 - p)
                                                   for b, p in zip(bounds, pre)) <= HEADROOM:
            extra += 1
        out = list(ins)
        for k, i, w, b, p in zip(joint, info, w_ints, bounds, pre):
            exp = top + extra - p
            node = i["node"]
            node.weight, node.weight_exp = w.astype(np.int16), exp
            unit_w = u / 2.0 ** p / (2 if mixed else 1)
            self.record[f"{node.name}/weight_scale"] = unit_w
            row = self.layers[i["row"]]
            row.weight_bits, row.weight_exp, row.detail = bits, exp, "joint"
            bshape = (-1,) + (1,) * (len(i["shape"]) - 1)
            unit_acc = unit_w / 2 ** exp
            out[k] = current(
                node.name, node.name,
                np.broadcast_to(unit_acc.reshape(bshape), i["shape"]).astype(np.float64),
                np.broadcast_to(np.rint(i["b"] / unit_acc).reshape(bshape),
                                i["shape"]).astype(np.int64),
                np.broadcast_to((b * 2 ** exp).reshape(bshape), i["shape"]).astype(np.float64))
        return out

    def op_add(self, name, d, ins):
        shape = d["shape"]
        ins = self._joint(name, ins)
        base = np.minimum.reduce([x.unit for x in ins])
        ratio = [x.unit / base for x in ins]
        k = 0
        while k < MAX_ADD_SHIFT and sum((r * 2 ** (k + 1) * x.bound).max()
                                        for r, x in zip(ratio, ins)) <= HEADROOM:
            k += 1
        unit = base / 2 ** k
        gains, exps = [], []
        for r, x in zip(ratio, ins):
            g = per_channel(r) * 2 ** k
            e = gain_exponent(self.fail, name, g)
            gains.append(np.rint(g / 2 ** e).astype(np.int64))
            exps.append(e)
        bshape = (len(ins), shape[0]) + (1,) * (len(shape) - 1)
        gains = np.stack(gains).reshape(bshape)
        real = [gains[i] * 2 ** exps[i] for i in range(len(ins))]
        bias = sum(r * x.bias for r, x in zip(real, ins))
        bound = sum(r * x.bound for r, x in zip(real, ins))
        node = self.emit(ir.Add(name, tuple(x.node for x in ins), shape, gains=gains,
                                exps=tuple(exps)))
        # the realized unit: Σ gains·x in units of `unit` within the gain rounding
        self.layers.append(LayerRow(name, node.kind, shape,
                                    synapses=int(np.prod(shape)) * len(ins),
                                    gain_max=int(gains.max()), gain_exp=max(exps)))
        return current(name, name, unit, np.broadcast_to(bias, shape).astype(np.int64),
                       np.broadcast_to(bound, shape).astype(np.float64))

