"""Calibration: per-channel statistics of float activations, read from onnxruntime.

Every float-graph node is named after the ONNX tensor it computes, so the source model is run
once with those tensors added as outputs. Per tensor and channel (axis 1) we keep the maximum of
|value| and the `percentile` of |value| (over a bounded random subsample of each channel). For the
tensors named in `keep_samples` (the ReLU outputs an adaptive fire function is fitted to) a
random subsample of at most SAMPLE_KEEP values of |value| per channel is kept as well.
Without calibration data the compiler uses 64 samples of N(0, 1) and says so (the fallback).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import (Fail, InvalidArgument, InvalidGraph,
                                                         NotImplemented, RuntimeException)

from sim.results import as_float32
from toolchain.errors import ModelError, ShapeError

# onnxruntime's exceptions derive from Exception directly
ORT_ERRORS = (Fail, InvalidArgument, InvalidGraph, NotImplemented, RuntimeException)

SAMPLES_PER_CHANNEL = 20_000
BATCH = 256                      # samples per onnxruntime run while calibrating …
BATCH_BYTES = 256 * 2 ** 20      # … fewer when the tensors it returns would exceed this
SAMPLE_KEEP = 4096  # values per channel kept for fitting adaptive fire functions
FALLBACK_SAMPLES = 64


@dataclass
class ChannelStats:
    max_abs: np.ndarray      # (C,)
    pct_abs: np.ndarray      # (C,) percentile of |x|
    layer_pct_abs: float     # percentile of |x| over all channels together
    min: float
    max: float
    sample: np.ndarray | None = None  # (C, ≤ SAMPLE_KEEP) float32 |x|, only where requested


def _top_count(n: int, percentile: float) -> tuple[int, float, int, int]:
    """For numpy's "linear" percentile of n values: (k, virtual index, below, above), k the
    number of largest values that hold both order statistics it interpolates."""
    virtual = (n - 1) * np.true_divide(percentile, 100)
    below = int(np.floor(virtual))
    return n - below, virtual, below, min(below + 1, n - 1)


def _topk(a: np.ndarray, k: int) -> np.ndarray:
    """The k largest values of each row of a 2-D array, largest first (torch's top-k)."""
    import torch
    return torch.topk(torch.from_numpy(np.ascontiguousarray(a)), k, dim=1).values.numpy()


def _from_top(top: np.ndarray, n: int, percentile: float, flat: bool):
    """np.percentile (method "linear") of n values per row, given each row's k = _top_count(n)
    largest values in descending order: numpy's interpolation, operation for operation (its
    result dtype depends on whether gamma is 0-d, for a flat array, or (1,), along an axis)."""
    k, virtual, below, above = _top_count(n, percentile)
    previous = top[0, k - 1] if flat else top[:, k - 1]
    nxt = top[0, k - 1 - (above - below)] if flat else top[:, k - 1 - (above - below)]
    gamma = np.asanyarray(virtual - np.intp(below))
    if not flat:
        gamma = gamma.reshape(1)
    diff = np.subtract(nxt, previous)
    out = np.asanyarray(np.add(previous, diff * gamma))
    np.subtract(nxt, diff * (1 - gamma), out=out, where=gamma >= 0.5, casting="unsafe",
                dtype=type(out.dtype))
    return out[()] if flat else out


def _upper(n: int, percentile: float) -> bool:
    """Is the percentile high enough that its order statistics are a small top set?"""
    return n > 0 and _top_count(n, percentile)[0] <= max(64, n // 8)


def upper_percentile(values: np.ndarray, percentile: float, axis: int | None = None):
    """np.percentile(values, percentile, axis) (method "linear") bit for bit, for the upper
    percentiles calibration uses: only the order statistics it interpolates are needed, and
    torch's top-k finds those without numpy's full partition (several times faster on
    calibration activations). `values` is 2-D with axis 1, or any shape with axis None."""
    a = values.reshape(1, -1) if axis is None else values
    n = a.shape[1]
    if not (_upper(n, percentile) and np.issubdtype(a.dtype, np.floating)):
        return np.percentile(values, percentile, axis=axis)
    return _from_top(_topk(a, _top_count(n, percentile)[0]), n, percentile, axis is None)


class _Tops:
    """A tensor's calibration values, per channel, as they arrive in batches: only the largest
    values its percentiles need (per channel and over the whole layer) are kept, so a large
    network's activations are not all held at once. `total` is the number of values each
    channel will have in all (known from the batch sizes), which fixes the order statistics
    the percentile interpolates; the result is np.percentile's over all of them, bit for bit."""

    def __init__(self, channels: int, total: int, percentile: float):
        self.total, self.percentile = total, percentile
        self.k = _top_count(total, percentile)[0]
        self.k_all = _top_count(channels * total, percentile)[0]
        self.top = np.zeros((channels, 0), np.float32)
        self.top_all = np.zeros((1, 0), np.float32)

    def add(self, values: np.ndarray) -> None:
        both = np.concatenate([self.top, values], axis=1)
        self.top = _topk(both, min(self.k, both.shape[1]))
        flat = np.concatenate([self.top_all, values.reshape(1, -1)], axis=1)
        self.top_all = _topk(flat, min(self.k_all, flat.shape[1]))

    def result(self) -> tuple[np.ndarray, float]:
        c = len(self.top)
        return (_from_top(self.top, self.total, self.percentile, False),
                float(_from_top(self.top_all, c * self.total, self.percentile, True)))


def session(model: onnx.ModelProto, extra_outputs: list[str]) -> ort.InferenceSession:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for name in extra_outputs:
        if name not in have:
            m.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT,
                                                                     None))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 2
    try:
        return ort.InferenceSession(m.SerializeToString(), opts,
                                    providers=["CPUExecutionProvider"])
    except ORT_ERRORS as exc:
        raise ModelError(f"onnxruntime cannot load the model: "
                         f"{str(exc).splitlines()[0][:300]}") from None


