"""`unfold`: the readable reference. The k^2 windows of the key map and of x are unfolded
(F.unfold: G * k^2 * H'W' and C * k^2 * H'W' elements), weighted and summed; eager torch,
backward by autograd through the same ops."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lrprof.build.ops.lr_kernels.base import Relation, Sizes, register_relation


def aggregate(windows: torch.Tensor, weights: torch.Tensor, channels: int, m: int, k2: int) -> torch.Tensor:
    """(B, C, k^2, L) windows, (B, G, k^2, L) weights -> (B, C, L): each group's m
    channels share their group's weights (broadcast, not copied per channel)."""
    # Sizes from the layer, not the tensors: traced shape arithmetic would show up as ops.
    c = channels
    full = (c // m) * m  # channels in groups of exactly m
    parts = []
    if full:
        grouped = windows[:, :full].reshape(-1, full // m, m, k2, windows.shape[-1])
        shared = weights[:, : full // m].unsqueeze(2)
        parts.append((grouped * shared).sum(dim=3).flatten(1, 2))
    if full < c:  # the last, smaller group
        parts.append((windows[:, full:] * weights[:, -1:]).sum(dim=2))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def window_weights(layer, key: torch.Tensor, query: torch.Tensor, prior: torch.Tensor,
                   height: int, width: int) -> torch.Tensor:
    """(B, G, k^2, H'W') softmax weights of every window: Phi(q, k) + prior over the
    unfolded key windows, neighbours outside the image masked out (shared with `shift`)."""
    k, s, g = layer.kernel_size, layer.stride, layer.groups
    k2 = k * k
    # -1 rather than out_h * out_w: under tracing that product is an op of its own
    keys = F.unfold(key, k, padding=k // 2, stride=s).view(key.shape[0], g, k2, -1)
    logits = layer.compose(query.flatten(2).unsqueeze(2), keys)
    logits = (logits + prior.view(1, g, k2, 1)).masked_fill(
        layer.outside_mask(height, width, key.device), -math.inf)
    return torch.softmax(logits, dim=2)


class Unfold(Relation):
    name = "unfold"
    summary = "F.unfold of the k^2 windows (C*k^2*H'W' buffer): the readable reference"
    backward = "autograd through the unfold, softmax and product ops (C*k^2*H'W' saved)"

    def __call__(self, layer, x, query, key, prior):
        b, c, height, width = x.shape
        k, s = layer.kernel_size, layer.stride
        k2 = k * k
        out_h, out_w = query.shape[-2:]
        weights = window_weights(layer, key, query, prior, height, width)  # (B, G, k^2, H'W')
        windows = F.unfold(x, k, padding=k // 2, stride=s).view(b, c, k2, -1)
        return aggregate(windows, weights, layer.channels, layer.m, k2).view(b, c, out_h, out_w)

    def traffic(self, n: Sizes) -> dict[str, int]:
        b, e, k2 = n.batch, n.e, n.k * n.k
        return {
            "x read by unfold": b * n.channels * n.hw * e,
            "x windows (C*k^2*H'W') written, read": 2 * b * n.channels * k2 * n.out_hw * e,
            "weighted windows (C*k^2*H'W') written, read": 2 * b * n.channels * k2 * n.out_hw * e,
            "aggregated written": b * n.channels * n.out_hw * e,
            "key read, key windows (G*k^2*H'W') written": b * n.groups * (n.hw + k2 * n.out_hw) * e,
            "logits (G*k^2*H'W'): compose, prior, mask, softmax, product (~13 passes)":
                13 * b * n.groups * k2 * n.out_hw * e,
        }

    def buffers(self, n: Sizes) -> dict[str, int]:
        size = n.batch * n.channels * n.k * n.k * n.out_hw * n.e
        return {"unfold windows (C*k^2*H'W')": size, "weighted windows (C*k^2*H'W')": size}


register_relation(Unfold())
