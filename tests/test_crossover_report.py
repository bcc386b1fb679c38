"""A layer report with a global operator at several sizes says, in one line, where its
quadratic term overtakes each local operator, in MACs and in latency."""

from lrprof.measure.device import Environment
from lrprof.measure.timing import Stats
from lrprof.record.records import Record
from lrprof.report import render_markdown
from lrprof.report.layer import layer_report


def row(op: str, impl: str, side: int, macs: float, ms: float) -> Record:
    config = {"op": op, "impl": impl, "batch": 1, "channels": 64, "height": side, "width": side,
              "dtype": "float32", "device": "cpu"}
    record = Record("layer", f"{op}[{impl}] {side}x{side}", config)
    record.counted["fwd_MACs"] = int(macs)
    record.latency["fwd"] = Stats.from_times([ms, ms, ms], 1, "t", 2)
    return record


def env() -> Environment:
    return Environment("cpu", "Test CPU", "9", "0.1", "3.11", "linux", None, "Test CPU", 2, 2)


def test_the_crossing_is_interpolated_from_the_measured_rows():
    """Global: N^2 work and time; local: 64 N. They are equal at N = 64 pixels in MACs and,
    with the global one's time per MAC twice the local one's, at N = 32 in latency."""
    records = []
    for side in (4, 8, 16):  # N = 16, 64, 256
        n = side * side
        records.append(row("nonlocal", "bmm", side, n * n, 2e-6 * n * n))
        records.append(row("lr", "unfold", side, 64 * n, 1e-6 * 64 * n))
    report = layer_report(records, ["layer"], env())
    (section,) = [s for s in report.sections if s.title.startswith("Where the global operator")]
    (line,) = section.rows
    assert line["MACs overtake at (pixels)"] == "64 (~8x8)"
    assert line["latency overtakes at (pixels)"] == "32 (~6x6)"
    assert "its latency passes lr[unfold]'s at ~6x6" in section.note
    assert "## Where the global operator overtakes the local ones" in render_markdown(report)


def test_no_global_operator_no_section():
    records = [row("lr", "unfold", s, 64 * s * s, 1.0) for s in (4, 8)]
    titles = [s.title for s in layer_report(records, ["layer"], env()).sections]
    assert not any(t.startswith("Where the global") for t in titles)
