"""Vectorized integer kernels on (batch, channels, height, width) int64 arrays.

Convolutions run as one BLAS matrix product per group over float32 (or float64) copies of the
integers. That is exact: the product is taken in float32 only when every partial sum is provably
below 2²⁴ (Σ|W|·max|x| < 2²⁴), otherwise in float64, exact below 2⁵³.
"""
from __future__ import annotations

import numpy as np

F32_EXACT = 2 ** 24


def exact_float_dtype(bound: float) -> type:
    return np.float32 if bound < F32_EXACT else np.float64


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
    """Integer 2-D convolution (cross-correlation, ONNX semantics), returns int64 (B, Co, Ho, Wo)."""
    b, c = x.shape[:2]
    co, cg, kh, kw = weight.shape
    ho, wo = out_hw
    xp = _pad(x.astype(dtype, copy=False), pads)
    # patches: (C, kh·kw, B, Ho, Wo) so that each group's block is a contiguous (K, B·P) matrix
    patches = np.stack([w.transpose(1, 0, 2, 3) for w in
                        _windows(xp, (kh, kw), stride, dilation, (ho, wo))], axis=1)
    patches = patches.reshape(groups, cg * kh * kw, b * ho * wo)
    wmat = weight.astype(dtype).reshape(groups, co // groups, cg * kh * kw)
    out = np.matmul(wmat, patches)  # (groups, Co/g, B·Ho·Wo)
    out = out.reshape(co, b, ho, wo).transpose(1, 0, 2, 3)
    return np.rint(out).astype(np.int64)


def dense(x: np.ndarray, weight: np.ndarray, dtype=np.float64) -> np.ndarray:
    """(B, F_in) × W(F_out, F_in)ᵀ → int64 (B, F_out)."""
    out = x.astype(dtype, copy=False) @ weight.astype(dtype).T
    return np.rint(out).astype(np.int64)


def sum_pool(x: np.ndarray, kernel, stride, pads, out_hw) -> np.ndarray:
    xp = _pad(x, pads)
    total = np.zeros(x.shape[:2] + tuple(out_hw), dtype=np.int64)
    for w in _windows(xp, kernel, stride, (1, 1), out_hw):
        total += w
    return total


def max_pool(x: np.ndarray, kernel, stride, pads, dilation, out_hw) -> np.ndarray:
    lowest = np.iinfo(np.int64).min
    xp = _pad(x, pads, value=lowest)
    out = None
    for w in _windows(xp, kernel, stride, dilation, out_hw):
        out = w.copy() if out is None else np.maximum(out, w)
    return out


def conv_fanout_count(nonzero: np.ndarray, weight_shape, stride, pads, dilation, groups,
                      out_hw) -> int:
    """Synaptic operations of a conv layer: Σ over outputs of nonzero inputs in its receptive
    field, i.e. every nonzero input counted once per output it reaches."""
    co, cg, kh, kw = weight_shape
    ones = np.ones((groups, cg, kh, kw), dtype=np.float32)
    per_group = conv2d(nonzero, ones, stride, pads, dilation, groups, out_hw, np.float64)
    return int(per_group.sum()) * (co // groups)
