"""A gate that never passes what it cannot judge: a 3x slower copy of a report measured under
load never exits 0; a doctored report (figures that do not follow from its samples) exits 2;
quiet identical reports exit 0; --on-inconclusive fail, pass and rerun do what they say."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_compare_gate import CONV, LR, one_line, pair, run, timing, verdicts, write

from lrprof.cli import main
from lrprof.gate import rerun
from lrprof.gate.compare import compare

LAYER = ["layer", "--op", "lr", "--channels", "8", "--size", "8", "--k", "3", "--m", "4", "--threads", "1",
         "--min-time", "0.05", "--min-runs", "10", "--no-stock", "--no-check-output", "--no-plots",
         "--device", "cpu", "--quiet"]

STATS = ("median_ms", "q1_ms", "q3_ms", "min_ms", "max_ms")


def profile(out: Path) -> Path:
    assert main([*LAYER, "--out", str(out)]) == 0
    return out / "layer.json"


def scaled(path: Path, out: Path, factor: float, samples: bool = True, rows: tuple[str, ...] = ()) -> Path:
    """A copy of a report with every latency figure (and, with `samples`, every raw sample)
    of the chosen rows (default: all) multiplied by `factor`."""
    data = json.loads(path.read_text())
    for record in data["records"]:
        if rows and record["name"] not in rows:
            continue
        for stats in record["latency"].values():
            for f in STATS:
                stats[f] *= factor
            if samples:
                stats["samples_ms"] = [v * factor for v in stats["samples_ms"]]
    out.write_text(json.dumps(data))
    return out


@pytest.fixture
def busy_loop():
    """An artificial load: a busy-loop process on the machine for the test's duration."""
    hog = subprocess.Popen([sys.executable, "-c", "while True:\n    pass\n"])
    yield hog
    hog.kill()
    hog.wait()


# ---- done when: a 3x slowdown under load never passes ---------------------------------------


def test_3x_slower_copy_under_load_never_exits_0(tmp_path, capsys, busy_loop):
    """Every latency figure and sample x3 (the issue's copy), and the layer row alone x3 for
    the normalised gate (which divides a slower machine out by design)."""
    old = profile(tmp_path / "old")
    lr_name = next(r["name"] for r in json.loads(old.read_text())["records"] if r["config"]["op"] == "lr")
    cases = ((scaled(old, tmp_path / "slow.json", 3.0), ()),
             (scaled(old, tmp_path / "slow_lr.json", 3.0, rows=(lr_name,)), ("--normalize", "baseline")))
    for slow, args in cases:
        rc, out, err = run(capsys, old, slow, *args)
        assert rc in (1, 3), out + err
        assert out.splitlines()[0].startswith(("REGRESSION", "INCONCLUSIVE")), out


def test_3x_slower_unreliable_timing_is_inconclusive_not_noise(tmp_path, capsys):
    """The case from the issue: rows flagged unreliable, a 3x change: exit 3 (was 0)."""
    wide = [1.0, 1.6, 0.6, 1.4, 0.7, 1.3, 0.9, 1.5, 0.8, 1.2]
    old = write(tmp_path / "old.json", pair(timing(1.0, runs=wide), timing(0.5)))
    new = write(tmp_path / "new.json", pair(timing(3.0, runs=wide), timing(0.5)))
    rc, data = verdicts(capsys, old, new)
    assert rc == 3 and data["verdict"] == "inconclusive"
    entry = data["inconclusive"][0]
    assert entry["row"] == LR and any("unreliable" in r for r in entry["reasons"])
    assert any("quieter runner" in d for d in entry["decide"])
    assert any("--instructions" in d for d in entry["decide"])
    assert any("--on-inconclusive rerun" in d for d in entry["decide"])
    rc, out, _ = run(capsys, old, new)
    assert out.splitlines()[0].startswith("INCONCLUSIVE")
    assert any(line.startswith(f"inconclusive: {LR}") for line in out.splitlines())
    assert any("would decide it:" in line for line in out.splitlines())


def test_single_process_change_inside_the_drift_is_inconclusive(tmp_path, capsys):
    """One process per side, 15 % slower and significant: the drift between fresh processes
    (up to 20 %) could do that, so inconclusive; 30 % clears it and is worse."""
    old = write(tmp_path / "old.json", pair(timing(1.0), timing(0.5)))
    rc, data = verdicts(capsys, old, write(tmp_path / "n15.json", pair(timing(1.15), timing(0.5))))
    assert rc == 3 and "drift between fresh processes" in data["inconclusive"][0]["reasons"][0]
    rc, data = verdicts(capsys, old, write(tmp_path / "n30.json", pair(timing(1.3), timing(0.5))))
    assert rc == 1


