"""Ctrl-C and SIGTERM: a real `lrprof` subprocess is signalled while it measures. It must
print one line ("interrupted: kept N of M rows in DIR"), exit 130 or 143, and leave a
report that says it is partial and lists the rows never measured."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lrprof.measure.timing import Stats
from lrprof.profile.layer import partial_layers as partial_info
from lrprof.record.records import Record, partial_text

ROOT = Path(__file__).resolve().parents[1]


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    return subprocess.Popen([sys.executable, "-m", "lrprof", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def signal_when_written(process: subprocess.Popen, report: Path, sig: int, timeout: float = 240) -> tuple:
    """Wait for the first (unfinished) report, then signal; returns (rc, stdout, stderr)."""
    deadline = time.monotonic() + timeout
    while not report.is_file():
        if process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"exited {process.returncode} before writing a report: {err}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("no report written in time")
        time.sleep(0.1)
    process.send_signal(sig)
    try:
        out, err = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("did not exit after the signal")
    return process.returncode, out, err


LAYER = ["layer", "--channels", "8", "--size", "8", "--k", "3", "--m", "4", "--no-stock",
         "--device", "cpu", "--min-time", "120", "--quiet"]


@pytest.mark.parametrize(("sig", "code", "name"), [(signal.SIGINT, 130, "SIGINT"),
                                                  (signal.SIGTERM, 143, "SIGTERM")])
def test_layer_interrupted_keeps_a_partial_report(tmp_path, sig, code, name):
    out = tmp_path / "run"
    process = start([*LAYER, "--out", str(out)], tmp_path)
    rc, stdout, stderr = signal_when_written(process, out / "layer.json", sig)
    assert rc == code
    lines = stderr.strip().splitlines()
    assert lines == [f"interrupted: kept 0 of 2 rows in {out}"], stderr
    data = json.loads((out / "layer.json").read_text())
    assert data["partial"]["interrupted_by"] == name
    assert (data["partial"]["rows_kept"], data["partial"]["rows_total"]) == (0, 2)
    names = [r["name"] for r in data["records"]]
    assert sorted(data["partial"]["not_measured"]) == sorted(names) and len(names) == 2
    md = (out / "layer.md").read_text()
    assert "**Partial report**: interrupted by " + name in md
    csv_text = (out / "layer.csv").read_text()
    assert "partial_report" in csv_text.splitlines()[0]


def test_net_vs_interrupted_lists_the_net_never_measured(tmp_path):
    """The bug: Ctrl-C during `net A --vs B` exited 130 silently and the partial report did
    not say B was never measured."""
    out = tmp_path / "run"
    process = start(["net", "lr26", "--vs", "resnet26", "--size", "32", "--device", "cpu", "--no-stock",
                     "--impl", "unfold", "--min-time", "120", "--quiet", "--out", str(out)], tmp_path)
    rc, _, stderr = signal_when_written(process, out / "net.json", signal.SIGINT)
    assert rc == 130
    assert stderr.strip().splitlines() == [f"interrupted: kept 0 of 2 rows in {out}"], stderr
    partial = json.loads((out / "net.json").read_text())["partial"]
    assert partial["interrupted_by"] == "SIGINT"
    assert partial["not_measured"] == ["lr26", "resnet26"]


def test_partial_info_counts_rows_timed_in_some_processes():
    timed = Record(kind="layer", name="a", config={"op": "lr"})
    timed.latency["fwd"] = Stats.pooled([Stats.from_times([1.0, 1.1], 1, "m", 1), None])
    failed = Record(kind="layer", name="b", config={"op": "lr"}, error="boom")
    waiting = Record(kind="layer", name="c", config={"op": "lr"})
    info = partial_info("SIGINT", [timed, failed, waiting], 3, repeat=2)
    assert (info["rows_kept"], info["rows_total"], info["not_measured"]) == (2, 3, ["c"])
    assert (info["processes_done"], info["processes_planned"]) == (2, 2)
    text = partial_text(info)
    assert text.startswith("interrupted by SIGINT: 2 of 3 rows measured") and "never measured: c" in text
    assert partial_text({**info, "interrupted_by": None}).startswith("unfinished")
