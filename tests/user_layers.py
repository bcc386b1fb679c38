"""Layers written the way a user writes them, loaded by `lrprof layer --module` and `lrprof
check` from this file's path. Each broken one has exactly one of the bugs that popular
reimplementations have (reference sec. 1, 3, 5); the rest of it is right.

- LocalRelation: a local relation layer (masked softmax, geometry prior over the real
  offsets, m channels sharing a weight map). Broken: ShrinkingLocalRelation (no padding:
  the output shrinks), ScrambledLocalRelation (windows read through a reshape that mixes
  window offsets with positions), UnregisteredLocalRelation (random geometry-prior
  positions kept in a plain attribute).
- LocalAttention: SASA with the popular constructor (in_channels, out_channels,
  kernel_size, stride, padding, groups, bias), groups = heads, per-head dot products.
  Broken: ChannelwiseAttention (q and k multiplied channel by channel, a softmax per
  channel instead of per head).
- RegionConv: a DRConv-like layer (each pixel convolved with its region's filter only);
  the test registers an operator for it. Broken: EveryPixelRegionConv (all region filters
  at every pixel, then one picked).
- TinyCNN: a small CNN with nested modules, for the per-module table.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def window_offsets(k: int) -> torch.Tensor:
    """(1, 2, k, k): row and column offset of each window position from its centre."""
    steps = torch.arange(k, dtype=torch.get_default_dtype()) - k // 2
    return torch.stack(torch.meshgrid(steps, steps, indexing="ij")).unsqueeze(0)


class LocalRelation(nn.Module):
    def __init__(self, channels: int, kernel_size: int = 7, channels_per_group: int = 8, stride: int = 1):
        super().__init__()
        self.k, self.m, self.stride = kernel_size, channels_per_group, stride
        self.groups = channels // channels_per_group
        g = self.groups
        self.key = nn.Conv2d(channels, g, 1, bias=False)
        self.query = nn.Conv2d(channels, g, 1, stride=stride, bias=False)
        self.prior = nn.Sequential(nn.Conv2d(2, g, 1), nn.ReLU(), nn.Conv2d(g, g, 1))
        self.project = nn.Conv2d(channels, channels, 1, bias=False)
        self.register_buffer("offsets", window_offsets(kernel_size), persistent=False)

    def padding(self) -> int:
        return self.k // 2

    def positions(self) -> torch.Tensor:
        return self.offsets

    def queries(self, x: torch.Tensor) -> torch.Tensor:
        return self.query(x)

    def windows(self, t: torch.Tensor) -> torch.Tensor:
        """(B, c, H, W) -> (B, c, k*k, L): each output position's k x k neighbourhood."""
        b, c = t.shape[:2]
        return F.unfold(t, self.k, padding=self.padding(), stride=self.stride).view(b, c, self.k * self.k, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        g, k2 = self.groups, self.k * self.k
        q = self.queries(x)
        out_h, out_w = q.shape[-2:]
        logits = -(q.flatten(2).unsqueeze(2) - self.windows(self.key(x))) ** 2
        logits = logits + self.prior(self.positions()).view(1, g, k2, 1)
        outside = self.windows(x.new_ones(1, 1, h, w)) < 0.5
        weights = torch.softmax(logits.masked_fill(outside, -math.inf), dim=2)
        values = self.windows(x).view(b, g, self.m, k2, -1)
        y = (values * weights.unsqueeze(2)).sum(3).view(b, c, out_h, out_w)
        return self.project(y)


class ShrinkingLocalRelation(LocalRelation):
    """Bug: no padding, so only the windows inside the image are computed."""

    def padding(self) -> int:
        return 0

    def queries(self, x: torch.Tensor) -> torch.Tensor:
        r = self.k // 2
        return self.query(x)[..., r:x.shape[2] - r, r:x.shape[3] - r]


class ScrambledLocalRelation(LocalRelation):
    """Bug: Tensor.unfold gives (B, c, H', W', k, k); reshaping that to (B, c, k*k, L)
    without moving the window axes first mixes offsets with positions."""

    def windows(self, t: torch.Tensor) -> torch.Tensor:
        b, c = t.shape[:2]
        p = self.padding()
        patches = F.pad(t, (p, p, p, p)).unfold(2, self.k, self.stride).unfold(3, self.k, self.stride)
        return patches.reshape(b, c, self.k * self.k, -1)


class UnregisteredLocalRelation(LocalRelation):
    """Bug: the geometry prior's positions are random and a plain attribute: not saved in
    the state_dict, not moved by .to()."""

    def __init__(self, channels: int, kernel_size: int = 7, channels_per_group: int = 8, stride: int = 1):
        super().__init__(channels, kernel_size, channels_per_group, stride)
        self.random_positions = torch.randn(1, 2, kernel_size, kernel_size)

    def positions(self) -> torch.Tensor:
        return self.random_positions


class LocalAttention(nn.Module):
    """SASA: per head, softmax over the k x k window of q . k + q . r, then the sum of v."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, groups: int = 1, bias: bool = False):
        super().__init__()
        assert in_channels == out_channels and out_channels % groups == 0
        self.k, self.stride, self.pad, self.heads = kernel_size, stride, padding, groups
        half = out_channels // groups // 2
        self.query = nn.Conv2d(in_channels, out_channels, 1, bias=bias)
        self.key = nn.Conv2d(in_channels, out_channels, 1, bias=bias)
        self.value = nn.Conv2d(in_channels, out_channels, 1, bias=bias)
        self.rel_rows = nn.Parameter(torch.randn(kernel_size, half))
        self.rel_cols = nn.Parameter(torch.randn(kernel_size, half))

    def neighbourhoods(self, t: torch.Tensor) -> torch.Tensor:
        b, c, h, w = t.shape
        d = c // self.heads
        return F.unfold(t, self.k, padding=self.pad).view(b, self.heads, d, self.k * self.k, h * w)

    def logits(self, q: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """(B, N, d, L) queries, (B, N, d, k*k, L) keys -> (B, N, k*k, L)."""
        b, n, d, length = q.shape
        content = (q.unsqueeze(3) * keys).sum(2)
        rows = torch.matmul(self.rel_rows, q[:, :, :d // 2])  # (B, N, k, L)
        cols = torch.matmul(self.rel_cols, q[:, :, d // 2:])
        relative = (rows.unsqueeze(3) + cols.unsqueeze(2)).reshape(b, n, self.k * self.k, length)
        return content + relative

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.query(x).view(b, self.heads, c // self.heads, h * w)
        logits = self.logits(q, self.neighbourhoods(self.key(x)))
        outside = self.neighbourhoods(x.new_ones(1, self.heads, h, w))[:, :, 0] < 0.5
        if logits.dim() == 5:
            outside = outside.unsqueeze(2)
        weights = torch.softmax(logits.masked_fill(outside, -math.inf), dim=-2)
        values = self.neighbourhoods(self.value(x))
        if weights.dim() == 4:
            weights = weights.unsqueeze(2)
        y = (values * weights).sum(3).view(b, c, h, w)
        return F.avg_pool2d(y, 2, 2, ceil_mode=True) if self.stride == 2 else y


class ChannelwiseAttention(LocalAttention):
    """Bug: q and k multiplied channel by channel with no sum over the head's channels, so
    every channel gets its own softmax (d times the exponentials)."""

    def logits(self, q: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        b, n, d, length = q.shape
        k = self.k
        content = q.unsqueeze(3) * keys  # (B, N, d, k*k, L)
        rows = q[:, :, :d // 2].unsqueeze(3) * self.rel_rows.t().reshape(1, 1, d // 2, k, 1)
        cols = q[:, :, d // 2:].unsqueeze(3) * self.rel_cols.t().reshape(1, 1, d // 2, k, 1)
        relative = torch.cat([rows.unsqueeze(4).expand(b, n, d // 2, k, k, length),
                              cols.unsqueeze(3).expand(b, n, d // 2, k, k, length)], dim=2)
        return content + relative.reshape(b, n, d, k * k, length)


class RegionConv(nn.Module):
    """DRConv-like: a k x k guide conv picks each pixel's region (argmax over r), and the
    pixel is convolved with that region's k x k filter only."""

    def __init__(self, channels: int, kernel_size: int = 3, region_num: int = 4):
        super().__init__()
        self.k, self.regions = kernel_size, region_num
        self.guide = nn.Conv2d(channels, region_num, kernel_size, padding=kernel_size // 2, bias=False)
        self.filters = nn.Parameter(torch.randn(region_num, channels, channels, kernel_size, kernel_size)
                                    / (channels * kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        region = self.guide(x).argmax(1).flatten(1)  # (B, L)
        columns = F.unfold(x, self.k, padding=self.k // 2).transpose(1, 2)  # (B, L, C*k*k)
        chosen = self.filters.flatten(2)[region]  # (B, L, C, C*k*k): the pixel's own filter
        y = torch.einsum("blk,blck->blc", columns, chosen)
        return y.transpose(1, 2).reshape(b, c, h, w)


class EveryPixelRegionConv(RegionConv):
    """Bug: every region's filter applied at every pixel, then one result picked: r times
    the main convolution's work."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        region = self.guide(x).argmax(1, keepdim=True)  # (B, 1, H, W)
        weight = self.filters.reshape(self.regions * c, c, self.k, self.k)
        every = F.conv2d(x, weight, padding=self.k // 2).view(b, self.regions, c, h, w)
        pick = region.unsqueeze(2).expand(b, 1, c, h, w)
        return every.gather(1, pick).squeeze(1)


class Block(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.norm(self.conv(x))) + x


class TinyCNN(nn.Module):
    def __init__(self, channels: int = 8, classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 3, padding=1)
        self.blocks = nn.Sequential(Block(channels), Block(channels))
        self.head = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        x = x * torch.sigmoid(x)  # ops in the root's own forward, outside every child
        return self.head(x.mean((2, 3)))


class TwoInputs(nn.Module):
    """Two input tensors: a feature map and a gate."""

    def __init__(self, channels: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * gate


class FailsToBuild(nn.Module):
    def __init__(self, channels: int = 4):
        super().__init__()
        raise ValueError("channels must be prime")


class FailsToRun(nn.Module):
    def __init__(self, channels: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).view(-1, 7, 7, 7, 7)


class NonLocal(nn.Module):
    """Embedded-Gaussian non-local block: softmax over every position of theta . phi, the
    sum of g, a 1x1 back to C, plus the input; optional 2x2 max-pool of phi and g."""

    def __init__(self, channels: int, subsample: bool = False):
        super().__init__()
        inner = channels // 2
        self.subsample = subsample
        self.theta = nn.Conv2d(channels, inner, 1, bias=False)
        self.phi = nn.Conv2d(channels, inner, 1, bias=False)
        self.g = nn.Conv2d(channels, inner, 1, bias=False)
        self.out = nn.Conv2d(inner, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        keys, values = self.phi(x), self.g(x)
        if self.subsample:
            keys, values = F.max_pool2d(keys, 2, ceil_mode=True), F.max_pool2d(values, 2, ceil_mode=True)
        queries = self.theta(x).flatten(2).transpose(1, 2)  # (B, N, C')
        attention = torch.softmax(queries @ keys.flatten(2), dim=-1)  # (B, N, N')
        y = (attention @ values.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(b, -1, h, w)
        return self.out(y) + x
