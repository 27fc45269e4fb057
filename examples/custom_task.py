"""A task of your own for `toolchain rnn train --task-module`: a neurogym-style
PerceptualDecisionMaking written in numpy (no neurogym needed).

    toolchain rnn train --task-module examples/custom_task.py:perceptual_decision \
        --units 40 --steps 300 -o pdm.onnx
    python -c "import numpy as np, sys; sys.path.insert(0, 'examples'); import custom_task as t; \
        x, y, m, _ = t.perceptual_decision(seed=1); np.save('x.npy', x); np.save('y.npy', y); \
        np.save('m.npy', m)"
    toolchain compile pdm.onnx --calib x.npy -o pdm.sfn
    toolchain rnn eval pdm.sfn --trials x.npy --targets y.npy --mask m.npy --onnx pdm.onnx

A task function returns `toolchain.tasks.custom_task(inputs, targets, mask)` or the arrays
`(inputs, targets, mask[, conditions])`: inputs (N, T, n_in), targets (N, T, n_out) and a mask
(N, T) or (T,) of the steps the loss and the scores see. It is called with `seed=` when it takes
one (the trainer's --seed).
"""
from __future__ import annotations

import numpy as np

FIXATION, STIMULUS, DECISION = 5, 15, 10       # periods, in steps
COHERENCES = (0.05, 0.1, 0.2, 0.4)


def perceptual_decision(seed: int = 0, trials: int = 256, noise: float = 0.4):
    """A fixation cue (input 0) until the decision period; during the stimulus, noisy evidence
    (1 ± c)/2 for the two choices (inputs 1, 2); the target is the one-hot choice (outputs 0, 1)
    during the decision period, where the mask is on. Returns (inputs, targets, mask, conditions)
    with each trial's choice and signed coherence as its condition."""
    rng = np.random.default_rng(seed)
    steps = FIXATION + STIMULUS + DECISION
    choice = rng.integers(0, 2, trials)
    coherence = rng.choice(COHERENCES, trials) * np.where(choice == 0, 1, -1)
    x = np.zeros((trials, steps, 3), np.float32)
    x[:, :FIXATION + STIMULUS, 0] = 1.0
    stim = slice(FIXATION, FIXATION + STIMULUS)
    x[:, stim, 1] = ((1 + coherence) / 2)[:, None] + noise * rng.standard_normal((trials, STIMULUS))
    x[:, stim, 2] = ((1 - coherence) / 2)[:, None] + noise * rng.standard_normal((trials, STIMULUS))
    y = np.zeros((trials, steps, 2), np.float32)
    y[:, FIXATION + STIMULUS:, :] = np.eye(2, dtype=np.float32)[choice][:, None]
    mask = np.zeros((trials, steps), bool)
    mask[:, FIXATION + STIMULUS:] = True
    conditions = [dict(choice=int(c), coherence=float(k)) for c, k in zip(choice, coherence)]
    return x, y, mask, conditions
