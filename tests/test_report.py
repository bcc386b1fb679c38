"""Reports: stable CSV columns, JSON round trips, rendering and atomic writes (no measuring)."""

import csv
import io
import json
import os
import re
import types
from datetime import datetime

import pytest

import lrprof.report as report_mod
from lrprof.measure.device import Environment
from lrprof.measure.memory import CPU_METHOD, MemoryStats
from lrprof.measure.timing import Stats
from lrprof.record.records import SCHEMA, Record, Report, parse_cell
from lrprof.report import (
    check_writable,
    fmt,
    render_csv,
    render_json,
    render_markdown,
    render_terminal,
    report_paths,
    write_atomic,
    write_report,
)
from lrprof.report.layer import layer_report
from lrprof.spec.errors import SpecError

TIMING = "torch.utils.benchmark blocked_autorange after warm-up"
REQUIRED_COLUMNS = [
    "kind", "name", "op", "k", "m", "channels", "height", "width", "stride", "batch", "dtype", "device",
    "params", "fwd_MACs", "exact_MACs", "paper_O_MACs", "fwd_exps", "verdict",
    "fwd_median_ms", "fwd_q1_ms", "fwd_q3_ms", "fwd_min_ms", "fwd_max_ms", "fwd_runs",
    "fwd_calls_per_run", "fwd_peak_bytes", "fwd_peak_min_bytes", "fwd_peak_max_bytes",
    "fwd_memory_runs", "fwd_bwd_median_ms", "fwd_bwd_q1_ms", "fwd_bwd_q3_ms", "fwd_bwd_runs",
    "fwd_bwd_peak_bytes", "threads", "timing_method", "memory_method", "fwd_resident_bytes",
    "device_name", "torch_version", "lrprof_version", "error",
]
FWD_BWD_COLUMNS = [
    "fwd_bwd_median_ms", "fwd_bwd_q1_ms", "fwd_bwd_q3_ms", "fwd_bwd_min_ms", "fwd_bwd_max_ms",
    "fwd_bwd_runs", "fwd_bwd_calls_per_run", "fwd_bwd_peak_bytes", "fwd_bwd_peak_min_bytes",
    "fwd_bwd_peak_max_bytes", "fwd_bwd_memory_runs", "fwd_bwd_resident_bytes",
]



def environment() -> Environment:
    return Environment(
        device="cpu", device_name="Test CPU", torch_version="9.9.9", lrprof_version="0.1.0",
        python_version="3.11.0", platform="Linux", git_commit="abc123", cpu_model="Test CPU",
        cpu_logical_cores=2, torch_threads=2,
    )


def make_record(backward: bool = False) -> Record:
    config = {"op": "lr", "impl": "unfold", "batch": 1, "channels": 8, "height": 8, "width": 8,
              "k": 3, "m": 4, "stride": 1, "dtype": "float32", "device": "cpu", "phi": "sqdiff"}
    record = Record(kind="layer", name="lr[unfold] k=3 m=4 s=1 C=8 8x8 B=1 phi=sqdiff", config=config)
    record.counted.update({"params": 108, "fwd_MACs": 11976, "fwd_exps": 1152})
    record.model.update({"exact_MACs": 11976, "exact_exps": 1152, "paper_O_MACs": 13056.0})
    record.checks.update({"counted_over_exact": 1.0, "exact_match": True,
                          "counted_over_paper_O": 11976 / 13056, "paper_O_band": "0.5-1.1",
                          "paper_O_within_band": True, "verdict": "ok"})
    record.latency["fwd"] = Stats.from_times([0.1234567891234, 0.2, 0.3333333333333, 0.45], 100,
                                             TIMING, threads=1)
    record.memory["fwd"] = MemoryStats.from_peaks([53320, 53400, 53000], 2480, CPU_METHOD)
    if backward:
        record.latency["fwd_bwd"] = Stats.from_times([1.1, 0.9, 1.3], 1, TIMING, threads=1)
        # resident during forward+backward also holds the output gradient, as profile_layer counts it
        record.memory["fwd_bwd"] = MemoryStats.from_peaks([73544, 73544, 80000], 4528, CPU_METHOD)
    record.derived["fwd_GMAC_per_s"] = 0.0261
    record.detail["terms"] = [{"term": "key 1x1", "MACs": 2048, "formula": "B*C*G*H*W"}]
    return record


