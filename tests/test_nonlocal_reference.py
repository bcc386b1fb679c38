"""NonLocal2d against an independent, naive float64 reference.

The reference is written from the definition of the non-local block (Wang et al. 2018;
/work/shared/reference/operators.md sec. 4), not from the module's forward: Python loops
over positions and channels on Python floats (IEEE float64). Only the weights and the input
come from the module. Every pairwise function, with and without the 2x2 max-pool
subsampling, on odd and even sizes (the pool floors), batch 2, random batch-norm statistics.
"""

from __future__ import annotations

import math
import zlib

import pytest
import torch

from lrprof.build.ops.nonlocal_block import PAIRWISE, NonLocal2d

TOL64 = 1e-12
TOL32 = 1e-5


def _conv1x1(w: list, b: list | None, v: list[float]) -> list[float]:
    """w (out, in), b (out) or None, v (in) -> (out)."""
    return [sum(wo[i] * v[i] for i in range(len(v))) + (b[o] if b else 0.0) for o, wo in enumerate(w)]


def _weights(conv: torch.nn.Conv2d) -> tuple[list, list | None]:
    w = conv.weight.detach().double()[:, :, 0, 0].tolist()
    b = conv.bias.detach().double().tolist() if conv.bias is not None else None
    return w, b


def _maxpool2(maps: list[list[list[float]]]) -> list[list[list[float]]]:
    """(C, H, W) nested lists -> (C, H//2, W//2): the max of each 2x2 window, odd edges dropped."""
    out = []
    for m in maps:
        h, w = len(m) // 2, len(m[0]) // 2
        out.append([[max(m[2 * i][2 * j], m[2 * i][2 * j + 1], m[2 * i + 1][2 * j], m[2 * i + 1][2 * j + 1])
                     for j in range(w)] for i in range(h)])
    return out


def _maps(vectors: list[list[float]], h: int, w: int) -> list[list[list[float]]]:
    """Per-position vectors (N, C) -> (C, H, W)."""
    c = len(vectors[0])
    return [[[vectors[i * w + j][ch] for j in range(w)] for i in range(h)] for ch in range(c)]


def _vectors(maps: list[list[list[float]]]) -> list[list[float]]:
    """(C, H, W) -> per-position vectors (N, C), row-major positions."""
    h, w = len(maps[0]), len(maps[0][0])
    return [[m[i][j] for m in maps] for i in range(h) for j in range(w)]


def reference(block: NonLocal2d, x: torch.Tensor) -> torch.Tensor:
    """z = BN(W_z y) + x, y_i = 1/C(x) sum_j f(x_i, x_j) g(x_j), each term by loops."""
    xb = x.detach().double()
    b, c, h, w = xb.shape
    gw, gb = _weights(block.g)
    zw, _ = _weights(block.w_z)
    bn = block.bn
    mean, var = bn.running_mean.double().tolist(), bn.running_var.double().tolist()
    gamma, beta = bn.weight.detach().double().tolist(), bn.bias.detach().double().tolist()
    out = torch.empty(b, c, h, w, dtype=torch.float64)
    for s in range(b):
        xs = xb[s].tolist()  # (C, H, W)
        xv = _vectors(xs)  # (N, C)
        gv = [_conv1x1(gw, gb, v) for v in xv]

        def keys_side(vectors: list[list[float]]) -> list[list[float]]:
            if not block.subsample:
                return vectors
            return _vectors(_maxpool2(_maps(vectors, h, w)))

        values = keys_side(gv)
        if block.pairwise == "gaussian":
            queries, keys = xv, keys_side(xv)
        else:
            tw, tb = _weights(block.theta)
            pw, pb = _weights(block.phi)
            queries = [_conv1x1(tw, tb, v) for v in xv]
            keys = keys_side([_conv1x1(pw, pb, v) for v in xv])
        n_keys = len(keys)
        for i, q in enumerate(queries):
            if block.pairwise in ("gaussian", "embedded_gaussian"):
                logits = [sum(a * k for a, k in zip(q, key, strict=True)) for key in keys]
                top = max(logits)
                f = [math.exp(v - top) for v in logits]
                norm = sum(f)
            elif block.pairwise == "dot_product":
                f = [sum(a * k for a, k in zip(q, key, strict=True)) for key in keys]
                norm = n_keys
            else:  # concatenation: ReLU(w_f . [theta_i, phi_j])
                wf = block.concat_weight.detach().double().tolist()
                f = [max(0.0, sum(a * wv for a, wv in zip(q + key, wf, strict=True))) for key in keys]
                norm = n_keys
            y = [sum(f[j] * values[j][ch] for j in range(n_keys)) / norm for ch in range(len(values[0]))]
            z = _conv1x1(zw, None, y)
            row, col = divmod(i, w)
            for ch in range(c):
                normed = (z[ch] - mean[ch]) / math.sqrt(var[ch] + bn.eps) * gamma[ch] + beta[ch]
                out[s, ch, row, col] = normed + xs[ch][row][col]
    return out


def _randomise_bn(block: NonLocal2d, gen: torch.Generator) -> None:
    c = block.channels
    with torch.no_grad():
        block.bn.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
        block.bn.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
        block.bn.weight.copy_(torch.randn(c, generator=gen))
        block.bn.bias.copy_(torch.randn(c, generator=gen))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b).abs().max() / b.abs().max()).item()


SHAPES = [(2, 4, 5, 6, None), (1, 6, 7, 5, 2), (2, 3, 4, 4, 4)]  # B, C, H, W, inner width


@pytest.mark.parametrize("subsample", [False, True])
@pytest.mark.parametrize("pairwise", PAIRWISE)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:4])) + f"-ci{s[4]}")
def test_matches_the_loop_reference(pairwise, subsample, shape):
    b, c, h, w, inner = shape
    gen = torch.Generator().manual_seed(zlib.crc32(repr((pairwise, subsample, shape)).encode()))
    torch.manual_seed(gen.initial_seed())
    block = NonLocal2d(c, pairwise, subsample, inner).eval()
    _randomise_bn(block, gen)
    x = torch.randn(b, c, h, w, generator=gen)
    expected = reference(block, x)
    assert expected.shape == (b, c, h, w)
    with torch.no_grad():
        got32 = block(x)
        got64 = block.double()(x.double())
    assert rel_err(got64, expected) < TOL64
    assert rel_err(got32, expected) < TOL32
    # the block must not collapse to its residual: y contributes
    assert rel_err(x, expected) > 1e-3
