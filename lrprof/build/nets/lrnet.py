"""LR-Net-26/50/101: ResNet bottlenecks with every spatial conv replaced by a local
relation layer (reference sec. 2).

Choices the paper leaves open, made here and reported:
- G = ceil(C/m) (LR-Net-50's width 100 with m = 8 gives 13 groups, the last of 4);
- geometry prior hidden width h = G;
- stem: 1x1 conv 3 -> 64, BN, ReLU, then a 7x7 local relation layer of 64 channels,
  stride 2, full-width key/query (m = 1), BN, ReLU, then 3x3 max pool. `--k` and `--m`
  change the bottleneck layers; the stem keeps its 7x7, m = 1 layer.
`stem="conv"` and other `widths` exist to show which choices reproduce the tables.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from lrprof.build.nets import NetDef, PaperFigures, register_net
from lrprof.build.nets.resnet import DEPTHS, StagedNet, bottleneck_net, conv1x1, conv_stem
from lrprof.build.ops.local_relation import LocalRelation2d

LR_WIDTHS = (100, 200, 400, 800)
STEM_K, STEM_M = 7, 1
MAX_K = 31  # a sanity bound: the paper stops at 9; 31 spans most of res3 at 224x224


def lr_stem(channels: int = 64, impl: str = "unfold") -> nn.Sequential:
    return nn.Sequential(
        conv1x1(3, channels),
        nn.BatchNorm2d(channels),
        nn.ReLU(inplace=True),
        LocalRelation2d(channels, STEM_K, STEM_M, stride=2, impl=impl),
        nn.BatchNorm2d(channels),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=2, padding=1),
    )


def lrnet(
    depth: int,
    k: int = 7,
    m: int = 8,
    stem: str = "lr",
    widths: Sequence[int] = LR_WIDTHS,
    num_classes: int = 1000,
    impl: str = "unfold",
) -> StagedNet:
    from lrprof.spec.errors import SpecError

    if not 1 <= k <= MAX_K or k % 2 == 0:
        raise SpecError("k", f"must be an odd integer in 1..{MAX_K}", k)
    if m < 1 or m > min(widths):
        raise SpecError("m", f"must be an integer in 1..{min(widths)} (the narrowest width)", m)
    if stem not in ("lr", "conv"):
        raise SpecError("stem", "lr or conv", stem)

    def spatial(width: int, stride: int) -> LocalRelation2d:
        return LocalRelation2d(width, k, m, stride=stride, impl=impl)

    stem_module = lr_stem(impl=impl) if stem == "lr" else conv_stem()
    return bottleneck_net(stem_module, 64, DEPTHS[depth], widths, spatial, num_classes)


# impl: the implementation of every local relation layer (how they compute, not what)
_OPTIONS = {"k": 7, "m": 8, "stem": "lr", "widths": LR_WIDTHS, "num_classes": 1000, "impl": "unfold"}
# The choices the LR-Net paper leaves open, each counted against its printed table.
CHOICES = (
    ("G = ceil(C/m), LR stem (lrprof's choice)", {}),
    ("res2 width rounded down to 96 (a multiple of m)", {"widths": (96, 200, 400, 800)}),
    ("res2 width rounded up to 104 (a multiple of m)", {"widths": (104, 200, 400, 800)}),
    ("plain 7x7 conv stem instead of the LR stem", {"stem": "conv"}),
)
NOTES = ("LR-Net: ResNet v1.5 bottlenecks with G = ceil(C/m), geometry prior hidden width G, "
         "LR stem (1x1 conv 3->64, 7x7 LR m=1 stride 2).",)

register_net(NetDef(
    "lr26", "LR-Net-26: [2,2,2,2] bottlenecks, 7x7 local relation (m=8), LR stem",
    lambda **o: lrnet(26, **o), dict(_OPTIONS),
    paper=(PaperFigures("LR-Net paper, Table 1 (7x7, m=8)", 14.7e6, 2.6e9),),
    choices=CHOICES, notes=NOTES, impl_op="lr",
))
register_net(NetDef(
    "lr50", "LR-Net-50: [3,4,6,3] bottlenecks, 7x7 local relation (m=8), LR stem",
    lambda **o: lrnet(50, **o), dict(_OPTIONS),
    paper=(PaperFigures("LR-Net paper, Table 1 (7x7, m=8)", 23.3e6, 4.3e9),),
    choices=CHOICES, notes=NOTES, impl_op="lr",
))
register_net(NetDef(
    "lr101", "LR-Net-101: [3,4,23,3] bottlenecks, 7x7 local relation (m=8), LR stem",
    lambda **o: lrnet(101, **o), dict(_OPTIONS),
    reconstructed=PaperFigures("reference reconstruction (not printed)", 40.84e6, 7.76e9),
    notes=NOTES, impl_op="lr",
))
