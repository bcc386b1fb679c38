"""The convolution operator (the baseline every row is held against): checked against a naive
float64 loop convolution written here, counted exactly, and validated."""

import itertools

import pytest
import torch

from lrprof.build.ops import get_op, resolve_spec
from lrprof.cli import main
from lrprof.measure import counting
from lrprof.spec.layer import LayerSpec


def naive_conv(x: torch.Tensor, weight: torch.Tensor, bias, stride: int, groups: int) -> torch.Tensor:
    """'same' padding k // 2, explicit loops over outputs, window and channels of the group."""
    b, c, h, w = x.shape
    out_c, per_group, k, _ = weight.shape
    pad = k // 2
    oh, ow = (h - 1) // stride + 1, (w - 1) // stride + 1
    y = torch.zeros(b, out_c, oh, ow, dtype=torch.float64)
    out_per_group = out_c // groups
    for n, o, i, j in itertools.product(range(b), range(out_c), range(oh), range(ow)):
        g = o // out_per_group
        total = 0.0 if bias is None else float(bias[o])
        for ci, di, dj in itertools.product(range(per_group), range(k), range(k)):
            r, s = i * stride - pad + di, j * stride - pad + dj
            if 0 <= r < h and 0 <= s < w:
                total += float(x[n, g * per_group + ci, r, s]) * float(weight[o, ci, di, dj])
        y[n, o, i, j] = total
    return y


CASES = [  # channels, out_channels, k, stride, groups, bias, H, W
    (4, 4, 3, 1, 1, False, 5, 6),
    (4, 6, 5, 2, 2, True, 7, 5),   # grouped, stride 2, odd sizes, window past the borders
    (6, 6, 3, 2, 6, False, 6, 6),  # depthwise
    (3, 2, 1, 2, 1, True, 4, 4),   # 1x1 with stride (a projection shortcut)
]


@pytest.mark.parametrize("c,out,k,s,g,bias,h,w", CASES)
def test_conv_matches_a_naive_float64_convolution(c, out, k, s, g, bias, h, w):
    torch.manual_seed(c * 100 + k * 10 + s)
    spec = resolve_spec(LayerSpec(op="conv", channels=c, height=h, width=w, batch=2, dtype="float64",
                                  device="cpu", k=k, stride=s, groups=g, out_channels=out, bias=bias))
    module = get_op("conv").impl("torch").build(spec).double()
    x = torch.randn(2, c, h, w, dtype=torch.float64)
    y = module(x)
    bias_values = None if module.bias is None else module.bias.detach()
    expected = naive_conv(x, module.weight.detach(), bias_values, s, g)
    assert (y - expected).abs().max() / expected.abs().max() < 1e-12
    cost = get_op("conv").cost(spec)
    assert counting.count(module, x).macs == cost.macs
    assert cost.params == sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("args,needle", [
    (["--groups", "3"], "must divide channels (8)"),
    (["--k", "4"], "odd"),
    (["--stride", "0"], "--stride"),
    (["--out-channels", "0"], "--out-channels"),
])
def test_conv_bad_input_is_one_line_exit_2(args, needle, capsys):
    rc = main(["layer", "--op", "conv", "--channels", "8", "--size", "8", *args])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and needle in err
