"""Issue 25, item 9: Ctrl-C (SIGINT to the whole process group, as a terminal sends it) or
SIGTERM during `lrprof sweep` exits 130/143 with no traceback, says how many rows it kept,
writes a partial sweep report of them, and leaves no child process behind; a SIGKILL of
the sweep takes its worker (and the resource tracker) with it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ["sweep", "--op", "lr", "--k", "3", "--m", "4", "--channels", "4", "--size", "8,9,10,11",
         "--device", "cpu", "--threads", "1", "--min-runs", "2", "--min-time", "2", "--no-plots", "--quiet"]


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.Popen([sys.executable, "-m", "lrprof", *args], cwd=cwd,
                            env={**os.environ, "PYTHONPATH": path}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def rows_in(path: Path) -> int:
    if not path.is_file():
        return 0
    count = 0
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            count += json.loads(line).get("type") == "row"
    return count


def wait_for_a_row(process: subprocess.Popen, rows: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while rows_in(rows) < 1:
        if process.poll() is not None:
            pytest.fail(f"exited {process.returncode} before a row: {process.communicate()[1]}")
        if time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail("no row measured in time")
        time.sleep(0.1)


def group_gone(pgid: int, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize(("sig", "code", "name", "group"), [
    (signal.SIGINT, 130, "SIGINT", True),  # Ctrl-C: the terminal signals the whole group
    (signal.SIGTERM, 143, "SIGTERM", False),
])
def test_item9_sweep_interrupt_keeps_a_partial_report_and_no_child(tmp_path, sig, code, name, group):
    out = tmp_path / "sw"
    process = start([*SWEEP, "--out", str(out)], tmp_path)
    wait_for_a_row(process, out / "rows.jsonl")
    if group:
        os.killpg(process.pid, sig)
    else:
        process.send_signal(sig)
    try:
        stdout, stderr = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail("did not exit after the signal")
    try:
        assert process.returncode == code, stderr
        assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
        kept = rows_in(out / "rows.jsonl")
        assert kept >= 1
        assert stderr.strip().splitlines()[-1] == f"interrupted: kept {kept} of 4 rows in {out}", stderr
        assert "nothing measured" not in stderr
        data = json.loads((out / "sweep.json").read_text())
        assert data["partial"]["interrupted_by"] == name
        assert (data["partial"]["rows_kept"], data["partial"]["rows_total"]) == (kept, 4)
        assert len(data["records"]) == kept and len(data["partial"]["not_measured"]) == 4 - kept
        assert "**Partial report**: interrupted by " + name in (out / "sweep.md").read_text()
        assert group_gone(process.pid), "a child process of the sweep is still running"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    # --resume afterwards loses nothing: it measures only the rows not kept
    again = start([*SWEEP, "--out", str(out), "--resume", "--min-time", "0.01"], tmp_path)
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    assert rows_in(out / "rows.jsonl") == 4
    assert "partial" not in json.loads((out / "sweep.json").read_text()) or \
        json.loads((out / "sweep.json").read_text())["partial"] is None


def test_item9_sweep_killed_takes_its_worker_along(tmp_path):
    out = tmp_path / "sw"
    process = start([*SWEEP, "--out", str(out)], tmp_path)
    wait_for_a_row(process, out / "rows.jsonl")
    process.kill()  # SIGKILL: no clean-up code of the sweep runs
    process.communicate(timeout=60)
    try:
        assert group_gone(process.pid, timeout=10), "the worker outlived its killed sweep"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
