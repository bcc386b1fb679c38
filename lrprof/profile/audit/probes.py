"""Behavioural probes: what an implementation does, measured from outside, beside what
lrprof's own implementation of the operator does under the same probe.

Every expectation comes from lrprof's implementation, measured the same way, not from a
table: a local operator's footprint is its k x k window (the union of 2x2 windows of them
with SASA's stride-2 pool), the non-local block's is the whole map; a masked softmax keeps a
constant image constant up to the borders while zero padding taken as pixels does not; a
global operator is equivariant under any permutation of the pixels, a local one under
shifts away from the borders. So the probes need no change when an operator is added.

Probes run in float64 (differences at 1e-9 of the output's scale are real, not rounding),
on the spec's channels and size, with random inputs from fixed seeds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from lrprof.build.usermodule import default_dtype

TOLERANCE = 1e-9  # relative, in float64: equal up to rounding
MOVE_TOLERANCE = 1e-4  # float32 against the same weights in float64
PASS, FAIL, NA, INFO = "pass", "FAIL", "n/a", "info"


@dataclass
class Result:
    """One row of the check: passed True/False, or None (not applicable, or information)."""

    check: str
    passed: bool | None
    measured: str
    expected: str = ""
    figure: float | None = None  # the number the row turns on, where there is one
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        if self.passed is None:
            return INFO if self.detail.get("info") else NA
        return PASS if self.passed else FAIL


class Subject:
    """One implementation under probe: a fresh module on demand (seeded, built with a
    default dtype, moved to a dtype and device, in eval mode)."""

    def __init__(self, name: str, construct: Callable[[], nn.Module], device: torch.device) -> None:
        self.name, self.construct, self.device = name, construct, device

    def make(self, seed: int = 0, dtype: torch.dtype = torch.float64,
             construct_dtype: torch.dtype | None = None) -> nn.Module:
        torch.manual_seed(seed)
        with default_dtype(construct_dtype or (dtype if dtype == torch.float64 else None)):
            module = self.construct()
        return module.to(device=self.device, dtype=dtype).eval()


def output(module: nn.Module, *inputs: torch.Tensor) -> torch.Tensor:
    """The first tensor the module returns."""
    found = next((t for t in tree_flatten(module(*inputs))[0] if isinstance(t, torch.Tensor)), None)
    if found is None:
        raise TypeError(f"{type(module).__name__} returned no tensor")
    return found


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (0 when both are 0)."""
    if a.shape != b.shape:
        return math.inf
    scale = b.abs().max().item() if b.numel() else 0.0
    diff = (a.to(b.dtype) - b).abs().max().item() if b.numel() else 0.0
    if scale == 0:
        return 0.0 if diff == 0 else math.inf
    return diff / scale


def random_input(shape: tuple[int, ...], seed: int, device: torch.device,
                 dtype: torch.dtype = torch.float64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float64).to(device=device, dtype=dtype)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _spatial(y: torch.Tensor) -> bool:
    return y.dim() == 4


# ---- output shape -----------------------------------------------------------------------------


