"""Gated recurrent cells: the ONNX `LSTM` and `GRU` operators (one forward layer, default
activations, as torch.nn.LSTM and torch.nn.GRU export them with the legacy exporter), their float
dynamics and the recurrent float graph the quantizer takes.

LSTM (ONNX gate order i, o, f, c; torch's is i, f, g, o):

    i, f, o = σ(W_k·x + R_k·h + b_k)      g = tanh(W_g·x + R_g·h + b_g)
    c' = f⊙c + i⊙g                        h' = o⊙tanh(c')

GRU (gate order z, r, h; torch exports linear_before_reset = 1):

    z, r = σ(W_k·x + R_k·h + b_k)
    n = tanh(W_n·x + b_Wn + r⊙(R_n·h + b_Rn))        (linear_before_reset = 1)
    n = tanh(W_n·x + b_Wn + R_n·(r⊙h) + b_Rn)        (linear_before_reset = 0)
    h' = (1 − z)⊙n + z⊙h

The float graph: every gate a dense from the input encoder plus a dense from the delayed state
into a sigmoid or tanh table neuron; every gate product a `mul2` (a Product node); the new cell
state c' and hidden state h' each a sum of products (`add` whose recurrent term — f⊙c, z⊙h — has
a power-of-two gain, `exact`) fired by a `state` neuron whose output unit is exactly the unit the
delay that reads it was given (quantize.gated). 1 − z is the complement table of z's sigmoid
(`sigmoid_complement`): z and 1 − z add to exactly one level count. tanh(c') reads the sum
itself, at its finer unit. A linear read-out (MatMul/Gemm/Add after Y) is a dense from h'.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from toolchain.errors import ModelError, ShapeError
from toolchain.fgraph import FloatGraph
from toolchain.rnn.onnx_rnn import (RECURRENT_OPS, _check_onnx_rnn, activations_of,
                                    parse_recurrent)

GATED_OPS = ("LSTM", "GRU")
# ONNX gate order of W, R (rows in blocks of hidden_size) and B ([Wb, Rb])
GATES = {"LSTM": ("i", "o", "f", "g"), "GRU": ("z", "r", "n")}
DEFAULT_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"]}


def is_gated(model: onnx.ModelProto) -> bool:
    """A model whose recurrent node is an ONNX LSTM or GRU (several recurrent nodes: the first
    decides; read_gated refuses them)."""
    ops = [n.op_type for n in model.graph.node
           if n.op_type in RECURRENT_OPS and n.domain in ("", "ai.onnx")]
    return bool(ops) and ops[0] in GATED_OPS


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


@dataclass
class GatedCell:
    kind: str                      # "lstm" or "gru"
    W: dict                        # gate → (n, n_in)
    R: dict                        # gate → (n, n)
    bW: dict                       # gate → (n,)
    bR: dict                       # gate → (n,)
    W_out: np.ndarray              # (n_out, n)
    b_out: np.ndarray | None
    linear_before_reset: bool = True
    onnx_io: tuple[bool, bool] = (False, False)
    origin: str = "onnx_lstm"
    task: str | None = None

    @property
    def n_units(self) -> int:
        return self.W_out.shape[1]

    @property
    def n_inputs(self) -> int:
        return next(iter(self.W.values())).shape[1]

    def describe(self) -> str:
        n = self.n_units
        layout = ("X (batch, seq, input) = x" if self.onnx_io[0] else "X[t, n, :] = x[n, t, :]")
        form = "" if self.kind == "lstm" else \
            f", linear_before_reset = {int(self.linear_before_reset)}"
        bias = any(np.any(b) for b in list(self.bW.values()) + list(self.bR.values()))
        return (f"ONNX {self.kind.upper()} operator: {n} units{form}, "
                f"{'with' if bias else 'no'} bias, read-out to {self.W_out.shape[0]} outputs; "
                f"trials x (N, T, n_in) feed the model's {layout}")

    def trials(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Float dynamics over trials x (B, T, n_in): every tensor of the float graph, (B·T, C),
        time-major (rows t·B … (t+1)·B − 1 are step t of every trial)."""
        b, T, _ = x.shape
        n = self.n_units
        h, c = np.zeros((b, n)), np.zeros((b, n))
        rec: dict[str, list] = {}
        b_out = 0.0 if self.b_out is None else self.b_out
        for t in range(T):
            u = x[:, t]
            v = {"u": u, "h_prev": h}
            pre = {k: u @ self.W[k].T + self.bW[k] for k in self.W}
            rh = {k: h @ self.R[k].T + self.bR[k] for k in self.R}
            if self.kind == "lstm":
                v["c_prev"] = c
                for k in ("i", "f", "g", "o"):
                    v[f"x_{k}"], v[f"r_{k}"] = pre[k] + self.bR[k], rh[k] - self.bR[k]
                    v[f"z_{k}"] = pre[k] + rh[k]
                    v[k] = np.tanh(v[f"z_{k}"]) if k == "g" else _sigmoid(v[f"z_{k}"])
                v["fc"], v["ig"] = v["f"] * c, v["i"] * v["g"]
                v["c_sum"] = v["c"] = v["fc"] + v["ig"]
                v["tc"] = np.tanh(v["c"])
                v["h_sum"] = v["h"] = v["o"] * v["tc"]
                c = v["c"]
            else:
                for k in ("z", "r"):
                    v[f"x_{k}"], v[f"r_{k}"] = pre[k] + self.bR[k], rh[k] - self.bR[k]
                    v[f"z_{k}"] = pre[k] + rh[k]
                    v[k] = _sigmoid(v[f"z_{k}"])
                v["zc"] = 1.0 - v["z"]
                v["x_n"] = pre["n"]
                if self.linear_before_reset:
                    v["r_n"] = rh["n"]
                    v["rn"] = v["r"] * rh["n"]
                else:
                    v["rh"] = v["r"] * h
                    v["rn"] = v["rh"] @ self.R["n"].T + self.bR["n"]
                v["z_n"] = v["x_n"] + v["rn"]
                v["n"] = np.tanh(v["z_n"])
                v["zh"], v["zn"] = v["z"] * h, v["zc"] * v["n"]
                v["h_sum"] = v["h"] = v["zh"] + v["zn"]
            h = v["h"]
            v["o_out"] = h @ self.W_out.T + b_out
            for k, a in v.items():
                rec.setdefault(k, []).append(a)
        return {k: np.concatenate(a) for k, a in rec.items()}

    def outputs(self, x: np.ndarray) -> np.ndarray:
        """The read-out over trials x (B, T, n_in) as (B, T, n_out)."""
        o = self.trials(x)["o_out"]
        return o.reshape(x.shape[1], x.shape[0], -1).transpose(1, 0, 2)

    def float_graph(self, state_levels: int | None = None) -> FloatGraph:
        """`state_levels`: the level count of the states c' and h' (None: --levels)."""
        n, n_in = self.n_units, self.n_inputs
        fg = FloatGraph()
        fg.add("u", "input", [], (n_in,))
        fg.add("h_prev", "delay", [], (n,), source="h", levels=state_levels)
        zero = np.zeros(n)

        def gate(k, table):
            fg.add(f"x_{k}", "dense", ["u"], (n,), W=self.W[k], b=self.bW[k] + self.bR[k])
            fg.add(f"r_{k}", "dense", ["h_prev"], (n,), W=self.R[k], b=zero)
            fg.add(f"z_{k}", "add", [f"x_{k}", f"r_{k}"], (n,))
            if table == "tanh":
                fg.add(k, "tanh", [f"z_{k}"], (n,))
            else:
                fg.add(k, "sigmoid", [f"z_{k}"], (n,), slope=1.0)

        if self.kind == "lstm":
            fg.add("c_prev", "delay", [], (n,), source="c", levels=state_levels)
            for k in ("i", "f", "g", "o"):
                gate(k, "tanh" if k == "g" else "sigmoid")
            fg.add("fc", "mul2", ["f", "c_prev"], (n,))
            fg.add("ig", "mul2", ["i", "g"], (n,))
            fg.add("c_sum", "add", ["fc", "ig"], (n,), exact=0)
            fg.add("c", "state", ["c_sum"], (n,), levels=state_levels)
            fg.add("tc", "tanh", ["c_sum"], (n,))
            fg.add("h_sum", "mul2", ["o", "tc"], (n,))
        else:
            for k in ("z", "r"):
                gate(k, "sigmoid")
            fg.add("zc", "sigmoid_complement", ["z_z"], (n,))
            fg.add("x_n", "dense", ["u"], (n,), W=self.W["n"], b=self.bW["n"])
            if self.linear_before_reset:
                fg.add("r_n", "dense", ["h_prev"], (n,), W=self.R["n"], b=self.bR["n"])
                fg.add("rn", "mul2", ["r", "r_n"], (n,))
            else:
                fg.add("rh", "mul2", ["r", "h_prev"], (n,))
                fg.add("rn", "dense", ["rh"], (n,), W=self.R["n"], b=self.bR["n"])
            fg.add("z_n", "add", ["x_n", "rn"], (n,))
            fg.add("n", "tanh", ["z_n"], (n,))
            fg.add("zh", "mul2", ["z", "h_prev"], (n,))
            fg.add("zn", "mul2", ["zc", "n"], (n,))
            fg.add("h_sum", "add", ["zh", "zn"], (n,), exact=0)
        fg.add("h", "state", ["h_sum"], (n,), levels=state_levels)
        fg.add("o_out", "dense", ["h"], (self.W_out.shape[0],), W=self.W_out,
               b=np.zeros(len(self.W_out)) if self.b_out is None else self.b_out)
        fg.output = "o_out"
        return fg


