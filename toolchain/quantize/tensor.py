"""What the quantizer's rules pass around: the integer tensor record (`QTensor`), the options,
one row of the per-layer table (`LayerRow`), and the small array helpers the rules share."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

# accumulator headroom a weight exponent is chosen for: 2²¹, a quarter of the 24-bit state; 2¹³
# when an Add reads the accumulator, so the Add's output unit can be up to 2⁸ finer than its
# inputs' and its gains keep their bits — but never by a negative exponent (a coarser unit for
# the layer) where 2²¹ fits at exponent 0
HEADROOM = 2 ** 21
HEADROOM_BEFORE_ADD = 2 ** 13
# weight and gain exponents the quantizer uses: the loihi2 target's range (toolchain/targets);
# a negative exponent right-shifts the accumulator, so a layer whose 8-bit weights would
# overflow the state gets a coarser unit instead of fewer weight bits
MIN_WEIGHT_EXP, MAX_WEIGHT_EXP = -8, 7
# a bias much larger than the reachable current (a channel whose input is almost never nonzero,
# its output driven by the folded BatchNorm shift) lowers the weight exponent until
# current bound + |bias| fits in three quarters of the signed 24-bit state (θ/2 takes the rest)
BIAS_HEADROOM = 3 * 2 ** 21
# when even exponent 0 leaves bound + |bias| over BIAS_HEADROOM, the exponent goes below 0 only
# as far as needed to keep it under this (θ//2, capped at the reachable current / L, fits above)
STATE_HEADROOM = 7 * 2 ** 20
# where integers of different elements are added or compared as they are (a pool, the inner
# axis of a product of matrices), their units may differ by this much: the rounding of the
# integer thresholds θ that give a tensor one level step (within 2/θ: θ ≥ 128 keeps it there)
UNIT_SPREAD = 2 ** -6
MAX_ADD_SHIFT = 8           # an Add's output unit: at most 2^8 finer than its finest input
LEAK_SHIFT = 8  # a leaky unit's state carries 8 more bits than its output payload
FIRE_MODES = ("uniform", "adaptive", "quantile")


@dataclass
class QTensor:
    """An integer tensor of the SFN graph as the quantizer sees it: per element, the float `unit`
    one integer step stands for, a pending integer `bias` (added by the neuron or readout that
    consumes it) and a static `bound` on |value|."""
    node: str              # SFN node producing it
    fname: str             # float-graph node whose float value it represents
    unit: np.ndarray       # float64, per-sample shape
    bias: np.ndarray       # int64, per-sample shape (pending)
    bound: np.ndarray      # float64, per-sample shape, max |integer|
    spikes: bool           # payloads of neurons / the encoder (possibly index-mapped, max-pooled)
    synapse_ok: bool       # a synapse may read it: spikes or sum-pools of spikes, no pending bias

    def like(self, node: str, fname: str, unit, bias, bound) -> "QTensor":
        """The same kind of tensor (spikes, synapse_ok) for another node and values."""
        return QTensor(node, fname, unit, bias, bound, spikes=self.spikes,
                       synapse_ok=self.synapse_ok)


def current(node: str, fname: str, unit, bias, bound) -> QTensor:
    """An integer current (a synapse's output): not spikes, not readable by another synapse."""
    return QTensor(node, fname, unit, bias, bound, spikes=False, synapse_ok=False)


def payloads(node: str, fname: str, unit, bias, bound) -> QTensor:
    """Spikes of a neuron or the encoder: any synapse may read them."""
    return QTensor(node, fname, unit, bias, bound, spikes=True, synapse_ok=True)


@dataclass
class QuantOptions:
    levels: int = 15
    # levels of the neurons that are no activation of the model: requantized currents (a
    # residual sum read by a synapse, the operands of products) and arithmetic tables (exp,
    # 1/x, √x, x²) — the quantized model has only its activations' levels
    internal_levels: int = 63
    percentile: float = 99.99
    per_channel: bool = True
    input_bits: int = 8
    # Clip(0, max) ranges: a model trained with clip-floor activations (it declares sfn.levels)
    # is quantized at exactly max / L; otherwise the range is min(max, calibration percentile)
    trust_clip: bool = False
    # calibration inputs lie on this grid (see calibrate.grid_step): encode them losslessly
    input_step: float | None = None
    # fire function of ReLU/Clip neurons and of requantizing neurons (Quantizer.requantize):
    # "uniform" (L equal steps), "adaptive" (non-uniform levels fitted to
    # the calibration distribution: quantile start, Lloyd-Max refinement) or "quantile" (the
    # quantile placement alone, without the refinement)
    fire: str = "uniform"
    # λ: every ReLU/Clip layer's range (hence its thresholds and levels) is λ × the calibrated one
    scale: float = 1.0
    # the timesteps the artifact runs at by default: at T = 1 a bias beyond what can change a
    # neuron's output is clamped (exact there, not with a state carried over timesteps)
    timesteps: int = 1


@dataclass
class LayerRow:
    """One row of the compiler's per-layer table, stored in the artifact's meta["layers"].
    Numbers stay numbers; `levels_text` is what the table shows."""
    name: str
    op: str
    shape: tuple[int, ...]
    neurons: int = 0
    synapses: int = 0
    levels: tuple[int, int] | None = None     # payload range of a neuron or the encoder
    weight_bits: int | None = None            # mantissa bits of a dense/conv layer
    weight_exp: int | None = None             # its power-of-two exponent
    gain_max: int | None = None               # an Add's largest gain mantissa
    gain_exp: int | None = None               # and largest gain exponent
    threshold: tuple[int, int] | None = None  # smallest and largest threshold
    margin_bits: float | None = None          # log2 of the 24-bit state headroom left
    detail: str = ""                          # "joint", "grid", an adaptive level summary

    def levels_text(self) -> str:
        if self.weight_bits is not None:
            text = f"w{self.weight_bits} e{self.weight_exp}"
        elif self.gain_max is not None:
            text = f"gains≤{self.gain_max} e{self.gain_exp}"
        elif self.levels is not None:
            text = f"[{self.levels[0]}, {self.levels[1]}]"
        else:
            text = ""
        return f"{text} {self.detail}".strip()

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def channel_view(a: np.ndarray) -> np.ndarray:
    """Compact broadcast form: (C,1,1) if constant over space, else the array itself."""
    if a.ndim == 3 and np.all(a == a[:, :1, :1]):
        return a[:, :1, :1].copy()
    return a.copy()


def uniform(unit: np.ndarray, axis: int | None = None, spread: float | None = None) -> bool:
    """Whether `unit` is the same within each slice along axes other than `axis` (None: the
    whole array) to a relative spread of UNIT_SPREAD."""
    spread = UNIT_SPREAD if spread is None else spread
    u = np.asarray(unit, np.float64)
    flat = u.reshape(-1) if axis is None else np.moveaxis(u, axis, 0).reshape(u.shape[axis], -1)
    lo, hi = flat.min(axis=-1), flat.max(axis=-1)
    return bool(np.all(hi - lo <= spread * hi))


def compact(a: np.ndarray) -> np.ndarray:
    """A per-sample array in its per-channel broadcast form (C, 1, …, 1) where it is constant
    within each channel, else as it is."""
    a = np.asarray(a)
    if a.ndim < 2:
        return a.copy()
    flat = a.reshape(a.shape[0], -1)
    if np.all(flat == flat[:, :1]):
        return flat[:, :1].reshape((a.shape[0],) + (1,) * (a.ndim - 1)).copy()
    return a.copy()


def per_channel(a: np.ndarray) -> np.ndarray:
    """Per-channel value of an array that must be constant within each channel."""
    flat = a.reshape(a.shape[0], -1)
    return flat[:, 0]


def gain_exponent(fail, name: str, g: np.ndarray) -> int:
    """Exponent e in [MIN_WEIGHT_EXP, 24] so that the largest gain / 2^e is an 8-bit mantissa:
    a negative e (a right shift, each term floored to the output unit) keeps 8 bits of gain
    where the gains are small, instead of rounding a gain of 1.4 to 1."""
    top = float(np.max(g))
    if not np.isfinite(top) or top > 255 * 2 ** 24:
        fail(name, f"input gains reach {top:.3g} output units; the inputs' scales are too far "
                   "apart for 8-bit gains")
    if top <= 0:
        return 0
    return max(MIN_WEIGHT_EXP, int(np.ceil(np.log2(top / 255.0))))


def largest_exponent(bound: float, limit: float) -> int:
    """The largest exponent e in [MIN_WEIGHT_EXP, MAX_WEIGHT_EXP] with bound · 2^e ≤ limit
    (MAX_WEIGHT_EXP for a zero bound; MIN_WEIGHT_EXP when even that exceeds the limit)."""
    if not bound > 0:
        return MAX_WEIGHT_EXP
    e = int(np.floor(np.log2(limit / bound)))
    while bound * 2.0 ** e > limit:          # log2's rounding at exact powers of two
        e -= 1
    return int(min(max(e, MIN_WEIGHT_EXP), MAX_WEIGHT_EXP))


def round_even(x):
    return np.maximum(2 * np.floor(np.asarray(x) / 2 + 0.5), 2).astype(np.int64)
