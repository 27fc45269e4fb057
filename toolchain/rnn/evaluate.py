"""A deployed recurrent network scored on a cognitive task (a known one, or any task given as
arrays) next to the float network."""
from __future__ import annotations

import numpy as np
import onnx

import sim.cpu
import sim.lava
from toolchain.rnn.cell import is_rnn_cell, run_onnx_trials
from toolchain.rnn.cell_graph import cell_graph_trials, read_cell_graph
from toolchain.rnn.gated import is_gated, read_gated
from toolchain.rnn.onnx_rnn import is_onnx_rnn, onnx_rnn_trials, read_onnx_rnn
from toolchain.rnn.sequence import is_sequence_graph, read_sequence, sequence_trials
from toolchain.errors import ShapeError
from toolchain.tasks import decision, make_task, masked_r2, trial_ids


def float_trials(model: onnx.ModelProto, where: str, x: np.ndarray,
                 state: str | None = None) -> np.ndarray:
    """The float model's read-out over trials x (N, T, n_in), run by onnxruntime: an ei_rnn_cell
    or a one-step cell graph stepped from h = 0, a model around the ONNX RNN, LSTM or GRU
    operator, or an unrolled recurrence (its trials must have its number of steps)."""
    if is_onnx_rnn(model) and is_gated(model):
        return onnx_rnn_trials(model, x, read_gated(model, where))
    if is_onnx_rnn(model):
        return onnx_rnn_trials(model, x, read_onnx_rnn(model, where))
    if is_rnn_cell(model):
        return run_onnx_trials(where, x)[0]
    if is_sequence_graph(model) and state is None:
        try:
            return sequence_trials(model, x, read_sequence(model, where))
        except ShapeError as exc:
            raise ShapeError(f"{where}: {exc}") from None
    return cell_graph_trials(model, x, read_cell_graph(model, where, state))[0]


def evaluate(art, task_name: str, onnx_path: str | None = None, backend: str = "cpu") -> dict:
    """Masked R² and decision accuracy of the deployed network (and of the float one)."""
    task = make_task(task_name)
    if backend == "cpu":
        out = sim.cpu.run(art, task.inputs).output
    else:
        out = sim.lava.run(art, task.inputs).output
    row = {"task": task.name, "trials": int(len(task.inputs)), "backend": backend,
           "deployed_r2": masked_r2(out, task.targets, task.mask),
           "deployed_accuracy": decision(out, task)}
    if onnx_path:
        model = onnx.load(onnx_path)
        float_out = float_trials(model, str(onnx_path), task.inputs)
        row.update(float_r2=masked_r2(float_out, task.targets, task.mask),
                   float_accuracy=decision(float_out, task),
                   output_rms_difference=float(np.sqrt(np.mean((out - float_out) ** 2))))
    return row


def evaluate_arrays(art, x: np.ndarray, targets: np.ndarray, mask: np.ndarray | None = None,
                    onnx_path: str | None = None, backend: str = "cpu",
                    include_calibration: bool = False) -> dict:
    """Score a deployed recurrent network on any task given as arrays: trials x (N, T, n_in),
    targets (N, T, n_out), mask (N, T) or (T,) (default: every step). Trials the artifact was
    calibrated on (by their fingerprints, tasks.trial_ids) are left out unless
    `include_calibration`. Masked R², and decision accuracy with two or more outputs: the
    output's argmax, averaged over the masked steps of each trial (the last step without a
    mask), against the targets' argmax over the same steps. With `onnx_path` the float model is
    scored beside it."""
    x = np.asarray(x, np.float32)
    y = np.asarray(targets, np.float32)
    if x.ndim != 3 or y.ndim != 3 or x.shape[:2] != y.shape[:2]:
        raise ShapeError(f"trials {x.shape} and targets {y.shape} must be (N, T, inputs) and "
                         "(N, T, outputs) with the same N and T")
    window = mask is not None
    m = np.ones(x.shape[:2], bool) if mask is None else np.asarray(mask).astype(bool)
    if m.shape == x.shape[1:2]:
        m = np.broadcast_to(m, x.shape[:2])
    if m.shape != x.shape[:2]:
        raise ShapeError(f"mask {m.shape} must be (N, T) = {x.shape[:2]} or (T,) = "
                         f"({x.shape[1]},)")
    seen = set(art.meta.get("rnn", {}).get("calibration_trials") or ())
    calib = [i for i, h in enumerate(trial_ids(x)) if h in seen]
    used = np.arange(len(x)) if include_calibration else \
        np.setdiff1d(np.arange(len(x)), calib)
    if not len(used):
        raise ShapeError(f"all {len(x)} trials were calibration trials of this artifact; pass "
                         "held-out trials (or --include-calibration)")
    x, y, m = x[used], y[used], np.ascontiguousarray(m[used])
    if not np.all(m.any(1)):
        raise ShapeError("the mask selects no step of some trials")
    run = sim.cpu.run if backend == "cpu" else sim.lava.run
    out = run(art, x).output
    if out.shape[2] != y.shape[2]:
        raise ShapeError(f"targets have {y.shape[2]} outputs; the network has {out.shape[2]}")

    def score(o):
        r2 = masked_r2(o, y, m)
        if y.shape[2] < 2:
            return r2, None
        if window:
            w = m[..., None]
            pick = lambda a: (np.where(w, a, 0).sum(1) / w.sum(1)).argmax(-1)
        else:
            pick = lambda a: a[:, -1].argmax(-1)
        return r2, float(np.mean(pick(o) == pick(y)))

    r2, acc = score(out)
    row = {"trials": int(len(used)), "trials_given": int(len(used) + (0 if include_calibration
                                                                      else len(calib))),
           "used": used.tolist(), "calibration_trials": calib, "backend": backend,
           "decision": "window" if window else "last step",
           "deployed_r2": r2, "deployed_accuracy": acc}
    if onnx_path:
        float_out = float_trials(onnx.load(onnx_path), str(onnx_path), x)
        f_r2, f_acc = score(float_out)
        row.update(float_r2=f_r2, float_accuracy=f_acc,
                   output_rms_difference=float(np.sqrt(np.mean((out - float_out) ** 2))))
    return row
