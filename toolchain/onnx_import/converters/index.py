"""Constant gathers, one `select` float op each (sim.ops.Select): Slice, Gather (constant
indices), Split, Expand, Tile, and Resize/Upsample — nearest (any scale, every coordinate
transformation ONNX defines but tf_crop_and_resize) and linear (integer upsampling factors: an
edge-replicating zero insertion, then a depthwise convolution with the integer bilinear kernel
whose divisor folds into the output unit, `fixed_conv`).

A select's table lists, for each output element, the input element it copies (−1: a zero),
row-major over the per-sample shapes. `add_select` is what other converters (ConvTranspose)
use to put one in the float graph.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from toolchain.onnx_import.registry import converter

INT_MAX = 2 ** 31 - 1
MAX_KERNEL_NUMERATOR = 255   # a bilinear kernel's integer weights must fit 8-bit mantissas


def add_select(ctx, name: str, x: str, shape, table: np.ndarray, synthetic: bool = False,
               spikes: bool | None = None) -> str:
    """A `select` node `name` reading float-graph node `x` (per-sample output `shape`). A
    synthetic one (no ONNX tensor) feeds a synapse unless `spikes` is False: marked `spikes`, it
    reads spikes."""
    extra = {"synthetic": True} if synthetic else {}
    if synthetic and spikes is not False:
        extra["spikes"] = True
    return ctx.fg.add(name, "select", [x], tuple(shape),
                      table=np.asarray(table, np.int64).reshape(-1), **extra)


def _positions(shape) -> np.ndarray:
    """Every element's flat index, in the per-sample shape."""
    return np.arange(math.prod(shape), dtype=np.int64).reshape(shape)


def _select(node, ctx, table, out=None):
    """Output `out` of `node` as a select of its first input (`_select_from`)."""
    _select_from(node, ctx, ctx.tensor(node, node.input[0]), table, out or node.output[0])


def _select_from(node, ctx, x: str, table, out: str):
    """Output `out` of `node` as a select of float-graph node x. A table that is the identity
    is a pass-through (or a reshape); a select read only by this one composes into it."""
    shape = ctx.sample_shape(node, out)
    table = np.asarray(table, np.int64).reshape(-1)
    if table.size != math.prod(shape):
        ctx.fail(node, f"gathers {table.size} elements, its output {out!r} has shape {shape}")
    if out in ctx.fg.g:
        ctx.fail(node, f"output {out!r} is produced twice")
    d = ctx.fg[x]
    if d["op"] == "select" and x in node.input and x != ctx.graph_output \
            and not d["params"].get("synthetic") and len(ctx.readers.get(x, [])) == 1 \
            and not ctx.fg.consumers(x):
        inner = d["params"]["table"]
        table = np.where(table < 0, -1, inner[np.maximum(table, 0)])
        ctx.fg.g.remove_node(x)
        x = d["inputs"][0]
    if np.array_equal(table, np.arange(math.prod(ctx.fg[x]["shape"]))):
        if tuple(ctx.fg[x]["shape"]) == tuple(shape):
            ctx.alias[out] = x
        else:
            ctx.fg.add(out, "reshape", [x], shape)
        return
    add_select(ctx, out, x, shape, table)


def _optional_const(node, ctx, index: int, what: str):
    if len(node.input) > index and node.input[index]:
        return ctx.need_const(node, index, what).astype(np.int64).reshape(-1)
    return None


