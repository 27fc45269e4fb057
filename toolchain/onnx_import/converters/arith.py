"""Add / Sum (residual joins, or a constant bias), Sub / Mul / Div by per-channel constants;
two-tensor Add / Sub / Mul / Div of functions of one tensor become one table (elementwise.py)."""
import numpy as np

from toolchain.onnx_import.converters import elementwise, linear
from toolchain.onnx_import.registry import converter


def _affine(node, ctx, x_name, scale=None, shift=None):
    c = ctx.sample_shape(node, x_name)[0]
    x = ctx.tensor(node, x_name)
    scale = np.ones(c) if scale is None else np.asarray(scale)
    shift = np.zeros(c) if shift is None else np.asarray(shift)
    uniform = np.all(scale == scale[0]) and np.all(shift == shift[0])
    if uniform and elementwise.compose_affine(node, ctx, x, float(scale[0]), float(shift[0])):
        return   # a per-tensor constant on a table: one table
    if len(ctx.sample_shape(node, x_name)) == 2:   # (C, L): the affine of a (C, 1, L) view
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


@converter("Add", "Sum")
def add(node, ctx):
    if any(ctx.const(i) is not None for i in node.input):
        if len(node.input) != 2:
            ctx.fail(node, "a constant operand is supported only in a two-input Add")
        x, value, _ = _split_const(node, ctx)
        if linear.fold_token_bias(node, ctx, ctx.tensor(node, x), value):
            return   # a per-token Linear's bias
        _affine(node, ctx, x, shift=ctx.channel_vector(node, value, x))
        return
    shapes = {ctx.sample_shape(node, i) for i in node.input}
    if len(shapes) != 1:
        ctx.fail(node, f"inputs have shapes {sorted(shapes)}; broadcasting joins are not supported")
    if len(node.input) == 2 and elementwise.combine(node, ctx, "Add"):
        return   # x + f(x): one table
    ctx.add(node, "add", [ctx.tensor(node, i) for i in node.input])


@converter("Sub")
def sub(node, ctx):
    if all(ctx.const(i) is None for i in node.input):
        if _same_shape(node, ctx) and elementwise.combine(node, ctx, "Sub"):
            return   # f(x) − g(x): one table
        ctx.fail(node, "subtraction of two tensors is not supported (unless both are functions "
                       "of one tensor through elementwise ops)")
    x, value, k = _split_const(node, ctx)
    v = ctx.channel_vector(node, value, x)
    if k == 1:
        _affine(node, ctx, x, shift=-v)
    else:
        _affine(node, ctx, x, scale=-np.ones_like(v), shift=v)


@converter("Mul", "Div")
def mul(node, ctx):
    if all(ctx.const(i) is None for i in node.input):
        if _same_shape(node, ctx) and elementwise.combine(node, ctx, node.op_type):
            return   # x·sigmoid(x), x·½(1 + erf(x/√2)) …: a function of one tensor, one table
        ctx.fail(node, "a product of two activations needs multiplies, which spiking synapses "
                       "do not have; only multiplication by a constant, or of two functions of "
                       "the same tensor (x·sigmoid(x)), is supported")
    x, value, k = _split_const(node, ctx)
    v = ctx.channel_vector(node, value, x)
    if node.op_type == "Div":
        if k == 0:
            ctx.fail(node, "division of a constant by a tensor is not supported")
        if np.any(v == 0):
            ctx.fail(node, "division by zero")
        v = 1.0 / v
    _affine(node, ctx, x, scale=v)
