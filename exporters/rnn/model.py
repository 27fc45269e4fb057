"""Leaky rate RNN with optional Dale's law (Tolmachev & Engel 2025, trainRNNbrain form).

Euler step (dt = 1, α = dt/τ), no recurrent bias::

    y ← y + α·(−y + f(W_rec·y + W_inp·(u + ξ_inp)) + ξ_rec)
    o = W_out·y

with ξ_inp ~ N(0, (2/α)·σ_inp²), ξ_rec ~ N(0, (2/α)·σ_rec²) drawn per step (so the state noise is
√(2α)·σ_rec), and f one of relu, tanh or sigmoid(x) = 1/(1 + exp(−slope·x)).

Dale's law (``dale=True``): units [0, n_exc) are excitatory, [n_exc, N) inhibitory. Column j of
W_rec (the outgoing weights of unit j) has the sign of unit j, the diagonal is zero, W_inp ≥ 0 and
W_out ≥ 0 reads only excitatory units (as in trainRNNbrain). Training keeps this exactly with
:meth:`EIRNN.project_`, which zeroes every wrong-sign entry after each optimizer step.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

ACTIVATIONS = ("relu", "sigmoid", "tanh")


def activate(x: torch.Tensor, activation: str, sigmoid_slope: float) -> torch.Tensor:
    """f(x): relu, tanh, or the logistic 1/(1 + exp(−slope·x))."""
    if activation == "relu":
        return torch.relu(x)
    if activation == "tanh":
        return torch.tanh(x)
    return torch.sigmoid(sigmoid_slope * x)


def euler_step(y, drive, W_rec, alpha, activation, sigmoid_slope):
    """y + α·(−y + f(W_rec·y + drive)), batch first; ``drive`` is W_inp·u (plus noise terms)."""
    return y + alpha * (activate(F.linear(y, W_rec) + drive, activation, sigmoid_slope) - y)


def _init_weights(rng, n_in, n_out, N, n_exc, dale, radius):
    """Initial (W_inp, W_rec, W_out) as float64 arrays, W_rec rescaled to spectral ``radius``.

    Dale: E columns |N(1/√N, 1/N)|, I columns −|N(4/√N, 1/N)| (rows balanced at 80/20),
    W_inp = |N(1/√N, 1/N)|, W_out = |N(1/√N, 1/N)| on E units and 0 on I units.
    Without Dale: W_rec, W_inp and W_out ~ N(0, 1/N) (variance 1/N).
    """
    mu, sd = 1 / np.sqrt(N), 1 / N
    if dale:
        W_rec = np.abs(rng.normal(mu, sd, (N, N)))
        W_rec[:, n_exc:] = -np.abs(rng.normal(4 * mu, sd, (N, N - n_exc)))
        W_inp = np.abs(rng.normal(mu, sd, (N, n_in)))
        W_out = np.abs(rng.normal(mu, sd, (n_out, N)))
        W_out[:, n_exc:] = 0.0
    else:
        W_rec = rng.normal(0.0, 1 / np.sqrt(N), (N, N))
        W_inp = rng.normal(0.0, mu, (N, n_in))
        W_out = rng.normal(0.0, mu, (n_out, N))
    np.fill_diagonal(W_rec, 0.0)
    W_rec *= radius / np.max(np.abs(np.linalg.eigvals(W_rec)))
    return W_inp, W_rec, W_out


class EIRNN(nn.Module):
    """Leaky E/I rate RNN; parameters ``W_inp`` (N, n_in), ``W_rec`` (N, N), ``W_out`` (n_out, N).

    ``n_exc`` = round(exc_fraction·N) with Dale's law; without it n_exc = N and ``unit_signs`` is
    all +1, but no sign is enforced. The initial W_rec has spectral radius ``spectral_radius``.
    """

    def __init__(self, n_inputs, n_outputs, n_units=100, exc_fraction=0.8, activation="relu",
                 sigmoid_slope=7.5, dale=True, alpha=0.1, input_noise=0.0, rec_noise=0.0, seed=0,
                 spectral_radius=1.2):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.n_inputs, self.n_outputs, self.n_units = n_inputs, n_outputs, n_units
        self.activation, self.sigmoid_slope = activation, float(sigmoid_slope)
        self.dale, self.alpha = bool(dale), float(alpha)
        self.input_noise, self.rec_noise = float(input_noise), float(rec_noise)
        self.task_name: str | None = None  # set by train(); exported as metadata
        self.n_exc = int(round(exc_fraction * n_units)) if dale else n_units
        if dale and not 0 < self.n_exc < n_units:
            raise ValueError(f"exc_fraction={exc_fraction} leaves no E or no I unit of {n_units}")
        weights = _init_weights(np.random.default_rng(seed), n_inputs, n_outputs, n_units,
                                self.n_exc, self.dale, spectral_radius)
        self.W_inp, self.W_rec, self.W_out = (
            nn.Parameter(torch.tensor(w, dtype=torch.float32)) for w in weights)
        signs = torch.ones(n_units)
        signs[self.n_exc:] = -1.0
        self.register_buffer("unit_signs", signs, persistent=False)

    @property
    def dale_mask(self) -> torch.Tensor:
        """(N, N) required sign of each W_rec entry: unit_signs per column, 0 on the diagonal."""
        return self.unit_signs.expand(self.n_units, -1) * (1 - torch.eye(self.n_units))

    @torch.no_grad()
    def project_(self) -> None:
        """Zero the diagonal and, with Dale's law, every wrong-sign weight (in place)."""
        self.W_rec.fill_diagonal_(0.0)
        if self.dale:
            s = self.unit_signs
            self.W_rec.copy_(torch.relu(self.W_rec * s) * s)
            self.W_inp.clamp_(min=0.0)
            self.W_out.clamp_(min=0.0)
            self.W_out[:, self.n_exc:] = 0.0

    @torch.no_grad()
    def check_dale(self) -> list[int]:
        """Units breaking a constraint: column sign, self-weight, W_inp row or W_out column."""
        bad = self.W_rec.diagonal() != 0
        if self.dale:
            bad |= ((self.W_rec * self.unit_signs) < 0).any(0)
            bad |= (self.W_inp < 0).any(1)
            bad |= (self.W_out < 0).any(0)
            bad[self.n_exc:] |= (self.W_out[:, self.n_exc:] != 0).any(0)
        return torch.nonzero(bad).flatten().tolist()

    def step(self, u_t: torch.Tensor, y: torch.Tensor):
        """One noiseless Euler step: returns (o_t = W_out·y_next, y_next)."""
        y_next = euler_step(y, F.linear(u_t, self.W_inp), self.W_rec, self.alpha,
                            self.activation, self.sigmoid_slope)
        return F.linear(y_next, self.W_out), y_next

    def forward(self, u: torch.Tensor, y0: torch.Tensor | None = None, noise: bool = True,
                generator: torch.Generator | None = None):
        """Run whole trials u (B, T, n_in) from y0 (default 0).

        Returns (outputs (B, T, n_out), states (B, T, N)); states[:, t] is the state after
        consuming u[:, t] and outputs[:, t] = W_out·states[:, t].
        """
        B, T, _ = u.shape
        y = u.new_zeros(B, self.n_units) if y0 is None else y0
        scale = (2.0 / self.alpha) ** 0.5
        if noise and self.input_noise > 0:
            u = u + scale * self.input_noise * torch.randn(u.shape, generator=generator)
        drive = F.linear(u, self.W_inp).unbind(1)  # unbind: one gradient buffer for all steps
        if noise and self.rec_noise > 0:
            xi_rec = (self.alpha * scale * self.rec_noise
                      * torch.randn(B, T, self.n_units, generator=generator)).unbind(1)
        else:
            xi_rec = [None] * T
        states = []
        for d, xi in zip(drive, xi_rec):
            y = euler_step(y, d, self.W_rec, self.alpha, self.activation, self.sigmoid_slope)
            y = y if xi is None else y + xi
            states.append(y)
        states = torch.stack(states, 1)
        return F.linear(states, self.W_out), states
