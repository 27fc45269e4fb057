"""Optional torch kernels for sim.cpu's batched runner: exact integer convolutions and matrix
products — on float copies of the integers through torch's oneDNN / MKL, or as oneDNN's u8·s8
int8 kernels where the operands lie in the CPU's exact class (below) — and the sums, pools and
fires between them, on tensors that stay tensors from node to node.

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
import sys
from contextlib import contextmanager

import numpy as np

from sim.cpu import fused
from sim.semantics import V_MAX

_TORCH = None          # the module once imported, False when unavailable or switched off
# conv backends that are plain sums of products (no operand transform): exact under the bound
_EXACT_CONV_BACKENDS = {"Mkldnn", "Slow2d", "SlowDilated2d", "Empty"}


# glibc's malloc serves large blocks with fresh mmaps and returns freed memory to the system, so
# every run of a program touches new pages for its tensors (on the digits CNN at batch 256,
# ~600 page faults a run, a quarter of its time). A fixed mmap threshold and a high trim
# threshold keep freed blocks in the heap for the next run, as onnxruntime's arena does; the
# process then keeps its peak heap. SFN_CPU_MALLOC=0 leaves malloc alone.
MMAP_THRESHOLD = 64 * 2 ** 20
TRIM_THRESHOLD = 256 * 2 ** 20


def _keep_heap() -> bool:
    """Set glibc's M_MMAP_THRESHOLD and M_TRIM_THRESHOLD (above); False where that is not
    glibc or switched off."""
    if os.environ.get("SFN_CPU_MALLOC", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, MMAP_THRESHOLD)) and \
            bool(libc.mallopt(m_trim_threshold, TRIM_THRESHOLD))
    except (OSError, AttributeError):     # not glibc
        return False


def _torch():
    global _TORCH
    if _TORCH is None:
        _TORCH = False
        _keep_heap()
        if os.environ.get("SFN_CPU_TORCH", "1") != "0":
            try:
                import torch
                _TORCH = torch
                _DTYPES.update({np.dtype(k): getattr(torch, k) for k in
                                ("float32", "float64", "int64", "int32", "uint8", "int8",
                                 "int16")})
                _NP_DTYPES.update({v: k for k, v in _DTYPES.items()})
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


# below this many multiply-accumulates per run the default runs on one thread: waking a second
# thread costs more than it saves on small batches
PARALLEL_MACS = 2 ** 25
# nor below this many per node: a graph of many small operations (a transformer's elementwise
# passes, products and tables) pays a second thread's wake-up at every operation (with OpenMP's
# passive waiting, a futex wake each time) and runs slower on two threads than on one
PARALLEL_NODE_MACS = 2 ** 22


def _running() -> int:
    """Runnable threads on the machine now (/proc/loadavg's 4th field, this one included), or
    0 when unknown."""
    try:
        with open("/proc/loadavg", encoding="ascii") as f:
            return int(f.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return 0


def default_threads(macs: float, nodes: int = 1) -> int | None:
    """The thread count sim.cpu.run uses when none is given, for a run of `macs`
    multiply-accumulates over a graph of `nodes` nodes: one thread below PARALLEL_MACS or below
    PARALLEL_NODE_MACS per node; otherwise torch's own setting (None), except where OpenMP
    spins (OMP_WAIT_POLICY not passive: torch was imported before sim) and the machine's cores
    are taken: then as many as are free, at least one."""
    torch = _torch()
    if not torch:
        return None
    n = torch.get_num_threads()
    if n <= 1:
        return None
    if macs < PARALLEL_MACS or macs < PARALLEL_NODE_MACS * max(nodes, 1):
        return 1
    import sim
    if sim.OMP_PASSIVE:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else n
    running = _running()
    free = cores - (running - 1) if running else n
    return max(1, min(n, free))


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


def tensor(a, dtype=None):
    """A torch tensor of the value `a` (a numpy array or a tensor; numpy memory is shared, not
    copied), cast to the numpy `dtype` when given. A read-only or negatively strided array is
    copied first (torch takes neither)."""
    torch = _torch()
    if isinstance(a, torch.Tensor):
        want = None if dtype is None else _DTYPES[np.dtype(dtype)]
        if want is None or a.dtype == want:
            return a
        # numpy's casts are faster than torch's here (uint8 ↔ float32 several times); the
        # memory order is kept
        return torch.from_numpy(a.numpy().astype(dtype))
    a = np.asarray(a) if dtype is None else np.asarray(a, dtype=dtype)
    if not a.flags.writeable or min(a.strides, default=0) < 0:
        a = a.copy()
    return torch.from_numpy(a)


def numpy(a) -> np.ndarray:
    """The numpy array of a value held as a tensor (memory shared) or as an array."""
    return a if isinstance(a, np.ndarray) else a.numpy()


_DTYPES: dict = {}     # numpy dtype → torch dtype, once torch is imported


def numpy_dtype(t) -> np.dtype:
    """The numpy dtype of a tensor."""
    return _NP_DTYPES[t.dtype]


_NP_DTYPES: dict = {}    # torch dtype → numpy dtype
_CONSTS: dict = {}       # id(array) → (array, its tensor): the constants of programs


def const(a: np.ndarray, dtype=None):
    """A tensor sharing the memory of a constant array (a weight, bias or fire constant that
    no one changes in place), made once per array (and dtype) and kept while the array is."""
    key = (id(a), dtype)
    hit = _CONSTS.get(key)
    if hit is not None and hit[0] is a:
        return hit[1]
    t = tensor(a, dtype)
    if len(_CONSTS) > 4096:
        _CONSTS.clear()
    _CONSTS[key] = (a, t)
    return t


def _tensor(torch, a, dtype=None):
    return tensor(a, dtype)


def threads() -> int:
    """torch's intra-op thread count (the run's, inside `session`)."""
    torch = _torch()
    return torch.get_num_threads() if torch else 1


def scaled(acc: np.ndarray, scale: float, bias=None):
    """float32(acc) · scale + bias as a float32 tensor, for integer accumulators the caller
    bounded below 2²⁴ (exact conversion), a power-of-two `scale` and a float32 `bias`
    broadcasting against it whose sums the caller bounded below 2²⁴ (exact additions)."""
    torch = _torch()
    out = torch.from_numpy(acc).to(torch.float32)
    if scale != 1.0:
        out.mul_(scale)
    if bias is not None:
        out.add_(tensor(bias, np.float32))
    return out


def conv2d(x, weight: np.ndarray, stride, pads, dilation, groups, dtype,
           bias: np.ndarray | None = None):
    """conv2d of (B, C, H, W) exact integers (any dtype, array or tensor) by float `weight`
    (C_o, C_i/g, kh, kw), plus integer `bias` (C_o,), in `dtype`: a tensor, or None when torch
    is missing or could round."""
    torch = _torch()
    if not torch or not _fp32_strict(torch, "conv"):
        return None
    xt = _tensor(torch, x, dtype)
    wt = const(weight, dtype)
    top, left, bottom, right = (int(p) for p in pads)
    if (top, left) == (bottom, right):
        padding = [top, left]
    else:
        xt = torch.nn.functional.pad(xt, (left, right, top, bottom))
        padding = [0, 0]
    if xt.shape[1] == 1 and groups == 1 and tuple(dilation) == (1, 1) and \
            _fp32_strict(torch, "matmul"):
        return _conv_one_channel(torch, xt, wt, stride, padding, bias, dtype)
    if tuple(wt.shape[-2:]) == (1, 1) and padding == [0, 0] and groups == 1 and \
            all(int(v) == 1 for v in (*stride, *dilation)) and _fp32_strict(torch, "matmul"):
        return _conv_pointwise(torch, xt, wt, bias, dtype)
    # channels-last is oneDNN's native layout: no reorder in or out, and the output stays
    # channels-last for the next layer
    if xt.shape[1] > 1:
        xt = xt.contiguous(memory_format=torch.channels_last)
    else:
        xt = xt.contiguous()
        wt = wt.contiguous()
    stride, dilation, groups = [int(s) for s in stride], [int(d) for d in dilation], int(groups)
    if not _exact_backend(torch, xt, wt, stride, padding, dilation, groups):
        return None
    bt = None if bias is None else const(bias, dtype).reshape(-1)
    # tensors made from numpy arrays never require grad: no autograd graph is recorded
    return torch.nn.functional.conv2d(xt, wt, bt, stride, padding, dilation, groups)


def _conv_pointwise(torch, xt, wt, bias, dtype):
    """A 1×1 convolution (stride 1, no padding, one group) as one matrix product over the
    positions: (B·H·W, C) times the weights (C, C_o), the input read channels-last (a token
    linear's input already is) and the output a channels-last view (B, C_o, H, W), as oneDNN's
    convolution leaves it. Exact under the caller's bound as the convolution is: every partial
    sum is an integer the dtype holds. oneDNN's convolution costs ~0.1 ms a call at small
    batches, the matrix product a fraction of that."""
    b, c, h, w = xt.shape
    rows = xt.permute(0, 2, 3, 1).reshape(-1, c)
    wm = wt.reshape(wt.shape[0], c).T
    out = torch.mm(rows, wm) if bias is None else \
        torch.addmm(const(bias, dtype).reshape(-1), rows, wm)
    return out.reshape(b, h, w, -1).permute(0, 3, 1, 2)


def _conv_one_channel(torch, xt, wt, stride, padding, bias, dtype):
    """A convolution of a one-channel image (a grey first layer) as one matrix product: the
    kh·kw taps of every output position (an unfold of the padded image) times the kernel
    (kh·kw, C_out), plus the bias. oneDNN's direct kernel for one input channel costs several
    times more (and reorders its output); the product's sums are the convolution's, exact
    under the same bound. The output is channels-last, as the next layer takes it."""
    co, _, kh, kw = wt.shape
    sh, sw = (int(v) for v in stride)
    ph, pw = (int(v) for v in padding)
    img = xt[:, 0]
    if ph or pw:
        img = torch.nn.functional.pad(img, (pw, pw, ph, ph))
    b = img.shape[0]
    ho, wo = (img.shape[1] - kh) // sh + 1, (img.shape[2] - kw) // sw + 1
    # the taps stacked last, (B, Ho, Wo, kh·kw): one strided copy per tap is several times
    # faster than copying an unfold's (…, kh, kw) windows
    cols = torch.stack([img[:, i:i + (ho - 1) * sh + 1:sh, j:j + (wo - 1) * sw + 1:sw]
                        for i in range(kh) for j in range(kw)], dim=-1).reshape(b * ho * wo,
                                                                               kh * kw)
    w2 = wt.reshape(co, kh * kw).T
    out = torch.mm(cols, w2) if bias is None else \
        torch.addmm(const(bias, dtype).reshape(-1), cols, w2)
    return out.reshape(b, ho, wo, co).permute(0, 3, 1, 2)


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


def dense(x, weight: np.ndarray, dtype, bias: np.ndarray | None = None):
    """(B, F_in) exact integers × float weight (F_out, F_in)ᵀ + bias in `dtype`: a tensor, or
    None as conv2d."""
    torch = _torch()
    if not torch or not _fp32_strict(torch, "matmul"):
        return None
    xt = _tensor(torch, x, dtype)
    wt = const(weight, dtype)
    if bias is None:
        return torch.matmul(xt, wt.T)
    return torch.addmm(const(bias, dtype).reshape(-1), xt, wt.T)


def fire_once(current, offset, factor, lo: int, hi: int, dtype, saturate: bool,
              reciprocal: bool = False, u8: bool = False):
    """kernels.FirePlan's float arithmetic (v = current + offset, saturate, floor(v/θ), clip)
    as in-place torch operations on a tensor or array; offset None: `current` is v, and a
    tensor of `dtype` is overwritten. `factor`: θ, or fl(1/θ) to multiply by (reciprocal).
    u8 (levels within [0, 255]): the payloads as uint8 (clip, then truncate: floor of a
    non-negative value), the form an int8 product reads. (n tensor, saturations) or None
    without torch."""
    torch = _torch()
    if not torch:
        return None
    v = _tensor(torch, current, dtype)
    if offset is not None:
        v = torch.add(v, const(offset, dtype))
    sat = 0
    if saturate:
        sat = int(torch.count_nonzero(v.abs() > V_MAX))
        if sat:
            v.clamp_(-V_MAX, V_MAX)
    factor = const(factor, dtype)
    v = v.mul_(factor) if reciprocal else v.div_(factor)
    if u8:
        return to_u8(v.clamp_(lo, hi)), sat
    return v.floor_().clamp_(lo, hi), sat


def to_u8(v):
    """A tensor of values in [0, 255] (floats truncated toward zero) as uint8, in its own memory
    order. numpy's cast is several times faster than torch's float → uint8 conversion."""
    if v.dtype == _TORCH.uint8:
        return v
    return _TORCH.from_numpy(v.numpy().astype(np.uint8))


def sum_pool(x, kernel, stride, pads, out_hw, dtype):
    """Window sums (avg_pool2d with divisor 1: a sum, then a division by one) in `dtype`, which
    the caller chose exact for kh·kw·max|x|: a tensor, or None without torch or for padding it
    cannot take."""
    torch = _torch()
    top, left, bottom, right = (int(p) for p in pads)
    kernel, stride = [int(k) for k in kernel], [int(s) for s in stride]
    if not torch or (top, left) != (bottom, right) or 2 * top > kernel[0] or 2 * left > kernel[1]:
        return None
    xt = _tensor(torch, x, dtype)
    axis = _whole_axis(xt, kernel, stride, pads, out_hw)
    if axis == -1 and fused.worth(xt):
        out = fused.last_axis(xt, "sum", dtype)
        if out is not None:
            return tensor(out)
    if axis is not None:
        return xt.sum(axis, keepdim=True)
    out = torch.nn.functional.avg_pool2d(xt, kernel, stride, [top, left],
                                         ceil_mode=False, divisor_override=1)
    return out if tuple(out.shape[-2:]) == tuple(out_hw) else None


def _whole_axis(xt, kernel, stride, pads, out_hw):
    """-1 or -2 when an unpadded window spans that whole axis of xt and nothing of the other
    (a row's or a column's reduction, as a softmax's maximum and sum and a LayerNorm's mean
    take it), (-2, -1) when it spans both (a global pool), else None: a reduction along the
    axes is several times faster than the pooling kernel."""
    if any(int(p) for p in pads):
        return None
    h, w = int(xt.shape[-2]), int(xt.shape[-1])
    kh, kw = (int(k) for k in kernel)
    sh, sw = (int(s) for s in stride)
    if (kh, kw) == (1, w) and sh == 1 and tuple(out_hw) == (h, 1):
        return -1
    if (kh, kw) == (h, 1) and sw == 1 and tuple(out_hw) == (1, w):
        return -2
    if (kh, kw) == (h, w) and tuple(out_hw) == (1, 1):
        return (-2, -1)
    return None


def max_pool(x, kernel, stride, pads, dilation, out_hw, nonnegative: bool):
    """Window maxima of a (B, C, H, W) value (padding never wins: it is the dtype's lowest
    value, or 0 for a non-negative one): a tensor of x's dtype, or None without torch or for a
    geometry torch does not give exactly."""
    torch = _torch()
    if not torch:
        return None
    xt = _tensor(torch, x)
    if xt.dtype not in (torch.float32, torch.float64, torch.uint8):
        return None
    axis = _whole_axis(xt, kernel, stride, pads, out_hw) if all(int(d) == 1 for d in dilation) \
        else None
    if axis == -1 and fused.worth(xt):
        out = fused.last_axis(xt, "max")
        if out is not None:
            return tensor(out)
    if axis is not None:
        return xt.amax(axis, keepdim=True)
    top, left, bottom, right = (int(p) for p in pads)
    if any(pads):
        low = 0 if nonnegative or xt.dtype == torch.uint8 else float("-inf")
        if low != 0 and xt.dtype == torch.uint8:
            return None
        xt = torch.nn.functional.pad(xt, (left, right, top, bottom), value=low)
    if xt.dtype == torch.uint8:
        # torch 2.13's channels-last uint8 max pool refuses some shapes (a 3×3/2 window over
        # 64 channels and more: "input_depth * input_height * input_width"); NCHW does not
        xt = xt.contiguous()
    out = torch.nn.functional.max_pool2d(xt, [int(k) for k in kernel],
                                         [int(s) for s in stride], 0,
                                         [int(d) for d in dilation])
    return out if tuple(out.shape[-2:]) == tuple(out_hw) else None


def add_terms(terms, dtype, offset=None):
    """Σ_i g_i · x_i (· floored where asked) + offset in `dtype` for terms (x_i, g_i, floor_i)
    with g_i the per-channel gains · 2^e_i as a `dtype` array broadcasting against x_i, which
    the caller chose exact for every partial sum; `offset` (broadcasting, or None) is added
    with the first unfloored term: a tensor, or None without torch."""
    torch = _torch()
    if not torch:
        return None
    total, late = None, offset
    for x, g, floor in sorted(terms, key=lambda t: t[2]):     # unfloored terms first
        xt, gt = tensor(x, dtype), const(g)
        if floor:
            term = torch.mul(xt, gt).floor_()
            total = term if total is None else total.add_(term)
        elif total is None:
            if late is not None:
                total, late = torch.addcmul(const(late), xt, gt), None
            else:
                total = torch.mul(xt, gt)
        else:
            total.addcmul_(xt, gt)
    if late is not None:
        total.add_(const(late))
    return total


def add_terms_int32(terms, out_dtype):
    """Σ_i shift(g_i · x_i, e_i) in int32 for terms (x_i, g_i · 2^max(e_i, 0) as an int32 array
    broadcasting against x_i, max(−e_i, 0)), a right shift being the contract's floor — for
    sums whose unshifted products the caller bounded below 2³¹ (a float32 product would round
    them) — then as `out_dtype` (exact: the caller's bound of the sum). A tensor, or None
    without torch."""
    torch = _torch()
    if not torch:
        return None
    total = None
    for x, g, k in terms:
        term = torch.mul(tensor(x, np.int32), const(g))
        if k:
            term.bitwise_right_shift_(k)
        total = term if total is None else total.add_(term)
    return tensor(total, out_dtype)


# --- int8 products (oneDNN) -----------------------------------------------------------------
# A convolution or dense whose input is a non-negative integer ≤ 255 and whose weights are int8
# runs as oneDNN's u8·s8 → s32 product (torch.ops.onednn.qconv2d_pointwise / qlinear_pointwise,
# the kernels torch's own int8 inference uses), with scales 1 and 2^exp and a float32 output:
# dst = 2^exp·acc + bias. The integer accumulation is exact as long as no intermediate sum
# saturates; the float32 output is exact under the caller's bound (< 2²⁴, the same bound the
# float32 path needs). CPUs with VNNI (AVX512-VNNI, AVX-VNNI) sum four u8·s8 products into s32
# directly: exact for every operand. CPUs without it (AVX2, AVX-512 before VNNI) multiply u8·s8
# pairs into a saturating int16 sum (vpmaddubsw): exact only while x·|w| ≤ 2¹⁴ − 1 for every
# operand pair, e.g. spikes ≤ 127 with any int8 weight, or 8-bit pixels with |w| ≤ 64.
# A probe with the extreme operands of each class (full range; pairs within int16), on a
# convolution and a dense, against float64 decides once per process which class holds
# (`int8_limit`: the largest max|x|·max|w| allowed); any failure or any exception from these
# private ops turns the path off and the float32 kernels run instead.
# oneDNN's u8·s8 convolutions take input channels in groups of 4: a convolution with C_in not a
# multiple of 4 and one group gets zero input channels added (zero weights too).
INT8_MIN_TAPS = 32     # C_in/groups (so padded) · kh · kw below this: float32 is faster
INT8_CHANNELS = 4
INT8_FULL = 255 * 128  # max|x|·max|w| of any u8·s8 operands
INT8_PAIRS = 2 ** 14 - 1   # two such products sum within int16
_INT8_LIMIT: int | None = None


def _qconv(torch, x, packed, scales, stride, padding, dilation, groups, bias, zp=None):
    if zp is None:
        zp = torch.zeros(len(scales), dtype=torch.int64)
    return torch.ops.onednn.qconv2d_pointwise.default(x, 1.0, 0, packed, scales, zp, bias,
                                                      stride, padding, dilation, groups, 1.0, 0,
                                                      torch.float32, "none", [], "")


def _qlinear(torch, x, packed, scales, zp, bias):
    return torch.ops.onednn.qlinear_pointwise.default(x, 1.0, 0, packed, scales, zp, bias, 1.0,
                                                      0, torch.float32, "none", [], "")


def _probe(torch, xs: list[int], ws: list[int], xmax: int, wmax: int) -> bool:
    """Both int8 products exact on these operands: constant x and w for each pair of `xs`,
    `ws`, and random operands within [0, xmax] × [−wmax, wmax] (a power of two and a bias in
    the conv)."""
    rng = np.random.default_rng(0)
    cases = [(np.full((3, 16, 5, 5), x), np.full((8, 16, 3, 3), w), 0) for x in xs for w in ws]
    cases.append((rng.integers(0, xmax + 1, (3, 16, 5, 5)),
                   rng.integers(-wmax, min(wmax, 127) + 1, (8, 16, 3, 3)), 1))
    for xv, wv, exp in cases:
        x = torch.from_numpy(xv.astype(np.uint8)).contiguous(memory_format=torch.channels_last)
        w = torch.from_numpy(wv.astype(np.int8))
        scales = torch.full((8,), 2.0 ** exp)
        bias = torch.arange(8, dtype=torch.float32) - 4
        packed = torch.ops.onednn.qconv_prepack(w, scales, 1.0, 0, [1, 1], [1, 1], [1, 1], 1,
                                                None)
        got = _qconv(torch, x, packed, scales, [1, 1], [1, 1], [1, 1], 1, bias)
        want = torch.nn.functional.conv2d(x.double(), w.double() * 2.0 ** exp, bias.double(),
                                          1, 1)
        if got.dtype != torch.float32 or not bool((got.double() == want).all()):
            return False
        x2, w2 = x.reshape(3, -1).contiguous(), w.reshape(8, -1)[:, :64].contiguous()
        x2 = x2[:, :64].contiguous().repeat(8, 1)     # 24 rows
        lin = torch.ops.onednn.qlinear_prepack(w2, [24, 64])
        got = _qlinear(torch, x2, lin, scales, torch.zeros(8, dtype=torch.int64), bias)
        want = x2.double() @ (w2.double() * 2.0 ** exp).T + bias.double()
        if got.dtype != torch.float32 or not bool((got.double() == want).all()):
            return False
    return True


def int8_limit(torch=None) -> int:
    """The largest max|x|·max|w| for which the int8 products are exact on this CPU (INT8_FULL,
    INT8_PAIRS, or 0: no int8 path), probed once per process."""
    global _INT8_LIMIT
    if _INT8_LIMIT is None:
        _INT8_LIMIT = 0
        torch = _torch()
        if not torch or os.environ.get("SFN_CPU_INT8", "1") == "0":
            return 0
        try:
            if _probe(torch, [255], [-128, 127], 255, 128):
                _INT8_LIMIT = INT8_FULL
            elif _probe(torch, [255, 127], [-64, 64], 255, 64) and \
                    _probe(torch, [127], [-128, 127], 127, 128):
                _INT8_LIMIT = INT8_PAIRS
        except Exception:  # noqa: BLE001 - private ops missing or refusing: no int8 path
            _INT8_LIMIT = 0
    return _INT8_LIMIT


def _int8_exact(torch) -> bool:
    """Some int8 product is exact on this CPU (int8_limit > 0)."""
    return int8_limit(torch) > 0


def int8_state() -> int | None:
    """The int8 probe's verdict: None before it ran, then int8_limit's value."""
    return _INT8_LIMIT


class Int8:
    """oneDNN's packed form of an integer dense or conv weight, with what a call needs: the
    per-channel scales 2^exp, the geometry (conv), the input channels it takes (padded to a
    multiple of four), and max|w| of the packed int8 mantissas (the exactness class)."""
    __slots__ = ("packed", "scales", "zp", "params", "cin", "wmax", "conv", "mantissas", "exp",
                 "fired")

    def usable(self, xmax: float) -> bool:
        """Exact for non-negative inputs ≤ xmax on this CPU (int8_limit)."""
        return xmax <= 255 and xmax * self.wmax <= _INT8_LIMIT


def mantissas(weight: np.ndarray, exp: int):
    """(int8 mantissas, exponent, max|w|) with a common power of two moved into the exponent
    (Lava's 8-bit mixed-sign weights are stored as even 9-bit values 2·k, |k| ≤ 127), or None
    beyond int8."""
    weight = np.asarray(weight, dtype=np.int64)
    bits = int(np.bitwise_or.reduce(np.abs(weight), axis=None)) if weight.size else 0
    shift = (bits & -bits).bit_length() - 1 if bits else 0
    weight, exp = weight >> shift, int(exp) + shift
    if weight.min(initial=0) < -128 or weight.max(initial=0) > 127:
        return None
    return weight.astype(np.int8), exp, int(np.abs(weight).max(initial=0))


def pack_int8_conv(weight: np.ndarray, exp: int, stride, pads, dilation, groups) -> Int8 | None:
    """The int8 form of a conv weight (C_o, C_i/g, kh, kw), or None when the int8 path does not
    apply (no torch, the probe failed, weights beyond int8, asymmetric padding, too few taps).
    Made once per node by the caller."""
    torch = _torch()
    top, left, bottom, right = (int(p) for p in pads)
    if not torch or (top, left) != (bottom, right) or weight.ndim != 4 or not int8_limit(torch):
        return None
    weight = np.asarray(weight, dtype=np.int64)
    cin = weight.shape[1]
    if int(groups) == 1 and cin % INT8_CHANNELS:
        cin += INT8_CHANNELS - cin % INT8_CHANNELS
        weight = np.concatenate([weight, np.zeros((weight.shape[0], cin - weight.shape[1])
                                                  + weight.shape[2:], np.int64)], axis=1)
    if cin * int(np.prod(weight.shape[2:])) < INT8_MIN_TAPS:
        return None
    m = mantissas(weight, exp)
    if m is None:
        return None
    params = ([int(s) for s in stride], [top, left], [int(d) for d in dilation], int(groups))
    scales = torch.full((weight.shape[0],), 2.0 ** m[1])
    try:
        packed = torch.ops.onednn.qconv_prepack(torch.from_numpy(m[0]), scales, 1.0, 0,
                                                *params, None)
    except Exception:  # noqa: BLE001 - a geometry oneDNN's int8 kernel refuses: float path
        return None
    return _int8(packed, scales, params, cin * int(groups), m, True)


def pack_int8_dense(weight: np.ndarray, exp: int) -> Int8 | None:
    """The int8 form of a dense weight (F_out, F_in), or None as pack_int8_conv."""
    torch = _torch()
    if not torch or weight.ndim != 2 or not int8_limit(torch):
        return None
    m = mantissas(weight, exp)
    if m is None:
        return None
    try:
        packed = torch.ops.onednn.qlinear_prepack(torch.from_numpy(m[0]), None)
    except Exception:  # noqa: BLE001
        return None
    scales = torch.full((weight.shape[0],), 2.0 ** m[1])
    return _int8(packed, scales, None, weight.shape[1], m, False)


def _int8(packed, scales, params, cin, m, conv) -> Int8:
    pack = Int8()
    pack.packed, pack.scales, pack.params, pack.cin, pack.conv = \
        packed, scales, params, cin, conv
    pack.mantissas, pack.exp, pack.wmax = m
    pack.zp = _TORCH.zeros(len(scales), dtype=_TORCH.int64)
    pack.fired = None
    return pack


# --- the one-pass fire inside the int8 kernel -------------------------------------------------
# oneDNN's int8 kernels can also requantize their output to uint8: dst = RN(clip(acc·s + c,
# lo, hi)) with a per-channel scale s, a per-channel float32 bias c, the clip a post-op and RN
# the round to nearest (even) of the float32-to-integer conversion. With s = 2^e·fl(1/θ) and
# c = fl((b + θ//2 + 1/2)/θ − 1/2) that is the one-pass fire n = clip(floor(v/θ), lo, hi) of
# v = 2^e·acc + b + θ//2, when lo ≥ 0, hi ≤ 255 and nothing saturates (|v| ≤ V_MAX):
# write A = 2^e·acc and y = (A + off + 1/2)/θ − 1/2 (off = b + θ//2). With v = nθ + m, 0 ≤ m < θ,
# y lies in [n − 1/2 + 1/(2θ), n + 1/2 − 1/(2θ)], so RN(y) = n with a margin of 1/(2θ) to either
# tie. The kernel computes fl(fl(acc)·s) (|acc| ≤ |A| < 2²³ converts exactly), adds c and rounds
# the sum: with u = 2⁻²⁴, fl(1/θ) and the product contribute at most (2u + u²)·|A|/θ, c (from
# float64) (u + 2⁻⁵¹)·((|off| + 1/2)/θ + 1/2) and the sum u·|y| plus u times those, which
# together stay below u·(1 + 2⁻²⁰)·((3|A| + 2|off| + 1)/θ + 1) — below 1/(2θ) whenever
# 3|A| + 2|off| + θ + 1 < 2²³/(1 + 2⁻²⁰) (an FMA only removes a rounding). FIRE_LIMIT keeps
# 3·max|A| + 2·max|off| + max θ below 2²³ − 2⁸. Clip then round equals round then clip for
# integer ends. The order of operations is oneDNN's documented one (scales, bias, post-ops,
# round); a probe at the edges (v = kθ − 1, kθ, kθ + 1 with |A| and |off| at the limit, both
# kernels) checks it once per process, and a failure turns this form off.
FIRE_LIMIT = 2 ** 23 - 2 ** 8
_FIRE_OK: bool | None = None


def fire_constants(theta: np.ndarray, offset: np.ndarray, exp: int):
    """(s, c) of the fire in the kernel, float32 per channel, for thresholds θ, offsets
    b + θ//2 and the pack's exponent e."""
    theta = np.asarray(theta, np.float64)
    s = (1.0 / theta).astype(np.float32) * np.float32(2.0 ** exp)
    c = ((np.asarray(offset, np.float64) + 0.5) / theta - 0.5).astype(np.float32)
    return s, c


def fire_fits(a_max: float, offset_max: float, theta_max: float) -> bool:
    """The bound of the kernel fire's proof (above) holds."""
    return 3 * a_max + 2 * offset_max + theta_max < FIRE_LIMIT


def fired(pack: Int8, theta: np.ndarray, offset: np.ndarray):
    """The pack with its fire in the kernel for per-channel θ and offsets (C_o,): (weights
    packed with the scales s, s as a tensor, c as a tensor), or None where oneDNN refuses or the
    probe failed. Made once per node by the caller."""
    torch = _torch()
    if not torch or not fire_exact(torch):
        return None
    try:
        return fired_raw(torch, pack, theta, offset)
    except Exception:  # noqa: BLE001
        return None


def product_fire_int8(x, pack: Int8, fire, lo: int, hi: int):
    """The int8 product of x (as product_int8) fired in the kernel (`fire`: fired()'s
    triple): the payloads clip(floor(v/θ), lo, hi) as a uint8 tensor, or None if oneDNN
    refuses."""
    torch = _torch()
    packed, s, c = fire
    xt = _tensor(torch, x)
    try:
        if not pack.conv:
            return torch.ops.onednn.qlinear_pointwise.default(
                to_u8(xt).contiguous(), 1.0, 0, packed, s, pack.zp, c, 1.0, 0, torch.uint8,
                "hardtanh", [lo, hi], "")
        return torch.ops.onednn.qconv2d_pointwise.default(
            _u8_nhwc(torch, xt, pack.cin), 1.0, 0, packed, s, pack.zp, c, *pack.params, 1.0, 0,
            torch.uint8, "hardtanh", [lo, hi], "")
    except Exception:  # noqa: BLE001
        return None


def fire_cases(a_limit: float, rng) -> tuple[np.ndarray, ...]:
    """Edge cases of the kernel fire for the probe and the tests: per output channel a θ (from
    1 to 2²⁰, odd, even, powers of two and neighbours) and an offset, per position an
    accumulator A with v = A + off at kθ − 1, kθ or kθ + 1 for k in 0..255, |A| up to `a_limit`
    and the offset at the limit of fire_fits. Returns (θ (C,), off (C,), A (C, P), want (C, P))
    with want = clip(floor(v/θ), 0, 255)."""
    thetas = np.array([1, 2, 3, 7, 64, 127, 255, 1023, 4093, 65535, 65537, 2 ** 20 - 3, 2 ** 20],
                      dtype=np.int64)
    thetas = np.concatenate([thetas, rng.integers(1, 2 ** 18, 19)])
    a_list, offs = [], []
    for theta in thetas:
        off_max = (FIRE_LIMIT - 1 - theta - 3 * a_limit) // 2
        k = rng.integers(0, 256, 96)
        v = k * theta + rng.integers(-1, 2, 96)
        off = int(min(off_max, 2 ** 21)) * (1 if rng.random() < 0.5 else -1)
        a = np.clip(v - off, -a_limit, a_limit).astype(np.int64)
        a[:4] = [a_limit, -a_limit, 0, 1]
        a_list.append(a)
        offs.append(off)
    a, off = np.stack(a_list), np.array(offs, np.int64)
    want = np.clip(np.floor_divide(a + off[:, None], thetas[:, None]), 0, 255)
    return thetas, off, a, want


def _fire_probe(torch) -> bool:
    """Both int8 kernels fire exactly on fire_cases with |A| ≤ 2²⁰ (made as Σ x·w of 7-bit
    inputs and weights ±127, ±1: exact in every int8 class)."""
    rng = np.random.default_rng(1)
    a_limit = 127 * 127 * 64
    thetas, off, a, want = fire_cases(a_limit, rng)
    c_out, pos = a.shape
    # A[c, p] = Σ_i x[p, i]·w[c, i]: one input row per (channel, position), 65 input channels
    # (64 of weight ±127 for A // 127, one of ±1 for the rest); each output channel reads its
    # own block of rows, the other blocks' outputs are discarded
    sign = np.where(a < 0, -1, 1)
    mag = np.abs(a)
    hi_part, lo_part = mag // 127, mag % 127
    x = np.zeros((c_out, pos, 68), np.int64)
    full = np.minimum(hi_part[..., None] - 127 * np.arange(64), 127)
    x[..., :64] = np.clip(full, 0, 127)
    x[..., 64] = lo_part
    x[..., 65:] = 0
    w = np.zeros((c_out, 68), np.int64)
    w[:, :64], w[:, 64] = 127, 1
    ok = True
    for neg in (False, True):
        rows = (sign < 0) == neg
        if not rows.any():
            continue
        wsig = -w if neg else w
        pack = _int8(None, torch.ones(c_out), None, 68,
                     (wsig.astype(np.int8), 0, 127), False)
        pack.packed = torch.ops.onednn.qlinear_prepack(torch.from_numpy(pack.mantissas), None)
        fire = fired_raw(torch, pack, thetas, off)
        xin = x.reshape(-1, 68).astype(np.uint8)
        got = product_fire_int8(xin, pack, fire, 0, 255).numpy().reshape(c_out, pos, c_out)
        diag = got[np.arange(c_out), :, np.arange(c_out)]       # channel c on its own rows
        ok = ok and bool((diag[rows] == want[rows]).all())
        cpack = _int8(None, torch.ones(c_out), ([1, 1], [0, 0], [1, 1], 1), 68,
                      (wsig.reshape(c_out, 68, 1, 1).astype(np.int8), 0, 127), True)
        fire = fired_raw(torch, cpack, thetas, off)
        xc = torch.from_numpy(xin.reshape(c_out * pos, 1, 1, 68)).permute(0, 3, 1, 2)
        got = product_fire_int8(xc, cpack, fire, 0, 255).numpy().reshape(c_out, pos, c_out)
        diag = got[np.arange(c_out), :, np.arange(c_out)]
        ok = ok and bool((diag[rows] == want[rows]).all())
    return ok


def fired_raw(torch, pack: Int8, theta, offset):
    s, c = fire_constants(theta, offset, pack.exp)
    st, ct = torch.from_numpy(s), torch.from_numpy(c)
    if pack.conv:
        packed = torch.ops.onednn.qconv_prepack(torch.from_numpy(pack.mantissas), st, 1.0, 0,
                                                *pack.params, None)
    else:
        packed = pack.packed
    return packed, st, ct


def fire_exact(torch=None) -> bool:
    """The fire inside the int8 kernels is exact on this CPU (the probe above), once per
    process; False without an int8 path."""
    global _FIRE_OK
    if _FIRE_OK is None:
        _FIRE_OK = False
        torch = _torch()
        if torch and int8_limit(torch) and os.environ.get("SFN_CPU_INT8_FIRE", "1") != "0":
            try:
                _FIRE_OK = _fire_probe(torch)
            except Exception:  # noqa: BLE001
                _FIRE_OK = False
    return _FIRE_OK


def product_int8(x, pack: Int8, bias):
    """The int8 product of x — exact integers in [0, 255] (pack.usable), any dtype, array or
    tensor; (B, C, H, W) for a conv, (B, F) for a dense — plus the float32 `bias` (C_o,;
    array, tensor or None): a float32 tensor (channels-last for a conv), or None if oneDNN
    refuses."""
    torch = _torch()
    if not torch:
        return None
    xt = _tensor(torch, x)
    bt = None if bias is None else _tensor(torch, bias, np.float32).reshape(-1)
    try:
        if not pack.conv:
            return _qlinear(torch, to_u8(xt).contiguous(), pack.packed, pack.scales, pack.zp,
                            bt)
        return _qconv(torch, _u8_nhwc(torch, xt, pack.cin), pack.packed, pack.scales,
                      *pack.params, bt, pack.zp)
    except Exception:  # noqa: BLE001 - refused at run time: the caller takes the float path
        return None


def _u8_nhwc(torch, xt, cin: int):
    """x as uint8 in the channels-last layout oneDNN's kernel takes, channels beyond x's own
    zero (one pass when a cast or a copy is needed)."""
    if xt.shape[1] == cin:
        if xt.dtype == torch.uint8 and xt.is_contiguous(memory_format=torch.channels_last):
            return xt
        nhwc = xt.numpy().transpose(0, 2, 3, 1)
        return torch.from_numpy(nhwc.astype(np.uint8, order="C")).permute(0, 3, 1, 2)
    nhwc = xt.numpy().transpose(0, 2, 3, 1)
    u8 = np.zeros(nhwc.shape[:-1] + (cin,), np.uint8)
    u8[..., :nhwc.shape[-1]] = nhwc
    return torch.from_numpy(u8).permute(0, 3, 1, 2)


def cat(values, axis: int):
    """torch.cat of tensors of one dtype."""
    return _torch().cat(values, axis)


def product(a, b, dtype, shift: int, matmul: bool = False):
    """round_half_up(a·b / 2^shift) of exact integers, elementwise with broadcasting or as a
    batched matrix product (matmul), in `dtype`, which the caller chose exact for every
    partial sum plus 2^(shift−1): a tensor, or None without torch (or, for a matrix
    product, without strict float32 matmul). The rounding is floor((p + 2^(shift−1)) · 2^−shift):
    the sum is exact and the power-of-two scaling too."""
    torch = _torch()
    if not torch or (matmul and not _fp32_strict(torch, "matmul")):
        return None
    at, bt = tensor(a, dtype), tensor(b, dtype)
    out = torch.matmul(at, bt) if matmul else torch.mul(at, bt)
    if shift:
        out.add_(float(1 << (shift - 1))).mul_(2.0 ** -shift).floor_()
    return out


def product_ops(a, b, matmul: bool = False) -> int:
    """The product operations of `product`: the products whose two operands are both nonzero
    (per output of an elementwise product; for a matrix product the terms a_mk·b_kn with both
    nonzero, Σ_m,n,k [a_mk ≠ 0]·[b_kn ≠ 0] = Σ_k (Σ_m [a_mk ≠ 0])·(Σ_n [b_kn ≠ 0]) per matrix,
    counted in int64 from the column counts of A and the row counts of B)."""
    torch = _torch()
    at, bt = tensor(a), tensor(b)
    na, nb = at != 0, bt != 0
    if matmul:
        return int((na.sum(-2) * nb.sum(-1)).sum())
    return int(torch.logical_and(na, nb).sum())


def table(v, low, high, offset, lut, dtype):
    """lut[clamp(v, low, high) + offset] as `dtype` (a numpy dtype) for exact integers v and
    per-neuron float tensors low, high, offset broadcasting against it, the clamped index
    exact in their dtype (the caller's choice) and below 2³¹: a table neuron's payloads, one
    gather."""
    torch = _torch()
    vt = tensor(v)
    idx = torch.clamp(vt.to(low.dtype), low, high).add_(offset).to(torch.int32)
    # index_select with int32 indices: several times faster than take or int64 indexing
    out = lut.index_select(0, idx.reshape(-1)).view(idx.shape)
    return out.to(_DTYPES[np.dtype(dtype)])


def count_over(x, offset, limit: float) -> int:
    """#{|x + offset| > limit}, in float64 (exact for integers below 2⁵³)."""
    torch = _torch()
    return int(torch.count_nonzero((tensor(x).to(torch.float64) + offset).abs_() > limit))
