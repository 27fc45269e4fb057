"""A final Softmax / LogSoftmax: dropped from the spiking graph, applied by the readout."""
from toolchain.onnx_import.registry import converter


@converter("Softmax", "LogSoftmax")
def softmax(node, ctx):
    if node.output[0] != ctx.graph_output:
        ctx.fail(node, "Softmax in the middle of a network has no spiking equivalent; only a "
                       "final Softmax/LogSoftmax (applied by the readout) is supported")
    rank = len(ctx.shape(node, node.input[0]))
    axis = ctx.attr(node, "axis", -1 if ctx.opset >= 13 else 1)
    if axis % rank != rank - 1:
        ctx.fail(node, f"softmax over axis {axis} of a rank-{rank} tensor; only the last axis")
    ctx.softmax = "logsoftmax" if node.op_type == "LogSoftmax" else "softmax"
    ctx.alias[node.output[0]] = ctx.tensor(node, node.input[0])
