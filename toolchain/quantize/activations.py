"""Quantization rules of activations: ReLU/Clip as a uniform multi-threshold neuron or an
adaptive one with fitted levels, and any elementwise function of one tensor (sigmoid, tanh,
GELU, …) as a table neuron.

- ReLU/Clip → uniform neuron with L levels: θ = round_even(s_out / unit_in) per channel, s_out the
  clip maximum or the calibration percentile divided by L, times the scale factor λ (default 1);
  its realized scale θ·unit_in is what the consumers see. A current that a synapse must read is
  requantized by a signed neuron [−L, L].
- ReLU/Clip with `fire="adaptive"` (or "quantile") → adaptive neuron with L non-uniform levels
  (see `fit_levels`): one normalized level shape per layer fitted to the calibration sample,
  integer payloads y_0 = 0 < y_1 < … < y_L, per-channel output unit λ·R_c / Q, integer
  thresholds at the midpoints between consecutive levels.
- A table neuron's integer thresholds are the inputs at which the rounded function changes
  level (`function_steps`), per neuron in its input's units.
"""
from __future__ import annotations

import numpy as np

from sim import ir, semantics
from toolchain.quantize.levels import fit_levels, function_steps
from toolchain.quantize.tensor import LayerRow, QTensor, channel_view, payloads


