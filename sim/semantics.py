"""The integer semantics contract, defined once.

Both simulators (`sim.cpu`, the `fixed_pt` Lava models) call these functions, and the reference
ONNX emitted by the compiler spells out the same equations with ONNX ops. All integer arrays are
int64; floats appear only in the input encoder and the readout.

Equations (θ integer > 0, `//` is floor division):
- encoder:   n = clip(floor(x · inv_scale + 1/2), lo, hi)          (float32 arithmetic; every
             clip counted: an input outside the calibrated range)
- shift:     a · 2^e for e ≥ 0, floor(a / 2^−e) for e < 0 (an arithmetic right shift: Lava's
             Dense shifts its accumulator this way; units that get coarser)
- state:     v ← sat(v + I + b),   sat(z) = clip(z, −(2²³−1), 2²³−1), every clip counted
- uniform:   q = clip(floor(v / (K·θ)), lo_q, hi_q),   payload = q·K,   v ← v − q·K·θ
             with v = (K·θ)//2 at the start of a sample (start "half"; start "zero": v = 0,
             the membrane of an imported spiking network); K = 1 (graded spikes, levels [lo, hi])
             or K = max(hi, −lo) (binary spikes, q ∈ {−1 if lo<0, 0, 1}). At T = 1, K = 1 this is
             the multi-threshold neuron n = clip(floor((I + b + θ//2) / θ), lo, hi).
- adaptive:  n = payload[#{k : v ≥ t_k}]   (v = sat(I + b); T = 1 only)
- leak:      v ← sat(v + floor(d · (I + b − v) / 4096))   (recurrent networks; d = 4096: v = I + b)
- no reset:  n = clip(floor((v + θ//2) / θ), lo, hi), v kept (a leaky integrator's rounded state;
             v = 0 at the start of a trial)
- readout:   y = float32(A + T·b) · float32(scale / T),  A = Σ_t accumulator_t
"""
from __future__ import annotations

import numpy as np

STATE_BITS = 24
V_MAX = 2 ** (STATE_BITS - 1) - 1
LEAK_ONE = 4096


def encode_input(x: np.ndarray, inv_scale: np.float32, lo: int, hi: int) -> np.ndarray:
    """n = clip(floor(x·inv_scale + 1/2), lo, hi), computed in float32 like the reference."""
    return encode_input_counted(x, inv_scale, lo, hi)[0]


def encode_input_counted(x: np.ndarray, inv_scale: np.float32, lo: int,
                         hi: int) -> tuple[np.ndarray, int]:
    """`encode_input` and how many elements the clip changed: inputs outside the range the
    encoder was calibrated for (its saturation, counted like the state's). A product beyond
    float32's range is +-inf, which the clip maps to hi or lo: handled, so not warned about."""
    x = np.asarray(x, dtype=np.float32)
    with np.errstate(over="ignore"):
        z = np.floor(x * np.float32(inv_scale) + np.float32(0.5))
    clipped = int(np.count_nonzero(z < lo)) + int(np.count_nonzero(z > hi))
    return np.clip(z, lo, hi).astype(np.int64), clipped


def encode_input_bounded(x: np.ndarray, inv_scale: np.float32, lo: int, hi: int) -> np.ndarray:
    """floor(x·inv_scale + 1/2) (float32, as `encode_input`) clipped to [lo − 1, hi + 1] instead
    of [lo, hi], as int64: integers that still show which elements the encoder's clip changes,
    for an encoder that clips and counts them later (sim.lava's InputEncoder with `encoded`)."""
    x = np.asarray(x, dtype=np.float32)
    with np.errstate(over="ignore"):
        z = np.floor(x * np.float32(inv_scale) + np.float32(0.5))
    return np.clip(z.astype(np.float64), lo - 1, hi + 1).astype(np.int64)


