"""Relu and Clip(0, max) (ReLU6, clip-floor activations): where the SFN neurons go."""
import numpy as np

from toolchain.onnx_import.registry import converter


def _tokens(ctx, x: str) -> dict:
    """`per_tensor` for an activation of a tokens × features tensor (see linear.token_linear)."""
    return {"per_tensor": True} if ctx.fg[x]["params"].get("per_tensor") else {}


@converter("Relu")
def relu(node, ctx):
    x = ctx.tensor(node, node.input[0])
    ctx.add(node, "relu", [x], hi=None, **_tokens(ctx, x))


@converter("Clip")
def clip(node, ctx):
    x = ctx.tensor(node, node.input[0])
    lo = ctx.const(node.input[1]) if len(node.input) > 1 else None
    hi = ctx.const(node.input[2]) if len(node.input) > 2 else None
    for i, value in ((1, lo), (2, hi)):
        if len(node.input) > i and node.input[i] and value is None:
            ctx.fail(node, f"Clip bound {node.input[i]!r} must be a constant")
    if lo is None or float(lo) != 0.0:
        ctx.fail(node, f"Clip with min {None if lo is None else float(lo)} is not an activation "
                       "the SFN neuron implements; only Clip(min=0[, max]) (ReLU/ReLU6) is supported")
    hi = None if hi is None else float(np.asarray(hi))
    if hi is not None and hi <= 0:
        ctx.fail(node, f"Clip max {hi} must be > 0")
    ctx.add(node, "relu", [x], hi=hi, **_tokens(ctx, x))
