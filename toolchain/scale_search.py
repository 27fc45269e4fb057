"""The λ scale search of the SFN paper: trade synaptic operations against agreement with the
float model.

λ multiplies the calibrated range R_c of every ReLU/Clip layer (never above a Clip's maximum),
so a uniform neuron's threshold becomes λ·R_c/L and an adaptive neuron's levels λ·R_c·ρ_k. A
larger λ puts the first threshold higher: fewer neurons fire, fewer synaptic operations, coarser
levels; a smaller λ gives finer levels and clips the top of the range.

The search compiles the network once per λ of a grid (one λ for the whole network), runs it on
sim.cpu over the calibration inputs (at most MAX_SAMPLES of them, a fixed random subset) and
measures SynOps per inference (Σ stats.synops / samples) and the agreement with the float model
(top-1 agreement for class scores, else the relative RMS error of the readout).

Selection rule, in two filters and a choice:
1. class scores: keep the λ whose top-1 agreement is at least (best agreement on the grid −
   `tolerance`; default 0.005, half a point);
2. of those, keep the λ whose relative RMS error of the readout is at most `error_factor`
   (default 2) × the smallest relative RMS error among them (for outputs that are not class
   scores this is the only filter);
3. take the one with the fewest SynOps per inference (ties: the λ closest to 1).
The second filter is there because top-1 agreement on the calibration (training) inputs
saturates: on digits it is 100% from λ = 0.75 to 3 at 15 levels, while test accuracy does move.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

import sim.cpu
from sim.artifact import Artifact
from toolchain import calibrate as cal
from toolchain.compiled import agreement
from toolchain.errors import QuantizationError
from toolchain.quantize import QuantOptions, Quantizer

DEFAULT_GRID = (0.5, 0.625, 0.75, 0.875, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0)
DEFAULT_TOLERANCE = 0.005
DEFAULT_ERROR_FACTOR = 2.0
MAX_SAMPLES = 2048
RULE = ("keep the λ with top-1 agreement ≥ best − tolerance (class scores); of those, the λ with "
        "relative RMS error ≤ error_factor × their smallest; of those, the fewest SynOps per "
        "inference (ties: λ closest to 1)")


def check_grid(grid, tolerance: float = DEFAULT_TOLERANCE,
               error_factor: float = DEFAULT_ERROR_FACTOR) -> tuple[float, ...]:
    grid = tuple(float(g) for g in grid)
    if not grid or not all(np.isfinite(g) and g > 0 for g in grid):
        raise QuantizationError(f"scale grid {list(grid)}: every λ must be a finite number > 0")
    if not (np.isfinite(tolerance) and 0 <= tolerance <= 1):
        raise QuantizationError(f"scale tolerance {tolerance}: must be between 0 and 1")
    if not (np.isfinite(error_factor) and error_factor >= 1):
        raise QuantizationError(f"scale error factor {error_factor}: must be ≥ 1")
    return tuple(sorted(set(grid)))


def choose(curve: list[dict], tolerance: float = DEFAULT_TOLERANCE,
           error_factor: float = DEFAULT_ERROR_FACTOR) -> dict:
    """The grid point the selection rule picks (module docstring)."""
    keep = [p for p in curve if "error" not in p]
    if not keep:
        raise QuantizationError("scale search: no λ of the grid could be quantized: "
                                + "; ".join(f"λ={p['lambda']}: {p['error']}" for p in curve))
    if all("top1_agreement" in p for p in keep):
        best = max(p["top1_agreement"] for p in keep)
        keep = [p for p in keep if p["top1_agreement"] >= best - tolerance - 1e-12]
    least = min(p["rel_rms_error"] for p in keep)
    keep = [p for p in keep if p["rel_rms_error"] <= error_factor * least + 1e-12]
    return min(keep, key=lambda p: (p["synops"], abs(np.log(p["lambda"]))))


def search(fg, stats, opts: QuantOptions, softmax: str, source, output_name: str,
           data: np.ndarray, where: str, timesteps: int = 1, grid=DEFAULT_GRID,
           tolerance: float = DEFAULT_TOLERANCE, error_factor: float = DEFAULT_ERROR_FACTOR,
           seed: int = 0, progress=None) -> dict:
    """Run the grid; return {"lambda", "curve", "rule", "tolerance", "error_factor",
    "samples"}. `progress(text)` is called before each grid point."""
    grid = check_grid(grid, tolerance)
    if len(data) > MAX_SAMPLES:
        idx = np.sort(np.random.default_rng(seed).choice(len(data), MAX_SAMPLES, replace=False))
        data = data[idx]
    float_out = np.concatenate([o[output_name] for o in
                                cal.run_float(source, data, [output_name])])
    curve, fits = [], {}
    for i, lam in enumerate(grid):
        if progress is not None:
            progress(f"scale search λ = {lam:g} ({i + 1} of {len(grid)})")
        qz = Quantizer(fg, stats, replace(opts, scale=lam), where, fits)
        try:
            nodes, inp, out = qz.run(softmax)
        except QuantizationError as exc:
            curve.append({"lambda": lam, "error": str(exc)})
            continue
        art = Artifact(nodes, inp, out, {}, qz.record)
        res = sim.cpu.run(art, data, timesteps=timesteps)
        a = agreement(float_out, res.output)
        point = {"lambda": lam,
                 "synops": sum(s.synops for s in res.stats.values()) / res.samples,
                 "saturations": sum(s.saturations for s in res.stats.values()),
                 "rel_rms_error": a["rel_rms_error"]}
        if "top1_agreement" in a:
            point["top1_agreement"] = a["top1_agreement"]
        curve.append(point)
    chosen = choose(curve, tolerance, error_factor)
    for p in curve:
        p["chosen"] = p is chosen
    return {"lambda": chosen["lambda"], "curve": curve, "rule": RULE, "tolerance": tolerance,
            "error_factor": error_factor, "samples": int(len(data))}