def make_report(*records: Record) -> Report:
    return layer_report(list(records), ["layer", "--k", "3"], environment=environment())


def csv_rows(report: Report) -> tuple[list[str], list[dict[str, str]]]:
    reader = csv.DictReader(io.StringIO(render_csv(report)))
    return list(reader.fieldnames or []), list(reader)


# ---- CSV --------------------------------------------------------------------------------


def test_csv_has_stable_unit_suffixed_columns():
    columns, rows = csv_rows(make_report(make_record()))
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    assert missing == []
    assert len(rows) == 1
    row = rows[0]
    assert row["fwd_runs"] == "4"
    assert row["fwd_calls_per_run"] == "100"
    assert row["threads"] == "1"
    assert row["fwd_peak_bytes"] == "53320"
    assert row["fwd_MACs"] == row["exact_MACs"] == "11976"
    assert row["device_name"] == "Test CPU"
    assert row["torch_version"] == "9.9.9"
    assert row["error"] == ""


def test_csv_fwd_bwd_columns_empty_without_backward_and_filled_with_it():
    _, (plain,) = csv_rows(make_report(make_record(backward=False)))
    _, (full,) = csv_rows(make_report(make_record(backward=True)))
    assert {c: plain[c] for c in FWD_BWD_COLUMNS} == dict.fromkeys(FWD_BWD_COLUMNS, "")
    assert all(full[c] != "" for c in FWD_BWD_COLUMNS)
    assert float(full["fwd_bwd_median_ms"]) == pytest.approx(1.1)
    assert full["fwd_bwd_peak_bytes"] == "73544"


def test_csv_columns_are_the_same_for_every_record():
    columns_a, _ = csv_rows(make_report(make_record(backward=False)))
    columns_b, _ = csv_rows(make_report(make_record(backward=True)))
    assert columns_a == columns_b


def peaks(memory: dict[str, MemoryStats]) -> dict[str, tuple]:
    return {phase: (m.peak_bytes, m.min_bytes, m.max_bytes, m.runs, m.method) for phase, m in memory.items()}


@pytest.mark.parametrize("convert", [str, parse_cell], ids=["raw-strings", "typed"])
@pytest.mark.parametrize("backward", [False, True])
def test_from_row_rebuilds_latency_and_memory(convert, backward):
    record = make_record(backward)
    _, (row,) = csv_rows(make_report(record))
    rebuilt = Record.from_row({k: convert(v) for k, v in row.items()})
    assert rebuilt.latency == record.latency
    assert peaks(rebuilt.memory) == peaks(record.memory)
    assert rebuilt.memory["fwd"] == record.memory["fwd"]
    assert rebuilt.key() == record.key()
    assert rebuilt.kind == "layer"
    assert rebuilt.error is None


def test_from_row_keeps_the_fwd_bwd_resident_bytes():
    record = make_record(backward=True)
    _, (row,) = csv_rows(make_report(record))
    rebuilt = Record.from_row({k: parse_cell(v) for k, v in row.items()})
    assert rebuilt.memory["fwd_bwd"] == record.memory["fwd_bwd"]


def test_from_row_typed_keeps_config_and_exact_figures():
    record = make_record()
    _, (row,) = csv_rows(make_report(record))
    rebuilt = Record.from_row({k: parse_cell(v) for k, v in row.items()})
    assert rebuilt.config == record.config
    for column in ("params", "fwd_MACs", "exact_MACs", "fwd_exps"):
        assert rebuilt.exact_figures()[column] == record.exact_figures()[column]


