"""sim.cpu's fast kernels: the contract's products and fire computed in float arithmetic on exact
integers, through torch's oneDNN/MKL where it vouches for exactness (sim/cpu/torch_ops.py), else
numpy. The `*_exact` kernels return float arrays of integer values (no int64 round trip) so the
batched runner can feed them to the next layer; the dtype is chosen by the caller from a static
bound (sim.kernels.exact_dtype).
"""
from __future__ import annotations

import numpy as np

from sim import semantics
from sim.cpu import fused, torch_ops
from sim.kernels import F32_EXACT, F64_EXACT, conv2d_numpy, sum_pool


def conv2d_exact(x: np.ndarray, weight: np.ndarray, stride, pads, dilation, groups, out_hw,
                 use_torch: bool = False, bias: np.ndarray | None = None) -> np.ndarray:
    """conv2d of exact integers `x` (any dtype) by the float `weight` (integers, maybe times a
    power of two), plus the optional per-channel integer `bias` (C_out,), in weight's dtype,
    which the caller chose exact for Σ|W|·max|x| + max|bias|. Returns that float array.
    `use_torch`: try torch's oneDNN kernel first (sim/cpu/torch_ops.py)."""
    if use_torch:
        out = torch_ops.conv2d(x, weight, stride, pads, dilation, groups, weight.dtype, bias)
        if out is not None:
            return out.numpy()
    out = conv2d_numpy(x, weight, stride, pads, dilation, groups, out_hw)
    if bias is not None:
        out += bias.astype(weight.dtype).reshape(1, -1, 1, 1)
    return out


def dense_exact(x: np.ndarray, weight: np.ndarray, use_torch: bool = False,
                bias: np.ndarray | None = None) -> np.ndarray:
    """dense of exact integers by the float `weight`, plus `bias`, in its dtype (as
    conv2d_exact)."""
    if use_torch:
        out = torch_ops.dense(x, weight, weight.dtype, bias)
        if out is not None:
            return out.numpy()
    out = x.astype(weight.dtype, copy=False) @ weight.T
    if bias is not None:
        out += bias.astype(weight.dtype)
    return out


def sum_pool_exact(x: np.ndarray, kernel, stride, pads, out_hw, dtype=np.int64,
                   use_torch: bool = False) -> np.ndarray:
    """sim.kernels.sum_pool, through torch's pooling first when `dtype` is a float dtype."""
    if use_torch and dtype is not np.int64:
        out = torch_ops.sum_pool(x, kernel, stride, pads, out_hw, dtype)
        if out is not None:
            return out.numpy()
    return sum_pool(x, kernel, stride, pads, out_hw, dtype)


def encode_input_exact(x: np.ndarray, inv_scale, lo: int, hi: int) -> tuple[np.ndarray, int]:
    """semantics.encode_input_counted, the values left in float32 (they are float32 integers
    already, and the int64 cast is skipped) when lo and hi are float32-exact, else int64."""
    if max(abs(lo), abs(hi)) >= F32_EXACT:
        return semantics.encode_input_counted(x, inv_scale, lo, hi)
    with np.errstate(over="ignore"):   # beyond float32: +-inf, clipped to hi or lo
        z = np.asarray(x, dtype=np.float32) * np.float32(inv_scale)
    z += np.float32(0.5)
    np.floor(z, out=z)
    clipped = int(np.count_nonzero(z < np.float32(lo))) + int(np.count_nonzero(z > np.float32(hi)))
    np.maximum(z, np.float32(lo), out=z)
    np.minimum(z, np.float32(hi), out=z)
    return z, clipped


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
        # one-pass kernels by (shape, dtype, form, saturation, offset added): shared by every
        # plan of this neuron (a plan is made per bound, which may change from run to run)
        self.kernels: dict = {}

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
        """(n, saturations); n a numpy array in the plan's float dtype (int64 without one). A
        biased current is overwritten."""
        n, sat = self.run(current, use_torch)
        return torch_ops.numpy(n), sat

    def run(self, current, use_torch: bool = False, u8: bool = False):
        """apply's (n, saturations) on an array or a tensor; with torch n is a tensor (uint8
        when `u8` and the levels lie within [0, 255]: the form an int8 product reads)."""
        fire, dtype = self.fire, self.dtype
        if self.biased and (dtype is None or np.dtype(dtype) != _dtype(current)):
            raise ValueError(f"biased current in {current.dtype}, exact dtype is {dtype}")
        if dtype is None:
            return semantics.fire_once(np.asarray(torch_ops.numpy(current), dtype=np.int64),
                                       fire.bias, fire.theta, fire.lo, fire.hi)
        offset = None if self.biased else self.offset
        if use_torch and fused.worth(current):    # the same IEEE operations in one pass
            key = (tuple(current.shape[1:]), np.dtype(dtype), self.reciprocal, self.saturate,
                   offset is None)
            kernel = fire.kernels.get(key)
            if kernel is None:
                kernel = fire.kernels[key] = fused.FireKernel(
                    key[0], offset, self.factor, dtype, fire.lo, fire.hi, self.saturate,
                    self.reciprocal)
            done = kernel(current, u8 and fire.lo >= 0 and fire.hi <= 255)
            if done is not None:
                return torch_ops.tensor(done[0]), done[1]
        if use_torch:   # the same IEEE operations, in place, fewer passes over memory
            done = torch_ops.fire_once(current, offset, self.factor, fire.lo, fire.hi, dtype,
                                       self.saturate, self.reciprocal,
                                       u8 and fire.lo >= 0 and fire.hi <= 255)
            if done is not None:
                return done
        current = torch_ops.numpy(current) if not isinstance(current, np.ndarray) else current
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


