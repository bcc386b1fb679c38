"""DRConv's output check at near-ties: float32 and float64 may route a pixel whose two
largest guide logits tie to within rounding to different regions, both correctly; a module
that routes wrongly must still fail."""

from __future__ import annotations

import torch

from lrprof.build.ops.drconv import DRConv2d, check_output
from lrprof.measure.accuracy import compare_with_reference


def _tied_module() -> tuple[DRConv2d, torch.Tensor]:
    torch.manual_seed(0)
    module = DRConv2d(8, 8, 3, 4)
    with torch.no_grad():  # regions 0 and 1 differ by less than float32 can tell apart
        module.guide.weight[1] = module.guide.weight[0]
        module.guide.bias[1] = torch.nextafter(module.guide.bias[0], torch.tensor(float("inf")))
    return module, torch.randn(1, 8, 16, 16)


def test_near_ties_fail_the_plain_check_and_pass_drconvs() -> None:
    module, x = _tied_module()
    plain = compare_with_reference(module, DRConv2d(8, 8, 3, 4), (x,), "float32", "region")
    assert not plain.ok  # a whole pixel's output differs: the check this one replaces
    check = check_output(module, DRConv2d(8, 8, 3, 4), (x,), "float32", "region")
    assert check.ok and check.max_rel_err < 1e-5
    assert "near-tie" in check.note and "clear margin" not in check.note


def test_a_module_that_routes_wrongly_still_fails() -> None:
    class SecondBest(DRConv2d):  # routes each pixel to its second largest logit
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            k, s = self.kernel_size, self.stride
            logits = self.guide(x)
            second = logits.topk(2, dim=1).indices[:, 1:2]
            wrong = logits.scatter(1, second, logits.max().item() + 1)
            cols = torch.nn.functional.unfold(x, k, padding=k // 2, stride=s)
            from lrprof.build.ops.drconv import RouteByRegion
            out = RouteByRegion.apply(cols, self.region_filters(x), wrong.flatten(2))
            return out.view(x.shape[0], self.out_channels, *logits.shape[-2:])

    torch.manual_seed(1)
    module = SecondBest(8, 8, 3, 4)
    check = check_output(module, DRConv2d(8, 8, 3, 4), (torch.randn(1, 8, 16, 16),), "float32", "region")
    assert not check.ok and check.max_rel_err > 0.1


def test_no_note_when_the_routing_agrees() -> None:
    torch.manual_seed(2)
    module = DRConv2d(8, 8, 3, 4).double()
    check = check_output(module, DRConv2d(8, 8, 3, 4), (torch.randn(1, 8, 12, 12, dtype=torch.float64),),
                         "float64", "region")
    assert check.ok and check.note == ""


def test_the_layer_report_says_when_near_ties_were_rerouted() -> None:
    from lrprof.record.records import Record
    from lrprof.report import render_markdown
    from lrprof.report.layer import layer_report

    record = Record(kind="layer", name="drconv[region] k=3", config={"op": "drconv", "device": "cpu"})
    record.detail["output_check_note"] = "2 near-tie pixel(s) routed to the module's region in the reference"
    text = render_markdown(layer_report([record], argv=["lrprof", "layer"]))
    assert "output check of drconv[region] k=3: 2 near-tie pixel(s)" in text


def test_the_layer_profile_uses_drconvs_check(monkeypatch) -> None:
    """Registered and wired: a row whose guide ties two regions (as `_tied_module`, made in
    every module the profile builds, so the float64 reference gets the same weights) passes
    through DRConv's own check, which says so. The tie is made, not found: whether seed 0
    happens to tie depends on the CPU's vector width (it did on AVX2, not on AVX-512)."""
    from lrprof.build.ops import get_op
    from lrprof.measure.timing import TimingOptions
    from lrprof.profile.layer import profile_layer
    from lrprof.spec.layer import LayerSpec
    from lrprof.spec.options import MeasureOptions

    original = DRConv2d.__init__

    def tied_init(self: DRConv2d, *args, **kwargs) -> None:
        original(self, *args, **kwargs)
        with torch.no_grad():
            self.guide.weight[1] = self.guide.weight[0]
            self.guide.bias[1] = torch.nextafter(self.guide.bias[0], torch.tensor(float("inf")))

    monkeypatch.setattr(DRConv2d, "__init__", tied_init)
    assert get_op("drconv").check_output is check_output
    options = MeasureOptions(timing=TimingOptions(warmup=1, warmup_s=0, min_runs=2, min_time_s=0.01),
                             memory_runs=1, stock_counters=False, baseline=False, roofline=False)
    record = profile_layer(LayerSpec(op="drconv", channels=8, height=16, width=16, device="cpu"), options)
    assert record.error is None and record.checks["output_ok"]
    assert "near-tie" in record.detail.get("output_check_note", "")
