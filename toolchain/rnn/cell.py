"""The E/I RNN cell: its float form, how it is read from a one-step cell ONNX (the exporters.rnn
form, initializers W_inp, W_rec, W_out and `sfn.*` metadata), the recurrent float graph the
quantizer takes, and Dale's law on the integer weights.

The cell computes  h' = h + α·(f(W_rec·h + W_inp·u) − h),  o = W_out·h'  (f: relu, sigmoid with
slope, tanh). The compiler checks the graph against its metadata with onnxruntime, then builds

    u ─encoder─ dense(W_inp) ─┐
    y(t−1) ─delay─ dense(W_rec) ─ add ─ f neuron (uniform or table) ─ leaky neuron y ─ dense(W_out) ─ readout

where the leaky neuron integrates f with v ← v + floor(d·(I − v)/4096), d = round(α·4096), and emits
its rounded state each step. After quantization Dale's law is verified on the integer W_rec: every
unit's outgoing weights (its column) keep one sign.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from toolchain.errors import ModelError, QuantizationError, ShapeError
from toolchain.fgraph import FloatGraph

ACTIVATIONS = ("relu", "sigmoid", "tanh")
DEFAULT_RNN_LEVELS = 255


@dataclass
class Cell:
    W_inp: np.ndarray
    W_rec: np.ndarray
    W_out: np.ndarray
    activation: str
    slope: float
    alpha: float
    dale: bool
    n_exc: int
    task: str | None
    bias: np.ndarray | None = None      # added to W_inp·u (ONNX RNN: Wb + Rb)
    b_out: np.ndarray | None = None     # added to W_out·y (the read-out's bias)
    origin: str = "ei_rnn_cell"         # or "onnx_rnn", "onnx_cell", "onnx_sequence"
    onnx_io: tuple[bool, bool] | None = None  # ONNX RNN, sequence: (input, output) batch-major?
    onnx_names: tuple | None = None     # cell graph: (u, h, y or None, h'); sequence: (x, y)
    steps: int | None = None            # sequence: the number of steps the graph unrolls

    def describe(self) -> str:
        n = self.W_rec.shape[0]
        if self.origin == "onnx_cell":
            u, h, y, h_out = self.onnx_names
            used = int(np.count_nonzero(np.any(self.W_out != 0, axis=0)))
            readout = (f"read-out {y!r} = W·h' from {used} of {n} units, "
                       f"{'with' if self.b_out is not None else 'no'} bias") if y else \
                "read-out: the state itself"
            return (f"one-step cell graph: {n} units, {self.activation}, α = {self.alpha:.6g}, "
                    f"input {u!r}, state {h!r} fed back from {h_out!r}, "
                    f"{'with' if self.bias is not None else 'no'} bias on f's input, "
                    f"{readout}, Dale's law {'on' if self.dale else 'off'}")
        if self.origin == "onnx_sequence":
            x, y = self.onnx_names
            used = int(np.count_nonzero(np.any(self.W_out != 0, axis=0)))
            layout = lambda first: "batch-first" if first else "time-major"
            axes = "(N, T, n_in)" if self.onnx_io[0] else "(T, N, n_in)"
            return (f"read: unrolled recurrence, {self.steps} steps, "
                    f"{layout(self.onnx_io[0])} {axes} → folded into its cell: {n} units, "
                    f"{self.activation}, "
                    f"α = {self.alpha:.6g}, input {x!r}, "
                    f"{'with' if self.bias is not None else 'no'} bias on f's input, read-out "
                    f"{y!r} ({layout(self.onnx_io[1])}) = W·h' from {used} of {n} units, "
                    f"{'with' if self.b_out is not None else 'no'} bias, Dale's law "
                    f"{'on' if self.dale else 'off'}")
        if self.origin != "onnx_rnn":
            return (f"E/I RNN cell: {n} units, {self.activation}, α = {self.alpha}, "
                    f"Dale's law {'on' if self.dale else 'off'}")
        layout = ("X (batch, seq, input) = x" if self.onnx_io and self.onnx_io[0]
                  else "X[t, n, :] = x[n, t, :]")
        return (f"ONNX RNN operator: {n} units, {self.activation}, no leak (α = 1), "
                f"{'with' if self.bias is not None else 'no'} bias, read-out to "
                f"{self.W_out.shape[0]} outputs; trials x (N, T, n_in) feed the model's {layout}")

    def f(self, z):
        if self.activation == "relu":
            return np.maximum(z, 0)
        if self.activation == "sigmoid":
            return 1 / (1 + np.exp(-self.slope * z))
        return np.tanh(z)

    def trials(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Float dynamics over trials x (B, T, n_in): every tensor of the float graph, (B·T, C)."""
        b, T, n_in = x.shape
        n, n_out = self.W_rec.shape[0], self.W_out.shape[0]
        h = np.zeros((b, n))
        bias = 0.0 if self.bias is None else self.bias
        b_out = 0.0 if self.b_out is None else self.b_out
        widths = {"u": n_in, "y_prev": n, "z_in": n, "z_rec": n, "z": n, "f": n, "y": n,
                  "o": n_out}
        rec = {k: np.empty((T * b, c)) for k, c in widths.items()}  # filled time-major
        for t in range(T):
            rows = slice(t * b, (t + 1) * b)
            z_in, z_rec = x[:, t] @ self.W_inp.T + bias, h @ self.W_rec.T
            f = self.f(z_in + z_rec)
            h_new = h + self.alpha * (f - h)
            for k, v in (("u", x[:, t]), ("y_prev", h), ("z_in", z_in), ("z_rec", z_rec),
                         ("z", z_in + z_rec), ("f", f), ("y", h_new),
                         ("o", h_new @ self.W_out.T + b_out)):
                rec[k][rows] = v
            h = h_new
        return rec


