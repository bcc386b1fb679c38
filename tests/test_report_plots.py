"""Layer and net reports draw their pictures beside the markdown and link them from it;
--no-plots draws none; a single row gets no comparison plot."""

import json
import struct

import pytest

from lrprof.cli import main

LAYER = ["layer", "--channels", "8", "--size", "8", "--k", "3", "--m", "4", "--min-time", "0.02",
         "--min-runs", "2", "--no-stock", "--device", "cpu", "--quiet"]
NET = ["net", "lr26", "--vs", "resnet26", "--per-layer", "--size", "32", "--min-runs", "2",
       "--min-time", "0.01", "--hooked-runs", "2", "--no-stock", "--quiet"]


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_a_layer_report_links_its_rows_plot(tmp_path):
    assert main([*LAYER, "--backward", "--out", str(tmp_path)]) == 0
    width, height = png_size(tmp_path / "layer-rows.png")
    assert width > 600 and height > 150
    markdown = (tmp_path / "layer.md").read_text()
    assert "![Latency and work per row](layer-rows.png)" in markdown
    figures = json.loads((tmp_path / "layer.json").read_text())["figures"]
    assert [f["file"] for f in figures] == ["layer-rows.png"]


def test_no_plots_draws_none_and_one_row_needs_none(tmp_path):
    assert main([*LAYER, "--no-plots", "--out", str(tmp_path / "off")]) == 0
    assert not list((tmp_path / "off").glob("*.png"))
    assert "## Figures" not in (tmp_path / "off" / "layer.md").read_text()
    assert main([*LAYER, "--baseline", "none", "--out", str(tmp_path / "one")]) == 0
    assert not list((tmp_path / "one").glob("*.png"))  # nothing to compare a single row with


@pytest.mark.parametrize("name", ["net-stages.png", "net-versus.png", "net-layers.png"])
def test_net_vs_per_layer_draws_shares_versus_and_layers(tmp_path_factory, name):
    out = tmp_path_factory.getbasetemp() / "netplots"
    if not (out / "net.md").exists():
        assert main([*NET, "--out", str(out)]) == 0
    width, height = png_size(out / name)
    assert width > 500 and height > 250
    assert f"]({name})" in (out / "net.md").read_text()


def test_long_row_names_keep_what_tells_rows_apart() -> None:
    """Rows of one figure differ by their shape, dtype or a parameter: shortened names keep it."""
    from lrprof.report.plots.layer import NAME_LIMIT, short_names

    sizes = [f"nonlocal[bmm] pairwise=embedded_gaussian C=64 {s}x{s} B=1" for s in (28, 56, 112)]
    short = short_names(sizes + ["conv[torch] k=3 s=1 C=64 56x56 B=1"])
    assert all(len(s) <= NAME_LIMIT for s in short) and len(set(short)) == 4
    assert short[2].startswith("nonlocal[bmm]") and "112x112" in short[2]
    assert short[3] == "conv[torch] k=3 s=1 C=64 56x56 B=1"  # short enough: unchanged
    channels = short_names([f"lr[unfold] k=7 m=8 s=1 C={c} 56x56 B=1 float16" for c in (64, 128)])
    assert len(set(channels)) == 2 and "C=128" in channels[1]
    phis = short_names([f"lr[unfold] k=7 m=8 s=1 C=128 56x56 B=1 phi={p} float16"
                        for p in ("absdiff", "mul", "sqdiff")])
    assert len(set(phis)) == 3 and all(len(s) <= NAME_LIMIT for s in phis)
