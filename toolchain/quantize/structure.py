"""Quantization rules of the maps that move or pool values: average pooling (a sum pool, its
divisor folded into the unit), max pooling, joining, reshaping and transposing. Units, pending
biases and bounds follow the values."""
from __future__ import annotations

import numpy as np

from sim import ir, kernels
from toolchain.errors import UnsupportedOpError
from toolchain.quantize.tensor import (HEADROOM, MAX_WEIGHT_EXP, UNIT_SPREAD, LayerRow,
                                       QTensor, current, per_channel, uniform)


class StructureRules:
    def op_avgpool(self, name, d, ins):
        """A sum pool with the divisor folded into the unit. Where the divisor varies per
        position (border windows with count_include_pad=0, ceil-mode windows), an Add with one
        input scales each position's sum by an integer gain g = G / count: with G the least
        common multiple of the counts (when G / count fits 8-bit mantissas with one exponent)
        every position has the same unit u / G and the map is exact; otherwise g rounds
        255·min(count) / count and each position keeps its own unit u / (count·g), uniform to
        within half a gain step."""
        x = self.uniform_channels(name, ins[0])
        p = d["params"]
        kh, kw = p["kernel"]
        shape = tuple(d["shape"])
        out_hw = shape[1:]
        divisor = p.get("divisor")
        per = 1 if p.get("total") else kh * kw   # ReduceSum: the sum itself
        sum_name = name if divisor is None else f"{name}/sum"
        node = self.emit(ir.SumPool(sum_name, (x.node,), shape, kernel=tuple(p["kernel"]),
                                    stride=tuple(p["stride"]), pads=tuple(p["pads"])))
        pool = lambda a: kernels.sum_pool(a[None].astype(np.int64), p["kernel"], p["stride"],
                                          p["pads"], out_hw)[0]
        unit_c = per_channel(x.unit)
        full = lambda v: np.broadcast_to(v[:, None, None], shape).astype(np.float64)
        bound = full(per_channel(x.bound) * kh * kw)
        self.layers.append(LayerRow(sum_name, node.kind, shape,
                                    synapses=int(np.prod(shape) * kh * kw)))
        ok = x.synapse_ok and not np.any(x.bias)
        if divisor is None:
            return QTensor(name, name, full(unit_c / per), pool(x.bias), bound,
                           spikes=False, synapse_ok=ok)
        counts = np.asarray(divisor, np.int64)
        gains, exp, exact = _divisor_gains(counts)
        real = (gains * 2 ** exp).astype(np.float64)
        self.emit(ir.Add(name, (sum_name,), shape, gains=gains[None, None], exps=(exp,)))
        self.layers.append(LayerRow(name, "add", shape, synapses=int(np.prod(shape)),
                                    gain_max=int(gains.max()), gain_exp=exp,
                                    detail="divisor" if exact else "divisor≈"))
        # a window sums `count` inputs: |g·2^e·sum| ≤ count·g·2^e·bound
        unit = unit_c[:, None, None] / (counts * real)[None]
        return QTensor(name, name, unit, pool(x.bias) * (gains * 2 ** exp)[None],
                       per_channel(x.bound)[:, None, None] * (counts * real)[None],
                       spikes=False, synapse_ok=ok)

    def op_fixed_conv(self, name, d, ins):
        """A depthwise convolution with a fixed integer kernel K and divisor D (a bilinear
        upsampling's): value = conv(x, K) / D. The integers K are the weights as they are; D and
        the weight exponent fold into the output unit, so the map is exact."""
        x = self.spikes_in(ins[0])
        p = d["params"]
        kernel = np.asarray(p["K"], np.int64)
        c = d["shape"][0]
        b_c = per_channel(x.bound)
        bound_c = b_c * float(np.abs(kernel).sum())
        exp = 0
        while exp < MAX_WEIGHT_EXP and bound_c.max() * 2 ** (exp + 1) <= HEADROOM:
            exp += 1
        weight = np.broadcast_to(kernel, (c, 1) + kernel.shape).astype(np.int16)
        node = self.emit(ir.Conv(name, (x.node,), d["shape"], weight=weight, weight_exp=exp,
                                 groups=c))
        shape = d["shape"]
        unit_c = per_channel(x.unit) / (float(p["divisor"]) * 2 ** exp)
        self.layers.append(LayerRow(name, node.kind, shape,
                                    synapses=int(np.count_nonzero(kernel) * np.prod(shape)),
                                    weight_bits=int(kernel.max()).bit_length(), weight_exp=exp,
                                    detail=f"/{p['divisor']}"))
        full = lambda v: np.broadcast_to(v[:, None, None], shape).astype(np.float64)
        return current(name, name, full(unit_c), np.zeros(shape, np.int64),
                       full(bound_c * 2 ** exp))

    def uniform_channels(self, name: str, x: QTensor) -> QTensor:
        """x with one unit per channel, as a pool needs (it adds or compares a channel's values
        as integers): a current whose unit varies within a channel (a token tensor's features)
        is requantized first — its neuron's level step is the same for the whole tensor, its
        realized unit uniform within the rounding of θ (UNIT_SPREAD)."""
        if uniform(x.unit, 0):
            return x
        if not x.synapse_ok:
            x = self.requantize(x)
            if uniform(x.unit, 0):
                return x
        self.fail(name, "its input's unit varies within a channel by more than "
                        f"{UNIT_SPREAD:.1%}; a pool needs one unit per channel")

    def op_maxpool(self, name, d, ins):
        x = self.uniform_channels(name, ins[0])
        if not x.spikes and not np.all(x.bias == x.bias.reshape(len(x.bias), -1)[:, :1, None]):
            raise UnsupportedOpError(f"{self.where}: MaxPool {name!r} reads a current whose bias "
                                     "varies within a channel")
        p = d["params"]
        self.emit(ir.MaxPool(name, (x.node,), d["shape"], kernel=tuple(p["kernel"]),
                             stride=tuple(p["stride"]), pads=tuple(p["pads"]),
                             dilation=tuple(p["dilation"])))
        c = d["shape"][0]
        take = lambda a: np.broadcast_to(a.reshape(c, -1)[:, :1, None], d["shape"]).copy()
        return x.like(name, name, take(x.unit), take(x.bias), take(x.bound))

    def op_constant(self, name, d, ins):
        """Quantized by the concat that reads it, in the units of the tensor it joins."""
        return None

    def _constant_input(self, name: str, cname: str, ref: QTensor, axis: int) -> QTensor:
        """The constant node `cname` joined to `ref` along `axis`: integers in ref's units (its
        first slice along the axis, the same for every token), a Constant node reading the
        input for the batch; spikes or a current as `ref` is."""
        value = np.asarray(self.fg[cname]["params"]["value"], np.float64)
        unit = np.broadcast_to(np.take(ref.unit, [0], axis=axis), value.shape).astype(np.float64)
        ints = np.rint(value / unit).astype(np.int64)
        node = self.emit(ir.Constant(cname, (self.nodes[0].name,), value.shape, value=ints))
        self.layers.append(LayerRow(cname, node.kind, value.shape))
        return QTensor(node.name, cname, unit, np.zeros(value.shape, np.int64),
                       np.abs(ints).astype(np.float64), spikes=ref.spikes,
                       synapse_ok=ref.synapse_ok)

    def op_concat(self, name, d, ins):
        axis = d["params"]["axis"]
        ref = next(x for x in ins if x is not None)
        ins = [x if x is not None else self._constant_input(name, c, ref, axis)
               for x, c in zip(ins, d["inputs"])]
        self.emit(ir.Concat(name, tuple(x.node for x in ins), d["shape"], axis=axis))
        cat = lambda attr: np.concatenate([getattr(x, attr) for x in ins], axis=axis)
        return QTensor(name, name, cat("unit"), cat("bias"), cat("bound"),
                       spikes=all(x.spikes for x in ins),
                       synapse_ok=all(x.synapse_ok for x in ins))

    def spikes_first(self, d, x: QTensor) -> QTensor:
        """An index map of the compiler's own (no ONNX tensor, no calibration) whose reader is a
        synapse (the converter marks it `spikes`) requantizes a current before moving it: its
        input is the calibrated tensor the requantizing neuron takes its scale from."""
        return self.requantize(x) if d["params"].get("spikes") and not x.synapse_ok else x

    def op_reshape(self, name, d, ins):
        x = self.spikes_first(d, ins[0])
        shape = d["shape"]
        self.emit(ir.Reshape(name, (x.node,), shape))
        return x.like(name, name, x.unit.reshape(shape), x.bias.reshape(shape),
                      x.bound.reshape(shape))

    def op_transpose(self, name, d, ins):
        x = self.spikes_first(d, ins[0])
        perm = tuple(d["params"]["perm"])
        self.emit(ir.Transpose(name, (x.node,), d["shape"], perm=perm))
        return x.like(name, name, x.unit.transpose(perm), x.bias.transpose(perm),
                      x.bound.transpose(perm))

    def op_select(self, name, d, ins):
        """A constant gather (Slice, Gather, Split, Expand, nearest Resize, zero insertion):
        units, pending biases and bounds move with the values. An inserted zero is an exact 0
        (pending bias 0); it takes its output channel's unit (the consumers read one unit per
        channel) and bound. A select of a current that only synapses read (or that the compiler
        made for one, `spikes_first`) requantizes the current before moving it: fewer neurons
        than after an upsampling select, and the scale is the calibrated input's."""
        x = self.spikes_first(d, ins[0])
        if not x.synapse_ok and self.fg.consumers(name) and \
                all(self.fg[c]["op"] in ("conv", "dense") for c in self.fg.consumers(name)):
            x = self.requantize(x)
        table = np.asarray(d["params"]["table"], dtype=np.int64)
        shape = tuple(d["shape"])
        self.emit(ir.Select(name, (x.node,), shape, table=table))
        zero = table < 0
        take = lambda a, fill: np.where(zero, fill, a.reshape(-1)[np.maximum(table, 0)])
        unit = take(x.unit, np.nan).reshape(shape)
        bound = take(x.bound, 0.0).reshape(shape)
        if zero.any():
            rows = unit.reshape(shape[0], -1)
            known = np.where(np.isnan(rows), -np.inf, rows)
            fill = np.where(np.isfinite(known).any(axis=1), known.max(axis=1), 1.0)
            unit = np.where(np.isnan(rows), fill[:, None], rows).reshape(shape)
            bound = np.broadcast_to(bound.reshape(shape[0], -1).max(axis=1)[:, None],
                                    rows.shape).reshape(shape).copy()
        bias = np.where(zero, 0, x.bias.reshape(-1)[np.maximum(table, 0)]).reshape(shape)
        return x.like(name, name, unit, bias.astype(np.int64), bound)

    def op_pad(self, name, d, ins):
        raise UnsupportedOpError(f"{self.where}: Pad {name!r} is supported only where a Conv or "
                                 "AveragePool reads it (it folds into their padding)")


def _divisor_gains(counts: np.ndarray) -> tuple[np.ndarray, int, bool]:
    """Integer gains g·2^e per position making g·count the same for every position (exact),
    or as close as 8-bit mantissas allow: (g, e, exact)."""
    top = int(np.lcm.reduce(np.unique(counts)))
    g = top // counts
    exp = 0
    while np.all(g % 2 == 0):
        g, exp = g // 2, exp + 1
    if g.max() <= 255:
        return g.astype(np.int64), exp, True
    return np.rint(255.0 * counts.min() / counts).astype(np.int64), 0, False
