"""An unrolled recurrence — a sequence model whose graph applies one cell at each of a static
number of steps, as torch's exporters write a Python loop over time or (dynamo) torch.nn.RNN —
folded back into that cell.

The model has one input x, (N, T, n_in) batch-first or (T, N, n_in) time-major, and one output
stacking a read-out of every step, (N, T, n_out) or (T, N, n_out). The graph takes the steps of
x apart (Gather, Slice or Split on the time axis, Squeeze), optionally after a per-step affine
map of the whole sequence (MatMul, Add, Mul by constants, Transpose(1, 0, 2)); each step computes

    h_t = (1 − α)·h_{t−1} + α·f(W_in·x_t + W_rec·h_{t−1} + b)      h_{−1} = 0
    y_t = W_out·h_t + b_out

with the ops a one-step cell graph may use (cell_graph), and Unsqueeze + Concat stack the y_t
(a per-step affine read-out may follow the stacking). The initial state is a zero constant or a
zero-filled tensor of the batch's size (ConstantOfShape of Shape(x)); it may have been folded
into the first step's constants by the exporter.

Every tensor of a step is traced as an affine function of that step's input x_t, the state
carried in from the step before and the step's activation output f_t. A tensor of step s read
at step s + 1 must be a function of the state h_s alone; from those hand-overs α is read. The
activation inputs of all steps must have the same coefficients (W_in, W_rec, b) and the outputs
the same read-out (W_out, b_out): then the graph is the cell applied T times and becomes the same
`Cell` as its one-step export. Steps with different weights, a recurrence over more than one
step, a second activation per step or an output that is not a read-out of the state are refused
in one line naming the node or the step. onnxruntime then runs the model against the cell.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from toolchain.errors import ModelError, ShapeError, ToolchainError
from toolchain.onnx_import.loader import opset_of
from toolchain.rnn.cell import Cell, is_rnn_cell
from toolchain.rnn.onnx_rnn import _constants, _label, is_onnx_rnn

_ACTIVATIONS = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh"}
_PASS = ("Identity", "Cast", "Dropout")
_SEQ_OPS = ("Transpose", "MatMul", "Add", "Sub", "Mul", "Div", "Neg", "Cast", "Identity")
_ARITY = {"MatMul": (2, 2), "Gemm": (2, 3), "Add": (2, 2), "Sub": (2, 2), "Mul": (2, 2),
          "Div": (2, 2), "Neg": (1, 1), "Relu": (1, 1), "Sigmoid": (1, 1), "Tanh": (1, 1),
          "Identity": (1, 1), "Cast": (1, 1), "Dropout": (1, 3), "Transpose": (1, 1),
          "Squeeze": (1, 2), "Unsqueeze": (1, 2), "Slice": (1, 5), "Gather": (2, 2),
          "Split": (1, 2), "Concat": (1, 1 << 16)}
MAX_UNITS = 2048
MAX_STEPS = 100_000
MAX_STACK_FLOATS = 2 ** 28   # coefficients of the stacked read-outs (2 GiB)
_TOL = 1e-6


def _graph_inputs(model: onnx.ModelProto):
    inits = {t.name for t in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in inits]


def _dims(value) -> list:
    return [d.dim_value if d.HasField("dim_value") else None
            for d in value.type.tensor_type.shape.dim]


def _attrs(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _unit_slices(node, consts: dict, rank: int) -> list[tuple[int, int]]:
    """(axis, index) of each single step that `node` takes from a tensor of rank `rank` on axis
    0 or 1 (Gather of a scalar index, Slice of length 1, Split into pieces of 1); [] if none."""
    attrs, ins = _attrs(node), list(node.input)
    if node.op_type == "Gather":
        axis = attrs.get("axis", 0) % rank
        if axis < 2 and len(ins) > 1 and ins[1] in consts and np.ndim(consts[ins[1]]) == 0:
            return [(axis, int(consts[ins[1]]))]
    elif node.op_type == "Slice" and len(ins) >= 3:
        got = [consts.get(i) if i else None for i in ins[1:5]] + [None] * 4
        if got[0] is None or got[1] is None or any(i and i not in consts for i in ins[1:5]):
            return []
        axes = got[2] if got[2] is not None else range(len(got[0]))
        steps = got[3] if got[3] is not None else [1] * len(got[0])
        found = []
        for s, e, a, st in zip(got[0], got[1], axes, steps):
            if int(a) % rank < 2 and int(st) == 1 and int(e) == int(s) + 1 and int(s) >= 0:
                found.append((int(a) % rank, int(s)))
        return found
    elif node.op_type == "Split":
        axis = attrs.get("axis", 0) % rank
        sizes = consts.get(ins[1]) if len(ins) > 1 and ins[1] else attrs.get("split")
        n = len(node.output)
        if axis < 2 and (sizes is None or all(int(s) == 1 for s in np.ravel(sizes))) and n > 1:
            return [(axis, i) for i in range(n)]
    return []


def is_sequence_graph(model: onnx.ModelProto) -> bool:
    """One rank-3 input whose steps the graph takes apart: single steps (Gather, Slice, Split)
    of at least two indices on axis 0 or 1 of the input or of a per-step affine map of it; and
    an activation. (Neither an ei_rnn_cell nor an ONNX RNN operator model.)"""
    if is_rnn_cell(model) or is_onnx_rnn(model):
        return False
    inputs = _graph_inputs(model)
    if len(inputs) != 1 or len(_dims(inputs[0])) != 3:
        return False
    g = model.graph
    if not any(n.op_type in _ACTIVATIONS for n in g.node):
        return False
    consts = _constants(g)
    seq = {inputs[0].name}
    seen: dict[int, set] = {0: set(), 1: set()}
    for node in g.node:
        if not node.input or node.input[0] not in seq and not (
                node.op_type in ("Add", "Mul") and any(i in seq for i in node.input)):
            continue
        if node.op_type in _SEQ_OPS:
            seq.update(o for o in node.output if o)
            continue
        for axis, index in _unit_slices(node, consts, 3):
            seen[axis].add(index)
    return any(len(v) >= 2 for v in seen.values())


class SLin:
    """A (…, k) tensor as Σ blocks[b]·b + c over b in u (this step's input), h (the state
    carried in from the step before, as h/α) and f (this step's activation output)."""

    def __init__(self, blocks: dict, c: np.ndarray):
        self.blocks = {b: m for b, m in blocks.items() if m is not None}
        self.c = c

    @property
    def k(self) -> int:
        return len(self.c)

    def get(self, b: str, m: int) -> np.ndarray:
        return self.blocks.get(b, np.zeros((self.k, m)))

    def map(self, fn) -> "SLin":
        return SLin({b: fn(m) for b, m in self.blocks.items()}, fn(self.c))

    def __add__(self, other: "SLin") -> "SLin":
        blocks = dict(self.blocks)
        for b, m in other.blocks.items():
            blocks[b] = blocks[b] + m if b in blocks else m
        return SLin(blocks, self.c + other.c)

    def nonzero(self, b: str) -> bool:
        return b in self.blocks and bool(np.any(self.blocks[b]))


class V:
    """A traced tensor: `kind` "seq" (a per-step affine map of the whole input; lead: its
    leading axes, the input's "x0" and "x1" or 1), "step" (one step's tensor: step t, lead of
    "N" and 1) or "stack" (the steps stacked: entries [(t, SLin)], lead with "T")."""

    def __init__(self, kind: str, lead: tuple, lin: SLin | None = None, t: int | None = None,
                 entries: list | None = None):
        self.kind, self.lead, self.lin, self.t, self.entries = kind, tuple(lead), lin, t, entries

    @property
    def k(self) -> int:
        return self.lin.k if self.lin is not None else self.entries[0][1].k

    def map(self, fn) -> "V":
        if self.kind == "stack":
            return V("stack", self.lead, entries=[(t, e.map(fn)) for t, e in self.entries])
        return V(self.kind, self.lead, self.lin.map(fn), self.t)


class _Tracer:
    def __init__(self, model: onnx.ModelProto, where: str):
        self.g, self.where = model.graph, where
        (x,) = _graph_inputs(model)
        self.x = x.name
        dims = _dims(x)
        if x.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            raise ModelError(f"{where}: input {x.name!r} is not float32")
        if not isinstance(dims[2], int) or not 0 < dims[2] <= MAX_UNITS:
            raise ModelError(f"{where}: input {x.name!r} has shape {dims}; a sequence model's "
                             f"input is (N, T, n_in) or (T, N, n_in) with a static n_in of 1 to "
                             f"{MAX_UNITS}")
        if 0 in dims:
            raise ModelError(f"{where}: input {x.name!r} has shape {dims}, an axis of size 0")
        self.dims, self.n_in = dims, dims[2]
        self.consts = _fold(model, where, x.name, dims)
        self.vals = {x.name: V("seq", ("x0", "x1"), SLin({"u": np.eye(self.n_in)},
                                                      np.zeros(self.n_in)))}
        self.n = None            # units: the width of the activation
        self.alpha = None
        self.alpha_from = None   # the node whose hand-over fixed α
        self.states = []         # a of tensors a·h_t, a candidate α each (step ≥ 1)
        self.acts: dict[int, tuple] = {}
        self.activation = None
        self.time_axis = None    # the input's axis (0 or 1) that the steps are taken from

    # --- the walk ----------------------------------------------------------------------------
    def run(self, outputs: list[str]) -> dict:
        producer = {o: i for i, node in enumerate(self.g.node) for o in node.output if o}
        need, stack = set(), [producer[o] for o in outputs if o in producer]
        while stack:
            i = stack.pop()
            if i in need:
                continue
            need.add(i)
            stack.extend(producer[n] for n in self.g.node[i].input if n in producer and
                         n not in self.consts)
        last = {name: i for i, node in enumerate(self.g.node) if i in need for name in node.input}
        for i, node in enumerate(self.g.node):
            if i not in need or node.op_type == "Constant" or all(
                    o in self.consts for o in node.output if o):
                continue
            try:
                got = self.step(node)
            except (ValueError, IndexError, TypeError, KeyError, ZeroDivisionError) as exc:
                raise self.bad(node, f"cannot be read ({' '.join(str(exc).split())[:120]})") \
                    from None
            if any(v.k == 0 for v in (got if isinstance(got, list) else [got])):
                raise self.bad(node, "leaves no units")
            for name, value in zip(node.output, got if isinstance(got, list) else [got]):
                if name:
                    self.vals[name] = value
                    if value.kind == "step":
                        self._state_candidate(value)
            for name in set(node.input) - set(outputs):
                if last.get(name) == i:
                    self.vals.pop(name, None)
        return self.vals

    def get(self, name: str, node) -> V:
        if name not in self.vals:
            raise ModelError(f"{self.where}: {_label(node)} reads {name!r}, which is neither the "
                             "input nor computed from it")
        return self.vals[name]

    def bad(self, node, what: str) -> ModelError:
        return ModelError(f"{self.where}: {_label(node)} {what}; an unrolled recurrence applies "
                          "one cell per step (MatMul/Gemm by constant weights, Add/Sub/Neg, "
                          "Mul/Div by constants, Slice/Gather/Concat of units, one Relu/Sigmoid/"
                          "Tanh) to the steps of its input and stacks a read-out of each step")

    # --- α and the hand-over from one step to the next ---------------------------------------
    def _state_candidate(self, v: V) -> None:
        """A tensor a·h_t of step t ≥ 1 (u-free, no constant, F = a·I, H = a(1 − a)·I): a
        candidate for α, read exactly as a one-step cell graph's h' is."""
        lin = v.lin
        if v.t is None or v.t < 1 or self.n is None or lin.k != self.n or lin.nonzero("u") \
                or np.any(lin.c) or "f" not in lin.blocks:
            return
        F, H = lin.blocks["f"], lin.get("h", self.n)
        a = float(np.mean(np.diag(F)))
        eye = np.eye(self.n)
        if 0 < a <= 1 and np.abs(F - a * eye).max() <= _TOL * a and \
                np.abs(H - a * (1 - a) * eye).max() <= _TOL * a:
            self.states.append(a)

    def _alpha(self, H: np.ndarray, F: np.ndarray, node, what: str) -> None:
        """H = (1 − α)·F: read α (the first time) or check it."""
        scale = max(float(np.abs(F).max()), 1e-300)
        if self.alpha is None:
            beta = float(np.sum(H * F) / np.sum(F * F))
            fit = 1.0 - beta
            near = [a for a in self.states if abs(a - fit) <= 1e-6]
            self.alpha, self.alpha_from = (near[0] if near else fit), node
            if not 0 < self.alpha <= 1 + 1e-9:
                raise ModelError(f"{self.where}: {_label(node)} {what}: it is (1 − α)·h + α·f "
                                 f"with α = {self.alpha:.6g}, outside 0 < α ≤ 1")
            self.alpha = min(self.alpha, 1.0)
        if np.abs(H - (1 - self.alpha) * F).max() > _TOL * scale:
            raise ModelError(f"{self.where}: {_label(node)} {what}: it is not a function of the "
                             f"state h' = (1 − α)·h + α·f(z) (α = {self.alpha:.6g}, read at "
                             f"{_label(self.alpha_from)})")

    def lift(self, v: V, node) -> V:
        """A tensor of step s read at step s + 1: it must be a function of the state h_s."""
        s, lin = v.t, v.lin
        what = f"reads a tensor of step {s} at step {s + 1}"
        if lin.nonzero("u"):
            raise ModelError(f"{self.where}: {_label(node)} {what} that depends on step {s}'s "
                             "input directly; a cell hands only its state to the next step")
        if not lin.nonzero("f"):
            if lin.nonzero("h"):
                raise ModelError(f"{self.where}: {_label(node)} {what} that is the state of "
                                 f"step {s - 1}: a recurrence over two steps is not a cell")
            return V("step", v.lead, SLin({}, lin.c), s + 1)
        if s >= 1:
            n = lin.blocks["f"].shape[1]
            self._alpha(lin.get("h", n), lin.blocks["f"], node, what)
        return V("step", v.lead, SLin({"h": lin.blocks["f"]}, lin.c), s + 1)

    def same_step(self, a: V, b: V, node) -> tuple[V, V]:
        if a.t is None or b.t is None or a.t == b.t:
            return a, b
        if abs(a.t - b.t) > 1:
            raise ModelError(f"{self.where}: {_label(node)} combines tensors of steps "
                             f"{min(a.t, b.t)} and {max(a.t, b.t)}: a recurrence over more than "
                             "one step is not a cell")
        return (self.lift(a, node), b) if a.t < b.t else (a, self.lift(b, node))

    # --- constants and axes ------------------------------------------------------------------
    def vector(self, name: str, k: int, node) -> tuple[np.ndarray, tuple]:
        """A constant broadcast over the leading axes: the same row (size 1 or k) everywhere.
        Returns the row (k,) and the constant's leading dims."""
        a = np.asarray(self.consts[name], np.float64)
        rows = a.reshape(-1, a.shape[-1]) if a.ndim else a.reshape(1, 1)
        if a.ndim > 4 or rows.shape[1] not in (1, k) or np.any(rows != rows[:1]):
            raise ModelError(f"{self.where}: {_label(node)}: the constant {name!r} of shape "
                             f"{a.shape} is not one per-unit vector (size 1 or {k} on the last "
                             "axis, the same for every trial and step)")
        return np.broadcast_to(rows[0], (k,)).copy(), a.shape[:-1] if a.ndim else ()

    def broadcast(self, v: V, dims: tuple, node) -> tuple:
        """v's lead after broadcasting against a constant's leading dims."""
        lead = list(v.lead)
        if len(dims) > len(lead):
            if any(d != 1 for d in dims[:len(dims) - len(lead)]):
                raise self.bad(node, f"broadcasts a constant of leading shape {tuple(dims)}")
            lead = [1] * (len(dims) - len(lead)) + lead
        for i, d in enumerate(dims[::-1]):
            if d != 1 and lead[-1 - i] == 1:
                raise self.bad(node, f"broadcasts a size-1 axis to {d} with a constant")
        return tuple(lead)

    def axis(self, v: V, axis: int, node) -> int:
        rank = len(v.lead) + 1
        if not -rank <= axis < rank:
            raise self.bad(node, f"acts on axis {axis} of a rank-{rank} tensor")
        return axis % rank

    # --- one node ----------------------------------------------------------------------------
    def step(self, node):
        op, ins, attrs = node.op_type, list(node.input), _attrs(node)
        lo, hi = _ARITY.get(op, (1, 1 << 16))
        if not lo <= len(ins) <= hi or not all(ins[:lo]) or not node.output:
            raise self.bad(node, f"has {len(ins)} inputs (expected {lo} to {hi})" if lo != hi
                           else f"has {len(ins)} inputs (expected {lo})")
        consts = self.consts
        if op in _PASS:
            if op == "Cast" and attrs.get("to") not in (onnx.TensorProto.FLOAT,
                                                        onnx.TensorProto.DOUBLE):
                raise self.bad(node, "casts to a non-float type")
            return self.get(ins[0], node)
        if op in ("MatMul", "Gemm"):
            if ins[0] in consts or ins[1] not in consts:
                raise self.bad(node, "multiplies by computed weights (expected the tensor times "
                                     "a constant weight matrix, tensor first)")
            x = self.get(ins[0], node)
            if attrs.get("transA", 0):
                raise self.bad(node, "has transA = 1")
            w = np.asarray(consts[ins[1]], np.float64)
            w = w.reshape(w.shape[-2:]) if w.ndim > 2 and all(d == 1 for d in w.shape[:-2]) else w
            if op == "Gemm" and attrs.get("transB", 0):
                w = w.T
            if w.ndim != 2 or w.shape[0] != x.k:
                raise self.bad(node, f"has weights of shape {w.shape} for {x.k} inputs")
            if op == "Gemm" and len(x.lead) != 1:
                raise self.bad(node, "is a Gemm on a tensor of rank other than 2")
            a = float(attrs.get("alpha", 1.0)) if op == "Gemm" else 1.0
            y = x.map(lambda m: a * (w.T @ m) if m.ndim == 2 else a * (m @ w))
            if op == "Gemm" and len(ins) > 2 and ins[2]:
                if ins[2] not in consts:
                    raise self.bad(node, "adds a computed C (expected a constant bias)")
                b, _ = self.vector(ins[2], w.shape[1], node)
                y = y.map(lambda m: m + float(attrs.get("beta", 1.0)) * b if m.ndim == 1 else m)
            return y
        if op in ("Add", "Sub"):
            sign = 1.0 if op == "Add" else -1.0
            a, b = ins[:2]
            if a in consts or b in consts:
                x = self.get(b if a in consts else a, node)
                vec, dims = self.vector(a if a in consts else b, x.k, node)
                lead = self.broadcast(x, dims, node)
                if a in consts:   # c − x
                    x = x.map(lambda m: sign * m)
                    out = x.map(lambda m: m + vec if m.ndim == 1 else m)
                else:
                    out = x.map(lambda m: m + sign * vec if m.ndim == 1 else m)
                out.lead = lead
                return out
            x, y = self.get(a, node), self.get(b, node)
            if x.k != y.k:
                raise self.bad(node, f"adds tensors of {x.k} and {y.k} units")
            y = y.map(lambda m: sign * m)
            if x.kind != y.kind or x.kind == "stack":
                raise self.bad(node, f"adds a {x.kind} tensor and a {y.kind} tensor")
            if x.kind == "seq":
                if x.lead != y.lead:
                    raise self.bad(node, "adds sequences of different layouts")
                return V("seq", x.lead, x.lin + y.lin)
            x, y = self.same_step(x, y, node)
            return V("step", self._lead2(x.lead, y.lead, node), x.lin + y.lin,
                     x.t if x.t is not None else y.t)
        if op == "Neg":
            return self.get(ins[0], node).map(lambda m: -m)
        if op in ("Mul", "Div"):
            const = [i in consts for i in ins[:2]]
            if all(const) or not any(const):
                raise self.bad(node, "multiplies two computed tensors (expected a constant "
                                     "factor)")
            if op == "Div" and const[0]:
                raise self.bad(node, "divides by a computed tensor")
            x = self.get(ins[1] if const[0] else ins[0], node)
            s, dims = self.vector(ins[0] if const[0] else ins[1], x.k, node)
            s = 1.0 / s if op == "Div" else s
            out = x.map(lambda m: s[:, None] * m if m.ndim == 2 else s * m)
            out.lead = self.broadcast(x, dims, node)
            return out
        if op in _ACTIVATIONS:
            return self.activate(node, self.get(ins[0], node))
        if op == "Transpose":
            x = self.get(ins[0], node)
            rank = len(x.lead) + 1
            perm = list(attrs.get("perm", range(rank)[::-1]))
            if sorted(perm) != list(range(rank)) or perm[-1] != rank - 1:
                raise self.bad(node, f"transposes with perm {perm} (the unit axis must stay "
                                     "last)")
            out = x.map(lambda m: m)
            out.lead = tuple(x.lead[p] for p in perm[:-1])
            return out
        if op in ("Squeeze", "Unsqueeze"):
            return self.reshape_axes(node, ins, attrs)
        if op in ("Slice", "Gather", "Split"):
            return self.take(node, ins, attrs)
        if op == "Concat":
            return self.join(node, ins, attrs)
        raise self.bad(node, "is not part of the recognized recurrence")

    def _lead2(self, a: tuple, b: tuple, node) -> tuple:
        r = max(len(a), len(b))
        a, b = (1,) * (r - len(a)) + a, (1,) * (r - len(b)) + b
        if any(p != q and 1 not in (p, q) for p, q in zip(a, b)):
            raise self.bad(node, f"combines tensors of leading axes {a} and {b}")
        return tuple(p if p != 1 else q for p, q in zip(a, b))

    def activate(self, node, x: V) -> V:
        if x.kind != "step":
            raise self.bad(node, "applies the activation to all steps at once (a feed-forward "
                                 "layer, not a recurrent cell)")
        if x.lin.nonzero("f"):
            x = self.lift(x, node)
        if x.t is None:
            raise self.bad(node, "acts on a constant")
        if self.n is None:
            if not 0 < x.k <= MAX_UNITS:
                raise self.bad(node, f"acts on {x.k} values (up to {MAX_UNITS} units are read)")
            self.n, self.activation = x.k, _ACTIVATIONS[node.op_type]
        if x.k != self.n or _ACTIVATIONS[node.op_type] != self.activation:
            first = self.acts[min(self.acts)][1]
            raise self.bad(node, f"is a {node.op_type} on {x.k} values where step "
                                 f"{min(self.acts)} has {_label(first)} on {self.n}")
        if x.t in self.acts:
            raise self.bad(node, f"is a second activation in step {x.t} (the first: "
                                 f"{_label(self.acts[x.t][1])}); a cell has one")
        self.acts[x.t] = (x.lin, node)
        if 1 in self.acts:   # compared as they come: a long loop keeps two steps' weights
            for t in [t for t, (lin, _) in self.acts.items() if t != 1 and lin is not None]:
                self.same_as_step_1(t)
        return V("step", x.lead, SLin({"f": np.eye(self.n)}, np.zeros(self.n)), x.t)

    def same_as_step_1(self, t: int) -> None:
        """Step t's activation input has step 1's coefficients (step 0: no recurrent ones);
        then only the node is kept (steps 0 and 1 keep theirs)."""
        z, act = self.acts[t]
        if z is None or t == 1:
            return
        n, ref = self.n, self.acts[1][0]
        parts = [("input weights", z.get("u", self.n_in), ref.get("u", self.n_in)),
                 ("bias", z.c, ref.c)] + (
            [("recurrent weights", z.get("h", n), ref.get("h", n))] if t else [])
        for what, got, want in parts:
            if _close(got, want) > _TOL:
                raise ModelError(f"{self.where}: the steps apply different weights: the {what} "
                                 f"into {_label(act)} (step {t}) differ from step 1's by "
                                 f"{_close(got, want):.3g} (relative); one cell applied at every "
                                 "step folds, a loop over different cells does not")
        if t > 1:
            self.acts[t] = (None, act)

    def reshape_axes(self, node, ins, attrs):
        x = self.get(ins[0], node)
        if len(ins) > 1 and ins[1]:
            if ins[1] not in self.consts:
                raise self.bad(node, "has computed axes")
            axes = [int(a) for a in np.ravel(self.consts[ins[1]])]
        else:
            axes = [int(a) for a in attrs.get("axes", [])]
        lead = list(x.lead)
        if node.op_type == "Unsqueeze":
            rank = len(lead) + 1 + len(axes)
            axes = sorted(a % rank for a in axes)
            if rank - 1 in axes:
                raise self.bad(node, "inserts an axis after the unit axis")
            for a in axes:
                lead.insert(a, 1)
        else:
            rank = len(lead) + 1
            axes = [a % rank for a in axes] if axes else [i for i, d in enumerate(lead) if d == 1]
            if any(a == rank - 1 or lead[a] != 1 for a in axes):
                raise self.bad(node, "squeezes an axis that is not a leading axis of size 1")
            lead = [d for i, d in enumerate(lead) if i not in axes]
        out = x.map(lambda m: m)
        out.lead = tuple(lead)
        return out

    def _time(self, label: str, node) -> int:
        axis = int(label[1])
        if self.time_axis is None:
            self.time_axis = axis
        elif self.time_axis != axis:
            raise self.bad(node, f"takes steps from axis {axis} of the input where another "
                                 f"node takes them from axis {self.time_axis}")
        return axis

    def take(self, node, ins, attrs):
        """Slice, Gather, Split: of units (the last axis), or single steps of a sequence."""
        x = self.get(ins[0], node)
        rank = len(x.lead) + 1
        op = node.op_type
        if op == "Split":
            axis = self.axis(x, attrs.get("axis", 0), node)
            n_out = len(node.output)
            if len(ins) > 1 and ins[1]:
                if ins[1] not in self.consts:
                    raise self.bad(node, "splits into computed sizes")
                sizes = [int(s) for s in np.ravel(self.consts[ins[1]])]
            else:
                sizes = [int(s) for s in attrs.get("split", [])]
            if axis == rank - 1:
                if not sizes:
                    if x.k % n_out:
                        raise self.bad(node, f"splits {x.k} units into {n_out} parts")
                    sizes = [x.k // n_out] * n_out
                if sum(sizes) != x.k or len(sizes) != n_out:
                    raise self.bad(node, f"splits {x.k} units into {sizes}")
                bounds = np.cumsum([0] + sizes)
                return [x.map(lambda m, lo=lo, hi=hi: m[lo:hi])
                        for lo, hi in zip(bounds[:-1], bounds[1:])]
            if x.kind != "seq" or (sizes and any(s != 1 for s in sizes)):
                raise self.bad(node, f"splits axis {axis} into {sizes or n_out} parts; single "
                                     "steps of the input (pieces of 1) are supported")
            return [self.one_step(x, axis, t, True, node) for t in range(n_out)]
        if op == "Gather":
            axis = self.axis(x, attrs.get("axis", 0), node)
            if ins[1] not in self.consts:
                raise self.bad(node, "gathers with computed indices")
            idx = np.asarray(self.consts[ins[1]], np.int64)
            if axis == rank - 1:
                if idx.ndim != 1:
                    raise self.bad(node, "gathers units with indices that are not 1-D")
                return x.map(lambda m: m[idx % x.k])
            if x.kind != "seq" or idx.ndim != 0:
                raise self.bad(node, f"gathers on axis {axis} (expected units on the last axis, "
                                     "or one step of the input with a scalar index)")
            return self.one_step(x, axis, int(idx), False, node)
        # Slice
        if len(ins) == 1:   # opset < 10: attributes
            starts, ends = attrs.get("starts", []), attrs.get("ends", [])
            axes, steps = attrs.get("axes", list(range(len(starts)))), [1] * len(starts)
        else:
            if any(i and i not in self.consts for i in ins[1:5]):
                raise self.bad(node, "slices with computed bounds (expected constants)")
            got = [self.consts.get(i) if i else None for i in ins[1:5]] + [None] * 4
            starts, ends = list(np.ravel(got[0])), list(np.ravel(got[1]))
            axes = list(np.ravel(got[2])) if got[2] is not None else list(range(len(starts)))
            steps = list(np.ravel(got[3])) if got[3] is not None else [1] * len(starts)
        rows, out_step = np.arange(x.k), None
        for s, e, a, st in zip(starts, ends, axes, steps):
            s, e, a, st = int(s), int(e), self.axis(x, int(a), node), int(st)
            if st == 0:
                raise self.bad(node, "slices with step 0")
            if a == rank - 1:
                rows = rows[slice(s, e, st)]
                continue
            d = x.lead[a]
            if st == 1 and s == 0 and e >= 2 ** 31 - 1 or d == 1 and st == 1 and s == 0 and e >= 1:
                continue   # the whole axis
            if x.kind == "seq" and st == 1 and e == s + 1 and s >= 0 and out_step is None:
                out_step = (a, s)
                continue
            raise self.bad(node, f"slices axis {a} [{s}:{e}:{st}] (expected units on the last "
                                 "axis, or one step of the input)")
        out = x.map(lambda m: m[rows])
        return self.one_step(out, *out_step, True, node) if out_step else out

    def one_step(self, x: V, axis: int, t: int, keep: bool, node) -> V:
        """Step t of a sequence tensor, taken on `axis` (kept as size 1 if `keep`)."""
        label = x.lead[axis]
        if label not in ("x0", "x1"):
            raise self.bad(node, f"takes one step on axis {axis}, which is no axis of the input")
        time = self._time(label, node)
        T = self.dims[time]
        if t < 0 and isinstance(T, int):
            t += T
        if t < 0 or (isinstance(T, int) and t >= T) or t >= MAX_STEPS:
            raise self.bad(node, f"takes step {t} of the input's axis {time} (size {T})")
        lead = ["N" if d in ("x0", "x1") else d for d in x.lead]
        lead = lead[:axis] + ([1] if keep else []) + lead[axis + 1:]
        return V("step", tuple(lead), SLin(dict(x.lin.blocks), x.lin.c.copy()), t)

    def join(self, node, ins, attrs):
        parts = [self.get(i, node) for i in ins if i]
        if any(i in self.consts for i in ins if i):
            raise self.bad(node, "concatenates a constant with computed tensors")
        x = parts[0]
        axis = self.axis(x, attrs.get("axis", 0), node)
        rank = len(x.lead) + 1
        if any(len(p.lead) + 1 != rank for p in parts):
            raise self.bad(node, "concatenates tensors of different ranks")
        if axis == rank - 1:   # units
            kinds = {p.kind for p in parts}
            if kinds == {"seq"} and len({p.lead for p in parts}) == 1:
                return V("seq", x.lead, SLin(*self._cat([p.lin for p in parts])))
            if kinds != {"step"}:
                raise self.bad(node, "concatenates units of whole sequences and single steps")
            top = max(p.t for p in parts if p.t is not None) if any(
                p.t is not None for p in parts) else None
            lifted = [self.same_step(p, V("step", p.lead, SLin({}, np.zeros(0)), top), node)[0]
                      for p in parts]
            lead = x.lead
            for p in lifted[1:]:
                lead = self._lead2(lead, p.lead, node)
            return V("step", lead, SLin(*self._cat([p.lin for p in lifted])), top)
        # stacking steps on a leading axis
        entries, lead = [], None
        for p in parts:
            if p.kind == "step" and p.lead[axis] == 1:
                entries.append((p.t, p.lin))
                rest = p.lead[:axis] + p.lead[axis + 1:]
            elif p.kind == "stack" and p.lead[axis] == "T":
                entries.extend(p.entries)
                rest = p.lead[:axis] + p.lead[axis + 1:]
            else:
                raise self.bad(node, f"concatenates on axis {axis}, which is not a stacking of "
                                     "steps (size-1 axes of single steps)")
            if lead is not None and rest != lead:
                raise self.bad(node, "stacks steps of different layouts")
            lead = rest
        if len({e.k for _, e in entries}) != 1:
            raise self.bad(node, "stacks steps of different widths")
        floats = sum(m.size for _, e in entries for m in e.blocks.values())
        if floats > MAX_STACK_FLOATS:
            raise self.bad(node, f"stacks {len(entries)} steps whose coefficients take "
                                 f"{floats * 8} bytes (at most {MAX_STACK_FLOATS * 8} are read)")
        return V("stack", lead[:axis] + ("T",) + lead[axis:], entries=entries)

    @staticmethod
    def _cat(lins: list) -> tuple:
        names = set().union(*(set(lin.blocks) for lin in lins))
        blocks = {}
        for b in names:
            m = next(lin.blocks[b].shape[1] for lin in lins if b in lin.blocks)
            blocks[b] = np.concatenate([lin.get(b, m) for lin in lins])
        return blocks, np.concatenate([lin.c for lin in lins])


def _fold(model: onnx.ModelProto, where: str, x: str, dims: list) -> dict:
    """Every constant subgraph evaluated, Shape(x) as x's static dims with the batch (any
    unknown dim) as 1: a zero initial state of the batch's size becomes a zero constant."""
    from toolchain.onnx_import import FOLD_FACTOR, FOLD_MIN_BYTES, _fold_constant
    from toolchain.onnx_import.context import ImportContext
    consts = _constants(model.graph)
    carried = sum(a.nbytes for a in consts.values())
    ctx = ImportContext(model, where, opset_of(model, where), consts=consts,
                        fold_budget=max(FOLD_MIN_BYTES, FOLD_FACTOR * carried))
    ctx.shapes[x] = tuple(d if isinstance(d, int) and d > 0 else 1 for d in dims)
    try:
        for node in model.graph.node:
            _fold_constant(node, ctx)
    except ToolchainError as exc:   # onnx's own messages may span lines
        raise type(exc)(" ".join(str(exc).split())) from None
    return ctx.consts


def _close(a: np.ndarray, b: np.ndarray) -> float:
    """max |a − b| relative to the larger of the two (0 when both are 0)."""
    scale = max(float(np.abs(a).max(initial=0)), float(np.abs(b).max(initial=0)))
    return float(np.abs(a - b).max(initial=0)) / scale if scale else 0.0


def read_sequence(model: onnx.ModelProto, where: str) -> Cell:
    """The Cell of an unrolled recurrence (see the module docstring); raises a one-line
    ModelError naming the node or the step that breaks the form."""
    opset_of(model, where)
    outputs = [o.name for o in model.graph.output]
    if len(outputs) != 1:
        raise ModelError(f"{where}: outputs {outputs}; a sequence model has one output, the "
                         "read-out of every step stacked (N, T, n_out) or (T, N, n_out)")
    tracer = _Tracer(model, where)
    vals = tracer.run(outputs)
    (y_name,) = outputs
    y = vals.get(y_name)
    producer = {o: node for node in model.graph.node for o in node.output}
    label = f"output {y_name!r}" + (f" of {_label(producer[y_name])}" if y_name in producer
                                     else "")
    if y is None:
        raise ModelError(f"{where}: {label} is not computed from the input")
    if not tracer.acts:
        raise ModelError(f"{where}: read as an unrolled recurrence, it has no Relu, Sigmoid or "
                         f"Tanh on the path to {label}")
    if y.kind != "stack" or len(y.lead) != 2 or set(y.lead) != {"T", "N"}:
        what = {"step": "one step's tensor (stack the read-out of every step)",
                "seq": "a per-step map of the input, without the recurrence"}.get(
            y.kind, f"steps stacked with leading axes {y.lead}")
        raise ModelError(f"{where}: {label} is {what}; a sequence model's output is the "
                         "read-out of every step, (N, T, n_out) or (T, N, n_out)")
    T = len(tracer.acts)
    if sorted(tracer.acts) != list(range(T)):
        missing = sorted(set(range(max(tracer.acts) + 1)) - set(tracer.acts))
        raise ModelError(f"{where}: steps {missing[:10]} have no activation; every step of "
                         "an unrolled recurrence applies the cell")
    T_in = tracer.dims[tracer.time_axis]
    if T < 2 or (isinstance(T_in, int) and T_in != T):
        raise ModelError(f"{where}: the input has {T_in} steps on axis {tracer.time_axis} and "
                         f"the graph applies the cell {T} times; an unrolled recurrence applies "
                         "it once per step, at least twice")
    if [t for t, _ in y.entries] != list(range(T)):
        got = [t for t, _ in y.entries]
        raise ModelError(f"{where}: {label} stacks the tensors of steps {got[:12]}"
                         f"{'…' if len(got) > 12 else ''}; expected one read-out of each step "
                         f"0 to {T - 1}, in order")
    n, n_in = tracer.n, tracer.n_in
    if tracer.alpha is None:   # no state handed over after step 0 (T = 2): read α from y_1
        e = y.entries[1][1]
        if not e.nonzero("f"):
            raise ModelError(f"{where}: {label}: the read-out of step 1 does not depend on "
                             "the state; α cannot be read")
        tracer._alpha(e.get("h", n), e.blocks["f"], producer.get(y_name, None) or
                      model.graph.node[-1], "stacks the read-out of step 1")
    alpha = tracer.alpha
    for t in range(T):   # the activation inputs: W_in·u + W_rec·h + b the same at every step
        tracer.same_as_step_1(t)
    z1 = tracer.acts[1][0]
    U, R, b = z1.get("u", n_in), z1.get("h", n), z1.c
    # the read-out: W_out·h_t + b_out, h_t = (1 − α)·h_{t−1} + α·f_t, the same at every step
    e1 = y.entries[1][1]
    Y_F, c_out = e1.get("f", n), e1.c
    for t, e in y.entries:
        why = None
        if e.nonzero("u"):
            why = "depends on the step's input directly"
        elif _close(e.get("f", n), Y_F) > _TOL or _close(e.c, c_out) > _TOL:
            why = "differs from step 1's"
        elif t and _close(e.get("h", n), (1 - alpha) * Y_F) > _TOL:
            why = f"is not a read-out W·h' + b of the state (α = {alpha:.6g})"
        if why:
            raise ModelError(f"{where}: {label}: the read-out of step {t} {why}; a sequence "
                             "model stacks W·h'_t + b of the cell's state")
    arrays = (U, R / alpha, Y_F / alpha, b, c_out)
    if not all(np.all(np.isfinite(a)) and np.abs(a).max(initial=0) < 1e30 for a in arrays):
        raise ModelError(f"{where}: the cell read from the steps has non-finite or huge weights "
                         "(over 1e30)")
    meta = {p.key: p.value for p in model.metadata_props}
    batch_first_out = y.lead[0] == "N"
    cell = Cell(U.copy(), R / alpha, Y_F / alpha, tracer.activation, 1.0, alpha,
                meta.get("sfn.dale", "0") == "1", 0, meta.get("sfn.task"),
                bias=b.copy() if np.any(b) else None,
                b_out=c_out.copy() if np.any(c_out) else None, origin="onnx_sequence",
                onnx_io=(tracer.time_axis == 1, batch_first_out),
                onnx_names=(tracer.x, y_name), steps=T)
    _check(model, cell, where)
    return cell


def _fixed_batch(model: onnx.ModelProto, cell: Cell):
    x = next(v for v in _graph_inputs(model) if v.name == cell.onnx_names[0])
    d = _dims(x)[0 if cell.onnx_io[0] else 1]
    return d if isinstance(d, int) and d > 0 else None


def sequence_trials(model, x: np.ndarray, cell: Cell) -> np.ndarray:
    """Run the sequence model with onnxruntime on trials x (N, T, n_in), T its number of steps:
    x fed as it is (batch-first) or as (T, N, n_in); returns the output as (N, T, n_out). A model
    with a fixed batch runs in chunks of it."""
    m = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    x = np.asarray(x, np.float32)
    if x.ndim != 3 or x.shape[1] != cell.steps:
        raise ShapeError(f"the sequence model runs {cell.steps} steps; trials of shape "
                         f"{x.shape} (N, T, n_in) need T = {cell.steps} to run it")
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    batch_in, batch_out = cell.onnx_io
    N = len(x)
    size = _fixed_batch(m, cell) or N
    k = cell.W_out.shape[0]
    outs = []
    for start in range(0, N, size):
        xb = x[start:start + size]
        pad = size - len(xb)
        xb = np.concatenate([xb, np.zeros((pad,) + xb.shape[1:], np.float32)]) if pad else xb
        (out,) = sess.run(None, {cell.onnx_names[0]: xb if batch_in else
                                 np.ascontiguousarray(xb.transpose(1, 0, 2))})
        if out.size != size * cell.steps * k:
            raise ModelError(f"the model's output has shape {out.shape}; expected "
                             f"{size}·{cell.steps}·{k} values")
        out = out.reshape(size, cell.steps, k) if batch_out else \
            out.reshape(cell.steps, size, k).transpose(1, 0, 2)
        outs.append(out[:size - pad])
    return np.concatenate(outs)


def _check(model, cell: Cell, where: str) -> None:
    """onnxruntime runs the model; it must equal the recognized cell over its steps."""
    N = _fixed_batch(model, cell) or 3
    x = np.random.default_rng(0).uniform(-1, 1, (N, cell.steps, cell.W_inp.shape[1]))
    x = x.astype(np.float32)
    try:
        got = sequence_trials(model, x, cell)
    except Exception as exc:
        raise ModelError(f"{where}: onnxruntime cannot run the sequence model "
                         f"({' '.join(str(exc).split())[:200]})") from None
    expect = cell.trials(x.astype(np.float64))["o"]
    expect = expect.reshape(cell.steps, N, -1).transpose(1, 0, 2)
    err = float(np.abs(got - expect).max())
    if not err <= 1e-4 * max(1.0, float(np.abs(expect).max())):
        raise ModelError(f"{where}: the sequence model differs from its recognized cell h' = "
                         f"(1 − α)·h + α·f(W_in·u + W_rec·h + b), y = W_out·h' + b_out by "
                         f"{err:.3g} on random inputs")


__all__ = ["is_sequence_graph", "read_sequence", "sequence_trials"]
