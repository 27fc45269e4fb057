"""Gemm, MatMul (constant weight), Conv (2-D, a zero Pad in front folding into its pads; 1-D as
2-D over (C, 1, L)), ConvTranspose (2-D: a select that spreads the input with zeros, then a Conv)."""
import numpy as np

from toolchain.onnx_import.converters.index import add_select
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
    if ctx.const(node.input[1]) is None and ctx.const(node.input[0]) is None:
        activation_matmul(node, ctx)
        return
    w = ctx.need_const(node, 1, "the second operand (weight)")
    shape = ctx.sample_shape(node, node.input[0])
    if w.ndim != 2 or len(shape) not in (1, 2):
        ctx.fail(node, "only (batch, features) or (batch, tokens, features) × constant "
                       "(features, out) is supported")
    if len(shape) == 1:
        # one float64 copy of the weight (a large model's weights are its memory)
        ctx.add(node, "dense", [x], W=np.ascontiguousarray(w.T, dtype=np.float64),
                b=np.zeros(w.shape[1]))
        return
    token_linear(node, ctx, x, np.ascontiguousarray(w.T, dtype=np.float64),
                 np.zeros(w.shape[1]))


def activation_matmul(node, ctx) -> None:
    """A·B of two activations (attention's Q·Kᵀ and weights·V), batched over the leading axes
    by numpy's rules: a `matmul2` node (product neurons and a summing synapse). Both operands
    need rank ≥ 2 per sample, and the leading axes must match or broadcast."""
    a, b = (ctx.sample_shape(node, i) for i in node.input[:2])
    if len(a) < 2 or len(b) < 2:
        ctx.fail(node, f"a product of activations of shapes {a} and {b}; each needs at least two "
                       "axes besides the batch")
    try:
        np.broadcast_shapes(a[:-2], b[:-2])
    except ValueError:
        ctx.fail(node, f"the leading axes of {a} and {b} do not broadcast")
    if a[-1] != b[-2]:
        ctx.fail(node, f"shapes {a} and {b} cannot be multiplied as matrices")
    ctx.add(node, "matmul2", [ctx.tensor(node, i) for i in node.input[:2]])


def token_linear(node, ctx, x: str, w: np.ndarray, b: np.ndarray) -> None:
    """The same Linear (F, D) on every token of an (S, D) tensor: (S, D) → (D, S, 1) by a
    transpose and a reshape, a 1×1 convolution (features are its channels), and back to (S, F).
    The last transpose carries the ONNX output's name and the conv's name (`token_conv`), so a
    bias Add after it folds into the conv. Its axis 1 is tokens, not channels: it and the
    activations on it are calibrated per tensor (`per_tensor`), so that the next token Linear's
    convolution reads one unit per feature whatever the token."""
    out = node.output[0]
    (s, d), f = ctx.sample_shape(node, node.input[0]), w.shape[0]
    t = ctx.fg.add(f"{out}/tokens", "transpose", [x], (d, s), perm=(1, 0), synthetic=True,
                   spikes=True)
    t = ctx.fg.add(f"{out}/tokens2d", "reshape", [t], (d, s, 1), synthetic=True)
    conv_name = ctx.fg.add(f"{out}/conv", "conv", [t], (f, s, 1), W=w[:, :, None, None], b=b,
                           stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1), groups=1,
                           synthetic=True)
    t = ctx.fg.add(f"{out}/features", "reshape", [conv_name], (f, s), synthetic=True)
    ctx.add(node, "transpose", [t], perm=(1, 0), token_conv=conv_name, per_tensor=True)


def fold_token_bias(node, ctx, x: str, value) -> bool:
    """Add(token_linear(x), bias along the features): the bias joins the 1×1 convolution's and
    the token linear's last transpose takes the Add's output name. Only when the Add is the one
    reader of the MatMul's output."""
    d = ctx.fg[x]
    conv_name = d["params"].get("token_conv")
    if conv_name is None or len(ctx.readers.get(x, [])) != 1 or x == ctx.graph_output:
        return False
    s, f = d["shape"]
    try:
        full = np.broadcast_to(np.asarray(value, np.float64), (1, s, f)).reshape(s, f)
    except ValueError:
        return False
    if not np.all(full == full[:1]):
        return False
    ctx.fg[conv_name]["params"]["b"] = ctx.fg[conv_name]["params"]["b"] + full[0]
    ctx.fg.rename(x, node.output[0])
    return True