def test_from_row_of_a_failed_record():
    record = Record(kind="layer", name="broken", config=make_record().config,
                    error="RuntimeError: out of memory")
    _, (row,) = csv_rows(make_report(record))
    rebuilt = Record.from_row(row)
    assert rebuilt.error == "RuntimeError: out of memory"
    assert rebuilt.latency == {}
    assert rebuilt.memory == {}


# ---- JSON -------------------------------------------------------------------------------


def test_json_has_schema_environment_and_records():
    data = json.loads(render_json(make_report(make_record(backward=True))))
    assert data["schema"] == SCHEMA == "lrprof.report/2"
    assert data["command"] == "layer"
    assert data["argv"] == ["layer", "--k", "3"]
    env = data["environment"]
    assert (env["torch_version"], env["lrprof_version"], env["device_name"]) == (
        "9.9.9", "0.1.0", "Test CPU")
    (rec,) = data["records"]
    assert set(rec["latency"]) == {"fwd", "fwd_bwd"}
    assert rec["latency"]["fwd"]["runs"] == 4
    assert rec["memory"]["fwd_bwd"]["peak_bytes"] == 73544


def test_report_from_dict_round_trips():
    report = make_report(make_record(backward=True), make_record())
    text = render_json(report)
    rebuilt = Report.from_dict(json.loads(text))
    assert rebuilt.records == report.records
    assert rebuilt.environment == report.environment
    assert rebuilt.created == report.created
    assert render_json(rebuilt) == text


# ---- rendering ---------------------------------------------------------------------------


def test_markdown_has_environment_command_and_sections():
    md = render_markdown(make_report(make_record()))
    assert md.startswith("# lrprof layer")
    assert "torch 9.9.9, lrprof 0.1.0" in md
    assert "`lrprof layer --k 3`" in md
    assert "## Model check" in md
    assert "## Memory" in md
    assert "11,976" in md


def test_terminal_table_shows_layer_and_verdict():
    record = make_record()
    report = make_report(record)
    text = render_terminal(report)
    assert text.startswith("lrprof layer - Test CPU (cpu, 2 threads), torch 9.9.9")
    assert "lr[unfold] k=3 m=4" in text
    assert "0.27 [0.18-0.36]" in text  # two significant digits of the 0.18 ms IQR
    assert "ok" in text.split("Model check")[1]


@pytest.mark.parametrize(
    "value,text",
    [(None, ""), (True, "yes"), (False, "no"), (1234567, "1,234,567"), (0.5, "0.500"),
     (2.5e7, "25,000,000"), (28349440.4, "28,349,440"), ("x", "x"), (20800.0, "20,800"),
     (12.345, "12.3"), (0.957, "0.957"), (1.5e-7, "1.50e-7"), (float("nan"), "n/a"), (0.0, "0")],
)
def test_fmt(value, text):
    assert fmt(value) == text


# ---- writing ------------------------------------------------------------------------------


def test_write_report_with_out_uses_stable_names(tmp_path):
    report = make_report(make_record())
    paths = report_paths("layer", tmp_path)
    assert paths == {f: tmp_path / f"layer.{f}" for f in ("md", "csv", "json")}
    written = write_report(report, paths)
    assert sorted(p.name for p in written) == ["layer.csv", "layer.json", "layer.md"]
    assert sorted(os.listdir(tmp_path)) == ["layer.csv", "layer.json", "layer.md"]  # no temp files
    assert (tmp_path / "layer.csv").read_text() == render_csv(report)
    assert json.loads((tmp_path / "layer.json").read_text())["schema"] == SCHEMA


