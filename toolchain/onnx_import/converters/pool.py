"""AveragePool / GlobalAveragePool / ReduceMean over H, W (sum-pools), MaxPool."""
from toolchain.onnx_import.converters.linear import window_attrs
from toolchain.onnx_import.converters.pad import fold_pad
from toolchain.onnx_import.registry import converter


def _ceil_pads(node, ctx, kernel, stride, pads, dilation):
    """Extra bottom/right padding so that floor-mode windows give the inferred (ceil) size."""
    in_hw = ctx.sample_shape(node, node.input[0])[1:]
    out_hw = ctx.sample_shape(node, node.output[0])[1:]
    pads = list(pads)
    for a in range(2):
        span = (out_hw[a] - 1) * stride[a] + (kernel[a] - 1) * dilation[a] + 1
        pads[a + 2] += max(span - (in_hw[a] + pads[a] + pads[a + 2]), 0)
    return tuple(pads)


@converter("AveragePool")
def average_pool(node, ctx):
    kernel = tuple(ctx.attr(node, "kernel_shape"))
    if len(kernel) != 2:
        ctx.fail(node, "only 2-D pooling is supported")
    stride, pads, _ = window_attrs(node, ctx, kernel)
    ceil_pads = _ceil_pads(node, ctx, kernel, stride, pads, (1, 1))
    if ceil_pads != pads:
        ctx.fail(node, "ceil_mode windows that run past the input average over fewer elements; "
                       "that divisor varies per position and is not supported")
    if any(pads) and not ctx.attr(node, "count_include_pad", 0):
        ctx.fail(node, "padding with count_include_pad=0 divides border windows by fewer "
                       "elements; export with count_include_pad=True or without padding")
    # a zero Pad in front: its zeros count in the divisor, like count_include_pad=1
    x, pads = fold_pad(ctx, ctx.tensor(node, node.input[0]), pads)
    ctx.add(node, "avgpool", [x], kernel=kernel, stride=stride, pads=pads)


@converter("GlobalAveragePool")
def global_average_pool(node, ctx):
    c, h, w = ctx.sample_shape(node, node.input[0])
    ctx.add(node, "avgpool", [ctx.tensor(node, node.input[0])], kernel=(h, w), stride=(1, 1),
            pads=(0, 0, 0, 0))


@converter("ReduceMean")
def reduce_mean(node, ctx):
    shape = ctx.sample_shape(node, node.input[0])
    axes = ctx.attr(node, "axes")
    if axes is None and len(node.input) > 1:
        axes = ctx.need_const(node, 1, "axes").tolist()
    axes = sorted(a % (len(shape) + 1) for a in (axes or []))
    if len(shape) != 3 or axes != [2, 3]:
        ctx.fail(node, "only ReduceMean over the spatial axes [2, 3] is supported")
    c, h, w = shape
    x = ctx.tensor(node, node.input[0])
    keepdims = ctx.attr(node, "keepdims", 1)
    if keepdims not in (0, 1):
        ctx.fail(node, f"keepdims={keepdims}; ONNX allows 0 or 1")
    if keepdims:
        ctx.add(node, "avgpool", [x], kernel=(h, w), stride=(1, 1), pads=(0, 0, 0, 0))
        return
    pooled = ctx.fg.add(f"{node.output[0]}/pool", "avgpool", [x], (c, 1, 1), kernel=(h, w),
                        stride=(1, 1), pads=(0, 0, 0, 0), synthetic=True)
    ctx.add(node, "reshape", [pooled])


@converter("MaxPool")
def max_pool(node, ctx):
    kernel = tuple(ctx.attr(node, "kernel_shape"))
    if len(kernel) != 2:
        ctx.fail(node, "only 2-D pooling is supported")
    if len(node.output) > 1 and node.output[1]:
        ctx.fail(node, "the Indices output of MaxPool is not supported")
    stride, pads, dilation = window_attrs(node, ctx, kernel)
    pads = _ceil_pads(node, ctx, kernel, stride, pads, dilation)
    ctx.add(node, "maxpool", [ctx.tensor(node, node.input[0])], kernel=kernel, stride=stride,
            pads=pads, dilation=dilation)
