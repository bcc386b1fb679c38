"""lrprof's rule table covers every op the peers count (a rule, or a stated zero with its
reason), pooling and normalisation count under one rule forward and backward, and each
convention is a table of its own."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lrprof.measure import conventions, counting, flex, rules
from lrprof.measure.rules_flopcounter import FLOPCOUNTER
from lrprof.measure.rules_fvcore import FVCORE


def test_every_op_fvcore_handles_has_a_rule():
    from fvcore.nn.flop_count import _DEFAULT_SUPPORTED_OPS

    missing = [name for name in _DEFAULT_SUPPORTED_OPS if name not in rules.RULES]
    assert not missing
    for name in _DEFAULT_SUPPORTED_OPS:
        assert rules.RULES[name].why  # a count, or a zero that says why


def test_every_op_torchs_flop_registry_counts_has_a_rule():
    from torch.utils.flop_counter import flop_registry

    missing = []
    for op in flop_registry:
        if isinstance(op, torch._ops.HigherOrderOperator):
            if flex.rule(op.name(), conventions.LRPROF, lambda fn: 0) is None:
                missing.append(op.name())
        elif rules.op_name(op) not in rules.RULES:
            missing.append(rules.op_name(op))
    assert not missing


def test_peer_tables_price_only_ops_lrprof_knows():
    assert set(FVCORE) <= set(rules.RULES)
    assert set(FLOPCOUNTER) <= set(rules.RULES)
    assert conventions.table("fvcore") is FVCORE and conventions.table("flopcounter") is FLOPCOUNTER


def test_every_attention_op_has_a_rule():
    names = {n.split(".")[0] for n in torch._C._dispatch_get_all_op_names()
             if n.startswith("aten::") and ("scaled_dot_product" in n or "attention" in n)}
    assert len(names) > 15
    assert sorted(n for n in names if n not in rules.RULES) == []


def test_fast_path_attention_modules_are_counted():
    """nn.MultiheadAttention and nn.TransformerEncoderLayer take fused fast paths in eval
    without autograd; their rules count the same products as the slow path's ops."""
    mha = nn.MultiheadAttention(16, 2, batch_first=True).eval()
    x = torch.randn(2, 5, 16)
    fast = counting.count(Fn(lambda x: mha(x, x, x, need_weights=False)[0]), x)
    slow = counting.count(Fn(lambda x: mha(x, x, x, need_weights=True)[0]), x)
    assert fast.complete and slow.complete, (fast.uncounted, slow.uncounted)
    products = 4 * 2 * 5 * 16 * 16 + 2 * 2 * 5 * 5 * 16
    assert fast.macs == products
    assert slow.macs >= products  # plus the scaling multiply of q
    layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True).eval()
    result = counting.count(layer, x)
    assert result.complete, result.uncounted
    assert result.macs == products + 2 * 2 * 5 * 16 * 32


class Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *xs):
        return self.fn(*xs)


@pytest.mark.parametrize("layer", [nn.AvgPool2d(2), nn.AdaptiveAvgPool2d(1), nn.AdaptiveAvgPool2d(2),
                                   nn.MaxPool2d(2), nn.BatchNorm2d(3), nn.GroupNorm(1, 3), nn.LayerNorm(8)])
def test_pooling_and_normalisation_count_the_same_forward_and_backward(layer):
    """One rule each: 0 forward and 0 backward (the division that spreads a mean's gradient
    is part of the pool, not elementwise work)."""
    x = torch.randn(2, 3, 8, 8)
    result = counting.count(layer, x, backward=True)
    assert result.complete, result.uncounted
    assert (result.macs, result.bwd_macs) == (0, 0)


def test_interpolation_and_grid_sampling_backward():
    x = torch.randn(1, 2, 4, 4)

    class Up(nn.Module):
        def forward(self, x):
            return F.interpolate(x, scale_factor=2, mode="bilinear") + F.interpolate(x, scale_factor=2,
                                                                                      mode="bicubic")

    result = counting.count(Up(), x, backward=True)
    assert result.complete, result.uncounted
    assert result.macs == result.bwd_macs == (4 + 16) * 2 * 8 * 8
