"""`compile_gated`: a model around one ONNX LSTM or GRU node → calibrate on trials → quantize
(per unit or per layer, whichever reproduces the float read-out better) → artifact.

The gates are sigmoid and tanh table neurons at --levels, their products Product nodes, the
operands of products that are currents (GRU's R_n·h + b) requantized at --internal-levels, and
the states c' and h' neurons whose previous payloads Delay nodes read (toolchain.rnn.gated,
toolchain.quantize.gated)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

import sim.cpu
from sim.artifact import Artifact
from toolchain import calibrate as cal
from toolchain.compiled import Compiled, agreement, finish_recurrent, layer_rows_json
from toolchain.errors import ModelError, ShapeError
from toolchain.quantize import QuantOptions, Quantizer
from toolchain.rnn.cell import DEFAULT_RNN_LEVELS
from toolchain.rnn.gated import read_gated
from toolchain.rnn.scales import build_either, input_step
from toolchain.tasks import trial_ids

# levels of the states c' and h': they are no activation of the model, and their rounding error
# enters the recurrence every step (examples/gated_rnn_gonogo.py, relative RMS error of the
# read-out on the calibration trials: LSTM 3.19% at 255 levels, 0.55% at 1023; GRU 1.04%, 0.57%).
# Fewer where a gate's levels times the state's would leave the state's sum
# of two products (doubled) over the Add's 2^21 headroom at a gain of 1: below that the
# recurrent term's gain is no longer a whole power of two
STATE_LEVELS = 1023


def state_levels_for(levels: int) -> int:
    return int(max(1, min(STATE_LEVELS, 2 ** 19 // max(levels, 1))))


def compile_gated(path, model, sha: str, calib: np.ndarray | None, levels: int | None,
                  internal_levels: int, percentile: float, target: str = "loihi2",
                  per_channel: bool | None = None, dale: bool | None = None,
                  state_levels: int | None = None) -> Compiled:
    """Compile the LSTM or GRU model `model` (read from `path`, SHA-256 `sha`) calibrated on
    trials `calib` (N, T, n_in). Activation scales as compile_rnn chooses them (the states c'
    and h' take one per layer either way); `state_levels`: the states' level count (default:
    state_levels_for(levels))."""
    cell = read_gated(model, str(path))
    if dale:
        raise ModelError(f"{path}: Dale's law (--dale) applies to E/I cells and RNN models; "
                         f"an {cell.kind.upper()} has no excitatory and inhibitory units")
    notes = [cell.describe()]
    if calib is None:
        raise ShapeError(f"{path}: pass --calib trials (N, T, n_inputs); the model names no task")
    calib = np.asarray(calib, dtype=np.float32)
    if calib.ndim != 3 or calib.shape[2] != cell.n_inputs:
        raise ShapeError(f"calibration trials have shape {calib.shape}, expected (N, T, "
                         f"{cell.n_inputs})")
    levels = levels or DEFAULT_RNN_LEVELS
    state_levels = state_levels or state_levels_for(levels)
    acts = cell.trials(calib.astype(np.float64))
    stats = cal.stats_from_arrays(acts, percentile)
    # the states take one scale per layer either way: their sum's recurrent term then has one
    # unit, and a power-of-two gain keeps it exact in every unit (quantize.gated)
    for name in ("c", "h"):
        if name in stats:
            stats[name] = cal.per_tensor(stats[name])
    step = input_step(calib, notes)
    float_o = acts["o_out"].reshape(calib.shape[1], len(calib), -1).transpose(1, 0, 2)
    n = cell.n_units

    def build(pc: bool):
        qz = Quantizer(cell.float_graph(state_levels), stats,
                       QuantOptions(levels=levels, internal_levels=internal_levels,
                                    percentile=percentile, per_channel=pc, input_step=step),
                       str(path))
        nodes, inp, out = qz.run("")
        meta = {"source": {"file": Path(path).name, "sha256": sha, "kind": cell.origin},
                "levels": levels, "internal_levels": internal_levels,
                "state_levels": state_levels, "timesteps": 1,
                "calibration": f"{len(calib)} trials of {calib.shape[1]} steps, percentile "
                               f"{percentile}, per {'channel' if pc else 'layer'}",
                "rnn": {"cell": cell.kind, "n_units": n, "task": None, "per_channel": pc,
                        "linear_before_reset": cell.linear_before_reset
                        if cell.kind == "gru" else None,
                        "calibration_trials": trial_ids(calib)},
                "layers": layer_rows_json(qz.layers)}
        art = Artifact(nodes, inp, out, meta, qz.record)
        art.validate()
        return art, qz, agreement(float_o, sim.cpu.run(art, calib, count=False).output)

    art, qz, agree = build_either(build, per_channel, notes)
    return finish_recurrent(art, qz.layers, notes, agree, target)
