"""Issue 25, "What a newcomer and a bad day find": each item reproduced as the issue tells
it, now ending in a clear refusal, a true label or a partial report (item 9, interrupts:
tests/test_newcomer_interrupt.py; item 11, widths: tests/test_newcomer_width.py)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from lrprof.cli import main

ROOT = Path(__file__).resolve().parents[1]
# the main job's report as committed when these defects were found (v1, unfold): the figures below are its
BASELINE = ROOT / "tests" / "data" / "baseline-v1-layer.json"
TINY = ["--channels", "4", "--size", "6", "--min-runs", "2", "--min-time", "0.005", "--device", "cpu",
        "--no-plots", "--baseline", "none"]


def run(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(err: str, *words: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lrprof: error: "), err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], err


def current_report(tmp_path: Path) -> Path:
    """The baseline's LR row 50% slower and 10.4% lighter (94,432,800 -> 84,598,304 bytes)."""
    data = json.loads(BASELINE.read_text())
    row = data["records"][0]
    fwd = row["latency"]["fwd"]
    for key in ("median_ms", "q1_ms", "q3_ms", "min_ms", "max_ms"):
        fwd[key] *= 1.5
    fwd["samples_ms"] = [x * 1.5 for x in fwd["samples_ms"]]
    for key in ("peak_bytes", "min_bytes", "max_bytes"):
        row["memory"]["fwd"][key] = 84_598_304
    path = tmp_path / "current" / "layer.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


# ---- 1. a row's status leaked into every metric of that row ----------------------------------


@pytest.mark.parametrize("fmt", ["text", "markdown"])
def test_item1_compare_labels_each_metric_by_its_own_status(tmp_path, capsys, fmt):
    rc, out, _ = run(capsys, "compare", BASELINE, current_report(tmp_path), "--format", fmt)
    assert rc == 1  # the latency did regress
    peak = [line for line in out.splitlines() if "fwd_peak_bytes" in line]
    assert len(peak) == 1 and "-10.4%" in peak[0], out
    assert "better" in peak[0] and "worse" not in peak[0], peak[0]
    latency = [line for line in out.splitlines() if "fwd_median_ms" in line]
    assert len(latency) == 1 and "worse" in latency[0]
    rc, out, _ = run(capsys, "compare", BASELINE, current_report(tmp_path), "--format", "json")
    metrics = {m["metric"]: m["status"] for m in json.loads(out)["rows"][0]["metrics"]}
    assert metrics["fwd_peak_bytes"] == "better"  # the JSON said so all along


# ---- 2. a forward that returns None: exit 0, verdict ok --------------------------------------


def test_item2_module_whose_forward_returns_none_is_refused(tmp_path, capsys):
    (tmp_path / "badmods.py").write_text(
        "import torch.nn as nn\n\n\n"
        "class NoneOut(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.conv = nn.Conv2d(3, 3, 3, padding=1)\n\n"
        "    def forward(self, x):\n"
        "        self.conv(x)\n")
    out = tmp_path / "run"
    rc, stdout, err = run(capsys, "layer", "--module", f"{tmp_path / 'badmods.py'}:NoneOut",
                          "--input", "1x3x16x16", "--backward", "--min-runs", "2", "--min-time", "0.005",
                          "--no-plots", "--device", "cpu", "--out", out)
    assert rc == 1  # the user's module failed, not the command line
    one_line_error(err, "NoneOut", "returned None", "not a tensor")
    assert not (out / "layer.json").exists()  # no report calling it ok


# ---- 3. merge accepted NaN medians and negative MACs ----------------------------------------


