"""The standard ONNX `RNN` operator (one forward layer, Relu/Tanh/Sigmoid, as torch.nn.RNN exports
it with the legacy exporter) read as the E/I cell with α = 1: the bias B (Wb + Rb) on W_inp's
dense and a linear read-out (MatMul/Gemm/Add after Y) as W_out, b_out. The model's X (seq, batch,
input) and the SFN trials (N, T, n_in) correspond as X[t, n, :] = x[n, t, :] (a batch-first
model — X behind Transpose(1, 0, 2) — takes (N, T, n_in) as it is). `parse_recurrent` reads
what the RNN, LSTM and GRU operators share (the node, its zero initial states, X and the
read-out); toolchain.rnn.gated reads LSTM and GRU from it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from toolchain.errors import ModelError, ShapeError
from toolchain.onnx_import.loader import check_graph, opset_of
from toolchain.rnn.cell import Cell, is_rnn_cell

RECURRENT_OPS = ("RNN", "LSTM", "GRU")
ONNX_ACTIVATIONS = {"Relu": "relu", "Tanh": "tanh", "Sigmoid": "sigmoid"}
_RNN_ATTRIBUTES = {"hidden_size", "activations", "direction", "layout"}
_SHAPE_OPS = ("Squeeze", "Unsqueeze", "Reshape", "Flatten", "Identity")
_ZERO_PRESERVING = ("Expand", "Reshape", "Squeeze", "Unsqueeze", "Slice", "Identity", "Tile",
                    "Cast", "Transpose")


def is_onnx_rnn(model: onnx.ModelProto) -> bool:
    """A model with a top-level ONNX RNN, LSTM or GRU node (the last two: rnn.gated)."""
    return not is_rnn_cell(model) and any(n.op_type in RECURRENT_OPS and n.domain in ("", "ai.onnx")
                                          for n in model.graph.node)


def _label(node: onnx.NodeProto) -> str:
    return f"node {(node.name or node.output[0])!r} ({node.op_type})"


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    out = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.attribute:
            a = n.attribute[0]
            if a.name == "value":
                out[n.output[0]] = numpy_helper.to_array(a.t)
            elif a.name in ("value_float", "value_int", "value_floats", "value_ints"):
                out[n.output[0]] = np.asarray(onnx.helper.get_attribute_value(a))
    return out


def _ancestors(names, producer: dict) -> set[int]:
    """Indices of every node the tensors `names` depend on."""
    seen, stack = set(), [producer[n] for n in names if n in producer]
    while stack:
        i, node = stack.pop()
        if i in seen:
            continue
        seen.add(i)
        stack.extend(producer[n] for n in node.input if n in producer)
    return seen


def _is_zero(name: str, producer: dict, consts: dict, depth: int = 0) -> bool:
    """Is the tensor provably all zeros: a zero constant, ConstantOfShape of 0, or such a tensor
    reshaped, expanded or sliced (torch exports the default h0 that way)?"""
    if name in consts:
        return not np.any(consts[name])
    if name not in producer or depth > 32:
        return False
    node = producer[name][1]
    if node.op_type == "ConstantOfShape":
        value = [a.t for a in node.attribute if a.name == "value"]
        return not value or not np.any(numpy_helper.to_array(value[0]))
    if node.op_type in _ZERO_PRESERVING:
        return _is_zero(node.input[0], producer, consts, depth + 1)
    return False


@dataclass
class RecurrentNode:
    """What the operator's model gives every recurrent cell read from it: the node, its
    attributes and constants, its weight inputs W, R, B (initializer values or None), whether X
    is the model input behind Transpose(1, 0, 2), the linear read-out (A, c: y = h·A + c), the
    layouts of input and output, and the batch a constant initial state fixes (0: none)."""
    node: onnx.NodeProto
    label: str
    attrs: dict
    W: np.ndarray
    R: np.ndarray
    B: np.ndarray | None
    A: np.ndarray
    c: np.ndarray
    onnx_io: tuple[bool, bool]
    x_in: onnx.ValueInfoProto
    batch: int
    n: int


# per operator: its attributes beyond the shared ones, the inputs after X, W, R, B,
# sequence_lens, initial_h (initial states and peepholes, which must be zero), the outputs
# after Y (last states, which must be unused)
_OPERATORS = {"RNN": (set(), (), ("Y_h",)),
              "LSTM": ({"input_forget"}, ("initial_c", "P"), ("Y_h", "Y_c")),
              "GRU": ({"linear_before_reset"}, (), ("Y_h",))}


def parse_recurrent(model: onnx.ModelProto, where: str) -> RecurrentNode:
    """The one recurrent node (RNN, LSTM or GRU) of a model and its surroundings: forward
    direction, one layer, layout 0, no clip or activation_alpha/beta, zero initial states, no
    peepholes, X the model input (or its Transpose(1, 0, 2)), weights as constants, optionally
    followed by a linear read-out: MatMul/Gemm by constants, Add of a constant,
    Squeeze/Reshape/Transpose(1, 0, 2) between them. Anything else raises a ModelError naming
    the node and what is unsupported. The operator's activations and weight shapes are the
    caller's to check."""
    opset_of(model, where)
    g = model.graph
    check_graph(g, where)
    recurrent = [n for n in g.node if n.op_type in RECURRENT_OPS]
    if len(recurrent) != 1:
        kinds = sorted({n.op_type for n in recurrent})
        raise ModelError(f"{where}: {len(recurrent)} {'/'.join(kinds)} nodes "
                         f"({', '.join(_label(n) for n in recurrent)}): several layers are not "
                         f"supported; one {'/'.join(kinds)} node (one layer) is")
    node = recurrent[0]
    label = _label(node)
    extra_attrs, extra_inputs, states = _OPERATORS[node.op_type]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    direction = attrs.get("direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else str(direction)
    if direction != "forward":
        raise ModelError(f"{where}: {label}: direction {direction!r} is not supported (forward "
                         f"only; a bidirectional or reverse {node.op_type} needs the future of "
                         "the input)")
    for name in ("clip", "activation_alpha", "activation_beta"):
        if name in attrs:
            raise ModelError(f"{where}: {label}: attribute {name!r} is not supported (the cell "
                             "takes its activations as they are, unclipped)")
    if attrs.get("layout", 0) != 0:
        raise ModelError(f"{where}: {label}: layout={attrs['layout']} is not supported (layout 0: "
                         "X is (seq, batch, input); a batch-first model may Transpose X instead)")
    unknown = sorted(set(attrs) - _RNN_ATTRIBUTES - extra_attrs - {
        "clip", "activation_alpha", "activation_beta"})
    if unknown:
        raise ModelError(f"{where}: {label}: unknown attributes {unknown}")

    consts = _constants(g)
    producer = {out: (i, n) for i, n in enumerate(g.node) for out in n.output if out}
    consumers: dict[str, list] = {}
    for n in g.node:
        for name in set(filter(None, n.input)):
            consumers.setdefault(name, []).append(n)
    inits = {t.name for t in g.initializer}
    inputs = [v for v in g.input if v.name not in inits]
    if len(inputs) != 1:
        raise ModelError(f"{where}: the model has inputs {[v.name for v in inputs]}; an "
                         f"{node.op_type} model must have exactly one input, X (seq, batch, "
                         "input)")
    x_in = inputs[0]
    if x_in.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise ModelError(f"{where}: input {x_in.name!r} is not float32")
    ins = list(node.input) + [""] * (6 + len(extra_inputs) - len(node.input))
    X, W, R, B, seq_lens, h0 = ins[:6]
    used = {producer[out][0] for out in node.output if out in producer}
    batch_first = False
    if X != x_in.name:
        p = producer.get(X, (None, None))[1]
        perm = [] if p is None else [list(a.ints) for a in p.attribute if a.name == "perm"]
        if p is not None and p.op_type == "Transpose" and p.input[0] == x_in.name \
                and perm == [[1, 0, 2]]:
            batch_first = True
            used.add(producer[X][0])
        else:
            raise ModelError(f"{where}: {label} reads X from {X!r}; X must be the model input "
                             f"{x_in.name!r} (seq, batch, input), or its Transpose(1, 0, 2)")
    for role, name in (("W", W), ("R", R), ("B", B)):
        if not name and role != "B":
            raise ModelError(f"{where}: {label} has no input {role}")
        if name and name not in consts:
            raise ModelError(f"{where}: {label}: {role} {name!r} is computed in the graph; the "
                             "weights must be initializers or Constant nodes")
    if seq_lens:
        raise ModelError(f"{where}: {label}: sequence_lens is not supported (every trial runs "
                         "all its steps)")
    zero_states = [h0] if h0 else []
    for role, name in [("initial_h", h0)] + list(zip(extra_inputs, ins[6:])):
        if not name:
            continue
        if role == "P":
            if not _is_zero(name, producer, consts):
                raise ModelError(f"{where}: {label}: peepholes P {name!r} are not supported (the "
                                 "gates read x and h, not the cell state)")
        elif not _is_zero(name, producer, consts):
            raise ModelError(f"{where}: {label}: {role} {name!r} is not a zero constant; only a "
                             "zero initial state is supported (the deployed state starts at 0)")
        zero_states.append(name)
    w, r = consts[W].astype(np.float64), consts[R].astype(np.float64)
    n = int(attrs.get("hidden_size", r.shape[-1] if r.ndim == 3 else -1))
    b = consts[B].astype(np.float64) if B else None

    # the read-out: one chain of nodes from Y to the model's only output
    outputs = [o.name for o in g.output]
    if len(outputs) != 1:
        raise ModelError(f"{where}: the model has outputs {outputs}; one output (Y or a linear "
                         "read-out of it) is supported")
    for role, name in zip(states, node.output[1:]):
        if name and (name in outputs or consumers.get(name)):
            raise ModelError(f"{where}: {label}: its last state {role} {name!r} is used; only "
                             "the per-step output Y (and a read-out of it) is supported")
    t, A, c, flips = node.output[0], np.eye(n), np.zeros(n), 0
    if not t:
        raise ModelError(f"{where}: {label} has no output Y")
    op = node.op_type
    while t != outputs[0]:
        readers = consumers.get(t, [])
        if len(readers) != 1:
            raise ModelError(f"{where}: tensor {t!r} after the {op} is read by {len(readers)} "
                             "nodes; the read-out must be one chain to the output")
        step = readers[0]
        used.add(producer[step.output[0]][0])
        sa = {a.name: onnx.helper.get_attribute_value(a) for a in step.attribute}
        others = [i for i in step.input[1:] if i]
        if step.input[0] != t and step.op_type != "Add":
            raise ModelError(f"{where}: {_label(step)}: the {op} output must be its first "
                             "operand")
        if step.op_type in _SHAPE_OPS:
            pass  # layout checked by running the model
        elif step.op_type == "Transpose" and list(sa.get("perm", [])) == [1, 0, 2]:
            flips += 1
        elif step.op_type == "MatMul" and step.input[1] in consts \
                and consts[step.input[1]].ndim == 2:
            m = consts[step.input[1]].astype(np.float64)
            A, c = A @ m, c @ m
        elif step.op_type == "Gemm" and step.input[1] in consts and not sa.get("transA", 0) \
                and all(i in consts for i in others):
            m = consts[step.input[1]].astype(np.float64)
            m = m.T if sa.get("transB", 0) else m
            A, c = sa.get("alpha", 1.0) * A @ m, sa.get("alpha", 1.0) * c @ m
            if len(others) > 1:
                c = c + sa.get("beta", 1.0) * _row(consts[others[1]], len(c), step, where)
        elif step.op_type == "Add" and len(step.input) == 2:
            other = step.input[1] if step.input[0] == t else step.input[0]
            if other not in consts:
                raise ModelError(f"{where}: {_label(step)} adds the computed tensor {other!r}; "
                                 "the read-out may add constants only")
            c = c + _row(consts[other], len(c), step, where)
        else:
            raise ModelError(f"{where}: {_label(step)} after the {op} is not supported; the "
                             "read-out may be MatMul or Gemm by constant weights, Add of a "
                             "constant, Squeeze/Reshape and Transpose(1, 0, 2)")
        t = step.output[0]
    # every node the output depends on is the recurrent node, its X transpose, the read-out, a
    # constant or part of a zero initial state
    allowed = used | {producer[node.output[0]][0]} | _ancestors(zero_states, producer)
    for i in sorted(_ancestors(outputs, producer) - allowed):
        extra = g.node[i]
        if extra.op_type != "Constant":
            raise ModelError(f"{where}: {_label(extra)} is not part of the supported form (one "
                             f"{op} node, zero initial states and a linear read-out)")
    # a constant initial_h (1, batch, hidden) fixes the batch the model itself runs
    batch = consts[h0].shape[1] if h0 in consts and consts[h0].ndim == 3 else 0
    return RecurrentNode(node, label, attrs, w, r, b, A, c, (batch_first, flips % 2 == 1),
                         x_in, batch, n)


def activations_of(p: RecurrentNode) -> list[str]:
    return [a.decode() if isinstance(a, bytes) else str(a)
            for a in p.attrs.get("activations", [])]


def read_onnx_rnn(model: onnx.ModelProto, where: str) -> Cell:
    """The Cell (α = 1, no Dale's law) of a model built around one ONNX RNN node: forward
    direction, one layer, Relu/Tanh/Sigmoid, layout 0, zero initial state, X the model input (or
    its Transpose(1, 0, 2)), optionally followed by a linear read-out (`parse_recurrent`).
    Anything else raises a ModelError naming the node and what is unsupported. onnxruntime then
    runs the model against the cell (`onnx_rnn_trials`). LSTM and GRU are read by
    toolchain.rnn.gated."""
    p = parse_recurrent(model, where)
    node, label = p.node, p.label
    if node.op_type != "RNN":
        raise ModelError(f"{where}: {label}: {node.op_type} is a gated cell "
                         "(toolchain.rnn.gated.read_gated reads it), not the ONNX RNN operator")
    acts = activations_of(p) or ["Tanh"]
    if len(acts) != 1 or acts[0] not in ONNX_ACTIVATIONS:
        raise ModelError(f"{where}: {label}: activations {acts} are not supported (one of "
                         f"{sorted(ONNX_ACTIVATIONS)})")
    activation = ONNX_ACTIVATIONS[acts[0]]
    w, r, n = p.W, p.R, p.n
    if w.ndim != 3 or w.shape[:2] != (1, n) or r.shape != (1, n, n):
        raise ShapeError(f"{where}: {label}: W {w.shape}, R {r.shape} do not form one forward "
                         f"layer of hidden_size {n} (expected (1, {n}, input), (1, {n}, {n}))")
    bias = None
    if p.B is not None:
        if p.B.shape != (1, 2 * n):
            raise ShapeError(f"{where}: {label}: B has shape {p.B.shape}, expected "
                             f"(1, {2 * n})")
        bias = p.B[0, :n] + p.B[0, n:]
    cell = Cell(w[0], r[0], p.A.T.copy(), activation, 1.0, 1.0, False, 0, None, bias=bias,
                b_out=p.c if np.any(p.c) else None, origin="onnx_rnn", onnx_io=p.onnx_io)
    _check_onnx_rnn(model, cell, p.x_in, p.batch, where)
    return cell


def _row(a: np.ndarray, k: int, node, where: str) -> np.ndarray:
    """A constant added on the last axis: shape (…, 1 | k) with every leading dimension 1."""
    a = np.asarray(a, np.float64)
    if a.size not in (1, k) or any(d != 1 for d in a.shape[:-1]):
        raise ModelError(f"{where}: {_label(node)}: the constant of shape {a.shape} is not a "
                         f"per-output bias (size 1 or {k} on the last axis)")
    return np.broadcast_to(a.reshape(-1), (k,))


def onnx_rnn_trials(model: onnx.ModelProto | str, x: np.ndarray, cell: Cell) -> np.ndarray:
    """Run the original ONNX RNN model with onnxruntime on trials x (N, T, n_in): X is x
    transposed to (T, N, n_in) (or x itself for a batch-first model); returns (N, T, n_out)."""
    sess = ort.InferenceSession(model if isinstance(model, str) else model.SerializeToString(),
                                providers=["CPUExecutionProvider"])
    x = np.asarray(x, np.float32)
    batch_in, batch_out = cell.onnx_io or (False, False)
    (out,) = sess.run(None, {sess.get_inputs()[0].name: x if batch_in else
                             np.ascontiguousarray(x.transpose(1, 0, 2))})
    k = cell.W_out.shape[0]
    n, T = x.shape[:2]
    if out.size != n * T * k:
        raise ModelError(f"the model's output has shape {out.shape}; expected {n}·{T}·{k} values")
    return out.reshape(n, T, k) if batch_out else out.reshape(T, n, k).transpose(1, 0, 2)


def _check_onnx_rnn(model, cell, x_in, batch: int, where: str) -> None:
    """The model, run by onnxruntime, must equal the cell (a Cell or a gated.GatedCell) over
    whole trials."""
    dims = [d.dim_value if d.HasField("dim_value") else 0 for d in x_in.type.tensor_type.shape.dim]
    gated = not isinstance(cell, Cell)
    n_in = cell.n_inputs if gated else cell.W_inp.shape[1]
    if len(dims) != 3 or dims[2] not in (0, n_in):
        raise ShapeError(f"{where}: input {x_in.name!r} has shape {dims}; expected 3 dims, the "
                         f"last {n_in}")
    T, N = (dims[1], dims[0]) if cell.onnx_io[0] else (dims[0], dims[1])
    x = np.random.default_rng(0).uniform(-1, 1, (N or batch or 3, T or 7, n_in))
    op = cell.kind.upper() if gated else "RNN"
    try:
        got = onnx_rnn_trials(model, x, cell)
    except ModelError as exc:
        raise ModelError(f"{where}: {exc}") from None
    except Exception as exc:
        raise ModelError(f"{where}: onnxruntime cannot run the {op} model on X {x.shape} "
                         f"({str(exc)[:200]})") from None
    x64 = x.astype(np.float32).astype(np.float64)
    if gated:
        expect = cell.outputs(x64)
    else:
        expect = cell.trials(x64)["o"]
        expect = expect.reshape(x.shape[1], x.shape[0], -1).transpose(1, 0, 2)
    err = float(np.abs(got - expect).max())
    if not err <= 1e-4 * max(1.0, float(np.abs(expect).max())):
        form = "its gates and states" if gated else "f(W·x + R·h + b)"
        raise ModelError(f"{where}: the {op} model differs from its recognized form "
                         f"{form} → read-out by {err:.3g} on random trials; the graph "
                         f"around the {op} node is not a supported read-out")
