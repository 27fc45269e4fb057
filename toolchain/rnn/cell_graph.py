"""A one-step recurrent cell written as a plain ONNX graph, read as the E/I `Cell`.

The graph has two inputs, u (batch, n_in) and the state h (batch, n), and outputs h' or (y, h'),
where h' (same shape as h) is what the next step reads as h. It must compute

    h' = (1 − α)·h + α·f(W_in·u + b_in + W_rec·h + b_rec)       f: Relu, Sigmoid or Tanh
    y  = W_out·h' + b_out                                       (optional; any subset of h')

written with any mix of MatMul/Gemm by constant weights, Add/Sub/Neg, Mul/Div by constants,
Slice/Gather of units on the last axis, Concat on the last axis, Identity/Cast/Dropout, and one
activation. Nodes whose inputs are all constants (|W|·mask, transposes, …) are evaluated first.
Every other tensor is traced as an affine function of u, h and f(z), so the graph may write the
leak as `(1−α)·h + α·f`, `h + α·(f − h)` or any equivalent sum; biases anywhere add up in b_in
(the recurrent bias included) and b_out. A node outside this form raises a one-line ModelError
naming it and what was expected. onnxruntime then steps the model against the recognized cell.

The state input is the input of the same rank and width as an output; with `state=NAME` it is
named. The state output h' is the output of the leaky form (the last one if both are).
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from toolchain.errors import ModelError
from toolchain.rnn.cell import Cell, is_rnn_cell
from toolchain.onnx_import.loader import opset_of
from toolchain.rnn.onnx_rnn import _constants, _label, is_onnx_rnn

_ACTIVATIONS = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh"}
_PASS = ("Identity", "Cast", "Dropout")
MAX_UNITS = 2048   # each traced tensor holds (width × (n_in + 2·n)) coefficients
_SUPPORTED = ("MatMul, Gemm (constant weights), Add, Sub, Neg, Mul/Div by a constant, "
              "Slice/Gather/Concat on the last axis, Identity, and one Relu/Sigmoid/Tanh")


class Lin:
    """A (batch, k) tensor as U·u + H·h + F·f + c (f: the activation's output)."""

    def __init__(self, U, H, F, c):
        self.U, self.H, self.F, self.c = U, H, F, c

    @property
    def k(self) -> int:
        return len(self.c)

    def map(self, fn) -> "Lin":
        return Lin(fn(self.U), fn(self.H), fn(self.F), fn(self.c))

    def __add__(self, other: "Lin") -> "Lin":
        return Lin(self.U + other.U, self.H + other.H, self.F + other.F, self.c + other.c)


def _dims(value) -> list:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in value.type.tensor_type.shape.dim]


def _graph_inputs(model: onnx.ModelProto):
    inits = {t.name for t in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in inits]


def _state_candidates(model: onnx.ModelProto) -> list[str]:
    """Inputs of the rank and (static) width of some output: the ones that can be fed back."""
    outs = [_dims(o) for o in model.graph.output]
    found = []
    for v in _graph_inputs(model):
        d = _dims(v)
        if d and isinstance(d[-1], int) and d[-1] > 0 and any(
                len(o) == len(d) and o[-1] == d[-1] for o in outs):
            found.append(v.name)
    return found


def is_cell_graph(model: onnx.ModelProto) -> bool:
    """Two inputs, one of which an output of the same shape can feed back (and neither an
    ei_rnn_cell nor an ONNX RNN operator model)."""
    if is_rnn_cell(model) or is_onnx_rnn(model):
        return False
    return len(_graph_inputs(model)) == 2 and bool(_state_candidates(model))


def _fold(model: onnx.ModelProto, where: str) -> dict:
    """Every constant subgraph evaluated (onnx_import's folding: each result's size bounded
    before it is computed)."""
    from toolchain.onnx_import import FOLD_FACTOR, FOLD_MIN_BYTES, _fold_constant
    from toolchain.onnx_import.context import ImportContext
    consts = _constants(model.graph)
    carried = sum(a.nbytes for a in consts.values())
    ctx = ImportContext(model, where, opset_of(model, where), consts=consts,
                        fold_budget=max(FOLD_MIN_BYTES, FOLD_FACTOR * carried))
    for node in model.graph.node:
        _fold_constant(node, ctx)
    return ctx.consts


