"""SFN graph node records: the typed, serializable nodes both simulators execute.

Every record names its inputs and its per-sample output `shape` (no batch axis). Channel-wise
parameters are stored with a shape that broadcasts against `shape` (e.g. (C, 1, 1) for a conv
layer, (F,) for a dense one). All values crossing an edge are integers; the equations below are the
ones `sim.semantics`, `sim.cpu`, the Lava models and the reference ONNX implement.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

import numpy as np

from toolchain.errors import ArtifactError


@dataclass
class Node:
    name: str
    inputs: tuple[str, ...]
    shape: tuple[int, ...]
    kind: ClassVar[str] = ""
    # is this node a neuron (fires), a synapse (integer linear map), an index map, or an end?
    role: ClassVar[str] = ""

    def params(self) -> dict:
        """JSON-able scalar parameters (everything that is not an array)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("name", "inputs", "shape") or isinstance(value, np.ndarray):
                continue
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def arrays(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if isinstance(getattr(self, f.name), np.ndarray)}

    def describe(self) -> str:
        """One line for `toolchain inspect`."""
        p = ", ".join(f"{k}={v}" for k, v in self.params().items() if v not in (None, [], ""))
        a = ", ".join(f"{k}{list(v.shape)}" for k, v in self.arrays().items())
        return f"{self.kind}({', '.join(x for x in (p, a) if x)})"


@dataclass
class Input(Node):
    """Input encoder: n = clip(floor(x · inv_scale + 1/2), lo, hi), float32 arithmetic."""
    inv_scale: float = 1.0
    lo: int = 0
    hi: int = 255
    kind: ClassVar[str] = "input"
    role: ClassVar[str] = "source"


@dataclass
class Dense(Node):
    """I[o] = (Σ_i W[o, i] · n[i]) · 2^weight_exp;  W int (8-bit mantissa), weight_exp ≥ 0."""
    weight: np.ndarray = None
    weight_exp: int = 0
    kind: ClassVar[str] = "dense"
    role: ClassVar[str] = "synapse"


@dataclass
class Conv(Node):
    """I = conv2d(n, W; stride, pads (top, left, bottom, right), dilation, groups) · 2^weight_exp.

    Zero padding; W has shape (C_out, C_in / groups, kh, kw); integer arithmetic.
    """
    weight: np.ndarray = None
    weight_exp: int = 0
    stride: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    kind: ClassVar[str] = "conv"
    role: ClassVar[str] = "synapse"


@dataclass
class SumPool(Node):
    """I[c, y, x] = Σ over the window of n[c, ·, ·] (zero padding); average pooling's divisor is
    folded into the next threshold or readout scale."""
    kernel: tuple[int, int] = (2, 2)
    stride: tuple[int, int] = (2, 2)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    kind: ClassVar[str] = "sumpool"
    role: ClassVar[str] = "synapse"


@dataclass
class MaxPool(Node):
    """out[c, y, x] = max over the window (padding never wins). Exact on spikes because every
    fire function is monotone, and on currents whose bias is constant per channel."""
    kernel: tuple[int, int] = (2, 2)
    stride: tuple[int, int] = (2, 2)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilation: tuple[int, int] = (1, 1)
    kind: ClassVar[str] = "maxpool"
    role: ClassVar[str] = "synapse"


@dataclass
class Add(Node):
    """I = Σ_i gains[i] · x_i · 2^exps[i]  (integer gains broadcast per channel)."""
    gains: np.ndarray = None
    exps: tuple[int, ...] = ()
    kind: ClassVar[str] = "add"
    role: ClassVar[str] = "synapse"


@dataclass
class Neuron(Node):
    """SFN neuron (see sim.semantics): v ← sat(v + I + b); uniform fire
    q = clip(floor(v / (K·θ)), lo_q, hi_q), v ← v − q·K·θ, start v = (K·θ)//2; or adaptive fire
    n = payload[#{k : v ≥ t_k}]. `decay` d is the leak (v ← v + floor(d·(I + b − v)/4096) replaces
    the plain sum when d < 4096). `reset` "subtract" is the spiking neuron above; "none" keeps v
    and emits its rounded value clip(floor((v + θ//2)/θ), lo, hi) — the leaky integrator of a
    recurrent rate unit, whose state persists over a trial."""
    threshold: np.ndarray = None
    bias: np.ndarray = None
    lo: int = 0
    hi: int = 1
    fire: str = "uniform"
    thresholds: np.ndarray | None = None
    payload: np.ndarray | None = None
    decay: int = 4096
    reset: str = "subtract"
    kind: ClassVar[str] = "neuron"
    role: ClassVar[str] = "neuron"