@converter("Slice")
def slice_(node, ctx):
    full = ctx.shape(node, node.input[0])
    rank = len(full)
    if ctx.opset < 10:
        starts, ends = ctx.attr(node, "starts"), ctx.attr(node, "ends")
        axes, steps = ctx.attr(node, "axes"), None
    else:
        starts = ctx.need_const(node, 1, "starts").astype(np.int64).reshape(-1)
        ends = ctx.need_const(node, 2, "ends").astype(np.int64).reshape(-1)
        axes = _optional_const(node, ctx, 3, "axes")
        steps = _optional_const(node, ctx, 4, "steps")
    axes = list(range(len(starts))) if axes is None else [int(a) % rank for a in axes]
    steps = [1] * len(starts) if steps is None else [int(s) for s in steps]
    if len(set(axes)) != len(axes) or not len(axes) == len(starts) == len(ends) == len(steps):
        ctx.fail(node, "starts, ends, axes and steps must have one entry per distinct axis")
    if any(s == 0 for s in steps):
        ctx.fail(node, "a slice step of 0")
    index = [slice(None)] * (rank - 1)
    for a, b, e, s in zip(axes, starts, ends, steps):
        if a == 0:
            if not (int(b) == 0 and int(e) >= INT_MAX and s == 1):
                ctx.fail(node, "slicing the batch axis is not supported")
            continue
        index[a - 1] = slice(int(b), int(e), s)
    _select(node, ctx, _positions(full[1:])[tuple(index)])


@converter("Gather")
def gather(node, ctx):
    if node.input[0] in ctx.moved:
        moved_index(node, ctx)
        return
    full = ctx.shape(node, node.input[0])
    axis = int(ctx.attr(node, "axis", 0)) % len(full)
    if axis == 0:
        ctx.fail(node, "gathering along the batch axis is not supported")
    idx = ctx.need_const(node, 1, "indices").astype(np.int64)
    dim = full[axis]
    if np.any((idx < -dim) | (idx >= dim)):
        ctx.fail(node, f"indices outside [−{dim}, {dim}) for axis {axis} of size {dim}")
    _select(node, ctx, np.take(_positions(full[1:]), np.where(idx < 0, idx + dim, idx),
                               axis=axis - 1))


@converter("Split")
def split(node, ctx):
    full = ctx.shape(node, node.input[0])
    axis = int(ctx.attr(node, "axis", 0)) % len(full)
    if axis == 0:
        ctx.fail(node, "splitting the batch axis is not supported")
    positions = _positions(full[1:])
    start = 0
    for out in node.output:
        size = ctx.shape(node, out)[axis] if out else None
        if size is None:
            ctx.fail(node, "every output of Split must be used and have a known shape")
        part = np.take(positions, np.arange(start, start + size), axis=axis - 1)
        _select(node, ctx, part, out)
        start += size
    if start != full[axis]:
        ctx.fail(node, f"outputs cover {start} of the {full[axis]} elements along axis {axis}")


@converter("Expand")
def expand(node, ctx):
    full_in = ctx.shape(node, node.input[0])
    full_out = ctx.shape(node, node.output[0])
    if len(full_out) != len(full_in):
        ctx.fail(node, f"expanding rank {len(full_in)} to rank {len(full_out)} moves the batch "
                       "axis; only an Expand that keeps the rank is supported")
    try:
        table = np.broadcast_to(_positions(full_in[1:]), full_out[1:])
    except ValueError:
        ctx.fail(node, f"input {full_in} does not broadcast to the output {full_out}")
    _select(node, ctx, table)


@converter("Tile")
def tile(node, ctx):
    repeats = ctx.need_const(node, 1, "repeats").astype(np.int64).reshape(-1)
    if len(repeats) == 0 or repeats[0] != 1:
        ctx.fail(node, f"repeats {repeats.tolist()} tile the batch axis")
    if np.any(repeats < 1) or len(repeats) != len(ctx.shape(node, node.input[0])):
        ctx.fail(node, f"repeats {repeats.tolist()} must be ≥ 1, one per input axis")
    _select(node, ctx, np.tile(_positions(ctx.shape(node, node.input[0])[1:]),
                               tuple(int(r) for r in repeats[1:])))


# --- gathers with the batch axis moved ------------------------------------------------------

MOVED_READERS = ("Transpose", "Gather", "GatherND")


