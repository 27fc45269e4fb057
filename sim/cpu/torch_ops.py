"""Optional torch kernels for sim.cpu's batched runner: exact integer convolutions and matrix
products on float copies of the integers, run by torch's oneDNN / MKL (AVX-512) instead of numpy's
BLAS.

Exactness is the caller's bound (kernels.exact_float_dtype): float32 only when every partial sum
is below 2²⁴, float64 below 2⁵³, so any summation order, blocking or FMA gives the exact integer.
What could still round is a kernel that transforms its operands (Winograd/FFT: NNPACK) or a
reduced-precision mode (bf16/tf32 "fp32_precision", float32_matmul_precision "medium"); every
call here checks for those and answers None when it cannot vouch for the result, and the caller
then takes the numpy path.

Never used by the Lava process models: they call each node kind's `apply` (sim.ops), which is
numpy only (torch hangs in Lava's forked processes). torch is imported lazily, on the first call;
without torch every function answers None.
"""
from __future__ import annotations

import os
from contextlib import contextmanager

import numpy as np

from sim.semantics import V_MAX

_TORCH = None          # the module once imported, False when unavailable or switched off
# conv backends that are plain sums of products (no operand transform): exact under the bound
_EXACT_CONV_BACKENDS = {"Mkldnn", "Slow2d", "SlowDilated2d", "Empty"}


def _torch():
    global _TORCH
    if _TORCH is None:
        _TORCH = False
        if os.environ.get("SFN_CPU_TORCH", "1") != "0":
            try:
                import torch
                _TORCH = torch
            except Exception:  # noqa: BLE001 - any import failure means: no torch path
                _TORCH = False
    return _TORCH


def available() -> bool:
    return bool(_torch())


_MEMO: dict | None = None   # within a session: the precision checks, read once


@contextmanager
def session(threads: int | None):
    """One sim.cpu run: torch's intra-op thread count set to `threads` for the block and then
    restored (None: left alone), and torch's precision settings read once, not per kernel."""
    global _MEMO
    torch = _torch() if threads else None
    outer, _MEMO = _MEMO, {}
    old = torch.get_num_threads() if torch and threads else None
    if old is not None and old != threads:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        _MEMO = outer
        if old is not None and old != threads:
            torch.set_num_threads(old)


def _resolved(*levels: str) -> str:
    """The first fp32_precision setting that is not "none" (conv/matmul → mkldnn → generic)."""
    for p in levels:
        if p != "none":
            return p
    return "none"


def _fp32_strict(torch, op: str) -> bool:
    """No reduced-precision float32 mode is in force for `op` ("conv" or "matmul")."""
    memo = _MEMO
    if memo is None:
        return _read_fp32_strict(torch, op)
    if op not in memo:
        memo[op] = _read_fp32_strict(torch, op)
    return memo[op]


def _read_fp32_strict(torch, op: str) -> bool:
    if os.environ.get("ONEDNN_DEFAULT_FPMATH_MODE", "STRICT").upper() not in ("STRICT", "ANY"):
        return False
    try:
        mk = torch.backends.mkldnn
        p = _resolved(getattr(mk, op).fp32_precision, mk.fp32_precision,
                      torch.backends.fp32_precision)
    except AttributeError:    # older torch: no fp32_precision properties, only the matmul switch
        p = "none"
    if p not in ("none", "ieee"):
        return False
    return op == "conv" or torch.get_float32_matmul_precision() == "highest"


def _tensor(torch, a: np.ndarray, dtype):
    a = np.asarray(a, dtype=dtype)
    if not a.flags.writeable or min(a.strides, default=0) < 0:
        a = a.copy()
    return torch.from_numpy(a)


