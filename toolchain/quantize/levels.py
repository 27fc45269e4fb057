"""Level fitting: where an activation's integer levels and table thresholds go.

- `fit_levels`: the non-uniform levels of an adaptive ReLU (quantile placement, Lloyd-Max
  refinement, integer payloads on a 2L grid) fitted to a calibration sample.
- `function_steps`: the inputs at which a rounded elementwise function changes its output level,
  the integer thresholds of a table (adaptive) neuron.
"""
from __future__ import annotations

import numpy as np

FIT_MAX_VALUES = 1 << 18      # pooled normalized values a layer's level shape is fitted on
# payload resolution: the integer levels live on a grid Q = 2·L, one bit more than uniform
# levels need. A finer grid would follow the fitted levels more closely, but every consumer's
# static 24-bit accumulator bound grows with the largest payload, and where that bound already
# binds (a 1×1 projection feeding a residual Add, weight exponent 0) the Add's integer gains lose
# the same bits: MobileNetV2 at 15 levels, relative error on its calibration images 0.076
# uniform, 0.083 with Q = 2L, 0.154 with Q = 4L, 0.178 with Q ≈ 8L (docs/conversion.md)
PAYLOAD_MULT = 2
REFINE_VALUES = 1 << 16       # order statistics the integer levels are refined on


def _level_mse(u: np.ndarray, rho: np.ndarray) -> float:
    """Mean squared error of nearest-level quantization (round half up) of u ∈ [0, 1] to the
    levels 0, ρ_1, …, ρ_L."""
    levels = np.concatenate([[0.0], rho])
    edges = (levels[:-1] + levels[1:]) / 2
    q = levels[np.searchsorted(edges, u, side="right")]
    return float(np.mean((u - q) ** 2))


def _lloyd(u: np.ndarray, rho: np.ndarray, iters: int = 200) -> np.ndarray:
    """Lloyd-Max on sorted u with the level 0 fixed: edges at midpoints, levels at the means of
    their bins (an empty bin keeps its level)."""
    cs = np.concatenate([[0.0], np.cumsum(u)])
    for _ in range(iters):
        levels = np.concatenate([[0.0], rho])
        start = np.searchsorted(u, (levels[:-1] + levels[1:]) / 2, side="left")
        end = np.append(start[1:], len(u))
        count = end - start
        new = np.where(count > 0, (cs[end] - cs[start]) / np.maximum(count, 1), rho)
        new = np.maximum.accumulate(new)
        if np.allclose(new, rho, rtol=0, atol=1e-10):
            return new
        rho = new
    return rho


