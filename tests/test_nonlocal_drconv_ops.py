"""Operators nonlocal and drconv: counted MACs equal the exact models on a grid of shapes with no
uncounted op, parameters equal the models, the published models and their bands, the naive
DRConv's work ratio, and bad input through the CLI."""

from __future__ import annotations

import itertools

import pytest
import torch

from lrprof.build.ops import get_op, resolve_spec
from lrprof.build.ops.drconv import cost_of as drconv_cost
from lrprof.build.ops.nonlocal_block import PAIRWISE
from lrprof.build.ops.nonlocal_block import cost_of as nonlocal_cost
from lrprof.cli import main
from lrprof.measure.counting import count
from lrprof.measure.timing import TimingOptions
from lrprof.profile.layer import baseline_spec, profile_layers
from lrprof.spec.layer import LayerSpec
from lrprof.spec.options import MeasureOptions


def _built(spec: LayerSpec):
    spec = resolve_spec(spec)
    op = get_op(spec.op)
    torch.manual_seed(0)
    module = op.impl(spec.impl).build(spec).eval()
    x = torch.randn(spec.batch, spec.channels, spec.height, spec.width)
    return spec, op.cost(spec), module, x


NONLOCAL_SHAPES = [(1, 8, 6, 6, None), (2, 5, 7, 9, None), (1, 16, 14, 14, 4), (1, 3, 2, 3, None)]


@pytest.mark.parametrize("shape", NONLOCAL_SHAPES, ids=lambda s: "B{}C{}_{}x{}_ci{}".format(*s))
@pytest.mark.parametrize("subsample", [False, True])
@pytest.mark.parametrize("pairwise", PAIRWISE)
def test_nonlocal_counted_equals_exact(pairwise, subsample, shape):
    b, c, h, w, inner = shape
    spec, model, module, x = _built(LayerSpec(op="nonlocal", channels=c, height=h, width=w, batch=b,
                                              device="cpu", pairwise=pairwise, subsample=subsample,
                                              inner_channels=inner))
    counted = count(module, x, backward=True)
    assert counted.uncounted == {} and counted.opaque == ()
    assert counted.macs == model.macs
    assert counted.softmax_exps == model.softmax_exps
    assert counted.bwd_macs > counted.macs  # the backward is counted too, none of it dropped
    assert sum(p.numel() for p in module.parameters()) == model.params


def test_nonlocal_terms_by_hand():
    """C=64, 28x28, C'=32, subsampled (N'=196), batch 1: each term from the formulas."""
    n, nk, c, ci = 784, 196, 64, 32
    emb = nonlocal_cost(c, 28, 28, "embedded_gaussian", True)
    assert emb.macs == 4 * c * ci * n + 2 * n * nk * ci == emb.paper_macs  # the formula is exact here
    assert emb.softmax_exps == n * nk
    dot = nonlocal_cost(c, 28, 28, "dot_product", True)
    assert dot.macs == emb.macs + n * ci and dot.softmax_exps == 0
    cat = nonlocal_cost(c, 28, 28, "concatenation", True)
    assert cat.macs == 4 * c * ci * n + (n + nk) * ci + n * nk * ci + n * ci
    gauss = nonlocal_cost(c, 28, 28, "gaussian", True)
    assert gauss.macs == 2 * c * ci * n + n * nk * c + n * nk * ci
    assert gauss.params == (c * ci + ci) + ci * c + 2 * c
    assert emb.params == 3 * (c * ci + ci) + ci * c + 2 * c
    assert cat.params == emb.params + 2 * ci


@pytest.mark.parametrize("pairwise", PAIRWISE)
@pytest.mark.parametrize("size,subsample", [(14, False), (28, True), (56, True), (56, False)])
def test_nonlocal_counted_over_published_lies_in_its_band(pairwise, size, subsample):
    model = nonlocal_cost(64, size, size, pairwise, subsample)
    low, high = model.paper_band
    assert low <= model.macs / model.paper_macs <= high


def test_nonlocal_quadratic_term_grows_with_the_map():
    """Doubling H and W multiplies the 1x1 terms by 4 and the pairwise terms by 16."""
    small, large = nonlocal_cost(64, 28, 28), nonlocal_cost(64, 56, 56)
    assert large.term("W_z 1x1").macs == 4 * small.term("W_z 1x1").macs
    assert large.term("aggregation").macs == 16 * small.term("aggregation").macs


DRCONV_GRID = list(itertools.product((1, 2, 5, 8), (1, 3), (1, 2)))


