"""nl50, shufflenetv2-0.5x and drconv-shufflenetv2-0.5x: placement, the published figures,
hand counts, and counted == exact stage by stage. (tests/test_nets.py also builds, runs and
counts every registered network at 64x64.)"""

from __future__ import annotations

import pytest
import torch

from lrprof.build.nets import STAGES, create_net, get_net
from lrprof.build.nets.paper import choice_rows, paper_checks
from lrprof.build.nets.shufflenet import ShuffleUnit
from lrprof.build.ops.drconv import DRConv2d
from lrprof.build.ops.nonlocal_block import NonLocal2d
from lrprof.measure import counting
from lrprof.profile.net import NetSpec, net_costs


def _totals(name: str, **options) -> tuple[int, int]:
    costs = net_costs(NetSpec(name, options=tuple(options.items())))
    return sum(c.params for c in costs), sum(c.macs for c in costs)


def _counted_equals_exact_by_stage(name: str, batch: int, size: int, **options) -> None:
    torch.manual_seed(0)
    net = create_net(name, **options).eval()
    counted = counting.count(net, torch.randn(batch, 3, size, size), per_module=True)
    assert counted.uncounted == {} and counted.opaque == ()
    costs = net_costs(NetSpec(name, batch=batch, height=size, width=size, options=tuple(options.items())))
    assert counted.macs == sum(c.macs for c in costs)
    assert counted.softmax_exps == sum(c.softmax_exps for c in costs)
    for stage in STAGES:
        exact = sum(c.macs for c in costs if c.name.split(".")[0] == stage)
        assert counted.module_macs.get(stage, 0) == exact, stage


# ----------------------------------------------------------------------------- nl50


def test_nl50_places_five_blocks_as_the_paper_does():
    with torch.device("meta"):
        net = create_net("nl50")
    blocks = {name: m for name, m in net.named_modules() if isinstance(m, NonLocal2d)}
    # after residual blocks 2 and 4 of res3, 2, 4 and 6 of res4 (each insertion shifts the next)
    assert sorted(blocks) == ["res3.2", "res3.5", "res4.2", "res4.5", "res4.8"]
    assert {n: m.channels for n, m in blocks.items()} == {
        "res3.2": 512, "res3.5": 512, "res4.2": 1024, "res4.5": 1024, "res4.8": 1024}
    assert {(m.pairwise, m.subsample, m.inner_channels * 2 == m.channels) for m in blocks.values()} == {
        ("embedded_gaussian", True, True)}


def test_nl50_is_resnet50_plus_five_blocks_by_the_papers_formula():
    params, macs = _totals("nl50")
    base_params, base_macs = _totals("resnet50")
    # by hand: res3 blocks C=512, C'=256, N=28*28, N'=14*14; res4 C=1024, C'=512, N=14*14, N'=7*7
    block3 = 4 * 512 * 256 * 784 + 2 * 784 * 196 * 256
    block4 = 4 * 1024 * 512 * 196 + 2 * 196 * 49 * 512
    assert (block3, block4) == (489_717_760, 420_876_288)
    assert macs == base_macs + 2 * block3 + 3 * block4 == 6_331_248_640
    p3 = 3 * (512 * 256 + 256) + 256 * 512 + 2 * 512
    p4 = 3 * (1024 * 512 + 512) + 512 * 1024 + 2 * 1024
    assert params == base_params + 2 * p3 + 3 * p4
    reconstructed = get_net("nl50").reconstructed
    assert paper_checks(params, macs, [reconstructed])[0]["verdict"] == "pass"


def test_nl50_other_pairwise_counts_stage_by_stage():
    _counted_equals_exact_by_stage("nl50", 1, 32, pairwise="concatenation", subsample=False)


# ----------------------------------------------------------------------------- ShuffleNet V2


def _shufflenet_hand_count() -> int:
    """ShuffleNet V2 0.5x at 224x224 from the architecture's definition, layer by layer."""
    macs = 3 * 24 * 9 * 112 * 112  # conv1, stride 2
    cin, size = 24, 56  # after the max pool
    for cout, repeats in ((48, 4), (96, 8), (192, 4)):
        branch, out = cout // 2, size // 2
        # stride-2 unit: left = dw 3x3 s2 + 1x1; main = 1x1 at the input size, dw s2, 1x1
        macs += cin * 9 * out * out + cin * branch * out * out
        macs += cin * branch * size * size + branch * 9 * out * out + branch * branch * out * out
        for _ in range(repeats - 1):  # stride-1 units on half the channels
            macs += 2 * branch * branch * out * out + branch * 9 * out * out
        cin, size = cout, out
    return macs + 192 * 1024 * 7 * 7 + 1024 * 1000  # conv5, classifier


def test_shufflenet_matches_the_reference_params_and_the_published_macs():
    params, macs = _totals("shufflenetv2-0.5x")
    assert params == 1_366_792
    assert macs == _shufflenet_hand_count() == 40_476_448
    assert macs == pytest.approx(41e6, rel=0.03)
    check = paper_checks(params, macs, get_net("shufflenetv2-0.5x").paper)[0]
    assert check["verdict"] == "pass" and check["params diff (%)"] == 0