def _refine_integer(u: np.ndarray, y: np.ndarray, q: int, passes: int = 8) -> np.ndarray:
    """Coordinate descent of the integer levels y (strictly increasing, 1 ≤ y_k ≤ q) on the
    squared error of u; the uniform levels win if they are better."""
    L = len(y)
    best = _level_mse(u, y / q)
    for _ in range(passes):
        moved = False
        for k in range(L):
            for step in (-1, 1):
                c = y.copy()
                c[k] += step
                if c[k] < 1 or c[k] > q or (k and c[k] <= c[k - 1]) or \
                        (k < L - 1 and c[k] >= c[k + 1]):
                    continue
                e = _level_mse(u, c / q)
                if e < best:
                    y, best, moved = c, e, True
        if not moved:
            break
    uniform = np.arange(1, L + 1) * (q // L)
    return uniform if _level_mse(u, uniform / q) < best else y


def fit_levels(sample: np.ndarray, ranges: np.ndarray, L: int, method: str = "adaptive",
               seed: int = 0) -> dict:
    """Normalized level shape ρ_1 < … < ρ_L of one ReLU layer and its integer payloads.

    The values |x| of each channel c (sample (C, n)) are divided by the channel's calibrated
    range R_c and clipped to [0, 1], and pooled over the layer (at most FIT_MAX_VALUES of them).
    "quantile": ρ_k = the (k − ½)/L quantile of the positive pooled values — every level stands
    for the same share of the nonzero activations, as the SFN paper places its thresholds.
    "adaptive": Lloyd-Max (1-D k-means with the level 0 fixed, so zero stays zero and silent)
    started from the quantile levels and, separately, from the uniform levels k/L; the start
    whose result has the lower squared error wins, so the fitted levels are never worse than the
    uniform ones on the calibration sample.

    Integer payloads on the grid Q = PAYLOAD_MULT·L: y_k = round(ρ_k·Q), made strictly
    increasing; "adaptive" then moves single levels by ±1 while the squared error falls
    (coordinate descent on the grid) and keeps the uniform levels y_k = PAYLOAD_MULT·k if those
    are better still, so its integer levels never lose to the uniform ones on the sample."""
    ok = ranges > 0
    u = (np.asarray(sample, np.float64)[ok] / ranges[ok, None]).reshape(-1)
    u = np.clip(u, 0.0, 1.0)
    if u.size > FIT_MAX_VALUES:
        u = np.random.default_rng(seed).choice(u, FIT_MAX_VALUES, replace=False)
    u = np.sort(u)
    uniform = np.arange(1, L + 1) / L
    pos = u[u > 0]
    if len(pos) >= L:
        quant = np.quantile(pos, (np.arange(1, L + 1) - 0.5) / L)
    else:
        quant = uniform
    if method == "quantile":
        rho = quant
    else:
        fits = [_lloyd(u, quant.copy()), _lloyd(u, uniform.copy())]
        rho = min(fits, key=lambda r: _level_mse(u, r))
    rho = np.maximum.accumulate(np.maximum(rho, 1e-9))
    target = _level_mse(u, rho) if len(u) else 0.0
    q = PAYLOAD_MULT * L
    y = np.rint(rho * q).astype(np.int64)
    y[0] = max(y[0], 1)
    for k in range(1, L):
        y[k] = max(y[k], y[k - 1] + 1)
    if method != "quantile" and len(u):
        y = _refine_integer(u[::max(1, len(u) // REFINE_VALUES)], y, q)
    err = _level_mse(u, y / q) if len(u) else 0.0
    return dict(rho=rho, payload=np.concatenate([[0], y]).astype(np.int64), q=int(q),
                mse=err, mse_fitted=target, mse_uniform=_level_mse(u, uniform) if len(u) else 0.0,
                quantile_levels=quant, values=int(len(u)), positive=int(len(pos)))


def function_steps(fn, s: float, lo: int, hi: int, reach: float, samples: int = 20001):
    """Edges z_1 < … < z_K and payloads y_0 … y_K of n(z) = clip(floor(fn(z)/s + 1/2), lo, hi)
    for |z| ≤ reach: n = y_k on [z_k, z_{k+1}). A uniform and a geometric grid (fine near 0)
    locate the changes, bisection pins each one to float precision."""
    reach = min(max(reach, 1e-6), 1e12)
    geo = np.geomspace(reach * 1e-9, reach, samples)
    z = np.unique(np.concatenate([-geo, [0.0], geo, np.linspace(-reach, reach, samples)]))

    def level(v):
        with np.errstate(all="ignore"):
            f = np.asarray(fn(np.asarray(v, np.float64)), np.float64)
            if np.any(np.isnan(f)):
                raise ValueError("the function is undefined (NaN) on part of the reachable "
                                 f"input range [{-reach:.3g}, {reach:.3g}]")
            return np.clip(np.floor(f / s + 0.5), lo, hi)   # f/s may pass float64's range

    n = level(z)
    edges, payload = [], [int(n[0])]

    def split(a, b, na, nb):
        # a < b, level(a) = na != nb = level(b): record every change inside (a, b], in order
        m = 0.5 * (a + b)
        if m <= a or m >= b or b - a <= 1e-13 * max(1.0, abs(a), abs(b)):
            edges.append(b)
            payload.append(int(nb))
            return
        nm = level(m)
        if nm != na:
            split(a, m, na, nm)
        if nm != nb:
            split(m, b, nm, nb)

    for i in np.flatnonzero(n[1:] != n[:-1]):
        split(z[i], z[i + 1], n[i], n[i + 1])
    return np.asarray(edges, np.float64), np.asarray(payload, np.int64)