@dataclass
class Delay(Node):
    """out(t) = value of node `source` at step t − 1 (zeros at t = 0): the recurrent edge.

    `source` is not in `inputs`, so the node list stays topologically ordered; it may name a node
    defined later."""
    source: str = ""
    kind: ClassVar[str] = "delay"
    role: ClassVar[str] = "index"


@dataclass
class Concat(Node):
    """Concatenation along `axis` of the per-sample shape (0 = channels). No arithmetic."""
    axis: int = 0
    kind: ClassVar[str] = "concat"
    role: ClassVar[str] = "index"


@dataclass
class Reshape(Node):
    """Row-major reshape to `shape` (Flatten, Reshape, Squeeze, Unsqueeze). No arithmetic."""
    kind: ClassVar[str] = "reshape"
    role: ClassVar[str] = "index"


@dataclass
class Transpose(Node):
    """Axis permutation `perm` of the per-sample shape. No arithmetic."""
    perm: tuple[int, ...] = ()
    kind: ClassVar[str] = "transpose"
    role: ClassVar[str] = "index"


@dataclass
class Readout(Node):
    """y = float32(A + T·bias) · float32(scale / T); then softmax/log-softmax if `softmax` says so.

    `A` is the integer accumulator of the input summed over the T timesteps."""
    scale: np.ndarray = None
    bias: np.ndarray = None
    softmax: str = ""
    kind: ClassVar[str] = "readout"
    role: ClassVar[str] = "sink"


NODE_TYPES: dict[str, type[Node]] = {
    cls.kind: cls for cls in (Input, Dense, Conv, SumPool, MaxPool, Add, Neuron, Delay, Concat,
                              Reshape, Transpose, Readout)
}

# the dtype every array field is stored with
ARRAY_DTYPES = {"weight": np.int16, "gains": np.int64, "threshold": np.int64, "bias": np.int64,
                "thresholds": np.int64, "payload": np.int64, "scale": np.float32}


def node_from_record(record: dict, arrays: dict[str, np.ndarray]) -> Node:
    """Rebuild a node from its manifest record and arrays, checking every field is known."""
    kind = record.get("kind")
    cls = NODE_TYPES.get(kind)
    where = f"node {record.get('name')!r}"
    if cls is None:
        raise ArtifactError(f"{where}: unknown node kind {kind!r} (known: {sorted(NODE_TYPES)})")
    names = {f.name for f in fields(cls)}
    params = record.get("params", {})
    unknown = (set(params) | set(arrays)) - names
    if unknown:
        raise ArtifactError(f"{where}: unknown fields {sorted(unknown)} for a {kind} node")
    kwargs = {}
    for f in fields(cls):
        if f.name in params:
            value = params[f.name]
            kwargs[f.name] = tuple(value) if isinstance(value, list) else value
        elif f.name in arrays:
            kwargs[f.name] = arrays[f.name]
    try:
        return cls(name=str(record["name"]), inputs=tuple(record["inputs"]),
                   shape=tuple(int(d) for d in record["shape"]),
                   **{k: v for k, v in kwargs.items() if k not in ("name", "inputs", "shape")})
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{where}: malformed record ({exc})") from None


def _window_out(size: int, k: int, s: int, p0: int, p1: int, d: int) -> int:
    return (size + p0 + p1 - d * (k - 1) - 1) // s + 1


def _broadcasts(a: np.ndarray | None, shape: tuple[int, ...]) -> bool:
    try:
        return a is not None and np.broadcast_shapes(np.shape(a), shape) == tuple(shape)
    except ValueError:
        return False