def _dtype(v) -> np.dtype:
    """The numpy dtype of an array or a tensor."""
    return v.dtype if isinstance(v, np.ndarray) else torch_ops.numpy_dtype(v)


def encode_input_u8(x: np.ndarray, inv_scale, lo: int, hi: int) -> tuple[np.ndarray, int]:
    """semantics.encode_input_counted as uint8 for levels within [0, 255] (the form an int8
    product reads): z = x·inv_scale + 1/2 in float32 as defined, clipped to [lo, hi] and
    truncated — the floor of a non-negative value, and clip(floor(z)) = floor(clip(z)) for
    integer ends; floor(z) < lo exactly when z < lo, floor(z) > hi when z ≥ hi + 1."""
    with np.errstate(over="ignore"):   # beyond float32: +-inf, clipped to hi or lo
        z = np.asarray(x, dtype=np.float32) * np.float32(inv_scale)
    z += np.float32(0.5)
    clipped = int(np.count_nonzero(z < np.float32(lo))) + \
        int(np.count_nonzero(z >= np.float32(hi + 1)))
    np.clip(z, np.float32(lo), np.float32(hi), out=z)
    return z.astype(np.uint8), clipped


class StatePlan:
    """semantics.neuron_step for one neuron node with the uniform fire and reset by
    subtraction (any leak), over the T steps of a layer-major run (sim.cpu.program), in float
    arithmetic on exact integers with torch, for a current bounded by `bound`.

    Every value is an integer: after a step |v| ≤ max(V_MAX, K·θ) (v − q·K·θ lies in [0, K·θ)
    unless q was clipped, and then between 0 and v), so before the clip
    |v + I + b| ≤ that + bound + max|b| ("pre"), and the leak's d·(I + b − v) ≤ 4096·pre.
    float32 holds all of them exactly when they are below 2²⁴ and floor(v/(K·θ)) of the
    correctly rounded quotient is exact for |v| ≤ V_MAX < 2²³ and K·θ ≤ 2²³ (Fire.dtype's
    argument); float64 below 2⁵³. `dtype` None: neither (the int64 evaluation runs)."""

    def __init__(self, node, binary: bool, bound: float):
        k, self.lo_q, self.hi_q = semantics.spike_unit(node.lo, node.hi, binary)
        theta = np.asarray(node.threshold, dtype=np.int64)[None]
        bias = np.asarray(node.bias, dtype=np.int64)[None]
        step = theta * k
        self.k, self.decay = k, int(node.decay)
        self.leak = self.decay < semantics.LEAK_ONE
        top = float(max(semantics.V_MAX, int(step.max(initial=1))))
        pre = top + bound + float(np.abs(bias).max(initial=0))
        need = pre * semantics.LEAK_ONE if self.leak else pre
        smax = float(step.max(initial=1))
        levels = float(max(abs(node.lo), abs(node.hi)))
        if need < F32_EXACT and smax <= 2 ** 23:
            self.dtype = np.float32
        elif need < F64_EXACT and smax < F64_EXACT // 2 and levels < F64_EXACT:
            self.dtype = np.float64
        else:
            self.dtype = None
            return
        d = self.dtype
        self.bias, self.step = bias.astype(d), step.astype(d)
        self.v0 = (semantics.initial_state(theta, k) if node.start == "half" else
                   np.zeros_like(theta)).astype(d)      # start "zero": v = 0 (semantics)
        self.out_dtype = np.float32 if levels < F32_EXACT else np.float64
        self.u8 = node.lo >= 0 and node.hi <= 255

    def run(self, current, timesteps: int, reps: int, u8: bool = False):
        """(payloads of every step, saturations): `current` holds the T steps stacked
        (T·B rows, step-major; reps = T) or the B rows every step shares (reps = 1). The
        payloads are T·B rows, uint8 when `u8` and the levels allow."""
        torch = torch_ops._torch()
        dt = torch_ops.tensor
        cur = dt(current, self.dtype)
        drive = torch.add(cur, dt(self.bias))           # I + b, every step at once
        rows = len(cur) // reps
        step, bias_free = dt(self.step), drive
        v = torch.empty_like(drive[:rows]).copy_(dt(self.v0).expand_as(drive[:rows]))
        layout = torch.channels_last if drive.dim() == 4 and \
            drive.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        out = torch.empty((timesteps * rows,) + tuple(cur.shape[1:]),
                          dtype=torch_ops._DTYPES[np.dtype(self.out_dtype)],
                          memory_format=layout)
        q = torch.empty_like(v)
        sat = 0
        for t in range(timesteps):
            it = bias_free if reps == 1 else bias_free[t * rows:(t + 1) * rows]
            if self.leak:      # v + floor(d·(I + b − v)/4096)
                v.add_(torch.sub(it, v).mul_(self.decay).div_(semantics.LEAK_ONE).floor_())
            else:
                v.add_(it)
            lo, hi = torch.aminmax(v)
            if float(hi) > semantics.V_MAX or float(lo) < -semantics.V_MAX:
                sat += int(torch.count_nonzero(v.abs() > semantics.V_MAX))
                v.clamp_(-semantics.V_MAX, semantics.V_MAX)
            torch.div(v, step, out=q).floor_().clamp_(self.lo_q, self.hi_q)
            v.addcmul_(q, step, value=-1)
            o = out[t * rows:(t + 1) * rows]
            if self.k == 1:
                o.copy_(q)
            else:
                torch.mul(q, self.k, out=o)
        if u8 and self.u8:
            out = torch_ops.to_u8(out)
        return out, sat
