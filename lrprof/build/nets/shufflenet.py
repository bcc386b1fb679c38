"""ShuffleNet V2 0.5x (Ma et al., ECCV 2018), built here, and its DRConv version (Chen et al.).

ShuffleNet V2 0.5x at 224x224: 3x3 conv 3 -> 24 stride 2, BN, ReLU, 3x3 max pool stride 2;
three stages of units with outputs 48, 96, 192 channels and 4, 8, 4 units, the first unit of
each with stride 2; a 1x1 conv 192 -> 1024 (conv5), global average pool and a 1000-way
classifier. A stride-1 unit splits its channels in two halves, passes one through and sends
the other through 1x1, BN, ReLU, 3x3 depthwise, BN, 1x1, BN, ReLU; a stride-2 unit sends the
whole input through both branches (the left: 3x3 depthwise stride 2, BN, 1x1, BN, ReLU).
Then the halves are concatenated and the channels shuffled (2 groups). No conv has a bias.

Stages, mapped in order onto lrprof's six: stem = conv1 + max pool; res2, res3, res4 =
stage2, stage3, stage4 (outputs 28x28, 14x14, 7x7 at 224: ResNet's res3..res5 resolutions);
res5 = conv5 (1x1 192 -> 1024, BN, ReLU); head = global average pool + classifier.

DRConv placement (drconv-shufflenetv2-0.5x): the authors' ShuffleNetV2 code (megvii-research
DRConv, ShuffleNetV2_pytorch.py) replaces the two 1x1 convs of every unit's main (right)
branch with DRConv, 8 regions; the depthwise convs, the left branch of the stride-2 units,
conv1, conv5 and the classifier stay. lrprof does the same with its `drconv` operator (k = 1,
r = 8). Two differences from that code, both counted: there one 1x1 guide conv per unit is
shared by the unit's two DRConvs (here each DRConv has its own, as the paper's layer
does), and its filters are a sigmoid mix of 8 learned basis filters per region from a
global pool (here the paper's generator: adaptive pool, 1x1 C -> r^2, sigmoid, grouped 1x1).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from lrprof.build.nets import NetDef, PaperFigures, register_net
from lrprof.build.nets.resnet import Head, StagedNet
from lrprof.build.ops.drconv import DRConv2d
from lrprof.spec.errors import SpecError

Pointwise = Callable[[int, int], nn.Module]  # (in, out) -> a 1x1 layer of the main branch

WIDTHS_05X = (24, 48, 96, 192, 1024)
REPEATS = (4, 8, 4)


def conv1x1(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, bias=False)


def depthwise3x3(channels: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, 3, stride=stride, padding=1, groups=channels, bias=False)


class ShuffleUnit(nn.Module):
    """One ShuffleNet V2 unit; `pointwise` builds the main branch's two 1x1 layers."""

    def __init__(self, cin: int, cout: int, stride: int, pointwise: Pointwise) -> None:
        super().__init__()
        if stride == 1 and cin != cout:
            raise ValueError("a stride-1 unit keeps its width")
        self.stride = stride
        branch = cout // 2
        main_in = cin if stride == 2 else cin // 2
        self.left = nn.Sequential(
            depthwise3x3(cin, stride), nn.BatchNorm2d(cin),
            conv1x1(cin, branch), nn.BatchNorm2d(branch), nn.ReLU(inplace=True),
        ) if stride == 2 else None
        self.main = nn.Sequential(
            pointwise(main_in, branch), nn.BatchNorm2d(branch), nn.ReLU(inplace=True),
            depthwise3x3(branch, stride), nn.BatchNorm2d(branch),
            pointwise(branch, branch), nn.BatchNorm2d(branch), nn.ReLU(inplace=True),
        )
        self.shuffle = nn.ChannelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.left is None:
            kept, x = x.chunk(2, dim=1)
        else:
            kept = self.left(x)
        return self.shuffle(torch.cat((kept, self.main(x)), dim=1))


def shufflenet_v2(widths: tuple[int, ...] = WIDTHS_05X, pointwise: Pointwise = conv1x1,
                  num_classes: int = 1000) -> StagedNet:
    stem = nn.Sequential(
        nn.Conv2d(3, widths[0], 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=2, padding=1),
    )
    stages, cin = [], widths[0]
    for cout, repeats in zip(widths[1:4], REPEATS, strict=True):
        units = [ShuffleUnit(cin if i == 0 else cout, cout, 2 if i == 0 else 1, pointwise)
                 for i in range(repeats)]
        stages.append(nn.Sequential(*units))
        cin = cout
    conv5 = nn.Sequential(conv1x1(cin, widths[4]), nn.BatchNorm2d(widths[4]), nn.ReLU(inplace=True))
    return StagedNet(stem, [*stages, conv5], Head(widths[4], num_classes))


