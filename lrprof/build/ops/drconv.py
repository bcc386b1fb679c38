"""Dynamic region-aware convolution (DRConv, Chen et al., arXiv 2003.12243): operator `drconv`.

For input x (B, C, H, W), r regions, k x k filters, O output channels, stride s:

1. guided mask: a k x k conv C -> r (stride s, 'same' padding, with bias) gives r logits per
   output pixel; each pixel belongs to the region of its largest logit (argmax). Backward,
   the one-hot mask takes softmax's gradient (a straight-through estimator): the logits'
   gradient is softmax's Jacobian applied to what each region's filter would have given;
2. filter generator: adaptive average pool of x to k x k, a 1x1 conv C -> r^2 with sigmoid,
   and a grouped 1x1 conv r^2 -> r*C*O (groups r): one k x k filter bank (O x C x k x k) per
   region and per sample; its cost does not depend on H, W;
3. each output pixel is convolved with its own region's filters only, so the main term is
   B*O*C*k^2*H'W', a standard convolution's, whatever r is.

Implementations (same parameters, so the float64 reference loads either):
- `region`: x unfolded to one column per output pixel (its k x k window); per sample the
  columns are gathered once in region order, each region's block is multiplied by that
  region's filter bank in one matrix product, and the result is put back in pixel order.
  Forward and backward are a small autograd.Function (`RouteByRegion`): its forward never
  computes a filter at a pixel outside its region; its backward computes
  every region's response once, for the mask's straight-through gradient (r times the
  main term, as the paper's backward needs).
- `naive`: what popular reimplementations do: every region's filters at every pixel (one
  grouped convolution, r times the main term), then the one-hot mask multiplied in and
  summed over regions; the straight-through gradient by y_hard - y_soft.detach() + y_soft.
  It passes the output check and shows a work ratio of about r.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lrprof.build.ops.cost import CostModel, Term
from lrprof.measure.accuracy import TOLERANCE, OutputCheck, compare_with_reference
from lrprof.measure.modes import register_value_module
from lrprof.spec.errors import SpecError, require_int
from lrprof.spec.layer import LayerSpec
from lrprof.spec.params import Param, Schema, kernel_param, out_channels_param, stride_param

PAPER_FORMULA = "B * O * C * k^2 * H'W' (the paper's claim: a standard convolution's cost)"


def output_size(size: int, stride: int) -> int:
    """'same' padding (k // 2, odd k) with stride s gives ceil(size / s)."""
    return (size - 1) // stride + 1


def check_hyperparameters(channels: int, out_channels: int, k: int, regions: int, stride: int) -> None:
    require_int("channels", channels, 1)
    require_int("out-channels", out_channels, 1)
    if not isinstance(k, int) or k < 1 or k % 2 == 0:
        raise SpecError("k", "must be an odd integer >= 1", k)
    require_int("regions", regions, 1)
    require_int("stride", stride, 1)


class RouteByRegion(torch.autograd.Function):
    """out[b, :, p] = filters[b, region[b, p]] @ cols[b, :, p], region = argmax of the logits.

    cols (B, K, L): the k x k window of each output pixel p as a column (F.unfold),
    K = C*k^2; filters (B, r, O, K); logits (B, r, L) -> out (B, O, L). Per sample, the
    columns are gathered once in region order, each region's block is multiplied by its
    filters, and the result is put back in pixel order.
    """

    @staticmethod
    def forward(ctx: Any, cols: torch.Tensor, filters: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        region = logits.argmax(dim=1)  # (B, L)
        out = cols.new_zeros((cols.shape[0], filters.shape[2], cols.shape[2]))
        if cols.is_meta:  # a shape-only pass (network costing): routing needs data
            return out
        for b, order, back, spans in _grouped_by_region(region, filters.shape[1]):
            grouped = cols[b].index_select(1, order)  # (K, L), region by region
            result = torch.cat([filters[b, j] @ grouped[:, start:end] for j, start, end in spans], dim=1)
            out[b] = result.index_select(1, back)
        ctx.save_for_backward(cols, filters, logits, region)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        cols, filters, logits, region = ctx.saved_tensors
        need_cols, need_filters, need_logits = ctx.needs_input_grad
        grad_cols = torch.zeros_like(cols) if need_cols else None
        grad_filters = torch.zeros_like(filters) if need_filters else None
        grad_logits = None
        if need_cols or need_filters:
            for b, order, back, spans in _grouped_by_region(region, filters.shape[1]):
                grads = grad_out[b].index_select(1, order)  # (O, L), region by region
                if grad_filters is not None:
                    grouped = cols[b].index_select(1, order)
                    for j, start, end in spans:
                        grad_filters[b, j] = grads[:, start:end] @ grouped[:, start:end].t()
                if grad_cols is not None:
                    grouped_grad = torch.cat([filters[b, j].t() @ grads[:, start:end]
                                              for j, start, end in spans], dim=1)
                    grad_cols[b] = grouped_grad.index_select(1, back)
        if need_logits:
            # what every region's filters give at every pixel, against the output's gradient
            batch, regions, out_channels, width = filters.shape
            every = torch.bmm(filters.reshape(batch, regions * out_channels, width), cols)
            score = (every.view(batch, regions, out_channels, -1) * grad_out.unsqueeze(1)).sum(dim=2)
            prob = torch.softmax(logits, dim=1)
            grad_logits = prob * (score - (prob * score).sum(dim=1, keepdim=True))
        return grad_cols, grad_filters, grad_logits


def _grouped_by_region(region: torch.Tensor, regions: int):
    """Per sample: the pixel order that groups pixels by region, the order that undoes it,
    and (region, start, end) of each non-empty region's block."""
    ids = torch.arange(regions, device=region.device).unsqueeze(1)
    for b in range(region.shape[0]):
        order = torch.argsort(region[b], stable=True)
        back = torch.argsort(order)
        counts = (region[b].unsqueeze(0) == ids).sum(dim=1).tolist()
        spans, start = [], 0
        for j, n in enumerate(counts):
            if n:
                spans.append((j, start, start + n))
            start += n
        yield b, order, back, spans


class DRConv2d(nn.Module):
    """DRConv with region routing (the `region` implementation); see the module docstring."""

    def __init__(self, channels: int, out_channels: int | None = None, kernel_size: int = 3,
                 regions: int = 8, stride: int = 1) -> None:
        super().__init__()
        out_channels = channels if out_channels is None else out_channels
        check_hyperparameters(channels, out_channels, kernel_size, regions, stride)
        self.channels, self.out_channels = channels, out_channels
        self.kernel_size, self.regions, self.stride = kernel_size, regions, stride
        k, r = kernel_size, regions
        self.guide = nn.Conv2d(channels, r, k, stride=stride, padding=k // 2)
        self.generator = nn.Sequential(
            nn.AdaptiveAvgPool2d(k),
            nn.Conv2d(channels, r * r, 1),
            nn.Sigmoid(),
            nn.Conv2d(r * r, r * channels * out_channels, 1, groups=r),
        )

    def extra_repr(self) -> str:
        return (f"{self.channels}, {self.out_channels}, k={self.kernel_size}, regions={self.regions}, "
                f"stride={self.stride}")

    def region_filters(self, x: torch.Tensor) -> torch.Tensor:
        """(B, r, O, C*k^2): region j's filter bank for each sample, in unfold's (c, i, j) order."""
        return self.generator(x).view(x.shape[0], self.regions, self.out_channels, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel_size, self.stride
        logits = self.guide(x)  # (B, r, H', W')
        out_h, out_w = logits.shape[-2:]
        cols = F.unfold(x, k, padding=k // 2, stride=s)  # (B, C*k^2, H'W')
        out = RouteByRegion.apply(cols, self.region_filters(x), logits.flatten(2))
        return out.view(x.shape[0], self.out_channels, out_h, out_w)


class NaiveDRConv2d(DRConv2d):
    """Every region's filters at every pixel, then the mask selects (the `naive` implementation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        k, s, r, o = self.kernel_size, self.stride, self.regions, self.out_channels
        logits = self.guide(x)
        weight = self.region_filters(x).reshape(b * r * o, c, k, k)
        every = F.conv2d(x.reshape(1, b * c, h, w), weight, stride=s, padding=k // 2, groups=b)
        every = every.view(b, r, o, *logits.shape[-2:])
        soft = torch.softmax(logits, dim=1)
        hard = F.one_hot(logits.argmax(dim=1), r).permute(0, 3, 1, 2).to(soft.dtype)
        mask = hard - soft.detach() + soft  # one-hot forward, softmax's gradient backward
        return (every * mask.unsqueeze(2)).sum(dim=1)


def check_output(module: DRConv2d, reference: DRConv2d, inputs: tuple[torch.Tensor, ...], dtype: str,
                 reference_name: str) -> OutputCheck:
    """The output check for DRConv. Its output jumps where a pixel's two largest guide logits
    swap, so where they tie to within the dtype's rounding the module and its float64
    reference may both be right and still pick different regions. At such near-ties (margin
    at most the dtype's tolerance times max |logit| in float64) the reference routes the
    pixel to the region the module's guide picks (its argmax at the module's dtype), and the
    note counts them; a disagreement on a clear margin is left alone, so it fails the check.
    A module that routes otherwise than its guide says fails too: its output is compared
    with the reference routed by that guide."""
    with torch.no_grad():
        chosen = module.guide(inputs[0]).argmax(dim=1)  # (B, H', W') as the module routes
    found = {"ties": 0, "clear": 0}

    def route_near_ties_as_chosen(_guide: nn.Module, _args: Any, logits: torch.Tensor):
        best = logits.argmax(dim=1)
        margin = logits.gather(1, best.unsqueeze(1)) - logits.gather(1, chosen.unsqueeze(1))
        differs = best != chosen
        tie = differs & (margin.squeeze(1) <= TOLERANCE.get(dtype, 1e-4) * logits.abs().max())
        found.update(ties=int(tie.sum()), clear=int((differs & ~tie).sum()))
        if not tie.any():
            return None
        forced = torch.where(tie, chosen, best)
        lift = (logits.max() - logits.min() + 1) * F.one_hot(forced, logits.shape[1]).permute(0, 3, 1, 2)
        return logits + lift  # argmax is now `forced`; only the argmax routes

    handle = reference.guide.register_forward_hook(route_near_ties_as_chosen)
    try:
        check = compare_with_reference(module, reference, inputs, dtype, reference_name)
    finally:
        handle.remove()
    parts = []
    if found["ties"]:
        parts.append(f"{found['ties']} near-tie pixel(s) routed in the reference to the region "
                     "the module's guide picks")
    if found["clear"]:
        parts.append(f"{found['clear']} pixel(s) where the guide's pick differs on a clear margin")
    return dataclasses.replace(check, note="; ".join(parts))


def _build(cls: type[DRConv2d]):
    def build(spec: LayerSpec) -> DRConv2d:
        p = dict(spec.params)
        return cls(spec.channels, p["out_channels"], p["k"], p["regions"], p["stride"])

    return build


def from_module(module: DRConv2d, input_shape: tuple[int, ...]) -> LayerSpec:
    b, c, h, w = input_shape
    return LayerSpec(op="drconv", impl="region", channels=c, height=h, width=w, batch=b,
                     k=module.kernel_size, regions=module.regions, stride=module.stride,
                     out_channels=module.out_channels)


def cost(spec: LayerSpec) -> CostModel:
    p = dict(spec.params)
    return cost_of(spec.channels, spec.height, spec.width, p["k"], p["regions"], p["stride"],
                   p["out_channels"], spec.batch, spec.torch_dtype.itemsize)


def cost_of(channels: int, height: int, width: int, k: int = 3, regions: int = 8, stride: int = 1,
            out_channels: int | None = None, batch: int = 1, bytes_per_element: int = 4) -> CostModel:
    """Exact term-by-term MACs, parameters and the paper's claim for one layer."""
    c, r, b, k2 = channels, regions, batch, k * k
    o = c if out_channels is None else out_channels
    out_hw = output_size(height, stride) * output_size(width, stride)
    main = b * o * c * k2 * out_hw
    terms = (
        Term("main (own region's filters)", main, "B*O*C*k^2*H'W', whatever r"),
        Term("guide conv", b * r * c * k2 * out_hw, "B*r*C*k^2*H'W'"),
        Term("region choice", 0, "argmax, gather, scatter: 0"),
        Term("generator 1x1 C->r^2", b * c * r * r * k2, "B*C*r^2*k^2 (on the k x k pooled map)"),
        Term("generator grouped 1x1 r^2->r*C*O", b * r * r * c * o * k2, "B*r^2*C*O*k^2"),
    )
    params = (r * c * k2 + r) + (c * r * r + r * r) + (r * r * c * o + r * c * o)
    e = bytes_per_element
    return CostModel(
        terms=terms,
        params=params,
        paper_macs=float(main),
        paper_formula=PAPER_FORMULA,
        # the guide adds r/O; the generator's H, W-independent terms (r^2*C*O*k^2) dominate
        # on small maps and wide layers, so the claim holds only on large maps
        paper_band=(1.0, 1.5),
        activation_bytes={
            "input": b * c * height * width * e,
            "guide logits (r*H'W')": b * r * out_hw * e,
            "region filters (r*O*C*k^2)": b * r * o * c * k2 * e,
            "output": b * o * out_hw * e,
        },
        implementation_bytes={
            "unfolded columns, and gathered (C*k^2*H'W' each)": 2 * b * c * k2 * out_hw * e,
            "region filters (r*O*C*k^2)": b * r * o * c * k2 * e,
        },
        notes=(f"r = {r}: the main term is r-independent; the generator costs r^2*C*O*k^2 "
               f"= {b * r * r * c * o * k2:,} MACs per call whatever H, W",
               "the official code's counter leaves the guide conv and the routing out; "
               "lrprof counts everything"),
    )


SCHEMA = Schema((
    kernel_param(),
    Param("regions", int, 8, "DRConv regions r (one filter bank per region)", minimum=1, headline=True,
          short="r"),
    stride_param(),
    out_channels_param(),
))

COST_TEXT = ("B*O*C*k^2*H'W' (main: each pixel with its own region's filters) + B*r*C*k^2*H'W' "
             "(guide) + B*C*r^2*k^2 + B*r^2*C*O*k^2 (filter generator, H, W-independent)")


def _register() -> None:
    from lrprof.build.ops.registry import Impl, OpDef, register_op

    register_op(OpDef(
        name="drconv",
        summary="dynamic region-aware conv (DRConv): guided argmax regions, per-region generated filters",
        schema=SCHEMA,
        impls=(
            Impl("region", "per sample and region: that region's pixels times its filters, one "
                 "matrix product (main term independent of r)", _build(DRConv2d),
                 backward="autograd.Function; mask: straight-through softmax gradient (r x main)"),
            Impl("naive", "every region's filters at every pixel (r x main), then the one-hot mask: "
                 "the popular reimplementation", _build(NaiveDRConv2d),
                 backward="autograd; mask: y_hard - y_soft.detach() + y_soft"),
        ),
        cost=cost,
        reference="region",
        modules=(DRConv2d,),
        from_module=from_module,
        cost_text=COST_TEXT,
        check_output=check_output,
    ))

    register_value_module(DRConv2d, "its region routing: the argmax of the guide picks which filter "
                          "each pixel meets, and the region sizes set the products")


_register()