@converter("GatherND")
def gather_nd(node, ctx):
    if node.input[0] not in ctx.moved:
        ctx.fail(node, "GatherND is supported on a tensor whose batch axis a Transpose moved "
                       "(advanced indexing as the dynamo exporter writes it)")
    moved_index(node, ctx)


def moved_index(node, ctx, perm=None):
    """Transpose → Gather/GatherND → Transpose, as the dynamo exporter writes advanced
    indexing (x[:, :, idx]) and nearest-exact resizing: the batch axis is moved away, a leading
    axis gathered with constant indices, the batch axis moved back. Each step is applied to the
    element positions of one sample, with the batch axis kept as an axis of size 1 wherever it
    is; when it is first again, the positions are the table of one select. A tensor with the
    batch axis elsewhere may only be read by these ops."""
    src = node.input[0]
    if src in ctx.moved:
        x, pos, b = ctx.moved[src]
    else:
        x, b = ctx.tensor(node, src), 0
        pos = _positions(ctx.shape(node, src)[1:])[None]
    if node.op_type == "Transpose":
        pos, b = pos.transpose(perm), perm.index(b)
    elif node.op_type == "Gather":
        axis = int(ctx.attr(node, "axis", 0)) % pos.ndim
        if axis == b:
            ctx.fail(node, "gathering along the batch axis is not supported")
        idx = ctx.need_const(node, 1, "indices").astype(np.int64)
        if np.any((idx < -pos.shape[axis]) | (idx >= pos.shape[axis])):
            ctx.fail(node, f"indices outside [−{pos.shape[axis]}, {pos.shape[axis]})")
        idx = np.where(idx < 0, idx + pos.shape[axis], idx)
        pos = np.take(pos, idx, axis=axis)
        b = b if axis > b else b - 1 + idx.ndim
    else:   # GatherND
        if int(ctx.attr(node, "batch_dims", 0)) != 0:
            ctx.fail(node, "GatherND with batch_dims > 0 is not supported")
        idx = ctx.need_const(node, 1, "indices").astype(np.int64)
        k = idx.shape[-1] if idx.ndim else 0
        if not 0 < k <= b:
            ctx.fail(node, f"GatherND indexes {k} leading axes; the batch axis is axis {b}")
        dims = np.array(pos.shape[:k])
        if np.any((idx < -dims) | (idx >= dims)):
            ctx.fail(node, f"indices outside the sizes {dims.tolist()} of the axes they index")
        idx = np.where(idx < 0, idx + dims, idx)
        pos = pos[tuple(idx[..., i] for i in range(k))]
        b = b - k + idx.ndim - 1
    out = node.output[0]
    if b == 0:
        _select_from(node, ctx, x, pos[0], out)
        return
    readers = ctx.readers.get(out, [])
    if out == ctx.graph_output or not readers or \
            any(r.op_type not in MOVED_READERS for r in readers):
        ctx.fail(node, f"the result has the batch axis at position {b}; only a Transpose, Gather "
                       "or GatherND that brings it back first may read it")
    ctx.moved[out] = (x, pos, b)


# --- Resize / Upsample ------------------------------------------------------------------------

def _text(value, default: str) -> str:
    value = default if value is None else value
    return value.decode() if isinstance(value, bytes) else str(value)