# ---- done when: a doctored report exits 2 ---------------------------------------------------


@pytest.mark.parametrize("field", STATS)
def test_doctored_json_report_exits_2_naming_file_row_and_field(tmp_path, capsys, field):
    good = write(tmp_path / "good.json", pair(timing(1.0), timing(0.5)))
    data = json.loads(good.read_text())
    data["records"][0]["latency"]["fwd"][field] *= 1.0001 if field == "max_ms" else 0.9999
    if field == "median_ms":  # the case: every figure tripled, samples left alone
        for f in STATS:
            data["records"][0]["latency"]["fwd"][f] = json.loads(good.read_text())["records"][0][
                "latency"]["fwd"][f] * 3
    bad = tmp_path / "doctored.json"
    bad.write_text(json.dumps(data))
    rc, out, err = run(capsys, good, bad)
    line = one_line(err)
    assert rc == 2 and out == ""
    assert "doctored.json" in line and repr(LR) in line, line
    assert "raw samples" in line
    assert any(f"latency.fwd.{f}" in line for f in STATS), line


def test_doctored_real_report_exits_2(tmp_path, capsys):
    """A real report whose medians, quartiles, min and max were tripled, samples not."""
    old = profile(tmp_path / "old")
    bad = scaled(old, tmp_path / "doctored.json", 3.0, samples=False)
    rc, _, err = run(capsys, old, bad)
    assert rc == 2 and "doctored.json" in one_line(err) and "latency.fwd.median_ms" in err


def test_doctored_csv_report_exits_2(tmp_path, capsys):
    good = write(tmp_path / "good.csv", pair(timing(1.0), timing(0.5)))
    rows = list(csv.DictReader(io.StringIO(good.read_text())))
    rows[1]["fwd_median_ms"] = str(float(rows[1]["fwd_median_ms"]) * 3)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    bad = tmp_path / "doctored.csv"
    bad.write_text(buffer.getvalue())
    rc, _, err = run(capsys, good, bad)
    line = one_line(err)
    assert rc == 2 and "doctored.csv" in line and repr(CONV) in line and "fwd_median_ms" in line, line


def test_run_count_that_does_not_match_the_samples_exits_2(tmp_path, capsys):
    good = write(tmp_path / "good.json", pair(timing(1.0), timing(0.5)))
    data = json.loads(good.read_text())
    data["records"][0]["memory"]["fwd"]["runs"] = 2.5
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    rc, _, err = run(capsys, good, bad)
    assert rc == 2 and "memory.fwd.runs" in one_line(err)


# ---- done when: quiet identical reports pass -------------------------------------------------


def test_quiet_identical_reports_exit_0(tmp_path, capsys):
    old = write(tmp_path / "old.json", pair(timing(1.0, 1.01, 0.99), timing(0.5, 0.5, 0.5)))
    new = write(tmp_path / "new.json", pair(timing(1.0, 0.99, 1.01), timing(0.5, 0.5, 0.5)))
    for a, b in ((old, old), (old, new)):
        rc, data = verdicts(capsys, a, b)
        assert rc == 0 and data["verdict"] == "pass" and data["inconclusive"] == []


def test_real_report_is_consistent_and_identical_to_itself(tmp_path, capsys):
    old = profile(tmp_path / "old")
    for other in (old, old.with_suffix(".csv")):
        rc, data = verdicts(capsys, old, other)
        assert rc == 0 and data["verdict"] == "pass"


# ---- done when: each --on-inconclusive mode does what it says --------------------------------


@pytest.fixture
def inconclusive_pair(tmp_path) -> tuple[Path, Path]:
    old = write(tmp_path / "old.json", pair(timing(0.9, 1.0, 1.1), timing(0.5)))
    new = write(tmp_path / "new.json", pair(timing(1.0, 1.1, 1.25), timing(0.5)))
    return old, new


def test_on_inconclusive_fail_is_the_default_and_exits_3(capsys, inconclusive_pair):
    for extra in ((), ("--on-inconclusive", "fail")):
        rc, out, err = run(capsys, *inconclusive_pair, *extra)
        assert rc == 3 and out.startswith("INCONCLUSIVE") and err == ""