def test_shufflenet_stage_mapping():
    net = create_net("shufflenetv2-0.5x")
    assert [len(getattr(net, s)) for s in ("res2", "res3", "res4")] == [4, 8, 4]
    assert all(isinstance(u, ShuffleUnit) for s in ("res2", "res3", "res4") for u in getattr(net, s))
    conv5 = net.res5[0]
    assert (conv5.in_channels, conv5.out_channels, conv5.kernel_size) == (192, 1024, (1, 1))
    assert net.head.fc.in_features == 1024
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        sizes = []
        for stage in STAGES[:-1]:
            x = getattr(net, stage)(x)
            sizes.append(tuple(x.shape[1:]))
    assert sizes == [(24, 16, 16), (48, 8, 8), (96, 4, 4), (192, 2, 2), (1024, 2, 2)]


# ----------------------------------------------------------------------------- DRConv ShuffleNet

DRCONV_NET = "drconv-shufflenetv2-0.5x"


def test_drconv_placement_replaces_both_main_branch_1x1_convs_of_every_unit():
    with torch.device("meta"):
        net = create_net(DRCONV_NET)
    units = [m for m in net.modules() if isinstance(m, ShuffleUnit)]
    assert len(units) == 16
    for unit in units:
        assert isinstance(unit.main[0], DRConv2d) and isinstance(unit.main[5], DRConv2d)
        assert isinstance(unit.main[3], torch.nn.Conv2d) and unit.main[3].groups == unit.main[3].in_channels
        if unit.left is not None:
            assert not any(isinstance(m, DRConv2d) for m in unit.left.modules())
    drconvs = [m for m in net.modules() if isinstance(m, DRConv2d)]
    assert len(drconvs) == 32 and {(m.kernel_size, m.regions, m.stride) for m in drconvs} == {(1, 8, 1)}


def _drconv_breakdown() -> dict[str, int]:
    """Our count's parts, each from its formula with k = 1, and the authors' conventions."""
    costs = net_costs(NetSpec(DRCONV_NET))
    net = dict(create_net(DRCONV_NET).named_modules())
    parts = dict.fromkeys(("main", "guide", "generator", "grouped", "shared_mask"), 0)
    parts.update(total=sum(c.macs for c in costs), params=sum(c.params for c in costs))
    for c in costs:
        if c.op != "drconv":
            continue
        m = net[c.name]
        cin, cout, r = m.channels, m.out_channels, m.regions
        generator = cin * r * r + r * r * cin * cout  # k = 1: independent of H, W
        pixels = (c.macs - generator) // (cout * cin + r * cin)
        assert c.macs == (cout * cin + r * cin) * pixels + generator
        parts["main"] += cout * cin * pixels
        parts["guide"] += r * cin * pixels
        parts["generator"] += generator
        parts["grouped"] += r * r * cin * cout
        if c.name.endswith("main.0"):  # the authors' one 1x1 mask conv per unit, at its input
            parts["shared_mask"] += 8 * cin * pixels
    return parts


def test_drconv_net_count_and_the_numbers_its_notes_give():
    _, base = _totals("shufflenetv2-0.5x")
    parts = _drconv_breakdown()
    assert parts["total"] == base + parts["guide"] + parts["generator"] == 51_459_616
    assert (parts["guide"], parts["generator"], parts["grouped"]) == (3_499_776, 7_483_392, 7_372_800)
    official = base + parts["grouped"]  # main terms + materialisation, no guide, no routing
    notes = " ".join(get_net(DRCONV_NET).notes)
    for figure in (parts["total"], base, parts["main"], parts["guide"], parts["generator"],
                   parts["generator"] - parts["grouped"], parts["grouped"], official,
                   official - 46e6, parts["shared_mask"], parts["total"] - 46e6, parts["params"]):
        assert f"{figure / 1e6:.2f} M" in notes, figure
    assert f"({(parts['total'] - 46e6) / 46e6 * 100:.1f}%)" in notes
    assert f"({(official - 46e6) / 46e6 * 100:.0f}%)" in notes


def test_drconv_net_paper_check_is_on_macs_only_and_says_how_far():
    params, macs = _totals(DRCONV_NET)
    check = paper_checks(params, macs, get_net(DRCONV_NET).paper)[0]
    assert check["printed params (M)"] is None and check["params diff (%)"] is None
    assert check["MACs diff (%)"] == pytest.approx(11.87, abs=0.01)
    assert check["verdict"].startswith("differs (expected: we count the guide convs")  # 5.46 M above


def test_drconv_net_choices_show_the_generators_growth_with_r():
    rows = choice_rows(DRCONV_NET)
    macs = [row["ours MACs (G)"] for row in rows]
    assert len(rows) == 4 and macs[0] == pytest.approx(0.05146, abs=1e-5)
    assert macs == sorted(macs, reverse=True)  # r = 8, 4, 2, 1


def test_drconv_net_counts_stage_by_stage_at_batch_2():
    _counted_equals_exact_by_stage(DRCONV_NET, 2, 32)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["nl50", "shufflenetv2-0.5x", DRCONV_NET])
def test_full_size_counted_equals_exact(name):
    _counted_equals_exact_by_stage(name, 1, 224)
