"""A failure in one stage of a profile is recorded in the row; the rest is still measured,
written, and turned into a non-zero exit status. Bad hyper-parameters never reach torch."""

import dataclasses
import json

import pytest

from lrprof.build.ops.local_relation import LocalRelation2d
from lrprof.cli import main
from lrprof.measure import counting
from lrprof.measure.timing import TimingOptions
from lrprof.profile.layer import profile_layer
from lrprof.spec.errors import SpecError
from lrprof.spec.layer import LayerSpec
from lrprof.spec.options import MeasureOptions

SMALL = LayerSpec(channels=8, height=8, width=8, k=3, m=4, device="cpu")
FAST = MeasureOptions(timing=TimingOptions(warmup=1, warmup_s=0, min_runs=2, min_time_s=0.01),
                      memory_runs=1, stock_counters=False)


@pytest.mark.parametrize("kwargs,param", [
    ({"kernel_size": 4}, "k"), ({"kernel_size": 0}, "k"), ({"m": 0}, "m"), ({"m": 9}, "m"),
    ({"stride": 0}, "stride"), ({"stride": 5}, "stride"), ({"phi": "dot"}, "phi"),
    ({"geometry_hidden": 0}, "geometry-hidden"),
])
def test_the_layer_checks_its_own_hyperparameters(kwargs, param):
    with pytest.raises(SpecError) as info:
        LocalRelation2d(8, **{"kernel_size": 3, **kwargs})
    assert info.value.param == param


def test_k_is_bounded_by_the_input(capsys):
    assert main(["layer", "--channels", "8", "--size", "4x6", "--k", "15"]) == 2
    err = capsys.readouterr().err
    assert "--k" in err and "1..13" in err
    assert main(["layer", "--k", "99999999999999999999999"]) == 2


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_min_time_must_be_finite_and_positive(value, capsys):
    assert main(["layer", "--min-time", value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--min-time" in err[0]


def test_a_counting_failure_keeps_the_timing(monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("tracer exploded")

    monkeypatch.setattr(counting, "count", broken)
    record = profile_layer(SMALL, FAST)
    assert record.error == "counting: ValueError: tracer exploded"
    assert "fwd_MACs" not in record.counted
    assert record.latency["fwd"].runs >= 2  # measured all the same
    assert record.memory["fwd"].runs == 1


def test_a_timing_failure_keeps_the_count_and_the_memory(monkeypatch):
    import lrprof.measure.timing as timing_module

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access\nmore lines")

    monkeypatch.setattr(timing_module, "_cpu_block", broken)
    record = profile_layer(SMALL, FAST)
    assert record.error == "timing fwd: RuntimeError: CUDA error: an illegal memory access"
    assert record.counted["fwd_MACs"] == record.model["exact_MACs"]
    assert "fwd" not in record.latency and "fwd" in record.memory


def test_cli_writes_the_report_and_exits_1_when_counting_is_wrong(tmp_path, monkeypatch, capsys):
    """One MAC fewer than the exact minimum: a rule or the model is wrong."""
    real = counting.count

    def off_by_one(*args, **kwargs):
        return dataclasses.replace(real(*args, **kwargs), macs=real(*args, **kwargs).macs - 1)

    monkeypatch.setattr(counting, "count", off_by_one)
    code = main(["layer", "--channels", "8", "--size", "8", "--k", "3", "--m", "4", "--device", "cpu",
                 "--min-time", "0.01", "--min-runs", "2", "--no-stock", "--quiet", "--out", str(tmp_path)])
    assert code == 1
    err = capsys.readouterr().err
    assert "check failed: counted < exact" in err
    record = json.loads((tmp_path / "layer.json").read_text())["records"][0]
    assert record["checks"]["counting_ok"] is False
    assert record["latency"]["fwd"]["runs"] >= 2


def test_outside_the_o_band_is_stated_but_not_a_failure():
    spec = LayerSpec(channels=8, height=1, width=1, k=3, m=4, device="cpu")  # prior dominates
    record = profile_layer(spec, FAST)
    assert record.checks["counting_ok"] is True
    assert record.checks["paper_O_within_band"] is False
    assert record.checks["verdict"].startswith("O-model off")
