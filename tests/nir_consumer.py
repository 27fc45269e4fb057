"""An independent NIR consumer for the digits CNN's export (tests/test_nir.py,
examples/nir_export.py): nirtorch's graph interpreter with its own Conv2d and SumPool2d maps, and
an IF neuron written from NIR's equations, read three ways (IF docstring)."""
from __future__ import annotations

import nir
import nirtorch
import numpy as np
import torch


class IF(torch.nn.Module):
    """NIR's IF (v ← v + R·I, spike when v > v_threshold) in float64. `reading` "metadata":
    start at the node's sfn_v_initial + 1/2 and reset by subtraction (sfn_reset); "start 0":
    the same from v = 0; "nir": start at 0 and reset to v_reset, as NIR's equations say."""

    def __init__(self, node, reading: str):
        super().__init__()
        self.thr = torch.from_numpy(np.asarray(node.v_threshold, np.float64))
        self.reset_to = torch.from_numpy(np.asarray(node.v_reset, np.float64))
        self.r = torch.from_numpy(np.asarray(node.r, np.float64))
        self.subtract = reading != "nir" and node.metadata["sfn_reset"] == "subtract"
        self.v0 = torch.from_numpy(np.asarray(node.metadata["sfn_v_initial"], np.float64)) + 0.5 \
            if reading == "metadata" else torch.zeros_like(self.thr)
        self.v = None

    def forward(self, current):
        if self.v is None:
            self.v = self.v0.expand(current.shape).clone()
        self.v = self.v + self.r * current
        spikes = (self.v > self.thr).double()
        self.v = self.v - spikes * self.thr if self.subtract else \
            torch.where(spikes > 0, self.reset_to, self.v)
        return spikes


def consumer(graph, reading: str):
    """nirtorch's interpreter and maps; Affine and Flatten written here (nirtorch 2.6's Affine
    map leaves the bias unset, its Flatten map counts dimensions with the batch axis)."""
    def affine(node):
        m = torch.nn.Linear(node.weight.shape[1], node.weight.shape[0])
        m.weight.data = torch.from_numpy(node.weight)
        m.bias.data = torch.from_numpy(node.bias)
        return m
    node_map = dict(nirtorch.nir_interpreter.DEFAULT_MAP)
    node_map.update({nir.Affine: affine, nir.IF: lambda n: IF(n, reading),
                     nir.Flatten: lambda n: torch.nn.Flatten(n.start_dim + 1, n.end_dim)})
    return nirtorch.nir_to_torch(graph, node_map).double()


def run_consumer(graph, x, reading: str, record: str | None = None):
    """(float readout per the Output's metadata, summed spikes of `record`)."""
    model = consumer(graph, reading)
    enc = graph.nodes["input"].metadata
    n = np.clip(np.floor(x * np.float32(enc["sfn_inv_scale"]) + np.float32(0.5)),
                enc["sfn_lo"], enc["sfn_hi"])
    out_meta = graph.nodes["output"].metadata
    T = int(out_meta["sfn_timesteps"])
    spikes = []
    if record:
        getattr(model, record).register_forward_hook(lambda m, i, o: spikes.append(o))
    total, state = 0, None
    with torch.no_grad():
        for _ in range(T):
            out, state = model(torch.from_numpy(n.astype(np.float64)), state)
            total = total + out
    y = total.numpy().astype(np.float32) * np.float32(np.asarray(out_meta["sfn_scale"]) / T)
    return y, (sum(spikes).numpy() if record else None)