def shape_text(shape: tuple[int, ...], x_shape: tuple[int, ...]) -> str:
    text = "x".join(map(str, shape))
    if len(shape) == 4 and len(x_shape) == 4:
        h, w = x_shape[2:]
        if tuple(shape[2:]) == (h, w):
            return f"{text} (same size)"
        if tuple(shape[2:]) == ((h + 1) // 2, (w + 1) // 2):
            return f"{text} (halved)"
    return text


def output_shape(user: nn.Module, own: nn.Module, x: torch.Tensor) -> Result:
    with torch.no_grad():
        expected = tuple(output(own, x).shape)
        got = tuple(output(user, x).shape)
    return Result("output shape", got == expected, shape_text(got, tuple(x.shape)),
                  shape_text(expected, tuple(x.shape)))


# ---- receptive field (gradient probe) ---------------------------------------------------------


@dataclass(frozen=True)
class Footprint:
    """The input positions one output pixel depends on, of the first image of a batch."""

    mask: torch.Tensor  # (H, W) bool
    leaks_across_batch: bool
    pixel: tuple[int, int] = (0, 0)  # the output pixel probed

    @property
    def count(self) -> int:
        return int(self.mask.sum())

    @property
    def is_global(self) -> bool:
        return bool(self.mask.all())

    def box(self) -> tuple[int, int, int, int] | None:
        rows = torch.nonzero(self.mask.any(1)).flatten()
        cols = torch.nonzero(self.mask.any(0)).flatten()
        if not len(rows):
            return None
        return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1

    def shape(self) -> torch.Tensor | None:
        """The footprint cropped to its bounding box: its form, wherever it lies."""
        box = self.box()
        return None if box is None else self.mask[box[0]:box[1], box[2]:box[3]]

    def reach(self, stride: int) -> tuple[int, int, int, int] | None:
        """How far the footprint extends up, down, left and right of the probed pixel's
        place in the input (its output index times the stride)."""
        box = self.box()
        if box is None:
            return None
        i, j = self.pixel[0] * stride, self.pixel[1] * stride
        return max(i - box[0], 0), max(box[1] - 1 - i, 0), max(j - box[2], 0), max(box[3] - 1 - j, 0)

    def text(self) -> str:
        box = self.box()
        if box is None:
            return "no input position reaches it"
        h, w = box[1] - box[0], box[3] - box[2]
        if self.is_global:
            text = f"global (all {h}x{w} positions)"
        elif self.count == h * w:
            text = f"{h}x{w} window ({self.count} positions)"
        else:
            text = f"{self.count} positions scattered over a {h}x{w} box"
        return text + ("; reaches other images of the batch" if self.leaks_across_batch else "")


def footprint(module: nn.Module, x: torch.Tensor, seed: int = 0) -> Footprint:
    """Gradient of the centre output pixel of image 0 (a random mix of its channels) with
    respect to the input: the positions where it is not exactly zero."""
    x = x.detach().clone().requires_grad_(True)
    y = output(module, x)
    if not _spatial(y):
        raise ValueError(f"the output is {tuple(y.shape)}, not (B, C, H, W)")
    weights = random_input((y.shape[1],), seed, y.device, y.dtype)
    i, j = y.shape[2] // 2, y.shape[3] // 2
    (grad,) = torch.autograd.grad((y[0, :, i, j] * weights).sum(), x)
    return Footprint(grad[0].abs().sum(0) != 0, bool((grad[1:] != 0).any()), (i, j))


def receptive_field(user: nn.Module, own: nn.Module, x: torch.Tensor,
                    k: int | None = None) -> tuple[Result, Footprint]:
    """The footprints' forms must be equal. Where lrprof's own is not a full box (max
    pooling routes the gradient through the largest value only, which depends on the
    weights), only the boxes' sizes are compared."""
    mine = footprint(own, x)
    theirs = footprint(user, x)
    a, b = theirs.shape(), mine.shape()
    if a is None or b is None or a.shape != b.shape:
        same = False
    elif bool(b.all()):
        same = bool(a.all())
    else:
        same = True
    expected = mine.text() + (f" (k = {k})" if k and not mine.is_global else "")
    if b is not None and not bool(b.all()):
        expected += "; sparse, so compared by extent"
    return Result("receptive field (gradient probe)", same and not theirs.leaks_across_batch,
                  theirs.text(), expected, figure=float(theirs.count)), mine


# ---- equivariance -----------------------------------------------------------------------------


def _permutation_diff(module: nn.Module, x: torch.Tensor, seed: int) -> float:
    b, c, h, w = x.shape
    perm = torch.randperm(h * w, generator=torch.Generator().manual_seed(seed)).to(x.device)
    with torch.no_grad():
        y = output(module, x)
        moved = output(module, x.flatten(2)[..., perm].reshape(x.shape))
    if not _spatial(y) or tuple(y.shape[2:]) != (h, w):
        return math.inf
    return relative(moved, y.flatten(2)[..., perm].reshape(y.shape))


def _circular_diff(module: nn.Module, x: torch.Tensor, shift: tuple[int, int], stride: int) -> float:
    with torch.no_grad():
        y = output(module, x)
        moved = output(module, torch.roll(x, shift, dims=(2, 3)))
    if not _spatial(y) or moved.shape != y.shape:
        return math.inf
    return relative(moved, torch.roll(y, (shift[0] // stride, shift[1] // stride), dims=(2, 3)))


def _interior_diff(module: nn.Module, x: torch.Tensor, shift: tuple[int, int], stride: int,
                   reach: tuple[int, int, int, int]) -> float | None:
    """Shift the image (circularly, so global statistics stay the same) and compare the
    outputs only where neither the borders nor the wrapped pixels are within `reach` (up,
    down, left, right of an output pixel's place in the input), before and after the
    shift. None: no such pixel on this map."""
    with torch.no_grad():
        y = output(module, x)
        moved = output(module, torch.roll(x, shift, dims=(2, 3)))
    if not _spatial(y) or moved.shape != y.shape:
        return math.inf
    up, down, left, right = reach
    h, w = x.shape[2:]
    di, dj = shift[0] // stride, shift[1] // stride
    i0, j0 = -(-(up + shift[0]) // stride), -(-(left + shift[1]) // stride)
    i1 = min((h - 1 - down) // stride, y.shape[2] - 1) + 1
    j1 = min((w - 1 - right) // stride, y.shape[3] - 1) + 1
    if i1 - i0 < 1 or j1 - j0 < 1:
        return None
    return relative(moved[..., i0:i1, j0:j1], y[..., i0 - di:i1 - di, j0 - dj:j1 - dj])


def equivariance(user: nn.Module, own: nn.Module, x: torch.Tensor, stride: int,
                 reach: tuple[int, int, int, int] | None, seed: int = 0) -> Result:
    """The strongest symmetry lrprof's implementation has here (any permutation of the
    pixels; circular shifts, by even multiples of the stride so that 2x2 pooling stays
    aligned; shifts away from the borders), held against the user's."""
    shift, circular = (stride, 2 * stride), (2 * stride, 4 * stride)
    if _permutation_diff(own, x, seed) <= TOLERANCE:
        diff = _permutation_diff(user, x, seed)
        return Result("permutation equivariance", diff <= TOLERANCE,
                      f"permuting the pixels permutes the output: max rel. difference {diff:.2g}",
                      f"<= {TOLERANCE:g} (lrprof's implementation is permutation equivariant)", diff)
    if _circular_diff(own, x, circular, stride) <= TOLERANCE:
        diff = _circular_diff(user, x, circular, stride)
        return Result("translation equivariance (circular shift)", diff <= TOLERANCE,
                      f"shift by {circular}: max rel. difference {diff:.2g}",
                      f"<= {TOLERANCE:g} (lrprof's implementation is equivariant on the whole map)", diff)
    name = "translation equivariance away from the borders"
    if reach is None:
        return Result(name, None, "not probed: the operator has no window size to keep off the borders")
    reference = _interior_diff(own, x, shift, stride, reach)
    if reference is None:
        return Result(name, None, f"not probed: the map is too small for a shift of {shift} with the "
                      f"window {reach} (up, down, left, right) off the borders")
    if reference > TOLERANCE:
        return Result(name, None, f"not probed: lrprof's implementation itself differs by {reference:.2g}")
    diff = _interior_diff(user, x, shift, stride, reach)
    return Result(name, diff is not None and diff <= TOLERANCE,
                  f"shift by {shift}, compared where the window stays off the borders: max rel. "
                  f"difference {diff:.2g}" if diff is not None else "the output is too small to compare",
                  f"<= {TOLERANCE:g}", diff)


# ---- border behaviour -------------------------------------------------------------------------


def _constant_image(channels: int, height: int, width: int, seed: int, device: torch.device) -> torch.Tensor:
    values = random_input((1, channels, 1, 1), seed, device)
    return values.expand(1, channels, height, width).contiguous()


def _border_profile(module: nn.Module, x: torch.Tensor, margin: int) -> tuple[float, float]:
    """(deviation anywhere, deviation more than `margin` from the borders) of the output
    from its centre pixel, relative to the output's scale, for a constant image."""
    with torch.no_grad():
        y = output(module, x)
    if not _spatial(y):
        raise ValueError(f"the output is {tuple(y.shape)}, not (B, C, H, W)")
    h, w = y.shape[2:]
    centre = y[..., h // 2: h // 2 + 1, w // 2: w // 2 + 1]
    scale = y.abs().max().item() or 1.0
    everywhere = (y - centre).abs().max().item() / scale
    m = min(margin, (h - 1) // 2, (w - 1) // 2)
    inner = y[..., m:h - m, m:w - m]
    interior = (inner - centre).abs().max().item() / scale if inner.numel() else 0.0
    return everywhere, interior


def _border_text(everywhere: float, interior: float) -> tuple[str, str]:
    if everywhere <= TOLERANCE:
        return "masked", f"a constant image stays constant up to the borders (deviation {everywhere:.2g})"
    if interior <= TOLERANCE:
        return "padded", (f"a constant image is not constant near the borders (deviation {everywhere:.2g}): "
                          "padding enters as pixels")
    return "varies", f"a constant image is not constant anywhere (deviation {interior:.2g} inside)"


def border(user: nn.Module, own: nn.Module, channels: int, height: int, width: int, margin: int,
           device: torch.device, seed: int = 0) -> Result:
    """Neighbours outside the image left out of the softmax (a constant image stays
    constant: the weights over the real neighbours sum to 1), or zero padding taken as
    pixels (the borders darken), held against lrprof's implementation."""
    x = _constant_image(channels, height, width, seed, device)
    mine, mine_text = _border_text(*_border_profile(own, x, margin))
    everywhere, interior = _border_profile(user, x, margin)
    theirs, text = _border_text(everywhere, interior)
    meaning = {"masked": "constant: neighbours outside the image are left out (lrprof's implementation)",
               "padded": "constant inside, not at the borders: zero padding, as lrprof's implementation",
               "varies": "as lrprof's implementation"}[mine]
    return Result("border behaviour", theirs == mine, text, meaning, everywhere)


# ---- registration -----------------------------------------------------------------------------
