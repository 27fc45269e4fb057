"""AveragePool / GlobalAveragePool / ReduceMean / ReduceSum over H, W or the last axis
(sum-pools), MaxPool / ReduceMax; 1-D pools over (C, L) as 1 × k pools over (C, 1, L)."""
import numpy as np

from toolchain.onnx_import.converters.linear import add_window_op, lift_1d, spatial, window_attrs
from toolchain.onnx_import.converters.pad import fold_pad
from toolchain.onnx_import.registry import converter


def _ceil_pads(node, ctx, kernel, stride, pads, dilation):
    """Extra bottom/right padding so that floor-mode windows give the inferred (ceil) size."""
    in_hw, out_hw = spatial(ctx, node, node.input[0]), spatial(ctx, node, node.output[0])
    pads = list(pads)
    for a in range(2):
        span = (out_hw[a] - 1) * stride[a] + (kernel[a] - 1) * dilation[a] + 1
        pads[a + 2] += max(span - (in_hw[a] + pads[a] + pads[a + 2]), 0)
    return tuple(pads)


def _counts(n: int, n_out: int, k: int, stride: int, begin: int, end: int,
            include_pad: bool) -> np.ndarray:
    """Elements each output position's window averages over along one axis: the window
    [o·stride − begin, … + k) within the input, or within the padded input (count_include_pad),
    never past the padded end (a ceil-mode window that runs past it)."""
    start = np.arange(n_out) * stride - begin
    stop = np.minimum(start + k, n + end)
    if not include_pad:
        start, stop = np.maximum(start, 0), np.minimum(stop, n)
    return stop - start


@converter("AveragePool")
def average_pool(node, ctx):
    kernel = tuple(ctx.attr(node, "kernel_shape"))
    if len(kernel) not in (1, 2):
        ctx.fail(node, "only 1-D and 2-D pooling are supported")
    if any(d != 1 for d in ctx.attr(node, "dilations", [1] * len(kernel))):
        ctx.fail(node, "dilated average pooling is not supported")
    stride, pads, _ = window_attrs(node, ctx, kernel)
    kernel = (1,) * (2 - len(kernel)) + kernel
    ceil_pads = _ceil_pads(node, ctx, kernel, stride, pads, (1, 1))
    include = bool(ctx.attr(node, "count_include_pad", 0))
    in_hw, out_hw = spatial(ctx, node, node.input[0]), spatial(ctx, node, node.output[0])
    # the divisor of each output position: border windows with count_include_pad=0 and
    # ceil-mode windows past the end average over fewer elements
    counts = np.outer(*(_counts(in_hw[a], out_hw[a], kernel[a], stride[a], pads[a],
                                pads[a + 2], include) for a in range(2)))
    divisor = None if np.all(counts == kernel[0] * kernel[1]) else counts.astype(np.int64)
    x = ctx.tensor(node, node.input[0])
    if len(ctx.sample_shape(node, node.input[0])) == 2:
        x = lift_1d(node, ctx, x)
    else:   # a zero Pad in front: its zeros are data, counted in the divisor above
        x, ceil_pads = fold_pad(ctx, x, ceil_pads)
    add_window_op(node, ctx, "avgpool", x, kernel=kernel, stride=stride, pads=ceil_pads,
                  **({"divisor": divisor} if divisor is not None else {}))


@converter("GlobalAveragePool")
def global_average_pool(node, ctx):
    x = ctx.tensor(node, node.input[0])
    if len(ctx.sample_shape(node, node.input[0])) == 2:
        x = lift_1d(node, ctx, x)
    add_window_op(node, ctx, "avgpool", x, kernel=spatial(ctx, node, node.input[0]),
                  stride=(1, 1), pads=(0, 0, 0, 0))


def _reduce_axes(node, ctx, rank: int) -> list[int]:
    axes = ctx.attr(node, "axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = ctx.need_const(node, 1, "axes").tolist()
    return sorted(a % (rank + 1) for a in (axes or range(1, rank + 1)))


@converter("ReduceMean", "ReduceSum", "ReduceMax")
def reduce(node, ctx):
    """Over the spatial axes of (N, C, H, W) or the last axis of a tensor of rank 2 to 4 — (N, F)
    features, a (N, C, L) signal, a (N, tokens, features) sequence, (N, heads, queries, keys)
    scores — as a window of the whole reduced extent: a sum pool (its divisor in the unit for
    ReduceMean, none for ReduceSum) or a max pool. keepdims=0 adds a reshape; (N, F) features
    are pooled as one (1, 1, F) row; the tokens of (N, S, D) (axis 1) after a transpose to
    (N, D, S)."""
    shape = ctx.sample_shape(node, node.input[0])
    axes = _reduce_axes(node, ctx, len(shape))
    spatial_ = len(shape) == 3 and axes == [2, 3]
    tokens = len(shape) == 2 and axes == [1]
    if tokens:
        # over the tokens of (N, S, D): the features' last axis after a transpose
        x = ctx.fg.add(f"{node.output[0]}/tokens_last", "transpose",
                       [ctx.tensor(node, node.input[0])], (shape[1], shape[0]), perm=(1, 0),
                       synthetic=True)
        shape, axes = (shape[1], shape[0]), [2]
    else:
        x = ctx.tensor(node, node.input[0])
    if not (spatial_ or (len(shape) in (1, 2, 3) and axes == [len(shape)])):
        ctx.fail(node, f"{node.op_type} over axes {axes} of a rank-{len(shape) + 1} tensor; "
                       "supported: the spatial axes [2, 3] of (N, C, H, W), or the last axis of "
                       "a tensor of rank 2 to 4")
    keepdims = ctx.attr(node, "keepdims", 1)
    if keepdims not in (0, 1):
        ctx.fail(node, f"keepdims={keepdims}; ONNX allows 0 or 1")
    if len(shape) == 2:
        x = lift_1d(node, ctx, x, shape=shape)
    elif len(shape) == 1:
        x = ctx.fg.add(f"{node.output[0]}/row", "reshape", [x], (1, 1, shape[0]), synthetic=True)
    c, h, w = ctx.fg[x]["shape"]
    kernel = (h, w) if spatial_ else (1, w)
    op = "maxpool" if node.op_type == "ReduceMax" else "avgpool"
    params = dict(kernel=kernel, stride=(1, 1), pads=(0, 0, 0, 0))
    if op == "maxpool":
        params["dilation"] = (1, 1)
    if node.op_type == "ReduceSum":
        params["total"] = True
    if keepdims and len(shape) > 1 and not tokens:
        add_window_op(node, ctx, op, x, **params)
        return
    pooled = ctx.fg.add(f"{node.output[0]}/pool", op, [x], (c, h // kernel[0], 1),
                        synthetic=True, **params)
    ctx.add(node, "reshape", [pooled])


@converter("MaxPool")
def max_pool(node, ctx):
    kernel = tuple(ctx.attr(node, "kernel_shape"))
    if len(kernel) not in (1, 2):
        ctx.fail(node, "only 1-D and 2-D pooling are supported")
    if len(node.output) > 1 and node.output[1]:
        ctx.fail(node, "the Indices output of MaxPool is not supported")
    stride, pads, dilation = window_attrs(node, ctx, kernel)
    kernel = (1,) * (2 - len(kernel)) + kernel
    pads = _ceil_pads(node, ctx, kernel, stride, pads, dilation)
    x = ctx.tensor(node, node.input[0])
    if len(ctx.sample_shape(node, node.input[0])) == 2:
        x = lift_1d(node, ctx, x)
    add_window_op(node, ctx, "maxpool", x, kernel=kernel, stride=stride, pads=pads,
                  dilation=dilation)