def same_pads(in_hw, out_hw, kernel, stride, dilation, mode):
    """Explicit (top, left, bottom, right) pads for auto_pad SAME_UPPER / SAME_LOWER."""
    pads = [0, 0, 0, 0]
    for a in range(2):
        total = max((out_hw[a] - 1) * stride[a] + (kernel[a] - 1) * dilation[a] + 1 - in_hw[a], 0)
        small, big = total // 2, total - total // 2
        pads[a], pads[a + 2] = (small, big) if mode == "SAME_UPPER" else (big, small)
    return tuple(pads)


def spatial(ctx, node, name) -> tuple[int, int]:
    """(H, W) of a (C, H, W) tensor; (1, L) of a (C, L) one."""
    shape = ctx.sample_shape(node, name)
    return tuple(shape[1:]) if len(shape) == 3 else (1,) + tuple(shape[1:])


def window_attrs(node, ctx, kernel):
    """stride, pads, dilation of a conv/pool node as 2-D tuples, with auto_pad resolved. A 1-D
    window over (C, L) is a 1 × k window over (C, 1, L): its attributes gain a leading 1 (pads
    a leading 0 on each side)."""
    k = len(kernel)
    stride = tuple(ctx.attr(node, "strides", [1] * k))
    dilation = tuple(ctx.attr(node, "dilations", [1] * k))
    pads = tuple(ctx.attr(node, "pads", [0] * 2 * k))
    if k == 1:
        stride, dilation, pads = (1,) + stride, (1,) + dilation, (0, pads[0], 0, pads[1])
        kernel = (1,) + tuple(kernel)
    auto = ctx.attr(node, "auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = same_pads(spatial(ctx, node, node.input[0]), spatial(ctx, node, node.output[0]),
                         kernel, stride, dilation, auto)
    elif auto == "VALID":
        pads = (0, 0, 0, 0)
    return stride, pads, dilation


def lift_1d(node, ctx, x: str, spikes: bool = False, shape: tuple | None = None) -> str:
    """A (C, L) tensor as (C, 1, L): a reshape of the compiler's own in front of a 1-D op (a
    synapse's: `spikes`), or the (C, 1, L) node itself where x is the reshape back from one
    (consecutive 1-D layers). `shape` is x's (C, L) where x is not the node's first input."""
    c, length = shape or ctx.sample_shape(node, node.input[0])
    d = ctx.fg[x]
    if d["op"] == "reshape" and d["params"].get("synthetic") and \
            ctx.fg[d["inputs"][0]]["shape"] == (c, 1, length):
        return d["inputs"][0]
    return ctx.fg.add(f"{node.output[0]}/2d", "reshape", [x], (c, 1, length), synthetic=True,
                      **({"spikes": True} if spikes else {}))


def add_window_op(node, ctx, op: str, x: str, **params) -> str:
    """Add the float op of a conv/pool/affine node. A 1-D node (output (C, L)) becomes the 2-D op
    over (C, 1, L), named after the ONNX output (calibration reads it: same channels, same
    values), followed by a reshape back to (C, L) that the output's readers see; any other shape
    is the op itself."""
    shape = ctx.sample_shape(node, node.output[0])
    if len(shape) != 2:
        return ctx.add(node, op, [x], **params)
    out = node.output[0]
    ctx.fg.add(out, op, [x], (shape[0], 1, shape[1]), **params)
    ctx.alias[out] = ctx.fg.add(f"{out}/1d", "reshape", [out], shape, synthetic=True)
    return out


@converter("Conv")
def conv(node, ctx):
    x = ctx.tensor(node, node.input[0])
    w = ctx.need_const(node, 1, "W (the kernel)").astype(np.float64)
    if w.ndim not in (3, 4):
        ctx.fail(node, f"only 1-D and 2-D convolution are supported (kernel has rank {w.ndim})")
    stride, pads, dilation = window_attrs(node, ctx, w.shape[2:])
    if w.ndim == 3:
        x, w = lift_1d(node, ctx, x, spikes=True), w[:, :, None, :]
    else:
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
    add_window_op(node, ctx, "conv", x, W=w, b=bias, stride=stride, pads=pads,
                  dilation=dilation, groups=groups)


