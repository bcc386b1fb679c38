"""Counting at the dispatcher: every op a module runs is counted by a rule or listed, for
eager, compiled, autograd.Function and torch.library code, forward and backward."""

import pytest
import torch
from torch import nn

from lrprof.build.nets import create_net
from lrprof.build.ops.local_relation import LocalRelation2d, cost_of
from lrprof.measure import counting, rules


@pytest.fixture
def fresh_rules(monkeypatch):
    """Rules registered by a test disappear with it."""
    monkeypatch.setattr(rules, "RULES", dict(rules.RULES))
    monkeypatch.setattr(counting, "RULES", rules.RULES)
    return rules.RULES


# ---- code that is not plain eager ------------------------------------------------------------


def test_a_compiled_layer_is_counted_like_the_eager_one():
    """Dynamo steps aside under a dispatch mode: the compiled module's own ops are counted
    (no compilation happens while counting)."""
    layer = LocalRelation2d(16, 5, 4, stride=2).eval()
    x = torch.randn(2, 16, 9, 9)
    compiled = torch.compile(layer)
    result = counting.count(compiled, x)
    assert result.complete
    assert result.macs == cost_of(16, 9, 9, 5, 4, 2, 2).macs
    assert result.softmax_exps == cost_of(16, 9, 9, 5, 4, 2, 2).softmax_exps


@pytest.mark.slow
def test_a_compiled_layer_that_ran_compiled_is_still_counted():
    layer = LocalRelation2d(8, 3, 4).eval()
    x = torch.randn(1, 8, 6, 6)
    compiled = torch.compile(layer)
    with torch.no_grad():
        compiled(x)  # compiles
    result = counting.count(compiled, x, backward=True)
    assert result.complete and result.macs == cost_of(8, 6, 6, 3, 4).macs
    assert result.bwd_macs > 0


class Scale(torch.autograd.Function):
    """y = a * b, with a hand-written backward."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        return grad * b, grad * a


class UsesFunction(nn.Module):
    def forward(self, a, b):
        return Scale.apply(a, b)


def test_an_autograd_function_is_counted_forward_and_backward():
    a, b = torch.randn(3, 4), torch.randn(3, 4)
    result = counting.count(UsesFunction(), a, b, backward=True)
    assert result.complete
    assert result.macs == 12  # one multiply per element
    assert result.bwd_macs == 24  # the two multiplies of its backward


@torch.library.custom_op("lrprof_test::weighted_sum", mutates_args=())
def weighted_sum(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return (x * w).sum(dim=-1)


@weighted_sum.register_fake
def _(x, w):
    return x.new_empty(x.shape[:-1])


@torch.library.custom_op("lrprof_test::no_rule", mutates_args=())
def no_rule(x: torch.Tensor) -> torch.Tensor:
    return x.clone()


@no_rule.register_fake
def _(x):
    return torch.empty_like(x)


class CustomOps(nn.Module):
    def forward(self, x, w):
        return weighted_sum(x, w)


def test_a_custom_op_with_a_registered_rule_is_counted(fresh_rules):
    x, w = torch.randn(5, 7), torch.randn(5, 7)
    before = counting.count(CustomOps(), x, w)
    assert before.uncounted == {"lrprof_test::weighted_sum": 1}  # no rule yet: listed, not dropped
    assert not before.complete
    rules.register_rule(torch.ops.lrprof_test.weighted_sum,
                        lambda args, kwargs, out: args[0].numel(), "one multiply per element")
    after = counting.count(CustomOps(), x, w)
    assert after.complete and after.macs == 35
    (row,) = after.by_op
    assert (row.op, row.family) == ("lrprof_test::weighted_sum", rules.CUSTOM)
    assert row.rule == "one multiply per element"


def test_a_rule_is_registered_once(fresh_rules):
    rules.register_rule("lrprof_test::no_rule", lambda *a: 0, "copy")
    with pytest.raises(ValueError, match="registered already"):
        rules.register_rule(torch.ops.lrprof_test.no_rule, lambda *a: 0, "copy")
    rules.register_rule(torch.ops.lrprof_test.no_rule, lambda *a: 1, "changed", replace=True)
    assert rules.RULES["lrprof_test::no_rule"].why == "changed"


def test_a_custom_op_without_a_rule_is_uncounted():
    class M(nn.Module):
        def forward(self, x):
            return no_rule(x) * 2

    result = counting.count(M(), torch.randn(4))
    assert result.uncounted == {"lrprof_test::no_rule": 1}
    assert result.macs == 4  # the rest is still counted


def test_layer_norm_is_never_missing():
    """fvcore's trace gave 0 MACs and nothing uncounted here: an op vanished."""
    result = counting.count(nn.LayerNorm([8, 30, 30]), torch.randn(2, 8, 30, 30))
    assert result.complete
    (row,) = result.by_op
    assert row.op == "aten::native_layer_norm" and row.family == rules.NORMALISATION
    assert row.calls == 1 and row.macs == 0 and "left out" in row.rule


