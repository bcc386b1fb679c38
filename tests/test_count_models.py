"""Whole models counted by `lrprof count`'s API: ResNet-50 and ViT-B/16 within 1% of their
published MACs (4.1 G: He et al. 2016 / the reference's standard count 4.089 G; 17.6 G:
Dosovitskiy et al. 2021, table 6, "GFLOPs" that are MACs), the meta device giving the same
count as real tensors, resampling and flex_attention covered."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from lrprof.measure import counting
from lrprof.profile.count import count, count_instance
from lrprof.spec.options import MeasureOptions

HERE = Path(__file__).parent
MODELS = str(HERE / "count_models.py")


def test_resnet50_counts_its_published_macs():
    profile = count(net="resnet50", options=MeasureOptions(meta=True))
    macs = profile.record.counted["fwd_MACs"]
    assert abs(macs - 4.1e9) / 4.1e9 < 0.01
    assert macs == 4_089_184_256  # convs + fc, as the reference's term-by-term count
    assert profile.record.counted["params"] == 25_557_032
    assert profile.record.checks["verdict"] == "ok"


def test_vit_b16_counts_its_published_macs():
    profile = count(MODELS + ":ViT", input="1x3x224x224", options=MeasureOptions(meta=True, depth=1))
    macs = profile.record.counted["fwd_MACs"]
    assert abs(macs - 17.6e9) / 17.6e9 < 0.01, macs
    assert profile.record.counted["params"] == 86_567_656
    blocks = next(p for p in profile.parts if p.config["part"] == "blocks")
    assert blocks.derived["input_shape"] == "1x197x768" == blocks.derived["output_shape"]
    assert profile.record.checks["verdict"] == "ok"


def test_meta_counts_what_real_tensors_count():
    """On meta tensors the counter calls the CPU's fused attention kernel (its meta form), so
    the count equals the real one under every convention."""
    from count_models import ViT

    small = dict(image_size=32, dim=64, depth=2, heads=4, mlp=128, classes=10)
    real = count_instance(ViT(**small).eval(), (torch.randn(2, 3, 32, 32),))
    with torch.device("meta"):
        model = ViT(**small).eval()
    meta = count_instance(model, (torch.empty(2, 3, 32, 32, device="meta"),), MeasureOptions(meta=True))
    for name in ("lrprof", "flopcounter", "fvcore"):
        assert meta.record.derived[f"{name}_fwd_MACs"] == real.record.derived[f"{name}_fwd_MACs"]


def test_meta_refuses_an_op_that_needs_values():
    with pytest.raises(counting.NeedsValues, match="_local_scalar_dense"):
        count(MODELS + ":Routed", input="1x4x8x8", options=MeasureOptions(meta=True))
    assert count(MODELS + ":Routed", input="1x4x8x8").record.counted["fwd_MACs"] > 0


def test_meta_refuses_drconvs_routing():
    with pytest.raises(counting.NeedsValues, match="drconv|needs real tensor values|cannot run on meta"):
        count(op="drconv", channels="16", size="8", options=MeasureOptions(meta=True))


def test_resampling_is_counted():
    from count_models import Resampler

    x = torch.randn(1, 2, 4, 4)
    result = counting.count(Resampler(), x)
    assert result.complete, result.uncounted
    ops = result.op_macs()
    assert ops["aten::upsample_bilinear2d"] == 4 * 2 * 8 * 8
    assert ops["aten::upsample_bicubic2d"] == 16 * 2 * 8 * 8
    assert ops["aten::grid_sampler_2d"] == 4 * 2 * 4 * 4
    back = counting.count(Resampler(), x, backward=True)
    assert back.complete, back.uncounted


def test_flex_attention_with_a_sliding_window_is_counted_completely():
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    b, h, length, e, window = 1, 2, 512, 16, 32
    mask = create_block_mask(lambda b, h, q, kv: (q - kv).abs() <= window, b, h, length, length, device="cpu")

    class Flex(nn.Module):
        def forward(self, q, k, v):
            return flex_attention(q, k, v, score_mod=lambda s, b, h, q, kv: s * 0.5, block_mask=mask)

    q = torch.randn(b, h, length, e)
    result = counting.count(Flex(), q, q, q)
    assert result.complete, result.uncounted
    blocks = int(mask.kv_num_blocks.sum() + mask.full_kv_num_blocks.sum())
    partial = int(mask.kv_num_blocks.sum())
    scores = blocks * 128 * 128
    # QK^T and AV per computed score, the score_mod's multiply per score, the mask_mod's abs
    # per score of a partial block (its subtraction and comparison count 0)
    assert result.macs == scores * (e + e) + scores + partial * 128 * 128
    assert result.softmax_exps == scores
    assert scores < b * h * length * length  # the mask's blocks, not the dense square
    dense = counting.count(Flex(), q, q, q, convention="flopcounter")
    assert dense.macs == b * h * length * length * 2 * e  # FlopCounterMode's formula


@pytest.mark.slow
def test_real_tensors_give_the_published_counts_too():
    resnet = count(net="resnet50").record.counted["fwd_MACs"]
    assert resnet == 4_089_184_256
    vit = count(MODELS + ":ViT", input="1x3x224x224").record.counted["fwd_MACs"]
    assert abs(vit - 17.6e9) / 17.6e9 < 0.01


def test_vit_b16_at_1024_counts_on_meta_without_memory():
    """4096 patches + the class token: attention grows with the square of the tokens; on the
    meta device nothing is allocated (the CLI run of this model: see docs/count.md)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    profile = count(MODELS + ":ViT", init='{"image_size": 1024}', input="1x3x1024x1024",
                    options=MeasureOptions(meta=True, depth=0))
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    tokens, width, depth = 4097, 768, 12
    per_block = 12 * tokens * width * width + 2 * tokens * tokens * width
    patch = 4096 * width * 3 * 16 * 16
    assert profile.record.counted["fwd_MACs"] == depth * per_block + patch + width * 1000
    assert grown_kib < 200 * 1024  # its float32 weights alone would take 342 MiB
