"""DRConv2d (both implementations) against an independent, naive float64 reference, and its
straight-through backward.

The forward reference is written from the definition of DRConv (Chen et al.,
/work/shared/reference/operators.md sec. 5), not from the module's code: loops on Python
floats over output pixels, looking up each pixel's region explicitly (argmax of the guide
conv at that pixel, zero padding outside the image) and convolving the pixel with that
region's filters only. The filters come from loops too: adaptive average pooling to k x k
(bins floor(i*H/k) .. ceil((i+1)*H/k)), the 1x1 conv C -> r^2 with sigmoid, and the grouped
1x1 r^2 -> r*C*O, whose output channel j*O*C + o*C + c holds region j's filter from input
channel c to output channel o (the layout this module defines; the paper leaves it open).
"""

from __future__ import annotations

import math
import zlib

import pytest
import torch
import torch.nn.functional as F

from lrprof.build.ops.drconv import DRConv2d, NaiveDRConv2d, RouteByRegion

TOL64 = 1e-12
TOL32 = 1e-5


def _sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def _pool_bins(size: int, k: int) -> list[tuple[int, int]]:
    return [((i * size) // k, -(-((i + 1) * size) // k)) for i in range(k)]


def reference(layer: DRConv2d, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(output, region map) by loops."""
    xb = x.detach().double()
    bsz, c, h, w = xb.shape
    k, r, s, o = layer.kernel_size, layer.regions, layer.stride, layer.out_channels
    pad = k // 2
    out_h, out_w = (h - 1) // s + 1, (w - 1) // s + 1
    gw = layer.guide.weight.detach().double().tolist()  # (r, C, k, k)
    gb = layer.guide.bias.detach().double().tolist()
    w1 = layer.generator[1].weight.detach().double()[:, :, 0, 0].tolist()  # (r^2, C)
    b1 = layer.generator[1].bias.detach().double().tolist()
    w2 = layer.generator[3].weight.detach().double()[:, :, 0, 0].tolist()  # (r*O*C, r)
    b2 = layer.generator[3].bias.detach().double().tolist()
    out = torch.zeros(bsz, o, out_h, out_w, dtype=torch.float64)
    regions = torch.zeros(bsz, out_h, out_w, dtype=torch.long)
    for b in range(bsz):
        xs = xb[b].tolist()

        def pixel(ch: int, i: int, j: int, xs: list = xs) -> float:
            return xs[ch][i][j] if 0 <= i < h and 0 <= j < w else 0.0

        pooled = [[[0.0] * k for _ in range(k)] for _ in range(c)]
        for ch in range(c):
            for bi, (r0, r1) in enumerate(_pool_bins(h, k)):
                for bj, (c0, c1) in enumerate(_pool_bins(w, k)):
                    cells = [xs[ch][i][j] for i in range(r0, r1) for j in range(c0, c1)]
                    pooled[ch][bi][bj] = sum(cells) / len(cells)
        hidden = [[[_sigmoid(b1[q] + sum(w1[q][ch] * pooled[ch][i][j] for ch in range(c)))
                    for j in range(k)] for i in range(k)] for q in range(r * r)]
        # filters[j][oc][ch][di][dj], from group j's r hidden channels
        filters = [[[[[b2[(j * o + oc) * c + ch]
                       + sum(w2[(j * o + oc) * c + ch][t] * hidden[j * r + t][di][dj] for t in range(r))
                       for dj in range(k)] for di in range(k)] for ch in range(c)] for oc in range(o)]
                   for j in range(r)]
        for oi in range(out_h):
            for oj in range(out_w):
                ci, cj = oi * s, oj * s
                logits = [gb[q] + sum(gw[q][ch][di][dj] * pixel(ch, ci + di - pad, cj + dj - pad)
                                      for ch in range(c) for di in range(k) for dj in range(k))
                          for q in range(r)]
                region = max(range(r), key=lambda q, logits=logits: (logits[q], -q))  # first max
                regions[b, oi, oj] = region
                f = filters[region]
                for oc in range(o):
                    out[b, oc, oi, oj] = sum(f[oc][ch][di][dj] * pixel(ch, ci + di - pad, cj + dj - pad)
                                             for ch in range(c) for di in range(k) for dj in range(k))
    return out, regions


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b).abs().max() / b.abs().max()).item()


# B, C, O, H, W, k, r, s: borders on every side, stride 2 with odd sizes, maps smaller
# than the pooled k x k, one region, more regions than pixels of some maps
CASES = [
    (2, 3, 4, 7, 6, 3, 3, 1),
    (2, 3, 4, 7, 6, 3, 3, 2),
    (1, 4, 2, 5, 8, 5, 4, 2),
    (2, 2, 3, 2, 3, 3, 2, 1),
    (1, 3, 3, 6, 6, 1, 1, 1),
    (1, 2, 2, 3, 3, 1, 8, 1),
]


@pytest.mark.parametrize("cls", [DRConv2d, NaiveDRConv2d], ids=["region", "naive"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}C{}O{}_{}x{}_k{}r{}s{}".format(*c))
def test_matches_the_loop_reference(cls, case):
    b, c, o, h, w, k, r, s = case
    gen = torch.Generator().manual_seed(zlib.crc32(repr(case).encode()))
    torch.manual_seed(gen.initial_seed())
    layer = cls(c, o, k, r, s).eval()
    with torch.no_grad():  # a non-trivial generator output, so regions get different filters
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    x = torch.randn(b, c, h, w, generator=gen)
    expected, regions = reference(layer, x)
    with torch.no_grad():
        got32 = layer(x)
        got64 = layer.double()(x.double())
    assert got64.shape == expected.shape
    assert rel_err(got64, expected) < TOL64
    assert rel_err(got32, expected) < TOL32
    if r > 1 and h * w >= 9:  # the routing matters: several regions are in use
        assert regions.unique().numel() > 1


def test_each_pixel_uses_only_its_own_regions_filters():
    """Changing one region's filters changes only that region's pixels."""
    torch.manual_seed(3)
    layer = DRConv2d(3, 4, 3, regions=3).double().eval()
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    region = layer.guide(x).argmax(dim=1)[0]
    filters = layer.region_filters(x).detach()
    logits = layer.guide(x).flatten(2).detach()
    cols = F.unfold(x, 3, padding=1)
    base = RouteByRegion.apply(cols, filters, logits)[0]
    changed = filters.clone()
    changed[0, 1] += 1.0
    moved = RouteByRegion.apply(cols, changed, logits)[0]
    differs = (moved - base).abs().amax(dim=0) > 0
    assert torch.equal(differs, region.flatten() == 1)
    assert differs.any()


def test_backward_straight_through_matches_the_definition():
    """Gradients of both implementations against one written from the definition: the
    filters' and input's gradients through the selected region only; the guide logits'
    gradient is softmax's Jacobian applied to <grad_out, what each region's filters give>."""
    torch.manual_seed(1)
    b, c, o, h, w, k, r = 2, 3, 4, 6, 5, 3, 3
    region_layer = DRConv2d(c, o, k, r).double()
    naive_layer = NaiveDRConv2d(c, o, k, r).double()
    naive_layer.load_state_dict(region_layer.state_dict())
    x = torch.randn(b, c, h, w, dtype=torch.float64)
    grad_out = torch.randn(b, o, h, w, dtype=torch.float64)

    # the definition, with per-sample, per-region convolutions
    x_def = x.clone().requires_grad_(True)
    logits = region_layer.guide(x_def)
    filters = region_layer.region_filters(x_def).view(b, r, o, c, k, k)
    every = torch.stack([torch.stack([F.conv2d(x_def[i:i + 1], filters[i, j], padding=k // 2)[0]
                                      for j in range(r)]) for i in range(b)])  # (B, r, O, H, W)
    hard = F.one_hot(logits.argmax(dim=1), r).permute(0, 3, 1, 2).to(x.dtype)
    score = (every * grad_out.unsqueeze(1)).sum(dim=2).detach()  # dL/d mask
    prob = torch.softmax(logits, dim=1)
    surrogate = (every * hard.unsqueeze(2)).sum(dim=1)
    expected_logit_grad = (prob * (score - (prob * score).sum(dim=1, keepdim=True))).detach()
    params = dict(region_layer.named_parameters())
    guide_names = ["guide.weight", "guide.bias"]
    # gradients of everything but the guide through the hard selection
    other = [n for n in params if n not in guide_names]
    *expected, expected_x = torch.autograd.grad(surrogate, [*(params[n] for n in other), x_def], grad_out,
                                                retain_graph=True)
    *expected_guide, guide_x = torch.autograd.grad(logits, [*(params[n] for n in guide_names), x_def],
                                                   expected_logit_grad)
    expected_x = expected_x + guide_x

    for layer in (region_layer, naive_layer):
        xg = x.clone().requires_grad_(True)
        names = [n for n, _ in layer.named_parameters()]
        got = torch.autograd.grad(layer(xg), [xg, *layer.parameters()], grad_out)
        by_name = dict(zip(names, got[1:], strict=True))
        for name, want in zip(other, expected, strict=True):
            assert rel_err(by_name[name], want) < 1e-10, (type(layer).__name__, name)
        for name, want in zip(guide_names, expected_guide, strict=True):
            assert rel_err(by_name[name], want) < 1e-10, (type(layer).__name__, name)
        assert rel_err(got[0], expected_x) < 1e-10, type(layer).__name__
    assert expected_logit_grad.abs().max() > 0


@pytest.mark.parametrize("k,s", [(3, 1), (3, 2), (1, 1)])
def test_route_by_region_gradcheck(k, s):
    """The custom backward's filter and input gradients against finite differences (the
    logits' gradient is a straight-through estimate: it has no finite-difference truth)."""
    torch.manual_seed(2)
    x = torch.randn(2, 1, 5, 4, dtype=torch.float64, requires_grad=True)
    out_pixels = ((5 - 1) // s + 1) * ((4 - 1) // s + 1)
    filters = torch.randn(2, 3, 2, k * k, dtype=torch.float64, requires_grad=True)
    logits = torch.randn(2, 3, out_pixels, dtype=torch.float64)
    def route(a: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        return RouteByRegion.apply(F.unfold(a, k, padding=k // 2, stride=s), f, logits)

    assert torch.autograd.gradcheck(route, (x, filters))