def _vector(a: np.ndarray, k: int, node, where: str) -> np.ndarray:
    """A constant broadcast over (batch, k): shape (), (1|k,) or (1, 1|k)."""
    a = np.asarray(a, np.float64)
    if a.size not in (1, k) or any(d != 1 for d in a.shape[:-1]) or a.ndim > 2:
        raise ModelError(f"{where}: {_label(node)}: the constant of shape {a.shape} is not a "
                         f"per-unit vector (size 1 or {k} on the last axis)")
    return np.broadcast_to(a.reshape(-1), (k,)).copy()


def _last_axis(axis: int, node, where: str) -> None:
    if axis not in (1, -1):
        raise ModelError(f"{where}: {_label(node)} acts on axis {axis}; on a cell's (batch, "
                         "units) tensors only the last axis (1 or −1) is supported")


class _Tracer:
    def __init__(self, model: onnx.ModelProto, u: str, h: str, n_in: int, n: int, where: str):
        self.g, self.where = model.graph, where
        self.consts = _fold(model, where)
        z = lambda k, m: np.zeros((k, m))
        self.vals = {u: Lin(np.eye(n_in), z(n_in, n), z(n_in, n), np.zeros(n_in)),
                     h: Lin(z(n, n_in), np.eye(n), z(n, n), np.zeros(n))}
        self.n_in, self.n = n_in, n
        self.z = None   # the activation's input (a Lin without F)
        self.activation = None
        self.act_node = None

    def run(self) -> dict[str, Lin]:
        """Trace every node; a tensor's form is dropped after its last reader."""
        last = {name: i for i, node in enumerate(self.g.node) for name in node.input}
        keep = {o.name for o in self.g.output}
        for i, node in enumerate(self.g.node):
            if node.op_type == "Constant" or node.output[0] in self.consts:
                continue
            self.vals[node.output[0]] = self.step(node)
            for name in set(node.input) - keep:
                if last.get(name) == i:
                    self.vals.pop(name, None)
        return self.vals

    def get(self, name: str, node) -> Lin:
        if name not in self.vals:
            raise ModelError(f"{self.where}: {_label(node)} reads {name!r}, which is neither "
                             "the inputs nor computed from them")
        return self.vals[name]

    def bad(self, node, what: str):
        return ModelError(f"{self.where}: {_label(node)} {what}; a cell is built from "
                          f"{_SUPPORTED}")

    def step(self, node) -> Lin:
        op, ins = node.op_type, [i for i in node.input]
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        const = [i in self.consts for i in ins if i]
        if op in _PASS:
            if op == "Cast" and attrs.get("to") not in (onnx.TensorProto.FLOAT,
                                                        onnx.TensorProto.DOUBLE):
                raise self.bad(node, "casts to a non-float type")
            return self.get(ins[0], node)
        if op in ("MatMul", "Gemm"):
            if ins[0] in self.consts or ins[1] not in self.consts:
                raise self.bad(node, "multiplies by computed weights (expected the tensor times "
                                     "a constant weight matrix, tensor first)")
            x = self.get(ins[0], node)
            if attrs.get("transA", 0):
                raise self.bad(node, "has transA = 1")
            w = np.asarray(self.consts[ins[1]], np.float64)
            if op == "Gemm" and attrs.get("transB", 0):
                w = w.T
            if w.ndim != 2 or w.shape[0] != x.k:
                raise self.bad(node, f"has weights of shape {w.shape} for {x.k} inputs")
            a = float(attrs.get("alpha", 1.0)) if op == "Gemm" else 1.0
            y = x.map(lambda m: a * (w.T @ m) if m.ndim == 2 else a * (m @ w))
            if op == "Gemm" and len(ins) > 2 and ins[2]:
                if ins[2] not in self.consts:
                    raise self.bad(node, "adds a computed C (expected a constant bias)")
                y.c = y.c + float(attrs.get("beta", 1.0)) * _vector(self.consts[ins[2]],
                                                                    w.shape[1], node, self.where)
            return y
        if op in ("Add", "Sub"):
            a, b = ins[:2]
            sign = 1.0 if op == "Add" else -1.0
            if a in self.consts:
                y = self.get(b, node).map(lambda m: sign * m)
                y.c = y.c + _vector(self.consts[a], y.k, node, self.where)
                return y
            x = self.get(a, node)
            if b in self.consts:
                return Lin(x.U, x.H, x.F, x.c + sign * _vector(self.consts[b], x.k, node,
                                                                self.where))
            other = self.get(b, node)
            if other.k != x.k:
                raise self.bad(node, f"adds tensors of {x.k} and {other.k} units")
            return x + other.map(lambda m: sign * m)
        if op == "Neg":
            return self.get(ins[0], node).map(lambda m: -m)
        if op in ("Mul", "Div"):
            if const == [True, True] or not any(const):
                raise self.bad(node, "multiplies two computed tensors (expected a constant "
                                     "factor)")
            if op == "Div" and ins[0] in self.consts:
                raise self.bad(node, "divides by a computed tensor")
            x = self.get(ins[1] if ins[0] in self.consts else ins[0], node)
            s = _vector(self.consts[ins[0] if ins[0] in self.consts else ins[1]], x.k, node,
                        self.where)
            s = 1.0 / s if op == "Div" else s
            return x.map(lambda m: s[:, None] * m if m.ndim == 2 else s * m)
        if op in _ACTIVATIONS:
            x = self.get(ins[0], node)
            if self.act_node is not None:
                raise self.bad(node, f"is a second activation (the first: "
                                     f"{_label(self.act_node)}); a cell has one, f in h' = "
                                     "(1 − α)·h + α·f(z)")
            if x.k != self.n:
                raise self.bad(node, f"acts on {x.k} values; f(z) must have one per state unit "
                                     f"({self.n})")
            self.z, self.activation, self.act_node = x, _ACTIVATIONS[op], node
            n = self.n
            return Lin(np.zeros((n, self.n_in)), np.zeros((n, n)), np.eye(n), np.zeros(n))
        if op in ("Slice", "Gather"):
            x = self.get(ins[0], node)
            idx = self._indices(node, ins, attrs, x.k)
            return x.map(lambda m: m[idx])
        if op == "Concat":
            _last_axis(attrs.get("axis", 0), node, self.where)
            parts = [self.get(i, node) for i in ins]
            return Lin(*(np.concatenate([getattr(p, f) for p in parts]) for f in "UHFc"))
        raise self.bad(node, "is not part of the recognized cell")

    def _indices(self, node, ins, attrs, k: int) -> np.ndarray:
        if node.op_type == "Gather":
            _last_axis(attrs.get("axis", 0), node, self.where)
            if ins[1] not in self.consts or np.ndim(self.consts[ins[1]]) != 1:
                raise self.bad(node, "gathers with computed or non-1-D indices (expected "
                                     "constant unit indices)")
            return np.asarray(self.consts[ins[1]], np.int64) % k
        if len(ins) == 1:   # opset < 10: attributes
            starts, ends = attrs.get("starts", []), attrs.get("ends", [])
            axes, steps = attrs.get("axes", list(range(len(starts)))), [1] * len(starts)
        else:
            got = [self.consts.get(i) if i else None for i in ins[1:5]] + [None] * 4
            if any(i and i not in self.consts for i in ins[1:5]):
                raise self.bad(node, "slices with computed bounds (expected constants)")
            starts, ends = list(got[0]), list(got[1])
            axes = list(got[2]) if got[2] is not None else list(range(len(starts)))
            steps = list(got[3]) if got[3] is not None else [1] * len(starts)
        rows = np.arange(k)
        for s, e, a, st in zip(starts, ends, axes, steps):
            if a == 0:
                if int(s) == 0 and int(e) >= 2 ** 31 - 1 and int(st) == 1:
                    continue   # the whole batch
                raise self.bad(node, "slices the batch axis")
            _last_axis(int(a), node, self.where)
            rows = rows[slice(int(s), int(e), int(st))]
        return rows