def run_float(model: onnx.ModelProto, x: np.ndarray, names: list[str], batch: int = 256,
              sess: ort.InferenceSession | None = None):
    """Yield dicts name → float activations of each batch of x (the source model, onnxruntime;
    `sess`: a session already made for these names). A model with a fixed batch size runs in
    batches of that size (`batch_size`). A tensor that is not finite on the data (the float
    model overflows float32 or divides by zero there) is a ModelError naming it: every scale
    the quantizer derives from it would be NaN."""
    sess = sess or session(model, names)
    step = batch_size(sess, batch)
    fixed = step != batch or isinstance(sess.get_inputs()[0].shape[0], int)
    name = sess.get_inputs()[0].name
    for start in range(0, len(x), step):
        chunk = x[start:start + step].astype(np.float32)
        if fixed and len(chunk) != step:
            chunk = np.concatenate([chunk, np.zeros((step - len(chunk),) + chunk.shape[1:],
                                                    np.float32)])
        try:
            outs = sess.run(names, {name: chunk})
        except ORT_ERRORS as exc:
            raise ModelError(f"onnxruntime cannot run the model: "
                             f"{str(exc).splitlines()[0][:300]}") from None
        acts = {n: o[:len(x[start:start + step])] for n, o in zip(names, outs)}
        for n, a in acts.items():
            bad = a.size - int(np.count_nonzero(np.isfinite(a)))
            if bad:
                raise ModelError(f"tensor {n!r}: the float model computes {bad} NaN or ±Inf "
                                 "values on the calibration data (its weights or inputs overflow "
                                 "float32)")
        yield acts


def batch_size(sess: ort.InferenceSession, batch: int) -> int:
    """The batch a session runs: the model's own when its batch axis is fixed, else `batch`."""
    first = sess.get_inputs()[0].shape[0]
    return first if isinstance(first, int) and first > 0 else batch


