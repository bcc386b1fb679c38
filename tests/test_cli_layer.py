"""`lrprof layer` end to end: the table, the three report files, bad input, the model check
and the stock counters for the default shape."""

import contextlib
import csv
import io
import json
import os
import re
import subprocess
import sys
import types

import pytest
import torch

import lrprof
from lrprof.cli import main
from lrprof.measure.memory import CPU_METHOD, CUDA_METHOD
from lrprof.measure.timing import TimingOptions
from lrprof.profile.layer import profile_layer
from lrprof.record.records import SCHEMA, Record, Report, parse_cell
from lrprof.report import render_csv, render_terminal
from lrprof.report.layer import layer_report
from lrprof.spec.layer import LayerSpec
from lrprof.spec.options import MeasureOptions

# --impl unfold: these tests are about the command, not about which implementation auto takes
SMALL = {"channels": "8", "size": "8", "k": "3", "m": "4", "min-time": "0.05", "min-runs": "3",
         "device": "cpu", "impl": "unfold"}
SHORT_TIMING = TimingOptions(min_runs=3, min_time_s=0.05, warmup=1, warmup_s=0)
FILES = ["layer-rows.png", "layer.csv", "layer.json", "layer.md"]
LATENCY = ["median_ms", "q1_ms", "q3_ms", "min_ms", "max_ms", "runs", "calls_per_run"]
MEMORY = ["peak_bytes", "peak_min_bytes", "peak_max_bytes", "memory_runs"]
REQUIRED_COLUMNS = [
    "fwd_median_ms", "fwd_q1_ms", "fwd_q3_ms", "fwd_runs", "fwd_peak_bytes", "fwd_bwd_median_ms",
    "fwd_bwd_peak_bytes", "fwd_MACs", "exact_MACs", "paper_O_MACs", "params", "threads",
    "verdict", "counted_over_paper_O", "paper_O_band", "timing_method", "memory_method",
    "device_name", "torch_version", "lrprof_version",
]


def layer_args(out=None, *flags: str, **options: str) -> list[str]:
    """`layer` with the small configuration, `options` (k="5") overriding it."""
    merged = {**SMALL, **{k.replace("_", "-"): v for k, v in options.items()}}
    args = ["layer", "--no-stock", *flags]
    for name, value in merged.items():
        args += [f"--{name}", value]
    if out is not None:
        args += ["--out", str(out)]
    return args



@contextlib.contextmanager
def torch_threads(n: int):
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def run_in_process(args: list[str], threads: int = 2) -> types.SimpleNamespace:
    out, err = io.StringIO(), io.StringIO()
    saved_argv = sys.argv
    sys.argv = ["lrprof"]  # what main() is *not* given; see test_report_records_the_argv_given
    try:
        with torch_threads(threads), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(args)
    finally:
        sys.argv = saved_argv
    return types.SimpleNamespace(rc=rc, out=out.getvalue(), err=err.getvalue(), args=args)