class ActivationRules:
    def op_relu(self, name, d, ins):
        x = ins[0]
        hi = d["params"]["hi"]
        if x.spikes and hi is None and x.node in self.nonneg:
            return QTensor(x.node, name, x.unit, x.bias, x.bound, spikes=True,
                           synapse_ok=x.synapse_ok)
        L = self.opts.levels
        step = self.act_scale(name, hi, False)          # R_c / L, R_c the calibrated range
        if hi is not None and self.opts.trust_clip:
            # trained with uniform clip-floor levels: uniform reproduces it, λ would break it
            return self.neuron(name, name, x, step, 0, L, exact_levels=True)
        scaled = step
        if self.opts.scale != 1.0:
            scaled = self.opts.scale * step
            if hi is not None:
                scaled = np.minimum(scaled, hi / L)      # never a level above the clip
        if self.opts.fire == "uniform":
            return self.neuron(name, name, x, scaled, 0, L)
        return self.adaptive_relu(name, x, step * L, scaled * L)

    def _table_margin(self, name, x: QTensor, remedy: str | None = None) -> float:
        """The log2 headroom of an adaptive neuron's state sat(I + b) under the signed 24-bit
        limit (its thresholds compare I + b, with no θ/2 offset); a state that can pass the
        limit is refused, naming the remedy when there is one."""
        worst = float((x.bound + np.abs(x.bias)).max())
        if worst > semantics.V_MAX:
            self.fail(name, f"the neuron state can reach {worst:.0f}, over the signed 24-bit "
                            f"limit {semantics.V_MAX} by {worst / semantics.V_MAX:.2f}×"
                            + (f"; use {remedy}" if remedy else ""))
        return round(float(np.log2(semantics.V_MAX / max(worst, 1))), 1)

    def adaptive_requant(self, name, x: QTensor, base: np.ndarray, src: str) -> QTensor:
        """A current requantized by a table neuron with fitted levels: the level shape
        y_0 = 0 < … < y_L of fit_levels on the calibration sample of |x| (its calibrated tensor
        `src`), mirrored to −y_L … y_L where x takes negative values; output unit R_c / Q per
        channel (R_c = `base`, the range the uniform requantizer divides into L steps),
        thresholds at the midpoints between consecutive payloads in the current's units,
        rounded up (the nearest level, ties up, as the uniform neuron's θ/2 offset)."""
        L = self.opts.internal_levels
        st = self.stats[src]
        shape = x.unit.shape
        # the sample's rows are src's channels; a tensor rearranged from src (its axis 0 not
        # src's channels) takes one range for all of them, as act_scale does
        ranges = base if src == x.fname and len(base) == len(st.sample) else \
            np.full(len(st.sample), float(np.max(base)))
        key = (name, self.opts.fire, L)
        if key not in self.fits:
            self.fits[key] = fit_levels(st.sample, ranges, L, self.opts.fire)
        fit = self.fits[key]
        half = fit["payload"]
        signed = st.min < 0
        payload = np.concatenate([-half[:0:-1], half]) if signed else half
        bshape = (-1,) + (1,) * (len(shape) - 1)
        unit = np.broadcast_to((base / fit["q"]).reshape(bshape), shape).astype(np.float64)
        mid = (payload[:-1] + payload[1:]) / 2.0
        with np.errstate(divide="ignore", invalid="ignore"):
            thresholds = np.ceil(unit[..., None] * mid / np.asarray(x.unit)[..., None])
        thresholds = np.clip(np.nan_to_num(thresholds, nan=semantics.V_MAX + 1),
                             -semantics.V_MAX - 1, semantics.V_MAX + 1).astype(np.int64)
        bias = np.broadcast_to(x.bias, shape).astype(np.int64)
        margin = self._table_margin(name, x, "fewer --internal-levels or a smaller input range")
        top = int(payload[-1])
        node = self.emit(ir.Neuron(
            name, (x.node,), shape, threshold=np.ones((1,) * len(shape), np.int64), bias=bias,
            lo=int(payload[0]), hi=top, fire="adaptive", thresholds=thresholds,
            payload=payload.astype(np.int64)))
        self.record[f"{name}/act_scale"] = channel_view(unit).reshape(-1)
        self.adaptive[name] = dict(payload=payload.tolist(), q=fit["q"],
                                   levels=[round(float(r), 6) for r in fit["rho"]],
                                   mse=fit["mse"], mse_uniform=fit["mse_uniform"],
                                   values=fit["values"], positive=fit["positive"],
                                   signed=bool(signed))
        self.layers.append(LayerRow(
            name, f"{node.kind} ({self.opts.fire})", shape, neurons=int(np.prod(shape)),
            levels=(int(payload[0]), top),
            detail=f"{L} levels{' ±' if signed else ': '}{half[1]}…{top}/{fit['q']}",
            threshold=(int(thresholds.min()), int(thresholds.max())),
            margin_bits=margin))
        return payloads(name, x.fname, unit, np.zeros(shape, np.int64),
                        np.full(shape, float(top)))

    def adaptive_relu(self, name, x: QTensor, base: np.ndarray, scaled: np.ndarray) -> QTensor:
        """ReLU as an adaptive neuron: payloads y_0 = 0 < … < y_L (fit_levels, one shape per
        layer), output unit λ·R_c / Q per channel, thresholds t_k = ceil(b_k / unit_in) with
        b_k = (y_{k−1} + y_k)/2 · unit_out (nearest level, round half up, like the uniform
        neuron's θ/2 offset)."""
        L = self.opts.levels
        st = self.stats[name]
        if st.sample is None:
            self.fail(name, "no calibration sample was kept for the adaptive fire function")
        key = (name, self.opts.fire, L)
        if key not in self.fits:
            self.fits[key] = fit_levels(st.sample, base, L, self.opts.fire)
        fit = self.fits[key]
        payload = fit["payload"]
        shape = x.unit.shape
        bshape = (-1,) + (1,) * (len(shape) - 1)
        unit = np.broadcast_to((scaled / fit["q"]).reshape(bshape), shape).astype(np.float64)
        mid = (payload[:-1] + payload[1:]) / 2.0
        unit_in = channel_view(x.unit) if len(shape) == 3 else x.unit
        unit_out = channel_view(unit) if len(shape) == 3 else unit
        thresholds = np.ceil(unit_out[..., None] * mid / unit_in[..., None])
        thresholds = np.clip(thresholds, -semantics.V_MAX - 1,
                             semantics.V_MAX + 1).astype(np.int64)
        margin = self._table_margin(name, x, "fewer --levels or a smaller input range")
        top = int(payload[-1])
        node = self.emit(ir.Neuron(
            name, (x.node,), shape, threshold=np.ones(shape[:1] + (1,) * (len(shape) - 1),
                                                      np.int64),
            bias=channel_view(x.bias.astype(np.int64)), lo=0, hi=top, fire="adaptive",
            thresholds=thresholds, payload=payload))
        self.record[f"{name}/act_scale"] = channel_view(unit).reshape(-1)
        self.adaptive[name] = dict(payload=payload.tolist(), q=fit["q"],
                                   levels=[round(float(r), 6) for r in fit["rho"]],
                                   quantile_levels=[round(float(r), 6)
                                                    for r in fit["quantile_levels"]],
                                   mse=fit["mse"], mse_uniform=fit["mse_uniform"],
                                   values=fit["values"], positive=fit["positive"])
        self.layers.append(LayerRow(
            name, f"{node.kind} ({self.opts.fire})", shape, neurons=int(np.prod(shape)),
            levels=(0, top), detail=f"{L} levels: {payload[1]}…{top}/{fit['q']}",
            threshold=(int(thresholds.min()), int(thresholds.max())),
            margin_bits=margin))
        return payloads(name, name, unit, np.zeros(shape, np.int64), np.full(shape, float(top)))


    def _table(self, name, x: QTensor, edges: np.ndarray, payload: np.ndarray,
               out_unit: float | None = None):
        """Adaptive neuron: n = payload[#{k : v ≥ t_k}], t_k = ceil(z_k / unit) per neuron, where
        z_k are the float inputs at which the rounded activation steps (up or down); each payload
        step stands for `out_unit` (default 1/L)."""
        shape = x.unit.shape
        if len(edges) == 0:
            # constant over the reachable inputs (an LRN's power of a window sum that barely
            # moves): one threshold past the state's range keeps the table form
            edges, payload = np.array([np.inf]), np.repeat(np.asarray(payload)[:1], 2)
        with np.errstate(invalid="ignore"):
            thresholds = np.ceil(edges[None, :] / x.unit.reshape(-1, 1))
        thresholds = thresholds.reshape(
            shape + (len(edges),))
        thresholds = np.clip(thresholds, -semantics.V_MAX - 1,
                             semantics.V_MAX + 1).astype(np.int64)
        margin = self._table_margin(name, x)
        node = self.emit(ir.Neuron(name, (x.node,), shape, threshold=np.ones(shape, np.int64),
                                   bias=x.bias.astype(np.int64), lo=int(payload.min()),
                                   hi=int(payload.max()), fire="adaptive",
                                   thresholds=thresholds, payload=payload.astype(np.int64)))
        self.layers.append(LayerRow(
            name, f"{node.kind} (table)", shape, neurons=int(np.prod(shape)),
            levels=(int(payload.min()), int(payload.max())),
            threshold=(int(thresholds.min()), int(thresholds.max())),
            margin_bits=margin))
        L = self.opts.levels
        unit = 1.0 / L if out_unit is None else out_unit
        if out_unit is not None:
            self.record[f"{name}/act_scale"] = np.array([unit])
        return payloads(name, name, np.full(shape, unit), np.zeros(shape, np.int64),
                        np.full(shape, float(np.abs(payload).max())))

    def op_sigmoid(self, name, d, ins):
        """n = floor(L·σ(slope·z) + 1/2): steps at z_k = logit((k − ½)/L) / slope, k = 1…L."""
        L = self.opts.levels
        p = (np.arange(1, L + 1) - 0.5) / L
        edges = np.log(p / (1 - p)) / d["params"]["slope"]
        return self._table(name, ins[0], edges, np.arange(0, L + 1))

    def op_tanh(self, name, d, ins):
        """n = floor(L·tanh(z) + 1/2) ∈ [−L, L]: steps at z_j = atanh((j − ½)/L), j = −L+1…L."""
        L = self.opts.levels
        edges = np.arctanh((np.arange(-L + 1, L + 1) - 0.5) / L)
        return self._table(name, ins[0], edges, np.arange(-L, L + 1))

    def op_table(self, name, d, ins):
        """Any elementwise function f of one tensor (ONNX Sigmoid, HardSwish, x·sigmoid(x), GELU
        …): n = clip(floor(f(z)/s + 1/2), −L, L) with one output step s per layer (calibration
        percentile of |f| over all channels, capped by f's known bounds; L is the internal level
        count for arithmetic tables — exp, 1/x, √x, x² — and --levels for activations),
        realized as an adaptive neuron whose thresholds are the inputs z where n changes (found
        on the reachable input range by sampling and bisection) — the payload need not be
        monotone."""
        x = ins[0]
        if d["params"].get("synthetic"):
            self.fail(name, f"{d['params'].get('expr')} is a comparison; it is supported only as "
                            "the condition of a Where")
        L = self.opts.internal_levels if d["params"].get("internal") else self.opts.levels
        st = self.stats[name]
        rng = st.layer_pct_abs if st.layer_pct_abs > 0 else float(st.max_abs.max())
        b = d["params"].get("bounds")
        if b is not None:
            rng = min(rng, max(abs(b[0]), abs(b[1])))
        if not rng > 0:
            rng = 1.0
        s = rng / L
        reach = float(((x.bound + np.abs(x.bias)) * x.unit).max())
        try:
            edges, payload = function_steps(d["params"]["fn"], s, -L, L, reach)
        except ValueError as exc:
            self.fail(name, f"{d['params'].get('expr', 'function')}: {exc}")
        return self._table(name, x, edges, payload, s)

