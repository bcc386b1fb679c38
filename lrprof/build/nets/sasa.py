"""SASA-ResNet-26/38/50 (Ramachandran et al. 2019): ResNet bottlenecks with every spatial
3x3 conv replaced by a k x k multi-head self-attention layer (k = 7, 8 heads), a 2x2
average pool with stride 2 after the layer where the conv had stride 2, and the paper's
block counts [1,2,4,1], [2,3,5,2], [3,4,6,3] (not LR-Net's ResNet-26 [2,2,2,2]); with
their conv baselines of the same block counts.

Stems: `conv` is ResNet's 7x7 conv, stride 2, and 3x3 max pool; `attention` (the "-full"
nets) is the paper's attention stem: self-attention inside each 4x4 block with spatially
aware values (lrprof.build.ops.sasa_stem), batch norm, and a 4x4 max pool with stride 4.

SASA prints FLOPs at 2 per multiply-add: its 4.5 GFLOPs are 2.25 G MACs. The paper's FLOPs
are reproduced when q.r is counted at every window position (C*k^2 per pixel) and the stem's
values per mixture; lrprof computes the same outputs with less (C*k; one mixed matrix per
pixel), so its default count is lower: `choices` counts each option against the table.
"""

from __future__ import annotations

from torch import nn

from lrprof.build.nets import NetDef, PaperFigures, register_net
from lrprof.build.nets.resnet import RESNET_WIDTHS, StagedNet, bottleneck_net, conv3x3, conv_stem
from lrprof.build.ops.sasa import METHODS, REL_LOGITS, SelfAttention2d, heads_problem
from lrprof.build.ops.sasa_stem import VALUES, AttentionStem2d
from lrprof.spec.errors import SpecError

SASA_DEPTHS = {26: (1, 2, 4, 1), 38: (2, 3, 5, 2), 50: (3, 4, 6, 3)}
STEM_CHANNELS, STEM_BLOCK, STEM_HEADS, STEM_MIXTURES = 64, 4, 8, 4
MAX_K = 31  # a sanity bound: the paper sweeps 3..11


def attention_stem(rel_logits: str = "factored", values: str = "mixed") -> nn.Sequential:
    """Self-attention in 4x4 blocks (3 -> 64 channels), batch norm, 4x4 max pool stride 4:
    224 -> 56, where the conv stem's 7x7/2 conv and 3x3/2 max pool also arrive."""
    return nn.Sequential(
        AttentionStem2d(3, STEM_CHANNELS, STEM_BLOCK, STEM_HEADS, STEM_MIXTURES, rel_logits, values),
        nn.BatchNorm2d(STEM_CHANNELS),
        nn.MaxPool2d(STEM_BLOCK, stride=STEM_BLOCK),
    )


def sasa_resnet(depth: int, k: int = 7, heads: int = 8, stem: str = "conv",
                rel_logits: str = "factored", stem_values: str = "mixed", impl: str = "shift",
                num_classes: int = 1000) -> StagedNet:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K or k % 2 == 0:
        raise SpecError("k", f"must be an odd integer in 1..{MAX_K}", k)
    problem = heads_problem(heads, min(RESNET_WIDTHS), "the narrowest width")
    if problem:  # the widths are multiples of the narrowest: one check covers them all
        raise SpecError("heads", problem, heads)
    if stem not in ("conv", "attention"):
        raise SpecError("stem", "conv or attention", stem)
    if rel_logits not in REL_LOGITS:
        raise SpecError("rel_logits", f"one of {', '.join(REL_LOGITS)}", rel_logits)
    if stem_values not in VALUES:
        raise SpecError("stem_values", f"one of {', '.join(VALUES)}", stem_values)
    if impl not in METHODS:
        raise SpecError("impl", f"one of {', '.join(METHODS)}", impl)

    def spatial(width: int, stride: int) -> SelfAttention2d:
        return SelfAttention2d(width, k, heads, stride, rel_logits, impl)

    stem_module = conv_stem() if stem == "conv" else attention_stem(rel_logits, stem_values)
    return bottleneck_net(stem_module, 64, SASA_DEPTHS[depth], RESNET_WIDTHS, spatial, num_classes)


def conv_resnet(depth: int, num_classes: int = 1000) -> StagedNet:
    return bottleneck_net(conv_stem(), 64, SASA_DEPTHS[depth], RESNET_WIDTHS, conv3x3, num_classes)


