"""Where the time goes: per-op self time beside per-op work, the trace's ranges, energy or
why not, and the CUDA-only timing options refused on the CPU."""

from __future__ import annotations

import gzip
import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from lrprof.cli import main
from lrprof.measure import energy, optimes
from lrprof.measure.counting import count


class ConvThenMatmul(nn.Module):
    """A module with known ops: one convolution, one matrix product."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 16, 3, padding=1)
        self.weight = nn.Parameter(torch.randn(16 * 12 * 12, 64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).flatten(1) @ self.weight


def test_op_times_of_a_conv_and_a_matmul_carry_their_counted_macs() -> None:
    model, x = ConvThenMatmul().eval(), torch.randn(4, 8, 12, 12)
    counted = count(model, x)
    per_op = {o.op: (o.macs, o.exps) for o in counted.by_op if o.phase == "fwd"}

    def forward() -> None:
        with torch.no_grad():
            model(x)

    row = optimes.ProfiledRow("convmm", {"fwd": forward}, {"fwd": per_op})
    table = optimes.profile_rows([row], torch.device("cpu"))["convmm"]["fwd"]
    by_op = {entry["op"]: entry for entry in table}
    conv_macs = 4 * 16 * 12 * 12 * 8 * 9
    mm_macs = 4 * 16 * 12 * 12 * 64
    assert by_op["aten::convolution"]["MACs"] == conv_macs and by_op["aten::convolution"]["calls"] == 1
    matmul = [e for e in table if e["MACs"] == mm_macs]
    assert len(matmul) == 1 and matmul[0]["op"] in ("aten::mm", "aten::matmul")
    assert all(entry["self_ms"] >= 0 for entry in table)
    assert sum(entry["MACs"] for entry in table) == counted.macs  # every counted MAC has an op


def _event(name: str, parent=None, ms: float = 0.0):
    return SimpleNamespace(name=name, cpu_parent=parent, self_cpu_time_total=ms * 1e3)


def test_self_time_goes_to_the_nearest_counted_op() -> None:
    """aten::convolution is counted; its callee aten::mkldnn_convolution is not: the callee's
    time is the convolution's. An op outside every row's range is not the row's."""
    row = _event("lr fwd")
    conv2d = _event("aten::conv2d", row, 0.01)
    conv = _event("aten::convolution", conv2d, 0.02)
    kernel = _event("aten::mkldnn_convolution", conv, 3.0)
    stray = _event("aten::add", None, 9.0)
    found = optimes.attribute([row, conv2d, conv, kernel, stray], {"lr fwd": ("lr", "fwd")},
                              {"lr": {"aten::convolution"}})
    ops = found[("lr", "fwd")]
    assert ops["aten::convolution"] == pytest.approx([3.02, 1])
    assert ops["aten::conv2d"] == pytest.approx([0.01, 1])  # not counted: the outermost op below the range
    assert "aten::add" not in ops and "aten::mkldnn_convolution" not in ops


def test_layer_report_has_op_times_a_trace_and_energy(tmp_path) -> None:
    out, trace = tmp_path / "run", tmp_path / "trace"
    assert main(["layer", "--k", "3", "--m", "4", "--channels", "16", "--size", "16", "--device", "cpu",
                 "--min-runs", "3", "--min-time", "0.05", "--no-plots", "--quiet", "--out", str(out),
                 "--trace", str(trace)]) == 0
    data = json.loads((out / "layer.json").read_text())
    for record in data["records"]:
        table = record["detail"]["op_times"]
        assert table and {"phase", "op", "calls", "self_ms", "MACs", "exps"} <= set(table[0])
        fwd = [e for e in table if e["phase"] == "fwd"]
        assert sum(e["MACs"] for e in fwd) == record["counted"]["fwd_MACs"]
        assert record["derived"]["energy"]  # a figure, or why there is none
    events = json.loads(gzip.decompress((trace / "layer-trace.json.gz").read_bytes()))["traceEvents"]
    names = {e.get("name") for e in events}
    for record in data["records"]:
        assert f"{record['name']} fwd" in names
    text = (out / "layer.md").read_text()
    assert "Where the time goes" in text and "layer-trace.json.gz" in text


def test_energy_says_why_when_no_counter_is_readable(tmp_path) -> None:
    source = energy.cpu_meter(tmp_path / "no-powercap")
    assert source == "no RAPL powercap on this machine"
    assert energy.energy_per_call(lambda: None, torch.device("cpu"), source) == {"unavailable": source}


def test_energy_reads_a_rapl_counter_and_its_wraparound(tmp_path) -> None:
    zone = tmp_path / "intel-rapl:0"
    zone.mkdir()
    (zone / "max_energy_range_uj").write_text("1000000\n")
    (zone / "energy_uj").write_text("999000\n")
    source = energy.cpu_meter(tmp_path)
    assert not isinstance(source, str)
    (zone / "energy_uj").write_text("1000\n")  # wrapped: 2000 uJ later
    assert source.read() == pytest.approx(1.001)  # joules since the origin, wrap included

    ticks = iter(range(1, 10**6))

    def work() -> None:
        (zone / "energy_uj").write_text(f"{1000 + 500 * next(ticks)}\n")

    result = energy.energy_per_call(work, torch.device("cpu"), source, min_time_s=0.0)
    assert result["joules_per_call"] == pytest.approx(500e-6) and result["calls"] >= 3


@pytest.mark.parametrize("flag", ["--cold", "--cuda-graphs"])
def test_cuda_timing_options_are_refused_on_the_cpu(flag, capsys) -> None:
    assert main(["layer", "--k", "3", flag, "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flag in err[0] and "CUDA only" in err[0]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("flag", ["--cold", "--cuda-graphs"])
def test_cuda_timing_options_run_on_cuda(tmp_path, flag) -> None:
    out = tmp_path / "run"
    assert main(["layer", "--op", "conv", "--k", "3", "--size", "16", flag, "--min-runs", "3",
                 "--no-plots", "--quiet", "--out", str(out), "--device", "cuda"]) == 0
    data = json.loads((out / "layer.json").read_text())
    assert data["records"][0]["config"]["timing"] == flag[2:]
