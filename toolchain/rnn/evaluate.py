"""A deployed recurrent network scored on a cognitive task next to the float network."""
from __future__ import annotations

import numpy as np
import onnx

import sim.cpu
import sim.lava
from toolchain.rnn.cell import run_onnx_trials
from toolchain.rnn.onnx_rnn import is_onnx_rnn, onnx_rnn_trials, read_onnx_rnn
from toolchain.tasks import decision, make_task, masked_r2


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
        if is_onnx_rnn(model):  # a model around the ONNX RNN operator
            float_out = onnx_rnn_trials(model, task.inputs, read_onnx_rnn(model, str(onnx_path)))
        else:
            float_out, _ = run_onnx_trials(onnx_path, task.inputs)
        row.update(float_r2=masked_r2(float_out, task.targets, task.mask),
                   float_accuracy=decision(float_out, task),
                   output_rms_difference=float(np.sqrt(np.mean((out - float_out) ** 2))))
    return row
