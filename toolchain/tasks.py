"""Cognitive tasks in the form of Tolmachev & Engel (2025), as batch-first numpy arrays, and how a
recurrent network's outputs are scored on them (masked R², the task's decision rule). Used by
the compiler (calibration trials), `toolchain rnn eval` and the trainer in exporters.rnn.

Every event time is given for the paper's trial length T0 and scaled by T/T0 (rounded), so a
shorter ``T`` compresses the whole trial. Masks select the time steps the loss sees; ``response``
is the window the task's decision rule reads.

- CDDM (T0 = 300): inputs [ctx_motion, ctx_colour, motion_R, motion_L, colour_R, colour_L]; the
  context cue is on the whole trial, from T/3 motion R/L = (1 ± c_m)/2 and colour R/L = (1 ± c_c)/2.
  Outputs [right, left]: the side of the context's coherence goes to 1 from 2T/3 (both 0 when it
  is 0). Mask [0, T/3) ∪ [2T/3, T). Decision: larger output averaged over [2T/3, T).
- Go/NoGo (T0 = 60): inputs [v, go cue from 30, bias 1]; target 1{v > 0.5} from 30.
  Mask [10, 30) ∪ [40, 60). Decision: mean output over [40, 60) > 0.5 equals the target.
- MemoryNumber (T0 = 120): inputs [v for 10 steps centred on 20 ± jitter, recall cue from 60,
  bias 1]; target v from 60. Mask [0, 60) ∪ [80, 120). Decision: |mean output over
  [80, 120) − v| < 0.1.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CDDM_TRAIN_COHERENCES = tuple(sorted({s * 2.0 ** -k for k in range(7) for s in (1, -1)} | {0.0}))
CDDM_ANALYSIS_COHERENCES = (-0.8, -0.4, -0.1, 0.0, 0.1, 0.4, 0.8)


@dataclass
class Task:
    """One batch of trials: inputs (B, T, n_in), targets (B, T, n_out), mask (B, T) bool."""
    name: str
    inputs: np.ndarray
    targets: np.ndarray
    mask: np.ndarray
    conditions: list = field(default_factory=list)
    response: np.ndarray | None = None  # (T,) bool, the window read by ``decision``

    @property
    def n_inputs(self) -> int:
        return self.inputs.shape[2]

    @property
    def n_outputs(self) -> int:
        return self.targets.shape[2]


def _windows(T, T0, *edges):
    """Scale the paper's event times ``edges`` (for length T0) to length T."""
    return [int(round(e * T / T0)) for e in edges]


def _make(name, inputs, targets, mask_t, conditions, response):
    B = inputs.shape[0]
    return Task(name, inputs.astype(np.float32), targets.astype(np.float32),
                np.broadcast_to(mask_t, (B, mask_t.size)).copy(), conditions, response)


def cddm(T=300, coherences=CDDM_TRAIN_COHERENCES, seed=0) -> Task:
    """All (context, c_motion, c_colour) combinations: B = 2·len(coherences)². ``seed`` unused."""
    stim, dec = _windows(T, 300, 100, 200)
    conds = [dict(context=ctx, motion_coh=float(cm), color_coh=float(cc))
             for ctx in ("motion", "color") for cm in coherences for cc in coherences]
    x, y = np.zeros((len(conds), T, 6)), np.zeros((len(conds), T, 2))
    for i, c in enumerate(conds):
        rel = c["motion_coh"] if c["context"] == "motion" else c["color_coh"]
        c["correct_choice"] = int(np.sign(rel))
        x[i, :, 0 if c["context"] == "motion" else 1] = 1.0
        cm, cc = c["motion_coh"], c["color_coh"]
        x[i, stim:, 2:] = [(1 + cm) / 2, (1 - cm) / 2, (1 + cc) / 2, (1 - cc) / 2]
        if rel != 0:
            y[i, dec:, 0 if rel > 0 else 1] = 1.0
    t = np.arange(T)
    return _make("cddm", x, y, (t < stim) | (t >= dec), conds, t >= dec)


def go_nogo(T=60, values=np.linspace(0, 1, 11), seed=0) -> Task:
    """One trial per value v. ``seed`` unused (the batch is a fixed grid)."""
    cue, m0, m1 = _windows(T, 60, 30, 10, 40)
    v = np.asarray(values, dtype=float)
    x, y = np.zeros((v.size, T, 3)), np.zeros((v.size, T, 1))
    x[:, :, 0] = v[:, None]
    x[:, cue:, 1] = 1.0
    x[:, :, 2] = 1.0
    y[:, cue:, 0] = (v > 0.5)[:, None]
    t = np.arange(T)
    conds = [dict(value=float(a), go=int(a > 0.5)) for a in v]
    return _make("go_nogo", x, y, ((t >= m0) & (t < cue)) | (t >= m1), conds, t >= m1)


