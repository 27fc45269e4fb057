"""The quantizer: the state of one quantization and the driver that runs a rule per float-graph
op. The rules are mixins, one module per family (synapses, pools and index maps, activations,
recurrent units); a rule `op_<float op>(name, d, ins)` takes the float node `d` and its inputs'
QTensors, emits SFN nodes (sim.ops) and returns the QTensor of its output.
"""
from __future__ import annotations

import networkx as nx
import numpy as np

from sim import ir, semantics
from toolchain.calibrate import ChannelStats
from toolchain.errors import QuantizationError, UnsupportedOpError
from toolchain.fgraph import FloatGraph
from toolchain.quantize.tensor import (MIN_WEIGHT_EXP, LayerRow, QTensor, QuantOptions,
                                       channel_view, payloads, round_even)


class QuantizerBase:
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
        self.layers: list[LayerRow] = []
        self.synapses: dict[str, dict] = {}  # how each dense/conv was quantized (joint rescaling)
        self.adaptive: dict[str, dict] = {}  # fitted level shapes of adaptive ReLU layers
        self.nonneg: set[str] = set()        # emitted nodes whose values are never negative
        self.requantized: dict[tuple, QTensor] = {}   # currents turned into spikes, by source
        # calibrated tensors an adaptive requantizer wants a sample of (the compiler calibrates
        # them and quantizes again; until then they are requantized uniformly)
        self.wanted: set[str] = set()

    # --- helpers -------------------------------------------------------------------------------
    def emit(self, node: ir.Node) -> ir.Node:
        self.nodes.append(node)
        ir.nonnegative([node], self.nonneg)
        self.sfn.add_node(node.name, node=node)
        for i in node.inputs:
            self.sfn.add_edge(i, node.name)
        return node

    def fail(self, name: str, message: str):
        raise QuantizationError(f"{self.where}: layer {name!r}: {message}")

    def act_scale(self, fname: str, hi: float | None, signed: bool,
                  levels: int | None = None) -> np.ndarray:
        """Per-channel float value of one level step, s_out = range / L (L: `levels`, default
        --levels)."""
        L = self.opts.levels if levels is None else levels
        c = self.fg[fname]["shape"][0]
        if hi is not None and self.opts.trust_clip:
            return np.full(c, hi / L)
        src = self.calibrated(fname)
        st = self.stats[src]
        # a tensor of the compiler's own (an index map of a calibrated one) takes the calibrated
        # tensor's range as a whole: its axis 0 need not be that tensor's channels
        rng = st.pct_abs if self.opts.per_channel and src == fname else \
            np.full(c, st.layer_pct_abs)
        fallback = max(st.layer_pct_abs, float(st.max_abs.max()), 1e-12)
        rng = np.where(rng > 0, rng, fallback)
        if hi is not None:
            rng = np.minimum(rng, hi)
        return rng / L

    def calibrated(self, fname: str) -> str:
        """The float node whose calibration statistics stand for `fname`: itself, or for a node
        of the compiler's own (no ONNX tensor) the calibrated node it rearranges."""
        name = fname
        while name not in self.stats:
            inputs = self.fg[name]["inputs"]
            if len(inputs) != 1:
                self.fail(fname, "no calibration statistics for this tensor")
            name = inputs[0]
        return name

    def check_state(self, name: str, x: QTensor, theta: np.ndarray, bias=None):
        """log2 of the 24-bit headroom left by |current| + |bias| + θ//2; over the limit, a
        QuantizationError naming the channel, the term that overflows and a remedy."""
        bias = x.bias if bias is None else bias
        terms = {"accumulator bound": np.broadcast_to(x.bound, x.unit.shape),
                 "bias": np.broadcast_to(np.abs(bias), x.unit.shape),
                 "threshold/2": np.broadcast_to(theta // 2, x.unit.shape)}
        need = sum(terms.values())
        worst = float(need.max())
        if worst > semantics.V_MAX:
            at = np.unravel_index(int(np.argmax(need)), need.shape)
            parts = {k: float(v[at]) for k, v in terms.items()}
            big = max(parts, key=parts.get)
            remedy = {
                "accumulator bound": "the weights' exponent is already at the target's lowest "
                                     f"(2^{MIN_WEIGHT_EXP}); split this layer's fan-in (fewer "
                                     "input channels or a smaller kernel)",
                "bias": "the bias (a folded BatchNorm shift or constant) is far larger than any "
                        "current the channel receives: calibrate with real inputs (--calib), or "
                        "compile for one timestep (--timesteps 1), where such biases are clamped",
                "threshold/2": "the channel's level step is far beyond its reachable current: "
                               "calibrate with real inputs (--calib) or use fewer --levels"}[big]
            self.fail(name, f"the neuron state can reach {worst:.0f} in channel {at[0]} ("
                            + ", ".join(f"{k} {v:.0f}" for k, v in parts.items())
                            + f"), over the signed 24-bit limit {semantics.V_MAX} by "
                            f"{worst / semantics.V_MAX:.2f}×; the {big} dominates: {remedy}")
        return float(np.log2(semantics.V_MAX / max(worst, 1)))

    # --- neurons -------------------------------------------------------------------------------
    def neuron(self, name: str, fname: str, x: QTensor, s_out: np.ndarray, lo: int,
               hi: int, exact_levels: bool = False) -> QTensor:
        """A uniform neuron with output step s_out per channel: θ = round_even(s_out / unit_in).

        Unless `exact_levels` (a model trained with these very levels), a channel's step is
        capped at what its current can reach, (bound + |bias|)/L input units: a channel that
        calibration never saw active would otherwise take the layer's largest range and a θ its
        current can never reach. At T = 1 a bias beyond what can change the output is clamped
        to the nearest value that gives the same output for every reachable current.

        A tensor calibrated as a whole (`per_tensor`: its axis 0 is no channel axis) gets one
        level step for all its elements, capped at the whole tensor's reach, so that its
        realized unit θ·unit_in is the same everywhere to within the rounding of θ."""
        shape = x.unit.shape
        s_full = np.broadcast_to(s_out.reshape((-1,) + (1,) * (len(shape) - 1)), shape)
        whole = bool(self.fg[self.calibrated(fname)]["params"].get("per_tensor")) \
            if fname in self.fg.g else False
        def per_c(a):   # the largest over a channel's positions: θ and the bias stay channel-wise
            if whole:
                return np.broadcast_to(np.max(a), shape)
            top = np.broadcast_to(a, shape).reshape(shape[0], -1).max(axis=1)
            return np.broadcast_to(top.reshape((-1,) + (1,) * (len(shape) - 1)), shape)

        bound_c = per_c(np.broadcast_to(np.ceil(x.bound), shape)).astype(np.int64)
        if whole and not exact_levels:
            # the step in float units, capped at the tensor's reach, then θ per element
            reach = float(np.max((x.bound + np.abs(x.bias)) * x.unit)) / max(hi, -lo, 1)
            s_full = np.minimum(s_full, max(reach, 1e-300))
        theta = round_even(s_full / x.unit)
        if not exact_levels and not whole:
            theta = np.minimum(theta, round_even(per_c(x.bound + np.abs(x.bias)) /
                                                 max(hi, -lo, 1)))
        theta = channel_view(np.broadcast_to(theta, shape))
        bias = x.bias.astype(np.int64)
        if self.opts.timesteps == 1:
            # v = I + b + θ//2 with |I| ≤ bound: b ≥ hi·θ − θ//2 + bound always fires hi,
            # b ≤ lo·θ − θ//2 − bound always lo (floor(v/θ) clipped to [lo, hi])
            full_t = np.broadcast_to(theta, shape)
            bias = np.clip(bias, lo * full_t - full_t // 2 - bound_c,
                           hi * full_t - full_t // 2 + bound_c)
        margin = self.check_state(name, x, np.broadcast_to(theta, shape), bias)
        node = self.emit(ir.Neuron(name, (x.node,), shape, threshold=theta,
                                   bias=channel_view(bias), lo=lo, hi=hi))
        unit = theta * x.unit
        self.record[f"{name}/act_scale"] = channel_view(unit).reshape(-1)
        self.layers.append(LayerRow(name, node.kind, shape, neurons=int(np.prod(shape)),
                                    levels=(lo, hi), threshold=(int(theta.min()),
                                                                int(theta.max())),
                                    margin_bits=round(margin, 1)))
        return payloads(name, fname, unit, np.zeros(shape, np.int64),
                        np.full(shape, float(max(hi, -lo))))

    def requantize(self, x: QTensor) -> QTensor:
        """A signed neuron [−L, L] turning a current into spikes a synapse or a product can
        read, L the internal level count: the current is no activation of the model, its levels
        only carry it to the next synapse. With an adaptive fire function (`--fire adaptive`
        or "quantile", T = 1) it is a table neuron whose levels are fitted to the current's
        calibration sample (`adaptive_requant`): a softmax's weights, a LayerNorm's outputs and
        attention's operands each get their own level shape."""
        L = self.opts.internal_levels
        key = (x.node, x.fname)
        if key not in self.requantized:   # one neuron for all the synapses that read it
            name, step = f"{x.fname}/requant", self.act_scale(x.fname, None, True, L)
            src = self.calibrated(x.fname)
            if self.opts.fire == "uniform" or self.opts.timesteps != 1:
                self.requantized[key] = self.neuron(name, x.fname, x, step, -L, L)
            elif self.stats[src].sample is None:
                self.wanted.add(src)
                self.requantized[key] = self.neuron(name, x.fname, x, step, -L, L)
            else:
                self.requantized[key] = self.adaptive_requant(name, x, step * L, src)
        return self.requantized[key]

    def spikes_in(self, x: QTensor) -> QTensor:
        return x if x.synapse_ok else self.requantize(x)

    # --- driver --------------------------------------------------------------------------------
    def _prune(self):
        """Drop the float-graph nodes an import composition or fold left unused (tables, uniform
        affines and ReLUs bypassed by a composed table, pads folded into a conv)."""
        while True:
            dead = [n for n in self.fg.g if n != self.fg.output and not self.fg.consumers(n)
                    and self.fg[n]["op"] in ("table", "affine", "relu", "pad")]
            if not dead:
                return
            self.fg.g.remove_nodes_from(dead)

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
        unit = channel_view(x.unit)
        with np.errstate(over="ignore"):
            scale = unit.astype(np.float32)
        if not np.all(np.isfinite(unit)):
            self.fail(out, "the readout scale is not finite: the layers before it compute NaN or "
                           "±Inf from their weights")
        if not np.all(np.isfinite(scale)):
            self.fail(out, f"the readout scale reaches {float(np.max(np.abs(unit))):.3g}, beyond "
                           "float32's range: the weights before the readout are too large")
        if not np.all(scale > 0):
            self.fail(out, f"the readout scale falls to {float(np.min(unit)):.3g}, below float32's "
                           "smallest value: the weights before the readout are too small")
        self.emit(ir.Readout(out, (x.node,), x.unit.shape, scale=scale,
                             bias=channel_view(x.bias), softmax=softmax))
        return self.nodes, self.nodes[0].name, out
