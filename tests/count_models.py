"""Models the count tests build: ViT-B/16 (Dosovitskiy et al. 2021: 16x16 patches, width
768, 12 layers, 12 heads, MLP 3072, a class token, 1000 classes), written plainly with
F.scaled_dot_product_attention, loadable by `lrprof count --module tests/count_models.py:ViT`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        x = x + self.proj(y)
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """ViT-B/16 by default; `image_size` sets the position table (224: 196 patches + 1)."""

    def __init__(self, image_size: int = 224, patch: int = 16, dim: int = 768, depth: int = 12,
                 heads: int = 12, mlp: int = 3072, classes: int = 1000) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, patch)
        tokens = (image_size // patch) ** 2 + 1
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.zeros(1, tokens, dim))
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


class Routed(nn.Module):
    """A layer whose work depends on its values (a Python read of a tensor): --meta refuses it."""

    def __init__(self, channels: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y if float(y.mean()) > 0 else -y


class NoRule(nn.Module):
    """Calls an op lrprof has no rule for (cos): uncounted, and the count fails."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cos(x)


class Resampler(nn.Module):
    """Bilinear and bicubic interpolation, grid sampling: the resampling family."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        cubic = F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False)
        grid = torch.zeros(x.shape[0], 4, 4, 2)
        return up.sum() + cubic.sum() + F.grid_sample(x, grid, align_corners=False).sum()
