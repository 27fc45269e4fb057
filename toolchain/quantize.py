"""Quantization: float graph + calibration → SFN graph of Loihi-style integers.

Every integer tensor carries, per element, the float `unit` one integer step stands for, a pending
integer `bias` (added by the neuron or readout that consumes it) and a static `bound` on |value|.

- Input: 8-bit encoder, unit = 1 / inv_scale.
- Conv/Dense: W_eff = W · unit_in (per input channel), quantized per output channel to 8-bit
  mantissas (mixed sign: even values in [−256, 254], since Lava drops the lowest bit; one sign:
  [0, 255] or [−255, 0]); one `weight_exp` per connection, the largest that keeps the static bound
  Σ|W|·bound_in·2^e under the headroom (2²¹, or 2¹³ feeding an Add so the Add can scale up).
- ReLU/Clip → uniform neuron with L levels: θ = round_even(s_out / unit_in) per channel, s_out the
  clip maximum or the calibration percentile divided by L, times the scale factor λ (default 1);
  its realized scale θ·unit_in is what the consumers see. A current that a synapse must read is
  requantized by a signed neuron [−L, L].
- ReLU/Clip with `fire="adaptive"` (or "quantile") → adaptive neuron with L non-uniform levels
  (see `fit_levels`): one normalized level shape per layer fitted to the calibration sample,
  integer payloads y_0 = 0 < y_1 < … < y_L, per-channel output unit λ·R_c / Q, integer
  thresholds at the midpoints between consecutive levels.
- Add: output unit = finest input unit / 2^k; integer gains (8-bit mantissa per channel, one
  exponent per input). AvgPool → sum-pool, unit / (kh·kw). MaxPool, Concat, Reshape, Transpose
  map units, biases and bounds like the values.
- A static check that |current| + |bias| + θ//2 fits the signed 24-bit state names the layer.
"""
from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import numpy as np

from sim import ir, semantics
from sim.cpu import kernels
from toolchain.calibrate import ChannelStats
from toolchain.errors import QuantizationError, UnsupportedOpError
from toolchain.fgraph import FloatGraph

HEADROOM = 2 ** 21
HEADROOM_BEFORE_ADD = 2 ** 13
WEIGHT_BOUND = 2 ** 22  # fewer weight bits only when 8-bit weights could exceed this
MAX_WEIGHT_EXP = 7
# a bias much larger than the reachable current (a channel whose input is almost never nonzero,
# its output driven by the folded BatchNorm shift) lowers the weight exponent until
# current bound + |bias| fits in three quarters of the signed 24-bit state (θ/2 takes the rest)
BIAS_HEADROOM = 3 * 2 ** 21
MAX_ADD_SHIFT = 8
LEAK_SHIFT = 8  # a leaky unit's state carries 8 more bits than its output payload


@dataclass
class QTensor:
    node: str              # SFN node producing it
    fname: str             # float-graph node whose float value it represents
    unit: np.ndarray       # float64, per-sample shape
    bias: np.ndarray       # int64, per-sample shape (pending)
    bound: np.ndarray      # float64, per-sample shape, max |integer|
    spikes: bool           # payloads of neurons / the encoder (possibly index-mapped, max-pooled)
    synapse_ok: bool       # a synapse may read it: spikes or sum-pools of spikes, no pending bias


@dataclass
class QuantOptions:
    levels: int = 15
    percentile: float = 99.99
    per_channel: bool = True
    input_bits: int = 8
    # Clip(0, max) ranges: a model trained with clip-floor activations (it declares sfn.levels)
    # is quantized at exactly max / L; otherwise the range is min(max, calibration percentile)
    trust_clip: bool = False
    # calibration inputs lie on this grid (see calibrate.grid_step): encode them losslessly
    input_step: float | None = None
    # ReLU/Clip fire function: "uniform" (L equal steps), "adaptive" (non-uniform levels fitted to
    # the calibration distribution: quantile start, Lloyd-Max refinement) or "quantile" (the
    # quantile placement alone, without the refinement)
    fire: str = "uniform"
    # λ: every ReLU/Clip layer's range (hence its thresholds and levels) is λ × the calibrated one
    scale: float = 1.0


