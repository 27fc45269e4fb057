"""Quantization rules of the maps that move or pool values: average pooling (a sum pool, its
divisor folded into the unit), max pooling, joining, reshaping and transposing. Units, pending
biases and bounds follow the values."""
from __future__ import annotations

import numpy as np

from sim import ir, kernels
from toolchain.errors import UnsupportedOpError
from toolchain.quantize.tensor import (HEADROOM, MAX_WEIGHT_EXP, LayerRow, QTensor, current,
                                       per_channel)


class StructureRules:
    def op_avgpool(self, name, d, ins):
        x = ins[0]
        p = d["params"]
        kh, kw = p["kernel"]
        out_hw = d["shape"][1:]
        node = self.emit(ir.SumPool(name, (x.node,), d["shape"], kernel=tuple(p["kernel"]),
                                    stride=tuple(p["stride"]), pads=tuple(p["pads"])))
        pool = lambda a: kernels.sum_pool(a[None].astype(np.int64), p["kernel"], p["stride"],
                                          p["pads"], out_hw)[0]
        unit_c = per_channel(x.unit) / (kh * kw)
        unit = np.broadcast_to(unit_c[:, None, None], d["shape"]).astype(np.float64)
        bound_c = per_channel(x.bound) * kh * kw
        self.layers.append(LayerRow(name, node.kind, d["shape"],
                                    synapses=int(np.prod(d["shape"]) * kh * kw)))
        return QTensor(name, name, unit, pool(x.bias),
                       np.broadcast_to(bound_c[:, None, None], d["shape"]).astype(np.float64),
                       spikes=False, synapse_ok=x.synapse_ok and not np.any(x.bias))

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
        return x.like(name, name, take(x.unit), take(x.bias), take(x.bound))

    def op_concat(self, name, d, ins):
        axis = d["params"]["axis"]
        self.emit(ir.Concat(name, tuple(x.node for x in ins), d["shape"], axis=axis))
        cat = lambda attr: np.concatenate([getattr(x, attr) for x in ins], axis=axis)
        return QTensor(name, name, cat("unit"), cat("bias"), cat("bound"),
                       spikes=all(x.spikes for x in ins),
                       synapse_ok=all(x.synapse_ok for x in ins))

    def op_reshape(self, name, d, ins):
        x = ins[0]
        shape = d["shape"]
        self.emit(ir.Reshape(name, (x.node,), shape))
        return x.like(name, name, x.unit.reshape(shape), x.bias.reshape(shape),
                      x.bound.reshape(shape))

    def op_transpose(self, name, d, ins):
        x = ins[0]
        perm = tuple(d["params"]["perm"])
        self.emit(ir.Transpose(name, (x.node,), d["shape"], perm=perm))
        return x.like(name, name, x.unit.transpose(perm), x.bias.transpose(perm),
                      x.bound.transpose(perm))

    def op_select(self, name, d, ins):
        """A constant gather (Slice, Gather, Split, Expand, nearest Resize, zero insertion):
        units, pending biases and bounds move with the values. An inserted zero is an exact 0
        (pending bias 0); it takes its output channel's unit (the consumers read one unit per
        channel) and bound. A zero-inserting select of the compiler's own (no ONNX tensor, so no
        calibration of its own) reads spikes: a current is requantized first."""
        x = ins[0]
        if d["params"].get("synthetic") and not x.synapse_ok:
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
            first = np.where(np.isfinite(known).any(axis=1), known.max(axis=1), 1.0)
            unit = np.where(np.isnan(rows), first[:, None], rows).reshape(shape)
            bound = np.broadcast_to(bound.reshape(shape[0], -1).max(axis=1)[:, None],
                                    rows.shape).reshape(shape).copy()
        bias = np.where(zero, 0, x.bias.reshape(-1)[np.maximum(table, 0)]).reshape(shape)
        return x.like(name, name, unit, bias.astype(np.int64), bound)

    def op_pad(self, name, d, ins):
        raise UnsupportedOpError(f"{self.where}: Pad {name!r} is supported only where a Conv or "
                                 "AveragePool reads it (it folds into their padding)")