def _io_names(model: onnx.ModelProto, state: str | None, where: str) -> list[tuple[str, str]]:
    """(u, h) assignments to try, the most plausible first."""
    names = [v.name for v in _graph_inputs(model)]
    if len(names) != 2:
        raise ModelError(f"{where}: a recurrent cell graph has two inputs (u, h); this one has "
                         f"{names}")
    if state is not None:
        if state not in names:
            raise ModelError(f"{where}: state input {state!r} is not an input of the model "
                             f"({names})")
        return [(next(n for n in names if n != state), state)]
    cands = _state_candidates(model) or names
    return [(next(n for n in names if n != h), h) for h in reversed(cands)]


def read_cell_graph(model: onnx.ModelProto, where: str, state: str | None = None) -> Cell:
    """The Cell of a one-step cell graph (see the module docstring); raises a one-line
    ModelError naming the node or output that breaks the form."""
    first = None
    for u, h in _io_names(model, state, where):
        try:
            return _read(model, u, h, where)
        except ModelError as exc:
            first = first or exc
    raise first


def _width(model, name: str, where: str) -> int:
    v = next(v for v in model.graph.input if v.name == name)
    d = _dims(v)
    if len(d) != 2 or not isinstance(d[-1], int) or d[-1] <= 0:
        raise ModelError(f"{where}: input {name!r} has shape {d}; a cell's inputs are (batch, "
                         "width) with a static width")
    if v.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise ModelError(f"{where}: input {name!r} is not float32")
    return d[-1]