def conv2d(x: np.ndarray, weight: np.ndarray, stride, pads, dilation, groups, dtype,
           bias: np.ndarray | None = None) -> np.ndarray | None:
    """conv2d of (B, C, H, W) exact integers (any dtype) by float `weight` (C_o, C_i/g, kh, kw),
    plus integer `bias` (C_o,), in `dtype`; None when torch is missing or could round."""
    torch = _torch()
    if not torch or not _fp32_strict(torch, "conv"):
        return None
    xt = _tensor(torch, x, dtype)
    wt = _tensor(torch, weight, dtype)
    top, left, bottom, right = (int(p) for p in pads)
    if (top, left) == (bottom, right):
        padding = [top, left]
    else:
        xt = torch.nn.functional.pad(xt, (left, right, top, bottom))
        padding = [0, 0]
    # channels-last is oneDNN's native layout: no reorder in or out, and the output stays
    # channels-last for the next layer. One input channel is the exception: oneDNN's direct
    # kernel for a plain (NCHW) image is twice as fast as its channels-last one (a first
    # layer on a grey image: 0.29 against 0.60 ms on the digits CNN's batch of 256).
    if xt.shape[1] > 1:
        xt = xt.contiguous(memory_format=torch.channels_last)
    else:
        xt = xt.contiguous()
        wt = wt.contiguous()
    stride, dilation, groups = [int(s) for s in stride], [int(d) for d in dilation], int(groups)
    if not _exact_backend(torch, xt, wt, stride, padding, dilation, groups):
        return None
    bt = None if bias is None else _tensor(torch, np.reshape(bias, -1), dtype)
    # tensors made from numpy arrays never require grad: no autograd graph is recorded
    return torch.nn.functional.conv2d(xt, wt, bt, stride, padding, dilation, groups).numpy()


_BACKENDS: dict[tuple, bool] = {}     # the answers of _exact_backend


def _switches(torch) -> tuple:
    """The global switches torch's convolution choice reads (oneDNN, NNPACK, XNNPACK)."""
    c = torch._C
    return tuple(getattr(c, f, lambda: None)() for f in
                 ("_get_mkldnn_enabled", "_get_nnpack_enabled", "_is_xnnpack_enabled"))


def _exact_backend(torch, xt, wt, stride, padding, dilation, groups) -> bool:
    """torch would run this convolution with a kernel that is a plain sum of products. The
    choice depends on the operands' shapes, strides and dtype, the geometry and the global
    switches: asked once per such key."""
    key = (tuple(xt.shape), xt.stride(), xt.dtype, tuple(wt.shape), wt.stride(), tuple(stride),
           tuple(padding), tuple(dilation), groups, _switches(torch))
    ok = _BACKENDS.get(key)
    if ok is None:
        try:
            backend = torch._C._select_conv_backend(xt, wt, None, stride, padding, dilation,
                                                    False, [0, 0], groups, None)
            ok = str(backend).rsplit(".", 1)[-1] in _EXACT_CONV_BACKENDS
        except Exception:  # noqa: BLE001 - a torch without this query: cannot vouch
            ok = False
        if len(_BACKENDS) > 1024:
            _BACKENDS.clear()
        _BACKENDS[key] = ok
    return ok


def dense(x: np.ndarray, weight: np.ndarray, dtype,
          bias: np.ndarray | None = None) -> np.ndarray | None:
    """(B, F_in) exact integers × float weight (F_out, F_in)ᵀ + bias in `dtype`; None as conv2d."""
    torch = _torch()
    if not torch or not _fp32_strict(torch, "matmul"):
        return None
    xt = _tensor(torch, x, dtype)
    wt = _tensor(torch, weight, dtype)
    if bias is None:
        return torch.matmul(xt, wt.T).numpy()
    return torch.addmm(_tensor(torch, np.reshape(bias, -1), dtype), xt, wt.T).numpy()


def fire_once(current: np.ndarray, offset: np.ndarray, theta: np.ndarray, lo: int, hi: int,
              dtype, saturate: bool, reciprocal: bool = False):
    """kernels.FirePlan's float arithmetic (v = current + offset, saturate, floor(v/θ),
    clip) as in-place torch operations; offset None: `current` is v, overwritten. reciprocal:
    `theta` holds fl(1/θ) and v is multiplied by it (Fire.reciprocal's form).
    (n, saturations) or None without torch."""
    torch = _torch()
    if not torch:
        return None
    v = _tensor(torch, current, dtype) if offset is None else \
        torch.add(_tensor(torch, current, dtype), torch.from_numpy(offset))
    sat = 0
    if saturate:
        sat = int(torch.count_nonzero(v.abs() > V_MAX))
        if sat:
            v.clamp_(-V_MAX, V_MAX)
    return _fire(v, torch.from_numpy(theta), lo, hi, reciprocal).numpy(), sat


def _fire(v, factor, lo: int, hi: int, reciprocal: bool):
    """clip(floor(v / θ), lo, hi) in place on the tensor v; `factor` θ, or fl(1/θ) to multiply
    by (reciprocal)."""
    return (v.mul_(factor) if reciprocal else v.div_(factor)).floor_().clamp_(lo, hi)