def drconv_shufflenet_v2(regions: int = 8, num_classes: int = 1000) -> StagedNet:
    if not isinstance(regions, int) or regions < 1:
        raise SpecError("regions", "must be an integer >= 1", regions)

    def pointwise(cin: int, cout: int) -> DRConv2d:
        return DRConv2d(cin, cout, kernel_size=1, regions=regions)

    return shufflenet_v2(WIDTHS_05X, pointwise, num_classes)


NOTES = (
    "ShuffleNet V2 0.5x built by lrprof (no torchvision): widths 24/48/96/192/1024, units 4/8/4, "
    "no conv bias. Stages: stem = conv1 + max pool; res2/res3/res4 = stage2/3/4 (outputs 28, 14, "
    "7 at 224); res5 = conv5 (1x1 192->1024); head = global pool + classifier. Channel shuffle "
    "(nn.ChannelShuffle) and the split are data movement, 0 MACs.",
)

# What our count of drconv-shufflenetv2-0.5x (r = 8) is made of at 224x224, batch 1; each figure
# is checked by tests/test_nonlocal_drconv_nets.py.
DRCONV_NOTES = (
    "DRConv placement (the authors' ShuffleNetV2_pytorch.py; the paper's text was not at hand): "
    "both 1x1 convs of every unit's main branch -> DRConv k=1, r=8 (32 DRConvs); depthwise convs, "
    "the stride-2 units' left branch, conv1, conv5 and the classifier unchanged.",
    "Against the DRConv paper's 46 M multiply-adds (224x224, r=8): our exact count is 51.46 M = "
    "40.48 M of ShuffleNet V2 0.5x (the DRConvs' main terms, 18.51 M, equal the 1x1 convs they "
    "replace) + 3.50 M of guide convs (1x1 C -> 8, one per DRConv) + 7.48 M of filter generators "
    "(0.11 M in the 1x1 C -> 64, 7.37 M in the grouped 1x1 64 -> 8*C*O; neither depends on H, W).",
    "The official counter, as our reference describes it, counts the main terms and the filter "
    "materialisation and leaves out the guide conv and the routing: on this build 40.48 + 7.37 = "
    "47.85 M (the official generator, 8 basis filters mixed per region, materialises 8*8*C*O per "
    "DRConv, the same 7.37 M as our grouped 1x1 at r=8). That is 1.85 M (4%) above the 46 M "
    "printed, which the paper does not break down. The authors' code shares one 1x1 mask conv per "
    "unit (2.15 M here) where each of our DRConvs has its own guide (3.50 M). lrprof counts "
    "everything: 5.46 M (11.9%) above the print.",
    "Params: 9.67 M against ShuffleNet V2 0.5x's 1.37 M; the paper's generator holds r^2*C*O "
    "weights per DRConv (7.37 M over the 32 DRConvs); the official basis generator holds 8*C*O "
    "(0.92 M).",
)

register_net(NetDef(
    "shufflenetv2-0.5x", "ShuffleNet V2 0.5x: units 4/8/4, widths 48/96/192, conv5 1024",
    lambda num_classes: shufflenet_v2(num_classes=num_classes), {"num_classes": 1000},
    paper=(PaperFigures("ShuffleNet V2 paper, 0.5x: 41 MFLOPs (MACs); params of the common reference "
                        "implementation (1,366,792)", 1_366_792, 41e6),),
    notes=NOTES,
))
register_net(NetDef(
    "drconv-shufflenetv2-0.5x",
    "ShuffleNet V2 0.5x with DRConv (k=1, r=8) for both 1x1 convs of every unit's main branch",
    drconv_shufflenet_v2, {"regions": 8, "num_classes": 1000},
    paper=(PaperFigures("DRConv paper: 46 M multiply-adds (params not printed; here those of our "
                        "build)", None, 46e6,
                        expected="we count the guide convs and routing the official counter leaves "
                                 "out; its convention gives 47.85 M (+4%), see the notes"),),
    choices=(
        ("r = 8, the paper's layer and generator (lrprof's choice)", {}),
        ("r = 4", {"regions": 4}),
        ("r = 2", {"regions": 2}),
        ("r = 1 (one dynamic filter bank per layer)", {"regions": 1}),
    ),
    notes=NOTES + DRCONV_NOTES,
))
