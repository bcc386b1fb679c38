"""NL-ResNet-50 (`nl50`): ResNet-50 with the non-local paper's 5 blocks (Wang et al., Table 2c).

Placement: "3 in res4 and 2 in res3, to every other residual block": each block is inserted
after a residual block, after blocks 2 and 4 of res3 (indices 1, 3; 512 channels at 28x28
for a 224 input) and after blocks 2, 4 and 6 of res4 (indices 1, 3, 5; 1024 channels at
14x14). Embedded Gaussian, C' = C/2 and the 2x2 max-pool subsampling of phi and g: the
paper's default version, used "for all non-local blocks studied".

The paper prints no absolute FLOPs for an image model (only ratios to its video baselines),
so the check is against a reconstruction: ResNet-50's standard count plus the five blocks by
the paper's own formula 4*C*C'*N + 2*N*N'*C'.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from lrprof.build.nets import NetDef, PaperFigures, register_net
from lrprof.build.nets.resnet import EXPANSION, RESNET_WIDTHS, StagedNet, resnet
from lrprof.build.ops.nonlocal_block import PAIRWISE, NonLocal2d, key_positions
from lrprof.spec.errors import SpecError

PLACEMENT = {"res3": (1, 3), "res4": (1, 3, 5)}  # insert after these residual blocks (0-based)
STAGE_INPUT = {"res3": (1, 28), "res4": (2, 14)}  # stage index, output size at 224x224
RESNET50_PARAMS, RESNET50_MACS = 25_557_032, 4_089_184_256  # the standard count (resnet50 here)


def with_blocks(stage: nn.Sequential, after: Sequence[int], **block: object) -> nn.Sequential:
    """The stage's residual blocks with a non-local block after each index in `after`."""
    layers: list[nn.Module] = []
    for index, residual in enumerate(stage):
        layers.append(residual)
        if index in after:
            layers.append(NonLocal2d(residual.conv3.out_channels, **block))
    return nn.Sequential(*layers)


def nl_resnet50(pairwise: str = "embedded_gaussian", subsample: bool = True,
                num_classes: int = 1000) -> StagedNet:
    if pairwise not in PAIRWISE:
        raise SpecError("pairwise", f"one of {', '.join(PAIRWISE)}", pairwise)
    if not isinstance(subsample, bool):
        raise SpecError("subsample", "true or false", subsample)
    net = resnet(50, num_classes)
    for stage, after in PLACEMENT.items():
        setattr(net, stage, with_blocks(getattr(net, stage), after, pairwise=pairwise,
                                        subsample=subsample))
    return net


def published_blocks() -> tuple[int, int]:
    """(params, MACs) of the five embedded-Gaussian, subsampled blocks at 224x224 by the
    paper's formula, with their parameters counted by hand: theta, phi, g with bias,
    W_z without, batch norm's scale and shift."""
    params = macs = 0
    for stage, after in PLACEMENT.items():
        index, size = STAGE_INPUT[stage]
        c = RESNET_WIDTHS[index] * EXPANSION
        inner, n = c // 2, size * size
        nk = key_positions(size, size, True)
        params += len(after) * (3 * (c * inner + inner) + inner * c + 2 * c)
        macs += len(after) * (4 * c * inner * n + 2 * n * nk * inner)
    return params, macs


_BLOCK_PARAMS, _BLOCK_MACS = published_blocks()

register_net(NetDef(
    "nl50", "ResNet-50 + 5 non-local blocks (2 in res3, 3 in res4; embedded Gaussian, subsampled)",
    nl_resnet50, {"pairwise": "embedded_gaussian", "subsample": True, "num_classes": 1000},
    reconstructed=PaperFigures(
        "ResNet-50 standard count + 5 blocks by the paper's formula (no absolute figure printed)",
        RESNET50_PARAMS + _BLOCK_PARAMS, RESNET50_MACS + _BLOCK_MACS),
    notes=("nl50: ResNet-50 v1.5 with a non-local block (embedded Gaussian, C' = C/2, 2x2 max-pool "
           "subsampling of phi and g, W_z + BN, residual) after blocks 2 and 4 of res3 (C=512, "
           "28x28) and blocks 2, 4, 6 of res4 (C=1024, 14x14) at 224x224: the paper's 5-block "
           "placement, every other residual block.",
           "nl50 at 224x224: each res3 block costs 489.7 M MACs (411.0 M in theta, phi, g, W_z; "
           "78.7 M pairwise + aggregation with N'=196), each res4 block 420.9 M (411.0 M + 9.8 M, "
           "N'=49): +2.242 G over ResNet-50's 4.089 G, 1.55x. The paper reports 1.2x FLOPs for 5 "
           "blocks in its ResNet-101 video C2D, whose base is larger; no image-model figure is "
           "printed."),
))