@pytest.fixture(scope="module")
def rows_file(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sweep")
    assert main(["sweep", "--op", "lr", "--k", "1,3", "--m", "2", *TINY, "--in-process", "--quiet",
                 "--out", str(out)]) == 0
    return out / "rows.jsonl"


def _tampered(rows: Path, where: Path, change) -> Path:
    lines = rows.read_text().splitlines()
    for i, line in enumerate(lines):
        data = json.loads(line)
        if data.get("type") == "row":
            change(data["record"])
            lines[i] = json.dumps(data)
            break
    where.parent.mkdir(parents=True, exist_ok=True)
    where.write_text("\n".join(lines) + "\n")
    return where


def _nan_median(record):
    record["latency"]["fwd"]["median_ms"] = float("nan")


def _negative_macs(record):
    record["counted"]["fwd_MACs"] = -record["counted"]["fwd_MACs"]


@pytest.mark.parametrize(("change", "field", "shown"), [
    (_nan_median, "latency.fwd.median_ms", "NaN"),
    (_negative_macs, "counted.fwd_MACs", "-"),
])
def test_item3_merge_refuses_nan_medians_and_negative_macs(rows_file, tmp_path, capsys, change, field, shown):
    bad = _tampered(rows_file, tmp_path / "bad" / "rows.jsonl", change)
    rc, out, err = run(capsys, "merge", bad, "--out", tmp_path / "report", "--no-plots")
    assert rc == 2
    one_line_error(err, str(bad), field, shown)
    assert not (tmp_path / "report" / "sweep.json").exists()
    rc, _, err = run(capsys, "merge", rows_file, "--out", tmp_path / "good", "--no-plots", "--quiet")
    assert rc == 0, err  # the file as written merges


# ---- 4. a layer report against a sweep report: "no regression", no word -----------------------


def test_item4_compare_says_when_two_reports_were_timed_differently(rows_file, tmp_path, capsys):
    layer = tmp_path / "layer"
    rc, _, err = run(capsys, "layer", "--op", "lr", "--impl", "unfold", "--k", "3", "--m", "2", *TINY,
                     "--no-stock", "--no-roofline", "--quiet", "--out", layer)
    assert rc == 0, err
    sweep = tmp_path / "sweep"
    rc, _, err = run(capsys, "merge", rows_file, "--out", sweep, "--no-plots", "--quiet")
    assert rc == 0, err
    rc, out, _ = run(capsys, "compare", layer / "layer.json", sweep / "sweep.json", "--format", "json")
    warnings = json.loads(out)["warnings"]
    assert any("timed differently" in w and "lrprof layer" in w and "lrprof sweep" in w for w in warnings), \
        warnings
    rc, out, _ = run(capsys, "compare", layer / "layer.json", sweep / "sweep.json")
    assert "timed differently" in out
    rc, out, _ = run(capsys, "compare", layer / "layer.json", layer / "layer.json", "--format", "json")
    assert json.loads(out)["warnings"] == []  # one report against itself: nothing to say


# ---- 5. --resume on a rows file of another grid ---------------------------------------------


def test_item5_resume_refuses_a_rows_file_of_another_grid(tmp_path, capsys):
    out = tmp_path / "sw"
    base = ["sweep", "--op", "lr", "--m", "2", *TINY, "--in-process", "--quiet", "--out", out]
    rc, _, err = run(capsys, *base, "--k", "1")
    assert rc == 0, err
    before = (out / "rows.jsonl").read_text()
    rc, _, err = run(capsys, *base, "--k", "3", "--resume")
    assert rc == 2
    one_line_error(err, "another grid", "--out")
    assert (out / "rows.jsonl").read_text() == before  # no second grid header appended
    rc, _, err = run(capsys, *base, "--k", "1,3", "--resume")  # a larger grid holding it: fine
    assert rc == 0, err
    assert len(json.loads((out / "sweep.json").read_text())["records"]) == 2


# ---- 6. --out "" wrote into the current directory --------------------------------------------


@pytest.mark.parametrize("command", [
    ["layer", "--op", "lr", "--k", "3", "--m", "2", *TINY, "--no-stock"],
    ["sweep", "--op", "lr", "--k", "3", "--m", "2", *TINY, "--in-process"],
])
@pytest.mark.parametrize("empty", [["--out", ""], ["--out="]])
def test_item6_empty_out_is_refused(tmp_path, capsys, monkeypatch, command, empty):
    monkeypatch.chdir(tmp_path)
    rc, _, err = run(capsys, *command, *empty)
    assert rc == 2
    one_line_error(err, "--out", "not empty")
    assert list(tmp_path.iterdir()) == []


# ---- 7. directories called missing files; a net option pointing at a non-flag ------------------


def test_item7_module_in_a_directory_says_directory(tmp_path, capsys):
    (tmp_path / "some" / "dir").mkdir(parents=True)
    rc, _, err = run(capsys, "layer", "--module", f"{tmp_path / 'some' / 'dir'}:Foo", "--input", "1x3x8x8")
    assert rc == 2
    one_line_error(err, "--module", "is a directory")
    assert "no such file" not in err


def test_item7_compare_of_a_directory_says_directory(tmp_path, capsys):
    (tmp_path / "some" / "dir").mkdir(parents=True)
    rc, _, err = run(capsys, "compare", tmp_path / "some" / "dir", BASELINE)
    assert rc == 2
    one_line_error(err, "a directory", "report file")
    assert "no such" not in err


def test_item7_net_impl_on_a_net_without_lr_layers_names_the_flag(capsys):
    rc, _, err = run(capsys, "net", "resnet50", "--impl", "fused")
    assert rc == 2
    one_line_error(err, "--impl", "resnet50", "lr50")
    assert "num_classes" not in err


# ---- 8. help that promised comma lists; two operators' texts run together ----------------------


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_item8_check_help_says_one_value_and_a_list_is_refused_so(capsys):
    rc, out, _ = run(capsys, "check", "--help")
    assert rc == 0
    flat = _flat(out)
    assert "comma-separated for several" not in flat and "(one value)" in flat
    rc, _, err = run(capsys, "check", "tests/user_layers.py:LocalRelation", "--k", "3,5")
    assert rc == 2
    one_line_error(err, "--k", "one value", "'3,5'")


@pytest.mark.parametrize("name", ["rel_logits", "stride", "out_channels"])
def test_item8_shared_option_help_keeps_each_operators_text_apart(name, capsys):
    from lrprof.cli.options import operator_help, operator_params

    entry = operator_params()[name]
    assert len(entry["helps"]) > 1  # operators that mean different things by it
    text = operator_help(entry)
    parts = text.split(" | ")
    assert len(parts) == len(entry["helps"])
    for part, (help_text, ops) in zip(parts, entry["helps"].items(), strict=True):
        assert part == f"[{', '.join(ops)}] {help_text}"
    rc, out, _ = run(capsys, "layer", "--help")
    assert _flat(text) in _flat(out)


# ---- 12. the README's commands left the tree dirty ----------------------------------------------


@pytest.mark.parametrize("path", ["reports/check-20250101-120000.md", "reports/sweep-1a2b3c4d/rows.jsonl",
                                  "current/layer.json", "runs/rows.jsonl", "summary.md"])
def test_item12_gitignore_covers_what_the_readme_commands_write(path):
    result = subprocess.run(["git", "check-ignore", "--no-index", "-q", path], cwd=ROOT)
    assert result.returncode == 0, f"{path} is not ignored"
    kept = subprocess.run(["git", "check-ignore", "--no-index", "-q", "reports/baseline/layer.json"],
                          cwd=ROOT)
    assert kept.returncode == 1  # the committed baseline stays tracked
