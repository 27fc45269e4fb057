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

from toolchain.errors import ModelError, ShapeError

# onnxruntime's exceptions derive from Exception directly
ORT_ERRORS = (Fail, InvalidArgument, InvalidGraph, NotImplemented, RuntimeException)

SAMPLES_PER_CHANNEL = 20_000
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


def upper_percentile(values: np.ndarray, percentile: float, axis: int | None = None):
    """np.percentile(values, percentile, axis) (method "linear") bit for bit, for the upper
    percentiles calibration uses: only the order statistics it interpolates are needed, and
    torch's top-k finds those without numpy's full partition (several times faster on
    calibration activations). `values` is 2-D with axis 1, or any shape with axis None."""
    try:
        import torch
    except ImportError:
        return np.percentile(values, percentile, axis=axis)
    a = values.reshape(1, -1) if axis is None else values
    n = a.shape[1]
    q = np.true_divide(percentile, 100)
    virtual = (n - 1) * q                        # numpy's "linear" virtual index
    below = int(np.floor(virtual))
    above = min(below + 1, n - 1)
    k = n - below                                # ranks below … n − 1, largest first
    if n == 0 or k > max(64, n // 8) or not np.issubdtype(a.dtype, np.floating):
        return np.percentile(values, percentile, axis=axis)
    top = torch.topk(torch.from_numpy(np.ascontiguousarray(a)), k, dim=1).values.numpy()
    # flat: numpy scalars (as numpy indexes them); along an axis: arrays
    previous = top[0, k - 1] if axis is None else top[:, k - 1]
    nxt = top[0, k - 1 - (above - below)] if axis is None else top[:, k - 1 - (above - below)]
    # numpy's gamma: 0-d for a flat array, shape (1,) along an axis (which decides whether
    # float32 values are interpolated in float32 or float64)
    gamma = np.asanyarray(virtual - np.intp(below))
    if axis is not None:
        gamma = gamma.reshape(1)
    diff = np.subtract(nxt, previous)            # numpy's _lerp, operation for operation
    out = np.asanyarray(np.add(previous, diff * gamma))
    np.subtract(nxt, diff * (1 - gamma), out=out, where=gamma >= 0.5, casting="unsafe",
                dtype=type(out.dtype))
    return out[()] if axis is None else out


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


def run_float(model: onnx.ModelProto, x: np.ndarray, names: list[str], batch: int = 256):
    """Yield dicts name → float activations of each batch of x (the source model, onnxruntime)."""
    sess = session(model, names)
    inp = sess.get_inputs()[0]
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) else None
    step = fixed or batch
    for start in range(0, len(x), step):
        chunk = x[start:start + step].astype(np.float32)
        if fixed and len(chunk) != fixed:
            chunk = np.concatenate([chunk, np.zeros((fixed - len(chunk),) + chunk.shape[1:],
                                                    np.float32)])
        try:
            outs = sess.run(names, {inp.name: chunk})
        except ORT_ERRORS as exc:
            raise ModelError(f"onnxruntime cannot run the model: "
                             f"{str(exc).splitlines()[0][:300]}") from None
        yield {n: o[:len(x[start:start + step])] for n, o in zip(names, outs)}


def calibrate(model: onnx.ModelProto, x: np.ndarray, names: list[str], percentile: float,
              seed: int = 0, keep_samples: frozenset[str] | set[str] = frozenset(),
              outputs: dict[str, list] | None = None) -> dict[str, ChannelStats]:
    """ChannelStats of every tensor in `names` over the inputs x, from one onnxruntime run.
    `outputs`: {tensor: []} — each list receives that tensor's batches too (the model's output
    for the agreement check, so the model is not run twice)."""
    rng = np.random.default_rng(seed)
    outputs = outputs or {}
    keep: dict[str, list[np.ndarray]] = {n: [] for n in names}
    mx: dict[str, np.ndarray] = {}
    lo: dict[str, float] = {n: np.inf for n in names}
    hi: dict[str, float] = {n: -np.inf for n in names}
    per_batch = max(1, SAMPLES_PER_CHANNEL * 256 // max(len(x), 1))
    for acts in run_float(model, x, list(dict.fromkeys(list(names) + list(outputs)))):
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
            keep[n].append(per_channel)
    stats = {}
    for n in names:
        values = np.concatenate(keep[n], axis=1)
        sample = None
        if n in keep_samples:
            sample = values
            if values.shape[1] > SAMPLE_KEEP:
                sample = values[:, np.sort(rng.choice(values.shape[1], SAMPLE_KEEP, replace=False))]
            sample = sample.astype(np.float32)
        stats[n] = ChannelStats(mx[n], upper_percentile(values, percentile, axis=1),
                                float(upper_percentile(values, percentile)), lo[n], hi[n],
                                sample)
        keep[n] = []
    return stats


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
    return x.astype(np.float32)


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