def is_rnn_cell(model: onnx.ModelProto) -> bool:
    return any(p.key == "sfn.kind" and p.value == "ei_rnn_cell" for p in model.metadata_props)


def read_cell(model: onnx.ModelProto, where: str) -> Cell:
    meta = {p.key: p.value for p in model.metadata_props}
    inits = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    missing = [k for k in ("W_inp", "W_rec", "W_out") if k not in inits]
    if missing:
        raise ModelError(f"{where}: an ei_rnn_cell model needs initializers W_inp, W_rec, W_out; "
                         f"missing {missing}")
    try:
        act = meta["sfn.activation"]
        cell = Cell(inits["W_inp"], inits["W_rec"], inits["W_out"], act,
                    float(meta.get("sfn.sigmoid_slope", 1.0)), float(meta["sfn.alpha"]),
                    meta.get("sfn.dale", "0") == "1", int(meta.get("sfn.n_exc", 0)),
                    meta.get("sfn.task"))
    except (KeyError, ValueError) as exc:
        raise ModelError(f"{where}: bad or missing ei_rnn_cell metadata ({exc})") from None
    if act not in ACTIVATIONS or not 0 < cell.alpha <= 1:
        raise ModelError(f"{where}: activation {act!r} / alpha {cell.alpha} not supported "
                         f"(activations {ACTIVATIONS}, 0 < alpha ≤ 1)")
    n = cell.W_rec.shape[0]
    if cell.W_rec.shape != (n, n) or cell.W_inp.shape[0] != n or cell.W_out.shape[1] != n:
        raise ShapeError(f"{where}: W_inp {cell.W_inp.shape}, W_rec {cell.W_rec.shape}, "
                         f"W_out {cell.W_out.shape} do not form an RNN")
    _check_graph(model, cell, where)
    return cell


def _check_graph(model, cell: Cell, where: str) -> None:
    """The graph must compute what the metadata says (it is the metadata the compiler trusts)."""
    rng = np.random.default_rng(0)
    u = rng.uniform(0, 1, (4, cell.W_inp.shape[1])).astype(np.float32)
    h = rng.uniform(0, 0.5, (4, cell.W_rec.shape[0])).astype(np.float32)
    try:
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        o, h_next = sess.run(["o", "h_next"], {"u": u, "h": h})
    except Exception as exc:
        raise ModelError(f"{where}: cannot run the cell with inputs u, h and outputs o, h_next "
                         f"({str(exc)[:200]})") from None
    expect = h + cell.alpha * (cell.f(u @ cell.W_inp.T + h @ cell.W_rec.T) - h)
    err = max(np.abs(h_next - expect).max(), np.abs(o - expect @ cell.W_out.T).max())
    if err > 1e-3:
        raise ModelError(f"{where}: the cell graph differs from its sfn.* metadata by {err:.3g}; "
                         "it is not the documented ei_rnn_cell form")


