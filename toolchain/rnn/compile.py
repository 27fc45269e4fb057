"""`compile_rnn`: a recurrent cell model → calibrate on trials → quantize (per unit or per layer,
whichever reproduces the float read-out better) → Dale's law check → artifact."""
from __future__ import annotations

from pathlib import Path

import numpy as np

import sim.cpu
from sim.artifact import Artifact
from toolchain import calibrate as cal
from toolchain.compiled import Compiled, agreement, finish_recurrent, layer_rows_json
from toolchain.errors import ShapeError
from toolchain.onnx_import.loader import read_model
from toolchain.quantize import QuantOptions, Quantizer
from toolchain.rnn.cell import (DEFAULT_RNN_LEVELS, check_dale, check_dale_signs, float_graph,
                                is_rnn_cell, read_cell, unit_signs)
from toolchain.rnn.cell_graph import read_cell_graph
from toolchain.rnn.compile_gated import compile_gated
from toolchain.rnn.gated import is_gated
from toolchain.rnn.onnx_rnn import is_onnx_rnn, read_onnx_rnn
from toolchain.rnn.scales import build_either, input_step
from toolchain.rnn.sequence import is_sequence_graph, read_sequence
from toolchain.tasks import make_task, trial_ids


def compile_rnn(path, calib: np.ndarray | None, levels: int | None, percentile: float,
                target: str = "loihi2", read=None, per_channel: bool | None = None,
                dale: bool | None = None, state: str | None = None,
                internal_levels: int = QuantOptions.internal_levels) -> Compiled:
    """Compile an ei_rnn_cell model, a model around one ONNX RNN operator (rnn.read_onnx_rnn),
    a one-step cell graph (rnn.cell_graph, `state`: the name of its state input if not found
    from the graph) or an unrolled recurrence (rnn.sequence, folded into its cell); calibrate on `calib` trials (N, T, n_in) or on the trials of the task its
    metadata names. `dale`: verify Dale's law on the integer recurrent weights (None: as the
    model's metadata says); outside an ei_rnn_cell each unit's sign is its float column's.

    Activation scales: `per_channel` True (one per unit) or False (one per layer); None (the
    default) quantizes both ways and keeps the one whose read-out is closer to the float
    network's on the calibration trials (relative RMS error). Neither wins everywhere: a unit's
    scale multiplies its column of W_rec, so per-unit scales spread the columns apart and the
    8-bit weights of quiet units lose precision, while one scale per layer leaves quiet units
    few levels. (CDDM, 100 units: tanh with Dale's law deployed R² 0.895 per layer against 0.814
    per unit, float 0.922; ReLU with Dale's law 0.965 per layer against 0.989 per unit, float
    0.995. The RMS error picks the better of the two in both.)

    A model around an ONNX LSTM or GRU node goes to compile_gated (`internal_levels`: the levels
    of the operands of its products that are currents)."""
    model, sha = read or read_model(path)
    if is_onnx_rnn(model) and is_gated(model):
        return compile_gated(path, model, sha, calib, levels, internal_levels, percentile,
                             target, per_channel, dale)
    if is_onnx_rnn(model):
        cell = read_onnx_rnn(model, str(path))
    elif is_rnn_cell(model):
        cell = read_cell(model, str(path))
    elif is_sequence_graph(model) and state is None:
        cell = read_sequence(model, str(path))
    else:
        cell = read_cell_graph(model, str(path), state)
    signs = None
    if dale is not None:
        cell.dale = dale
    if cell.dale and (cell.origin != "ei_rnn_cell" or not cell.n_exc):
        signs = unit_signs(cell.W_rec, str(path))
    notes = [cell.describe()]
    if calib is None:
        if not cell.task:
            raise ShapeError(f"{path}: pass --calib trials (N, T, n_inputs); the model names no task")
        calib = make_task(cell.task).inputs
        notes.append(f"calibrated on the {len(calib)} trials of its task {cell.task!r}")
    calib = np.asarray(calib, dtype=np.float32)
    if calib.ndim != 3 or calib.shape[2] != cell.W_inp.shape[1]:
        raise ShapeError(f"calibration trials have shape {calib.shape}, expected (N, T, "
                         f"{cell.W_inp.shape[1]})")
    levels = levels or DEFAULT_RNN_LEVELS
    fg = float_graph(cell)
    acts = cell.trials(calib.astype(np.float64))
    stats = cal.stats_from_arrays(acts, percentile)
    step = input_step(calib, notes)
    n_exc = (cell.n_exc if signs is None else int(np.sum(signs > 0))) if cell.dale else 0
    # Cell.trials stacks time-major: rows t·N … (t+1)·N − 1 are step t of every trial
    float_o = acts["o"].reshape(calib.shape[1], len(calib), -1).transpose(1, 0, 2)

    def build(pc: bool):
        qz = Quantizer(fg, stats, QuantOptions(levels=levels, percentile=percentile,
                                               per_channel=pc, input_step=step), str(path))
        nodes, inp, out = qz.run("")
        # Dale's law on the integer W_rec: a violation refuses this way of quantizing
        w_int = next(n for n in nodes if n.name == "z_rec").weight
        ei = None if not cell.dale else check_dale(w_int, n_exc) if signs is None else \
            check_dale_signs(w_int, signs)
        meta = {"source": {"file": Path(path).name, "sha256": sha, "kind": cell.origin},
                "levels": levels, "timesteps": 1,
                "calibration": f"{len(calib)} trials of {calib.shape[1]} steps, percentile "
                               f"{percentile}, per {'channel' if pc else 'layer'}",
                "rnn": {"activation": cell.activation, "alpha": cell.alpha, "dale": cell.dale,
                        "n_exc": n_exc, "n_units": int(cell.W_rec.shape[0]),
                        "task": cell.task, "decay": int(round(cell.alpha * 4096)),
                        "per_channel": pc, "calibration_trials": trial_ids(calib)},
                "layers": layer_rows_json(qz.layers)}
        art = Artifact(nodes, inp, out, meta, qz.record)
        art.validate()
        return art, qz, agreement(float_o, sim.cpu.run(art, calib, count=False).output), ei

    art, qz, agree, ei = build_either(build, per_channel, notes)
    if ei is not None:
        notes.append(f"Dale's law holds on the integer weights: {ei[0]} excitatory, {ei[1]} "
                     "inhibitory units")
    return finish_recurrent(art, qz.layers, notes, agree, target)