class WrittenOutsideTheDispatcher(torch.autograd.Function):
    """A 'kernel' the dispatcher never sees: numpy writes into a dispatched allocation."""

    @staticmethod
    def forward(ctx, x):
        out = torch.empty_like(x)
        out.numpy()[...] = 2 * x.numpy()
        return out

    @staticmethod
    def backward(ctx, grad):
        return 2 * grad


def test_an_opaque_kernel_makes_the_count_incomplete():
    class ReadsIt(nn.Module):
        def forward(self, x):
            return WrittenOutsideTheDispatcher.apply(x) + 1

    class ReturnsIt(nn.Module):
        def forward(self, x):
            return WrittenOutsideTheDispatcher.apply(x)

    x = torch.randn(3, 3)
    read = counting.count(ReadsIt(), x)
    assert not read.complete and "aten::add read memory from aten::empty_like" in read.opaque[0]
    returned = counting.count(ReturnsIt(), x)
    assert not returned.complete and "output came from aten::empty_like" in returned.opaque[0]
    assert "opaque" in counting.missing_text(returned)


def test_memory_written_by_dispatched_ops_is_not_opaque():
    class Honest(nn.Module):
        def forward(self, x):
            buffer = torch.empty(x.shape[0] * x.shape[1])
            buffer.view(x.shape).copy_(x)  # written through a view
            return buffer.view(x.shape) * 3

    result = counting.count(Honest(), torch.randn(4, 6))
    assert result.complete and result.macs == 24


# ---- backward ------------------------------------------------------------------------------------


def test_conv_backward_is_twice_the_forward():
    conv = nn.Conv2d(8, 16, 3, padding=1)
    x = torch.randn(2, 8, 10, 10)
    both = counting.count(conv, x, backward=True)
    assert both.macs == 2 * 16 * 10 * 10 * 8 * 9
    assert both.bwd_macs == 2 * both.macs  # input and weight gradients, one forward each
    weights_only = counting.count(conv, x, backward=True, input_grad=False)
    assert weights_only.bwd_macs == both.macs


def test_a_networks_backward_counts_every_op():
    """ResNet backward: each conv and the classifier twice, except the stem conv, whose
    input (the image) needs no gradient. The global average pool counts 0 forward and
    backward: the division that spreads its gradient (grad / N) is part of the pool's rule."""
    net = create_net("resnet26").eval()
    x = torch.randn(2, 3, 32, 32)  # batch 2: train-mode batch norm on res5's 1x1 maps
    result = counting.count(net, x, backward=True, input_grad=False, train_for_backward=True)
    assert result.complete, result.uncounted
    stem = 2 * 64 * 16 * 16 * 3 * 49
    assert result.bwd_macs == 2 * result.macs - stem
    assert net.training is False  # put back in eval mode


def test_local_relation_backward_has_no_uncounted_op():
    layer = LocalRelation2d(16, 5, 8, stride=2, phi="absdiff").eval()
    result = counting.count(layer, torch.randn(1, 16, 7, 7), backward=True)
    assert result.complete
    assert result.bwd_macs > result.macs > 0
    assert {r.phase for r in result.by_op} == {"fwd", "bwd"}


def test_per_module_counts_are_inclusive_and_named_by_state_dict():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Sequential(nn.ReLU(), nn.Conv2d(4, 5, 3, padding=1)))
    result = counting.count(net, torch.randn(1, 3, 6, 6), per_module=True)
    assert result.module_macs["0"] == 4 * 36 * 3
    assert result.module_macs["1.1"] == result.module_macs["1"] == 5 * 36 * 4 * 9
    assert result.module_macs[""] == result.macs == result.module_macs["0"] + result.module_macs["1"]
