"""Training of :class:`EIRNN` on a task batch (trainRNNbrain recipe).

Loss = masked MSE(o, target) + λ_r·mean(y²) + λ_orth·‖BᵀB − diag(BᵀB)‖_F², where B is W_inp with
unit-norm columns. Adam with L2 weight decay on the condition batch (or random subsets of it);
after every optimizer step :meth:`EIRNN.project_` restores Dale's law and the zero diagonal.
Every ``val_every`` steps the noiseless loss on the validation batch is measured; the best
parameters are restored at the end.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from .model import EIRNN
from toolchain.tasks import Task, decision, make_task, masked_r2

# Per-task (steps, batch_size); batch_size None = the whole condition batch every step. Go/NoGo
# and CDDM were measured to reach R² ≥ 0.8 for all six {relu, sigmoid, tanh} × {Dale, no Dale}
# variants with 100 units and noise σ = 0.05 (CDDM, 1500 steps: masked R² 0.87–0.94, decision
# accuracy ≥ 0.99). MemoryNumber is not tuned: with Dale's law tanh reaches R² 0.98 but relu and
# sigmoid stay at R² 0.62 (they recall the mean value).
DEFAULTS = {"go_nogo": (500, None), "cddm": (1500, 64), "memory_number": (1000, None)}


@dataclass
class TrainResult:
    best_state: dict
    history: dict  # "step", "train_loss"; every val_every steps "val_step", "val_loss", "val_r2"
    best_val_loss: float
    r2: float
    accuracy: float | None


@torch.no_grad()
def evaluate(model: EIRNN, task: Task) -> dict:
    """Noiseless run of the task batch: {"r2": masked R², "accuracy": decision rule or None}."""
    out, _ = model(torch.from_numpy(task.inputs), noise=False)
    out = out.numpy()
    return dict(r2=masked_r2(out, task.targets, task.mask), accuracy=decision(out, task))


def orth_penalty(W_inp: torch.Tensor) -> torch.Tensor:
    """‖BᵀB − diag(BᵀB)‖_F² with B = W_inp / ‖columns‖."""
    b = W_inp / (W_inp.norm(dim=0, keepdim=True) + 1e-12)
    g = b.T @ b
    return ((g - torch.diag(torch.diag(g))) ** 2).sum()


def _loss(model, x, y, m, lambda_rate, lambda_orth, noise, generator=None):
    out, states = model(x, noise=noise, generator=generator)
    loss = (torch.mean((out[m] - y[m]) ** 2) + lambda_rate * torch.mean(states ** 2)
            + lambda_orth * orth_penalty(model.W_inp))
    return loss, out


def train(model: EIRNN, task: str | Task, steps=None, lr=0.005, weight_decay=5e-6,
          lambda_rate=0.3, lambda_orth=0.3, seed=0, progress=True, val_every=20,
          batch_size="auto", grad_clip=1.0, cosine=True,
          val_task: Task | None = None) -> TrainResult:
    """Train ``model`` in place on ``task`` (a Task or a name for :func:`make_task`).

    Each step uses the whole trial batch, or ``batch_size`` trials drawn from it without
    replacement; ``steps=None`` and ``batch_size="auto"`` take the task's entry in DEFAULTS.
    Gradients are clipped to norm ``grad_clip`` (None: no clipping); with ``cosine`` the learning
    rate follows a cosine from ``lr`` down to lr/20 at the last step.
    The validation batch is ``val_task``, by default the whole training batch, run without noise.
    Returns the best-validation parameters (already loaded into ``model``), the loss history and
    the final masked R² and decision accuracy on the validation batch.
    """
    if isinstance(task, str):
        task = make_task(task, seed=seed)
    val_task = val_task or task
    default_steps, default_batch = DEFAULTS.get(task.name, (1000, None))
    steps = default_steps if steps is None else steps
    batch_size = default_batch if batch_size == "auto" else batch_size
    if (task.n_inputs, task.n_outputs) != (model.n_inputs, model.n_outputs):
        raise ValueError(f"task has {task.n_inputs} inputs / {task.n_outputs} outputs, model "
                         f"{model.n_inputs} / {model.n_outputs}")
    gen = torch.Generator().manual_seed(seed)
    model.task_name = task.name
    x, y, m = (torch.from_numpy(a) for a in (task.inputs, task.targets, task.mask))
    xv, yv, mv = (torch.from_numpy(a) for a in (val_task.inputs, val_task.targets, val_task.mask))
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, lr / 20) if cosine else None
    model.project_()
    hist = dict(step=[], train_loss=[], val_step=[], val_loss=[], val_r2=[])
    best_loss, best_state = np.inf, copy.deepcopy(model.state_dict())
    bar = tqdm(range(steps), disable=not progress, desc=f"{task.name} {model.activation}"
               f"{' Dale' if model.dale else ''}")
    for i in bar:
        idx = slice(None) if batch_size is None else torch.randperm(len(x), generator=gen)[
            :batch_size]
        loss, _ = _loss(model, x[idx], y[idx], m[idx], lambda_rate, lambda_orth, True, gen)
        opt.zero_grad()
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        if sched is not None:
            sched.step()
        model.project_()
        hist["step"].append(i)
        hist["train_loss"].append(loss.item())
        if (i + 1) % val_every == 0 or i + 1 == steps:
            with torch.no_grad():
                val, out = _loss(model, xv, yv, mv, lambda_rate, lambda_orth, False)
            val = val.item()
            hist["val_step"].append(i)
            hist["val_loss"].append(val)
            hist["val_r2"].append(masked_r2(out.numpy(), val_task.targets, val_task.mask))
            if val < best_loss:
                best_loss, best_state = val, copy.deepcopy(model.state_dict())
            bar.set_postfix(train=f"{loss.item():.4f}", val=f"{val:.4f}", best=f"{best_loss:.4f}")
    model.load_state_dict(best_state)
    ev = evaluate(model, val_task)
    return TrainResult(best_state, hist, float(best_loss), ev["r2"], ev["accuracy"])
