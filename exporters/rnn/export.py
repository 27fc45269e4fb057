"""ONNX export of one noiseless Euler step of :class:`EIRNN` with explicit state.

Graph: inputs ``u`` (batch, n_inputs), ``h`` (batch, n_units); outputs
``h_next = h + α·(f(W_rec·h + W_inp·u) − h)`` and ``o = W_out·h_next``, with initializers named
``W_inp``, ``W_rec``, ``W_out``. The leak and the E/I structure are described in metadata_props
(``sfn.*``) so a compiler can recover the neuron model; a trial is the cell iterated over time.
"""
from __future__ import annotations

import os
import tempfile
import warnings

import numpy as np
import onnx
import torch
from torch import nn
from torch.nn import functional as F

from sim.files import atomic_write

from .model import EIRNN, euler_step
from toolchain.rnn import run_onnx_trials
from toolchain.tasks import TASKS, Task

WEIGHTS = ("W_inp", "W_rec", "W_out")


class _Cell(nn.Module):
    """The step as a module whose only tensors are the three weight buffers."""

    def __init__(self, model: EIRNN):
        super().__init__()
        for name in WEIGHTS:
            self.register_buffer(name, getattr(model, name).detach().clone())
        self.alpha, self.activation, self.slope = model.alpha, model.activation, model.sigmoid_slope

    def forward(self, u, h):
        h_next = euler_step(h, F.linear(u, self.W_inp), self.W_rec, self.alpha, self.activation,
                            self.slope)
        return F.linear(h_next, self.W_out), h_next


def export_rnn_onnx(model: EIRNN, path, opset=17, task: Task | str | None = None, check=True,
                    atol=1e-4):
    """Write the one-step cell of ``model`` to ``path`` (atomically) and return the path.

    With ``check``, onnxruntime runs the cell over a whole trial batch (``task``'s inputs, or 8
    random trials of 50 steps) and must match ``model(..., noise=False)`` within ``atol``;
    otherwise ValueError reports the largest difference and nothing is written.
    """
    path = os.fspath(path)
    task_name = task if isinstance(task, str) else getattr(task, "name", None) or model.task_name
    cell = _Cell(model).eval()
    u = torch.zeros(1, model.n_inputs)
    h = torch.zeros(1, model.n_units)
    with tempfile.TemporaryDirectory(prefix="sfn-export-") as folder:
        tmp = os.path.join(folder, "cell.onnx")   # the exporter's file, checked before writing
        with warnings.catch_warnings():  # the legacy exporter is chosen on purpose
            warnings.simplefilter("ignore", DeprecationWarning)
            # no constant folding: W_* stay initializers under their own names (folding would
            # replace them by transposed copies named onnx::MatMul_*)
            torch.onnx.export(cell, (u, h), tmp, dynamo=False, opset_version=opset,
                              do_constant_folding=False, input_names=["u", "h"],
                              output_names=["o", "h_next"],
                              dynamic_axes={k: {0: "batch"} for k in ("u", "h", "o", "h_next")})
        proto = onnx.load(tmp)
        names = {i.name for i in proto.graph.initializer}
        if not set(WEIGHTS) <= names:
            raise ValueError(f"exported initializers {sorted(names)} lack {WEIGHTS}")
        meta = {"kind": "ei_rnn_cell", "activation": model.activation,
                "sigmoid_slope": repr(model.sigmoid_slope), "alpha": repr(model.alpha),
                "dale": "1" if model.dale else "0", "n_exc": str(model.n_exc),
                "n_units": str(model.n_units), "n_inputs": str(model.n_inputs),
                "n_outputs": str(model.n_outputs)}
        if task_name in TASKS:   # a task the compiler can rebuild for calibration
            meta["task"] = task_name
        onnx.helper.set_model_props(proto, {f"sfn.{k}": v for k, v in meta.items()})
        onnx.checker.check_model(proto)
        onnx.save(proto, tmp)
        if check:
            _check(model, tmp, task if isinstance(task, Task) else None, atol)
        atomic_write(path, proto.SerializeToString())
    return path


def _check(model, path, task, atol):
    if task is not None:
        x = task.inputs
    else:
        x = np.random.default_rng(0).uniform(0, 1, (8, 50, model.n_inputs)).astype(np.float32)
    with torch.no_grad():
        out, states = model(torch.from_numpy(x), noise=False)
    o_ort, s_ort = run_onnx_trials(path, x)
    diff = max(np.abs(o_ort - out.numpy()).max(), np.abs(s_ort - states.numpy()).max())
    if not diff <= atol:
        raise ValueError(f"onnxruntime differs from torch by {diff:.3g} (> {atol}) over "
                         f"{x.shape[0]} trials of {x.shape[1]} steps")
