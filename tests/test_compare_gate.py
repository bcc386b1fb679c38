"""compare as a gate: verdicts on raw samples (the bootstrap test), replicates, the
normalised gate, instruction counts, unreliable timings, and every malformed value of a
report (JSON and CSV) ending in one line that names the file, the row and the field."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest

from lrprof.cli import main
from lrprof.measure.device import Environment
from lrprof.measure.memory import CPU_METHOD, MemoryStats
from lrprof.measure.timing import Stats
from lrprof.record.records import Record, Report, latency_columns, noise_columns
from lrprof.report import write_report

RUNS = [1.00, 1.02, 0.99, 1.01, 0.98, 1.03, 1.00, 0.97, 1.02, 1.01]
LR = "lr k7"
CONV = "conv 3x3"


def env() -> Environment:
    return Environment(device="cpu", device_name="Test CPU", torch_version="2.0.0", lrprof_version="0.1.0",
                       python_version="3.11.0", platform="Linux", git_commit="abc", cpu_model="Test CPU",
                       cpu_logical_cores=2, torch_threads=1)


def timing(*processes: float, runs=RUNS) -> Stats:
    """Runs of one or several processes, each process's runs scaled by its factor."""
    parts = [Stats.from_times([v * f for v in runs], 10, "timeit", 1) for f in processes]
    return parts[0] if len(parts) == 1 else Stats.pooled(parts)


def row(name: str, op: str, fwd: Stats | None, *, baseline: str | None = None, role: str = "measured",
        macs: int = 1000, error: str | None = None, **exact) -> Record:
    r = Record(kind="layer", name=name, config={"op": op, "channels": 8, "height": 8, "width": 8,
                                                "dtype": "float32", "device": "cpu"})
    r.counted.update({"params": 10, "fwd_MACs": macs, **exact})
    if fwd is not None:
        r.latency["fwd"] = fwd
        r.memory["fwd"] = MemoryStats(1000, 990, 1010, 3, 100, CPU_METHOD)
    r.derived["role"] = role
    if baseline:
        r.derived["baseline"] = baseline
    r.error = error
    return r


def pair(lr: Stats, conv: Stats, **kw) -> list[Record]:
    """A layer row and its 3x3 conv baseline row, as one report holds them."""
    return [row(LR, "lr", lr, baseline=CONV, **kw), row(CONV, "conv", conv, role="baseline")]


def write(path: Path, records: list[Record], partial: dict | None = None) -> Path:
    report = Report("layer", env(), records, argv=["layer"], partial=partial)
    write_report(report, {path.suffix.lstrip("."): path})
    return path