def _read(model: onnx.ModelProto, u: str, h: str, where: str) -> Cell:
    n_in, n = _width(model, u, where), _width(model, h, where)
    if n > MAX_UNITS or n_in > MAX_UNITS:
        raise ModelError(f"{where}: input {u!r} has {n_in} and state {h!r} {n} values; a cell "
                         f"graph is read with up to {MAX_UNITS} of each")
    tracer = _Tracer(model, u, h, n_in, n, where)
    vals = tracer.run()
    outputs = [o.name for o in model.graph.output]
    if len(outputs) not in (1, 2):
        raise ModelError(f"{where}: outputs {outputs}; a cell has the outputs h' or (y, h')")
    producer = {o: node for node in model.graph.node for o in node.output}
    label = lambda o: f"output {o!r}" + (f" of {_label(producer[o])}" if o in producer else "")
    if tracer.act_node is None:
        raise ModelError(f"{where}: read as a one-step cell (state input {h!r}), it has no "
                         f"Relu, Sigmoid or Tanh on the path to {outputs}; a cell computes "
                         "h' = (1 − α)·h + α·f(z)")
    z = tracer.z
    leaky = {}
    for o in outputs:
        x = vals.get(o)
        if x is None or x.k != n:
            continue
        alpha = float(np.mean(np.diag(x.F)))
        eye = np.eye(n)
        if (np.abs(x.U).max(initial=0) < 1e-9 and np.abs(x.c).max(initial=0) < 1e-9
                and np.abs(x.F - alpha * eye).max() < 1e-6 and 0 < alpha <= 1 + 1e-6
                and np.abs(x.H - (1 - alpha) * eye).max() < 1e-6):
            leaky[o] = min(alpha, 1.0)
    if not leaky:
        o = outputs[-1]
        x = vals.get(o)
        why = ("has a different width" if x is None or x.k != n else
               "depends on u directly" if np.abs(x.U).max() > 1e-9 else
               "has a constant term" if np.abs(x.c).max() > 1e-9 else
               "is not a multiple of the identity in h and in f(z) with coefficients "
               "1 − α and α (0 < α ≤ 1)")
        raise ModelError(f"{where}: {label(o)} with state input {h!r}: expected h' = (1 − α)·h "
                         f"+ α·f(z) per unit; it {why}")
    h_out = list(leaky)[-1]
    alpha = leaky[h_out]
    others = [o for o in outputs if o != h_out]
    if others:
        (y_out,) = others
        y = vals[y_out]
        W_out = y.F / alpha
        if np.abs(y.U).max(initial=0) > 1e-9 or \
                np.abs(y.H - (1 - alpha) * W_out).max(initial=0) > 1e-6 * max(
                    1.0, np.abs(W_out).max(initial=0)):
            raise ModelError(f"{where}: {label(y_out)}: expected a read-out W·h' + b of the "
                             f"state {h_out!r}; it mixes in u, h or f(z) otherwise")
        b_out = y.c.copy()
    else:
        y_out, W_out, b_out = None, np.eye(n), np.zeros(n)
    if np.abs(z.F).max(initial=0) > 0:
        raise ModelError(f"{where}: {_label(tracer.act_node)} reads its own output")
    meta = {p.key: p.value for p in model.metadata_props}
    cell = Cell(z.U.copy(), z.H.copy(), W_out.copy(), tracer.activation, 1.0, alpha,
                meta.get("sfn.dale", "0") == "1", 0, meta.get("sfn.task"),
                bias=z.c.copy() if np.any(z.c) else None,
                b_out=b_out if np.any(b_out) else None, origin="onnx_cell",
                onnx_names=(u, h, y_out, h_out))
    _check(model, cell, where)
    return cell