def _resize_params(node, ctx):
    """(mode, coordinate transformation, nearest mode, per-axis scales as float32) of a
    Resize/Upsample node, with the batch axis checked."""
    full_in = ctx.shape(node, node.input[0])
    full_out = ctx.shape(node, node.output[0])
    rank = len(full_in)
    mode = _text(ctx.attr(node, "mode"), "nearest")
    if node.op_type == "Upsample":
        coord, nearest = "asymmetric", "floor"
        scales = ctx.attr(node, "scales") if ctx.opset < 9 else \
            ctx.need_const(node, 1, "scales")
        scales = np.asarray(scales, np.float32).reshape(-1)
    else:
        coord = _text(ctx.attr(node, "coordinate_transformation_mode"), "half_pixel")
        nearest = _text(ctx.attr(node, "nearest_mode"), "round_prefer_floor")
        if ctx.attr(node, "antialias", 0):
            ctx.fail(node, "antialias=1 resizes with a wider filter; only antialias=0")
        policy = _text(ctx.attr(node, "keep_aspect_ratio_policy"), "stretch")
        if policy != "stretch":
            ctx.fail(node, f"keep_aspect_ratio_policy {policy!r}; only 'stretch'")
        scales = ctx.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        sizes = ctx.const(node.input[3]) if len(node.input) > 3 and node.input[3] else None
        for k in (2, 3):
            if len(node.input) > k and node.input[k] and ctx.const(node.input[k]) is None:
                ctx.fail(node, f"{('scales', 'sizes')[k - 2]} must be a constant")
        axes = ctx.attr(node, "axes")
        axes = list(range(rank)) if axes is None else [int(a) % rank for a in axes]
        if scales is not None and np.size(scales):
            given = np.asarray(scales, np.float32).reshape(-1)
        else:
            if sizes is None:
                ctx.fail(node, "neither scales nor sizes is given")
            sz = np.asarray(sizes, np.int64).reshape(-1)
            given = np.array([np.float32(s) / np.float32(full_in[a]) for s, a in zip(sz, axes)],
                             np.float32)
        scales = np.ones(rank, np.float32)
        scales[axes] = given
    if len(scales) != rank:
        ctx.fail(node, f"{len(scales)} scales for a rank-{rank} input")
    if not np.all(np.isfinite(scales)) or np.any(scales <= 0):
        ctx.fail(node, f"scales {scales.tolist()} must be finite and > 0")
    if full_out[0] != full_in[0] or scales[0] != 1:
        ctx.fail(node, "resizing the batch axis is not supported")
    return mode, coord, nearest, scales, full_in, full_out


def _source(coord: str, j: np.ndarray, scale, n_in: int, n_out: int, ctx, node) -> np.ndarray:
    """ONNX's coordinate transformation in float32 (as onnxruntime computes it): the input
    coordinate of each output coordinate j."""
    f = np.float32
    j = j.astype(np.float32)
    if coord == "half_pixel":
        return (j + f(0.5)) / f(scale) - f(0.5)
    if coord == "pytorch_half_pixel":
        return (j + f(0.5)) / f(scale) - f(0.5) if n_out > 1 else np.zeros_like(j)
    if coord == "align_corners":
        return j * f(n_in - 1) / f(n_out - 1) if n_out > 1 else np.zeros_like(j)
    if coord == "asymmetric":
        return j / f(scale)
    if coord == "half_pixel_symmetric":
        adjustment = f(n_out) / (f(n_in) * f(scale))
        offset = f(n_in) / f(2) * (f(1) - adjustment)
        return offset + (j + f(0.5)) / f(scale) - f(0.5)
    ctx.fail(node, f"coordinate_transformation_mode {coord!r} is not supported")


def _nearest_index(node, ctx, mode: str, x: np.ndarray, n_in: int) -> np.ndarray:
    if mode == "round_prefer_floor":
        idx = np.where(x - np.floor(x) == np.float32(0.5), np.floor(x), np.round(x))
    elif mode == "round_prefer_ceil":
        idx = np.where(x - np.floor(x) == np.float32(0.5), np.ceil(x), np.round(x))
    elif mode == "floor":
        idx = np.floor(x)
    elif mode == "ceil":
        idx = np.ceil(x)
    else:
        ctx.fail(node, f"nearest_mode {mode!r} is not supported")
    return np.clip(idx, 0, n_in - 1).astype(np.int64)


def _outer_table(per_axis: list[np.ndarray], in_shape) -> np.ndarray:
    """Flat input index of every output element from per-axis input indices (−1: a zero)."""
    grids = np.meshgrid(*per_axis, indexing="ij")
    table = np.ravel_multi_index([np.maximum(g, 0) for g in grids], in_shape)
    zero = np.zeros(table.shape, bool)
    for g in grids:
        zero |= g < 0
    return np.where(zero, -1, table)