def _options(stem: str) -> dict:
    return {"k": 7, "heads": 8, "stem": stem, "rel_logits": "factored", "stem_values": "mixed",
            "impl": "shift", "num_classes": 1000}


def _table(what: str, gflops: float, params_m: float, expected: str = "") -> PaperFigures:
    """A row of SASA's Table 1, FLOPs converted: 2 FLOPs per multiply-add."""
    return PaperFigures(f"SASA Table 1, {what}: {gflops} GFLOPs = {gflops / 2:g} G MACs, {params_m} M params",
                        params_m * 1e6, gflops / 2 * 1e9, expected)


FULL_EXPECTED = ("our q.r is factored (C*k per pixel) and the stem mixes its value matrices once; "
                 "counting q.r per window position and the stem's values per mixture reproduces the "
                 "table (see the choices)")


# The open choices, each counted against the table (the first is lrprof's).
CHOICES = (
    ("lrprof: q.r factored by row and column (C*k per pixel)", {}),
    ("q.r at every window position (C*k^2 per pixel), as a direct implementation",
     {"rel_logits": "per-position"}),
)
FULL_CHOICES = (
    ("lrprof: q.r factored (C*k), stem values from one mixed matrix per pixel", {}),
    ("q.r at every window position (C*k^2)", {"rel_logits": "per-position"}),
    ("stem values per mixture (M 1x1s per pixel, then mixed)", {"stem_values": "per-mixture"}),
    ("both: q.r per position and stem values per mixture",
     {"rel_logits": "per-position", "stem_values": "per-mixture"}),
)
NOTES = (
    "SASA: ResNet v1.5 bottlenecks, every spatial 3x3 replaced by 7x7 self-attention, 8 heads; a "
    "2x2/2 average pool after it where the conv had stride 2; relative row/column embeddings "
    "(d/2 each) shared by the heads; logits not scaled; the attention layers run lrprof's shift "
    "implementation (impl=unfold: the same MACs, k^2 buffers).",
    "SASA prints FLOPs (2 per MAC); its table converts to MACs here.",
)
FULL_NOTES = NOTES + (
    "Attention stem (a reconstruction; the paper gives no sizes): 4x4 blocks, 3 -> 64 channels, "
    "8 heads, relative embeddings inside the block, values v = (sum_m p(a,c,m) W_V[m]) x with "
    "M = 4 value matrices and p = softmax_m((row_emb[a] + col_emb[c]) . nu[m]) over the pixel's "
    "position (a, c) in its block, embeddings 64 wide; then batch norm and a 4x4/4 max pool (no "
    "ReLU: the paper names none).",
)
CONV_NOTES = ("Conv baseline of SASA's block counts: ResNet v1.5 bottlenecks, 7x7 conv stem and max "
              "pool.", "SASA prints FLOPs (2 per MAC); its table converts to MACs here.")

for _depth, _conv_stem, _full, _base in ((26, (4.5, 10.3), (4.7, 10.3), (4.7, 13.7)),
                                         (38, (5.7, 14.1), None, (6.5, 19.6)),
                                         (50, (7.0, 18.0), (7.2, 18.0), None)):
    register_net(NetDef(
        f"sasa{_depth}",
        f"SASA-ResNet-{_depth}: {list(SASA_DEPTHS[_depth])} bottlenecks, 7x7 self-attention "
        "(8 heads), conv stem",
        lambda _d=_depth, **o: sasa_resnet(_d, **o), _options("conv"),
        paper=(_table("conv-stem + attention", *_conv_stem),), choices=CHOICES, notes=NOTES,
    ))
    if _full is not None:
        register_net(NetDef(
            f"sasa{_depth}-full",
            f"SASA-ResNet-{_depth}, full attention: {list(SASA_DEPTHS[_depth])} bottlenecks, 7x7 "
            "self-attention, attention stem",
            lambda _d=_depth, **o: sasa_resnet(_d, **o), _options("attention"),
            paper=(_table("full attention", *_full, FULL_EXPECTED),), choices=FULL_CHOICES,
            notes=FULL_NOTES,
        ))
    if _base is not None:  # ResNet-50's baseline is the existing resnet50
        register_net(NetDef(
            f"resnet{_depth}-sasa",
            f"ResNet-{_depth} baseline of SASA's block counts {list(SASA_DEPTHS[_depth])}",
            lambda num_classes, _d=_depth: conv_resnet(_d, num_classes), {"num_classes": 1000},
            paper=(_table("ResNet baseline", *_base),), notes=CONV_NOTES,
        ))
