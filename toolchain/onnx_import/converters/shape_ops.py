"""Index maps with static shapes: Flatten, Reshape, Squeeze, Unsqueeze, Transpose, Concat (a
constant input, such as a class token, is a `constant` node the concat quantizes);
pass-throughs: Identity, Dropout (its mask output unread)."""
import numpy as np

from toolchain.onnx_import.converters import index
from toolchain.onnx_import.registry import converter


@converter("Identity", "Dropout")
def passthrough(node, ctx):
    if node.output[0] in ctx.final:
        return   # after a final Softmax: already the readout's input
    mask = node.output[1] if node.op_type == "Dropout" and len(node.output) > 1 else ""
    if mask and (ctx.readers.get(mask) or mask == ctx.graph_output):
        ctx.fail(node, "the mask output of Dropout is read; only the data output is supported "
                       "(an inference model's Dropout is the identity)")
    ctx.alias[node.output[0]] = ctx.tensor(node, node.input[0])


@converter("Flatten", "Reshape", "Squeeze", "Unsqueeze")
def reshape(node, ctx):
    if node.output[0] in ctx.final:
        return   # after a final Softmax: the readout keeps the softmax's input shape
    # shape inference (batch pinned to 1) already resolved 0 / -1 / axes; sample_shape refuses
    # any result whose first axis is not the batch
    x = ctx.tensor(node, node.input[0])
    if node.op_type == "Flatten" and ctx.attr(node, "axis", 1) != 1:
        ctx.fail(node, f"Flatten axis={ctx.attr(node, 'axis', 1)}; only axis=1 keeps the batch")
    ctx.add(node, "reshape", [x])


@converter("Transpose")
def transpose(node, ctx):
    perm = ctx.attr(node, "perm")
    rank = len(ctx.shape(node, node.output[0]))
    perm = list(perm) if perm is not None else list(reversed(range(rank)))
    if perm[0] != 0 or node.input[0] in ctx.moved:
        index.moved_index(node, ctx, perm)   # a gather with the batch axis moved out of the way
        return
    ctx.add(node, "transpose", [ctx.tensor(node, node.input[0])],
            perm=tuple(p - 1 for p in perm[1:]))


@converter("Concat")
def concat(node, ctx):
    rank = len(ctx.shape(node, node.output[0]))
    axis = ctx.attr(node, "axis") % rank
    if axis == 0:
        ctx.fail(node, "concatenation along the batch axis is not supported")
    inputs = []
    for k, i in enumerate(node.input):
        value = ctx.const(i)
        if value is None:
            inputs.append(ctx.tensor(node, i))
            continue
        value = np.asarray(value, np.float64)
        if value.ndim != rank or value.shape[0] != 1:
            ctx.fail(node, f"constant input {i!r} of shape {value.shape} is not one sample of "
                           f"a rank-{rank} tensor")
        # the same values for every sample (a class token): quantized by the concat
        inputs.append(ctx.fg.add(f"{node.output[0]}/constant{k}", "constant", [],
                                 value.shape[1:], value=value[0], synthetic=True))
    if len(inputs) == sum(ctx.const(i) is not None for i in node.input):
        ctx.fail(node, "every input is a constant")
    ctx.add(node, "concat", inputs, axis=axis - 1)