def test_on_inconclusive_pass_exits_0_and_says_so(capsys, inconclusive_pair):
    rc, out, err = run(capsys, *inconclusive_pair, "--on-inconclusive", "pass")
    assert rc == 0
    assert out.startswith("INCONCLUSIVE (passed: --on-inconclusive pass)")
    assert "1 inconclusive row(s) passed" in err


def test_on_inconclusive_pass_still_fails_a_regression(tmp_path, capsys):
    old = write(tmp_path / "old.json", pair(timing(0.99, 1.0, 1.01), timing(0.5)))
    new = write(tmp_path / "new.json", pair(timing(1.49, 1.5, 1.51), timing(0.5)))
    rc, _, _ = run(capsys, old, new, "--on-inconclusive", "pass")
    assert rc == 1


@pytest.mark.parametrize(("option", "value"), [("--on-inconclusive", "maybe"), ("--rerun-budget", "soon"),
                                               ("--rerun-budget", "-5s")])
def test_bad_on_inconclusive_options_are_one_line_errors(capsys, inconclusive_pair, option, value):
    rc, _, err = run(capsys, *inconclusive_pair, option, value)
    assert rc == 2 and option.lstrip("-") in one_line(err)


def test_on_inconclusive_rerun_retimes_the_rows_here_and_decides(tmp_path, capsys):
    """A real report and a copy whose layer row is 1.5x slower with samples too wide to
    judge: the rerun re-times the row and its baseline here, in fresh processes, and decides
    on them (the code here is the old code, so not a regression), saying what it measured."""
    old = profile(tmp_path / "old")
    data = json.loads(old.read_text())
    lr = next(r for r in data["records"] if r["config"]["op"] == "lr")
    wide = [v * f for v, f in zip(lr["latency"]["fwd"]["samples_ms"], [0.3, 3.0] * 20, strict=False)]
    new_path = tmp_path / "new.json"
    from lrprof.measure.timing import Stats

    stats = Stats.from_times([v * 1.5 for v in wide], lr["latency"]["fwd"]["calls_per_run"], "timeit", 1)
    lr["latency"]["fwd"].update({k: v for k, v in stats.to_dict().items()
                                 if k in (*STATS, "runs", "samples_ms")})
    lr["latency"]["fwd"]["process_runs"] = []
    new_path.write_text(json.dumps(data))
    rc, before = verdicts(capsys, old, new_path)
    assert rc == 3
    rc, out, err = run(capsys, old, new_path, "--on-inconclusive", "rerun", "--rerun-budget", "60s",
                       "--format", "json")
    result = json.loads(out)
    facts = result["rerun"]
    assert facts["processes"] >= 1 and facts["budget_s"] == 60
    assert set(facts["timed"]) == {r["name"] for r in data["records"]}  # the row and its baseline
    row = next(r for r in result["rows"] if r["name"] == lr["name"])
    assert row["rerun"]["processes"] == facts["processes"]
    assert row["rerun"]["process_medians_ms"]["fwd"]
    assert all(v["why"].startswith("rerun here") for v in row["rerun"]["verdicts"])
    assert {0: "pass", 1: "regression", 3: "inconclusive"}[rc] == result["verdict"]
    assert result["verdict"] != "regression"  # the same code, re-timed: never a false alarm here


def test_rerun_decision_on_measured_processes(tmp_path):
    """The rerun's verdict from what it measured: 1.3x slower in consistent processes is worse
    (normalised by the baseline), the same speed is the same; a one-process old side borrows
    the drift the rerun's processes show."""
    old = write(tmp_path / "old.json", pair(timing(1.0), timing(0.5)))
    new = write(tmp_path / "new.json", pair(timing(1.2, runs=[1.0, 1.6, 0.6, 1.4, 0.7, 1.3, 0.9, 1.5, 0.8,
                                                              1.2]), timing(0.5)))
    runs = [1.00, 1.02, 0.99, 1.01, 0.98, 1.03, 1.00, 0.97, 1.02, 1.01]
    for factor, expected in ((1.3, "worse"), (1.0, "same")):
        result = compare(old, new)
        assert [r.name for r in result.inconclusive] == [LR]
        items, skipped = rerun.plan(result)
        assert skipped == [] and [i.row.name for i in items] == [LR] and items[0].new_base is not None
        drift = (0.97, 1.0, 1.03, 0.99, 1.02, 1.01)
        measured = {LR: {"fwd": [tuple(2 * v * factor * d for v in runs) for d in drift]},
                    CONV: {"fwd": [tuple(v * d for v in runs) for d in drift]}}
        rerun.apply(result, items, skipped, measured, {"processes": 6, "seconds": 1.0})
        row = next(r for r in result.rows if r.name == LR)
        latency = next(m for m in row.metrics if m.metric == "fwd_latency_vs_baseline")
        assert latency.status == expected, latency.why
        assert "borrows" in latency.test["method"]
        assert row.rerun["processes"] == 6 and result.rerun["rows"][0]["row"] == LR