@pytest.mark.parametrize("r,k,s", DRCONV_GRID, ids=[f"r{r}k{k}s{s}" for r, k, s in DRCONV_GRID])
def test_drconv_counted_equals_exact_and_main_term_does_not_grow_with_r(r, k, s):
    b, c, o, h, w = 2, 6, 5, 9, 7
    spec, model, module, x = _built(LayerSpec(op="drconv", channels=c, height=h, width=w, batch=b,
                                              device="cpu", regions=r, k=k, stride=s, out_channels=o))
    counted = count(module, x, backward=(k == 3))
    assert counted.uncounted == {} and counted.opaque == ()
    assert counted.macs == model.macs and counted.softmax_exps == 0
    assert sum(p.numel() for p in module.parameters()) == model.params
    # the routed products are the main term, whatever r: one per pixel and output channel
    out_hw = ((h - 1) // s + 1) * ((w - 1) // s + 1)
    main = b * o * c * k * k * out_hw
    assert counted.family_macs()["matrix product"] == main == model.term("main (own region's filters)").macs


def test_drconv_main_term_is_the_same_for_every_r():
    mains = set()
    for r in (1, 2, 4, 8, 16):
        _, _, module, x = _built(LayerSpec(op="drconv", channels=8, height=12, width=12, device="cpu",
                                           regions=r))
        mains.add(count(module, x).family_macs()["matrix product"])
    assert mains == {8 * 8 * 9 * 144}


@pytest.mark.parametrize("r", [1, 4, 8])
def test_naive_drconv_does_r_times_the_main_term(r):
    """Every region's filters at every pixel: r x main in the grouped conv, plus the mask's
    multiply (r*O per pixel) and a softmax for the straight-through trick."""
    b, c, o, h, w = 2, 6, 5, 9, 7
    spec, model, module, x = _built(LayerSpec(op="drconv", impl="naive", channels=c, height=h, width=w,
                                              batch=b, device="cpu", regions=r, out_channels=o))
    counted = count(module, x)
    assert counted.uncounted == {} and counted.opaque == ()
    main = model.term("main (own region's filters)").macs
    generator = model.macs - main - model.term("guide conv").macs
    assert counted.macs == r * main + model.term("guide conv").macs + generator + b * r * o * h * w
    assert counted.softmax_exps == b * r * h * w
    assert sum(p.numel() for p in module.parameters()) == model.params


def test_drconv_terms_by_hand():
    c, o, r, k, hw = 64, 64, 8, 3, 56 * 56
    model = drconv_cost(c, 56, 56, k, r)
    assert model.term("main (own region's filters)").macs == o * c * k * k * hw == model.paper_macs
    assert model.term("guide conv").macs == r * c * k * k * hw
    assert model.term("generator 1x1 C->r^2").macs == c * r * r * k * k
    assert model.term("generator grouped 1x1 r^2->r*C*O").macs == r * r * c * o * k * k
    # the generator does not depend on the map, the rest scales with it
    other = drconv_cost(c, 28, 28, k, r)
    grouped = "generator grouped 1x1 r^2->r*C*O"
    assert other.term(grouped).macs == model.term(grouped).macs
    assert other.term("guide conv").macs * 4 == model.term("guide conv").macs
    assert model.params == (r * c * k * k + r) + (c * r * r + r * r) + (r * r * c * o + r * c * o)
    low, high = model.paper_band
    assert low <= model.macs / model.paper_macs <= high  # 1.146 at the layer's default shape


def test_profile_shows_the_naive_work_ratio_and_both_pass_the_output_check():
    timing = TimingOptions(min_runs=2, min_time_s=0.01, warmup=1, warmup_s=0)
    options = MeasureOptions(timing=timing, stock_counters=False, baseline=False, memory_runs=1)
    specs = [LayerSpec(op="drconv", impl=impl, channels=16, height=16, width=16, regions=4, device="cpu")
             for impl in ("region", "naive")]
    region, naive = profile_layers(specs, options)
    assert region.error is None and naive.error is None
    assert region.checks["verdict"] == "ok" and region.checks["work_ratio"] == 1
    assert naive.checks["output_ok"] and not naive.checks["failed"]
    assert 3.0 < naive.checks["work_ratio"] < 4.0
    assert "does" in naive.checks["verdict"]


def test_nonlocal_profile_row_and_its_stride_1_baseline():
    timing = TimingOptions(min_runs=2, min_time_s=0.01, warmup=1, warmup_s=0)
    options = MeasureOptions(timing=timing, stock_counters=False, memory_runs=1)
    spec = LayerSpec(op="nonlocal", channels=8, height=8, width=8, subsample=True, device="cpu")
    records = profile_layers([spec], options)
    row = records[0]
    assert row.error is None and row.checks["verdict"] == "ok", row.checks
    assert "subsample=True" in row.name
    base = baseline_spec(resolve_spec(spec))
    assert base.param("stride") == 1 and base.param("k") == 3


def _usage_error(capsys, args: list[str], param: str, allowed: str) -> None:
    rc = main(["layer", "--no-stock", "--device", "cpu", *args])
    captured = capsys.readouterr()
    assert rc == 2
    assert "Traceback" not in captured.out + captured.err
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert param in lines[0] and allowed in lines[0], lines[0]


@pytest.mark.parametrize("args,param,allowed", [
    (["--op", "nonlocal", "--pairwise", "cosine"], "--pairwise",
     "gaussian, embedded_gaussian, dot_product, concatenation"),
    (["--op", "nonlocal", "--subsample", "--size", "1"], "--subsample", ">= 2"),
    (["--op", "nonlocal", "--inner-channels", "0"], "--inner-channels", ">= 1"),
    (["--op", "nonlocal", "--k", "3"], "--k", "not a parameter of op nonlocal"),
    (["--op", "drconv", "--regions", "0"], "--regions", ">= 1"),
    (["--op", "drconv", "--regions", "two"], "--regions", "integer"),
    (["--op", "drconv", "--k", "4"], "--k", "odd"),
    (["--op", "drconv", "--pairwise", "dot_product"], "--pairwise", "not a parameter of op drconv"),
    (["--op", "drconv", "--impl", "fast"], "--impl", "region"),
])
def test_bad_input_is_one_line_and_exit_2(args, param, allowed, capsys):
    _usage_error(capsys, args, param, allowed)


def test_ops_lists_both_operators(capsys):
    assert main(["ops"]) == 0
    out = capsys.readouterr().out
    assert "nonlocal" in out and "drconv" in out and "--regions" in out and "--pairwise" in out
