"""The standard ONNX `RNN` operator (one forward layer, Relu/Tanh/Sigmoid, as torch.nn.RNN exports
it with the legacy exporter) read as the E/I cell with α = 1: the bias B (Wb + Rb) on W_inp's
dense and a linear read-out (MatMul/Gemm/Add after Y) as W_out, b_out. The model's X (seq, batch,
input) and the SFN trials (N, T, n_in) correspond as X[t, n, :] = x[n, t, :] (a batch-first
model — X behind Transpose(1, 0, 2) — takes (N, T, n_in) as it is).
"""
from __future__ import annotations

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
    """A model with a top-level ONNX RNN (or LSTM/GRU, which `read_onnx_rnn` refuses by name)."""
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


def read_onnx_rnn(model: onnx.ModelProto, where: str) -> Cell:
    """The Cell (α = 1, no Dale's law) of a model built around one ONNX RNN node: forward
    direction, one layer, Relu/Tanh/Sigmoid, layout 0, zero initial state, X the model input (or
    its Transpose(1, 0, 2)), optionally followed by a linear read-out: MatMul/Gemm by constants,
    Add of a constant, Squeeze/Reshape/Transpose(1, 0, 2) between them. Anything else raises a
    ModelError naming the node and what is unsupported. onnxruntime then runs the model against
    the cell (`onnx_rnn_trials`)."""
    opset_of(model, where)
    g = model.graph
    check_graph(g, where)
    recurrent = [n for n in g.node if n.op_type in RECURRENT_OPS]
    for n in recurrent:
        if n.op_type != "RNN":
            raise ModelError(f"{where}: {_label(n)}: {n.op_type} is not supported; only the "
                             "ONNX RNN operator (one forward layer, Relu/Tanh/Sigmoid) compiles")
    if len(recurrent) != 1:
        raise ModelError(f"{where}: {len(recurrent)} RNN nodes "
                         f"({', '.join(_label(n) for n in recurrent)}): several layers are not "
                         "supported; one RNN node (one layer) is")
    node = recurrent[0]
    label = _label(node)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    direction = attrs.get("direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else str(direction)
    if direction != "forward":
        raise ModelError(f"{where}: {label}: direction {direction!r} is not supported (forward "
                         "only; a bidirectional or reverse RNN needs the future of the input)")
    for name in ("clip", "activation_alpha", "activation_beta"):
        if name in attrs:
            raise ModelError(f"{where}: {label}: attribute {name!r} is not supported (the cell "
                             "is f(W·x + R·h + b) with plain Relu, Tanh or Sigmoid)")
    if attrs.get("layout", 0) != 0:
        raise ModelError(f"{where}: {label}: layout={attrs['layout']} is not supported (layout 0: "
                         "X is (seq, batch, input); a batch-first model may Transpose X instead)")
    unknown = sorted(set(attrs) - _RNN_ATTRIBUTES - {"clip", "activation_alpha",
                                                       "activation_beta"})
    if unknown:
        raise ModelError(f"{where}: {label}: unknown attributes {unknown}")
    acts = [a.decode() if isinstance(a, bytes) else str(a) for a in attrs.get("activations",
                                                                            [b"Tanh"])]
    if len(acts) != 1 or acts[0] not in ONNX_ACTIVATIONS:
        raise ModelError(f"{where}: {label}: activations {acts} are not supported (one of "
                         f"{sorted(ONNX_ACTIVATIONS)})")
    activation = ONNX_ACTIVATIONS[acts[0]]

    consts = _constants(g)
    producer = {out: (i, n) for i, n in enumerate(g.node) for out in n.output if out}
    consumers: dict[str, list] = {}
    for n in g.node:
        for name in set(filter(None, n.input)):
            consumers.setdefault(name, []).append(n)
    inits = {t.name for t in g.initializer}
    inputs = [v for v in g.input if v.name not in inits]
    if len(inputs) != 1:
        raise ModelError(f"{where}: the model has inputs {[v.name for v in inputs]}; an RNN "
                         "model must have exactly one input, X (seq, batch, input)")
    x_in = inputs[0]
    if x_in.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise ModelError(f"{where}: input {x_in.name!r} is not float32")
    ins = list(node.input) + [""] * (6 - len(node.input))
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
        if name and name not in consts:
            raise ModelError(f"{where}: {label}: {role} {name!r} is computed in the graph; the "
                             "weights must be initializers or Constant nodes")
    if seq_lens:
        raise ModelError(f"{where}: {label}: sequence_lens is not supported (every trial runs "
                         "all its steps)")
    if h0 and not _is_zero(h0, producer, consts):
        raise ModelError(f"{where}: {label}: initial_h {h0!r} is not a zero constant; only a "
                         "zero initial state is supported (the deployed state starts at 0)")
    w, r = consts[W].astype(np.float64), consts[R].astype(np.float64)
    n = int(attrs.get("hidden_size", r.shape[-1] if r.ndim == 3 else -1))
    if w.ndim != 3 or w.shape[:2] != (1, n) or r.shape != (1, n, n):
        raise ShapeError(f"{where}: {label}: W {w.shape}, R {r.shape} do not form one forward "
                         f"layer of hidden_size {n} (expected (1, {n}, input), (1, {n}, {n}))")
    bias = None
    if B:
        b = consts[B].astype(np.float64)
        if b.shape != (1, 2 * n):
            raise ShapeError(f"{where}: {label}: B has shape {b.shape}, expected (1, {2 * n})")
        bias = b[0, :n] + b[0, n:]

    # the read-out: one chain of nodes from Y to the model's only output
    outputs = [o.name for o in g.output]
    if len(outputs) != 1:
        raise ModelError(f"{where}: the model has outputs {outputs}; one output (Y or a linear "
                         "read-out of it) is supported")
    y_h = node.output[1] if len(node.output) > 1 else ""
    if y_h and (y_h in outputs or consumers.get(y_h)):
        raise ModelError(f"{where}: {label}: its last state Y_h {y_h!r} is used; only the "
                         "per-step output Y (and a read-out of it) is supported")
    t, A, c, flips = node.output[0], np.eye(n), np.zeros(n), 0
    if not t:
        raise ModelError(f"{where}: {label} has no output Y")
    while t != outputs[0]:
        readers = consumers.get(t, [])
        if len(readers) != 1:
            raise ModelError(f"{where}: tensor {t!r} after the RNN is read by {len(readers)} "
                             "nodes; the read-out must be one chain to the output")
        step = readers[0]
        used.add(producer[step.output[0]][0])
        sa = {a.name: onnx.helper.get_attribute_value(a) for a in step.attribute}
        others = [i for i in step.input[1:] if i]
        if step.input[0] != t and step.op_type != "Add":
            raise ModelError(f"{where}: {_label(step)}: the RNN output must be its first operand")
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
            raise ModelError(f"{where}: {_label(step)} after the RNN is not supported; the "
                             "read-out may be MatMul or Gemm by constant weights, Add of a "
                             "constant, Squeeze/Reshape and Transpose(1, 0, 2)")
        t = step.output[0]
    # every node the output depends on is the RNN, its X transpose, the read-out, a constant or
    # part of the zero initial state
    allowed = used | {producer[node.output[0]][0]} | (_ancestors([h0], producer) if h0 else set())
    for i in sorted(_ancestors(outputs, producer) - allowed):
        extra = g.node[i]
        if extra.op_type != "Constant":
            raise ModelError(f"{where}: {_label(extra)} is not part of the supported form (one "
                             "RNN node, a zero initial state and a linear read-out)")
    cell = Cell(w[0], r[0], A.T.copy(), activation, 1.0, 1.0, False, 0, None, bias=bias,
                b_out=c if np.any(c) else None, origin="onnx_rnn",
                onnx_io=(batch_first, flips % 2 == 1))
    # a constant initial_h (1, batch, hidden) fixes the batch the model itself runs
    batch = consts[h0].shape[1] if h0 in consts and consts[h0].ndim == 3 else 0
    _check_onnx_rnn(model, cell, x_in, batch, where)
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


def _check_onnx_rnn(model, cell: Cell, x_in, batch: int, where: str) -> None:
    """The model, run by onnxruntime, must equal the cell over whole trials."""
    dims = [d.dim_value if d.HasField("dim_value") else 0 for d in x_in.type.tensor_type.shape.dim]
    n_in = cell.W_inp.shape[1]
    if len(dims) != 3 or dims[2] not in (0, n_in):
        raise ShapeError(f"{where}: input {x_in.name!r} has shape {dims}; expected 3 dims, the "
                         f"last {n_in}")
    T, N = (dims[1], dims[0]) if cell.onnx_io[0] else (dims[0], dims[1])
    x = np.random.default_rng(0).uniform(-1, 1, (N or batch or 3, T or 7, n_in))
    try:
        got = onnx_rnn_trials(model, x, cell)
    except ModelError as exc:
        raise ModelError(f"{where}: {exc}") from None
    except Exception as exc:
        raise ModelError(f"{where}: onnxruntime cannot run the RNN model on X {x.shape} "
                         f"({str(exc)[:200]})") from None
    expect = cell.trials(x.astype(np.float32).astype(np.float64))["o"]
    expect = expect.reshape(x.shape[1], x.shape[0], -1).transpose(1, 0, 2)
    err = float(np.abs(got - expect).max())
    if not err <= 1e-4 * max(1.0, float(np.abs(expect).max())):
        raise ModelError(f"{where}: the RNN model differs from its recognized form "
                         f"f(W·x + R·h + b) → read-out by {err:.3g} on random trials; the graph "
                         "around the RNN node is not a supported read-out")