def read_reports(run: types.SimpleNamespace, directory) -> types.SimpleNamespace:
    with open(directory / "layer.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        run.columns = list(reader.fieldnames or [])
        run.rows = list(reader)
    run.json = json.loads((directory / "layer.json").read_text())
    run.md = (directory / "layer.md").read_text()
    run.dir = directory
    return run


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    """Forward only, timed on 1 thread while torch is set to 2."""
    out = tmp_path_factory.mktemp("plain") / "out"
    run = run_in_process(layer_args(out, threads="1"), threads=2)
    return read_reports(run, out)


@pytest.fixture(scope="module")
def backward_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("backward") / "out"
    run = run_in_process(layer_args(out, "--backward"))
    return read_reports(run, out)


# ---- a successful run ---------------------------------------------------------------------


PROGRESS = re.compile(r"^(lrprof layer: \d+ steps|\[\s*\d+/\d+\] (ok|FAILED) |done: \d+/\d+ steps)")


def not_progress(err: str) -> list[str]:
    """stderr lines other than progress (which appears once a run passes 2 s)."""
    return [line for line in err.splitlines() if not PROGRESS.match(line)]


def test_layer_prints_table_and_writes_three_stable_files(plain_run):
    assert plain_run.rc == 0
    assert not_progress(plain_run.err) == []
    for title in ("Layer", "Model check", "What stock counters see"):
        assert title in plain_run.out
    assert "lr[unfold] k=3 m=4 s=1 C=8 8x8 B=1" in plain_run.out
    wrote = [line for line in plain_run.out.splitlines() if line.startswith("wrote ")]
    files = [plain_run.dir / f"layer.{f}" for f in ("md", "csv", "json")] + [plain_run.dir / "layer-rows.png"]
    assert wrote == ["wrote " + ", ".join(map(str, files))]
    assert sorted(os.listdir(plain_run.dir)) == FILES  # atomic writes leave no temp/probe files


def test_layer_csv_columns_and_forward_figures(plain_run):
    assert [c for c in REQUIRED_COLUMNS if c not in plain_run.columns] == []
    row, baseline = plain_run.rows
    assert (baseline["op"], baseline["k"], baseline["role"]) == ("conv", "3", "baseline")
    assert float(row["fwd_latency_vs_baseline"]) == pytest.approx(
        float(row["fwd_median_ms"]) / float(baseline["fwd_median_ms"]))
    assert float(row["fwd_median_ms"]) > 0
    assert float(row["fwd_q1_ms"]) <= float(row["fwd_median_ms"]) <= float(row["fwd_q3_ms"])
    assert int(row["fwd_runs"]) >= 2
    assert int(row["fwd_peak_bytes"]) > 0
    assert int(row["fwd_memory_runs"]) == 3
    assert int(row["params"]) == 108
    assert row["threads"] == "1"
    assert "interleaved" in row["timing_method"]
    assert len(row["fwd_samples_ms"].split()) == int(row["fwd_runs"])  # raw runs kept
    assert row["memory_method"] == CPU_METHOD
    assert row["device"] == "cpu"
    assert row["error"] == ""


def test_layer_without_backward_leaves_fwd_bwd_empty(plain_run):
    row = plain_run.rows[0]
    for column in [f"fwd_bwd_{c}" for c in LATENCY + MEMORY]:
        assert row[column] == "", column
    assert set(plain_run.json["records"][0]["latency"]) == {"fwd"}
    assert set(plain_run.json["records"][0]["memory"]) == {"fwd"}


def test_layer_model_check_row(plain_run):
    row = plain_run.rows[0]
    assert row["fwd_MACs"] == row["exact_MACs"] == "11976"
    assert row["exact_match"] == "True"
    assert row["verdict"] == "ok"
    low, high = (float(x) for x in row["paper_O_band"].split("-"))
    assert low <= float(row["counted_over_paper_O"]) <= high
    assert row["paper_O_within_band"] == "True"
    assert row["fwd_exps"] == row["exact_exps"]


def test_layer_json_schema_environment_and_round_trip(plain_run):
    data = plain_run.json
    assert data["schema"] == SCHEMA
    assert data["command"] == "layer"
    env = data["environment"]
    assert env["torch_version"] == torch.__version__
    assert env["lrprof_version"] == lrprof.__version__
    assert env["device_name"]
    assert [r["derived"]["role"] for r in data["records"]] == ["measured", "baseline"]
    report = Report.from_dict(data)
    assert report.to_dict() == data
    assert render_csv(report) == (plain_run.dir / "layer.csv").read_text()
    assert "# lrprof layer" in plain_run.md and "## Model check" in plain_run.md


def test_layer_backward_fills_fwd_bwd(backward_run):
    assert backward_run.rc == 0
    assert "fwd+bwd ms" in backward_run.out  # the terminal wraps long headers
    assert "fwd+bwd ms, median [IQR]" in backward_run.md and "fwd+bwd runs" in backward_run.md
    row = backward_run.rows[0]
    for column in [f"fwd_bwd_{c}" for c in LATENCY + MEMORY]:
        assert row[column] != "", column
    assert float(row["fwd_bwd_median_ms"]) > 0
    assert int(row["fwd_bwd_runs"]) >= 2
    assert int(row["fwd_bwd_peak_bytes"]) > 0
    assert row["verdict"] == "ok"
    assert row["fwd_MACs"] == row["exact_MACs"]
    record = backward_run.json["records"][0]
    assert set(record["latency"]) == set(record["memory"]) == {"fwd", "fwd_bwd"}


def test_csv_row_rebuilds_the_json_record(backward_run):
    row = backward_run.rows[0]
    from_csv = Record.from_row({k: parse_cell(v) for k, v in row.items()})
    from_json = Report.from_dict(backward_run.json).records[0]
    assert from_csv.latency == from_json.latency
    assert from_csv.memory == from_json.memory
    for phase in ("fwd", "fwd_bwd"):
        a, b = from_csv.memory[phase], from_json.memory[phase]
        assert (a.peak_bytes, a.min_bytes, a.max_bytes, a.runs, a.method) == (
            b.peak_bytes, b.min_bytes, b.max_bytes, b.runs, b.method)
    assert from_csv.key() == from_json.key()
    assert from_csv.config == from_json.config
    for column in ("params", "fwd_MACs", "exact_MACs", "fwd_exps"):
        assert from_csv.exact_figures()[column] == from_json.exact_figures()[column]


def test_baseline_none_measures_only_the_asked_rows(tmp_path):
    run = read_reports(run_in_process(layer_args(tmp_path / "out", baseline="none")), tmp_path / "out")
    assert run.rc == 0
    (row,) = run.rows
    assert row["role"] == "measured" and "fwd_latency_vs_baseline" not in run.columns


def test_one_baseline_per_shape_with_the_rows_stride(tmp_path):
    run = read_reports(run_in_process(layer_args(tmp_path / "out", size="8,6", stride="2")),
                       tmp_path / "out")
    assert run.rc == 0, run.err
    measured = [r for r in run.rows if r["role"] == "measured"]
    baselines = [r for r in run.rows if r["role"] == "baseline"]
    assert [(r["height"], r["stride"]) for r in measured] == [("8", "2"), ("6", "2")]
    assert [(r["op"], r["k"], r["height"], r["stride"]) for r in baselines] == [
        ("conv", "3", "8", "2"), ("conv", "3", "6", "2")]
    for row, base in zip(measured, baselines, strict=True):
        assert row["baseline"] == base["name"]


def test_layer_without_out_writes_timestamped_reports(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = run_in_process(layer_args(None, "--quiet"))
    assert run.rc == 0
    assert len(run.out.splitlines()) == 1 and run.out.startswith("wrote reports/layer-")
    names = sorted(os.listdir(tmp_path / "reports"))
    assert len(names) == 4
    assert all(re.fullmatch(r"layer-\d{8}-\d{6}(\.(csv|json|md)|-rows\.png)", n) for n in names), names
    assert len({n.rsplit(".", 1)[0].removesuffix("-rows") for n in names}) == 1


def test_report_records_the_argv_given(plain_run):
    assert plain_run.json["argv"] == plain_run.args


def test_report_thread_note_matches_timing_threads(plain_run):
    assert plain_run.rows[0]["threads"] == "1"
    assert "CPU timings ran on 1 torch thread." in plain_run.json["notes"]


# ---- bad input: one line, the parameter and what it allows, status 2 ----------------------

BAD = [
    ({"k": "4"}, "--k", "odd"),
    ({"k": "0"}, "--k", "odd"),
    ({"k": "-3"}, "--k", "odd"),
    ({"k": "abc"}, "--k", "integer"),
    ({"m": "0"}, "--m", "1..8"),
    ({"m": "9"}, "--m", "1..8"),
    ({"stride": "0"}, "--stride", "1..3"),
    ({"stride": "4"}, "--stride", "1..3"),
    ({"size": "0"}, "--size", "positive integer"),
    ({"size": "8x0"}, "--size", "positive integer"),
    ({"size": "-8"}, "--size", "positive integer"),
    ({"size": "big"}, "--size", "positive integer"),
    ({"channels": "0"}, "--channels", ">= 1"),
    ({"channels": "-4"}, "--channels", ">= 1"),
    ({"batch": "0"}, "--batch", ">= 1"),
    ({"phi": "cosine"}, "--phi", "sqdiff, absdiff, mul"),
    ({"dtype": "float8"}, "--dtype", "float32"),
    ({"op": "nosuch"}, "--op", "lr"),
    ({"impl": "cuda"}, "--impl", "unfold"),
    ({"device": "tpu"}, "--device", "cpu"),
    ({"geometry-hidden": "0"}, "--geometry-hidden", ">= 1"),
    ({"min-runs": "1"}, "--min-runs", ">= 2"),
    ({"min-time": "0"}, "--min-time", "> 0"),
    ({"threads": "0"}, "--threads", ">= 1"),
]


def assert_usage_error(rc: int, out: str, err: str, param: str, allowed: str) -> None:
    assert rc == 2
    assert "Traceback" not in out + err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert param in lines[0]
    assert allowed in lines[0]


BAD_IDS = [f"{param}={value}" for (options, param, _) in BAD for value in options.values()]


@pytest.mark.parametrize("options,param,allowed", BAD, ids=BAD_IDS)
def test_bad_input(options, param, allowed, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(layer_args(out, **options))
    captured = capsys.readouterr()
    assert_usage_error(rc, captured.out, captured.err, param, allowed)
    assert captured.out == ""
    assert not out.exists()  # rejected before anything is measured or written


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present")
def test_cuda_device_without_cuda(tmp_path, capsys):
    rc = main(layer_args(tmp_path / "out", device="cuda"))
    captured = capsys.readouterr()
    assert_usage_error(rc, captured.out, captured.err, "--device", "cpu")
    assert "not available" in captured.err


def test_unwritable_out(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a directory")
    rc = main(layer_args(blocker / "sub"))
    captured = capsys.readouterr()
    assert_usage_error(rc, captured.out, captured.err, "--out", "directory")
    assert blocker.read_text() == "not a directory"


@pytest.mark.parametrize("k,allowed", [("4", "odd"), ("abc", "integer")])
def test_console_bad_input_prints_one_line_no_traceback(k, allowed, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "lrprof", *layer_args(tmp_path / "out", k=k)],
        capture_output=True, text=True, cwd=tmp_path, timeout=120, check=False,
    )
    assert_usage_error(result.returncode, result.stdout, result.stderr, "--k", allowed)
    assert not (tmp_path / "out").exists()


# ---- the default shape: model check and stock counters -------------------------------------


@pytest.fixture(scope="module")
def default_record():
    with torch_threads(min(torch.get_num_threads(), 2)):
        return profile_layer(LayerSpec(device="cpu"), MeasureOptions(timing=SHORT_TIMING, memory_runs=1))


def test_default_shape_model_check(default_record):
    r = default_record
    assert r.error is None
    assert r.config["k"] == 7 and r.config["m"] == 8 and r.config["channels"] == 64
    assert r.counted["fwd_MACs"] == r.model["exact_MACs"] == 27_124_048
    assert r.counted["fwd_exps"] == r.model["exact_exps"]
    assert r.counted["params"] == 5216
    assert r.checks["verdict"] == "ok"
    assert r.checks["uncounted_ops"] == "none"
    low, high = (float(x) for x in r.checks["paper_O_band"].split("-"))
    assert low <= r.checks["counted_over_paper_O"] <= high
    ratio = r.counted["fwd_MACs"] / r.model["paper_O_MACs"]
    assert ratio == pytest.approx(r.checks["counted_over_paper_O"])


def test_default_shape_stock_counters_beside_ours(default_record):
    """Like for like, by op family: where a stock counter counts, it agrees with us; what it
    misses is the elementwise work of the relation (40.8% of the layer)."""
    r = default_record
    assert r.counted["fvcore_stock_MACs"] == 16_060_240
    assert r.counted["torch_flopcounter_FLOPs"] == 2 * 16_060_240
    missed = 100 * (1 - 16_060_240 / 27_124_048)
    assert r.checks["fvcore_missed_pct"] == pytest.approx(missed)
    assert r.checks["flopcounter_missed_pct"] == pytest.approx(missed)
    assert "aten::im2col" in r.detail["stock"]["fvcore_skipped"]
    report = layer_report([r], ["layer"])
    (stock,) = [s for s in report.sections if s.title.startswith("What stock counters see")]
    rows = {row["op family"]: row for row in stock.rows}
    conv = rows["convolution"]
    assert conv["lrprof MACs"] == conv["fvcore MACs"] == conv["FlopCounterMode MACs (FLOPs/2)"] == 16_060_240
    elementwise = rows["elementwise multiply"]
    assert elementwise["lrprof MACs"] == 27_124_048 - 16_060_240
    assert elementwise["fvcore MACs"] == elementwise["FlopCounterMode MACs (FLOPs/2)"] == 0
    text = render_terminal(report)
    for figure in ("27,124,048", "16,060,240", "32,120,480 FLOPs", "misses 40.8%"):
        assert figure in text
    csv_row = report.rows()[0]
    assert csv_row["fvcore_stock_MACs"] == 16_060_240
    assert csv_row["torch_flopcounter_FLOPs"] == 32_120_480


def test_default_shape_measured_on_cpu(default_record):
    fwd = default_record.latency["fwd"]
    assert set(default_record.latency) == {"fwd"}  # no backward asked
    assert fwd.runs >= 2 and fwd.median_ms > 0
    mem = default_record.memory["fwd"]
    assert mem.method == CPU_METHOD
    # the unfold implementation must at least hold the k^2 windows of x (float32)
    assert mem.peak_bytes >= 64 * 49 * 56 * 56 * 4


# ---- CUDA ------------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_profile_layer_on_cuda_with_backward(dtype):
    spec = LayerSpec(channels=16, height=16, width=16, k=5, m=4, dtype=dtype, device="cuda")
    options = MeasureOptions(backward=True, timing=SHORT_TIMING, stock_counters=False)
    record = profile_layer(spec, options)
    assert record.error is None
    assert record.config["device"] == "cuda"
    assert record.config["dtype"] == dtype
    assert record.counted["fwd_MACs"] == record.model["exact_MACs"]
    assert record.checks["verdict"] == "ok"
    for phase in ("fwd", "fwd_bwd"):
        assert record.latency[phase].method.startswith("CUDA events")
        assert record.latency[phase].runs == SHORT_TIMING.min_runs
        assert record.memory[phase].method == CUDA_METHOD
        assert record.memory[phase].peak_bytes > 0
    (row,) = layer_report([record], ["layer"]).rows()
    assert row["memory_method"] == CUDA_METHOD
    assert row["fwd_bwd_median_ms"] is not None


def test_progress_on_a_non_terminal_is_plain_lines_and_quiet_silences_it(tmp_path, monkeypatch):
    import lrprof.cli.layer as cli_layer

    monkeypatch.setattr(cli_layer, "PROGRESS_DELAY_S", 0.0)  # at once, not after 2 s
    run = run_in_process(layer_args(tmp_path / "shown"))
    assert run.rc == 0
    lines = run.err.splitlines()
    # 2 rows prepared, 1 timing, 2 memory, 1 per-op profile of both rows
    assert lines[0].startswith("lrprof layer: 6 steps")
    assert any(line.startswith("[3/6] ok timing 2 rows interleaved") for line in lines)
    assert any(line.startswith("[6/6] ok where the time goes") for line in lines)
    assert lines[-1].startswith("done: 6/6 steps") and "ETA" in lines[-1]
    assert "\x1b[" not in run.err  # no terminal escapes in a log
    quiet = run_in_process(layer_args(tmp_path / "quiet", "--quiet"))
    assert quiet.rc == 0 and quiet.err == ""
