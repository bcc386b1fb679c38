"""`lrprof sweep` and `lrprof merge`: grids with ranges and invalid combinations, shards that
partition the grid, merged shards equal to one run, resume after SIGKILL, failures isolated
per row (a worker process replaced after a crash, a hang or a broken context), the Slurm
path through submitit's local executor, progress on a non-terminal stream, fits, plots."""

from __future__ import annotations

import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lrprof.build.grid import config_key, expand_list, layer_grid
from lrprof.build.ops import unregister_op
from lrprof.cli import main
from lrprof.measure.device import collect
from lrprof.measure.timing import Stats, TimingOptions
from lrprof.profile.progress import Progress
from lrprof.record.records import Record
from lrprof.spec.errors import InputError, SpecError
from lrprof.spec.options import MeasureOptions
from lrprof.sweep.merge import merge_rows
from lrprof.sweep.run import Shard, SweepConfig, estimated_cost, plan_sweep, run_sweep, shard_indices
from lrprof.sweep.store import RowLine, RowWriter, read_rows

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
FAST = MeasureOptions(timing=TimingOptions(min_runs=2, min_time_s=0.005, warmup=1, warmup_s=0),
                      memory_runs=1, stock_counters=False, baseline=False)
TINY = ["--channels", "4", "--size", "6", "--min-runs", "2", "--min-time", "0.005", "--warmup", "1",
        "--baseline", "none", "--device", "cpu", "--no-plots"]


@pytest.fixture
def faulty():
    """The operator that fails on purpose (tests/sweep_faulty.py), unregistered afterwards."""
    sys.path.insert(0, str(TESTS)) if str(TESTS) not in sys.path else None
    import sweep_faulty

    sweep_faulty.register()
    yield sweep_faulty
    unregister_op("faulty")


def _env_with_paths() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(TESTS), env.get("PYTHONPATH", "")])
    return env


def _row_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if '"type":"row"' in line]


# ---- grid -----------------------------------------------------------------------------------


def test_ranges_expand_with_the_stop_included():
    assert expand_list("3:11:2", "k") == [3, 5, 7, 9, 11]
    assert expand_list("1:3,8", "m") == [1, 2, 3, "8"]
    assert expand_list("5:5", "k") == [5]
    for bad in ("5:3", "1:5:0", "a:b", "1:2:3:4", "1.5:3"):
        with pytest.raises(SpecError) as info:
            expand_list(bad, "k")
        assert info.value.param == "k"
    grid = layer_grid("lr", {"k": "3:7:2", "m": "1,8"}, channels="16,32", size="8:10:2")
    assert len(grid.specs) == 3 * 2 * 2 * 2


