"""A deployed recurrent network scored on a cognitive task next to the float network."""
from __future__ import annotations

import numpy as np
import onnx

import sim.cpu
import sim.lava
from toolchain.rnn.cell import is_rnn_cell, run_onnx_trials
from toolchain.rnn.cell_graph import cell_graph_trials, read_cell_graph
from toolchain.rnn.onnx_rnn import is_onnx_rnn, onnx_rnn_trials, read_onnx_rnn
from toolchain.tasks import decision, make_task, masked_r2


def float_trials(model: onnx.ModelProto, where: str, x: np.ndarray,
                 state: str | None = None) -> np.ndarray:
    """The float model's read-out over trials x (N, T, n_in), run by onnxruntime: an ei_rnn_cell
    or a one-step cell graph stepped from h = 0, or a model around the ONNX RNN operator."""
    if is_onnx_rnn(model):
        return onnx_rnn_trials(model, x, read_onnx_rnn(model, where))
    if is_rnn_cell(model):
        return run_onnx_trials(where, x)[0]
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