FIRE_MODES = ("uniform", "adaptive", "quantile")
FIT_MAX_VALUES = 1 << 18      # pooled normalized values a layer's level shape is fitted on
# payload resolution: the integer levels live on a grid Q = 2·L, one bit more than uniform
# levels need. A finer grid would follow the fitted levels more closely, but every consumer's
# static 24-bit accumulator bound grows with the largest payload, and where that bound already
# binds (a 1×1 projection feeding a residual Add, weight exponent 0) the Add's integer gains lose
# the same bits: MobileNetV2 at 15 levels, relative error on its calibration images 0.076
# uniform, 0.083 with Q = 2L, 0.154 with Q = 4L, 0.178 with Q ≈ 8L (docs/conversion.md)
PAYLOAD_MULT = 2
REFINE_VALUES = 1 << 16       # order statistics the integer levels are refined on


def _level_mse(u: np.ndarray, rho: np.ndarray) -> float:
    """Mean squared error of nearest-level quantization (round half up) of u ∈ [0, 1] to the
    levels 0, ρ_1, …, ρ_L."""
    levels = np.concatenate([[0.0], rho])
    edges = (levels[:-1] + levels[1:]) / 2
    q = levels[np.searchsorted(edges, u, side="right")]
    return float(np.mean((u - q) ** 2))


def _lloyd(u: np.ndarray, rho: np.ndarray, iters: int = 200) -> np.ndarray:
    """Lloyd-Max on sorted u with the level 0 fixed: edges at midpoints, levels at the means of
    their bins (an empty bin keeps its level)."""
    cs = np.concatenate([[0.0], np.cumsum(u)])
    for _ in range(iters):
        levels = np.concatenate([[0.0], rho])
        start = np.searchsorted(u, (levels[:-1] + levels[1:]) / 2, side="left")
        end = np.append(start[1:], len(u))
        count = end - start
        new = np.where(count > 0, (cs[end] - cs[start]) / np.maximum(count, 1), rho)
        new = np.maximum.accumulate(new)
        if np.allclose(new, rho, rtol=0, atol=1e-10):
            return new
        rho = new
    return rho


