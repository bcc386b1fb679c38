"""ResNet with a pluggable spatial layer, and the ResNet-26/50/101 baselines.

The bottleneck is the standard (torchvision-style, "v1.5") one: 1x1 -> spatial (carries
the stride) -> 1x1, batch norm after each, projection shortcut where the shape changes.
LR-Net and the other operators' networks reuse it with their own spatial layer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from lrprof.build.nets import NetDef, PaperFigures, register_net

SpatialFactory = Callable[[int, int], nn.Module]  # (width, stride) -> layer, width -> width

EXPANSION = 4
RESNET_WIDTHS = (64, 128, 256, 512)
DEPTHS = {26: (2, 2, 2, 2), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


def conv3x3(width: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)


class Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, cout: int, stride: int, spatial: SpatialFactory) -> None:
        super().__init__()
        self.conv1 = conv1x1(cin, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = spatial(width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = conv1x1(width, cout)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample = (
            nn.Sequential(conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else None
        )
        self.relu3 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu1(self.bn1(self.conv1(x)))
        y = self.relu2(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu3(y + identity)


class Head(nn.Module):
    """Global average pool and the classifier, as one stage."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(x)))


class StagedNet(nn.Module):
    """stem -> res2..res5 -> head: every op runs inside one of the six stages."""

    def __init__(self, stem: nn.Module, stages: Sequence[nn.Module], head: nn.Module) -> None:
        super().__init__()
        self.stem = stem
        self.res2, self.res3, self.res4, self.res5 = stages
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in (self.stem, self.res2, self.res3, self.res4, self.res5, self.head):
            x = stage(x)
        return x


def conv_stem() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=2, padding=1),
    )


def bottleneck_net(
    stem: nn.Module,
    stem_channels: int,
    depths: Sequence[int],
    widths: Sequence[int],
    spatial: SpatialFactory,
    num_classes: int = 1000,
) -> StagedNet:
    stages, cin = [], stem_channels
    for index, (depth, width) in enumerate(zip(depths, widths, strict=True)):
        cout = RESNET_WIDTHS[index] * EXPANSION
        blocks = []
        for block in range(depth):
            stride = 2 if index > 0 and block == 0 else 1
            blocks.append(Bottleneck(cin, width, cout, stride, spatial))
            cin = cout
        stages.append(nn.Sequential(*blocks))
    return StagedNet(stem, stages, Head(cin, num_classes))


def resnet(depth: int, num_classes: int = 1000) -> StagedNet:
    return bottleneck_net(conv_stem(), 64, DEPTHS[depth], RESNET_WIDTHS, conv3x3, num_classes)


NOTES = ("ResNet: v1.5 bottlenecks (stride in the 3x3), 7x7 conv stem and max pool; built by "
         "lrprof, no torchvision.",)

register_net(NetDef(
    "resnet26", "ResNet-26 baseline: bottleneck [2,2,2,2], the depth of LR-Net-26",
    lambda num_classes: resnet(26, num_classes), {"num_classes": 1000}, notes=NOTES,
))
register_net(NetDef(
    "resnet50", "ResNet-50 (v1.5: stride in the 3x3), bottleneck [3,4,6,3]",
    lambda num_classes: resnet(50, num_classes), {"num_classes": 1000},
    paper=(
        PaperFigures("standard count (torchvision-style; SASA's table)", 25.6e6, 4.1e9),
        PaperFigures("LR-Net paper, Table 1", 25.5e6, 4.3e9,
                     expected="LR-Net's table prints 4.3 G for ResNet-50; the standard count of the "
                              "v1.5 bottleneck, which ours is, is 4.09 G"),
    ),
    notes=NOTES,
))
register_net(NetDef(
    "resnet101", "ResNet-101 (v1.5), bottleneck [3,4,23,3]",
    lambda num_classes: resnet(101, num_classes), {"num_classes": 1000}, notes=NOTES,
))
