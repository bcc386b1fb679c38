"""`lrprof net` end to end at a small input: reports written, the comparison view, bad input."""

import csv
import json

import pytest

from lrprof.cli import main

# --impl unfold: the same layers whatever --impl auto (the default) would take on this machine
FAST = ["--size", "32", "--min-runs", "2", "--min-time", "0.01", "--hooked-runs", "2", "--no-stock",
        "--impl", "unfold"]
LR26 = "lr26"  # unfold is LR-Net's default implementation: not in the name


def test_list_names_every_net(capsys):
    assert main(["net", "--list"]) == 0
    out = capsys.readouterr().out
    for name in ("lr26", "lr50", "lr101", "resnet26", "resnet50", "resnet101"):
        assert name in out


def test_net_vs_writes_stage_breakdown_and_ratios(tmp_path, capsys):
    code = main(["net", "lr26", "--vs", "resnet26", "--per-layer", *FAST, "--out", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "MACs vs time per stage" in out
    assert f"{LR26} vs resnet26, same run" in out
    assert f"MACs {LR26} / resnet26" in (tmp_path / "net.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "net-layers.png", "net-stages.png", "net-versus.png", "net.csv", "net.json", "net.md"]
    rows = list(csv.DictReader((tmp_path / "net.csv").open()))
    kinds = {(r["kind"], r["net"]) for r in rows}
    assert {("net", LR26), ("net", "resnet26"), ("stage", LR26), ("net-layer", "resnet26")} <= kinds
    nets = [r for r in rows if r["kind"] == "net"]
    assert all(r["fwd_MACs"] == r["exact_MACs"] for r in nets)
    assert all(float(r["fwd_images_per_s"]) > 0 for r in nets)
    report = json.loads((tmp_path / "net.json").read_text())
    titles = [s["title"] for s in report["sections"]]
    assert "Paper check" in titles and any(t.startswith("Choices the paper leaves open") for t in titles)
    assert report["argv"][:3] == ["net", "lr26", "--vs"]


def test_net_overrides_name_the_variant(tmp_path):
    assert main(["net", "lr26", "--k", "5", "--m", "4", *FAST, "--out", str(tmp_path), "--quiet"]) == 0
    rows = list(csv.DictReader((tmp_path / "net.csv").open()))
    assert rows[0]["net"] == "lr26(k=5,m=4)"
    assert rows[0]["paper_verdict"] == ""  # the table is for the default net only


@pytest.mark.parametrize("args,needle", [
    (["net"], "NAME"),
    (["net", "vgg"], "NAME"),
    (["net", "resnet50", "--k", "5"], "--k"),
    (["net", "lr50", "--k", "6"], "--k"),
    (["net", "lr50", "--size", "0"], "--size"),
    (["net", "lr50", "--hooked-runs", "1"], "--hooked-runs"),
    (["net", "lr50", "--vs", "nope"], "--vs"),
])
def test_bad_input_is_one_line_exit_2(args, needle, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and "Traceback" not in err[0]
