"""An snnTorch LIF CNN trained on the digits in seconds, and its NIR export (tests/test_nir.py,
examples/snntorch_nir.py). Leaky neurons with β = 0.9 and threshold 1, reset by subtraction
without delay (the SFN neuron's reset); β and the threshold are given per neuron because
snnTorch's NIR export of a convolutional layer passes nir's type inference only with them."""
from __future__ import annotations

import numpy as np

BETA = 0.9


def build(torch, snn):
    def lif(*shape, output=False):
        return snn.Leaky(beta=torch.full(shape, BETA), threshold=torch.ones(shape),
                         reset_mechanism="subtract", reset_delay=False, init_hidden=True,
                         output=output)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), lif(8, 8, 8), torch.nn.AvgPool2d(2),
        torch.nn.Conv2d(8, 16, 3, padding=1), lif(16, 4, 4), torch.nn.AvgPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(64, 10), lif(10, output=True))


def spike_counts(net, x, timesteps: int):
    """snnTorch's own simulation: the output layer's spike counts over T steps, the image as a
    constant input current every step."""
    import snntorch.utils

    snntorch.utils.reset(net)
    count = 0
    for _ in range(timesteps):
        spikes, _ = net(x)
        count = count + spikes
    return count


def train(timesteps: int, epochs: int, seed: int = 0):
    """(net, snnTorch's test accuracy, x_train, x_test, y_test)."""
    import snntorch as snn
    import torch

    import toolchain

    torch.manual_seed(seed)
    torch.set_num_threads(1)    # small tensors: more threads only contend
    x_train, y_train, x_test, y_test = toolchain.examples.load_digits_split()
    net = build(torch, snn)
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    xs, ys = torch.from_numpy(x_train), torch.from_numpy(y_train)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(xs), generator=generator)
        for i in range(0, len(xs), 64):
            batch = order[i:i + 64]
            loss = torch.nn.functional.cross_entropy(spike_counts(net, xs[batch], timesteps),
                                                     ys[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net, accuracy(net, x_test, y_test, timesteps), x_train, x_test, y_test


def accuracy(net, x, y, timesteps: int) -> float:
    import torch
    with torch.no_grad():
        counts = spike_counts(net, torch.from_numpy(x), timesteps)
    return float((counts.argmax(1).numpy() == y).mean())


def export(net, path) -> None:
    """snnTorch's own NIR export, written with nir.write."""
    import nir
    import torch
    from snntorch.export_nir import export_to_nir

    nir.write(str(path), export_to_nir(net, torch.zeros(1, 1, 8, 8), ignore_dims=[0]))


def labels_agree(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.argmax(1) == b.argmax(1)).mean())