def clip_encoded(n: np.ndarray, lo: int, hi: int) -> tuple[np.ndarray, int]:
    """Integers n clipped to the encoder's levels [lo, hi], and how many the clip changed: the
    second half of `encode_input_counted` for `encode_input_bounded`'s integers."""
    n = np.asarray(n)
    clipped = int(np.count_nonzero(n < lo)) + int(np.count_nonzero(n > hi))
    return np.clip(n, lo, hi).astype(np.int64), clipped


MIN_EXP, MAX_EXP = -31, 31     # the exponents an artifact may hold (a target narrows them)


def shift(a: np.ndarray, exp: int) -> np.ndarray:
    """a · 2^exp for exp ≥ 0, floor(a / 2^−exp) for exp < 0, on int64 (exact)."""
    exp = int(exp)
    return a << exp if exp >= 0 else a >> -exp


def saturate(v: np.ndarray) -> tuple[np.ndarray, int]:
    """Clip to the signed 24-bit state range; return the clipped array and how many clipped."""
    over = np.count_nonzero((v > V_MAX) | (v < -V_MAX))
    if over:
        v = np.clip(v, -V_MAX, V_MAX)
    return v, int(over)


def spike_unit(lo: int, hi: int, binary: bool) -> tuple[int, int, int]:
    """(K, lo_q, hi_q) of one timestep: graded spikes use the neuron's levels, binary ones ±1."""
    if not binary:
        return 1, lo, hi
    return max(hi, -lo), (-1 if lo < 0 else 0), (1 if hi > 0 else 0)


def initial_state(threshold: np.ndarray, k: int) -> np.ndarray:
    """v at the start of a sample for the uniform fire function: (K·θ)//2 (the +θ/2 offset)."""
    return (np.asarray(threshold, dtype=np.int64) * k) // 2


def fire_uniform(v: np.ndarray, threshold: np.ndarray, k: int, lo_q: int, hi_q: int):
    """One step of the uniform multi-threshold neuron; returns (payload, v after reset)."""
    step = np.asarray(threshold, dtype=np.int64) * k
    # floor(v / step) in float64 is exact here (|v|, step < 2^24 leave a relative gap ≥ 2^-48
    # between v/step and the next integer) and several times faster than int64 floor division
    q = np.floor(v / step.astype(np.float64))
    np.clip(q, lo_q, hi_q, out=q)
    q = q.astype(np.int64)
    return q * k, v - q * step