def test_unreliable_timing_within_the_threshold_with_a_wide_interval_is_inconclusive(tmp_path, capsys):
    """Flagged timings whose ratio is within 10 % but whose interval reaches past it: a
    slowdown is not ruled out, so not a pass; with a tight interval the row stays the same."""
    wide = [1.0, 1.6, 0.6, 1.4, 0.7, 1.3, 0.9, 1.5, 0.8, 1.2]
    old = write(tmp_path / "old.json", pair(timing(1.0, runs=wide), timing(0.5)))
    new = write(tmp_path / "new.json", pair(timing(1.05, runs=wide), timing(0.5)))
    rc, data = verdicts(capsys, old, new)
    row = next(r for r in data["rows"] if r["name"] == LR)
    m = next(m for m in row["metrics"] if m["metric"] == "fwd_median_ms")
    assert rc == 3 and m["status"] == "inconclusive" and "reaches past 10%" in m["why"]
    rc, data = verdicts(capsys, old, old)
    assert rc == 0


def _rerun_verdict(tmp_path, measured, oversubscribed=0):
    old = write(tmp_path / "old.json", pair(timing(1.0), timing(0.5)))
    new = write(tmp_path / "new.json", pair(timing(1.2, runs=[1.0, 1.6, 0.6, 1.4, 0.7, 1.3, 0.9, 1.5, 0.8,
                                                              1.2]), timing(0.5)))
    result = compare(old, new)
    items, skipped = rerun.plan(result)
    rerun.apply(result, items, skipped, measured, {"processes": len(measured[LR]["fwd"]), "seconds": 1.0,
                                                    "oversubscribed": oversubscribed})
    row = next(r for r in result.rows if r.name == LR)
    return next(m for m in row.metrics if m.metric == "fwd_latency_vs_baseline")


# a machine slowing down within each process (drift +50 %, IQR past 10 %): flagged absolute timings
DRIFTING = [1.0, 1.05, 1.1, 1.15, 1.2, 1.25, 1.3, 1.35, 1.4, 1.5]
SPEEDS = (0.9, 1.0, 1.2, 0.8, 1.1, 1.0)  # and each process at its own speed


def test_normalised_rerun_decides_through_a_disturbance_both_rows_share(tmp_path):
    """The row and its baseline take turns in every process: a machine that drifts slows
    both, their ratio holds, and a 1.3x slowdown is called a regression, the absolute flags
    shown beside it (on this VM every rerun was flagged so, and none could decide)."""
    measured = {LR: {"fwd": [tuple(2 * 1.3 * v * s for v in DRIFTING) for s in SPEEDS]},
                CONV: {"fwd": [tuple(v * s for v in DRIFTING) for s in SPEEDS]}}
    latency = _rerun_verdict(tmp_path, measured)
    assert latency.status == "worse", latency.why
    assert "drifted" in latency.why and "ratio held steady" in latency.why


def test_normalised_rerun_with_scattered_ratios_stays_inconclusive(tmp_path):
    """What hits the row and not its baseline (ratios 1.0-1.9x between processes) cannot be
    waived: inconclusive, saying the ratios scatter."""
    hits = (1.0, 1.9, 1.1, 1.7, 1.2, 1.5)
    measured = {LR: {"fwd": [tuple(2 * 1.3 * v * s * h for v in DRIFTING) for s, h in zip(SPEEDS, hits,
                                                                                          strict=True)]},
                CONV: {"fwd": [tuple(v * s for v in DRIFTING) for s in SPEEDS]}}
    latency = _rerun_verdict(tmp_path, measured)
    assert latency.status == "inconclusive", latency.why
    assert "ratios to the baseline scatter" in latency.why


def test_normalised_rerun_oversubscribed_in_most_processes_stays_inconclusive(tmp_path):
    measured = {LR: {"fwd": [tuple(2 * 1.3 * v * s for v in DRIFTING) for s in SPEEDS]},
                CONV: {"fwd": [tuple(v * s for v in DRIFTING) for s in SPEEDS]}}
    latency = _rerun_verdict(tmp_path, measured, oversubscribed=4)
    assert latency.status == "inconclusive", latency.why
    assert "oversubscribed in 4 of its 6 processes" in latency.why
