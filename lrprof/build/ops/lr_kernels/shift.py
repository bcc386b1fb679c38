"""`shift`: eager shift-and-accumulate. The logits and softmax are computed as in `unfold`
(the G * k^2 * H'W' logits are m times smaller than x's windows, and the official kernel
holds them too); the aggregation then walks the k^2 window offsets, adding each offset's
shifted view of the zero-padded x times its weight map into the output (one in-place
multiply-add per offset), so no C * k^2 * H'W' buffer exists, forward or backward."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lrprof.build.ops.lr_kernels.base import Relation, Sizes, register_relation
from lrprof.build.ops.lr_kernels.unfold import window_weights


class Shift(Relation):
    pointwise = "matmul"
    name = "shift"
    summary = "eager shift-and-accumulate over the k^2 offsets (no C*k^2*H'W' buffer)"
    backward = ("autograd through the per-offset multiply-adds (saves views of padded x and "
                "the G*k^2*H'W' weights, never C*k^2*H'W')")

    def __call__(self, layer, x, query, key, prior):
        b, c, height, width = x.shape
        k, s, g, m = layer.kernel_size, layer.stride, layer.groups, layer.m
        k2, pad = k * k, k // 2
        out_h, out_w = query.shape[-2:]
        weights = window_weights(layer, key, query, prior, height, width).view(b, g, k2, out_h, out_w)

        padded = F.pad(x, (pad, pad, pad, pad))
        span_h, span_w = (out_h - 1) * s + 1, (out_w - 1) * s + 1
        full = (c // m) * m  # channels in groups of exactly m
        grouped = x.new_zeros(b, full // m, m, out_h, out_w) if full else None
        rest = x.new_zeros(b, c - full, out_h, out_w) if full < c else None
        for offset in range(k2):
            di, dj = divmod(offset, k)
            window = padded[:, :, di:di + span_h:s, dj:dj + span_w:s]  # a view: no copy
            w = weights[:, :, offset]
            if grouped is not None:
                grouped.addcmul_(window[:, :full].unflatten(1, (full // m, m)), w[:, :full // m].unsqueeze(2))
            if rest is not None:
                rest.addcmul_(window[:, full:], w[:, -1:])
        parts = [t.flatten(1, 2) if t.dim() == 5 else t for t in (grouped, rest) if t is not None]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def traffic(self, n: Sizes) -> dict[str, int]:
        b, e, k2 = n.batch, n.e, n.k * n.k
        return {
            "x read, padded copy written": b * n.channels * (n.hw + (n.height + n.k) * (n.width + n.k)) * e,
            "per offset: shifted x and accumulator read, accumulator written (k^2 x 3*C*H'W')":
                3 * k2 * b * n.channels * n.out_hw * e,
            "key read, key windows (G*k^2*H'W') written": b * n.groups * (n.hw + k2 * n.out_hw) * e,
            "logits (G*k^2*H'W'): compose, prior, mask, softmax, per-offset reads (~13 passes)":
                13 * b * n.groups * k2 * n.out_hw * e,
        }

    def buffers(self, n: Sizes) -> dict[str, int]:
        return {
            "logits/weights (G*k^2*H'W')": n.batch * n.groups * n.k * n.k * n.out_hw * n.e,
            "zero-padded x": n.batch * n.channels * (n.height + n.k - 1) * (n.width + n.k - 1) * n.e,
        }


register_relation(Shift())
