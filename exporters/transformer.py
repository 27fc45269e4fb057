"""Attention and gated networks for scikit-learn digits: a small ViT and a squeeze-excitation CNN.

Written the way timm and torchvision write them (explicit q/k/v Linears, Reshape/Transpose to
heads, `q @ k.transpose(-2, -1) * scale`, softmax, `@ v`), so both torch exporters emit the ONNX
patterns the compiler meets in real transformers: MatMul of two activations, Softmax over the
last axis, LayerNormalization (or its ReduceMean/Sub/Pow/Sqrt/Div form), a class token Concat,
a positional embedding Add and a class-token Gather.
"""
from __future__ import annotations

import torch
from torch import nn


class Attention(nn.Module):
    """Multi-head self-attention on (B, S, D): heads split by Reshape/Transpose."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"Attention: dim {dim} is not a multiple of heads {heads}")
        self.heads, self.head_dim = heads, dim // heads
        self.scale = self.head_dim ** -0.5
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        return x.reshape(b, s, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = self._split(self.q(x)), self._split(self.k(x)), self._split(self.v(x))
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, s, d)
        return self.proj(out)


class Norm(nn.Module):
    """LayerNorm (`kind="layer"`) or RMSNorm (`kind="rms"`, written out: x / sqrt(mean x² + ε)·γ)."""

    def __init__(self, dim: int, kind: str = "layer", eps: float = 1e-5):
        super().__init__()
        if kind not in ("layer", "rms"):
            raise ValueError(f"Norm: kind must be 'layer' or 'rms', got {kind!r}")
        self.kind = kind
        self.eps = eps
        self.norm = nn.LayerNorm(dim, eps=eps) if kind == "layer" else None
        self.weight = nn.Parameter(torch.ones(dim)) if kind == "rms" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm is not None:
            return self.norm(x)
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm x), then x + mlp(norm x) with GELU."""

    def __init__(self, dim: int, heads: int, hidden: int, norm: str = "layer"):
        super().__init__()
        self.norm1, self.attn = Norm(dim, norm), Attention(dim, heads)
        self.norm2 = Norm(dim, norm)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class DigitsViT(nn.Module):
    """Vision transformer for 1×8×8 digits: 2×2 patches (a stride-2 conv, 16 tokens), a class
    token, a learned positional embedding, `depth` pre-norm blocks of `heads` heads, a final norm
    and a linear head on the class token."""

    def __init__(self, dim: int = 32, depth: int = 2, heads: int = 4, hidden: int = 64,
                 patch: int = 2, norm: str = "layer"):
        super().__init__()
        tokens = (8 // patch) ** 2
        self.embed = nn.Conv2d(1, dim, patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, hidden, norm) for _ in range(depth)])
        self.norm = Norm(dim, norm)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).flatten(2).transpose(1, 2)               # (B, S, D)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


class SqueezeExcite(nn.Module):
    """x · hardsigmoid(W₂ relu(W₁ mean(x))) per channel (MobileNetV3's block)."""

    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.fc2 = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * nn.functional.hardsigmoid(self.fc2(torch.relu(self.fc1(s))))


class GlobalMean(nn.Module):
    """The mean over H, W: (N, C, H, W) → (N, C) (one ReduceMean for both exporters)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3))


class DigitsSE(nn.Sequential):
    """MobileNetV3-style CNN for digits: conv+BN+ReLU, an inverted residual block (expand 1×1,
    depthwise 3×3, squeeze-excitation, project 1×1) with a skip, pooling and a linear head."""

    def __init__(self, width: int = 16, expand: int = 48):
        class InvertedResidual(nn.Module):
            def __init__(self):
                super().__init__()
                self.body = nn.Sequential(
                    nn.Conv2d(width, expand, 1), nn.BatchNorm2d(expand), nn.ReLU(),
                    nn.Conv2d(expand, expand, 3, padding=1, groups=expand),
                    nn.BatchNorm2d(expand), nn.ReLU(),
                    SqueezeExcite(expand, expand // 4),
                    nn.Conv2d(expand, width, 1), nn.BatchNorm2d(width))

            def forward(self, x):
                return x + self.body(x)

        super().__init__(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            InvertedResidual(), nn.ReLU(), nn.AvgPool2d(2),
            nn.Conv2d(width, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            GlobalMean(), nn.Linear(32, 10))
