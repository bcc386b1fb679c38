"""Layers of your own, for `lrprof layer --module` and `lrprof check` (see the README,
"Profile your own layer").

- SmallCNN: a small classifier with nested blocks; `layer --module` shows each block's
  share of the MACs and of the time.
- LocalAttention: stand-alone self-attention (SASA) written from the paper, with the
  constructor the most used reimplementation has (in_channels, out_channels, kernel_size,
  stride, padding, groups, bias; groups are the heads). `lrprof check ... --op sasa` passes.
- ChannelwiseAttention: the same with that reimplementation's best-known bug: q and k
  multiplied channel by channel, so every channel gets its own softmax instead of one per
  head. Its output has the right shape and its MACs are the operator's, so a FLOP count
  does not see it; `lrprof check` fails its cost row on the exponentials.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvBlock(nn.Module):
    def __init__(self, channels: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class SmallCNN(nn.Module):
    def __init__(self, width: int = 32, classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.stage1 = nn.Sequential(ConvBlock(width), ConvBlock(width))
        self.stage2 = nn.Sequential(ConvBlock(width, stride=2), ConvBlock(width))
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage2(self.stage1(self.stem(x)))
        return self.head(x.mean(dim=(2, 3)))


class LocalAttention(nn.Module):
    """y_ij = sum over the k x k window ab of softmax_ab(q_ij . k_ab + q_ij . r_ab) v_ab,
    per head; r_ab = (row embedding of a - i, column embedding of b - j); neighbours
    outside the image are left out of the softmax; stride 2 pools 2x2 afterwards."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 7, stride: int = 1,
                 padding: int = 3, groups: int = 8, bias: bool = False):
        super().__init__()
        if in_channels != out_channels or out_channels % groups or (out_channels // groups) % 2:
            raise ValueError("needs in_channels == out_channels, split by groups into heads of even width")
        self.kernel_size, self.stride, self.padding, self.heads = kernel_size, stride, padding, groups
        self.head_width = out_channels // groups
        self.qkv = nn.Conv2d(in_channels, 3 * out_channels, 1, bias=bias)
        self.row_embedding = nn.Parameter(0.1 * torch.randn(self.head_width // 2, kernel_size))
        self.col_embedding = nn.Parameter(0.1 * torch.randn(self.head_width // 2, kernel_size))

    def windows(self, t: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, heads, d, k*k, H*W)."""
        b, c, h, w = t.shape
        k = self.kernel_size
        return F.unfold(t, k, padding=self.padding).view(b, c // self.head_width, -1, k * k, h * w)

    def scores(self, q: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Per head: q . k over the head's d channels, plus q . r. (B, heads, k*k, HW)."""
        half = self.head_width // 2
        content = torch.einsum("bndl,bndpl->bnpl", q, keys)
        rows = torch.einsum("bndl,di->bnil", q[:, :, :half], self.row_embedding)
        cols = torch.einsum("bndl,dj->bnjl", q[:, :, half:], self.col_embedding)
        return content + (rows[:, :, :, None] + cols[:, :, None]).flatten(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=1)
        q = q.reshape(b, self.heads, self.head_width, h * w)
        scores = self.scores(q, self.windows(k))
        k = self.kernel_size
        inside = F.unfold(x.new_ones(1, 1, h, w), k, padding=self.padding).view(1, 1, k * k, -1) > 0
        if scores.dim() == 5:  # one score per channel
            inside = inside[:, :, None]
        weights = scores.masked_fill(~inside, float("-inf")).softmax(dim=-2)
        if weights.dim() == 4:
            weights = weights[:, :, None]
        y = (weights * self.windows(v)).sum(dim=3).reshape(b, c, h, w)
        return F.avg_pool2d(y, 2, ceil_mode=True) if self.stride == 2 else y


class ChannelwiseAttention(LocalAttention):
    """The bug: q * k and q * r channel by channel, never summed over the head."""

    def scores(self, q: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        half, k = self.head_width // 2, self.kernel_size
        content = q[:, :, :, None] * keys  # (B, heads, d, k*k, HW)
        rows = q[:, :, :half, None] * self.row_embedding[None, None, :, :, None]  # (B, heads, d/2, k, HW)
        cols = q[:, :, half:, None] * self.col_embedding[None, None, :, :, None]
        shape = (*rows.shape[:3], k, k, rows.shape[-1])
        relative = torch.cat([rows[:, :, :, :, None].expand(shape), cols[:, :, :, None].expand(shape)], dim=2)
        return content + relative.flatten(3, 4)