def test_invalid_combinations_are_listed_and_skipped_not_fatal(capsys):
    plan = plan_sweep(SweepConfig(ops="lr", params={"k": "1,3", "stride": "1,2", "m": "2,8"},
                                  channels="4,8", size="6", device="cpu"))
    # stride <= k: k=1 with stride 2 fails; m <= channels: m=8 fails with 4 channels
    reasons = [i.reason for i in plan.invalid]
    assert sum(r.startswith("m:") for r in reasons) == 4  # C=4, m=8: k x stride
    assert sum(r.startswith("stride:") for r in reasons) == 3  # k=1, s=2, the other (m, C)
    assert len(plan.specs) == 16 - 7
    assert all(not (s.param("k") == 1 and s.param("stride") == 2) for s in plan.specs)
    # layer still refuses such a combination outright
    assert main(["layer", "--k", "1", "--stride", "2", "--channels", "4", "--size", "6"]) == 2
    capsys.readouterr()
    grid = ["--k", "1,3", "--stride", "1,2", "--m", "2,8"]
    assert main(["sweep", "--op", "lr", *grid, *TINY, "--channels", "4,8", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "grid: 9 rows" in out and "7 invalid combination(s) skipped" in out
    assert "k=1 m=2 s=2 C=4 6x6 B=1: stride: must be an integer in 1..1 (got 2)" in out


def test_a_value_no_row_can_take_is_bad_input(capsys):
    """An even k or an unknown phi fails in every combination: exit 2 naming it, as `layer`."""
    assert main(["sweep", "--op", "lr", "--k", "2,3", "--m", "2", *TINY, "--dry-run"]) == 2
    assert capsys.readouterr().err.strip() == "lrprof: error: --k: must be an odd integer in 1..13 (got 2)"
    assert main(["sweep", "--op", "lr", "--k", "3", "--m", "2", "--phi", "mul,dot", *TINY]) == 2
    assert capsys.readouterr().err.startswith("lrprof: error: --phi: one of sqdiff, absdiff, mul")
    # m=8 is fine with 8 channels, not with 4: a combination, listed and skipped
    assert main(["sweep", "--op", "lr", "--m", "8", *TINY[2:], "--channels", "4,8", "--dry-run"]) == 0
    assert "1 invalid combination(s) skipped" in capsys.readouterr().out
    assert main(["sweep", "--op", "lr", "--k", "3:1", *TINY, "--dry-run"]) == 2
    assert "--k" in capsys.readouterr().err
    assert main(["sweep", "--op", "lr", "--shard", "3/2", *TINY, "--dry-run"]) == 2
    assert "--shard" in capsys.readouterr().err


# ---- shards ---------------------------------------------------------------------------------


def test_shards_partition_the_grid_exactly_and_evenly():
    plan = plan_sweep(SweepConfig(ops="lr,conv", params={"k": "1:9:2", "m": "1,4"}, channels="8,16",
                                  size="8,16", device="cpu"))
    specs = plan.specs
    assert len(specs) > 40
    for count in (1, 2, 3, 7):
        parts = [shard_indices(specs, Shard(i, count)) for i in range(1, count + 1)]
        flat = sorted(i for part in parts for i in part)
        assert flat == list(range(len(specs)))  # every row once
        sizes = [len(p) for p in parts]
        assert max(sizes) - min(sizes) <= 1
        assert parts == [shard_indices(specs, Shard(i, count)) for i in range(1, count + 1)]
        if count <= 3:  # balanced in estimated cost too
            costs = [sum(estimated_cost(specs[i]) for i in p) for p in parts]
            assert max(costs) <= 1.5 * min(costs)


def test_a_shard_must_name_a_slice():
    assert Shard.parse("2/8") == Shard(2, 8)
    for bad in ("0/2", "3/2", "2", "a/b", "1/0"):
        with pytest.raises(SpecError):
            Shard.parse(bad)


# ---- runs, merge, resume --------------------------------------------------------------------


def _config(**kw) -> SweepConfig:
    base = dict(ops="lr", params={"k": "1,3", "m": "1,2"}, channels="4", size="6", device="cpu",
                options=FAST, threads=1, isolate=False)
    base.update(kw)
    return SweepConfig(**base)


def _exact(records: list[Record]) -> dict[str, tuple]:
    return {config_key(r.config): (r.counted.get("fwd_MACs"), r.counted.get("params"),
                                   r.model.get("exact_MACs"))
            for r in records}


def test_merged_shards_equal_one_unsharded_run(tmp_path):
    config = _config()
    whole = run_sweep(config, tmp_path / "whole", quiet=True)
    assert whole.measured == 4 and whole.failed == 0
    for index in (1, 2):
        run_sweep(config, tmp_path / "shards", Shard(index, 2), quiet=True)
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == [
        "rows-shard-1-of-2.jsonl", "rows-shard-2-of-2.jsonl"]
    one = merge_rows([whole.path])
    both = merge_rows([tmp_path / "shards"])
    assert both.missing == [] and both.duplicates == [] and both.grid_size == 4
    assert [r.config for r in both.records] == [r.config for r in one.records]  # grid order
    assert _exact(both.records) == _exact(one.records)
    # k=1 m=1 C=4 6x6: the exact model, counted (a figure computed here, not read back)
    k1 = next(r for r in both.records if r.config["k"] == 1 and r.config["m"] == 1)
    c, g, hw = 4, 4, 36
    assert k1.model["exact_MACs"] == c * g * hw * 2 + g * hw + c * hw + c * c * hw + 1 * g * (2 + g)
    assert k1.counted["fwd_MACs"] >= k1.model["exact_MACs"]
    # one shard alone: the other's rows are missing, by name
    half = merge_rows([tmp_path / "shards" / "rows-shard-1-of-2.jsonl"])
    assert len(half.missing) == 4 - len(half.records) > 0
    assert any("no file for shard(s) 2/2" in w for w in half.warnings)


def test_the_cli_writes_rows_report_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["sweep", "--op", "lr", "--k", "1,3", "--m", "2", *TINY, "--in-process", "--quiet",
            "--out", str(out)]
    assert main(args) == 0
    md = (out / "sweep.md").read_text()
    fits_at = md.index("## Fits: counted MACs vs the published O-model")
    assert fits_at < md.index("## Sweep") < md.index("## Rows")
    data = json.loads((out / "sweep.json").read_text())
    assert len(data["records"]) == 2 and data["command"] == "sweep"
    assert "fwd_MACs" in (out / "sweep.csv").read_text().splitlines()[0]
    capsys.readouterr()
    assert main(args) == 2  # the rows file exists: --resume or another --out
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--resume" in err[0]
    assert main([*args, "--resume"]) == 0  # nothing left to measure
    assert len(_row_lines(out / "rows.jsonl")) == 2


def test_resume_after_sigkill_measures_no_row_twice_and_loses_none(tmp_path, faulty):
    out = tmp_path / "killed"
    rows = out / "rows.jsonl"
    args = [sys.executable, "-m", "lrprof", "sweep", "--import", "sweep_faulty", "--op", "faulty",
            "--param", "mode=slow", "--channels", "1:8", "--size", "4", "--min-runs", "2",
            "--min-time", "0.005", "--warmup", "1", "--baseline", "none", "--device", "cpu",
            "--threads", "1", "--no-plots", "--out", str(out)]
    process = subprocess.Popen(args, cwd=tmp_path, env=_env_with_paths(), start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if rows.exists() and len(_row_lines(rows)) >= 2:
                break
            time.sleep(0.05)
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        os.killpg(process.pid, signal.SIGKILL)  # the sweep and its worker, mid-sweep
    finally:
        process.wait(30)
    before = rows.read_text()
    kept = _row_lines(rows)
    assert 2 <= len(kept) < 8
    # a torn last line, as a kill in the middle of a write leaves it
    with open(rows, "a") as handle:
        handle.write('{"schema":"lrprof.sweep.run/1","type":"row","key":"{\\"op')
    resumed = run_sweep(
        SweepConfig(ops="faulty", params={"mode": "slow"}, channels="1:8", size="4", device="cpu",
                    options=FAST, threads=1, imports=("sweep_faulty",), isolate=False),
        out, resume=True, quiet=True)
    assert resumed.skipped == len(kept) and resumed.measured == 8 - len(kept)
    lines = _row_lines(rows)
    keys = [line["key"] for line in lines]
    assert len(keys) == len(set(keys)) == 8  # none twice, none lost
    assert rows.read_text().startswith(before)  # what was there stays, byte for byte
    assert [line["key"] for line in lines[: len(kept)]] == [line["key"] for line in kept]
    merged = merge_rows([rows])
    assert merged.missing == [] and merged.duplicates == [] and len(merged.records) == 8


def test_a_torn_tail_is_ignored_then_cut(tmp_path):
    path = tmp_path / "rows.jsonl"
    record = Record(kind="layer", name="x", config={"op": "lr", "k": 3})
    with RowWriter(path) as writer:
        writer.header(environment={}, grid={"configs": [record.config]})
        writer.row(RowLine(config_key(record.config), record, 0))
    with open(path, "a") as handle:
        handle.write('{"schema":"lrprof.sweep.run/1","type":"ro')
    contents = read_rows(path)
    assert contents.torn_tail and len(contents.rows) == 1 and not contents.bad_lines
    with RowWriter(path) as writer:
        writer.row(RowLine("other", record, 1))
    contents = read_rows(path)
    assert not contents.torn_tail and not contents.bad_lines and len(contents.rows) == 2


# ---- failures -------------------------------------------------------------------------------


def test_failing_rows_are_recorded_and_the_worker_replaced(tmp_path, faulty):
    """Each way a row can fail, in one sweep, rows in worker processes: the sweep goes on,
    each failure has its reason, and after a crash, a hang or a context-breaking error the
    next row runs in a fresh worker."""
    from lrprof.sweep.worker import CRASHED, ERROR, KERNEL_ERROR, OUT_OF_MEMORY, TIMEOUT

    modes = ["raise", "oom", "cuda", "exit", "hang", "ok"]
    config = SweepConfig(ops="faulty", params={"mode": ",".join(modes)}, channels="2", size="4",
                         device="cpu", options=FAST, threads=1, timeout_s=5.0,
                         imports=("sweep_faulty",), isolate=True)
    stream = io.StringIO()
    run = run_sweep(config, tmp_path, stream=stream)
    assert run.measured == 6 and run.failed == 5 and run.restarts == 3
    lines = _row_lines(tmp_path / "rows.jsonl")
    by_mode = {line["record"]["config"]["mode"]: line for line in lines}
    kinds = {mode: _kind(by_mode[mode]["record"]["error"]) for mode in modes}
    assert kinds == {"raise": ERROR, "oom": OUT_OF_MEMORY, "cuda": KERNEL_ERROR, "exit": CRASHED,
                     "hang": TIMEOUT, "ok": None}
    assert "exit status 3" in by_mode["exit"]["record"]["error"]
    workers = [by_mode[m]["worker"] for m in modes]
    assert workers[0] == workers[1] == workers[2]  # an error and an OOM leave the worker usable
    assert len({workers[2], workers[3], workers[4], workers[5]}) == 4  # replaced after each of those
    ok = by_mode["ok"]["record"]
    assert ok["counted"]["fwd_MACs"] == 2 * 4 * 4 and ok["latency"]["fwd"]["runs"] >= 2
    text = stream.getvalue()
    assert "FAILED faulty[torch] mode=hang" in text and "timeout" in text
    assert "replaced" in text and "died (exit status 3)" in text


def _kind(error):
    from lrprof.sweep.worker import failure_kind

    return failure_kind(error)


# ---- past one machine -----------------------------------------------------------------------


def test_submitit_local_executor_runs_a_two_shard_array_end_to_end(tmp_path, monkeypatch, capsys):
    pytest.importorskip("submitit")
    monkeypatch.setenv("PYTHONPATH", _env_with_paths()["PYTHONPATH"])
    out = tmp_path / "array"
    rc = main(["sweep", "--op", "lr", "--k", "1,3", "--m", "1,2", *TINY, "--threads", "1", "--in-process",
               "--slurm", "--slurm-cluster", "local", "--shards", "2", "--wait", "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "submitted 2 array task(s)" in captured.out
    assert sorted(p.name for p in out.glob("*.jsonl")) == ["rows-shard-1-of-2.jsonl",
                                                           "rows-shard-2-of-2.jsonl"]
    data = json.loads((out / "sweep.json").read_text())
    assert len(data["records"]) == 4
    sweep_rows = {r["what"]: r["value"] for s in data["sections"] if s["title"] == "Sweep" for r in s["rows"]}
    assert sweep_rows["rows missing (no file holds them)"] == 0 and sweep_rows["shards"] == "1/2, 2/2"


# ---- merge's refusals -----------------------------------------------------------------------


def _rows_file(path: Path, env: dict, grid: list[dict], rows: list[Record], shard=(1, 1)) -> None:
    with RowWriter(path) as writer:
        writer.header(environment=env, grid={"configs": grid, "fingerprint": str(len(grid))},
                      shard={"index": shard[0], "count": shard[1]})
        for i, record in enumerate(rows):
            writer.row(RowLine(config_key(record.config), record, i))


def test_merge_refuses_mixed_setups_and_names_missing_and_duplicate_rows(tmp_path, capsys):
    env = collect(__import__("torch").device("cpu")).to_dict()
    grid = [{"op": "lr", "k": k} for k in (1, 3, 5)]
    rec = {k: Record(kind="layer", name=f"k={k}", config={"op": "lr", "k": k}, counted={"fwd_MACs": k})
           for k in (1, 3, 5)}
    failed = Record(kind="layer", name="k=3", config={"op": "lr", "k": 3}, error="timeout: no result")
    _rows_file(tmp_path / "a.jsonl", env, grid, [rec[1], failed], (1, 2))
    _rows_file(tmp_path / "b.jsonl", env, grid, [rec[3], rec[1]], (2, 2))
    merged = merge_rows([tmp_path])
    assert [r.name for r in merged.records] == ["k=1", "k=3"]
    assert merged.records[1].error is None and merged.retried == 1  # the retry replaced the failure
    assert len(merged.missing) == 1 and merged.duplicates[0]["name"] == "k=1"
    assert merged.duplicates[0]["times"] == 2
    other = dict(env, torch_version="0.0.1", device_name="another CPU")
    _rows_file(tmp_path / "c.jsonl", other, grid, [rec[5]])
    with pytest.raises(InputError) as info:
        merge_rows([tmp_path])
    assert "torch_version" in str(info.value) and "device_name" in str(info.value)
    assert merge_rows([tmp_path], allow_mixed=True).missing == []
    assert main(["merge", str(tmp_path), "--no-plots", "--quiet", "--out", str(tmp_path / "r")]) == 2
    assert "--allow-mixed" in capsys.readouterr().err
    (tmp_path / "c.jsonl").unlink()
    assert main(["merge", str(tmp_path), "--no-plots", "--quiet", "--out", str(tmp_path / "r")]) == 1
    assert "missing" in capsys.readouterr().err


# ---- progress -------------------------------------------------------------------------------


def test_progress_writes_plain_lines_on_a_non_terminal_stream():
    stream = io.StringIO()
    with Progress(total=5, what="rows", stream=stream, done=2, title="sweep") as progress:
        progress.start("a")
        progress.advance(True, "a", "1.2 ms")
        progress.advance(False, "b", "timeout: no result")
        progress.message("worker replaced")
        progress.advance(True, "c")
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("sweep: 5 rows, 2 already done")  # and the first item
    assert lines[1].startswith("[3/5] ok a (1.2 ms) | 0 failed | elapsed ")
    assert lines[2].startswith("[4/5] FAILED b (timeout: no result) | 1 failed")
    assert lines[3] == "worker replaced"
    assert "ETA 0:00" in lines[4] and lines[5].startswith("done: 5/5 rows, 1 failed")
    assert "\x1b" not in stream.getvalue()  # no terminal control codes in a log
    quiet = io.StringIO()
    with Progress(total=1, stream=quiet, quiet=True) as progress:
        progress.advance(False, "x")
    assert quiet.getvalue() == ""


def test_eta_is_this_runs_time_per_unit_of_work_times_the_work_left():
    progress = Progress(total=10, stream=io.StringIO(), done=4)
    progress._started -= 6.0  # 6 s in, 2 rows measured this run: 3 s a row, 4 left
    progress.advance(True, "a")
    progress.advance(True, "b")
    assert progress.eta_s() == pytest.approx(12.0, rel=0.05)
    # weighted: 2 of 8 units done in 6 s, 6 units left
    weighted = Progress(total=3, stream=io.StringIO(), total_work=8.0)
    weighted._started -= 6.0
    weighted.advance(True, "a", work=2.0)
    assert weighted.eta_s() == pytest.approx(18.0, rel=0.05)


# ---- fits and plots -------------------------------------------------------------------------


def _synthetic(op: str, impl: str, macs: float, ms: float, noise: float, rng, **config) -> Record:
    samples = tuple(float(ms * math.exp(v)) for v in rng.normal(0, noise, 7))
    stats = Stats.from_times(samples, 1, "synthetic", 2)
    return Record(kind="layer", name=f"{op} {config}", config={"op": op, "impl": impl, "dtype": "float32",
                                                               **config},
                  counted={"fwd_MACs": int(macs)}, model={"paper_O_MACs": macs / 0.8},
                  latency={"fwd": stats})


def test_fits_recover_a_known_power_law_and_name_the_outlier():
    from lrprof.sweep.fits import fit_records

    rng = np.random.default_rng(1)
    records = []
    for i, macs in enumerate(np.geomspace(1e6, 1e9, 12)):
        slow = 3.0 if i == 5 else 1.0  # one row three times slower than the law
        records.append(_synthetic("lr", "unfold", macs, 2e-6 * macs ** 0.8 * slow, 0.02, rng, k=i))
    (fit,) = fit_records(records)
    assert fit.macs_ratio == pytest.approx((0.8, 0.8, 0.8), rel=1e-6)
    assert fit.macs_vs_model.exponent == pytest.approx(1.0, abs=1e-6) and fit.macs_vs_model.r2 > 0.999
    latency = fit.latency_vs_macs
    # the same fit by numpy's polynomial least squares, on the medians
    x = [r.counted["fwd_MACs"] for r in records]
    y = [r.latency["fwd"].median_ms for r in records]
    slope, _ = np.polyfit(np.log(x), np.log(y), 1)
    assert latency.exponent == pytest.approx(slope, rel=1e-9)
    assert 0.7 < latency.exponent < 0.9 and latency.ci[0] < 0.8 < latency.ci[1]
    assert latency.ci[1] - latency.ci[0] < 0.3 and latency.r2 > 0.9
    assert fit.departures[0].name == records[5].name and fit.departures[0].factor > 2


def test_plots_are_written_and_the_crossover_found_where_it_is(tmp_path):
    from lrprof.report.plots import crossovers, plot_bandwidth, sweep_plots
    from lrprof.sweep.fits import fit_records

    rng = np.random.default_rng(2)
    records = []
    for size in (8, 16, 32, 64):
        px = size * size
        for k in (3, 5, 7):
            records.append(_synthetic("lr", "unfold", px * k * k * 100, 1e-3 * px * k, 0.0, rng,
                                      channels=16, height=size, width=size, k=k))
        # a "global" op: quadratic in pixels, equal to lr's k=5 line at 2048 pixels (45x45),
        # between the measured 32x32 and 64x64
        records.append(_synthetic("conv", "torch", px * px * 10, 5e-3 * px * px / 2048, 0.0, rng,
                                  channels=16, height=size, width=size, k=3))
    for r in records:
        r.derived["fwd_achieved_GB_per_s"] = 5.0
        r.derived["bandwidth_ceiling_GB_per_s"] = 20.0
    fits = fit_records(records)
    plots = sweep_plots(records, fits, tmp_path, "t", global_ops=("conv",))
    names = sorted(p.path.name for p in plots)
    assert names == ["t-bandwidth.png", "t-crossover.png", "t-latency-vs-macs.png", "t-vs-k.png"]
    for p in plots:
        data = p.path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    lines = crossovers(records, global_ops=("conv",))
    # against lr's median line (k=5) the ratio is px / 2048: log-linear interpolation is exact
    assert lines == ["C=16: conv[torch] becomes slower than lr[unfold] at about 2,048 pixels (~45x45), "
                     "between the measured 1,024 and 4,096"]
    assert plot_bandwidth(records[:0], tmp_path / "none.png", "") is None


@pytest.mark.cuda
def test_a_sweep_on_cuda_measures_its_rows_in_a_worker(tmp_path):
    config = SweepConfig(ops="lr", params={"k": "1,3"}, channels="8", size="8", device="cuda",
                         options=FAST, isolate=True)
    run = run_sweep(config, tmp_path, quiet=True)
    assert run.measured == 2 and run.failed == 0 and run.restarts == 0
    merged = merge_rows([run.path])
    assert merged.environment.device.startswith("cuda")
    assert all(r.config["device"] == "cuda" and r.latency["fwd"].runs >= 2 for r in merged.records)
