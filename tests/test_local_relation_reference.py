"""LocalRelation2d against an independent, deliberately naive float64 reference.

The reference below is written from the definition of the local relation layer
(/work/shared/reference/operators.md, section 1), not from the module's forward
code: plain Python loops over (b, g or c, i, j, di, dj) on Python floats (IEEE
float64). Only the weights and the input are taken from the module.

Random cases draw a fresh seed each run; a failing case prints its seed and
configuration. To replay one, set LRPROF_REF_SEED=<seed> and rerun that case id.
"""

from __future__ import annotations

import copy
import math
import os
import random

import pytest
import torch

from lrprof.build.ops.local_relation import LocalRelation2d

PHIS = ("sqdiff", "absdiff", "mul")
TOL64 = 1e-10
TOL32 = 1e-5


# --------------------------------------------------------------------------- reference


def _phi(name: str, q: float, key: float) -> float:
    if name == "sqdiff":
        return -((q - key) ** 2)
    if name == "absdiff":
        return -abs(q - key)
    if name == "mul":
        return q * key
    raise ValueError(name)


def _default_offset(di: int, dj: int, r: int) -> tuple[float, float]:
    """Geometry input for window position (di, dj): the real offset scaled by r = k // 2."""
    if r == 0:
        return 0.0, 0.0
    return di / r, dj / r


def _mat(weight: torch.Tensor) -> list[list[float]]:
    """A 1x1 conv weight (out, in, 1, 1) as nested Python floats."""
    return weight.detach().to(torch.float64)[:, :, 0, 0].tolist()


def _vec(bias: torch.Tensor) -> list[float]:
    return bias.detach().to(torch.float64).tolist()


def params_of(layer: LocalRelation2d) -> dict:
    """The layer's weights as float64 Python lists, named as in the definition."""
    return {
        "Wk": _mat(layer.key.weight),
        "Wq": _mat(layer.query.weight),
        "W1": _mat(layer.geometry[0].weight),
        "b1": _vec(layer.geometry[0].bias),
        "W2": _mat(layer.geometry[2].weight),
        "b2": _vec(layer.geometry[2].bias),
        "Wout": _mat(layer.out.weight),
    }