def sum_pool(x: np.ndarray, kernel, stride, pads, out_hw, dtype) -> np.ndarray | None:
    """Window sums (avg_pool2d with divisor 1: a sum, then a division by one) in `dtype`, which
    the caller chose exact for kh·kw·max|x|; None without torch or for padding it cannot take."""
    torch = _torch()
    top, left, bottom, right = (int(p) for p in pads)
    kernel, stride = [int(k) for k in kernel], [int(s) for s in stride]
    if not torch or (top, left) != (bottom, right) or 2 * top > kernel[0] or 2 * left > kernel[1]:
        return None
    out = torch.nn.functional.avg_pool2d(_tensor(torch, x, dtype), kernel, stride, [top, left],
                                         ceil_mode=False, divisor_override=1)
    return out.numpy() if tuple(out.shape[-2:]) == tuple(out_hw) else None


# --- int8 convolutions (oneDNN, VNNI) -------------------------------------------------------
# A convolution whose input is a non-negative integer ≤ 255 and whose weights are int8 runs as
# oneDNN's u8·s8 → s32 convolution (torch.ops.onednn.qconv2d_pointwise, the kernel torch's own
# int8 inference uses), with scales 1 and 2^exp and a float32 output: dst = 2^exp·acc + bias.
# The integer accumulation is exact; the float32 output is exact under the caller's bound
# (< 2²⁴, the same bound the float32 path needs). One thing could break it: CPUs without VNNI
# multiply u8·s8 pairs into a saturating int16 sum. A probe with the extreme operands
# (255·(−128) on every tap) against float64 decides once per process; any failure or any
# exception from these private ops turns the path off and the float32 kernel runs instead.
# oneDNN's u8·s8 kernels take input channels in groups of 4 (VNNI sums four products): a
# convolution with C_in not a multiple of 4 and one group gets zero input channels added (zero
# weights too). On the digits CNN's one-channel first layer that is not faster than the float32
# kernel by itself (both are slow there, README "Speed"), but it fires its neuron on its own
# output and hands the next layer channels-last spikes: a whole outputs-only run on a batch of
# 256 is 4–10% faster than with the float32 first layer (paired runs, one and two threads).
INT8_MIN_TAPS = 32     # C_in/groups (so padded) · kh · kw below this: float32 is faster
INT8_CHANNELS = 4
_INT8_OK: bool | None = None


def _qconv(torch, x, packed, scales, stride, padding, dilation, groups, bias, zp=None):
    if zp is None:
        zp = torch.zeros(len(scales), dtype=torch.int64)
    return torch.ops.onednn.qconv2d_pointwise.default(x, 1.0, 0, packed, scales, zp, bias,
                                                      stride, padding, dilation, groups, 1.0, 0,
                                                      torch.float32, "none", [], "")


def _int8_exact(torch) -> bool:
    global _INT8_OK
    if _INT8_OK is None:
        _INT8_OK = False
        if os.environ.get("SFN_CPU_INT8", "1") == "0":
            return False
        try:
            rng = np.random.default_rng(0)
            cases = [(np.full((3, 16, 5, 5), 255), np.full((8, 16, 3, 3), -128), 0),
                     (np.full((3, 16, 5, 5), 255), np.full((8, 16, 3, 3), 127), -1),
                     (rng.integers(0, 256, (3, 16, 5, 5)), rng.integers(-128, 128, (8, 16, 3, 3)), 1)]
            ok = True
            for xv, wv, exp in cases:
                x = torch.from_numpy(xv.astype(np.uint8)).contiguous(memory_format=torch.channels_last)
                w = torch.from_numpy(wv.astype(np.int8))
                scales = torch.full((8,), 2.0 ** exp)
                bias = torch.arange(8, dtype=torch.float32) - 4
                packed = torch.ops.onednn.qconv_prepack(w, scales, 1.0, 0, [1, 1], [1, 1],
                                                        [1, 1], 1, None)
                got = _qconv(torch, x, packed, scales, [1, 1], [1, 1], [1, 1], 1, bias)
                want = torch.nn.functional.conv2d(x.double(), w.double() * 2.0 ** exp,
                                                  bias.double(), 1, 1)
                ok = ok and got.dtype == torch.float32 and bool((got.double() == want).all())
            _INT8_OK = ok
        except Exception:  # noqa: BLE001 - private ops missing or refusing: no int8 path
            _INT8_OK = False
    return _INT8_OK