def calibrate(model: onnx.ModelProto, x: np.ndarray, names: list[str], percentile: float,
              seed: int = 0, keep_samples: frozenset[str] | set[str] = frozenset(),
              outputs: dict[str, list] | None = None,
              sample_elements: int = 0) -> dict[str, ChannelStats]:
    """ChannelStats of every tensor in `names` over the inputs x, from one onnxruntime run.
    `outputs`: {tensor: []} — each list receives that tensor's batches too (the model's output
    for the agreement check, so the model is not run twice). `sample_elements`: the values all
    those tensors hold for one sample; the batch shrinks so one run's results stay within
    BATCH_BYTES (a large model's activations are its calibration memory)."""
    rng = np.random.default_rng(seed)
    outputs = outputs or {}
    batch = int(min(BATCH, max(1, BATCH_BYTES // max(4 * sample_elements, 1))))
    keep: dict[str, list[np.ndarray]] = {n: [] for n in names}
    mx: dict[str, np.ndarray] = {}
    lo: dict[str, float] = {n: np.inf for n in names}
    hi: dict[str, float] = {n: -np.inf for n in names}
    per_batch = max(1, SAMPLES_PER_CHANNEL * batch // max(len(x), 1))
    wanted = list(dict.fromkeys(list(names) + list(outputs)))
    sess = session(model, wanted)
    step = batch_size(sess, batch)
    rows = [min(step, len(x) - start) for start in range(0, len(x), step)]
    tops: dict[str, _Tops] = {}
    for acts in run_float(model, x, wanted, batch, sess):
        for n, kept in outputs.items():
            kept.append(acts[n])
        for n in names:
            a = acts[n]
            a = np.abs(a.reshape(a.shape[0], a.shape[1] if a.ndim > 1 else 1, -1))
            lo[n] = min(lo[n], float(acts[n].min()))
            hi[n] = max(hi[n], float(acts[n].max()))
            per_channel = a.transpose(1, 0, 2).reshape(a.shape[1], -1)
            m = per_channel.max(axis=1)
            mx[n] = m if n not in mx else np.maximum(mx[n], m)
            if per_channel.shape[1] > per_batch:
                idx = rng.choice(per_channel.shape[1], per_batch, replace=False)
                per_channel = per_channel[:, idx]
            if n not in tops and n not in keep_samples:
                total = sum(min(per_batch, r * a.shape[2]) for r in rows)
                if _upper(total, percentile) and np.issubdtype(per_channel.dtype, np.floating):
                    tops[n] = _Tops(a.shape[1], total, percentile)
            if n in tops:
                tops[n].add(per_channel)
            else:
                keep[n].append(per_channel)
    stats = {}
    for n in names:
        sample = None
        if n in tops:
            pct, layer_pct = tops.pop(n).result()
        else:
            values = np.concatenate(keep[n], axis=1)
            if n in keep_samples:
                sample = values
                if values.shape[1] > SAMPLE_KEEP:
                    sample = values[:, np.sort(rng.choice(values.shape[1], SAMPLE_KEEP,
                                                          replace=False))]
                sample = sample.astype(np.float32)
            pct = upper_percentile(values, percentile, axis=1)
            layer_pct = float(upper_percentile(values, percentile))
        stats[n] = ChannelStats(mx[n], pct, layer_pct, lo[n], hi[n], sample)
        keep[n] = []
    return stats


def per_tensor(st: ChannelStats) -> ChannelStats:
    """The same statistics with every channel given the whole tensor's: for tensors whose axis
    1 is not a channel axis (the tokens of a (N, tokens, features) tensor), so that their
    neurons get one scale along it."""
    c = len(st.max_abs)
    return ChannelStats(np.full(c, float(st.max_abs.max())), np.full(c, st.layer_pct_abs),
                        st.layer_pct_abs, st.min, st.max, st.sample)


def stats_from_arrays(acts: dict[str, np.ndarray], percentile: float) -> dict[str, ChannelStats]:
    """ChannelStats of activations given directly as (samples, channels) arrays."""
    out = {}
    for n, a in acts.items():
        a = a.reshape(-1, a.shape[-1])
        mag = np.abs(a)
        out[n] = ChannelStats(mag.max(axis=0), np.percentile(mag, percentile, axis=0),
                              float(np.percentile(mag, percentile)), float(a.min()), float(a.max()))
    return out


def fallback_data(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((FALLBACK_SAMPLES,) + tuple(shape)) \
        .astype(np.float32)


def check_data(x: np.ndarray, shape: tuple[int, ...], what: str) -> np.ndarray:
    if x.ndim != len(shape) + 1 or tuple(x.shape[1:]) != tuple(shape):
        raise ShapeError(f"{what} has shape {tuple(x.shape)}, the model expects (N, "
                         f"{', '.join(map(str, shape))})")
    if not np.issubdtype(x.dtype, np.floating) or not np.all(np.isfinite(x)):
        raise ShapeError(f"{what} must be finite floats (dtype {x.dtype})")
    return as_float32(x, what)[0]


def grid_step(x: np.ndarray, max_levels: int) -> float | None:
    """The step δ if every value of x is an integer multiple of δ (pixel/255, pixel/16 …) with
    max|x|/δ ≤ max_levels, else None. Encoding inputs with that step is lossless."""
    values = np.unique(np.abs(x.astype(np.float64)))
    values = values[values > 0]
    if len(values) == 0 or len(values) > max_levels:
        return None
    step = float(np.min(np.diff(np.concatenate([[0.0], values]))))
    k = values / step
    if np.all(np.abs(k - np.rint(k)) < 1e-4) and k.max() <= max_levels + 1e-6:
        return step
    return None
