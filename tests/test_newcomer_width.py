"""Issue 25, item 11: every command's terminal output fits the terminal (COLUMNS 80, 100,
160) with figures visible, and names shortened to fit still tell rows apart.

The quick commands (ops, compare, merge, net --list) run at each width; the measuring
ones (layer, net, sweep, check) run once, at 100 columns (progress, warnings and report:
every line), and the report they showed is drawn again at 80 and 160 columns."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import lrprof.report as report_module
from lrprof.cli import main
from lrprof.record.records import Section
from lrprof.report import fitted_table, render_terminal, shorten

ROOT = Path(__file__).resolve().parents[1]
# the main job's report as committed when these defects were found (v1, unfold): the figures below are its
BASELINE = ROOT / "tests" / "data" / "baseline-v1-layer.json"
WIDTHS = (80, 100, 160)
FAST = ["--min-runs", "2", "--min-time", "0.005", "--device", "cpu"]
NUMBER = re.compile(r"\d[\d,]*(\.\d+)?")


def run_at(capsys, monkeypatch, width: int, *args) -> tuple[int, str, str]:
    monkeypatch.setenv("COLUMNS", str(width))
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_fits(text: str, width: int) -> None:
    long = [line for line in text.splitlines() if len(line) > width]
    assert not long, f"{len(long)} line(s) over {width} columns, e.g. {long[0]!r}"


def column_of(text: str, header: str) -> list[str]:
    """The lines of the table whose header line holds `header` (up to the next blank line)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if header in line)
    body = []
    for line in lines[start + 1:]:
        if not line.strip():
            break
        body.append(line)
    return [line for line in body if not set(line) <= {"-", " "}]


@pytest.fixture
def shown(monkeypatch):
    """The reports a command showed on the terminal."""
    reports = []
    real = report_module.render_terminal

    def keep(report, width=None):
        reports.append(report)
        return real(report, width)

    monkeypatch.setattr(report_module, "render_terminal", keep)
    return reports


def current_report(tmp_path: Path) -> Path:
    data = json.loads(BASELINE.read_text())
    row = data["records"][0]
    for key in ("peak_bytes", "min_bytes", "max_bytes"):
        row["memory"]["fwd"][key] = 84_598_304
    path = tmp_path / "current.json"
    path.write_text(json.dumps(data))
    return path


# ---- the quick commands, at every width ---------------------------------------------------------


@pytest.mark.parametrize("width", WIDTHS)
def test_item11_ops_fits_with_defaults_and_ranges(capsys, monkeypatch, width):
    rc, out, err = run_at(capsys, monkeypatch, width, "ops", "--device", "cpu")
    assert rc == 0 and err == ""
    assert_fits(out, width)
    k = [line for line in column_of(out, "parameter") if line.startswith("--k ")]
    assert k and NUMBER.search(k[0][4:])  # the default, a figure


@pytest.mark.parametrize("width", WIDTHS)
def test_item11_compare_fits_with_its_figures(tmp_path, capsys, monkeypatch, width):
    rc, out, err = run_at(capsys, monkeypatch, width, "compare", BASELINE, current_report(tmp_path))
    assert_fits(out + err, width)
    peak = [line for line in out.splitlines() if "fwd_peak_bytes" in line]
    assert peak and "94,432,800" in peak[0] and "84,598,304" in peak[0] and "-10.4%" in peak[0]


@pytest.mark.parametrize("width", WIDTHS)
def test_item11_net_list_fits(capsys, monkeypatch, width):
    rc, out, _ = run_at(capsys, monkeypatch, width, "net", "--list")
    assert rc == 0
    assert_fits(out, width)
    assert "resnet50" in out and "lr26" in out


@pytest.fixture(scope="module")
def rows_dir(tmp_path_factory) -> Path:
    """A tiny sweep whose rows differ only in size (and k): their names shortened must differ."""
    out = tmp_path_factory.mktemp("rows")
    assert main(["sweep", "--op", "lr", "--k", "1,3", "--m", "2", "--channels", "4", "--size", "6,7", *FAST,
                 "--baseline", "none", "--no-plots", "--in-process", "--quiet", "--out", str(out)]) == 0
    return out