def fire_once(current: np.ndarray, bias: np.ndarray, threshold: np.ndarray, lo: int, hi: int):
    """The T = 1 multi-threshold neuron in one pass: v = sat(θ//2 + I + b),
    n = clip(floor(v/θ), lo, hi) — `fire_uniform` from the initial state with K = 1, without
    computing the residual state nobody reads. Returns (n, saturation count)."""
    theta = np.asarray(threshold, dtype=np.int64)
    v = current + (np.asarray(bias, dtype=np.int64) + theta // 2)
    v, sat = saturate(v)
    q = np.floor(v / theta.astype(np.float64))
    np.clip(q, lo, hi, out=q)
    return q.astype(np.int64), sat


def fire_state(v: np.ndarray, threshold: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Rounded readout of the state without reset: clip(floor((v + θ//2)/θ), lo, hi)."""
    theta = np.asarray(threshold, dtype=np.int64)
    q = np.floor((v + theta // 2) / theta.astype(np.float64))
    return np.clip(q, lo, hi).astype(np.int64)


LUT_ENTRIES = 1 << 24      # a table neuron's count lookup: at most this many entries
COUNTER_BYTES = 1 << 26    # what the kept counters may hold before they are dropped
_COUNTERS: dict[tuple, tuple] = {}   # thresholds array → (the array, its counter): _counter


def _counter(t: np.ndarray) -> tuple:
    """How to count #{k : v ≥ t_k} for the rows of `t` (..., K): (offset, low, high, lut,
    keys, row). The distinct rows r = 0…R−1 (`row`: the one each neuron reads) are laid in
    disjoint bands of width `span` over v ∈ [low − 1, high] (v clipped there keeps its count in
    every row; `offset` = r·span − low + 1 per neuron): `lut[r·span + v − low + 1]` is the
    count where R·span ≤ LUT_ENTRIES, else `keys` holds the banded thresholds
    r·span + t − low + 1 for one searchsorted. Kept per thresholds array
    (the array owning the data, its shape and strides; the array is held, so its id is not
    reused while the entry lives)."""
    owner = t
    while isinstance(owner.base, np.ndarray):   # a view (a batch axis added) counts as its array
        owner = owner.base
    key = (id(owner), t.shape, t.strides)
    hit = _COUNTERS.get(key)
    if hit is not None and hit[0] is owner:
        return hit[1]
    k = t.shape[-1]
    distinct, row = np.unique(t.reshape(-1, k).astype(np.int64), axis=0, return_inverse=True)
    row = row.reshape(t.shape[:-1]).astype(np.int64)
    low, high = int(distinct.min()), int(distinct.max())
    span = high - low + 2
    lut = keys = None
    if len(distinct) * span <= LUT_ENTRIES:
        grid = np.arange(low - 1, high + 1, dtype=np.int64)
        lut = np.concatenate([np.searchsorted(r, grid, side="right") for r in distinct])
        lut = lut.astype(np.uint8 if k < 256 else np.int64)
    else:
        keys = (distinct - (low - 1) +
                span * np.arange(len(distinct), dtype=np.int64)[:, None]).ravel()
    counter = (span * row - (low - 1), low, high, lut, keys, row)
    held = sum(a.nbytes for _, c in _COUNTERS.values() for a in (c[0], c[3], c[4], c[5])
               if a is not None)
    if len(_COUNTERS) >= 256 or held > COUNTER_BYTES:
        _COUNTERS.clear()
    _COUNTERS[key] = (owner, counter)
    return counter


def fire_adaptive(v: np.ndarray, thresholds: np.ndarray, payload: np.ndarray) -> np.ndarray:
    """n = payload[#{k : v ≥ t_k}]; thresholds (..., K) ascending per neuron (the artifact check
    refuses any other), payload (K+1,), v broadcastable against thresholds[..., 0].

    Up to 8 thresholds the count is the plain sum of comparisons; beyond, a lookup table of the
    count over the thresholds' range (one gather) or one numpy searchsorted over the distinct
    rows laid in disjoint bands (_counter) gives the same count."""
    t = np.asarray(thresholds)
    pay = np.asarray(payload, dtype=np.int64)
    k = t.shape[-1]
    if k <= 8:
        return pay[np.sum(v[..., None] >= t, axis=-1)]
    offset, low, high, lut, keys, row = _counter(t)
    band = np.clip(v, low - 1, high) + offset   # r·span + v − low + 1: v's place in row r
    if lut is not None:
        return pay[lut[band]]
    return pay[np.searchsorted(keys, band, side="right") - k * row]


def leak(v: np.ndarray, current: np.ndarray, decay: int) -> np.ndarray:
    """v + floor(d·(I − v)/4096); d = 4096 returns I (no memory)."""
    return v + (decay * (current - v)) // LEAK_ONE


def neuron_step(current: np.ndarray, v: np.ndarray | None, *, bias, threshold, lo: int,
                hi: int, fire: str = "uniform", thresholds=None, payload=None,
                decay: int = LEAK_ONE, reset: str = "subtract", binary: bool = False,
                keep: bool = True, start: str = "half"):
    """One timestep of an SFN neuron, the equations above, in int64: returns (payload, v after
    the step — None where no state survives it —, saturations).

    `current` is the integer input current I (B, *shape); bias, threshold, thresholds broadcast
    against it; `v` is the state carried from the previous timestep of the same sample or trial,
    None at its start (uniform fire: v = (K·θ)//2, or 0 with start "zero"; reset "none":
    v = 0). `keep` False: nobody
    reads the state after this step (a T = 1 pass), so a uniform neuron without leak takes the
    one-pass form `fire_once`, which gives the same payload."""
    if fire == "adaptive":
        v, sat = saturate(current + bias)
        return fire_adaptive(v, thresholds, payload), None, sat
    if reset == "none":
        drive = current + bias
        v, sat = saturate(leak(0 if v is None else v, drive, decay) if decay < LEAK_ONE
                          else drive)
        return fire_state(v, threshold, lo, hi), v, sat
    k, lo_q, hi_q = spike_unit(lo, hi, binary)
    if v is None and not keep and k == 1 and decay == LEAK_ONE and start == "half":
        out, sat = fire_once(current, bias, threshold, lo_q, hi_q)
        return out, None, sat
    if v is None:
        v = np.broadcast_to(initial_state(threshold, k) if start == "half" else
                            np.zeros((), np.int64), np.shape(current))
    if decay < LEAK_ONE:
        v, sat = saturate(leak(v, current + bias, decay))
    else:
        v, sat = saturate(v + current + bias)
    out, v = fire_uniform(v, threshold, k, lo_q, hi_q)
    return out, v, sat


def neuron_step_float(current: np.ndarray, v: np.ndarray | None, *, bias, threshold, lo: int,
                      hi: int, fire: str = "uniform", thresholds=None, payload=None,
                      decay: int = LEAK_ONE, reset: str = "subtract", binary: bool = False,
                      start: str = "half"):
    """`neuron_step` in float64 without the 24-bit state clip (Lava's floating_pt models): v is
    never clipped (a would-be clip is still counted) and the fire divides in float. Every value
    is an integer below 2⁵³, where float64 addition, the leak's product and the floor of a
    quotient are exact, so this equals `neuron_step` whenever that reports no saturation.
    Returns (payload as float64, v, saturations)."""
    drive = np.asarray(current, np.float64) + np.asarray(bias, np.float64)
    theta = np.asarray(threshold, np.float64)
    if fire == "adaptive":
        sat = int(np.count_nonzero(np.abs(drive) > V_MAX))
        crossed = np.sum(drive[..., None] >= np.asarray(thresholds, np.float64), axis=-1)
        return np.asarray(payload, np.float64)[crossed], None, sat
    if reset == "none":
        v = 0.0 if v is None else v
        v = v + np.floor(decay * (drive - v) / LEAK_ONE) if decay < LEAK_ONE else drive
        q = np.clip(np.floor((v + np.floor(theta / 2)) / theta), lo, hi)
        return q, v, int(np.count_nonzero(np.abs(v) > V_MAX))
    k, lo_q, hi_q = spike_unit(lo, hi, binary)
    step = k * theta
    if v is None:
        v = np.floor(step / 2) if start == "half" else np.zeros_like(step)
    v = v + np.floor(decay * (drive - v) / LEAK_ONE) if decay < LEAK_ONE else v + drive
    sat = int(np.count_nonzero(np.abs(v) > V_MAX))
    q = np.clip(np.floor(v / step), lo_q, hi_q)
    return q * k, v - q * step, sat


def readout(acc_sum: np.ndarray, bias: np.ndarray, scale: np.ndarray, timesteps: int) -> np.ndarray:
    """y = float32(A + T·b) · float32(scale / T), A the accumulator summed over T steps."""
    total = np.asarray(acc_sum, dtype=np.int64) + timesteps * np.asarray(bias, dtype=np.int64)
    factor = (np.asarray(scale, dtype=np.float64) / timesteps).astype(np.float32)
    return total.astype(np.float32) * factor


def softmax(y: np.ndarray, log: bool = False) -> np.ndarray:
    """Softmax over the last axis in float64, returned as float32 (readout post-processing)."""
    z = y.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return (z - lse if log else np.exp(z - lse)).astype(np.float32)
