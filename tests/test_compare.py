"""`lrprof compare`: matching rows, exact vs noisy figures, verdicts, exit codes and outputs.

Reports are built by hand from value objects and written with the report writers, so the
verdicts are known in advance; one tiny real `lrprof layer` run is compared with itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lrprof.build.ops import resolve_spec
from lrprof.build.ops.registry import spec_label
from lrprof.cli import main
from lrprof.measure.device import Environment
from lrprof.measure.memory import CPU_METHOD, MemoryStats
from lrprof.measure.timing import Stats
from lrprof.record.records import Record, Report
from lrprof.report import write_report
from lrprof.spec.layer import LayerSpec

TIMING = "torch.utils.benchmark blocked_autorange after warm-up"


# ---- building reports ------------------------------------------------------------------------


def environment(**changes) -> Environment:
    facts = dict(
        device="cpu", device_name="Test CPU", torch_version="2.0.0", lrprof_version="0.1.0",
        python_version="3.11.0", platform="Linux", git_commit="abc123", cpu_model="Test CPU",
        cpu_logical_cores=2, torch_threads=2,
    )
    facts.update(changes)
    return Environment(**facts)


def lat(median: float, iqr: tuple[float, float] | None = None, span: tuple[float, float] | None = None,
        runs: int = 10) -> Stats:
    """A latency distribution; by default tight (IQR +-2 %, min-max +-5 % of the median)."""
    q1, q3 = iqr or (0.98 * median, 1.02 * median)
    lo, hi = span or (min(q1, 0.95 * median), max(q3, 1.05 * median))
    return Stats(median, q1, q3, lo, hi, runs, 10, TIMING, 2)


def mem(peak: int, span: tuple[int, int] | None = None, runs: int = 3) -> MemoryStats:
    lo, hi = span or (int(peak * 0.99), int(peak * 1.01))
    return MemoryStats(peak, lo, hi, runs, 2480, CPU_METHOD)


def record(k: int = 3, m: int = 4, channels: int = 8, *, name: str | None = None, fwd: Stats | None = None,
           fwd_bwd: Stats | None = None, peak: MemoryStats | None = None,
           peak_bwd: MemoryStats | None = None, macs: int = 11976, params: int = 108,
           exps: int = 1152, error: str | None = None, device: str = "cpu") -> Record:
    spec = resolve_spec(LayerSpec(channels=channels, height=8, width=8, k=k, m=m, device=device))
    rec = Record(kind="layer", name=name or spec_label(spec), config=spec.config())
    rec.counted.update({"params": params, "fwd_MACs": macs, "fwd_exps": exps})
    rec.model.update({"exact_MACs": macs, "exact_exps": exps, "paper_O_MACs": 13056.0})
    rec.checks["verdict"] = "ok"
    if error is None:
        rec.latency["fwd"] = fwd or lat(1.0)
        rec.memory["fwd"] = peak or mem(100_000)
        if fwd_bwd is not None:
            rec.latency["fwd_bwd"] = fwd_bwd
        if peak_bwd is not None:
            rec.memory["fwd_bwd"] = peak_bwd
    rec.error = error
    return rec


def write(path: Path, records: list[Record], env: Environment | None = None,
          command: str = "layer") -> Path:
    """Write a report as JSON or CSV, chosen by the path's suffix."""
    report = Report(command=command, environment=env or environment(), records=records,
                    argv=[command])
    write_report(report, {path.suffix.lstrip("."): path})
    return path


