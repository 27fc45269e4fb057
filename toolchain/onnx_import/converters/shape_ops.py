"""Index maps with static shapes: Flatten, Reshape, Squeeze, Unsqueeze, Transpose, Concat;
pass-throughs: Identity, Dropout."""
from toolchain.onnx_import.registry import converter


@converter("Identity", "Dropout")
def passthrough(node, ctx):
    if node.op_type == "Dropout" and len(node.output) > 1 and node.output[1]:
        ctx.fail(node, "the mask output of Dropout is not supported")
    ctx.alias[node.output[0]] = ctx.tensor(node, node.input[0])


@converter("Flatten", "Reshape", "Squeeze", "Unsqueeze")
def reshape(node, ctx):
    # shape inference (batch pinned to 1) already resolved 0 / -1 / axes; sample_shape refuses
    # any result whose first axis is not the batch
    x = ctx.tensor(node, node.input[0])
    if node.op_type == "Flatten" and ctx.attr(node, "axis", 1) != 1:
        ctx.fail(node, f"Flatten axis={ctx.attr(node, 'axis', 1)}; only axis=1 keeps the batch")
    ctx.add(node, "reshape", [x])


@converter("Transpose")
def transpose(node, ctx):
    perm = ctx.attr(node, "perm")
    rank = len(ctx.shape(node, node.input[0]))
    perm = list(perm) if perm is not None else list(reversed(range(rank)))
    if perm[0] != 0:
        ctx.fail(node, f"perm {perm} moves the batch axis")
    ctx.add(node, "transpose", [ctx.tensor(node, node.input[0])],
            perm=tuple(p - 1 for p in perm[1:]))


@converter("Concat")
def concat(node, ctx):
    rank = len(ctx.shape(node, node.input[0]))
    axis = ctx.attr(node, "axis") % rank
    if axis == 0:
        ctx.fail(node, "concatenation along the batch axis is not supported")
    ctx.add(node, "concat", [ctx.tensor(node, i) for i in node.input], axis=axis - 1)