def int8_state() -> bool | None:
    """The int8 probe's verdict: None before it ran, then True or False."""
    return _INT8_OK


def pack_int8_conv(weight: np.ndarray, exp: int, stride, pads, dilation, groups):
    """oneDNN's packed form of an integer conv weight (C_o, C_i/g, kh, kw), or None when the
    int8 path does not apply (no torch, the probe failed, weights beyond int8, asymmetric
    padding, too few taps). Made once per node by the caller."""
    torch = _torch()
    top, left, bottom, right = (int(p) for p in pads)
    if not torch or (top, left) != (bottom, right) or weight.ndim != 4:
        return None
    weight = np.asarray(weight, dtype=np.int64)
    cin = weight.shape[1]
    if int(groups) == 1 and cin % INT8_CHANNELS:
        cin += INT8_CHANNELS - cin % INT8_CHANNELS
        weight = np.concatenate([weight, np.zeros((weight.shape[0], cin - weight.shape[1])
                                                  + weight.shape[2:], np.int64)], axis=1)
    if cin * int(np.prod(weight.shape[2:])) < INT8_MIN_TAPS:
        return None
    # a common power-of-two factor moves into the scale: Lava's 8-bit mixed-sign weights are
    # stored as even 9-bit values (2·k, |k| ≤ 127)
    bits = int(np.bitwise_or.reduce(np.abs(weight), axis=None))
    shift = (bits & -bits).bit_length() - 1 if bits else 0
    weight, exp = weight >> shift, int(exp) + shift
    if weight.min(initial=0) < -128 or weight.max(initial=0) > 127 or not _int8_exact(torch):
        return None
    params = ([int(s) for s in stride], [top, left], [int(d) for d in dilation], int(groups))
    scales = torch.full((weight.shape[0],), 2.0 ** int(exp))
    try:
        packed = torch.ops.onednn.qconv_prepack(torch.from_numpy(weight.astype(np.int8)),
                                                scales, 1.0, 0, *params, None)
    except Exception:  # noqa: BLE001 - a geometry oneDNN's int8 kernel refuses: float path
        return None
    return packed, scales, params, cin * int(groups), torch.zeros(len(scales), dtype=torch.int64)


def conv2d_int8(x: np.ndarray, packed, bias: np.ndarray | None) -> np.ndarray | None:
    """The packed conv of x (B, C, H, W), exact integers in [0, 255] in any dtype, plus the
    float32 `bias` (C_o,): a float32 array (channels-last memory), or None if oneDNN refuses."""
    torch = _torch()
    if not torch:
        return None
    bt = None if bias is None else _tensor(torch, np.reshape(bias, -1), np.float32)
    out = _conv_int8(torch, x, packed, bt)
    return None if out is None else out.numpy()


def conv_fire_int8(x: np.ndarray, packed, bias, factor, lo: int, hi: int,
                   reciprocal: bool) -> np.ndarray | None:
    """conv2d_int8 whose float32 output, v = I + b + θ//2 (+ 1/2) by its `bias` (a float32
    tensor), goes straight on through the one-pass fire (kernels.FirePlan without saturation;
    `factor` a tensor): the spikes as a float32 array, or None if oneDNN refuses."""
    torch = _torch()
    out = _conv_int8(torch, x, packed, bias) if torch else None
    return None if out is None else _fire(out, factor, lo, hi, reciprocal).numpy()


def _conv_int8(torch, x, packed, bt):
    packed, scales, (stride, padding, dilation, groups), cin, zp = packed
    # one pass: the cast to uint8 into the channels-last layout oneDNN's kernel takes (numpy's
    # cast is twice as fast as torch's copy_ here), channels beyond x's own zero
    nhwc = np.asarray(x).transpose(0, 2, 3, 1)
    if nhwc.shape[-1] == cin:
        u8 = nhwc.astype(np.uint8, order="C")
    else:
        u8 = np.zeros(nhwc.shape[:-1] + (cin,), np.uint8)
        u8[..., :nhwc.shape[-1]] = nhwc
    xt = torch.from_numpy(u8).permute(0, 3, 1, 2)
    try:
        return _qconv(torch, xt, packed, scales, stride, padding, dilation, groups, bt, zp)
    except Exception:  # noqa: BLE001 - refused at run time: the caller takes the float path
        return None
