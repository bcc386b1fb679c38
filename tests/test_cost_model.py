"""The cost model itself: parameters, the paper's O-model and its relation to the exact count."""

import itertools

import pytest

from lrprof.build.ops.local_relation import LocalRelation2d, cost_of


@pytest.mark.parametrize("c,k,m,hidden", [(64, 7, 8, None), (100, 7, 8, None), (10, 3, 4, 5),
                                          (64, 7, 1, None)])
def test_params_match_the_module(c, k, m, hidden):
    layer = LocalRelation2d(c, k, m, geometry_hidden=hidden)
    assert cost_of(c, 8, 8, k, m, geometry_hidden=hidden).params == sum(
        p.numel() for p in layer.parameters()
    )


def test_paper_model_value():
    # ((1+1)/8 + 1) * 64 * (64 + 49) * 56*56
    assert cost_of(64, 56, 56, 7, 8).paper_macs == pytest.approx(1.25 * 64 * 113 * 3136)


@pytest.mark.parametrize("k,m,s", list(itertools.product((3, 5, 7, 9), (1, 2, 4, 8), (1, 2))))
def test_c2_part_is_exact_and_k2_part_is_bounded(k, m, s):
    """The O-model's C^2 part equals key + query + final 1x1 exactly when m divides C and s
    divides H, W; its k^2 part bounds composability + aggregation from above."""
    c, h = 64, 16
    model = cost_of(c, h, h, k, m, s)
    hw, out = h * h, h * h // (s * s)
    c2_paper = ((1 + s * s) / m + 1) * c * c * hw / (s * s)
    c2_exact = sum(model.term(t).macs for t in ("key 1x1", "query 1x1", "final 1x1"))
    assert c2_exact == pytest.approx(c2_paper, rel=1e-12)
    k2_paper = ((1 + s * s) / m + 1) * c * k * k * hw / (s * s)
    k2_exact = model.term("composability").macs + model.term("aggregation").macs
    assert k2_exact <= k2_paper
    assert k2_exact == (c // m + c) * k * k * out