def check_node(node: Node, inputs: list[tuple[int, ...]]) -> str | None:
    """What is inconsistent about `node` given its inputs' shapes, or None: the parameters a
    simulator relies on (ranks, lengths, ranges, broadcasting, the output shape they imply)."""
    shape = tuple(node.shape)
    k = node.kind
    if not shape and k != "readout" or any(not isinstance(d, int) or d < 1 for d in shape):
        return f"shape {shape} is not a tuple of positive sizes"
    pairs = lambda *v: all(isinstance(t, tuple) and len(t) == n and all(
        isinstance(i, int) for i in t) for t, n in v)
    if k in ("dense", "conv", "sumpool", "maxpool", "neuron", "reshape", "transpose", "readout"):
        if len(inputs) != 1:
            return f"{len(inputs)} inputs, a {k} node reads one"
        (x,) = inputs
    if k == "dense":
        w = node.weight
        if np.ndim(w) != 2 or len(x) != 1 or w.shape != (shape[0], x[0]) or len(shape) != 1:
            return f"weight {np.shape(w)} does not map input {x} to {shape}"
    elif k in ("conv", "sumpool", "maxpool"):
        if len(x) != 3 or len(shape) != 3:
            return f"input {x} and output {shape} must be (C, H, W)"
        kernel = node.weight.shape[2:] if k == "conv" else node.kernel
        dil = getattr(node, "dilation", (1, 1))
        if k == "conv" and np.ndim(node.weight) != 4:
            return f"weight rank {np.ndim(node.weight)}, expected 4"
        if not pairs((tuple(kernel), 2), (node.stride, 2), (tuple(dil), 2), (node.pads, 4)) or \
                min(*kernel, *node.stride, *dil) < 1 or min(node.pads) < 0:
            return "kernel/stride/dilation must be positive pairs and pads four sizes ≥ 0"
        hw = tuple(_window_out(x[1 + a], kernel[a], node.stride[a], node.pads[a], node.pads[a + 2],
                               dil[a]) for a in range(2))
        if k == "conv":
            co, cg = node.weight.shape[:2]
            g = node.groups
            if not isinstance(g, int) or g < 1 or x[0] % g or co % g or cg * g != x[0]:
                return f"weight {node.weight.shape} with groups {g} does not fit {x[0]} channels"
            expect = (co,) + hw
        else:
            expect = (x[0],) + hw
        if shape != expect:
            return f"output shape {shape}, its parameters give {expect}"
    elif k == "add":
        if not inputs or any(tuple(i) != shape for i in inputs):
            return f"inputs {inputs} must all have the output shape {shape}"
        if np.shape(node.gains)[0:1] != (len(inputs),) or len(node.exps) != len(inputs) or \
                not all(isinstance(e, int) and 0 <= e < 32 for e in node.exps) or \
                not all(_broadcasts(g, shape) for g in node.gains):
            return "gains/exps do not match the inputs"
    elif k == "neuron":
        if tuple(x) != shape:
            return f"input {x} differs from its shape {shape}"
        if not (isinstance(node.lo, int) and isinstance(node.hi, int) and node.lo <= node.hi):
            return f"levels [{node.lo}, {node.hi}]"
        if node.fire not in ("uniform", "adaptive") or node.reset not in ("subtract", "none") or \
                not 0 <= node.decay <= 4096:
            return f"fire {node.fire!r}, reset {node.reset!r}, decay {node.decay} out of range"
        if not (_broadcasts(node.threshold, shape) and _broadcasts(node.bias, shape)) or \
                np.any(np.asarray(node.threshold) < 1):
            return "threshold/bias do not broadcast to the shape, or a threshold is < 1"
        if node.fire == "adaptive" and (
                np.ndim(node.payload) != 1 or np.ndim(node.thresholds) < 1 or
                np.shape(node.thresholds)[-1] + 1 != len(node.payload) or
                not _broadcasts(node.thresholds, shape + (len(node.payload) - 1,))):
            return "adaptive thresholds and payload table do not match"
        if node.fire == "adaptive" and np.any(np.diff(np.asarray(node.thresholds), axis=-1) < 0):
            return "adaptive thresholds are not ascending along their last axis"
    elif k == "concat":
        ranks = {len(i) for i in inputs}
        if not inputs or ranks != {len(shape)} or not 0 <= node.axis < len(shape):
            return f"inputs {inputs} cannot be joined along axis {node.axis} into {shape}"
        joined = list(inputs[0])
        joined[node.axis] = sum(i[node.axis] for i in inputs)
        if any(tuple(np.delete(i, node.axis)) != tuple(np.delete(shape, node.axis))
               for i in inputs) or tuple(joined) != shape:
            return f"inputs {inputs} do not concatenate to {shape}"
    elif k == "reshape":
        if int(np.prod(x)) != int(np.prod(shape)):
            return f"cannot reshape {x} to {shape}"
    elif k == "transpose":
        if sorted(node.perm) != list(range(len(x))) or tuple(x[p] for p in node.perm) != shape:
            return f"perm {node.perm} does not map {x} to {shape}"
    elif k == "readout":
        if tuple(x) != shape or not _broadcasts(node.scale, shape) or \
                not _broadcasts(node.bias, shape) or node.softmax not in ("", "softmax", "logsoftmax"):
            return "scale/bias/softmax do not fit the input"
    elif k == "input" and inputs:
        return "an input node reads nothing"
    return None
