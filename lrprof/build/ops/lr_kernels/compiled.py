"""`compiled`: torch.compile (inductor) of a window-view formulation. The k x k windows
of the zero-padded key map and x are strided views (Tensor.unfold), so the formulation
names no buffer beyond the G * k^2 * H'W' logits; inductor fuses the product with its
sum over the window, so the C * k^2 * H'W' product is never written.

Compiling takes seconds (on the first call per shape, dtype and grad mode): `prepare`
compiles the forward and, when asked, the forward+backward, and reports that time on its
own, never inside a latency. lrprof's counter sees this formulation's eager ops (dynamo
steps aside while a dispatch mode is active), so the count is the formulation's.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import _get_current_dispatch_mode

from lrprof.build.ops.lr_kernels.base import Relation, Sizes, register_relation


def compose(phi: str, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    if phi == "sqdiff":
        return -(query - keys).pow(2)
    if phi == "absdiff":
        return -(query - keys).abs()
    return query * keys


def windows_of(t: torch.Tensor, k: int, stride: int) -> torch.Tensor:
    """(B, N, k, k, H', W') strided views of the zero-padded (B, N, H, W) map's windows."""
    pad = k // 2
    return F.pad(t, (pad, pad, pad, pad)).unfold(2, k, stride).unfold(3, k, stride).permute(0, 1, 4, 5, 2, 3)


def window_relation(x: torch.Tensor, query: torch.Tensor, key: torch.Tensor, prior: torch.Tensor,
                    outside: torch.Tensor, k: int, m: int, stride: int, phi: str) -> torch.Tensor:
    """The relation step on window views: (B, G, k, k, H', W') logits, softmax over the
    window, and each group's m channels weighted and summed over the window."""
    b, c = x.shape[:2]
    g = query.shape[1]
    out_h, out_w = query.shape[-2:]
    keys = windows_of(key, k, stride)
    logits = compose(phi, query[:, :, None, None], keys) + prior.view(1, g, k, k, 1, 1)
    logits = logits.masked_fill(outside.view(1, 1, k, k, out_h, out_w), -math.inf)
    weights = torch.softmax(logits.flatten(2, 3), dim=2).view(b, g, k, k, out_h, out_w)
    windows = windows_of(x, k, stride)
    full = (c // m) * m
    parts = []
    if full:
        grouped = windows[:, :full].unflatten(1, (full // m, m))
        parts.append((grouped * weights[:, :full // m].unsqueeze(2)).sum(dim=(3, 4)).flatten(1, 2))
    if full < c:
        parts.append((windows[:, full:] * weights[:, -1:]).sum(dim=(2, 3)))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


class Compiled(Relation):
    pointwise = "matmul"
    name = "compiled"
    summary = "torch.compile (inductor) of window views; compile time in its own column"
    backward = "AOTAutograd's compiled backward of the same formulation (inductor)"

    def __init__(self) -> None:
        self._function: Any = None

    def unavailable(self, device: torch.device, dtype: str) -> str | None:
        if device.type == "cpu" and dtype in ("float16", "bfloat16"):
            return "inductor's CPU code for float16/bfloat16 is not what this layer is profiled for"
        return None

    def not_ready(self, device: torch.device, dtype: str) -> str | None:
        return "torch.compile compiles it again in every process (tens of seconds here)"

    def function(self) -> Any:
        if self._function is None:
            self._function = torch.compile(window_relation, dynamic=False, fullgraph=True)
        return self._function

    def __call__(self, layer, x, query, key, prior):
        outside = layer.outside_mask(x.shape[2], x.shape[3], x.device)
        # Under a dispatch mode (lrprof's counter) dynamo does not compile but runs the
        # formulation's eager ops; with fullgraph=True it would raise instead, so step aside here.
        run = window_relation if _get_current_dispatch_mode() is not None else self.function()
        return run(x, query, key, prior, outside, layer.kernel_size, layer.m, layer.stride, layer.phi)

    def prepare(self, layer, inputs, backward):
        """Compile now: the first forward under no_grad and, with `backward`, the first
        forward+backward (each first call includes one run, a few ms against seconds)."""
        started = time.perf_counter()
        with torch.no_grad():
            layer(*inputs)
        parts = [f"forward {time.perf_counter() - started:.1f} s"]
        if backward:
            begun = time.perf_counter()
            x = inputs[0].detach().requires_grad_(True)
            out = layer(x, *inputs[1:])
            wrt = [x, *(p for p in layer.parameters() if p.requires_grad)]
            torch.autograd.grad(out, wrt, torch.ones_like(out), allow_unused=True)
            parts.append(f"forward+backward {time.perf_counter() - begun:.1f} s")
        return {"setup_s": time.perf_counter() - started, "setup": "torch.compile: " + ", ".join(parts)}

    def traffic(self, n: Sizes) -> dict[str, int]:
        b, e, k2 = n.batch, n.e, n.k * n.k
        return {
            "x read once (windows from cache)": b * n.channels * n.hw * e,
            "query and key read once": b * n.groups * (n.hw + n.out_hw) * e,
            "weights (G*k^2*H'W') written, read": 2 * b * n.groups * k2 * n.out_hw * e,
            "aggregated written": b * n.channels * n.out_hw * e,
        }

    def buffers(self, n: Sizes) -> dict[str, int]:
        return {"weights (G*k^2*H'W')": n.batch * n.groups * n.k * n.k * n.out_hw * n.e}


register_relation(Compiled())
