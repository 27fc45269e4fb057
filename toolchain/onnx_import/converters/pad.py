"""Pad with zeros (constant mode, value 0, spatial axes only): a `pad` node that the Conv or
AveragePool reading it folds into its own padding (`fold_pad`). A Pad that nothing folds is
refused by the quantizer."""
import numpy as np

from toolchain.onnx_import.registry import converter


@converter("Pad")
def pad(node, ctx):
    x = ctx.tensor(node, node.input[0])
    rank = len(ctx.shape(node, node.input[0]))
    mode = ctx.attr(node, "mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode != "constant":
        ctx.fail(node, f"Pad mode {mode!r}: only constant (zero) padding is supported")
    if ctx.opset < 11:
        pads = np.asarray(ctx.attr(node, "pads"), np.int64)
        value = float(ctx.attr(node, "value", 0.0))
    else:
        pads = ctx.need_const(node, 1, "pads").astype(np.int64).reshape(-1)
        value = ctx.const(node.input[2]) if len(node.input) > 2 and node.input[2] else 0.0
        if value is None:
            ctx.fail(node, "the pad value must be a constant")
        value = float(np.asarray(value).reshape(-1)[0]) if np.size(value) else 0.0
    axes = list(range(rank))
    if len(node.input) > 3 and node.input[3]:
        axes = [int(a) % rank for a in ctx.need_const(node, 3, "axes").reshape(-1)]
    full = np.zeros(2 * rank, np.int64)
    for i, a in enumerate(axes):
        full[a], full[a + rank] = pads[i], pads[i + len(axes)]
    if value != 0.0:
        ctx.fail(node, f"Pad value {value}: only zero padding is supported (it folds into the "
                       "next Conv/AveragePool)")
    if np.any(full < 0):
        ctx.fail(node, f"negative pads {full.tolist()} (cropping) are not supported")
    if rank != 4 or np.any(full[[0, 1, 4, 5]] != 0):
        ctx.fail(node, f"pads {full.tolist()} pad a non-spatial axis; only H and W of an "
                       "(N, C, H, W) tensor")
    # (top, left, bottom, right) like a Conv's pads
    ctx.add(node, "pad", [x], pads=(int(full[2]), int(full[3]), int(full[6]), int(full[7])))


def fold_pad(ctx, x: str, pads) -> tuple[str, tuple[int, int, int, int]]:
    """(input, pads) for a Conv/AveragePool reading tensor x: a zero `pad` node is absorbed."""
    d = ctx.fg[x]
    if d["op"] != "pad":
        return x, tuple(pads)
    extra = d["params"]["pads"]
    return d["inputs"][0], tuple(int(a) + int(b) for a, b in zip(pads, extra))
