"""Each counting convention reproduces the expected counts its peer asserts in its own tests.

Sources (numbers and formulas restated from the peers' test files, not their code):
- FV = facebookresearch/fvcore tests/test_flop_count.py at commit 017141c42f50a0328182c1fd42b1de80c3a58efe
  (fvcore's "flop" is one multiply-accumulate, so its numbers are MACs);
- PT = pytorch/pytorch test/test_flop_counter.py at commit 067f1d9d1fec00506e2b6f2bcdb95005e8cbd2ba
  (FlopCounterMode counts 2 FLOPs per MAC: its numbers are FLOPs, MACs x 2).
lrprof's own convention gives the same MACs wherever it counts the same ops (products).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lrprof.measure import counting


class Fn(nn.Module):
    """A function as a module; `consts` are tensors it closes over (no gradient)."""

    def __init__(self, fn: Callable, *params: torch.Tensor) -> None:
        super().__init__()
        self.fn = fn
        self.weights = nn.ParameterList([nn.Parameter(p) for p in params])

    def forward(self, *xs):
        return self.fn(*xs, *self.weights)


def macs(model: nn.Module, *inputs, convention: str, **kw) -> int:
    return counting.count(model, *inputs, convention=convention, **kw).macs


def flops(model: nn.Module, *inputs, **kw) -> int:
    """FlopCounterMode's number: forward (+ backward) MACs x 2 under its convention."""
    result = counting.count(model, *inputs, convention="flopcounter", **kw)
    return 2 * (result.macs + (result.bwd_macs or 0))


T = torch.randn


# ---- fvcore's test_flop_count.py -----------------------------------------------------------

# FV TestFlopCountAnalysis.test_conv, its nine cases:
# (dim, B, Cin, Cout, spatial, k, pad, stride, groups, transposed, output_padding)
CONV_CASES = [
    (2, 5, 10, 3, 15, 3, 1, 1, 1, False, 0),
    (2, 2, 10, 6, 20, 3, 1, 2, 1, False, 0),
    (2, 5, 16, 8, 15, 5, 2, 1, 4, False, 0),
    (2, 5, 16, 8, 15, 3, 1, 1, 8, False, 0),
    (1, 5, 10, 3, 15, 3, 1, 1, 1, False, 0),
    (3, 5, 10, 3, 15, 3, 1, 1, 1, False, 0),
    (2, 5, 10, 3, 15, 3, 1, 1, 1, True, 0),
    (2, 5, 10, 3, 15, 3, 1, 2, 1, True, 0),
    (2, 5, 10, 3, 15, 3, 1, 3, 1, True, 2),
]


@pytest.mark.parametrize("convention", ["fvcore", "lrprof", "flopcounter"])
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_as_fvcore_expects(case, convention):
    # FV test_conv: gt = B * Cin * Cout * k^dim * spatial_size^dim / groups, spatial_size the
    # output's for a convolution and the input's for a transposed one.
    dim, b, cin, cout, n, k, pad, stride, groups, transposed, out_pad = case
    layers = [nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d] if transposed \
        else [nn.Conv1d, nn.Conv2d, nn.Conv3d]
    extra = {"output_padding": out_pad} if transposed else {}
    conv = layers[dim - 1](cin, cout, k, stride, pad, groups=groups, **extra)
    x = T(b, cin, *([n] * dim))
    size = n if transposed else (n + 2 * pad - k) // stride + 1
    expected = b * cin * cout * k ** dim * size ** dim // groups
    assert macs(conv, x, convention=convention) == expected


@pytest.mark.parametrize("convention", ["fvcore", "lrprof", "flopcounter"])
def test_linear_as_fvcore_expects(convention):
    # FV test_linear and test_nn: batch * input_dim * output_dim, and with a middle dim
    linear = nn.Linear(10, 20)
    assert macs(linear, T(5, 10), convention=convention) == 5 * 10 * 20
    assert macs(linear, T(5, 5, 10), convention=convention) == 5 * 10 * 5 * 20
    assert macs(nn.Linear(8, 4), T(5, 8), convention=convention) == 5 * 8 * 4  # FV test_nn


