"""A row's identity is every parameter that defines it, written into the file: the API and
the CLI give the same identity, rows that differ in one parameter never match, compare says
which field differs, and a reader needs no knowledge of the operators."""

import pytest
import torch

from lrprof.build.ops import resolve_spec
from lrprof.cli import main
from lrprof.gate import compare as cmp
from lrprof.measure.device import collect
from lrprof.measure.memory import CPU_METHOD, MemoryStats
from lrprof.measure.timing import Stats, TimingOptions
from lrprof.profile.layer import profile_layers
from lrprof.record.records import Record, Report
from lrprof.report import report_paths, write_report
from lrprof.report.compare import render_text
from lrprof.report.layer import layer_report
from lrprof.spec.errors import InputError
from lrprof.spec.layer import LayerSpec
from lrprof.spec.options import MeasureOptions

FAST_ARGS = ["--channels", "8", "--size", "8", "--k", "3", "--m", "4", "--min-time", "0.02",
             "--min-runs", "2", "--no-stock", "--device", "cpu", "--quiet"]
FAST = MeasureOptions(timing=TimingOptions(warmup=1, warmup_s=0, min_runs=2, min_time_s=0.02),
                      memory_runs=1, stock_counters=False)


def test_api_and_cli_give_the_same_identity(tmp_path):
    """The README's API example (no phi given) and the CLI (phi defaulted there) match."""
    spec = LayerSpec(op="lr", k=3, m=4, channels=8, height=8, width=8, device="cpu")
    records = profile_layers([spec], FAST)
    api = write_report(layer_report(records, ["api"]), report_paths("layer", tmp_path / "api"))
    assert main(["layer", *FAST_ARGS, "--impl", "unfold", "--out", str(tmp_path / "cli")]) == 0
    result = cmp.compare(api[2], tmp_path / "cli" / "layer.json",
                         cmp.Thresholds(max_slowdown=100, max_memory_growth=100))
    assert len(result.rows) == 2 and not result.only_old and not result.only_new
    # the CLI's default is --impl auto; the API asks for it by name and gets the same row
    auto = write_report(layer_report(profile_layers([spec.replace(impl="auto")], FAST), ["api"]),
                        report_paths("layer", tmp_path / "api-auto"))
    assert main(["layer", *FAST_ARGS, "--out", str(tmp_path / "cli-auto")]) == 0
    result = cmp.compare(auto[2], tmp_path / "cli-auto" / "layer.json",
                         cmp.Thresholds(max_slowdown=100, max_memory_growth=100))
    assert len(result.rows) == 2 and not result.only_old and not result.only_new
    (lr,) = [r for r in records if r.config["op"] == "lr"]
    assert lr.config["phi"] == "sqdiff" and lr.config["geometry_hidden"] == 2  # resolved defaults


def test_an_explicit_default_is_the_same_configuration():
    implicit = resolve_spec(LayerSpec(channels=16, k=3, m=4))
    explicit = resolve_spec(LayerSpec(channels=16, k=3, m=4, phi="sqdiff", geometry_hidden=4, impl="unfold"))
    assert implicit.config() == explicit.config()
    assert resolve_spec(LayerSpec(channels=16, k=3, m=4, geometry_hidden=5)).config() != implicit.config()


@pytest.mark.parametrize("suffix", ["json", "csv"])
def test_reports_differing_in_one_parameter_never_match(tmp_path, capsys, suffix):
    for phi in ("sqdiff", "mul"):
        assert main(["layer", *FAST_ARGS, "--phi", phi, "--baseline", "none",
                     "--out", str(tmp_path / phi)]) == 0
    old, new = tmp_path / "sqdiff" / f"layer.{suffix}", tmp_path / "mul" / f"layer.{suffix}"
    with pytest.raises(InputError, match="differs in phi: mul here, sqdiff there"):
        cmp.compare(old, new)
    capsys.readouterr()
    assert main(["compare", str(old), str(new)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no row" in err and "phi" in err


def test_with_a_common_baseline_the_differing_rows_are_listed_with_their_field(tmp_path, capsys):
    for phi in ("sqdiff", "absdiff"):
        assert main(["layer", *FAST_ARGS, "--phi", phi, "--out", str(tmp_path / phi)]) == 0
    result = cmp.compare(tmp_path / "sqdiff" / "layer.csv", tmp_path / "absdiff" / "layer.json",
                         cmp.Thresholds(max_slowdown=100, max_memory_growth=100))
    assert [r.config["op"] for r in result.rows] == ["conv"]  # only the identical baseline matches
    (gone,) = [e for e in result.unmatched if e["in"] == "old"]
    assert [d["field"] for d in gone["differs"]] == ["phi"]
    assert "differs in phi: absdiff here, sqdiff there" in render_text(result)


def _row(config: dict, median: float) -> Record:
    record = Record(kind="layer", name=f"foo {config}", config=config)
    record.counted.update({"params": 10, "fwd_MACs": 100, "exact_MACs": 100})
    record.latency["fwd"] = Stats.from_times([median * f for f in (0.99, 1.0, 1.01, 1.0)], 1, "t", 1)
    record.memory["fwd"] = MemoryStats(1000, 990, 1010, 3, 0, CPU_METHOD)
    return record


def _write(path, records):
    report = Report("layer", collect(torch.device("cpu")), records, argv=["layer"])
    write_report(report, {path.suffix.lstrip("."): path})
    return path


def test_rows_of_an_operator_lrprof_does_not_know_stay_apart_in_csv(tmp_path):
    """Two rows that differ only in a parameter no registered operator has: the CSV names
    its own identity, so they are compared row for row (a 5x slower one is not hidden)."""
    base = {"op": "foo", "impl": "x", "batch": 1, "channels": 8, "height": 8, "width": 8,
            "dtype": "float32", "device": "cpu"}
    old = _write(tmp_path / "old.csv", [_row({**base, "zeta": 1}, 1.0), _row({**base, "zeta": 2}, 1.0)])
    new = _write(tmp_path / "new.csv", [_row({**base, "zeta": 1}, 1.0), _row({**base, "zeta": 2}, 5.0)])
    result = cmp.compare(old, new)
    assert not result.warnings
    statuses = {r.config["zeta"]: r.status for r in result.rows}
    assert statuses == {1: "same", 2: "worse"}
    assert result.regression