def read_gated(model: onnx.ModelProto, where: str) -> GatedCell:
    """The GatedCell of a model built around one ONNX LSTM or GRU node (forward, one layer,
    default activations, layout 0, zero initial states, no peepholes, LSTM without
    input_forget; X the model input or its Transpose(1, 0, 2); optionally a linear read-out —
    see onnx_rnn.parse_recurrent). Anything else raises a ModelError naming the node.
    onnxruntime then runs the model against the cell on random trials."""
    p = parse_recurrent(model, where)
    op, label, n = p.node.op_type, p.label, p.n
    if op not in GATED_OPS:
        raise ModelError(f"{where}: {label}: {op} is not a gated cell (LSTM or GRU)")
    acts = activations_of(p)
    if acts and acts != DEFAULT_ACTIVATIONS[op]:
        raise ModelError(f"{where}: {label}: activations {acts} are not supported (the default "
                         f"{DEFAULT_ACTIVATIONS[op]} only)")
    if op == "LSTM" and p.attrs.get("input_forget", 0):
        raise ModelError(f"{where}: {label}: input_forget = 1 is not supported (coupled input "
                         "and forget gates)")
    gates = GATES[op]
    k = len(gates)
    w, r = p.W, p.R
    if n < 1 or w.ndim != 3 or w.shape[:2] != (1, k * n) or r.shape != (1, k * n, n):
        raise ShapeError(f"{where}: {label}: W {w.shape}, R {r.shape} do not form one forward "
                         f"{op} layer of hidden_size {n} (expected (1, {k * n}, input), "
                         f"(1, {k * n}, {n}))")
    b = np.zeros((1, 2 * k * n)) if p.B is None else p.B
    if b.shape != (1, 2 * k * n):
        raise ShapeError(f"{where}: {label}: B has shape {b.shape}, expected (1, {2 * k * n})")
    blocks = lambda a: {g: a[j * n:(j + 1) * n] for j, g in enumerate(gates)}
    cell = GatedCell(op.lower(), blocks(w[0]), blocks(r[0]), blocks(b[0, :k * n]),
                     blocks(b[0, k * n:]), p.A.T.copy(), p.c if np.any(p.c) else None,
                     linear_before_reset=bool(p.attrs.get("linear_before_reset", 0)),
                     onnx_io=p.onnx_io, origin=f"onnx_{op.lower()}")
    _check_onnx_rnn(model, cell, p.x_in, p.batch, where)
    return cell