def reference(
    x: torch.Tensor,
    p: dict,
    *,
    k: int,
    m: int,
    s: int,
    phi: str,
    group_of=None,
    offset_of=None,
    zero_pad: bool = False,
) -> torch.Tensor:
    """Naive local relation layer. Options build deliberately wrong variants:
    `group_of(c)` another channel grouping, `offset_of(di, dj, r)` another geometry
    input, `zero_pad` treats outside pixels as real zero pixels (key 0, value 0)."""
    xs = x.detach().to(torch.float64).tolist()
    bsz, chans, height, width = x.shape
    groups = -(-chans // m)
    assert len(p["Wk"]) == groups
    if group_of is None:
        group_of = lambda c: c // m  # noqa: E731
    if offset_of is None:
        offset_of = _default_offset
    r = k // 2
    out_h = (height - 1) // s + 1
    out_w = (width - 1) // s + 1
    window = [(di, dj) for di in range(-r, r + 1) for dj in range(-r, r + 1)]

    # key map at every input pixel, query map at output positions
    key = [
        [
            [
                [sum(p["Wk"][g][c] * xs[b][c][yy][xx] for c in range(chans)) for xx in range(width)]
                for yy in range(height)
            ]
            for g in range(groups)
        ]
        for b in range(bsz)
    ]
    query = [
        [
            [
                [
                    sum(p["Wq"][g][c] * xs[b][c][i * s][j * s] for c in range(chans))
                    for j in range(out_w)
                ]
                for i in range(out_h)
            ]
            for g in range(groups)
        ]
        for b in range(bsz)
    ]

    # geometry prior per group and window position
    hidden = len(p["b1"])
    prior = [dict() for _ in range(groups)]
    for di, dj in window:
        o_row, o_col = offset_of(di, dj, r)
        act = [
            max(0.0, p["W1"][h][0] * o_row + p["W1"][h][1] * o_col + p["b1"][h])
            for h in range(hidden)
        ]
        for g in range(groups):
            prior[g][di, dj] = sum(p["W2"][g][h] * act[h] for h in range(hidden)) + p["b2"][g]

    # softmax over the valid window positions -> list of (row, col, weight)
    weights = {}
    for b in range(bsz):
        for g in range(groups):
            for i in range(out_h):
                for j in range(out_w):
                    q = query[b][g][i][j]
                    entries = []
                    for di, dj in window:
                        yy, xx = i * s + di, j * s + dj
                        inside = 0 <= yy < height and 0 <= xx < width
                        if inside:
                            kv = key[b][g][yy][xx]
                        elif zero_pad:
                            kv = 0.0
                        else:
                            continue
                        entries.append((yy, xx, _phi(phi, q, kv) + prior[g][di, dj]))
                    top = max(e[2] for e in entries)
                    exps = [math.exp(e[2] - top) for e in entries]
                    total = sum(exps)
                    weights[b, g, i, j] = [
                        (yy, xx, w / total) for (yy, xx, _), w in zip(entries, exps, strict=True)
                    ]

    # aggregation (identity value path), outside pixels contribute 0
    agg = [[[[0.0] * out_w for _ in range(out_h)] for _ in range(chans)] for _ in range(bsz)]
    for b in range(bsz):
        for c in range(chans):
            g = group_of(c)
            for i in range(out_h):
                for j in range(out_w):
                    total = 0.0
                    for yy, xx, w in weights[b, g, i, j]:
                        if 0 <= yy < height and 0 <= xx < width:
                            total += w * xs[b][c][yy][xx]
                    agg[b][c][i][j] = total

    # final 1x1 conv C -> C
    out = [
        [
            [
                [sum(p["Wout"][o][c] * agg[b][c][i][j] for c in range(chans)) for j in range(out_w)]
                for i in range(out_h)
            ]
            for o in range(chans)
        ]
        for b in range(bsz)
    ]
    return torch.tensor(out, dtype=torch.float64).reshape(bsz, chans, out_h, out_w)


# --------------------------------------------------------------------------- helpers


def make_layer(
    chans: int,
    k: int,
    m: int,
    s: int,
    phi: str,
    *,
    seed: int,
    hidden: int | None = None,
    scale: float = 0.5,
) -> LocalRelation2d:
    """A float64 layer whose parameters are all drawn from N(0, scale^2) with `seed`."""
    layer = LocalRelation2d(chans, kernel_size=k, m=m, stride=s, phi=phi, geometry_hidden=hidden)
    layer = layer.double()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in layer.parameters():
            param.copy_(torch.randn(param.shape, generator=gen, dtype=torch.float64) * scale)
    return layer


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    ref_norm = torch.linalg.vector_norm(b.to(torch.float64)).item()
    assert ref_norm > 0.0, "reference output is all zeros: the comparison would be vacuous"
    diff = torch.linalg.vector_norm(a.to(torch.float64) - b.to(torch.float64)).item()
    return diff / ref_norm


def run_layer(layer: LocalRelation2d, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return layer(x)


def ref_of(layer: LocalRelation2d, x: torch.Tensor, **variant) -> torch.Tensor:
    return reference(
        x,
        params_of(layer),
        k=layer.kernel_size,
        m=layer.m,
        s=layer.stride,
        phi=layer.phi,
        **variant,
    )


def _float32_offset(di: int, dj: int, r: int) -> tuple[float, float]:
    """The real offsets rounded to float32 (used only to diagnose a mismatch)."""
    return tuple(float(torch.tensor(v, dtype=torch.float32)) for v in _default_offset(di, dj, r))


def check64(out: torch.Tensor, layer: LocalRelation2d, x: torch.Tensor, where: str = "") -> None:
    """Assert the float64 layer output equals the reference to TOL64. On failure the
    message also says how close the layer is to a reference whose geometry offsets
    were rounded to float32, which separates that precision loss from a logic error."""
    ref = ref_of(layer, x)
    assert out.shape == ref.shape, f"shape {tuple(out.shape)} != {tuple(ref.shape)}; {where}"
    err = rel_err(out, ref)
    if err >= TOL64:
        err32 = rel_err(out, ref_of(layer, x, offset_of=_float32_offset))
        pytest.fail(
            f"relative error {err:.3e} >= {TOL64:g}; {where}; against a reference with "
            f"float32-rounded geometry offsets (di/r, dj/r) it is {err32:.3e}"
        )


# --------------------------------------------------------------------------- 1. random


def draw_case(seed: int) -> dict:
    rng = random.Random(seed)
    k = rng.choice((1, 3, 5, 7))
    chans = rng.randint(1, 12)
    return {
        "k": k,
        "s": rng.randint(1, min(k, 3)),
        "C": chans,
        "m": rng.randint(1, chans),
        "H": rng.randint(1, 9),
        "W": rng.randint(1, 9),
        "B": rng.randint(1, 2),
        "hidden": rng.choice((None, 1, 2, 4)),
    }


@pytest.mark.parametrize("case", range(24))
def test_random_configurations_match_reference(case: int) -> None:
    """Fresh random k, s, C, m (often not dividing C), H, W (often smaller than the
    window), B and each phi: the float64 layer equals the naive reference to 1e-10."""
    env = os.environ.get("LRPROF_REF_SEED")
    seed = int(env) if env else random.SystemRandom().randrange(2**31)
    phi = PHIS[case % len(PHIS)]
    cfg = draw_case(seed)
    layer = make_layer(cfg["C"], cfg["k"], cfg["m"], cfg["s"], phi, seed=seed, hidden=cfg["hidden"])
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(cfg["B"], cfg["C"], cfg["H"], cfg["W"], generator=gen, dtype=torch.float64)
    out = run_layer(layer, x)
    check64(out, layer, x, f"LRPROF_REF_SEED={seed} case={case} phi={phi} cfg={cfg}")


# --------------------------------------------------------------------------- 2. targeted


@pytest.mark.parametrize("phi", PHIS)
def test_stride1_keeps_same_size(phi: str) -> None:
    """Stride 1 keeps H x W ('same' padding; unfold ports with padding 0 shrink it),
    here with k = 7 wider than H = 5."""
    layer = make_layer(6, 7, 2, 1, phi, seed=11)
    x = torch.randn(2, 6, 5, 7, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    out = run_layer(layer, x)
    assert out.shape == (2, 6, 5, 7)
    check64(out, layer, x, f"phi={phi}")


def test_uneven_groups_share_weights_of_last_group() -> None:
    """C = 10, m = 4: G = 3 and channels 8, 9 form group 2. The layer matches the
    reference, not other plausible groupings, and perturbing one group's key row
    moves exactly the channels of that group (with Wout = I the output is the
    aggregation itself)."""
    chans, m = 10, 4
    layer = make_layer(chans, 3, m, 1, "sqdiff", seed=21, scale=1.0)
    assert layer.groups == 3
    with torch.no_grad():
        layer.out.weight.copy_(torch.eye(chans, dtype=torch.float64)[:, :, None, None])
    x = torch.randn(
        1, chans, 6, 6, generator=torch.Generator().manual_seed(22), dtype=torch.float64
    )
    base = run_layer(layer, x)
    check64(base, layer, x)

    # the test can tell groupings apart: other assignments give other outputs
    for wrong in (lambda c: c % 3, lambda c: c * 3 // chans):
        assert rel_err(ref_of(layer, x, group_of=wrong), ref_of(layer, x)) > 1e-3

    members = {0: range(0, 4), 1: range(4, 8), 2: range(8, 10)}
    for g, chans_g in members.items():
        moved = copy.deepcopy(layer)
        with torch.no_grad():
            moved.key.weight[g] += torch.randn(
                chans, 1, 1, generator=torch.Generator().manual_seed(23 + g), dtype=torch.float64
            )
        out = run_layer(moved, x)
        check64(out, moved, x, f"key row {g} perturbed")
        for c in range(chans):
            change = rel_err(out[:, c], base[:, c])
            if c in chans_g:
                assert change > 1e-3, f"group {g}: channel {c} did not move"
            else:
                assert change < 1e-12, f"group {g}: channel {c} moved ({change:.3e})"


@pytest.mark.parametrize("phi", PHIS)
def test_outside_pixels_are_excluded_not_zero_padded(phi: str) -> None:
    """Constant input: with outside positions excluded every aggregation is exactly
    the constant, so y = Wout @ 1 * const everywhere. Zero padding treated as real
    pixels (computed here as a variant) dilutes the borders; the layer must not."""
    chans, const = 5, 2.0
    layer = make_layer(chans, 5, 2, 1, phi, seed=31)
    x = torch.full((1, chans, 4, 6), const, dtype=torch.float64)
    out = run_layer(layer, x)
    check64(out, layer, x, f"phi={phi}")
    ref = ref_of(layer, x)
    expected = (layer.out.weight[:, :, 0, 0].sum(dim=1) * const)[None, :, None, None]
    assert rel_err(out, expected.expand_as(out)) < TOL64
    padded = ref_of(layer, x, zero_pad=True)
    assert rel_err(padded, ref) > 1e-3, "variant should differ: the test must discriminate"


@pytest.mark.parametrize("shift", (-1e4, 1e4))
def test_outside_weight_is_exactly_zero_under_large_logits(shift: float) -> None:
    """Outside positions get weight exactly 0, not a finite logit such as -100:
    shifting every prior by a huge constant leaves the softmax over the valid
    positions unchanged, while a finite mask would hand the weight to the outside."""
    layer = make_layer(4, 7, 2, 1, "absdiff", seed=41)
    x = torch.randn(1, 4, 3, 5, generator=torch.Generator().manual_seed(42), dtype=torch.float64)
    before = run_layer(layer, x)
    with torch.no_grad():
        layer.geometry[2].bias += shift
    out = run_layer(layer, x)
    assert torch.isfinite(out).all()
    check64(out, layer, x, f"shift={shift}")
    assert rel_err(out, before) < TOL64


@pytest.mark.parametrize("k", (3, 5, 7))
def test_geometry_prior_uses_real_offsets(k: int) -> None:
    """With Wk = Wq = 0 the weights come only from the geometry prior. Transposed,
    flipped or unscaled offsets change the reference; the layer matches the real
    (row / r, col / r) offsets (unfold ports scramble or randomise them)."""
    chans = 3
    layer = make_layer(chans, k, 1, 1, "sqdiff", seed=50 + k, hidden=4, scale=1.0)
    with torch.no_grad():
        layer.key.weight.zero_()
        layer.query.weight.zero_()
    x = torch.randn(
        2, chans, 9, 9, generator=torch.Generator().manual_seed(59), dtype=torch.float64
    )
    out = run_layer(layer, x)
    check64(out, layer, x, f"k={k}")
    ref = ref_of(layer, x)
    variants = {
        "transposed": lambda di, dj, r: (dj / r, di / r),
        "row flipped": lambda di, dj, r: (-di / r, dj / r),
    }
    if k > 3:  # for k = 3, r = 1 and unscaled offsets are the scaled ones
        variants["unscaled"] = lambda di, dj, r: (float(di), float(dj))
    for name, offset_of in variants.items():
        other = ref_of(layer, x, offset_of=offset_of)
        assert rel_err(other, ref) > 1e-3, f"{name} offsets should change the result"


@pytest.mark.parametrize("phi", PHIS)
@pytest.mark.parametrize("k", (3, 5))
def test_stride2_odd_size(k: int, phi: str) -> None:
    """Stride 2 on 7 x 5: output 4 x 3, centred on input pixels (2i, 2j)."""
    layer = make_layer(6, k, 4, 2, phi, seed=61 + k)
    x = torch.randn(2, 6, 7, 5, generator=torch.Generator().manual_seed(62), dtype=torch.float64)
    out = run_layer(layer, x)
    assert out.shape == (2, 6, 4, 3)
    check64(out, layer, x, f"k={k} phi={phi}")


def test_reuse_across_sizes_and_dtypes() -> None:
    """One layer instance used on several input sizes and in both dtypes in turn
    (anything cached per size must not leak into the next call)."""
    layer = make_layer(5, 5, 2, 2, "mul", seed=71)
    gen = torch.Generator().manual_seed(72)
    shapes = ((1, 5, 6, 4), (2, 5, 3, 7), (1, 5, 6, 4))
    inputs = [torch.randn(*shape, generator=gen, dtype=torch.float64) for shape in shapes]
    for dtype in (torch.float32, torch.float64, torch.float32):
        layer = layer.to(dtype)
        for x in inputs:
            x = x.to(dtype)
            out = run_layer(layer, x)
            assert out.dtype == dtype
            if dtype == torch.float64:
                check64(out, layer, x, f"shape {tuple(x.shape)}")
            else:
                assert rel_err(out, ref_of(layer, x)) < TOL32, f"float32 {tuple(x.shape)}"


# --------------------------------------------------------------------------- 3. float32


@pytest.mark.parametrize("phi", PHIS)
def test_float32_layer_close_to_float64_reference(phi: str) -> None:
    """The float32 layer on a moderately sized case stays within 1e-5 (relative) of
    the float64 reference computed from the same float32 weights and input."""
    layer = make_layer(16, 7, 4, 1, phi, seed=81, scale=0.3).float()
    x = torch.randn(2, 16, 10, 10, generator=torch.Generator().manual_seed(82))
    out = run_layer(layer, x)
    assert out.dtype == torch.float32
    ref = ref_of(layer, x)
    assert rel_err(out, ref) < TOL32
