"""Gemm, MatMul (constant weight), Conv (2-D; a zero Pad in front folds into its pads)."""
import numpy as np

from toolchain.onnx_import.converters.pad import fold_pad
from toolchain.errors import ModelError
from toolchain.onnx_import.registry import converter


@converter("Gemm")
def gemm(node, ctx):
    x = ctx.tensor(node, node.input[0])
    if ctx.attr(node, "transA", 0):
        ctx.fail(node, "transA=1 is not supported (the batch axis must stay first)")
    b = ctx.need_const(node, 1, "B (the weight)")
    # one float64 copy of the weight (a large model's weights are its memory)
    w = np.ascontiguousarray(b if ctx.attr(node, "transB", 0) else b.T, dtype=np.float64)
    alpha = ctx.attr(node, "alpha", 1.0)
    if alpha != 1.0:
        w *= alpha
    bias = np.zeros(w.shape[0])
    if len(node.input) > 2 and node.input[2]:
        c = ctx.need_const(node, 2, "C (the bias)").astype(np.float64)
        try:
            bias = np.broadcast_to(c * ctx.attr(node, "beta", 1.0), (1, w.shape[0])).reshape(-1)
        except ValueError:
            raise ModelError(f"{ctx.node_label(node)}: bias C of shape {c.shape} does not "
                             f"broadcast to (1, {w.shape[0]})") from None
    ctx.add(node, "dense", [x], W=w, b=bias.copy())


@converter("MatMul")
def matmul(node, ctx):
    x = ctx.tensor(node, node.input[0])
    w = ctx.need_const(node, 1, "the second operand (weight)")
    if w.ndim != 2 or len(ctx.sample_shape(node, node.input[0])) != 1:
        ctx.fail(node, "only (batch, features) × constant (features, out) is supported")
    ctx.add(node, "dense", [x], W=np.ascontiguousarray(w.T, dtype=np.float64),
            b=np.zeros(w.shape[1]))


def same_pads(in_hw, out_hw, kernel, stride, dilation, mode):
    """Explicit (top, left, bottom, right) pads for auto_pad SAME_UPPER / SAME_LOWER."""
    pads = [0, 0, 0, 0]
    for a in range(2):
        total = max((out_hw[a] - 1) * stride[a] + (kernel[a] - 1) * dilation[a] + 1 - in_hw[a], 0)
        small, big = total // 2, total - total // 2
        pads[a], pads[a + 2] = (small, big) if mode == "SAME_UPPER" else (big, small)
    return tuple(pads)


def window_attrs(node, ctx, kernel):
    """stride, pads, dilation of a conv/pool node, with auto_pad resolved."""
    stride = tuple(ctx.attr(node, "strides", [1, 1]))
    dilation = tuple(ctx.attr(node, "dilations", [1, 1]))
    auto = ctx.attr(node, "auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        in_hw = ctx.sample_shape(node, node.input[0])[1:]
        out_hw = ctx.sample_shape(node, node.output[0])[1:]
        pads = same_pads(in_hw, out_hw, kernel, stride, dilation, auto)
    elif auto == "VALID":
        pads = (0, 0, 0, 0)
    else:
        pads = tuple(ctx.attr(node, "pads", [0, 0, 0, 0]))
    return stride, pads, dilation


@converter("Conv")
def conv(node, ctx):
    x = ctx.tensor(node, node.input[0])
    w = ctx.need_const(node, 1, "W (the kernel)").astype(np.float64)
    if w.ndim != 4:
        ctx.fail(node, f"only 2-D convolution is supported (kernel has rank {w.ndim})")
    stride, pads, dilation = window_attrs(node, ctx, w.shape[2:])
    x, pads = fold_pad(ctx, x, pads)   # a zero Pad in front becomes the conv's padding
    bias = np.zeros(w.shape[0])
    if len(node.input) > 2 and node.input[2]:
        bias = ctx.need_const(node, 2, "B (the bias)").astype(np.float64).reshape(-1)
    groups = int(ctx.attr(node, "group", 1))
    c_in = ctx.sample_shape(node, node.input[0])[0]
    if (bias.size != w.shape[0] or groups < 1 or c_in % groups or w.shape[0] % groups
            or w.shape[1] * groups != c_in):
        raise ModelError(f"{ctx.node_label(node)}: kernel {w.shape}, bias {bias.shape}, group "
                         f"{groups} and {c_in} input channels do not form a convolution")
    ctx.add(node, "conv", [x], W=w, b=bias, stride=stride, pads=pads, dilation=dilation,
            groups=groups)