def cell_graph_trials(model, x: np.ndarray, cell: Cell) -> tuple[np.ndarray, np.ndarray]:
    """Step the cell graph with onnxruntime over trials x (N, T, n_in) from h = 0. Returns
    (outputs (N, T, n_out), states (N, T, n)); a model with a fixed batch runs in chunks."""
    m = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    u, h, y_out, h_out = cell.onnx_names
    batch = next((_dims(v)[0] for v in m.graph.input if v.name == u), None)
    batch = batch if isinstance(batch, int) and batch > 0 else None
    x = np.asarray(x, np.float32)
    N, T = x.shape[:2]
    size = batch or N
    outs, states = [], []
    for start in range(0, N, size):
        xb = x[start:start + size]
        pad = size - len(xb)
        xb = np.concatenate([xb, np.zeros((pad,) + xb.shape[1:], np.float32)]) if pad else xb
        s = np.zeros((size, cell.W_rec.shape[0]), np.float32)
        o_t, s_t = [], []
        for t in range(T):
            res = dict(zip([o.name for o in sess.get_outputs()],
                           sess.run(None, {u: xb[:, t], h: s})))
            s = res[h_out]
            o_t.append(res[y_out] if y_out else s)
            s_t.append(s)
        outs.append(np.stack(o_t, 1)[:size - pad])
        states.append(np.stack(s_t, 1)[:size - pad])
    return np.concatenate(outs), np.concatenate(states)


def _check(model, cell: Cell, where: str) -> None:
    """onnxruntime steps the graph; it must equal the recognized cell."""
    x = np.random.default_rng(0).uniform(-1, 1, (3, 6, cell.W_inp.shape[1])).astype(np.float32)
    try:
        got, states = cell_graph_trials(model, x, cell)
    except Exception as exc:
        raise ModelError(f"{where}: onnxruntime cannot step the cell graph "
                         f"({str(exc)[:200]})") from None
    rec = cell.trials(x.astype(np.float64))
    T, N = x.shape[1], x.shape[0]
    expect_o = rec["o"].reshape(T, N, -1).transpose(1, 0, 2)
    expect_h = rec["y"].reshape(T, N, -1).transpose(1, 0, 2)
    err = max(float(np.abs(got - expect_o).max()), float(np.abs(states - expect_h).max()))
    scale = max(1.0, float(np.abs(expect_o).max()), float(np.abs(expect_h).max()))
    if not err <= 1e-4 * scale:
        raise ModelError(f"{where}: the cell graph differs from its recognized form h' = (1 − α)"
                         f"·h + α·f(W_in·u + W_rec·h + b), y = W_out·h' + b_out by {err:.3g} "
                         "on random inputs")


__all__ = ["is_cell_graph", "read_cell_graph", "cell_graph_trials"]