def run(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(["compare", *map(str, args)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def verdicts(capsys, old: Path, new: Path, *extra) -> tuple[int, dict]:
    rc, out, err = run(capsys, old, new, "--format", "json", *extra)
    assert err == "", err
    return rc, json.loads(out)


def status(data: dict, name: str) -> str:
    return next(r["status"] for r in data["rows"] if r["name"] == name)


def metric(data: dict, name: str, metric_name: str) -> dict:
    r = next(r for r in data["rows"] if r["name"] == name)
    return next(m for m in r["metrics"] if m["metric"] == metric_name)


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and lines[0].startswith("lrprof: error:")
    return lines[0]


# ---- verdicts on raw samples ------------------------------------------------------------------


def test_scaled_samples_are_worse_with_the_interval_in_why(tmp_path, capsys):
    old = write(tmp_path / "old.json", pair(timing(1.0), timing(0.5)))
    new = write(tmp_path / "new.json", pair(timing(1.3), timing(0.5)))
    rc, data = verdicts(capsys, old, new)
    assert rc == 1
    m = metric(data, LR, "fwd_median_ms")
    assert m["status"] == "worse" and m["change_pct"] == pytest.approx(30.0)
    assert "significant" in m["why"] and "99% CI" in m["why"]
    assert m["test"]["ci_low"] > 1.2 and m["test"]["processes"] == [1, 1]
    assert status(data, CONV) == "same"


def test_within_threshold_is_same_even_when_significant(tmp_path, capsys):
    old = write(tmp_path / "old.json", pair(timing(1.0), timing(0.5)))
    new = write(tmp_path / "new.json", pair(timing(1.05), timing(0.5)))
    rc, data = verdicts(capsys, old, new)
    assert rc == 0 and status(data, LR) == "same"
    assert metric(data, LR, "fwd_median_ms")["test"]["ci_low"] > 1.0


def test_drifting_processes_past_threshold_are_inconclusive(tmp_path, capsys):
    """+10 % of the pooled median with processes that overlap: past 10 %, not significant,
    and a slowdown past 10 % not ruled out: inconclusive (exit 3), not a pass."""
    old = write(tmp_path / "old.json", pair(timing(0.9, 1.0, 1.1), timing(0.5)))
    new = write(tmp_path / "new.json", pair(timing(1.0, 1.1, 1.25), timing(0.5)))
    rc, data = verdicts(capsys, old, new)
    m = metric(data, LR, "fwd_median_ms")
    assert m["change_pct"] > 10
    assert m["status"] == "inconclusive" and "includes 1" in m["why"]
    assert m["test"]["processes"] == [3, 3]
    assert rc == 3
    entry = data["inconclusive"][0]
    assert entry["row"] == LR and any("--repeat" in d for d in entry["decide"])


def test_consistent_replicates_are_worse(tmp_path, capsys):
    old = write(tmp_path / "old.json", pair(timing(0.99, 1.0, 1.01), timing(0.5)))
    new = write(tmp_path / "new.json", pair(timing(1.29, 1.3, 1.31), timing(0.5)))
    rc, data = verdicts(capsys, old, new)
    assert rc == 1 and status(data, LR) == "worse"


def test_faster_is_better(tmp_path, capsys):
    old = write(tmp_path / "old.json", pair(timing(1.0), timing(0.5)))
    new = write(tmp_path / "new.json", pair(timing(0.7), timing(0.5)))
    rc, data = verdicts(capsys, old, new)
    assert rc == 0 and status(data, LR) == "better"


@pytest.mark.parametrize("suffix", ["json", "csv"])
def test_samples_round_trip_through_both_formats(tmp_path, capsys, suffix):
    records = pair(timing(1.0, 1.02), timing(0.5, 0.51))
    old = write(tmp_path / f"old.{suffix}", records)
    rc, data = verdicts(capsys, old, write(tmp_path / "new.json", records))
    assert rc == 0
    m = metric(data, LR, "fwd_median_ms")
    assert (m["status"], m["why"], m["test"]["processes"]) == ("same", "unchanged", [2, 2])


# ---- normalised gate ------------------------------------------------------------------------


def test_a_slower_machine_fails_raw_but_not_normalised(tmp_path, capsys):
    old = write(tmp_path / "old.json", pair(timing(1.0), timing(0.5)))
    new = write(tmp_path / "new.json", pair(timing(1.3), timing(0.65)))
    rc, data = verdicts(capsys, old, new)
    assert rc == 1 and status(data, LR) == "worse" and status(data, CONV) == "worse"
    rc, data = verdicts(capsys, old, new, "--normalize", "baseline")
    assert rc == 0
    m = metric(data, LR, "fwd_latency_vs_baseline")
    assert m["status"] == "same" and m["old"] == pytest.approx(2.0) and m["new"] == pytest.approx(2.0)
    assert status(data, CONV) == "same"  # the reference: exact figures and memory only
    assert all(x["metric"] != "fwd_median_ms" for r in data["rows"] for x in r["metrics"])


def test_slower_code_fails_normalised(tmp_path, capsys):
    old = write(tmp_path / "old.json", pair(timing(1.0), timing(0.5)))
    new = write(tmp_path / "new.csv", pair(timing(1.3), timing(0.5)))
    rc, data = verdicts(capsys, old, new, "--normalize", "baseline")
    assert rc == 1
    m = metric(data, LR, "fwd_latency_vs_baseline")
    assert m["status"] == "worse" and m["change_pct"] == pytest.approx(30.0)


def test_normalise_without_baseline_rows_is_an_error(tmp_path, capsys):
    lone = [row(LR, "lr", timing(1.0))]
    old = write(tmp_path / "old.json", lone)
    rc, _, err = run(capsys, old, old, "--normalize", "baseline")
    assert rc == 2 and "names a baseline row" in one_line(err)


def test_normalise_with_a_missing_baseline_row_names_it(tmp_path, capsys):
    old = write(tmp_path / "old.json", pair(timing(1.0), timing(0.5)))
    new = write(tmp_path / "new.json", [row(LR, "lr", timing(1.0), baseline=CONV)])
    rc, _, err = run(capsys, old, new, "--normalize", "baseline")
    line = one_line(err)
    assert rc == 2 and "new.json" in line and repr(CONV) in line and "not in the report" in line


def test_rows_without_baseline_are_gated_raw_with_a_warning(tmp_path, capsys):
    records = pair(timing(1.0), timing(0.5)) + [row("linear", "linear", timing(2.0))]
    old = write(tmp_path / "old.json", records)
    rc, data = verdicts(capsys, old, old, "--normalize", "baseline")
    assert rc == 0
    assert any("linear" in w and "raw latency" in w for w in data["warnings"])
    assert metric(data, "linear", "fwd_median_ms")["status"] == "same"


def test_bad_normalize_value(tmp_path, capsys):
    old = write(tmp_path / "old.json", pair(timing(1.0), timing(0.5)))
    rc, _, err = run(capsys, old, old, "--normalize", "conv")
    assert rc == 2 and "--normalize" in one_line(err)


# ---- instruction counts ---------------------------------------------------------------------


@pytest.mark.parametrize(("new_count", "expected", "rc"), [
    (1_000_000, "same", 0), (1_005_000, "same", 0), (1_050_000, "worse", 1), (950_000, "better", 0)])
def test_instruction_gate(tmp_path, capsys, new_count, expected, rc):
    old = write(tmp_path / "old.json", pair(timing(1.0), timing(0.5), fwd_instructions=1_000_000))
    new = write(tmp_path / "new.json", pair(timing(1.0), timing(0.5), fwd_instructions=new_count))
    got, data = verdicts(capsys, old, new)
    assert got == rc
    assert metric(data, LR, "fwd_instructions")["status"] == expected


def test_instruction_threshold_option(tmp_path, capsys):
    old = write(tmp_path / "old.json", pair(timing(1.0), timing(0.5), fwd_instructions=1_000_000))
    new = write(tmp_path / "new.csv", pair(timing(1.0), timing(0.5), fwd_instructions=1_050_000))
    rc, data = verdicts(capsys, old, new, "--max-instruction-growth", "10%")
    assert rc == 0 and metric(data, LR, "fwd_instructions")["status"] == "same"


# ---- rows with nothing comparable, errors, missing figures ----------------------------------


def test_old_row_failed_is_not_compared_never_same(tmp_path, capsys):
    old = write(tmp_path / "old.json", [row(LR, "lr", None, error="RuntimeError: boom")])
    old_data = json.loads(old.read_text())
    old_data["records"][0].update(counted={}, model={})
    old.write_text(json.dumps(old_data))
    new = write(tmp_path / "new.json", [row(LR, "lr", timing(1.0))])
    rc, data = verdicts(capsys, old, new)
    assert rc == 0
    assert data["rows"][0]["status"] == "not compared"
    rc, out, _ = run(capsys, old, new)
    assert "1 not compared" in out.splitlines()[0] and "same" not in out.splitlines()[0]


def test_row_failing_in_both_reports_is_an_error(tmp_path, capsys):
    failed = [row(LR, "lr", None, error="RuntimeError: boom")]
    old = write(tmp_path / "old.json", failed)
    rc, data = verdicts(capsys, old, write(tmp_path / "new.json", failed))
    assert rc == 1 and data["rows"][0]["status"] == "error"
    assert "failed in the old report too" in data["rows"][0]["metrics"][0]["why"]


def test_row_with_no_figures_is_malformed(tmp_path, capsys):
    empty = row(LR, "lr", None)
    empty.counted.clear()
    old = write(tmp_path / "old.json", [empty])
    rc, _, err = run(capsys, old, write(tmp_path / "new.json", [row(LR, "lr", timing(1.0))]))
    assert rc == 2 and "nothing to compare" in one_line(err)


def test_latency_missing_from_new_csv_is_an_error(tmp_path, capsys):
    """The bug: a CSV with every latency column deleted compared as '1 same'."""
    old = write(tmp_path / "old.json", [row(LR, "lr", timing(1.0))])
    new = write(tmp_path / "new.csv", [row(LR, "lr", timing(1.0))])
    rows = list(csv.DictReader(io.StringIO(new.read_text())))
    latency = set(latency_columns("fwd")) | set(noise_columns("fwd"))
    kept = [c for c in rows[0] if c not in latency]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=kept, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    new.write_text(buffer.getvalue())
    rc, out, err = run(capsys, old, new)
    line = one_line(err)
    assert rc == 2 and out == ""
    assert "new.csv" in line and repr(LR) in line and "fwd latency missing" in line


@pytest.mark.parametrize("what", ["fwd_instructions", "fwd_MACs"])
def test_figure_missing_from_new_is_an_error(tmp_path, capsys, what):
    old = write(tmp_path / "old.json", [row(LR, "lr", timing(1.0), fwd_instructions=5)])
    new_row = row(LR, "lr", timing(1.0), fwd_instructions=5)
    del new_row.counted[what]
    rc, _, err = run(capsys, old, write(tmp_path / "new.json", [new_row]))
    assert rc == 2 and f"{what} missing" in one_line(err)


# ---- malformed values: JSON -----------------------------------------------------------------

NAN = float("nan")


def _set(data: dict, path: str, value) -> None:
    target = data["records"][0]
    *parents, last = path.split(".")
    for key in parents:
        target = target[key]
    if value is _DELETE:
        del target[last]
    else:
        target[last] = value


_DELETE = object()
JSON_CASES = [
    ("latency.fwd.median_ms", NAN, "NaN"),
    ("latency.fwd.median_ms", -1.0, "-1.0"),
    ("latency.fwd.median_ms", "fast", "'fast'"),
    ("latency.fwd.median_ms", None, "null"),
    ("latency.fwd.median_ms", _DELETE, "missing"),
    ("latency.fwd.median_ms", math.inf, "inf"),
    ("latency.fwd.q1_ms", 5.0, "above"),
    ("latency.fwd.runs", 0, "0"),
    ("latency.fwd.runs", "ten", "'ten'"),
    ("latency.fwd.runs", True, "True"),
    ("latency.fwd.samples_ms", [1.0] * 9 + [NAN], "NaN"),
    ("latency.fwd.samples_ms", [1.0] * 9 + ["x"], "'x'"),
    ("latency.fwd.samples_ms", [1.0] * 3, "3 samples for 10 runs"),
    ("latency.fwd.process_runs", [4, 4], "sum to 8"),
    ("latency.fwd.calls_per_run", -3, "-3"),
    ("latency.fwd", "12 ms", "an object expected"),
    ("memory.fwd.peak_bytes", NAN, "NaN"),
    ("memory.fwd.peak_bytes", -5, "-5"),
    ("memory.fwd.peak_bytes", "big", "'big'"),
    ("memory.fwd.peak_bytes", None, "null"),
    ("memory.fwd.peak_bytes", _DELETE, "missing"),
    ("counted.fwd_MACs", NAN, "NaN"),
    ("counted.fwd_MACs", -1, "-1"),
    ("counted.fwd_MACs", "many", "'many'"),
    ("counted.fwd_MACs", None, "null"),
    ("counted.params", 1.5, "1.5"),
    ("counted.fwd_instructions", -10, "-10"),
    ("derived.baseline", 5, "a row name expected"),
    ("error", 42, "a string or null"),
]


@pytest.mark.parametrize(("field", "value", "shown"), JSON_CASES,
                         ids=[f"{f}={v!r}" for f, v, _ in JSON_CASES])
@pytest.mark.parametrize("side", ["old", "new"])
def test_malformed_json_value_names_file_row_and_field(tmp_path, capsys, field, value, shown, side):
    good = write(tmp_path / "good.json", [row(LR, "lr", timing(1.0), fwd_instructions=7)])
    data = json.loads(good.read_text())
    _set(data, field, value)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    args = (bad, good) if side == "old" else (good, bad)
    rc, out, err = run(capsys, *args)
    line = one_line(err)
    assert rc == 2 and out == ""
    assert "bad.json" in line and repr(LR) in line and field in line and shown in line, line


@pytest.mark.parametrize("config", [None, {}, "k3", [1, 2]])
def test_config_null_is_a_malformed_report(tmp_path, capsys, config):
    good = write(tmp_path / "good.json", [row(LR, "lr", timing(1.0))])
    data = json.loads(good.read_text())
    data["records"][0]["config"] = config
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    rc, _, err = run(capsys, good, bad)
    line = one_line(err)
    assert rc == 2 and "malformed report" in line and "config" in line and "bad.json" in line


def test_record_without_name_is_named_by_position(tmp_path, capsys):
    good = write(tmp_path / "good.json", [row(LR, "lr", timing(1.0))])
    data = json.loads(good.read_text())
    data["records"][0]["name"] = None
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    rc, _, err = run(capsys, good, bad)
    assert rc == 2 and "row #1" in one_line(err) and "name" in err


# ---- malformed values: CSV ------------------------------------------------------------------

CSV_CASES = [
    ("fwd_median_ms", "nan", "NaN"),
    ("fwd_median_ms", "-1", "-1"),
    ("fwd_median_ms", "abc", "'abc'"),
    ("fwd_median_ms", "", "empty"),
    ("fwd_median_ms", None, "missing"),
    ("fwd_runs", "0", "0"),
    ("fwd_samples_ms", "1.0 x 1.0", "numbers separated by spaces"),
    ("fwd_samples_ms", "1.0 nan " * 5, "NaN"),
    ("fwd_process_runs", "3", "sum to 3"),
    ("fwd_peak_bytes", "nan", "NaN"),
    ("fwd_peak_bytes", "-2", "-2"),
    ("fwd_peak_bytes", "", "empty"),
    ("fwd_MACs", "-5", "-5"),
    ("fwd_MACs", "inf", "inf"),
    ("params", "many", "'many'"),
    ("fwd_instructions", "nan", "NaN"),
]


@pytest.mark.parametrize(("column", "value", "shown"), CSV_CASES,
                         ids=[f"{c}={v!r}" for c, v, _ in CSV_CASES])
def test_malformed_csv_cell_names_file_row_and_column(tmp_path, capsys, column, value, shown):
    good = write(tmp_path / "good.csv", [row(LR, "lr", timing(1.0), fwd_instructions=7)])
    rows = list(csv.DictReader(io.StringIO(good.read_text())))
    columns = list(rows[0])
    if value is None:
        columns.remove(column)
    else:
        rows[0][column] = value
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    bad = tmp_path / "bad.csv"
    bad.write_text(buffer.getvalue())
    rc, out, err = run(capsys, good, bad)
    line = one_line(err)
    assert rc == 2 and out == ""
    assert "bad.csv" in line and repr(LR) in line and column in line and shown in line, line


# ---- unreliable timings, partial reports ----------------------------------------------------


def test_unreliable_timing_is_flagged_in_compare(tmp_path, capsys):
    wide = [1.0, 1.6, 0.6, 1.4, 0.7, 1.3, 0.9, 1.5, 0.8, 1.2]
    old = write(tmp_path / "old.json", pair(timing(1.0), timing(0.5)))
    new = write(tmp_path / "new.json", pair(timing(1.0, runs=wide), timing(0.5)))
    rc, data = verdicts(capsys, old, new)
    lr = next(r for r in data["rows"] if r["name"] == LR)
    assert lr["unreliable"] and lr["unreliable"][0].startswith("new fwd: IQR")
    assert "[unreliable timing]" in metric(data, LR, "fwd_median_ms")["why"]
    rc, out, _ = run(capsys, old, new)
    assert "with unreliable timings" in out.splitlines()[0]
    assert any(line.startswith(f"unreliable timing: {LR}") for line in out.splitlines())


def test_oversubscribed_row_is_flagged(tmp_path, capsys):
    records = pair(timing(1.0), timing(0.5))
    records[0].derived["oversubscribed"] = True
    old = write(tmp_path / "old.json", pair(timing(1.0), timing(0.5)))
    rc, data = verdicts(capsys, old, write(tmp_path / "new.csv", records))
    assert "new: oversubscribed" in next(r for r in data["rows"] if r["name"] == LR)["unreliable"]


@pytest.mark.parametrize("suffix", ["json", "csv"])
def test_partial_report_is_a_warning(tmp_path, capsys, suffix):
    partial = {"interrupted_by": "SIGINT", "rows_kept": 1, "rows_total": 2, "not_measured": [CONV]}
    old = write(tmp_path / "old.json", pair(timing(1.0), timing(0.5)))
    new = write(tmp_path / f"new.{suffix}", pair(timing(1.0), timing(0.5)), partial=partial)
    rc, data = verdicts(capsys, old, new)
    assert any("partial report" in w and "interrupted by SIGINT" in w and CONV in w
               for w in data["warnings"])
