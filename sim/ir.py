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