def _sweep_figures(out: str, width: int) -> None:
    assert_fits(out, width)
    measured = [line for line in out.splitlines() if line.startswith("rows measured")]
    assert measured and measured[0].split()[-1] == "4", out  # the value column, not only its names
    fits = column_of(out, "op[impl]")
    assert fits and NUMBER.search(fits[0].split(None, 1)[1])


@pytest.mark.parametrize("width", WIDTHS)
def test_item11_merge_fits_with_figures(rows_dir, tmp_path, capsys, monkeypatch, width):
    rc, out, err = run_at(capsys, monkeypatch, width, "merge", rows_dir, "--out", tmp_path, "--no-plots")
    assert rc == 0, err
    assert_fits(err, width)
    _sweep_figures(out, width)


# ---- the measuring commands: run at 100, drawn again at 80 and 160 ------------------------------


def _redrawn(reports, figure: str) -> None:
    assert reports
    for width in WIDTHS:
        text = render_terminal(reports[-1], width)
        assert_fits(text, width)
        assert figure in " ".join(text.split()), f"no {figure!r} at {width} columns:\n{text}"


def test_item11_layer_fits_and_sizes_stay_apart(tmp_path, capsys, monkeypatch, shown):
    rc, out, err = run_at(capsys, monkeypatch, 100, "layer", "--op", "lr", "--k", "3", "--m", "2",
                          "--channels", "4", "--size", "6,7", *FAST, "--no-stock", "--no-roofline",
                          "--no-plots", "--out", tmp_path)
    assert rc == 0, err
    assert_fits(out + err, 100)
    _redrawn(shown, "fwd ms")
    for width in WIDTHS:
        names = [line.split("  ")[0] for line in render_terminal(shown[-1], width).splitlines()
                 if line.startswith("lr[")]
        firsts = names[:2]  # the first table: the 6x6 and the 7x7 row
        assert len(firsts) == 2 and firsts[0] != firsts[1], (width, names)


def test_item11_sweep_fits_with_figures(tmp_path, capsys, monkeypatch, shown):
    rc, out, err = run_at(capsys, monkeypatch, 100, "sweep", "--op", "lr", "--k", "1,3", "--m", "2",
                          "--channels", "4", "--size", "6,7", *FAST, "--baseline", "none", "--no-plots",
                          "--in-process", "--out", tmp_path)
    assert rc == 0, err
    assert_fits(err, 100)
    _sweep_figures(out, 100)
    for width in WIDTHS:
        _sweep_figures(render_terminal(shown[-1], width), width)


def test_item11_net_fits_with_figures(tmp_path, capsys, monkeypatch, shown):
    rc, out, err = run_at(capsys, monkeypatch, 100, "net", "resnet26", "--size", "32", *FAST,
                          "--hooked-runs", "2", "--no-stock", "--no-plots", "--out", tmp_path)
    assert rc == 0, err
    assert_fits(out + err, 100)
    _redrawn(shown, "MACs")


def test_item11_check_fits_with_figures(tmp_path, capsys, monkeypatch, shown):
    rc, out, err = run_at(capsys, monkeypatch, 100, "check", ROOT / "tests" / "user_layers.py:LocalRelation",
                          "--op", "lr", "--k", "3", "--m", "4", "--channels", "8", "--size", "12", *FAST,
                          "--no-stock", "--out", tmp_path)
    assert rc == 0, err
    assert_fits(out + err, 100)
    _redrawn(shown, "fwd MACs")


# ---- shortened names: rows that differ only in size must not read the same ----------------------


def test_item11_shortened_names_keep_sizes_apart():
    names = [f"lr[unfold] k=3 m=8 s=1 C=64 {n}x{n} B=1" for n in (28, 56)]
    short = shorten(names, 14)
    assert len(set(short)) == 2 and all(len(s) <= 14 for s in short)
    assert "28x28" in short[0] and "56x56" in short[1]
    rows = [{"layer": name, "fwd MACs (M)": "123.456", "fwd ms, median [IQR]": "12.3 [12.1-12.5]",
             "fwd peak (MiB)": "45.6", "fwd time / conv3x3": "1.23", "fwd peak / conv3x3": "2.34",
             "verdict": "ok"} for name in names]
    for width in (60, 80):
        table, _ = fitted_table(Section("Layers", rows), width)
        assert_fits(table, width)
        cells = [line.split("  ")[0] for line in table.splitlines()[-2:]]
        assert cells[0] != cells[1], table