def _linear_axis(node, ctx, coord: str, scale, n_in: int, n_out: int):
    """One axis of a linear resize as (select indices, integer kernel, divisor): the input
    coordinate of output j is (j + c)/s for an integer factor s; out[j] = Σ_k K[k]·v[j + k] / D
    with v the input with s − 1 zeros between elements and its edge element repeated past both
    ends (ONNX clamps coordinates to the input)."""
    if coord == "align_corners":
        step = Fraction(n_in - 1, n_out - 1) if n_out > 1 else Fraction(0)
        offset = Fraction(0)
    elif coord in ("half_pixel", "pytorch_half_pixel", "asymmetric"):
        step = 1 / Fraction(float(np.float32(scale)))
        offset = step / 2 - Fraction(1, 2) if coord != "asymmetric" else Fraction(0)
        if coord == "pytorch_half_pixel" and n_out == 1:
            step, offset = Fraction(0), Fraction(0)
    else:
        ctx.fail(node, f"linear resize with coordinate_transformation_mode {coord!r} is not "
                       "supported")
    if step == 0:                    # a single input element (or output) everywhere
        return np.zeros(n_out, np.int64), np.ones(1, np.int64), 1
    if step.numerator != 1:
        ctx.fail(node, f"linear resize from {n_in} to {n_out} elements (input step {step}): "
                       "only integer upsampling factors (step 1/s) are supported; a "
                       "non-integer or downsampling factor interpolates with weights that "
                       "differ from pixel to pixel")
    s = step.denominator
    c = offset * s
    k0, k1 = math.floor(c - s) + 1, math.ceil(c + s) - 1
    weights = [1 - abs(c - k) / s for k in range(k0, k1 + 1)]
    divisor = math.lcm(*(w.denominator for w in weights))
    kernel = np.array([int(w * divisor) for w in weights], np.int64)
    m = np.arange(n_out + len(kernel) - 1) + k0        # zero-inserted coordinate of v[p]
    index = np.where(m % s == 0, np.clip(m // s, 0, n_in - 1), -1)
    return index, kernel, divisor


@converter("Resize", "Upsample")
def resize(node, ctx):
    mode, coord, nearest, scales, full_in, full_out = _resize_params(node, ctx)
    in_shape, out_shape = full_in[1:], full_out[1:]
    if mode == "nearest":
        per_axis = [_nearest_index(node, ctx, nearest, _source(coord, np.arange(o), sc, i, o,
                                                               ctx, node), i)
                    for sc, i, o in zip(scales[1:], in_shape, out_shape)]
        _select(node, ctx, _outer_table(per_axis, in_shape))
        return
    if mode != "linear":
        ctx.fail(node, f"mode {mode!r}: only nearest and linear resizing are supported")
    if len(in_shape) != 3 or in_shape[0] != out_shape[0]:
        ctx.fail(node, "linear resizing is supported over H and W of an (N, C, H, W) tensor")
    axes = [_linear_axis(node, ctx, coord, scales[2 + a], in_shape[1 + a], out_shape[1 + a])
            for a in range(2)]
    kernel = np.outer(axes[0][1], axes[1][1])
    if kernel.max() > MAX_KERNEL_NUMERATOR:
        ctx.fail(node, f"the bilinear kernel's integer weights reach {kernel.max()}, over the "
                       f"{MAX_KERNEL_NUMERATOR} an 8-bit mantissa holds; upsample in steps of at "
                       "most 8× (15× for odd factors)")
    c = in_shape[0]
    table = _outer_table([np.arange(c)] + [a[0] for a in axes], in_shape)
    out = node.output[0]
    x = add_select(ctx, f"{out}/spread", ctx.tensor(node, node.input[0]), table.shape, table,
                   synthetic=True)
    ctx.add(node, "fixed_conv", [x], K=kernel, divisor=int(axes[0][2] * axes[1][2]))
