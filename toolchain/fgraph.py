"""The float graph: what the ONNX importer produces and calibration/quantization consume.

A `networkx.DiGraph` whose nodes are named after the ONNX tensor they compute (so calibration can
read every node's float value from onnxruntime), each with an `op`, ordered `inputs`, a per-sample
`shape` and float parameters. The ops are what the converters (toolchain/onnx_import/converters)
write and the quantizer's rules (`op_<op>` in toolchain/quantize) read: float ops, one rule each.

A node with `synthetic=True` in its params has no ONNX tensor of its own (a pooling split off a
ReduceMean with keepdims=0); calibration skips it.

Passes are small functions graph → graph (in place): `fold_affine` merges a per-channel affine
(BatchNormalization, a constant bias or scale) into the conv/dense before it.
"""
from __future__ import annotations

import networkx as nx


class FloatGraph:
    def __init__(self):
        self.g = nx.DiGraph()
        self.input: str | None = None
        self.output: str | None = None
        self._seq = 0

    def add(self, name: str, op: str, inputs: list[str], shape: tuple[int, ...], **params):
        self._seq += 1
        self.g.add_node(name, op=op, inputs=list(inputs), shape=tuple(int(d) for d in shape),
                        params=params, seq=self._seq)
        for i in inputs:
            self.g.add_edge(i, name)
        if op == "input":
            self.input = name
        return name

    def __getitem__(self, name: str) -> dict:
        return self.g.nodes[name]

    def consumers(self, name: str) -> list[str]:
        return list(self.g.successors(name))

    def order(self) -> list[str]:
        """Topological order, ties broken by the ONNX node order (deterministic)."""
        return list(nx.lexicographical_topological_sort(self.g, key=lambda n: self.g.nodes[n]["seq"]))

    def rename(self, old: str, new: str) -> None:
        """Give node `old` the name `new` (which must be free), rewiring its consumers."""
        nx.relabel_nodes(self.g, {old: new}, copy=False)
        for c in self.consumers(new):
            self.g.nodes[c]["inputs"] = [new if i == old else i for i in self.g.nodes[c]["inputs"]]
        if self.output == old:
            self.output = new

    def remove_passthrough(self, name: str) -> None:
        """Delete a one-input node, connecting its input straight to its consumers."""
        (src,) = self.g.nodes[name]["inputs"]
        for c in self.consumers(name):
            self.g.nodes[c]["inputs"] = [src if i == name else i for i in self.g.nodes[c]["inputs"]]
            self.g.add_edge(src, c)
        self.g.remove_node(name)
        if self.output == name:
            self.output = src

    def tensors(self) -> list[str]:
        """Nodes that are ONNX tensors (calibration can read them), in order."""
        return [n for n in self.order() if not self.g.nodes[n]["params"].get("synthetic")]

    def summary(self) -> str:
        lines = []
        for name in self.order():
            d = self.g.nodes[name]
            lines.append(f"{name}: {d['op']}({', '.join(d['inputs'])}) -> {d['shape']}")
        return "\n".join(lines)


def prune_synthetic(fg: FloatGraph) -> None:
    """Drop the compiler's own nodes (synthetic) that nothing reads: the reshape back to (C, L)
    after a 1-D layer whose reader took its (C, 1, L) form instead."""
    while True:
        dead = [n for n in fg.g if n != fg.output and not fg.consumers(n)
                and fg[n]["params"].get("synthetic")]
        if not dead:
            return
        fg.g.remove_nodes_from(dead)


def fold_affine(fg: FloatGraph) -> int:
    """y = scale·(W x + b) + shift  →  W' = scale·W, b' = scale·b + shift, when the conv/dense's
    only consumer is the affine; an affine of an affine (BatchNormalization, then Mul and Add by
    per-channel constants) is one affine. Returns how many were folded."""
    prune_synthetic(fg)
    folded = 0
    for name in fg.order():
        d = fg[name]
        if d["op"] != "affine" or d["params"].get("full"):
            continue
        (src,) = d["inputs"]
        s = fg[src]
        if s["op"] == "affine" and fg.consumers(src) == [name] and src != fg.output:
            p, q = s["params"], d["params"]
            q["shift"] = q["scale"] * p["shift"] + q["shift"]
            q["scale"] = q["scale"] * p["scale"]
            fg.remove_passthrough(src)
            folded += 1
            (src,) = d["inputs"]
            s = fg[src]
        if s["op"] not in ("conv", "dense") or fg.consumers(src) != [name]:
            continue
        scale, shift = d["params"]["scale"], d["params"]["shift"]
        w = s["params"]["W"]
        s["params"]["W"] = w * scale.reshape((-1,) + (1,) * (w.ndim - 1))
        s["params"]["b"] = s["params"]["b"] * scale + shift
        fg.remove_passthrough(name)
        fg.rename(src, name)
        folded += 1
    return folded


# ops whose output has its own channels (per output channel weights), whatever the input
_CHANNEL_OPS = ("conv", "dense", "input", "fixed_conv")
# ops whose output mixes positions of its inputs so that its axis 0 is no channel axis
_TOKEN_OPS = ("mul2", "matmul2", "constant")


def mark_per_tensor(fg: FloatGraph) -> int:
    """Mark `per_tensor` on every node whose axis 0 is not a channel axis, so calibration gives
    it one scale for the whole tensor: the products of activations, a transpose that moves axis
    0 away (a (C, L) signal turned into (tokens, features)), and every node computed from a
    marked one except by a conv/dense (their outputs have channels of their own). Returns how
    many nodes are marked."""
    marked = 0
    for name in fg.order():
        d = fg[name]
        p = d["params"]
        op = d["op"]
        moved = op == "transpose" and tuple(p.get("perm", (0,)))[0] != 0
        inherit = op not in _CHANNEL_OPS and any(fg[i]["params"].get("per_tensor")
                                                 for i in d["inputs"])
        if p.get("per_tensor") or moved or inherit or op in _TOKEN_OPS:
            p["per_tensor"] = True
            marked += 1
    return marked
