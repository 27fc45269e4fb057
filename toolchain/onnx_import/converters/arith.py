"""Add / Sum (residual joins, or a constant bias), Sub / Mul / Div by constants (per channel, or
per element: a positional embedding, a LayerNorm scale along a token tensor's features);
two-tensor Add / Sub / Mul / Div of functions of one tensor become one table (elementwise.py);
Add / Sub of two activations (broadcast by a select) is a spiking Add with gains ±1, and Mul of
two activations a `mul2` node (product neurons). Div of two activations arrives as Mul by a
Reciprocal (toolchain.onnx_import.expand)."""
import numpy as np

from toolchain.onnx_import.converters import elementwise, index, linear
from toolchain.onnx_import.registry import converter


def _affine(node, ctx, x_name, scale=None, shift=None):
    """scale·x + shift for constants `scale`, `shift` (None: 1, 0) broadcast to x's shape: a
    per-channel affine where both are the same within each channel, else a per-element one
    (`full`)."""
    x = ctx.tensor(node, x_name)
    shape = ctx.sample_shape(node, x_name)
    parts = [ctx.per_channel_or_full(node, v, x_name) if v is not None else None
             for v in (scale, shift)]
    if any(p is not None and p[1] for p in parts):
        full = [np.broadcast_to(default, shape).astype(np.float64) if p is None
                else ctx.full_constant(node, p[0], x_name) if not p[1] else p[0]
                for p, default in zip(parts, (1.0, 0.0))]
        ctx.add(node, "affine", [x], scale=full[0], shift=full[1], full=True)
        return
    c = shape[0]
    scale = np.ones(c) if parts[0] is None else parts[0][0]
    shift = np.zeros(c) if parts[1] is None else parts[1][0]
    uniform = np.all(scale == scale[0]) and np.all(shift == shift[0])
    if uniform and elementwise.compose_affine(node, ctx, x, float(scale[0]), float(shift[0])):
        return   # a per-tensor constant on a table: one table
    if uniform and len(shape) != 3:
        # the same on every element: the op itself, which a later table composes through
        ctx.add(node, "affine", [x], scale=scale, shift=shift)
        return
    if len(shape) == 2:   # (C, L): the affine of a (C, 1, L) view
        x = linear.lift_1d(node, ctx, x)
    linear.add_window_op(node, ctx, "affine", x, scale=scale, shift=shift)


def _same_shape(node, ctx) -> bool:
    return len({ctx.sample_shape(node, i) for i in node.input}) == 1


def _split_const(node, ctx):
    """(tensor input name, constant value, constant index) of a binary op with one constant."""
    consts = [ctx.const(i) for i in node.input]
    if consts[0] is not None and consts[1] is not None:
        ctx.fail(node, "both operands are constants")
    k = 0 if consts[0] is not None else 1
    return node.input[1 - k], consts[k], k


def broadcast_inputs(node, ctx) -> list[str]:
    """The float-graph nodes of the node's tensor inputs, each broadcast to the output shape:
    an input of another shape is copied along its size-1 (or missing) axes by a select of the
    compiler's own (the row maximum of a softmax subtracted from each score)."""
    out = ctx.sample_shape(node, node.output[0])
    names = []
    for k, i in enumerate(node.input):
        x = ctx.tensor(node, i)
        full = ctx.shape(node, i)
        if tuple(full[1:]) == tuple(out):
            names.append(x)
            continue
        if len(full) > len(out) + 1:
            ctx.fail(node, f"input {i!r} of shape {full} has a higher rank than the output")
        if len(full) == len(out) + 1 and full[0] != 1:
            ctx.fail(node, f"input {i!r} of shape {full} broadcasts along the batch axis")
        sample = tuple(full[1:]) if len(full) == len(out) + 1 else tuple(full)
        try:
            table = np.broadcast_to(np.arange(int(np.prod(sample))).reshape(sample), out)
        except ValueError:
            ctx.fail(node, f"input {i!r} of shape {full} does not broadcast to {out}")
        names.append(index.add_select(ctx, f"{node.output[0]}/broadcast{k}", x, out, table,
                                      synthetic=True, spikes=False))
    return names


@converter("Add", "Sum")
def add(node, ctx):
    if any(ctx.const(i) is not None for i in node.input):
        if len(node.input) != 2:
            ctx.fail(node, "a constant operand is supported only in a two-input Add")
        x, value, _ = _split_const(node, ctx)
        if linear.fold_token_bias(node, ctx, ctx.tensor(node, x), value):
            return   # a per-token Linear's bias
        _affine(node, ctx, x, shift=value)
        return
    if len(node.input) == 2 and _same_shape(node, ctx) and elementwise.combine(node, ctx, "Add"):
        return   # x + f(x): one table
    ctx.add(node, "add", broadcast_inputs(node, ctx))


@converter("Sub")
def sub(node, ctx):
    if all(ctx.const(i) is None for i in node.input):
        if _same_shape(node, ctx) and elementwise.combine(node, ctx, "Sub"):
            return   # f(x) − g(x): one table
        ctx.add(node, "add", broadcast_inputs(node, ctx), coef=(1.0, -1.0))
        return
    x, value, k = _split_const(node, ctx)
    if k == 1:
        _affine(node, ctx, x, shift=-np.asarray(value, np.float64))
    else:
        _affine(node, ctx, x, scale=-1.0, shift=value)


@converter("Mul", "Div")
def mul(node, ctx):
    if all(ctx.const(i) is None for i in node.input):
        if _same_shape(node, ctx) and elementwise.combine(node, ctx, node.op_type):
            return   # x·sigmoid(x), x·½(1 + erf(x/√2)) …: a function of one tensor, one table
        if node.op_type == "Div":
            ctx.fail(node, "division of two activations reached the converter unexpanded")
        ctx.add(node, "mul2", [ctx.tensor(node, i) for i in node.input])
        return
    x, value, k = _split_const(node, ctx)
    value = np.asarray(value, np.float64)
    if node.op_type == "Div":
        if k == 0:
            if value.size != 1:
                ctx.fail(node, f"a constant of shape {value.shape} divided by a tensor; only a "
                               "scalar numerator is supported")
            elementwise.divide_constant(node, ctx, float(value.reshape(-1)[0]), x)
            return
        if np.any(value == 0):
            ctx.fail(node, "division by zero")
        value = 1.0 / value
    _affine(node, ctx, x, scale=value)