def memory_number(T=120, values=np.linspace(0, 1, 21), jitter=5, seed=0) -> Task:
    """One trial per value v; the stimulus onset is 15 + j, j uniform in [−jitter, jitter]."""
    centre, dur, recall, m1, jit = _windows(T, 120, 20, 10, 60, 80, jitter)
    rng = np.random.default_rng(seed)
    v = np.asarray(values, dtype=float)
    x, y = np.zeros((v.size, T, 3)), np.zeros((v.size, T, 1))
    conds = []
    for i, a in enumerate(v):
        on = max(0, centre - dur // 2 + int(rng.integers(-jit, jit + 1)))
        x[i, on:on + dur, 0] = a
        conds.append(dict(value=float(a), stim_on=on))
    x[:, recall:, 1] = 1.0
    x[:, :, 2] = 1.0
    y[:, recall:, 0] = v[:, None]
    t = np.arange(T)
    return _make("memory_number", x, y, (t < recall) | (t >= m1), conds, t >= m1)


def _cddm_decision(out, task):
    rel = np.array([c["correct_choice"] for c in task.conditions])
    choice = np.where(out[:, task.response].mean(1).argmax(1) == 0, 1, -1)
    keep = rel != 0
    return float(np.mean(choice[keep] == rel[keep]))


def _go_nogo_decision(out, task):
    go = out[:, task.response, 0].mean(1) > 0.5
    return float(np.mean(go == np.array([c["go"] for c in task.conditions], dtype=bool)))


def _memory_decision(out, task):
    recalled = out[:, task.response, 0].mean(1)
    return float(np.mean(np.abs(recalled - [c["value"] for c in task.conditions]) < 0.1))


TASKS = {"cddm": cddm, "go_nogo": go_nogo, "memory_number": memory_number}
# the short names the CLI takes (--task)
CLI_NAMES = {"cddm": "cddm", "gonogo": "go_nogo", "memory": "memory_number"}
_DECISIONS = {"cddm": _cddm_decision, "go_nogo": _go_nogo_decision,
              "memory_number": _memory_decision}


def masked_r2(outputs, targets, mask) -> float:
    """R² = 1 − SSE/SST over the masked (trial, time) entries of all outputs (SST about their
    common mean)."""
    m = np.asarray(mask, dtype=bool)
    o, t = np.asarray(outputs)[m], np.asarray(targets)[m]
    return float(1.0 - np.sum((o - t) ** 2) / np.sum((t - t.mean()) ** 2))


def decision(outputs, task: Task) -> float | None:
    """Fraction of correct trials under the task's rule; None for tasks without one."""
    rule = _DECISIONS.get(task.name)
    return None if rule is None else rule(np.asarray(outputs), task)


def trial_ids(x) -> list[str]:
    """A short fingerprint of each trial (N, T, n_in) as float32: the first 12 hex digits of the
    SHA-256 of its bytes (an artifact keeps those of its calibration trials)."""
    x = np.ascontiguousarray(np.asarray(x, np.float32))
    return [hashlib.sha256(t.tobytes()).hexdigest()[:12] for t in x]


def make_task(name: str, **kwargs) -> Task:
    """Build a task by name ('cddm', 'go_nogo'/'GoNoGo', 'memory_number'/'MemoryNumber')."""
    key = {"gonogo": "go_nogo", "memorynumber": "memory_number"}.get(
        name.lower().replace("_", "").replace("-", "").replace("/", ""), name.lower())
    if key not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {sorted(TASKS)}")
    return TASKS[key](**kwargs)


def custom_task(inputs, targets, mask, conditions=None, name="custom") -> Task:
    """Wrap user arrays: inputs (B, T, n_in), targets (B, T, n_out), mask (B, T) or (T,)."""
    x = np.asarray(inputs, dtype=np.float32)
    y = np.asarray(targets, dtype=np.float32)
    m = np.asarray(mask, dtype=bool)
    if x.ndim != 3 or y.ndim != 3:
        raise ValueError(f"inputs {x.shape} and targets {y.shape} must both be (B, T, channels)")
    if x.shape[:2] != y.shape[:2]:
        raise ValueError(f"targets shape {y.shape} does not match inputs shape {x.shape} "
                         "in (batch, time)")
    if m.shape == x.shape[1:2]:
        m = np.broadcast_to(m, x.shape[:2])
    if m.shape != x.shape[:2]:
        raise ValueError(f"mask shape {m.shape} must be (batch, time) = {x.shape[:2]} or (T,)")
    if not m.any():
        raise ValueError("mask selects no time step")
    return Task(name, x, y, m.copy(), list(conditions or []))


def load_task_module(spec: str, seed: int = 0) -> Task:
    """The task a user's Python function builds: `spec` is "module:function" (an importable
    module) or "path/to/file.py:function". The function is called with `seed=` when it takes
    one and returns a Task (`custom_task(...)`) or the arrays (inputs, targets, mask[,
    conditions]); ValueError names what is wrong."""
    where, sep, fn_name = spec.rpartition(":")
    if not sep or not where or not fn_name.isidentifier():
        raise ValueError(f"--task-module {spec!r}: expected MODULE:FUNCTION or FILE.py:FUNCTION")
    try:
        if where.endswith(".py"):
            path = Path(where)
            if not path.is_file():
                raise ValueError(f"--task-module {spec!r}: no file {where}")
            found = importlib.util.spec_from_file_location(f"sfn_task_{path.stem}", path)
            module = importlib.util.module_from_spec(found)
            sys.modules[found.name] = module
            found.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except ValueError:
        raise
    except Exception as exc:    # the user's module failed to import: say which and why
        raise ValueError(f"--task-module {spec!r}: importing {where} failed: "
                         f"{type(exc).__name__}: {exc}") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise ValueError(f"--task-module {spec!r}: {where} has no function {fn_name!r}")
    try:
        takes_seed = "seed" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        takes_seed = False
    try:
        made = fn(seed=seed) if takes_seed else fn()
    except Exception as exc:
        raise ValueError(f"--task-module {spec!r}: {fn_name}() raised {type(exc).__name__}: "
                         f"{exc}") from None
    if isinstance(made, Task):
        return made
    if isinstance(made, (tuple, list)) and len(made) in (3, 4):
        return custom_task(*made, name=fn_name)
    raise ValueError(f"--task-module {spec!r}: {fn_name}() returned {type(made).__name__}; "
                     "expected a Task (toolchain.tasks.custom_task) or (inputs, targets, mask)")