@pytest.mark.parametrize("convention", ["fvcore", "lrprof", "flopcounter"])
def test_matmul_bmm_and_broadcasting_as_fvcore_expects(convention):
    m, n, p = 20, 10, 100
    mm = Fn(torch.matmul)
    assert macs(mm, T(m, n), T(n, p), convention=convention) == m * n * p  # FV test_matmul
    # FV test_matmul_broadcast
    assert macs(mm, T(1, m, n), T(1, n, p), convention=convention) == m * n * p
    assert macs(mm, T(2, 2, m, n), T(2, 2, n, p), convention=convention) == 4 * m * n * p
    assert macs(mm, T(1, m, n), T(n, p), convention=convention) == m * n * p
    assert macs(mm, T(2, m, n), T(n, p), convention=convention) == 2 * m * n * p
    # FV test_bmm: n * t * p * c
    assert macs(Fn(torch.bmm), T(2, 5, 2), T(2, 2, 12), convention=convention) == 2 * 2 * 12 * 5
    # FV TestFlopCountHandles.test_torch_mm: 60 for mm and matmul
    assert macs(Fn(torch.mm), T(3, 4), T(4, 5), convention=convention) == 60
    assert macs(mm, T(3, 4), T(4, 5), convention=convention) == 60


@pytest.mark.parametrize("convention", ["fvcore", "lrprof", "flopcounter"])
def test_einsum_as_fvcore_expects(convention):
    # FV test_einsum: nct,ncp->ntp gives n*t*p*c, ntg,ncg->nct gives n*t*g*c
    n, c, t, p, g = 1, 5, 2, 12, 6
    assert macs(Fn(lambda x, y: torch.einsum("nct,ncp->ntp", x, y)), T(n, c, t), T(n, c, p),
                convention=convention) == n * t * p * c
    assert macs(Fn(lambda x, y: torch.einsum("ntg,ncg->nct", x, y)), T(n, t, g), T(n, c, g),
                convention=convention) == n * t * g * c
    # FV TestFlopCountHandles.test_complicated_einsum: 72
    assert macs(Fn(lambda x, y: torch.einsum("nc,nchw->hw", x, y)), torch.rand(3, 4), torch.rand(3, 4, 2, 3),
                convention=convention) == 72


def test_batch_norm_as_fvcore_expects():
    # FV test_batchnorm: BatchNorm1d(affine=False) in eval: N; BatchNorm2d/3d(affine=False) in
    # training: 4 * N
    bn1 = nn.BatchNorm1d(10, affine=False).eval()
    assert macs(bn1, T(10, 10), convention="fvcore") == 10 * 10
    bn2 = nn.BatchNorm2d(10, affine=False).train()
    assert macs(bn2, T(10, 10, 5, 5), convention="fvcore") == 4 * 10 * 10 * 5 * 5
    bn3 = nn.BatchNorm3d(10, affine=False).train()
    assert macs(bn3, T(10, 10, 5, 5, 5), convention="fvcore") == 4 * 10 * 10 * 5 * 5 * 5
    # FV TestFlopCountHandles.test_batch_norm: 32 (eval, affine), 16 (eval, no affine), 80 (training)
    vec = torch.rand(2)
    x = torch.rand(2, 2, 2, 2)
    assert macs(Fn(lambda x: F.batch_norm(x, vec, vec, vec, vec)), x, convention="fvcore") == 32
    assert macs(Fn(lambda x: F.batch_norm(x, vec, vec, None, None)), x, convention="fvcore") == 16
    assert macs(Fn(lambda x: F.batch_norm(x, vec, vec, vec, vec, True)), x, convention="fvcore") == 80
    for convention in ("lrprof", "flopcounter"):  # both leave normalisation out
        assert macs(bn2, T(10, 10, 5, 5), convention=convention) == 0