def _refine_integer(u: np.ndarray, y: np.ndarray, q: int, passes: int = 8) -> np.ndarray:
    """Coordinate descent of the integer levels y (strictly increasing, 1 ≤ y_k ≤ q) on the
    squared error of u; the uniform levels win if they are better."""
    L = len(y)
    best = _level_mse(u, y / q)
    for _ in range(passes):
        moved = False
        for k in range(L):
            for step in (-1, 1):
                c = y.copy()
                c[k] += step
                if c[k] < 1 or c[k] > q or (k and c[k] <= c[k - 1]) or \
                        (k < L - 1 and c[k] >= c[k + 1]):
                    continue
                e = _level_mse(u, c / q)
                if e < best:
                    y, best, moved = c, e, True
        if not moved:
            break
    uniform = np.arange(1, L + 1) * (q // L)
    return uniform if _level_mse(u, uniform / q) < best else y


def fit_levels(sample: np.ndarray, ranges: np.ndarray, L: int, method: str = "adaptive",
               seed: int = 0) -> dict:
    """Normalized level shape ρ_1 < … < ρ_L of one ReLU layer and its integer payloads.

    The values |x| of each channel c (sample (C, n)) are divided by the channel's calibrated
    range R_c and clipped to [0, 1], and pooled over the layer (at most FIT_MAX_VALUES of them).
    "quantile": ρ_k = the (k − ½)/L quantile of the positive pooled values — every level stands
    for the same share of the nonzero activations, as the SFN paper places its thresholds.
    "adaptive": Lloyd-Max (1-D k-means with the level 0 fixed, so zero stays zero and silent)
    started from the quantile levels and, separately, from the uniform levels k/L; the start
    whose result has the lower squared error wins, so the fitted levels are never worse than the
    uniform ones on the calibration sample.

    Integer payloads on the grid Q = PAYLOAD_MULT·L: y_k = round(ρ_k·Q), made strictly
    increasing; "adaptive" then moves single levels by ±1 while the squared error falls
    (coordinate descent on the grid) and keeps the uniform levels y_k = PAYLOAD_MULT·k if those
    are better still, so its integer levels never lose to the uniform ones on the sample."""
    ok = ranges > 0
    u = (np.asarray(sample, np.float64)[ok] / ranges[ok, None]).reshape(-1)
    u = np.clip(u, 0.0, 1.0)
    if u.size > FIT_MAX_VALUES:
        u = np.random.default_rng(seed).choice(u, FIT_MAX_VALUES, replace=False)
    u = np.sort(u)
    uniform = np.arange(1, L + 1) / L
    pos = u[u > 0]
    if len(pos) >= L:
        quant = np.quantile(pos, (np.arange(1, L + 1) - 0.5) / L)
    else:
        quant = uniform
    if method == "quantile":
        rho = quant
    else:
        fits = [_lloyd(u, quant.copy()), _lloyd(u, uniform.copy())]
        rho = min(fits, key=lambda r: _level_mse(u, r))
    rho = np.maximum.accumulate(np.maximum(rho, 1e-9))
    target = _level_mse(u, rho) if len(u) else 0.0
    q = PAYLOAD_MULT * L
    y = np.rint(rho * q).astype(np.int64)
    y[0] = max(y[0], 1)
    for k in range(1, L):
        y[k] = max(y[k], y[k - 1] + 1)
    if method != "quantile" and len(u):
        y = _refine_integer(u[::max(1, len(u) // REFINE_VALUES)], y, q)
    err = _level_mse(u, y / q) if len(u) else 0.0
    return dict(rho=rho, payload=np.concatenate([[0], y]).astype(np.int64), q=int(q),
                mse=err, mse_fitted=target, mse_uniform=_level_mse(u, uniform) if len(u) else 0.0,
                quantile_levels=quant, values=int(len(u)), positive=int(len(pos)))


def _channel_view(a: np.ndarray) -> np.ndarray:
    """Compact broadcast form: (C,1,1) if constant over space, else the array itself."""
    if a.ndim == 3 and np.all(a == a[:, :1, :1]):
        return a[:, :1, :1].copy()
    return a.copy()


def _per_channel(a: np.ndarray) -> np.ndarray:
    """Per-channel value of an array that must be constant within each channel."""
    flat = a.reshape(a.shape[0], -1)
    return flat[:, 0]


def function_steps(fn, s: float, lo: int, hi: int, reach: float, samples: int = 20001):
    """Edges z_1 < … < z_K and payloads y_0 … y_K of n(z) = clip(floor(fn(z)/s + 1/2), lo, hi)
    for |z| ≤ reach: n = y_k on [z_k, z_{k+1}). A uniform and a geometric grid (fine near 0)
    locate the changes, bisection pins each one to float precision."""
    reach = min(max(reach, 1e-6), 1e12)
    geo = np.geomspace(reach * 1e-9, reach, samples)
    z = np.unique(np.concatenate([-geo, [0.0], geo, np.linspace(-reach, reach, samples)]))

    def level(v):
        with np.errstate(all="ignore"):
            f = np.asarray(fn(np.asarray(v, np.float64)), np.float64)
        if np.any(np.isnan(f)):
            raise ValueError("the function is undefined (NaN) on part of the reachable input "
                             f"range [{-reach:.3g}, {reach:.3g}]")
        return np.clip(np.floor(f / s + 0.5), lo, hi)

    n = level(z)
    edges, payload = [], [int(n[0])]

    def split(a, b, na, nb):
        # a < b, level(a) = na != nb = level(b): record every change inside (a, b], in order
        m = 0.5 * (a + b)
        if m <= a or m >= b or b - a <= 1e-13 * max(1.0, abs(a), abs(b)):
            edges.append(b)
            payload.append(int(nb))
            return
        nm = level(m)
        if nm != na:
            split(a, m, na, nm)
        if nm != nb:
            split(m, b, nm, nb)

    for i in np.flatnonzero(n[1:] != n[:-1]):
        split(z[i], z[i + 1], n[i], n[i + 1])
    return np.asarray(edges, np.float64), np.asarray(payload, np.int64)


def _gain_exponent(fail, name: str, g: np.ndarray) -> int:
    """Exponent e so that the gains g / 2^e fit 8-bit mantissas."""
    top = float(np.max(g))
    if not np.isfinite(top) or top > 255 * 2 ** 24:
        fail(name, f"input gains reach {top:.3g} output units; the inputs' scales are too far "
                   "apart for 8-bit gains")
    return max(0, int(np.ceil(np.log2(top / 255.0))))


def _round_even(x):
    return np.maximum(2 * np.floor(np.asarray(x) / 2 + 0.5), 2).astype(np.int64)


class Quantizer:
    def __init__(self, fg: FloatGraph, stats: dict[str, ChannelStats], opts: QuantOptions,
                 where: str, fits: dict | None = None):
        self.fg, self.stats, self.opts, self.where = fg, stats, opts, where
        # fitted level shapes by (layer, method, L): they do not depend on λ, so a scale search
        # shares them between its Quantizers
        self.fits = {} if fits is None else fits
        self.sfn = nx.DiGraph()
        self.nodes: list[ir.Node] = []
        self.q: dict[str, QTensor] = {}
        self.record: dict[str, np.ndarray] = {}
        self.layers: list[dict] = []
        self.synapses: dict[str, dict] = {}  # how each dense/conv was quantized (for joint rescaling)
        self.adaptive: dict[str, dict] = {}  # fitted level shapes of adaptive ReLU layers

    # --- helpers -------------------------------------------------------------------------------
    def emit(self, node: ir.Node) -> ir.Node:
        self.nodes.append(node)
        self.sfn.add_node(node.name, node=node)
        for i in node.inputs:
            self.sfn.add_edge(i, node.name)
        return node

    def fail(self, name: str, message: str):
        raise QuantizationError(f"{self.where}: layer {name!r}: {message}")

    def act_scale(self, fname: str, hi: float | None, signed: bool) -> np.ndarray:
        """Per-channel float value of one level step, s_out = range / L."""
        L = self.opts.levels
        c = self.fg[fname]["shape"][0]
        if hi is not None and self.opts.trust_clip:
            return np.full(c, hi / L)
        st = self.stats[fname]
        rng = st.pct_abs if self.opts.per_channel else np.full(c, st.layer_pct_abs)
        fallback = max(st.layer_pct_abs, float(st.max_abs.max()), 1e-12)
        rng = np.where(rng > 0, rng, fallback)
        if hi is not None:
            rng = np.minimum(rng, hi)
        return rng / L

    def check_state(self, name: str, x: QTensor, theta: np.ndarray):
        need = x.bound + np.abs(x.bias) + theta // 2
        worst = float(need.max())
        if worst > semantics.V_MAX:
            self.fail(name, f"the neuron state can reach {worst:.0f}, over the signed 24-bit "
                            f"limit {semantics.V_MAX} by {worst / semantics.V_MAX:.2f}×; use "
                            "fewer --levels or a smaller input range")
        return float(np.log2(semantics.V_MAX / max(worst, 1)))

    # --- neurons -------------------------------------------------------------------------------
    def neuron(self, name: str, fname: str, x: QTensor, s_out: np.ndarray, lo: int, hi: int) -> QTensor:
        shape = x.unit.shape
        s_full = np.broadcast_to(s_out.reshape((-1,) + (1,) * (len(shape) - 1)), shape)
        theta = _round_even(s_full / x.unit)
        margin = self.check_state(name, x, theta)
        self.emit(ir.Neuron(name, (x.node,), shape, threshold=_channel_view(theta),
                            bias=_channel_view(x.bias.astype(np.int64)), lo=lo, hi=hi))
        unit = theta * x.unit
        self.record[f"{name}/act_scale"] = _channel_view(unit).reshape(-1)
        self.layers.append(dict(name=name, op="neuron", shape=shape, neurons=int(np.prod(shape)),
                                synapses=0, levels=f"[{lo}, {hi}]",
                                threshold=(int(theta.min()), int(theta.max())),
                                margin_bits=round(margin, 1)))
        return QTensor(name, fname, unit, np.zeros(shape, np.int64),
                       np.full(shape, float(max(hi, -lo))), True, True)

    def requantize(self, x: QTensor) -> QTensor:
        """A signed neuron [−L, L] turning a current into spikes a synapse can read."""
        L = self.opts.levels
        return self.neuron(f"{x.fname}/requant", x.fname, x, self.act_scale(x.fname, None, True),
                           -L, L)

    def spikes_in(self, x: QTensor) -> QTensor:
        return x if x.synapse_ok else self.requantize(x)

    # --- op handlers ---------------------------------------------------------------------------
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
        self.emit(ir.Input(name, (), shape, inv_scale=float(inv), lo=lo, hi=hi))
        unit = np.full(shape, 1.0 / float(inv))
        self.layers.append(dict(name=name, op="input", shape=shape, neurons=int(np.prod(shape)),
                                synapses=0, levels=f"[{lo}, {hi}]" + (
                                    " grid" if self.opts.input_step else ""), threshold=None,
                                margin_bits=None))
        return QTensor(name, name, unit, np.zeros(shape, np.int64), np.full(shape, float(hi)),
                       True, True)

    def _weights(self, name, w_eff, bound_of, b=None):
        """Quantize W_eff (out, ...) per output channel; choose bits and weight_exp (lowered
        while the bound plus the float bias `b` in accumulator units exceeds BIAS_HEADROOM)."""
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
        self.layers.append(dict(name=name, op=node.kind, shape=shape, neurons=0,
                                synapses=synapses, levels=f"w{bits} e{exp}", threshold=None,
                                margin_bits=None))
        return QTensor(name, fname, unit, bias, bound, False, False)

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
        u_c = _per_channel(x.unit)
        b_c = _per_channel(x.bound)
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
            return QTensor(x.node, name, x.unit, x.bias + extra.astype(np.int64), x.bound,
                           False, False)
        c = shape[0]
        if len(shape) == 3:
            d2 = dict(d, params=dict(W=p["scale"].reshape(c, 1, 1, 1), b=p["shift"], groups=c,
                                     stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1)))
            return self.op_conv(name, d2, ins)
        d2 = dict(d, params=dict(W=np.diag(p["scale"]), b=p["shift"]))
        return self.op_dense(name, d2, ins)

    def op_relu(self, name, d, ins):
        x = ins[0]
        hi = d["params"]["hi"]
        if x.spikes and hi is None and self._nonnegative(x.node):
            return QTensor(x.node, name, x.unit, x.bias, x.bound, True, x.synapse_ok)
        L = self.opts.levels
        step = self.act_scale(name, hi, False)          # R_c / L, R_c the calibrated range
        if hi is not None and self.opts.trust_clip:
            # trained with uniform clip-floor levels: uniform reproduces it, λ would break it
            return self.neuron(name, name, x, step, 0, L)
        scaled = step
        if self.opts.scale != 1.0:
            scaled = self.opts.scale * step
            if hi is not None:
                scaled = np.minimum(scaled, hi / L)      # never a level above the clip
        if self.opts.fire == "uniform":
            return self.neuron(name, name, x, scaled, 0, L)
        return self.adaptive_relu(name, x, step * L, scaled * L)

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
        unit_in = _channel_view(x.unit) if len(shape) == 3 else x.unit
        unit_out = _channel_view(unit) if len(shape) == 3 else unit
        thresholds = np.ceil(unit_out[..., None] * mid / unit_in[..., None])
        thresholds = np.clip(thresholds, -semantics.V_MAX - 1, semantics.V_MAX + 1).astype(np.int64)
        worst = float((x.bound + np.abs(x.bias)).max())
        if worst > semantics.V_MAX:
            self.fail(name, f"the neuron state can reach {worst:.0f}, over the signed 24-bit "
                            f"limit {semantics.V_MAX} by {worst / semantics.V_MAX:.2f}×; use "
                            "fewer --levels or a smaller input range")
        top = int(payload[-1])
        self.emit(ir.Neuron(name, (x.node,), shape, threshold=np.ones(shape[:1] + (1,) * (
            len(shape) - 1), np.int64), bias=_channel_view(x.bias.astype(np.int64)), lo=0, hi=top,
            fire="adaptive", thresholds=thresholds, payload=payload))
        self.record[f"{name}/act_scale"] = _channel_view(unit).reshape(-1)
        self.adaptive[name] = dict(payload=payload.tolist(), q=fit["q"],
                                   levels=[round(float(r), 6) for r in fit["rho"]],
                                   quantile_levels=[round(float(r), 6)
                                                    for r in fit["quantile_levels"]],
                                   mse=fit["mse"], mse_uniform=fit["mse_uniform"],
                                   values=fit["values"], positive=fit["positive"])
        self.layers.append(dict(name=name, op=f"neuron ({self.opts.fire})", shape=shape,
                                neurons=int(np.prod(shape)), synapses=0,
                                levels=f"{L}: {payload[1]}…{top}/{fit['q']}",
                                threshold=(int(thresholds.min()), int(thresholds.max())),
                                margin_bits=round(float(np.log2(semantics.V_MAX / max(worst, 1))),
                                                  1)))
        return QTensor(name, name, unit, np.zeros(shape, np.int64), np.full(shape, float(top)),
                       True, True)

    def _nonnegative(self, name: str) -> bool:
        """Are the payloads of SFN node `name` never negative? Neurons and the encoder say so by
        their levels; max-pools and index maps by their inputs."""
        node = self.sfn.nodes[name]["node"]
        if node.kind in ("neuron", "input"):
            return node.lo >= 0
        if node.kind in ("maxpool", "reshape", "concat", "transpose"):
            return all(self._nonnegative(i) for i in node.inputs)
        return False

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
            self.layers[i["row"]]["levels"] = f"w{bits} e{exp} joint"
            bshape = (-1,) + (1,) * (len(i["shape"]) - 1)
            unit_acc = unit_w / 2 ** exp
            out[k] = QTensor(
                node.name, node.name,
                np.broadcast_to(unit_acc.reshape(bshape), i["shape"]).astype(np.float64),
                np.broadcast_to(np.rint(i["b"] / unit_acc).reshape(bshape), i["shape"]).astype(np.int64),
                np.broadcast_to((b * 2 ** exp).reshape(bshape), i["shape"]).astype(np.float64),
                False, False)
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
            g = _per_channel(r) * 2 ** k
            e = _gain_exponent(self.fail, name, g)
            gains.append(np.rint(g / 2 ** e).astype(np.int64))
            exps.append(e)
        bshape = (len(ins), shape[0]) + (1,) * (len(shape) - 1)
        gains = np.stack(gains).reshape(bshape)
        real = [gains[i] * 2 ** exps[i] for i in range(len(ins))]
        bias = sum(r * x.bias for r, x in zip(real, ins))
        bound = sum(r * x.bound for r, x in zip(real, ins))
        self.emit(ir.Add(name, tuple(x.node for x in ins), shape, gains=gains, exps=tuple(exps)))
        # the realized unit: Σ gains·x in units of `unit` within the gain rounding
        self.layers.append(dict(name=name, op="add", shape=shape, neurons=0,
                                synapses=int(np.prod(shape)) * len(ins),
                                levels=f"gains≤{int(gains.max())} e{max(exps)}", threshold=None,
                                margin_bits=None))
        return QTensor(name, name, unit, np.broadcast_to(bias, shape).astype(np.int64),
                       np.broadcast_to(bound, shape).astype(np.float64), False, False)

    def op_avgpool(self, name, d, ins):
        x = ins[0]
        p = d["params"]
        kh, kw = p["kernel"]
        out_hw = d["shape"][1:]
        self.emit(ir.SumPool(name, (x.node,), d["shape"], kernel=tuple(p["kernel"]),
                             stride=tuple(p["stride"]), pads=tuple(p["pads"])))
        pool = lambda a: kernels.sum_pool(a[None].astype(np.int64), p["kernel"], p["stride"],
                                          p["pads"], out_hw)[0]
        unit_c = _per_channel(x.unit) / (kh * kw)
        unit = np.broadcast_to(unit_c[:, None, None], d["shape"]).astype(np.float64)
        bound_c = _per_channel(x.bound) * kh * kw
        self.layers.append(dict(name=name, op="sumpool", shape=d["shape"], neurons=0,
                                synapses=int(np.prod(d["shape"]) * kh * kw), levels="",
                                threshold=None, margin_bits=None))
        return QTensor(name, name, unit, pool(x.bias),
                       np.broadcast_to(bound_c[:, None, None], d["shape"]).astype(np.float64),
                       False, x.synapse_ok and not np.any(x.bias))

    def op_maxpool(self, name, d, ins):
        x = ins[0]
        if not x.spikes and not np.all(x.bias == x.bias.reshape(len(x.bias), -1)[:, :1, None]):
            raise UnsupportedOpError(f"{self.where}: MaxPool {name!r} reads a current whose bias "
                                     "varies within a channel")
        p = d["params"]
        self.emit(ir.MaxPool(name, (x.node,), d["shape"], kernel=tuple(p["kernel"]),
                             stride=tuple(p["stride"]), pads=tuple(p["pads"]),
                             dilation=tuple(p["dilation"])))
        c = d["shape"][0]
        take = lambda a: np.broadcast_to(a.reshape(c, -1)[:, :1, None], d["shape"]).copy()
        return QTensor(name, name, take(x.unit), take(x.bias), take(x.bound), x.spikes,
                       x.synapse_ok)

    def op_concat(self, name, d, ins):
        axis = d["params"]["axis"]
        self.emit(ir.Concat(name, tuple(x.node for x in ins), d["shape"], axis=axis))
        cat = lambda attr: np.concatenate([getattr(x, attr) for x in ins], axis=axis)
        return QTensor(name, name, cat("unit"), cat("bias"), cat("bound"),
                       all(x.spikes for x in ins), all(x.synapse_ok for x in ins))

    def op_reshape(self, name, d, ins):
        x = ins[0]
        shape = d["shape"]
        self.emit(ir.Reshape(name, (x.node,), shape))
        return QTensor(name, name, x.unit.reshape(shape), x.bias.reshape(shape),
                       x.bound.reshape(shape), x.spikes, x.synapse_ok)

    def op_transpose(self, name, d, ins):
        x = ins[0]
        perm = tuple(d["params"]["perm"])
        self.emit(ir.Transpose(name, (x.node,), d["shape"], perm=perm))
        return QTensor(name, name, x.unit.transpose(perm), x.bias.transpose(perm),
                       x.bound.transpose(perm), x.spikes, x.synapse_ok)

    # --- recurrent networks and table activations ---------------------------------------------
    def op_delay(self, name, d, ins):
        """Last step's spikes of a leaky unit; their unit is fixed by calibration alone (the leaky
        neuron's threshold is 2^LEAK_SHIFT in its state units), which breaks the cycle."""
        src = d["params"]["source"]
        shape = d["shape"]
        self.emit(ir.Delay(name, (), shape, source=src))
        unit = self.act_scale(src, None, False)
        L = self.opts.levels
        return QTensor(name, name, unit.astype(np.float64), np.zeros(shape, np.int64),
                       np.full(shape, float(L)), True, True)

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
        s_x = _per_channel(x.unit)
        g = s_x / (s_y / 2 ** LEAK_SHIFT)
        e = _gain_exponent(self.fail, name, g)
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
        self.emit(ir.Neuron(name, (f"{name}/in",), shape, threshold=theta,
                            bias=np.zeros(shape, np.int64), lo=lo, hi=L, decay=decay, reset="none"))
        self.record[f"{name}/act_scale"] = s_y
        self.layers.append(dict(name=name, op="neuron (leaky)", shape=shape,
                                neurons=int(np.prod(shape)), synapses=int(np.prod(shape)),
                                levels=f"[{lo}, {L}]",
                                threshold=(int(theta.min()), int(theta.max())),
                                margin_bits=round(margin, 1)))
        return QTensor(name, name, np.broadcast_to(s_y, shape).astype(np.float64),
                       np.zeros(shape, np.int64), np.full(shape, float(L)), True, True)

    def _table(self, name, x: QTensor, edges: np.ndarray, payload: np.ndarray,
               out_unit: float | None = None):
        """Adaptive neuron: n = payload[#{k : v ≥ t_k}], t_k = ceil(z_k / unit) per neuron, where
        z_k are the float inputs at which the rounded activation steps (up or down); each payload
        step stands for `out_unit` (default 1/L)."""
        shape = x.unit.shape
        thresholds = np.ceil(edges[None, :] / x.unit.reshape(-1, 1)).reshape(shape + (len(edges),))
        thresholds = np.clip(thresholds, -semantics.V_MAX - 1, semantics.V_MAX + 1).astype(np.int64)
        worst = float((x.bound + np.abs(x.bias)).max())
        if worst > semantics.V_MAX:
            self.fail(name, f"the neuron state can reach {worst:.0f}, over the 24-bit limit")
        self.emit(ir.Neuron(name, (x.node,), shape, threshold=np.ones(shape, np.int64),
                            bias=x.bias.astype(np.int64), lo=int(payload.min()),
                            hi=int(payload.max()), fire="adaptive", thresholds=thresholds,
                            payload=payload.astype(np.int64)))
        self.layers.append(dict(name=name, op="neuron (table)", shape=shape,
                                neurons=int(np.prod(shape)), synapses=0,
                                levels=f"[{int(payload.min())}, {int(payload.max())}]",
                                threshold=(int(thresholds.min()), int(thresholds.max())),
                                margin_bits=round(float(np.log2(semantics.V_MAX / max(worst, 1))), 1)))
        L = self.opts.levels
        unit = 1.0 / L if out_unit is None else out_unit
        if out_unit is not None:
            self.record[f"{name}/act_scale"] = np.array([unit])
        return QTensor(name, name, np.full(shape, unit), np.zeros(shape, np.int64),
                       np.full(shape, float(np.abs(payload).max())), True, True)

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
        percentile of |f| over all channels, capped by f's known bounds), realized as an adaptive
        neuron whose thresholds are the inputs z where n changes (found on the reachable input
        range by sampling and bisection) — the payload need not be monotone."""
        x = ins[0]
        if d["params"].get("synthetic"):
            self.fail(name, f"{d['params'].get('expr')} is a comparison; it is supported only as "
                            "the condition of a Where")
        L = self.opts.levels
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

    def op_pad(self, name, d, ins):
        raise UnsupportedOpError(f"{self.where}: Pad {name!r} is supported only where a Conv or "
                                 "AveragePool reads it (it folds into their padding)")

    def _prune(self):
        """Drop the float-graph nodes an import composition or fold left unused (tables, uniform
        affines and ReLUs bypassed by a composed table, pads folded into a conv)."""
        while True:
            dead = [n for n in self.fg.g if n != self.fg.output and not self.fg.consumers(n)
                    and self.fg[n]["op"] in ("table", "affine", "relu", "pad")]
            if not dead:
                return
            self.fg.g.remove_nodes_from(dead)

    # --- driver --------------------------------------------------------------------------------
    def run(self, softmax: str) -> tuple[list[ir.Node], str, str]:
        self._prune()
        for name in self.fg.order():
            d = self.fg[name]
            handler = getattr(self, f"op_{d['op']}", None)
            if handler is None:
                raise UnsupportedOpError(f"{self.where}: no quantization rule for {d['op']!r} "
                                         f"(node {name!r})")
            self.q[name] = handler(name, d, [self.q[i] for i in d["inputs"]])
        x = self.q[self.fg.output]
        out = f"{self.fg.output}/readout"
        self.emit(ir.Readout(out, (x.node,), x.unit.shape,
                             scale=_channel_view(x.unit).astype(np.float32),
                             bias=_channel_view(x.bias), softmax=softmax))
        if not np.all(_channel_view(x.unit).astype(np.float32) > 0):
            self.fail(out, "readout scale underflows float32")
        return self.nodes, self.nodes[0].name, out
