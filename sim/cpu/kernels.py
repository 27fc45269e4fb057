"""Vectorized integer kernels on (batch, channels, height, width) arrays of integers.

Convolutions and matrix products run over float32 (or float64) copies of the integers. That is
exact: the product is taken in float32 only when every partial sum is provably below 2²⁴
(Σ|W|·max|x| < 2²⁴), otherwise in float64, exact below 2⁵³. The `*_exact` kernels return those
float arrays as they are (integer values, no int64 round trip) so sim.cpu's batched runner can
feed them to the next layer; the plain ones return int64 like the contract.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from sim import semantics

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
    return float(max(x.max(), -x.min()))


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


def conv2d_exact(x: np.ndarray, weight: np.ndarray, stride, pads, dilation, groups, out_hw,
                 use_torch: bool = False, bias: np.ndarray | None = None) -> np.ndarray:
    """conv2d of exact integers `x` (any dtype) by the float `weight` (integers, maybe times a
    power of two), plus the optional per-channel integer `bias` (C_out,), in weight's dtype,
    which the caller chose exact for Σ|W|·max|x| + max|bias|. Returns that float array.
    `use_torch`: try torch's oneDNN kernel first (sim/cpu/torch_ops.py)."""
    if use_torch:
        from sim.cpu import torch_ops
        out = torch_ops.conv2d(x, weight, stride, pads, dilation, groups, weight.dtype, bias)
        if out is not None:
            return out
    out = conv2d_numpy(x, weight, stride, pads, dilation, groups, out_hw)
    if bias is not None:
        out += bias.astype(weight.dtype).reshape(1, -1, 1, 1)
    return out


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


def dense_exact(x: np.ndarray, weight: np.ndarray, use_torch: bool = False,
                bias: np.ndarray | None = None) -> np.ndarray:
    """dense of exact integers by the float `weight`, plus `bias`, in its dtype (as
    conv2d_exact)."""
    if use_torch:
        from sim.cpu import torch_ops
        out = torch_ops.dense(x, weight, weight.dtype, bias)
        if out is not None:
            return out
    out = x.astype(weight.dtype, copy=False) @ weight.T
    if bias is not None:
        out += bias.astype(weight.dtype)
    return out


def sum_pool(x: np.ndarray, kernel, stride, pads, out_hw, dtype=np.int64,
             use_torch: bool = False) -> np.ndarray:
    """Window sums in `dtype` (int64, or a float dtype exact for kh·kw·max|x|)."""
    if use_torch and dtype is not np.int64:
        from sim.cpu import torch_ops
        out = torch_ops.sum_pool(x, kernel, stride, pads, out_hw, dtype)
        if out is not None:
            return out
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


def encode_input_exact(x: np.ndarray, inv_scale, lo: int, hi: int) -> np.ndarray:
    """semantics.encode_input left in float32 (its values are float32 integers already, and the
    int64 cast is skipped) when lo and hi are float32-exact, else int64."""
    if max(abs(lo), abs(hi)) >= F32_EXACT:
        return semantics.encode_input(x, inv_scale, lo, hi)
    z = np.asarray(x, dtype=np.float32) * np.float32(inv_scale)
    z += np.float32(0.5)
    np.floor(z, out=z)
    np.maximum(z, np.float32(lo), out=z)
    np.minimum(z, np.float32(hi), out=z)
    return z


