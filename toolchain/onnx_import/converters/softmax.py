"""A final Softmax / LogSoftmax: dropped from the spiking graph, applied by the readout. Final
means that only reshapes (Reshape, Flatten, Squeeze, Unsqueeze, Identity, Dropout) lie between it
and the graph output; the readout then keeps the softmax's input shape, whose last axis the
softmax runs over."""
from toolchain.onnx_import.registry import converter

RESHAPES = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout")


def _reaches_output(ctx, name: str) -> list[str] | None:
    """The tensors from `name` to the graph output through one-reader reshapes, or None."""
    chain = [name]
    while chain[-1] != ctx.graph_output:
        readers = ctx.readers.get(chain[-1], [])
        if len(readers) != 1 or readers[0].op_type not in RESHAPES:
            return None
        chain.append(readers[0].output[0])
    return chain


@converter("Softmax", "LogSoftmax")
def softmax(node, ctx):
    chain = _reaches_output(ctx, node.output[0])
    if chain is None:
        ctx.fail(node, "Softmax in the middle of a network has no spiking equivalent; only a "
                       "final Softmax/LogSoftmax (applied by the readout) is supported")
    rank = len(ctx.shape(node, node.input[0]))
    axis = ctx.attr(node, "axis", -1 if ctx.opset >= 13 else 1)
    if axis % rank != rank - 1:
        ctx.fail(node, f"softmax over axis {axis} of a rank-{rank} tensor; only the last axis")
    ctx.softmax = "logsoftmax" if node.op_type == "LogSoftmax" else "softmax"
    x = ctx.tensor(node, node.input[0])
    for name in chain:           # the reshapes after it are views of the readout's input
        ctx.alias[name] = x
    ctx.final.update(chain[1:])