def float_graph(cell: Cell) -> FloatGraph:
    n, n_in = cell.W_inp.shape
    fg = FloatGraph()
    fg.add("u", "input", [], (n_in,))
    fg.add("y_prev", "delay", [], (n,), source="y")
    fg.add("z_in", "dense", ["u"], (n,), W=cell.W_inp,
           b=np.zeros(n) if cell.bias is None else cell.bias)
    fg.add("z_rec", "dense", ["y_prev"], (n,), W=cell.W_rec, b=np.zeros(n))
    fg.add("z", "add", ["z_in", "z_rec"], (n,))
    if cell.activation == "relu":
        fg.add("f", "relu", ["z"], (n,), hi=None)
    elif cell.activation == "sigmoid":
        fg.add("f", "sigmoid", ["z"], (n,), slope=cell.slope)
    else:
        fg.add("f", "tanh", ["z"], (n,))
    fg.add("y", "leaky", ["f"], (n,), alpha=cell.alpha, signed=cell.activation == "tanh")
    fg.add("o", "dense", ["y"], (cell.W_out.shape[0],), W=cell.W_out,
           b=np.zeros(len(cell.W_out)) if cell.b_out is None else cell.b_out)
    fg.output = "o"
    return fg


def unit_signs(w_rec: np.ndarray, where: str) -> np.ndarray:
    """Each presynaptic unit's sign (+1 excitatory, −1 inhibitory, 0 silent) read from its column
    of the float W_rec; a column with both signs breaks Dale's law and raises naming the units."""
    pos, neg = np.any(w_rec > 0, axis=0), np.any(w_rec < 0, axis=0)
    mixed = np.flatnonzero(pos & neg).tolist()
    if mixed:
        raise ModelError(f"{where}: Dale's law asked, but in the float recurrent weights units "
                         f"{mixed[:20]} have outgoing weights of both signs ({len(mixed)} units)")
    return pos.astype(np.int64) - neg.astype(np.int64)


def check_dale_signs(w_rec_int: np.ndarray, signs: np.ndarray) -> tuple[int, int]:
    """Every unit's integer outgoing weights (its column) keep its float sign (zeros allowed).
    Returns (excitatory, inhibitory) counts; raises naming the violating units."""
    flipped = [j for j in range(w_rec_int.shape[1])
               if np.any(w_rec_int[:, j] * signs[j] < 0) or
               (signs[j] == 0 and np.any(w_rec_int[:, j] != 0))]
    if flipped:
        raise QuantizationError(f"Dale's law violated after quantization: units {flipped[:20]} "
                                f"have outgoing weights of the wrong sign ({len(flipped)} units)")
    return int(np.sum(signs > 0)), int(np.sum(signs < 0))


def check_dale(w_rec_int: np.ndarray, n_exc: int) -> tuple[int, int]:
    """Every presynaptic unit j (column j) keeps its sign: + for j < n_exc, − after (zeros allowed).
    Returns (excitatory, inhibitory) counts; raises naming the violating units."""
    n = w_rec_int.shape[1]
    bad_e = [j for j in range(n_exc) if np.any(w_rec_int[:, j] < 0)]
    bad_i = [j for j in range(n_exc, n) if np.any(w_rec_int[:, j] > 0)]
    if bad_e or bad_i:
        parts = []
        if bad_e:
            parts.append(f"excitatory units {bad_e[:20]} have negative outgoing weights")
        if bad_i:
            parts.append(f"inhibitory units {bad_i[:20]} have positive outgoing weights")
        raise QuantizationError(f"Dale's law violated after quantization: {'; '.join(parts)} "
                                f"({len(bad_e) + len(bad_i)} units)")
    return n_exc, n - n_exc




def run_onnx_trials(path, inputs, h0=None):
    """Iterate a one-step cell ONNX (inputs u, h; outputs o, h_next) over trials ``inputs``
    (B, T, n_in) with onnxruntime. Returns (outputs (B, T, n_out), states (B, T, N))."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.asarray(inputs, dtype=np.float32)
    n_units = sess.get_inputs()[1].shape[1]
    h = np.zeros((x.shape[0], n_units), np.float32) if h0 is None else np.asarray(h0, np.float32)
    outs, states = [], []
    for t in range(x.shape[1]):
        o, h = sess.run(["o", "h_next"], {"u": x[:, t], "h": h})
        outs.append(o)
        states.append(h)
    return np.stack(outs, 1), np.stack(states, 1)
