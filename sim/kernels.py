"""Vectorized integer kernels on (batch, channels, height, width) arrays of integers: the numpy
arithmetic of the integer contract, shared by every backend (the node kinds' `evaluate`, the
Lava process models, sim.cpu's fallbacks).

Convolutions and matrix products run over float32 (or float64) copies of the integers. That is
exact: the product is taken in float32 only when every partial sum is provably below 2²⁴
(Σ|W|·max|x| < 2²⁴), otherwise in float64, exact below 2⁵³. The plain kernels return int64 like
the contract; `conv2d_numpy` returns the float array (sim.cpu feeds it to the next layer).
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

F32_EXACT = 2 ** 24
F64_EXACT = 2 ** 53


def exact_float_dtype(bound: float) -> type:
    return np.float32 if bound < F32_EXACT else np.float64


def exact_dtype(bound: float):
    """The narrowest float dtype holding every integer of magnitude ≤ `bound` and every partial
    sum of them (float32 below 2²⁴, float64 below 2⁵³), or None: int64 arithmetic needed."""
    if bound < F32_EXACT:
        return np.float32
    return np.float64 if bound < F64_EXACT else None


def max_abs(x: np.ndarray) -> float:
    """max |x| without a temporary array (0 for an empty one)."""
    if x.size == 0:
        return 0.0
    return max(float(x.max()), -float(x.min()))


def _pad(x: np.ndarray, pads, value=0) -> np.ndarray:
    top, left, bottom, right = pads
    if not any(pads):
        return x
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=value)


def _windows(x: np.ndarray, kernel, stride, dilation, out_hw):
    """Yield the (B, C, Ho, Wo) slice of x under each kernel tap, in row-major tap order."""
    (kh, kw), (sh, sw), (dh, dw), (ho, wo) = kernel, stride, dilation, out_hw
    for i in range(kh):
        for j in range(kw):
            yield x[:, :, i * dh: i * dh + sh * (ho - 1) + 1: sh, j * dw: j * dw + sw * (wo - 1) + 1: sw]


def conv2d(x: np.ndarray, weight: np.ndarray, stride, pads, dilation, groups, out_hw,
           dtype=np.float64) -> np.ndarray:
    """Integer 2-D convolution (cross-correlation, ONNX semantics): int64 (B, Co, Ho, Wo)."""
    out = conv2d_numpy(x, weight.astype(dtype), stride, pads, dilation, groups, out_hw)
    # products and sums of integers are exact in this dtype (see exact_float_dtype): no rounding
    return out.astype(np.int64)



def conv2d_numpy(x: np.ndarray, weight: np.ndarray, stride, pads, dilation, groups,
                 out_hw) -> np.ndarray:
    """The numpy convolution in weight's float dtype (B, Co, Ho, Wo).

    Works channels-last: the patches of an (B, H, W, C) view become one (B·Ho·Wo, C·kh·kw) matrix
    per group, multiplied by the kernel. The result is an NCHW *view* of channels-last memory, so
    a following convolution finds its input already channels-last and copies nothing.
    """
    dtype = weight.dtype
    b = x.shape[0]
    co, cg, kh, kw = weight.shape
    (sh, sw), (dh, dw), (ho, wo) = stride, dilation, out_hw
    top, left, bottom, right = pads
    h, w = x.shape[2:]
    xs = np.zeros((b, h + top + bottom, w + left + right, x.shape[1]), dtype=dtype)
    xs[:, top:top + h, left:left + w] = x.transpose(0, 2, 3, 1)
    win = sliding_window_view(xs, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(1, 2))
    win = win[:, : sh * (ho - 1) + 1: sh, : sw * (wo - 1) + 1: sw, :, ::dh, ::dw]  # B,Ho,Wo,C,kh,kw
    cog = co // groups
    if groups > 1 and cg == 1:   # depthwise: one multiply-add per tap, no patch matrix
        wd = weight.reshape(groups, cog, kh * kw)
        out = np.einsum("nhwck,cok->nhwco", win.reshape(b, ho, wo, groups, kh * kw), wd,
                        optimize=True).reshape(b, ho, wo, co)
    else:
        outs = []
        # (kh, kw, C) patch order keeps the channels — contiguous in channels-last memory —
        # innermost, so building the patch matrix is a run of contiguous copies
        win = win.transpose(0, 1, 2, 4, 5, 3)
        for g in range(groups):
            patches = win[..., g * cg:(g + 1) * cg].reshape(b * ho * wo, kh * kw * cg)
            wmat = weight[g * cog:(g + 1) * cog].transpose(0, 2, 3, 1).reshape(cog, kh * kw * cg)
            outs.append(patches @ wmat.T)
        out = (outs[0] if groups == 1 else np.concatenate(outs, axis=1)).reshape(b, ho, wo, co)
    return out.transpose(0, 3, 1, 2)


def dense(x: np.ndarray, weight: np.ndarray, dtype=np.float64) -> np.ndarray:
    """(B, F_in) × W(F_out, F_in)ᵀ → int64 (B, F_out)."""
    return (x.astype(dtype, copy=False) @ weight.astype(dtype).T).astype(np.int64)


def sum_pool(x: np.ndarray, kernel, stride, pads, out_hw, dtype=np.int64) -> np.ndarray:
    """Window sums in `dtype` (int64, or a float dtype exact for kh·kw·max|x|)."""
    xp = _pad(x, pads)
    total = None
    for w in _windows(xp, kernel, stride, (1, 1), out_hw):
        if total is None:
            total = w.astype(dtype)
        else:
            np.add(total, w, out=total, casting="unsafe")
    return total


def max_pool(x: np.ndarray, kernel, stride, pads, dilation, out_hw) -> np.ndarray:
    lowest = -np.inf if np.issubdtype(x.dtype, np.floating) else np.iinfo(x.dtype).min
    xp = _pad(x, pads, value=lowest)
    out = None
    for w in _windows(xp, kernel, stride, dilation, out_hw):
        out = w.copy() if out is None else np.maximum(out, w, out=out)
    return out


def fanout_map(in_hw, kernel, stride, pads, dilation, out_hw) -> np.ndarray:
    """F[h, w] = how many output positions input pixel (h, w) reaches through the window."""
    fan = np.zeros(tuple(in_hw), dtype=np.int64)
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    top, left = pads[0], pads[1]
    ho, wo = np.arange(out_hw[0]), np.arange(out_hw[1])
    for i in range(kh):
        rows = ho * sh + i * dh - top
        rows = rows[(rows >= 0) & (rows < in_hw[0])]
        for j in range(kw):
            cols = wo * sw + j * dw - left
            cols = cols[(cols >= 0) & (cols < in_hw[1])]
            np.add.at(fan, np.ix_(rows, cols), 1)
    return fan


def nonzero_counts(x: np.ndarray) -> np.ndarray:
    """Nonzero entries of a (B, C, ...) batch per position: summed over batch and channels,
    np.count_nonzero(x, axis=(0, 1)). Computed on the mask in its memory order (channels-last
    included), as one reduction over the batch of contiguous rows: several times faster."""
    if x.ndim < 2:
        return np.count_nonzero(x, axis=0)
    mask = np.not_equal(x, 0)
    perm = sorted(range(x.ndim), key=lambda a: -mask.strides[a])     # outermost axis first
    view = mask.transpose(perm)
    if perm[0] != 0 or not view.flags.c_contiguous or len(x) == 0:
        return np.count_nonzero(x, axis=(0, 1))
    per = np.add.reduce(view.reshape(len(x), -1).view(np.uint8), axis=0, dtype=np.intp)
    rest = perm[1:]
    per = per.reshape(view.shape[1:]).sum(axis=rest.index(1))    # over the channels
    rest = [a for a in rest if a != 1]
    return per.transpose(np.argsort(rest))


def window_synops(x: np.ndarray, fan: np.ndarray, per_input: int,
                  counts: np.ndarray | None = None) -> int:
    """Synaptic operations of a windowed layer: every nonzero input times the outputs it reaches
    (`fan` per position) times the output channels each input channel feeds (`per_input`).
    `counts`: x's nonzero_counts, if the caller has them."""
    counts = nonzero_counts(x) if counts is None else counts
    return int((counts * fan).sum()) * per_input
