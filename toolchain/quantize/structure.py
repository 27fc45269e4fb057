"""Quantization rules of the maps that move or pool values: average pooling (a sum pool, its
divisor folded into the unit), max pooling, joining, reshaping and transposing. Units, pending
biases and bounds follow the values."""
from __future__ import annotations

import numpy as np

from sim import ir, kernels
from toolchain.errors import UnsupportedOpError
from toolchain.quantize.tensor import LayerRow, QTensor, per_channel


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

    def op_pad(self, name, d, ins):
        raise UnsupportedOpError(f"{self.where}: Pad {name!r} is supported only where a Conv or "
                                 "AveragePool reads it (it folds into their padding)")