def test_report_paths_without_out_are_timestamped(tmp_path):
    paths = report_paths("layer", None, default_dir=tmp_path / "reports")
    assert set(paths) == {"md", "csv", "json"}
    stems = {p.stem for p in paths.values()}
    assert len(stems) == 1
    assert re.fullmatch(r"layer-\d{8}-\d{6}", stems.pop())
    assert all(p.parent == tmp_path / "reports" and p.suffix == f".{f}" for f, p in paths.items())


def test_write_atomic_creates_parents_and_replaces(tmp_path):
    target = tmp_path / "a" / "b" / "r.md"
    write_atomic(target, "one")
    write_atomic(target, "two")
    assert target.read_text() == "two"
    assert os.listdir(target.parent) == ["r.md"]


def test_write_atomic_failure_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "r.md"
    write_atomic(target, "old")

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(report_mod.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, "new")
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["r.md"]


def test_check_writable_creates_directory_and_leaves_nothing(tmp_path):
    directory = tmp_path / "new" / "dir"
    check_writable(directory)
    assert directory.is_dir()
    assert os.listdir(directory) == []


def test_check_writable_under_a_regular_file(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(SpecError) as info:
        check_writable(blocker / "sub")
    assert info.value.param == "out"


class _FrozenClock(datetime):
    @classmethod
    def now(cls, tz=None):
        return cls(2030, 1, 2, 3, 4, 5, 678901, tzinfo=tz)


def test_timestamped_reports_of_two_runs_in_one_second_both_survive(tmp_path, monkeypatch):
    monkeypatch.setattr(report_mod, "_dt", types.SimpleNamespace(datetime=_FrozenClock))
    default_dir = tmp_path / "reports"
    first = report_paths("layer", None, default_dir=default_dir)
    write_report(make_report(make_record()), first)
    second = report_paths("layer", None, default_dir=default_dir)
    assert not set(first.values()) & set(second.values())


# ---- the terminal view -------------------------------------------------------------------


def wide_report() -> Report:
    base = make_record(backward=True)
    base.derived.update({"role": "baseline"})
    row = make_record(backward=True)
    row.name = "lr[unfold] k=3 m=4 s=1 C=8 8x8 B=1 phi=sqdiff geometry_hidden=2 a long name"
    row.derived.update({"role": "measured", "baseline": base.name, "fwd_latency_vs_baseline": 12.5,
                        "fwd_bwd_latency_vs_baseline": 7.25, "fwd_peak_vs_baseline": 3.5})
    row.checks["verdict"] = "does 2.31x the minimal MACs; O-model off: ratio 1.7 outside 0.5-1.1"
    return make_report(row, base)


@pytest.mark.parametrize("width", [80, 200])
def test_terminal_view_fits_the_width(width):
    text = render_terminal(wide_report(), width=width)
    too_wide = [line for line in text.splitlines() if len(line) > width]
    assert too_wide == []
    layers = text.split("Model check")[0]
    first = ("fwd ms", "fwd+bwd ms", "fwd time /", "verdict")  # what even 80 columns keep
    for essential in first + (("fwd MACs", "fwd peak") if width == 200 else ()):
        assert essential in layers, essential
    assert "12.5" in layers  # the ratio to the baseline


def test_a_wider_terminal_shows_more_and_the_rest_is_named():
    narrow = render_terminal(wide_report(), width=80)
    wide = render_terminal(wide_report(), width=200)
    assert "more columns in the markdown and CSV" in narrow
    first_row = [text.split("Model check")[0].splitlines()[-3] for text in (narrow, wide)]
    assert len(first_row[0]) < len(first_row[1])
    assert "output error" not in narrow.split("Model check")[0]  # not essential: left to the files
    markdown = render_markdown(wide_report())
    assert "output error" in markdown and "fwd GMAC/s" in markdown  # the markdown keeps every column
    assert "- **work ratio**: counted MACs / the operator's exact minimal MACs" in markdown  # legend


def test_numbers_are_never_cut_to_fit():
    text = render_terminal(wide_report(), width=80)
    assert "11,976" in text and "…" in text  # names are shortened, counts are whole
