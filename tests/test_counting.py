"""Counted MACs must equal the exact term-by-term model: the same number, on a grid."""

import itertools

import pytest
import torch

from lrprof.build.ops.local_relation import LocalRelation2d, cost_of, num_groups
from lrprof.measure import counting, stock

GRID = [
    # (k, m, C, H, W, s, B)
    *[(k, m, 16, 9, 9, s, 1) for k, m, s in itertools.product((1, 3, 5, 7), (1, 4, 8), (1, 2))
      if s <= k],
    (7, 8, 100, 14, 14, 1, 1),  # LR-Net-50 width: m does not divide C
    (7, 8, 100, 14, 14, 2, 2),
    (5, 3, 10, 7, 11, 2, 3),  # odd sizes, stride 2, unequal groups
    (3, 1, 3, 5, 5, 3, 1),  # stride == k
    (9, 16, 32, 6, 6, 1, 1),  # window larger than the image
    (7, 64, 64, 8, 8, 1, 1),  # m == C: one group
]


@pytest.mark.parametrize("k,m,c,h,w,s,b", GRID)
@pytest.mark.parametrize("phi", ["sqdiff", "absdiff", "mul"])
def test_counted_equals_exact(k, m, c, h, w, s, b, phi):
    layer = LocalRelation2d(c, k, m, s, phi=phi).eval()
    x = torch.randn(b, c, h, w)
    counted = counting.count(layer, x)
    model = cost_of(c, h, w, k, m, s, b)
    assert counted.uncounted == {}
    assert counted.macs == model.macs
    assert counted.softmax_exps == model.softmax_exps


def test_every_op_meets_a_rule():
    """Removing one rule must surface that op as uncounted, not drop it silently."""
    layer = LocalRelation2d(16, 3, 4).eval()
    x = torch.randn(1, 16, 6, 6)
    saved = counting.RULES.pop("aten::pow")
    try:
        counted = counting.count(layer, x)
    finally:
        counting.RULES["aten::pow"] = saved
    assert counted.uncounted == {"aten::pow": 1}
    assert not counted.complete


def test_stock_counters_see_only_the_convolutions():
    """The reference's figure: stock counters report 16.06 M of 27.12 M for the default layer."""
    layer = LocalRelation2d(64, 7, 8).eval()
    x = torch.randn(1, 64, 56, 56)
    found = stock.stock_counts(layer, x)
    model = cost_of(64, 56, 56, 7, 8)
    convs = sum(model.term(t).macs for t in ("key 1x1", "query 1x1", "final 1x1", "geometry prior"))
    assert found.fvcore_macs == convs == 16_060_240
    assert found.flopcounter_flops == 2 * convs
    assert "aten::im2col" in found.fvcore_skipped
    assert model.macs == 27_124_048


def test_per_module_macs_are_inclusive():
    net = torch.nn.Sequential(LocalRelation2d(8, 3, 4), LocalRelation2d(8, 3, 2)).eval()
    x = torch.randn(1, 8, 5, 5)
    counted = counting.count(net, x, per_module=True)
    assert counted.module_macs["0"] == cost_of(8, 5, 5, 3, 4).macs
    assert counted.module_macs["1"] == cost_of(8, 5, 5, 3, 2).macs
    assert counted.module_macs[""] == counted.macs == counted.module_macs["0"] + counted.module_macs["1"]


def test_groups_round_up():
    assert num_groups(100, 8) == 13
    assert num_groups(64, 8) == 8
    assert num_groups(7, 7) == 1
