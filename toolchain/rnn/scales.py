"""Scales of a recurrent network: the input encoding's step for trials on a grid, and per-unit or
per-layer activation scales, whichever reads out closer."""
from __future__ import annotations

import numpy as np

from toolchain import calibrate as cal
from toolchain.errors import QuantizationError


def input_step(calib: np.ndarray, notes: list[str]) -> float | None:
    """The encoder step for calibration trials that lie on a grid (task inputs: coherences k/64,
    values k/10), as compile_onnx encodes feed-forward inputs losslessly, divided by the largest
    integer that keeps max|x| within the encoder's range (its bound sets the accumulator units);
    None when they do not. A note says so."""
    top = 127 if calib.min() < 0 else 255
    step = cal.grid_step(calib, top)
    if step:
        step /= max(1, top // max(1, int(round(float(np.abs(calib).max()) / step))))
        notes.append(f"calibration trials lie on a grid of step {step:.6g}: input encoding is "
                     "lossless for such inputs")
    return step


def build_either(build, per_channel: bool | None, notes: list[str]) -> tuple:
    """`build(pc)` → (artifact, quantizer, agreement, …) for per-unit (True) or per-layer
    (False) scales. With `per_channel` None both are built and the one whose read-out on the
    calibration trials has the smaller relative RMS error is kept (a way that does not fit is
    skipped; if neither fits, the per-layer error is raised); a note says which and why.
    Returns the chosen build's tuple."""
    if per_channel is not None:
        made = build(per_channel)
        notes.append(f"activation scales: one per {'unit' if per_channel else 'layer'} (as asked)")
        return made
    built, failed = {}, {}
    for pc in (False, True):
        try:
            built[pc] = build(pc)
        except QuantizationError as exc:   # one way may not fit; the other may
            failed[pc] = exc
    if not built:
        raise failed[False]
    chosen = min(built, key=lambda pc: built[pc][2]["rel_rms_error"])
    way = {False: "layer", True: "unit"}
    errors = ", ".join(f"per {way[pc]} {built[pc][2]['rel_rms_error']:.4f}" for pc in built)
    notes.append(f"activation scales: one per {way[chosen]}, the closer read-out on the "
                 f"calibration trials (relative RMS error: {errors}"
                 f"{'; per unit does not fit' if True in failed else ''}"
                 f"{'; per layer does not fit' if False in failed else ''})")
    return built[chosen]