class Fire:
    """The constants of one one-pass neuron (bias, θ, levels) in the forms FirePlan uses: the offset b + θ//2 (int64), its largest magnitude, the largest θ, and float copies
    made once per dtype."""

    def __init__(self, bias: np.ndarray, threshold: np.ndarray, lo: int, hi: int):
        self.bias, self.lo, self.hi = bias, int(lo), int(hi)
        self.theta = np.asarray(threshold, dtype=np.int64)
        self.offset = np.asarray(bias, dtype=np.int64) + self.theta // 2
        self.offset_max = float(np.abs(self.offset).max(initial=0))
        self.theta_max = int(self.theta.max(initial=1))
        self.levels = float(max(abs(self.lo), abs(self.hi)))
        self._cast: dict = {}

    def dtype(self, vbound: float):
        """The float dtype in which the fire is exact for |I + b + θ//2| ≤ vbound, or None.

        v = I + b + θ//2 is exact in float32 when vbound < 2²⁴, and floor(v/θ) of the
        correctly rounded float32 quotient is exact when |v| + θ < 2²⁴ (a quotient that is not
        an integer lies at least 1/θ from the next integer, more than half an ulp away); after
        saturation |v| ≤ 2²³−1, so θ ≤ 2²³ suffices. float64: vbound < 2⁵³ (and θ < 2⁵²).
        """
        if vbound < F32_EXACT and self.theta_max <= 2 ** 23 and self.levels < F32_EXACT:
            return np.float32
        if vbound < F64_EXACT and self.theta_max < F64_EXACT // 2:
            return np.float64
        return None

    @staticmethod
    def reciprocal(vbound: float, dtype) -> bool:
        """Whether floor(v/θ) may be taken as floor((v + 1/2) · fl(1/θ)), a multiplication
        (several times cheaper than a division; this fire is bound by the divider).

        Exact in float32 for |v| + 1/2 < 2²²: with v = nθ + m (0 ≤ m < θ), (v + 1/2)/θ lies
        at least 1/(2θ) inside [n, n + 1), and the two roundings (of 1/θ and of the product)
        move it by at most |v + 1/2|/θ · 2⁻²³·(1 + 2⁻²⁴) < 1/(2θ). v + 1/2 itself is exact, and
        |v| < 2²² ≤ the 24-bit state limit, so nothing saturates."""
        return np.dtype(dtype) == np.float32 and vbound + 0.5 < 2 ** 22

    def cast(self, dtype, reciprocal: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(offset, θ) as `dtype` arrays (exact: both below the dtype's bound by `dtype()`);
        reciprocal: (offset + 1/2, fl(1/θ)), the operands of the multiplying form."""
        key = (np.dtype(dtype), reciprocal)
        if key not in self._cast:
            if reciprocal:
                self._cast[key] = ((self.offset + 0.5).astype(dtype),
                                   (1.0 / self.theta).astype(dtype))
            else:
                self._cast[key] = (self.offset.astype(dtype), self.theta.astype(dtype))
        return self._cast[key]


class FirePlan:
    """semantics.fire_once in float arithmetic on exact integers, for a current bounded by
    `bound`, with everything that depends only on that bound decided once: the dtype
    (Fire.dtype's; None: the int64 definition), the multiplying or dividing form
    (Fire.reciprocal), the operands in that dtype, whether 24-bit saturation is possible.
    `biased`: the current will already hold v = I + b + θ//2 (+ 1/2 in the multiplying form),
    as a product that added Fire.cast's offset as its bias hands it over."""

    def __init__(self, fire: Fire, bound: float, biased: bool = False):
        self.fire, self.biased = fire, biased
        self.vbound = bound if biased else bound + fire.offset_max
        self.dtype = fire.dtype(self.vbound)
        self.reciprocal = self.dtype is not None and Fire.reciprocal(self.vbound, self.dtype)
        self.offset = self.factor = None
        if self.dtype is not None:
            self.offset, self.factor = fire.cast(self.dtype, self.reciprocal)
        self.saturate = self.vbound > semantics.V_MAX

    def apply(self, current: np.ndarray, use_torch: bool = False):
        """(n, saturations); n in the plan's float dtype (int64 without one). A biased current
        is overwritten."""
        fire, dtype = self.fire, self.dtype
        if self.biased and (dtype is None or np.dtype(dtype) != current.dtype):
            raise ValueError(f"biased current in {current.dtype}, exact dtype is {dtype}")
        if dtype is None:
            return semantics.fire_once(np.asarray(current, dtype=np.int64), fire.bias,
                                       fire.theta, fire.lo, fire.hi)
        offset = None if self.biased else self.offset
        if use_torch:   # the same IEEE operations, in place, fewer passes over memory
            from sim.cpu import torch_ops
            done = torch_ops.fire_once(current, offset, self.factor, fire.lo, fire.hi, dtype,
                                       self.saturate, self.reciprocal)
            if done is not None:
                return done
        v = current if offset is None else np.add(current, offset, dtype=dtype)
        sat = 0
        if self.saturate:
            sat = int(np.count_nonzero(np.abs(v) > semantics.V_MAX))
            if sat:
                np.clip(v, -semantics.V_MAX, semantics.V_MAX, out=v)
        (np.multiply if self.reciprocal else np.divide)(v, self.factor, out=v)
        np.floor(v, out=v)
        np.maximum(v, dtype(fire.lo), out=v)
        np.minimum(v, dtype(fire.hi), out=v)
        return v, sat


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