def test_group_norm_as_fvcore_expects():
    # FV TestFlopCountHandles.test_group_norm: 80 with affine, 64 without
    vec = torch.rand(2)
    x = torch.rand(2, 2, 2, 2)
    assert macs(Fn(lambda x: F.group_norm(x, 2, vec, vec)), x, convention="fvcore") == 80
    assert macs(Fn(lambda x: F.group_norm(x, 2, None, None)), x, convention="fvcore") == 64
    assert macs(Fn(lambda x: F.group_norm(x, 2, vec, vec)), x, convention="lrprof") == 0


def test_upsample_bilinear_as_fvcore_expects():
    # FV TestFlopCountHandles.test_upsample: 2**4 * 4 * 4 (4 per output element)
    up = Fn(lambda x: F.interpolate(x, None, 2, "bilinear", False))
    x = torch.rand(2, 2, 2, 2)
    assert macs(up, x, convention="fvcore") == 2 ** 4 * 4 * 4
    assert macs(up, x, convention="lrprof") == 2 ** 4 * 4 * 4  # 4 taps per output element too
    assert macs(up, x, convention="flopcounter") == 0  # not in FlopCounterMode's registry


class ThreeNet(nn.Module):
    """FV's ThreeNet: a 1x1 conv, adaptive average pooling to 1x1, two linear layers."""

    def __init__(self, input_dim: int, conv_dim: int, linear_dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(input_dim, conv_dim, 1, 1)
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.linear1 = nn.Linear(conv_dim, linear_dim)
        self.linear2 = nn.Linear(linear_dim, 1)

    def forward(self, x):
        return self.linear2(self.linear1(torch.flatten(self.pool(self.conv(x)), 1)))


def test_adaptive_pooling_as_fvcore_expects():
    # FV test_threeNet / test_flop_counter_class: conv B*conv_dim*input_dim*H*W, linears
    # B*conv_dim*linear_dim + B*linear_dim, adaptive_avg_pool2d 2e-6 GFLOP (= 2000: the
    # pool's input elements, "flop1 // input_dim" per module)
    b, cin, conv_dim, n, lin = 4, 2, 5, 10, 3
    net = ThreeNet(cin, conv_dim, lin)
    result = counting.count(net, T(b, cin, n, n), convention="fvcore", per_module=True)
    conv = b * conv_dim * cin * n * n
    assert result.module_macs["pool"] == 2000 == conv // cin
    assert result.module_macs["conv"] == conv
    assert result.module_macs["linear1"] + result.module_macs["linear2"] == b * conv_dim * lin + b * lin
    assert result.macs == conv + 2000 + b * conv_dim * lin + b * lin
    # an adaptive pool to a larger grid runs as _adaptive_avg_pool2d: still its input elements
    assert macs(nn.AdaptiveAvgPool2d(2), T(1, 3, 8, 8), convention="fvcore") == 3 * 64
    assert macs(net, T(b, cin, n, n), convention="lrprof") == conv + b * conv_dim * lin + b * lin


# ---- torch's test_flop_counter.py ----------------------------------------------------------

def test_op_variety_as_flopcounter_expects():
    # PT test_op: mm 240, bmm 720, three addmm 720, baddbmm 720, conv2d 28800, conv1d 1440
    assert flops(Fn(torch.mm), T(4, 5), T(5, 6)) == 240
    assert flops(Fn(torch.bmm), T(3, 4, 5), T(3, 5, 6)) == 720
    three = Fn(lambda a, b: [torch.addmm(bias, a, b) for bias in (T(4, 6), T(4, 1), T(6))])
    assert flops(three, T(4, 5), T(5, 6)) == 720
    assert flops(Fn(lambda a, b: torch.baddbmm(T(3, 4, 6), a, b)), T(3, 4, 5), T(3, 5, 6)) == 720
    assert flops(Fn(lambda x, w: torch.conv2d(x, w, padding=1)), T(2, 3, 6, 6), T(6, 3, 4, 4)) == 28800
    assert flops(Fn(lambda x, w: torch.conv1d(x, w, padding=1)), T(2, 3, 6), T(6, 3, 4)) == 1440
    # lrprof counts the same products, in MACs
    assert macs(Fn(torch.bmm), T(3, 4, 5), T(3, 5, 6), convention="lrprof") == 360
    assert macs(Fn(lambda a, b: torch.baddbmm(T(3, 4, 6), a, b)), T(3, 4, 5), T(3, 5, 6),
                convention="lrprof") == 360
    # fvcore has no handle for baddbmm
    assert macs(Fn(lambda a, b: torch.baddbmm(T(3, 4, 6), a, b)), T(3, 4, 5), T(3, 5, 6),
                convention="fvcore") == 0


def test_variety_and_out_as_flopcounter_expects():
    # PT test_flop_counter_variety: 3012; test_addmm_out: 2000
    lin = nn.Linear(9, 10)

    def variety(x):
        torch.mm(T(4, 5), T(5, 6))
        torch.addmm(T(4, 6), T(4, 5), T(5, 6), beta=0.5, alpha=0.5)
        torch.matmul(T(5, 6), T(6, 7))
        torch.einsum("ab,bc->ac", T(6, 7), T(7, 8))
        return lin(x)

    assert flops(Fn(variety), T(8, 9)) == 3012
    assert flops(Fn(lambda x: torch.mm(x, x, out=torch.zeros(10, 10))), T(10, 10)) == 2000


def test_backward_with_input_grad_as_flopcounter_expects():
    # PT test_backward: mm then a broadcast bmm, the input needing a gradient: 5184 (fwd+bwd)
    b5, b7 = T(5, 6), T(7, 6, 7)

    def chain(a):
        return torch.bmm(torch.mm(a, b5).unsqueeze(0).expand(7, 4, 6), b7)

    assert flops(Fn(chain), T(4, 5), backward=True, input_grad=True) == 5184
    # PT test_backward_reset: a.mm(a.t()) forward and backward: 960 for two rounds
    assert flops(Fn(lambda a: a.mm(a.t())), T(4, 5), backward=True) == 960 // 2
    # PT test_pytrees (Mod2): mm(x, x) with x needing a gradient: 6000
    assert flops(Fn(lambda x: (torch.mm(x, x),)), T(10, 10), backward=True) == 6000


def test_backward_without_input_grad_of_matmul():
    # Derived from PT test_backward's formula (no peer test asserts this case): without the
    # input's gradient only the weight's product runs in backward, one forward's worth.
    lin = nn.Linear(9, 10)
    fwd = 2 * 8 * 9 * 10
    assert flops(lin, T(8, 9), backward=True, input_grad=False) == fwd + fwd
    assert flops(lin, T(8, 9), backward=True, input_grad=True) == fwd + 2 * fwd
    r = counting.count(lin, T(8, 9), backward=True, input_grad=False, convention="lrprof")
    assert (r.macs, r.bwd_macs) == (720, 720)


def test_conv_backward_with_input_grad_as_flopcounter_expects():
    # PT test_convs: forward 32 (conv_transpose2d 1x1x2x2 by 1x1x2x2), 8 (1x1 conv); the
    # backward with both gradients twice the forward, for every channel combination listed
    def both(fn, x, w):
        result = counting.count(Fn(fn, w), x, backward=True, input_grad=True, convention="flopcounter")
        return 2 * result.macs, 2 * result.bwd_macs

    assert both(F.conv_transpose2d, torch.rand(1, 1, 2, 2), T(1, 1, 2, 2)) == (32, 64)
    assert both(F.conv2d, torch.rand(1, 1, 2, 2), T(1, 1, 1, 1)) == (8, 16)
    for cin, cout in [(1, 1), (1, 3), (3, 1), (3, 7), (2, 4), (4, 2)]:
        fwd, bwd = both(F.conv2d, torch.rand(1, cin, 4, 4), T(cout, cin, 2, 2))
        assert bwd == 2 * fwd
        fwd, bwd = both(F.conv_transpose2d, torch.rand(1, cin, 4, 4), T(cin, cout, 2, 2))
        assert bwd == 2 * fwd
        lr = counting.count(Fn(F.conv2d, T(cout, cin, 2, 2)), torch.rand(1, cin, 4, 4), backward=True)
        assert lr.bwd_macs == 2 * lr.macs  # lrprof: one forward per gradient


def test_conv_backward_without_input_grad_as_flopcounter_expects():
    # PT test_conv_transpose_loop: ConvTranspose2d(4, 8, 2, stride=2) on a 1x4x30x2 input that
    # needs no gradient, 50 forward+backward rounds: 1536000
    model = nn.ConvTranspose2d(4, 8, (2, 2), stride=2)
    x = torch.rand(1, 4, 30, 2)
    assert 50 * flops(model, x, backward=True, input_grad=False) == 1536000
    lr = counting.count(model, x, backward=True, input_grad=False)
    assert lr.bwd_macs == lr.macs  # the weight's gradient only
    assert counting.count(model, x, backward=True).bwd_macs == 2 * lr.macs


def test_autograd_function_as_flopcounter_expects():
    # PT test_autograd_op: a Function whose forward is one mm and backward two: 750
    class Custom(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return torch.mm(x, x)

        @staticmethod
        def backward(ctx, g):
            return torch.mm(g, g) + torch.mm(g, g)

    assert flops(Fn(Custom.apply), T(5, 5), backward=True) == 750


def sdpa_case(b: int, h: int, lq: int, lk: int, e: int, ev: int):
    q, k, v = T(b, h, lq, e), T(b, h, lk, e), T(b, h, lk, ev)
    return Fn(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, dropout_p=0, is_causal=True)), (q, k, v)


def test_sdpa_as_flopcounter_expects_on_the_cpu():
    # PT test_sdpa (a CUDA test there): B 4, 8 heads, 128 queries, head dim 64: forward
    # 134217728; flash backward makes forward+backward 7/2 of the forward. 256 keys: forward
    # 268435456, forward+backward 939524096 (flash/efficient) and 805306368 (math).
    # On the CPU F.scaled_dot_product_attention runs _scaled_dot_product_flash_attention_for_cpu,
    # which FlopCounterMode misses; the flopcounter convention counts it as its CUDA twin.
    model, qkv = sdpa_case(4, 8, 128, 128, 64, 64)
    result = counting.count(model, *qkv, convention="flopcounter")
    assert 2 * result.macs == 134217728
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in result.missed_by_flopcounter
    assert flops(model, *qkv, backward=True) == 134217728 * 7 // 2
    model, qkv = sdpa_case(4, 8, 128, 256, 64, 64)
    assert flops(model, *qkv) == 268435456
    assert flops(model, *qkv, backward=True) == 939524096
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        assert flops(model, *qkv, backward=True) == 805306368
    lr = counting.count(model, *qkv)  # lrprof: the same products in MACs, exps of QK^T
    assert (lr.macs, lr.softmax_exps) == (268435456 // 2, 4 * 8 * 128 * 256)
    assert macs(model, *qkv, convention="fvcore") == 0  # fvcore has no attention handle


def test_flopcounter_convention_equals_flopcounter_mode():
    """Where FlopCounterMode runs (no CPU attention kernel), the convention equals it op for op."""
    from torch.utils.flop_counter import FlopCounterMode

    net = nn.Sequential(nn.Conv2d(3, 8, 3, groups=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, groups=2, stride=2), nn.ConvTranspose2d(8, 4, 2, stride=2),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
    x = T(2, 3, 16, 16)
    with FlopCounterMode(display=False) as mode:
        net(x.clone().requires_grad_()).sum().backward()
    assert flops(net, x, backward=True) == mode.get_total_flops()


def test_fvcore_convention_equals_fvcore():
    from fvcore.nn import FlopCountAnalysis

    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.GroupNorm(2, 8),
                        nn.Upsample(scale_factor=2, mode="bilinear"), nn.Conv2d(8, 4, 3, stride=2),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)).eval()
    x = T(2, 3, 16, 16)
    analysis = FlopCountAnalysis(net, (x,))
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    assert macs(net, x, convention="fvcore") == analysis.total()
