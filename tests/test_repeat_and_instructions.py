"""--repeat (rows timed in fresh processes, runs pooled per process), --instructions
(callgrind counts of every row in one valgrind process) and the noise facts every report
carries."""

from __future__ import annotations

import csv
import json
import os
import stat
import sys
from pathlib import Path

import pytest
import torch

from lrprof.cli import main
from lrprof.measure import instructions, noise
from lrprof.measure.timing import TimingOptions
from lrprof.profile import replicate
from lrprof.profile.layer import prepare_spec, profile_layers
from lrprof.spec.layer import LayerSpec
from lrprof.spec.options import MeasureOptions

TINY = ["--channels", "8", "--size", "8", "--k", "3", "--m", "4", "--no-stock", "--device", "cpu",
        "--min-time", "0.02", "--min-runs", "5", "--quiet"]


def tiny_spec() -> LayerSpec:
    return prepare_spec(LayerSpec(op="lr", channels=8, height=8, width=8, k=3, m=4, device="cpu"))


def test_repeat_pools_runs_of_fresh_processes(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["layer", *TINY, "--repeat", "2", "--out", str(out)]) == 0
    data = json.loads((out / "layer.json").read_text())
    assert data["partial"] is None
    for record in data["records"]:
        fwd = record["latency"]["fwd"]
        assert len(fwd["process_runs"]) == 2 and all(n >= 5 for n in fwd["process_runs"])
        assert sum(fwd["process_runs"]) == fwd["runs"] == len(fwd["samples_ms"])
        assert "2 of 2 fresh processes" in fwd["method"]
        assert len(record["detail"]["noise"]) == 2  # one timing session per process
        assert record["detail"]["noise"][0]["before"]["affinity"]
    md = (out / "layer.md").read_text()
    assert "between 2 processes" in md
    with (out / "layer.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows[0]["fwd_process_runs"].split()) == 2
    capsys.readouterr()
    assert main(["compare", str(out / "layer.json"), str(out / "layer.csv")]) == 0


def test_a_failed_process_is_recorded_and_the_others_pooled(monkeypatch):
    spec = tiny_spec()
    calls = []
    real = replicate.run_process

    def flaky(request, index):
        calls.append(index)
        return {"failed": "exit 1: MemoryError"} if index == 1 else real(request, index)

    monkeypatch.setattr(replicate, "run_process", flaky)
    options = MeasureOptions(repeat=3, stock_counters=False, check_output=False, baseline=False,
                             timing=TimingOptions(min_runs=3, min_time_s=0.02))
    record = profile_layers([spec], options)[0]
    assert calls == [0, 1, 2]
    assert "timing process 2 of 3: exit 1: MemoryError" in record.error
    fwd = record.latency["fwd"]
    assert fwd.process_runs[1] == 0 and fwd.process_runs[0] >= 3 and fwd.process_runs[2] >= 3
    assert fwd.processes == 3 and len(fwd.process_medians_ms()) == 2


def test_spec_round_trips_for_the_worker():
    spec = tiny_spec()
    assert replicate.spec_from_dict(json.loads(json.dumps(replicate.spec_to_dict(spec)))) == spec


def test_repeat_must_be_positive(capsys):
    assert main(["layer", *TINY, "--repeat", "0"]) == 2
    assert "--repeat" in capsys.readouterr().err


# ---- noise in every report --------------------------------------------------------------------


def test_every_report_records_the_noise_around_its_timing(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["layer", *TINY, "--out", str(out)]) == 0
    data = json.loads((out / "layer.json").read_text())
    session = data["records"][0]["detail"]["noise"][0]
    assert set(session["before"]) >= {"load_average", "affinity", "other_runnable", "governors"}
    assert session["threads"] == torch.get_num_threads()
    fwd = data["records"][0]["latency"]["fwd"]
    assert fwd["minor_faults_per_call"] >= 0 and fwd["major_faults_per_call"] >= 0
    assert fwd["involuntary_switches_per_s"] >= 0
    assert any(n.startswith("timing: load average") for n in data["notes"])
    assert any(n.startswith("unreliable timings:") for n in data["notes"])
    header = (out / "layer.csv").read_text().splitlines()[0]
    assert "fwd_minor_faults_per_call" in header and "timing_unreliable" in header


def test_oversubscription_prints_a_warning_naming_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(noise, "other_runnable", lambda cpus, *a, **k: float(len(cpus)))
    torch.set_num_threads(2)
    assert main(["layer", *TINY, "--threads", "2", "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert err.startswith("lrprof: warning: oversubscribed: 2 torch threads")
    data = json.loads((tmp_path / "run" / "layer.json").read_text())
    assert all(r["derived"]["oversubscribed"] for r in data["records"])
    assert all("oversubscribed" in r["derived"]["timing_unreliable"] for r in data["records"])


# ---- instructions ---------------------------------------------------------------------------


def test_missing_valgrind_is_one_line_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no valgrind here
    assert main(["layer", *TINY, "--instructions"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("lrprof: error: --instructions: needs valgrind and callgrind_control")


def test_instructions_need_the_cpu(capsys, monkeypatch):
    monkeypatch.setattr(instructions, "check_available", lambda: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    args = [a if a != "cpu" else "cuda" for a in TINY]
    assert main(["layer", *args, "--instructions"]) == 2
    assert "--instructions: counts CPU instructions" in capsys.readouterr().err


def test_dump_total_reads_callgrind_output():
    text = "version: 1\ncreator: callgrind-3.19.0\nevents: Ir\nsummary: 4431838\ntotals: 4431838\n"
    assert instructions.dump_total(text) == 4431838
    with pytest.raises(ValueError):
        instructions.dump_total("events: Ir\n")


FAKE_VALGRIND = """#!{python}
# Runs the command without valgrind, then writes one dump per manifest entry, dump i
# holding 1000 * i instructions: the orchestration is tested, not valgrind.
import json, subprocess, sys
args = sys.argv[1:]
out = next(a.split("=", 1)[1] for a in args if a.startswith("--callgrind-out-file="))
command = [a for a in args if not a.startswith("--")]
code = subprocess.run(command).returncode
if code:
    sys.exit(code)
for i, _ in enumerate(json.load(open(command[-1]))):
    open(f"{{out}}.{{i + 1}}", "w").write(f"summary: {{1000 * (i + 1)}}\\ntotals: {{1000 * (i + 1)}}\\n")
"""


def _fake_tools(directory: Path) -> None:
    (directory / "valgrind").write_text(FAKE_VALGRIND.format(python=sys.executable))
    (directory / "callgrind_control").write_text("#!/bin/sh\nexit 0\n")
    for name in ("valgrind", "callgrind_control"):
        path = directory / name
        path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_instruction_counts_map_dumps_to_rows_and_phases(tmp_path, capsys, monkeypatch):
    """Dumps in order: the empty collection (1000), then each row's phases: per call is
    (dump - empty) / NUMBER."""
    _fake_tools(tmp_path)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "run"
    assert main(["layer", *TINY, "--backward", "--instructions", "--out", str(out)]) == 0
    data = json.loads((out / "layer.json").read_text())
    n = instructions.NUMBER
    layer, conv = data["records"]
    assert layer["counted"]["fwd_instructions"] == round((2000 - 1000) / n)
    assert layer["counted"]["fwd_bwd_instructions"] == round((3000 - 1000) / n)
    assert conv["counted"]["fwd_instructions"] == round((4000 - 1000) / n)
    assert conv["counted"]["fwd_bwd_instructions"] == round((5000 - 1000) / n)
    assert "callgrind" in layer["detail"]["instructions"]["method"]
    assert "fwd instructions/call (M)" in (out / "layer.md").read_text()


def test_failed_valgrind_is_recorded_in_the_rows(tmp_path, capsys, monkeypatch):
    (tmp_path / "valgrind").write_text("#!/bin/sh\necho 'valgrind: cannot start' >&2\nexit 3\n")
    (tmp_path / "callgrind_control").write_text("#!/bin/sh\nexit 0\n")
    for name in ("valgrind", "callgrind_control"):
        (tmp_path / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert main(["layer", *TINY, "--instructions", "--out", str(tmp_path / "run")]) == 1
    assert "instructions: valgrind exit 3: valgrind: cannot start" in capsys.readouterr().err


@pytest.mark.slow
def test_real_callgrind_counts_are_stable_between_processes(tmp_path, capsys):
    """Two real valgrind runs of the same rows: instruction counts within the gate's default
    1 % (seen here: 0.0002 % for a 41 M-instruction layer, 0.1 % for a 0.9 M one)."""
    instructions.check_available()
    counts = []
    for i in range(2):
        out = tmp_path / f"run{i}"
        assert main(["layer", *TINY, "--instructions", "--out", str(out)]) == 0
        data = json.loads((out / "layer.json").read_text())
        counts.append([r["counted"]["fwd_instructions"] for r in data["records"]])
    for a, b in zip(*counts, strict=True):
        assert a > 10_000 and abs(a - b) / a < 0.01
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "run0" / "layer.json"), str(tmp_path / "run1" / "layer.json"),
                 "--max-slowdown", "1000%"]) == 0
