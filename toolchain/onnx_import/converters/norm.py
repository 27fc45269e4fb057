"""BatchNormalization (inference form): a per-channel affine, folded into the conv/dense before it
by `fgraph.fold_affine` when it can be; over (C, L) it acts on a (C, 1, L) view."""
import numpy as np

from toolchain.onnx_import.converters.linear import add_window_op, lift_1d
from toolchain.onnx_import.registry import converter


@converter("BatchNormalization")
def batch_norm(node, ctx):
    x = ctx.tensor(node, node.input[0])
    gamma, beta, mean, var = (ctx.need_const(node, i, what).astype(np.float64) for i, what in
                              enumerate(["scale", "B", "mean", "var"], start=1))
    if ctx.attr(node, "training_mode", 0):
        ctx.fail(node, "training_mode=1; export the model in eval mode")
    denominator = var + ctx.attr(node, "epsilon", 1e-5)
    if not np.all(denominator > 0):
        ctx.fail(node, f"variance + epsilon is not positive in {int(np.sum(~(denominator > 0)))} "
                       "channels: the normalization would divide by the square root of that")
    scale = gamma / np.sqrt(denominator)
    if len(ctx.sample_shape(node, node.input[0])) == 2:   # (C, L): over a (C, 1, L) view
        x = lift_1d(node, ctx, x)
    add_window_op(node, ctx, "affine", x, scale=scale, shift=beta - mean * scale)