@converter("ConvTranspose")
def conv_transpose(node, ctx):
    """y = conv_transpose(x, W): the input spread with stride − 1 zeros between pixels (a
    select, cropped where a pad exceeds the kernel's reach), then a stride-1 Conv with the
    kernel flipped in H and W and its in/out channels swapped per group, padded by
    dilation·(k − 1) − pad (plus output_padding at the end)."""
    w = ctx.need_const(node, 1, "W (the kernel)").astype(np.float64)
    if w.ndim != 4:
        ctx.fail(node, f"only 2-D transposed convolution is supported (kernel has rank {w.ndim})")
    groups = int(ctx.attr(node, "group", 1))
    c_in, h, wd = ctx.sample_shape(node, node.input[0])
    c_out, ho, wo = ctx.sample_shape(node, node.output[0])
    if groups < 1 or c_in % groups or w.shape[0] != c_in or w.shape[1] * groups != c_out:
        raise ModelError(f"{ctx.node_label(node)}: kernel {w.shape}, group {groups}, {c_in} input "
                         f"and {c_out} output channels do not form a transposed convolution")
    kernel = w.shape[2:]
    stride = tuple(ctx.attr(node, "strides", [1, 1]))
    dilation = tuple(ctx.attr(node, "dilations", [1, 1]))
    out_pad = tuple(ctx.attr(node, "output_padding", [0, 0]))
    if len(stride) != 2 or len(dilation) != 2 or len(out_pad) != 2 or min(kernel) < 1 or \
            min(stride + dilation) < 1 or min(out_pad) < 0:
        raise ModelError(f"{ctx.node_label(node)}: strides {list(stride)}, dilations "
                         f"{list(dilation)}, output_padding {list(out_pad)} and kernel "
                         f"{list(kernel)} must be two positive sizes each (output_padding ≥ 0)")
    auto = ctx.attr(node, "auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    pads = list(ctx.attr(node, "pads", [0, 0, 0, 0]))
    if auto == "VALID":
        pads = [0, 0, 0, 0]
    if len(pads) != 4 or min(pads) < 0:
        raise ModelError(f"{ctx.node_label(node)}: pads {pads} must be four sizes ≥ 0")
    for a, (n_in, n_out) in enumerate(((h, ho), (wd, wo))):
        full = stride[a] * (n_in - 1) + out_pad[a] + dilation[a] * (kernel[a] - 1) + 1
        total = full - n_out
        if auto in ("SAME_UPPER", "SAME_LOWER") or ctx.attr(node, "output_shape") is not None:
            small, big = total // 2, total - total // 2
            pads[a], pads[a + 2] = (small, big) if auto != "SAME_LOWER" else (big, small)
        elif pads[a] + pads[a + 2] != total:
            raise ModelError(f"{ctx.node_label(node)}: pads {pads} and output_padding {out_pad} "
                             f"do not give the inferred output size {n_out} on axis {a + 2}")
    # the spread input, then the conv's padding: reach − pad before, reach − pad + output_padding
    # after; a negative amount crops the spread input instead
    before = [dilation[a] * (kernel[a] - 1) - pads[a] for a in range(2)]
    after = [dilation[a] * (kernel[a] - 1) - pads[a + 2] + out_pad[a] for a in range(2)]
    axes = []
    for a, n_in in enumerate((h, wd)):
        spread = np.full(stride[a] * (n_in - 1) + 1, -1, np.int64)
        spread[::stride[a]] = np.arange(n_in)
        lo, hi = max(-before[a], 0), len(spread) - max(-after[a], 0)
        axes.append(spread[lo:hi])
    x = ctx.tensor(node, node.input[0])
    if any(len(a) != n for a, n in zip(axes, (h, wd))) or any(stride[a] > 1 for a in range(2)):
        grid = np.meshgrid(np.arange(c_in), axes[0], axes[1], indexing="ij")
        table = np.where((grid[1] < 0) | (grid[2] < 0), -1,
                         np.ravel_multi_index([np.maximum(g, 0) for g in grid], (c_in, h, wd)))
        x = add_select(ctx, f"{node.output[0]}/spread", x, table.shape, table, synthetic=True)
    conv_pads = (max(before[0], 0), max(before[1], 0), max(after[0], 0), max(after[1], 0))
    cig, cog = c_in // groups, c_out // groups
    flipped = w[:, :, ::-1, ::-1].reshape(groups, cig, cog, *kernel)
    weight = flipped.transpose(0, 2, 1, 3, 4).reshape(c_out, cig, *kernel).copy()
    bias = np.zeros(c_out)
    if len(node.input) > 2 and node.input[2]:
        bias = ctx.need_const(node, 2, "B (the bias)").astype(np.float64).reshape(-1)
        if bias.size != c_out:
            raise ModelError(f"{ctx.node_label(node)}: bias of {bias.size} values for {c_out} "
                             "output channels")
    ctx.add(node, "conv", [x], W=weight, b=bias, stride=(1, 1), pads=conv_pads,
            dilation=dilation, groups=groups)