def cli(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(["compare", *[str(a) for a in args]])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def as_json(capsys, *args) -> tuple[int, dict]:
    rc, out, err = cli(capsys, *args, "--format", "json")
    return rc, json.loads(out)


def one_line_error(err: str) -> str:
    """Bad input: exactly one line on stderr, no traceback."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("lrprof: error:")
    return lines[0]


def status_of(data: dict, name: str) -> str:
    return next(r["status"] for r in data["rows"] if r["name"] == name)


def metric(data: dict, name: str, metric_name: str) -> dict:
    row = next(r for r in data["rows"] if r["name"] == name)
    return next(m for m in row["metrics"] if m["metric"] == metric_name)


def table_lines(out: str, names: list[str]) -> list[int]:
    """Index of the first output line naming each row."""
    lines = out.splitlines()
    return [next(i for i, line in enumerate(lines) if name in line) for name in names]


@pytest.fixture
def base(tmp_path) -> list[Record]:
    """Three layer rows of different configurations (k=3, 5, 7), all 1 ms, 100 kB."""
    return [record(k=3, name="row k3"), record(k=5, name="row k5"), record(k=7, name="row k7")]


# ---- identical, slower, faster, noise ----------------------------------------------------------


def test_identical_reports_pass(tmp_path, capsys, base):
    old = write(tmp_path / "old.json", base)
    new = write(tmp_path / "new.json", base)
    rc, out, err = cli(capsys, old, new)
    assert rc == 0
    assert err == ""
    assert out.splitlines()[0] == "no regression: 3 matched rows (3 same)"
    rc, data = as_json(capsys, old, new)
    assert rc == 0 and data["regression"] is False
    assert [r["status"] for r in data["rows"]] == ["same"] * 3
    assert data["only_in_old"] == [] and data["only_in_new"] == [] and data["warnings"] == []


def slowed_reports(tmp_path) -> tuple[Path, Path]:
    """k7 50 % slower, k3 20 % slower, k5 unchanged; the worst row is last in the report."""
    old = [record(k=3, name="row k3"), record(k=5, name="row k5"), record(k=7, name="row k7")]
    new = [record(k=3, name="row k3", fwd=lat(1.2)), record(k=5, name="row k5"),
           record(k=7, name="row k7", fwd=lat(1.5))]
    return write(tmp_path / "old.json", old), write(tmp_path / "new.json", new)


def test_slower_row_fails_and_is_listed_first_in_text(tmp_path, capsys):
    old, new = slowed_reports(tmp_path)
    rc, out, err = cli(capsys, old, new)
    assert rc == 1
    assert err == ""
    assert out.splitlines()[0].startswith("REGRESSION: 3 matched rows (2 worse, 1 same)")
    k7, k3 = table_lines(out, ["row k7", "row k3"])
    assert k7 < k3
    assert "+50.0%" in out.splitlines()[k7] and "worse" in out.splitlines()[k7]
    assert "+20.0%" in out.splitlines()[k3]
    assert "row k5" not in out  # unchanged rows are not listed in the text table


def test_slower_row_is_first_in_markdown(tmp_path, capsys):
    old, new = slowed_reports(tmp_path)
    rc, out, _ = cli(capsys, old, new, "--format", "markdown")
    assert rc == 1
    assert out.startswith("## lrprof compare: REGRESSION")
    body = [line for line in out.splitlines() if line.startswith("| worse")]
    assert len(body) == 2
    assert "row k7" in body[0] and "+50.0%" in body[0]
    assert "row k3" in body[1] and "+20.0%" in body[1]
    assert "1 row(s) unchanged." in out


def test_rows_rank_by_their_worst_failing_change(tmp_path, capsys):
    """A big improvement elsewhere in a row does not lift it above a bigger slowdown."""
    old = write(tmp_path / "old.json", [record(k=3, name="row k3"), record(k=5, name="row k5")])
    new = write(tmp_path / "new.json", [record(k=3, name="row k3", fwd=lat(1.2), peak=mem(20_000)),
                                        record(k=5, name="row k5", fwd=lat(1.5))])
    rc, data = as_json(capsys, old, new)
    assert rc == 1
    assert [(r["name"], r["status"]) for r in data["rows"]] == [("row k5", "worse"), ("row k3", "worse")]
    assert metric(data, "row k3", "fwd_peak_bytes")["status"] == "better"


def test_slower_row_in_json(tmp_path, capsys):
    old, new = slowed_reports(tmp_path)
    rc, data = as_json(capsys, old, new)
    assert rc == 1
    assert data["schema"] == "lrprof.gate.compare/1"
    assert data["regression"] is True
    assert [(r["name"], r["status"]) for r in data["rows"]] == [
        ("row k7", "worse"), ("row k3", "worse"), ("row k5", "same")]
    fwd = metric(data, "row k7", "fwd_median_ms")
    assert fwd["old"] == pytest.approx(1.0) and fwd["new"] == pytest.approx(1.5)
    assert fwd["change_pct"] == pytest.approx(50.0)
    assert "IQR" in fwd["why"]
    assert data["thresholds"] == {"max_slowdown": 0.10, "max_memory_growth": 0.05,
                                  "max_instruction_growth": 0.01, "allow_model_change": False,
                                  "require_all": False, "normalize": "none", "confidence": 0.99}


def test_faster_row_is_better_and_passes(tmp_path, capsys, base):
    old = write(tmp_path / "old.json", base)
    new = write(tmp_path / "new.json", [base[0], record(k=5, name="row k5", fwd=lat(0.6)), base[2]])
    rc, data = as_json(capsys, old, new)
    assert rc == 0 and data["regression"] is False
    assert status_of(data, "row k5") == "better"
    assert metric(data, "row k5", "fwd_median_ms")["change_pct"] == pytest.approx(-40.0)
    rc, out, _ = cli(capsys, old, new)
    assert rc == 0
    assert "1 better" in out.splitlines()[0]
    assert any("better" in line and "row k5" in line for line in out.splitlines())


def test_slower_within_noise_is_inconclusive(tmp_path, capsys):
    """30 % slower (past 10 %) but the IQRs overlap: not a regression, and not a pass either
    (a gate fails closed): inconclusive, exit 3."""
    old = write(tmp_path / "old.json", [record(fwd=lat(1.0, iqr=(0.8, 1.35)))])
    new = write(tmp_path / "new.json", [record(fwd=lat(1.3, iqr=(1.1, 1.6)))])
    rc, data = as_json(capsys, old, new)
    assert rc == 3 and data["regression"] is False and data["verdict"] == "inconclusive"
    m = metric(data, data["rows"][0]["name"], "fwd_median_ms")
    assert m["status"] == "inconclusive" and m["change_pct"] == pytest.approx(30.0)
    assert "overlap" in m["why"]
    assert data["rows"][0]["status"] == "inconclusive"


def test_change_within_threshold_is_same(tmp_path, capsys):
    """8 % slower with disjoint IQRs: under the 10 % threshold, so same."""
    old = write(tmp_path / "old.json", [record(fwd=lat(1.0, iqr=(0.99, 1.01)))])
    new = write(tmp_path / "new.json", [record(fwd=lat(1.08, iqr=(1.07, 1.09)))])
    rc, data = as_json(capsys, old, new)
    assert rc == 0
    assert data["rows"][0]["status"] == "same"


def test_faster_within_noise_is_not_better(tmp_path, capsys):
    """IQRs of 60 % flag both timings unreliable: a change past the threshold on them is
    inconclusive (exit 3), even a faster one, never "better"."""
    old = write(tmp_path / "old.json", [record(fwd=lat(1.0, iqr=(0.6, 1.2)))])
    new = write(tmp_path / "new.json", [record(fwd=lat(0.7, iqr=(0.5, 0.9)))])
    rc, data = as_json(capsys, old, new)
    assert rc == 3
    assert data["rows"][0]["status"] == "inconclusive"
    assert any("unreliable" in r for r in data["inconclusive"][0]["reasons"])


def test_faster_with_overlapping_spreads_is_noise(tmp_path, capsys):
    """Faster past the threshold, spreads overlapping, timings within the reliability bounds:
    nothing suggests a slowdown, so noise (exit 0)."""
    old = write(tmp_path / "old.json", [record(fwd=lat(1.0, (0.96, 1.04), (0.8, 1.1), runs=3))])
    new = write(tmp_path / "new.json", [record(fwd=lat(0.85, (0.82, 0.88), (0.8, 0.9), runs=3))])
    rc, data = as_json(capsys, old, new)
    assert data["rows"][0]["status"] == "noise", data["rows"][0]
    assert rc == 0


@pytest.mark.parametrize(
    ("old_runs", "new_runs", "expected", "spread"),
    [(3, 3, "inconclusive", "min-max"), (10, 3, "inconclusive", "min-max"),
     (3, 10, "inconclusive", "min-max"),
     (4, 4, "worse", "IQR"), (10, 10, "worse", "IQR")],
)
def test_few_runs_use_min_max_range(tmp_path, capsys, old_runs, new_runs, expected, spread):
    """IQRs apart but min-max ranges overlapping: only decisive when both sides have >= 4 runs."""
    old = write(tmp_path / "old.json", [record(fwd=lat(1.0, (0.98, 1.02), (0.9, 1.45), old_runs))])
    new = write(tmp_path / "new.json", [record(fwd=lat(1.5, (1.47, 1.53), (1.4, 1.6), new_runs))])
    rc, data = as_json(capsys, old, new)
    m = metric(data, data["rows"][0]["name"], "fwd_median_ms")
    assert m["status"] == expected
    assert spread in m["why"]
    assert rc == (1 if expected == "worse" else 3)


def test_few_runs_with_separate_ranges_is_worse(tmp_path, capsys):
    old = write(tmp_path / "old.json", [record(fwd=lat(1.0, (0.98, 1.02), (0.9, 1.1), 3))])
    new = write(tmp_path / "new.json", [record(fwd=lat(1.5, (1.47, 1.53), (1.4, 1.6), 3))])
    rc, data = as_json(capsys, old, new)
    assert rc == 1
    m = metric(data, data["rows"][0]["name"], "fwd_median_ms")
    assert m["status"] == "worse" and "min-max" in m["why"]


def test_fwd_bwd_phase_is_compared(tmp_path, capsys):
    old = write(tmp_path / "old.json", [record(fwd_bwd=lat(3.0))])
    new = write(tmp_path / "new.json", [record(fwd_bwd=lat(4.5))])
    rc, data = as_json(capsys, old, new)
    assert rc == 1
    row = data["rows"][0]
    assert row["status"] == "worse"
    assert metric(data, row["name"], "fwd_bwd_median_ms")["status"] == "worse"
    assert metric(data, row["name"], "fwd_median_ms")["status"] == "same"


# ---- exact figures: model change ---------------------------------------------------------------


def test_mac_change_is_model_change(tmp_path, capsys):
    old = write(tmp_path / "old.json", [record(k=3, name="row k3"), record(k=5, name="row k5")])
    new = write(tmp_path / "new.json", [record(k=3, name="row k3", macs=12000), record(k=5, name="row k5")])
    rc, out, err = cli(capsys, old, new)
    assert rc == 1
    assert err == ""
    line = next(line for line in out.splitlines() if "fwd_MACs" in line)
    assert "model change" in line and "row k3" in line
    assert "11,976" in line and "12,000" in line
    assert out.splitlines()[0].startswith("REGRESSION")
    rc, data = as_json(capsys, old, new)
    assert rc == 1 and data["regression"] is True
    assert data["rows"][0]["name"] == "row k3" and data["rows"][0]["status"] == "model change"
    for col in ("fwd_MACs", "exact_MACs"):
        m = metric(data, "row k3", col)
        assert (m["old"], m["new"], m["status"]) == (11976, 12000, "model change")
    assert status_of(data, "row k5") == "same"


def test_model_change_allowed(tmp_path, capsys):
    old = write(tmp_path / "old.json", [record(macs=11976)])
    new = write(tmp_path / "new.json", [record(macs=12000)])
    rc, data = as_json(capsys, old, new, "--allow-model-change")
    assert rc == 0
    assert data["regression"] is False
    assert data["thresholds"]["allow_model_change"] is True
    assert data["rows"][0]["status"] == "model change"  # still reported, just not failing
    rc, out, _ = cli(capsys, old, new, "--allow-model-change")
    assert rc == 0 and "model change" in out


@pytest.mark.parametrize("field", ["params", "fwd_exps"])
def test_other_exact_figures_are_model_changes(tmp_path, capsys, field):
    changed = {"params": {"params": 200}, "fwd_exps": {"exps": 2000}}[field]
    old = write(tmp_path / "old.json", [record()])
    new = write(tmp_path / "new.json", [record(**changed)])
    rc, data = as_json(capsys, old, new)
    assert rc == 1
    m = metric(data, data["rows"][0]["name"], field)
    assert m["status"] == "model change"
    assert m["old"] != m["new"] and m["new"] in (200, 2000)


def test_model_change_outranks_slowdown(tmp_path, capsys):
    old = write(tmp_path / "old.json", [record(k=3, name="row k3"), record(k=5, name="row k5")])
    new = write(tmp_path / "new.json", [record(k=3, name="row k3", fwd=lat(1.9)),
                                        record(k=5, name="row k5", params=109)])
    rc, out, _ = cli(capsys, old, new, "--format", "markdown")
    assert rc == 1
    k5, k3 = table_lines(out, ["row k5", "row k3"])
    assert k5 < k3


# ---- memory ----------------------------------------------------------------------------------


def test_memory_growth_past_threshold_and_spread_is_worse(tmp_path, capsys):
    old = write(tmp_path / "old.json", [record(peak=mem(100_000))])
    new = write(tmp_path / "new.json", [record(peak=mem(120_000))])
    rc, data = as_json(capsys, old, new)
    assert rc == 1
    row = data["rows"][0]
    m = metric(data, row["name"], "fwd_peak_bytes")
    assert (m["status"], m["old"], m["new"]) == ("worse", 100_000, 120_000)
    assert m["change_pct"] == pytest.approx(20.0)
    assert row["status"] == "worse"
    rc, out, _ = cli(capsys, old, new)
    assert rc == 1 and "fwd_peak_bytes" in out


def test_memory_growth_within_spread_is_noise(tmp_path, capsys):
    old = write(tmp_path / "old.json", [record(peak=mem(100_000, (90_000, 125_000)))])
    new = write(tmp_path / "new.json", [record(peak=mem(120_000, (110_000, 130_000)))])
    rc, data = as_json(capsys, old, new)
    assert rc == 0
    assert metric(data, data["rows"][0]["name"], "fwd_peak_bytes")["status"] == "noise"


@pytest.mark.parametrize(("growth", "limit", "rc"), [
    ("4", None, 0),  # under the default 5 %
    ("20", "25%", 0), ("20", "25", 0), ("20", "10%", 1), ("20", "10", 1)])
def test_memory_growth_threshold(tmp_path, capsys, growth, limit, rc):
    old = write(tmp_path / "old.json", [record(peak=mem(100_000, (100_000, 100_000)))])
    peak = 100_000 + 1000 * int(growth)
    new = write(tmp_path / "new.json", [record(peak=mem(peak, (peak, peak)))])
    args = [old, new] if limit is None else [old, new, "--max-memory-growth", limit]
    got, data = as_json(capsys, *args)
    assert got == rc
    assert data["rows"][0]["status"] == ("worse" if rc else "same")


# ---- errors in rows ---------------------------------------------------------------------------


def test_error_in_new_row_is_error(tmp_path, capsys, base):
    old = write(tmp_path / "old.json", base)
    new = write(tmp_path / "new.json", [base[0], base[1],
                                        record(k=7, name="row k7", error="RuntimeError: out of memory")])
    rc, data = as_json(capsys, old, new)
    assert rc == 1 and data["regression"] is True
    assert data["rows"][0]["name"] == "row k7"
    assert data["rows"][0]["status"] == "error"
    assert metric(data, "row k7", "error")["why"] == "RuntimeError: out of memory"
    rc, out, _ = cli(capsys, old, new)
    assert rc == 1
    line = out.splitlines()[table_lines(out, ["row k7"])[0]]
    assert line.startswith("error") and "out of memory" in line


def test_error_row_outranks_slowdown(tmp_path, capsys, base):
    old = write(tmp_path / "old.json", base)
    new = write(tmp_path / "new.json", [record(k=3, name="row k3", fwd=lat(3.0)), base[1],
                                        record(k=7, name="row k7", error="boom")])
    rc, data = as_json(capsys, old, new)
    assert rc == 1
    assert [r["status"] for r in data["rows"]] == ["error", "worse", "same"]


# ---- matching --------------------------------------------------------------------------------


def test_unmatched_rows_are_listed(tmp_path, capsys):
    old = write(tmp_path / "old.json", [record(k=3, name="row k3"), record(k=5, name="gone k5")])
    new = write(tmp_path / "new.json", [record(k=3, name="row k3"), record(k=7, name="added k7")])
    rc, data = as_json(capsys, old, new)
    assert rc == 0
    assert [r["name"] for r in data["rows"]] == ["row k3"]
    assert data["only_in_old"] == ["gone k5"]
    assert data["only_in_new"] == ["added k7"]
    rc, out, _ = cli(capsys, old, new)
    assert any(line.startswith("only in") and "old.json" in line and "gone k5" in line
               for line in out.splitlines())
    assert any(line.startswith("only in") and "new.json" in line and "added k7" in line
               for line in out.splitlines())
    rc, out, _ = cli(capsys, old, new, "--format", "markdown")
    assert "gone k5" in out and "added k7" in out


@pytest.mark.parametrize("field", ["k", "m", "channels"])
def test_rows_differing_in_configuration_do_not_match(tmp_path, capsys, field):
    changed = {"k": {"k": 5}, "m": {"m": 2}, "channels": {"channels": 16}}[field]
    old = write(tmp_path / "old.json", [record(name="a"), record(k=7, name="common")])
    new = write(tmp_path / "new.json", [record(name="b", fwd=lat(5.0), **changed),
                                        record(k=7, name="common")])
    rc, data = as_json(capsys, old, new)
    assert rc == 0  # the slow row has no counterpart: listed, not compared
    assert data["only_in_old"] == ["a"] and data["only_in_new"] == ["b"]


def test_rows_match_on_configuration_not_name(tmp_path, capsys):
    old = write(tmp_path / "old.json", [record(name="old label")])
    new = write(tmp_path / "new.json", [record(name="new label", fwd=lat(2.0))])
    rc, data = as_json(capsys, old, new)
    assert rc == 1
    assert data["only_in_old"] == [] and data["only_in_new"] == []
    assert data["rows"][0]["status"] == "worse"


def test_dtype_and_device_are_part_of_the_configuration(tmp_path, capsys):
    a, b = record(name="f32"), record(name="f64")
    b.config["dtype"] = "float64"
    old = write(tmp_path / "old.json", [a])
    new = write(tmp_path / "new.json", [b, record(name="f32")])
    rc, data = as_json(capsys, old, new)
    assert rc == 0 and data["only_in_new"] == ["f64"]


def net_records(conv3_ms: float = 2.0) -> list[Record]:
    cfg = {"net": "lr26", "batch": 1, "height": 64, "width": 64, "dtype": "float32", "device": "cpu"}
    net = Record(kind="net", name="lr26", config=dict(cfg), counted={"params": 1000})
    net.latency["fwd"] = lat(10.0)
    stages = []
    for stage, ms in (("conv2", 2.0), ("conv3", conv3_ms)):
        r = Record(kind="stage", name=f"lr26:{stage}", config={**cfg, "stage": stage},
                   counted={"params": 100})
        r.latency["fwd"] = lat(ms)
        stages.append(r)
    layer = Record(kind="net-layer", name="lr26:layer1.0.conv2",
                   config={**cfg, "layer": "layer1.0.conv2"}, counted={"params": 10})
    layer.latency["fwd"] = lat(0.5)
    return [net, *stages, layer]


@pytest.mark.parametrize("suffix", ["json", "csv"])
def test_net_rows_match_by_net_stage_and_layer(tmp_path, capsys, suffix):
    old = write(tmp_path / f"old.{suffix}", net_records(), command="net")
    new = write(tmp_path / f"new.{suffix}", net_records(conv3_ms=3.0), command="net")
    rc, data = as_json(capsys, old, new)
    assert rc == 1
    assert len(data["rows"]) == 4 and data["only_in_old"] == [] and data["only_in_new"] == []
    assert data["rows"][0]["name"] == "lr26:conv3" and data["rows"][0]["status"] == "worse"
    assert {r["name"]: r["status"] for r in data["rows"][1:]} == {
        "lr26": "same", "lr26:conv2": "same", "lr26:layer1.0.conv2": "same"}


# ---- CSV and JSON inputs ---------------------------------------------------------------------


def full_record(**kw) -> Record:
    return record(fwd_bwd=lat(3.0), peak_bwd=mem(300_000), **kw)


@pytest.mark.parametrize(("old_fmt", "new_fmt"), [("json", "json"), ("csv", "csv"), ("csv", "json"),
                                                  ("json", "csv")])
def test_csv_and_json_inputs_compare_equal(tmp_path, capsys, old_fmt, new_fmt):
    records = [full_record(k=3), full_record(k=5)]
    old = write(tmp_path / f"old.{old_fmt}", records)
    new = write(tmp_path / f"new.{new_fmt}", records)
    rc, data = as_json(capsys, old, new)
    assert rc == 0
    assert data["warnings"] == [] and data["only_in_old"] == [] and data["only_in_new"] == []
    assert [r["status"] for r in data["rows"]] == ["same", "same"]
    compared = {m["metric"] for m in data["rows"][0]["metrics"]}
    assert compared == {"params", "fwd_MACs", "exact_MACs", "fwd_exps",
                        "fwd_median_ms", "fwd_peak_bytes", "fwd_bwd_median_ms", "fwd_bwd_peak_bytes"}


@pytest.mark.parametrize(("old_fmt", "new_fmt"), [("csv", "json"), ("json", "csv"), ("csv", "csv")])
def test_csv_inputs_detect_regressions(tmp_path, capsys, old_fmt, new_fmt):
    old = write(tmp_path / f"old.{old_fmt}", [full_record(k=3), full_record(k=5)])
    new = write(tmp_path / f"new.{new_fmt}", [full_record(k=3, fwd=lat(1.0, runs=3)),
                                              full_record(k=5, macs=12000, peak=mem(200_000))])
    rc, data = as_json(capsys, old, new)
    assert rc == 1
    by_name = {r["name"]: r for r in data["rows"]}
    k5 = next(n for n in by_name if "k=5" in n)
    assert by_name[k5]["status"] == "model change"
    assert metric(data, k5, "fwd_peak_bytes")["status"] == "worse"
    assert metric(data, k5, "fwd_MACs")["old"] == 11976
    k3 = next(n for n in by_name if "k=3" in n)
    assert by_name[k3]["status"] == "same"


def test_csv_inputs_carry_errors(tmp_path, capsys):
    old = write(tmp_path / "old.csv", [record()])
    new = write(tmp_path / "new.csv", [record(error="RuntimeError: boom")])
    rc, data = as_json(capsys, old, new)
    assert rc == 1 and data["rows"][0]["status"] == "error"


def test_uppercase_suffixes_are_accepted(tmp_path, capsys):
    old = write(tmp_path / "old.json", [record()])
    new = write(tmp_path / "new.csv", [record()])
    old, new = old.rename(tmp_path / "OLD.JSON"), new.rename(tmp_path / "NEW.CSV")
    rc, _, err = cli(capsys, old, new)
    assert rc == 0 and err == ""


# ---- environment -----------------------------------------------------------------------------


@pytest.mark.parametrize(("field", "value", "label"), [
    ("device_name", "Other CPU", "device model"), ("torch_version", "2.1.0", "torch version"),
    ("lrprof_version", "0.2.0", "lrprof version")])
def test_setup_mismatch_is_a_warning_at_the_top(tmp_path, capsys, field, value, label):
    old = write(tmp_path / "old.json", [record()])
    new = write(tmp_path / "new.json", [record()], environment(**{field: value}))
    rc, out, err = cli(capsys, old, new)
    assert rc == 0 and err == ""
    first = out.splitlines()[0]
    assert first.startswith("warning:") and label in first and value in first
    rc, out, _ = cli(capsys, old, new, "--format", "markdown")
    assert rc == 0
    assert "**warning:**" in out.split("Old `")[0]  # above the body
    rc, data = as_json(capsys, old, new)
    assert len(data["warnings"]) == 1 and label in data["warnings"][0]


def test_device_mismatch_warns(tmp_path, capsys):
    old = write(tmp_path / "old.json", [record()])
    new = write(tmp_path / "new.json", [record()], environment(device="cuda:0", device_name="GPU"))
    rc, data = as_json(capsys, old, new)
    assert rc == 0
    assert any(w.startswith("device differs: cpu (old) vs cuda:0 (new)") for w in data["warnings"])


def test_setup_mismatch_with_strict_is_an_error(tmp_path, capsys):
    old = write(tmp_path / "old.json", [record()])
    new = write(tmp_path / "new.json", [record()], environment(torch_version="2.1.0"))
    rc, out, err = cli(capsys, old, new, "--strict")
    assert rc == 2
    line = one_line_error(err)
    assert "--strict" in line and "torch version" in line
    same = write(tmp_path / "same.json", [record()])
    rc, _, err = cli(capsys, old, same, "--strict")
    assert rc == 0 and err == ""


def test_setup_mismatch_seen_through_csv(tmp_path, capsys):
    old = write(tmp_path / "old.csv", [record()])
    new = write(tmp_path / "new.csv", [record()], environment(torch_version="2.1.0"))
    rc, _, err = cli(capsys, old, new, "--strict")
    assert rc == 2 and "torch version" in one_line_error(err)


def test_cuda_report_csv_and_json_agree_on_device(tmp_path, capsys):
    env = environment(device="cuda:0", device_name="NVIDIA H100")
    records = [record(device="cuda:0")]  # LayerSpec.config() records the device type: "cuda"
    old = write(tmp_path / "layer.json", records, env)
    new = write(tmp_path / "layer.csv", records, env)
    rc, data = as_json(capsys, old, new)
    assert rc == 0
    assert data["warnings"] == []
    rc, _, err = cli(capsys, old, new, "--strict")
    assert rc == 0, err


# ---- thresholds -------------------------------------------------------------------------------


@pytest.mark.parametrize(("limit", "rc"), [("60%", 0), ("60", 0), (" 60 % ", 0), ("40%", 1), ("40", 1),
                                           ("0.4", 1)])
def test_max_slowdown_percent_or_bare_number(tmp_path, capsys, limit, rc):
    old = write(tmp_path / "old.json", [record()])
    new = write(tmp_path / "new.json", [record(fwd=lat(1.5))])
    got, data = as_json(capsys, old, new, "--max-slowdown", limit)
    assert got == rc
    assert data["thresholds"]["max_slowdown"] == pytest.approx(float(limit.strip(" %")) / 100)


@pytest.mark.parametrize(("option", "value"), [
    ("--max-slowdown", "abc"), ("--max-slowdown", "-5%"), ("--max-slowdown", "10x"),
    ("--max-slowdown", ""), ("--max-memory-growth", "five"), ("--max-memory-growth", "-1")])
def test_bad_threshold_is_one_line_error(tmp_path, capsys, option, value):
    old = write(tmp_path / "old.json", [record()])
    rc, out, err = cli(capsys, old, old, option, value)
    assert rc == 2
    assert option in one_line_error(err)
    assert out == ""


def test_nan_threshold_is_rejected(tmp_path, capsys):
    old = write(tmp_path / "old.json", [record()])
    rc, out, err = cli(capsys, old, old, "--max-slowdown", "nan")
    assert rc == 2
    assert "--max-slowdown" in one_line_error(err)


def test_bad_format_is_one_line_error(tmp_path, capsys):
    old = write(tmp_path / "old.json", [record()])
    rc, _, err = cli(capsys, old, old, "--format", "html")
    assert rc == 2 and "--format" in one_line_error(err)


# ---- bad input --------------------------------------------------------------------------------


BAD_FILES = {
    "missing.json": None,
    "report.md": "# lrprof layer\n",
    "garbage.json": "{not json",
    "empty.json": "",
    "list.json": "[1, 2, 3]",
    "no_schema.json": json.dumps({"records": [], "environment": {}}),
    "other_schema.json": json.dumps({"schema": "lrprof.report/2", "records": [], "environment": {}}),
    "no_records.json": json.dumps({"schema": "lrprof.report/1", "environment": {}}),
    "record_without_name.json": json.dumps({"schema": "lrprof.report/1", "environment": {},
                                            "records": [{"kind": "layer"}]}),
    "bad_stats.json": json.dumps({"schema": "lrprof.report/1", "environment": {}, "records": [
        {"kind": "layer", "name": "a", "latency": {"fwd": {"median": 1}}}]}),
    "empty.csv": "",
    "no_columns.csv": "a,b\n1,2\n",
    "header_only.csv": "kind,name\n",
    "bad_numbers.csv": "kind,name,fwd_median_ms,fwd_q1_ms,fwd_q3_ms,fwd_min_ms,fwd_max_ms,fwd_runs\n"
                       "layer,a,x,1,1,1,1,5\n",
}


@pytest.mark.parametrize("name", list(BAD_FILES))
@pytest.mark.parametrize("side", ["old", "new"])
def test_bad_file_is_one_line_error(tmp_path, capsys, name, side):
    good = write(tmp_path / "good.json", [record()])
    bad = tmp_path / name
    if BAD_FILES[name] is not None:
        bad.write_text(BAD_FILES[name])
    args = [bad, good] if side == "old" else [good, bad]
    rc, out, err = cli(capsys, *args)
    assert rc == 2
    assert name in one_line_error(err)
    assert out == ""


def test_directory_is_one_line_error(tmp_path, capsys):
    good = write(tmp_path / "good.json", [record()])
    (tmp_path / "dir.json").mkdir()
    rc, _, err = cli(capsys, good, tmp_path / "dir.json")
    assert rc == 2 and "dir.json" in one_line_error(err)


def test_nothing_matched_is_one_line_error(tmp_path, capsys):
    old = write(tmp_path / "old.json", [record(k=3)])
    new = write(tmp_path / "new.json", [record(k=5)])
    rc, out, err = cli(capsys, old, new)
    assert rc == 2
    assert "matches" in one_line_error(err)
    assert out == ""


@pytest.mark.parametrize(("name", "text"), [
    ("env_string.json", json.dumps({"schema": "lrprof.report/1", "environment": "cpu", "records": []})),
    ("config_string.json", json.dumps({"schema": "lrprof.report/1", "environment": {},
                                       "records": [{"kind": "layer", "name": "a", "config": "k3"}]})),
    ("long_field.csv", "kind,name\n" + "x" * 200_000 + "\n"),
    ("deep.json", "[" * 100_000),
])
def test_malformed_report_is_one_line_error(tmp_path, capsys, name, text):
    good = write(tmp_path / "good.json", [record()])
    bad = tmp_path / name
    bad.write_text(text)
    rc, _, err = cli(capsys, good, bad)
    assert rc == 2
    assert name in one_line_error(err)


# ---- outputs ---------------------------------------------------------------------------------


def test_out_dir_gets_markdown_csv_and_json(tmp_path, capsys):
    old, new = slowed_reports(tmp_path)
    out_dir = tmp_path / "ci" / "compare"
    rc, out, _ = cli(capsys, old, new, "--out", out_dir)
    assert rc == 1
    assert sorted(p.name for p in out_dir.iterdir()) == ["compare.csv", "compare.json", "compare.md"]
    import csv as csv_module
    lines = list(csv_module.DictReader((out_dir / "compare.csv").open()))
    worse = [line for line in lines if line["metric_status"] == "worse"]
    assert worse and all(json.loads(line["identity"])["op"] == "lr" for line in worse)
    assert {line["row"] for line in lines} >= {"row k7", "row k3"}
    data = json.loads((out_dir / "compare.json").read_text())
    assert data["regression"] is True and data["rows"][0]["name"] == "row k7"
    md = (out_dir / "compare.md").read_text()
    assert md.startswith("## lrprof compare: REGRESSION")
    rows = [line for line in md.splitlines() if line.startswith("| worse")]
    assert "row k7" in rows[0] and "row k3" in rows[1]
    assert out.startswith("REGRESSION")  # the terminal still gets the text verdict


def test_out_dir_written_when_passing(tmp_path, capsys, base):
    old = write(tmp_path / "old.json", base)
    rc, _, _ = cli(capsys, old, old, "--out", tmp_path / "o", "--format", "json")
    assert rc == 0
    assert json.loads((tmp_path / "o" / "compare.json").read_text())["regression"] is False
    assert "no regression" in (tmp_path / "o" / "compare.md").read_text()


def test_unwritable_out_dir_is_one_line_error(tmp_path, capsys):
    old = write(tmp_path / "old.json", [record()])
    blocker = tmp_path / "file"
    blocker.write_text("")
    rc, _, err = cli(capsys, old, old, "--out", blocker / "sub")
    assert rc == 2 and "--out" in one_line_error(err)


def test_json_output_names_inputs_and_metrics(tmp_path, capsys):
    old = write(tmp_path / "old.json", [record()])
    new = write(tmp_path / "new.csv", [record(fwd=lat(1.5))])
    rc, data = as_json(capsys, old, new)
    assert rc == 1
    assert data["old"] == str(old) and data["new"] == str(new)
    row = data["rows"][0]
    assert set(row) == {"kind", "name", "config", "status", "metrics", "unreliable", "reasons", "decide",
                        "rerun"}
    assert row["kind"] == "layer" and row["config"]["k"] == 3
    for m in row["metrics"]:
        assert set(m) == {"metric", "old", "new", "change_pct", "status", "why", "test"}


# ---- bugs: semantics -------------------------------------------------------------------------


def test_allow_model_change_still_gates_latency(tmp_path, capsys):
    old = write(tmp_path / "old.json", [record(macs=11976)])
    new = write(tmp_path / "new.json", [record(macs=12000, fwd=lat(2.0))])
    rc, data = as_json(capsys, old, new, "--allow-model-change")
    assert metric(data, data["rows"][0]["name"], "fwd_median_ms")["status"] == "worse"
    assert rc == 1


def test_memory_growth_from_zero_is_not_same(tmp_path, capsys):
    old = write(tmp_path / "old.json", [record(peak=mem(0, (0, 0)))])
    new = write(tmp_path / "new.json", [record(peak=mem(50_000_000, (50_000_000, 50_000_000)))])
    rc, data = as_json(capsys, old, new)
    assert metric(data, data["rows"][0]["name"], "fwd_peak_bytes")["status"] == "worse"
    assert rc == 1


# ---- one real run ----------------------------------------------------------------------------


def test_real_layer_report_compares_equal_to_itself(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["layer", "--channels", "8", "--size", "8", "--k", "3", "--m", "4", "--min-time", "0.05",
               "--min-runs", "4", "--no-stock", "--device", "cpu", "--out", str(out), "--quiet"])
    assert rc == 0
    for old, new in ((out / "layer.json", out / "layer.json"), (out / "layer.csv", out / "layer.json"),
                     (out / "layer.json", out / "layer.csv")):
        rc, data = as_json(capsys, old, new)
        assert rc == 0, data
        assert data["warnings"] == []
        assert [r["status"] for r in data["rows"]] == ["same", "same"]  # the layer and its baseline
        compared = {m["metric"] for m in data["rows"][0]["metrics"]}
        assert {"fwd_MACs", "params", "fwd_median_ms", "fwd_peak_bytes"} <= compared


def test_require_all_fails_when_a_baseline_row_is_missing(tmp_path, capsys):
    old = write(tmp_path / "old.json", [record(k=3), record(k=5, name="gone k5")])
    new = write(tmp_path / "new.json", [record(k=3)])
    rc, out, _ = cli(capsys, old, new)
    assert rc == 0 and "gone k5" in out  # listed, not gated, by default
    rc, out, _ = cli(capsys, old, new, "--require-all")
    assert rc == 1
    assert out.splitlines()[0].startswith("REGRESSION") and "1 baseline row missing" in out


def test_different_timing_threads_are_a_warning(tmp_path, capsys):
    fast = Stats.from_times([1.0, 1.0, 1.0, 1.0], 1, "torch.utils.benchmark", threads=1)
    other = Stats.from_times([1.0, 1.0, 1.0, 1.0], 1, "torch.utils.benchmark", threads=2)
    old = write(tmp_path / "old.json", [record(fwd=fast)])
    new = write(tmp_path / "new.json", [record(fwd=other)])
    rc, data = as_json(capsys, old, new)
    assert rc == 0
    assert any("thread counts" in w and "1 thread (old)" in w for w in data["warnings"])
    rc, out, err = cli(capsys, old, new, "--strict")
    assert rc == 2 and "thread" in err
