"""scikit-learn digits (8x8, 10 classes): data split, a small CNN, and its training loop."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from toolchain.examples import load_digits_split  # noqa: F401  (the split the models use)

from .layers import ClipFloor


class DigitsCNN(nn.Sequential):
    """conv3x3(1→16)+BN+act, conv3x3(16→32)+BN+act, pool 2x2, conv3x3(32→32)+BN+act,
    global average pool, flatten, linear(32→10). Convolutions use padding 1.

    ``act`` is "relu" or "clipfloor" (ClipFloor with ``levels`` levels and initial
    clip ``init_clip``; 2.0 because BatchNorm outputs are roughly unit-variance);
    ``pool`` is "avg" or "max". ``levels`` and ``init_clip`` are unused with "relu".
    """

    def __init__(self, act: str = "relu", levels: int = 15, pool: str = "avg", init_clip: float = 2.0):
        activations = {"relu": lambda: nn.ReLU(), "clipfloor": lambda: ClipFloor(levels, init_clip)}
        pools = {"avg": nn.AvgPool2d, "max": nn.MaxPool2d}
        if act not in activations or pool not in pools:
            raise ValueError(f"DigitsCNN: act must be one of {list(activations)} and pool one of {list(pools)}, "
                             f"got act={act!r}, pool={pool!r}")
        make_act = activations[act]
        super().__init__(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), make_act(),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), make_act(),
            pools[pool](2),
            nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), make_act(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
        )


def accuracy(model: nn.Module, x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> float:
    """Fraction of samples whose arg-max logit equals the label (model run in eval mode)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        predictions = model(torch.as_tensor(x)).argmax(dim=1)
    model.train(was_training)
    return float((predictions == torch.as_tensor(y)).float().mean())


def train_digits(
    model: nn.Module,
    epochs: int,
    seed: int = 0,
    lr: float = 1e-2,
    batch_size: int = 32,
    split_seed: int = 0,
) -> float:
    """Train ``model`` on the digits train split with Adam and cosine-decayed lr; return test accuracy.

    Deterministic for a given model initialization, ``seed`` and torch thread count (float
    sums depend on the thread count): batch order comes from a generator seeded with
    ``seed``. Seed the model's initialization yourself (torch.manual_seed) before building it.
    """
    x_train, y_train, x_test, y_test = load_digits_split(split_seed)
    x_train, y_train = torch.from_numpy(x_train), torch.from_numpy(y_train)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = -(-len(x_train) // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x_train), generator=generator)
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            optimizer.zero_grad()
            loss_fn(model(x_train[batch]), y_train[batch]).backward()
            optimizer.step()
            schedule.step()
    model.eval()
    return accuracy(model, x_test, y_test)
