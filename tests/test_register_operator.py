"""An operator defined here, in a test file, with its schema, implementations and cost model,
is profiled through the CLI with no change anywhere in the package: options come from its
schema, its rows carry its parameters as identity, every implementation's output is
checked, and doing more work than the minimum is a ratio, not a failure."""

import csv
import json

import pytest
import torch
from torch import nn

from lrprof.build.ops import Impl, OpDef, register_op, unregister_op
from lrprof.build.ops.cost import CostModel, Term
from lrprof.cli import main
from lrprof.spec.layer import LayerSpec
from lrprof.spec.params import Param, Schema

FAST = ["--min-time", "0.02", "--min-runs", "2", "--no-stock", "--device", "cpu"]


class DepthwiseSeparable(nn.Module):
    """k x k depthwise conv, then a 1x1 to C * multiplier channels."""

    def __init__(self, channels: int, k: int, stride: int, multiplier: int, variant: str = "plain") -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, k, stride, k // 2, groups=channels, bias=False)
        self.pointwise = nn.Conv2d(channels, channels * multiplier, 1, bias=False)
        self.variant = variant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pointwise(self.depthwise(x))
        if self.variant == "twice":  # the same result computed twice, averaged: more work, same output
            y = 0.5 * (y + self.pointwise(self.depthwise(x)))
        if self.variant == "broken":
            y = y + 0.01
        return y


def build(variant: str):
    def make(spec: LayerSpec) -> nn.Module:
        p = dict(spec.params)
        return DepthwiseSeparable(spec.channels, p["k"], p["stride"], p["multiplier"], variant)
    return make


def cost(spec: LayerSpec) -> CostModel:
    p = dict(spec.params)
    out_hw = ((spec.height - 1) // p["stride"] + 1) * ((spec.width - 1) // p["stride"] + 1)
    c, b = spec.channels, spec.batch
    return CostModel(
        terms=(Term("depthwise", b * c * out_hw * p["k"] ** 2, "B*C*H'W'*k^2"),
               Term("pointwise", b * c * c * p["multiplier"] * out_hw, "B*C*C*mult*H'W'")),
        params=c * p["k"] ** 2 + c * c * p["multiplier"],
    )


DWSEP = OpDef(
    name="dwsep",
    summary="depthwise separable convolution (registered by a test)",
    schema=Schema((
        Param("k", int, 3, "depthwise kernel size", minimum=1, maximum=9, odd=True, headline=True),
        Param("stride", int, 1, "stride", minimum=1, maximum=2, headline=True, short="s"),
        Param("multiplier", int, 1, "pointwise output channels per input channel", minimum=1, maximum=4),
    )),
    impls=(Impl("torch", "two nn.Conv2d", build("plain")),
           Impl("twice", "computes it twice", build("twice")),
           Impl("broken", "adds 0.01", build("broken"))),
    cost=cost,
    cost_text="B*C*H'W'*k^2 + B*C^2*mult*H'W'",
)


@pytest.fixture
def dwsep():
    register_op(DWSEP)
    yield DWSEP
    unregister_op("dwsep")


def run(capsys, *args):
    rc = main(list(args))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def rows_of(directory):
    with open(directory / "layer.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_test_registered_operator_is_profiled_through_the_cli(dwsep, tmp_path, capsys):
    rc, out, err = run(capsys, "layer", "--op", "dwsep", "--k", "5", "--multiplier", "2",
                       "--channels", "8", "--size", "10", *FAST, "--out", str(tmp_path), "--quiet")
    assert rc == 0, err
    row, baseline = rows_of(tmp_path)
    assert (row["op"], row["impl"], row["k"]) == ("dwsep", "torch", "5")
    assert (row["multiplier"], row["stride"]) == ("2", "1")
    assert set(row["identity"].split()) >= {"op", "impl", "k", "stride", "multiplier", "channels", "dtype"}
    expected = 8 * 100 * 25 + 8 * 16 * 100
    assert int(row["fwd_MACs"]) == int(row["exact_MACs"]) == expected
    assert row["verdict"] == "ok" and float(row["output_max_rel_err"]) < 1e-5
    assert (baseline["op"], baseline["role"]) == ("conv", "baseline")
    assert float(row["fwd_latency_vs_baseline"]) > 0


def test_its_implementations_are_checked_and_more_work_is_a_ratio(dwsep, tmp_path, capsys):
    rc, out, err = run(capsys, "layer", "--op", "dwsep", "--impl", "all", "--channels", "4", "--size", "6",
                       *FAST, "--out", str(tmp_path), "--quiet")
    assert rc == 1  # the broken implementation fails its output check
    rows = {r["impl"]: r for r in rows_of(tmp_path) if r["op"] == "dwsep"}
    assert rows["torch"]["verdict"] == "ok"
    twice = rows["twice"]
    assert twice["failed"] == "False" and float(twice["work_ratio"]) > 2  # reported, not failed
    assert "minimal MACs" in twice["verdict"]
    broken = rows["broken"]
    assert broken["output_ok"] == "False" and "output mismatch" in broken["verdict"]
    assert "dwsep[broken]" in err and "output mismatch" in err and "dwsep[twice]" not in err


def test_an_option_the_operator_does_not_take_is_exit_2(dwsep, capsys):
    rc, out, err = run(capsys, "layer", "--op", "dwsep", "--m", "4", *FAST)
    assert rc == 2
    assert err.count("\n") == 1 and "--m" in err and "not a parameter of op dwsep" in err


def test_its_schema_validates_its_options(dwsep, capsys):
    rc, out, err = run(capsys, "layer", "--op", "dwsep", "--multiplier", "9", *FAST)
    assert rc == 2 and "--multiplier" in err and "1..4" in err


def test_ops_lists_the_registered_operator(dwsep, capsys):
    rc, out, _ = run(capsys, "ops", "--device", "cpu")
    assert rc == 0
    assert "dwsep: depthwise separable convolution" in out and "--multiplier" in out


def test_ops_lists_lr_with_parameters_defaults_and_implementations(capsys):
    rc, out, _ = run(capsys, "ops", "--device", "cpu", "--format", "json")
    assert rc == 0
    data = json.loads(out)
    (lr,) = [op for op in data["operators"] if op["name"] == "lr"]
    params = {p["option"]: p for p in lr["parameters"]}
    assert {k: params[k]["default"] for k in params} == {
        "--k": "7", "--m": "8", "--stride": "1", "--phi": "sqdiff", "--geometry-hidden": "G"}
    assert params["--phi"]["allowed"] == "one of sqdiff, absdiff, mul"
    assert params["--m"]["allowed"] == "an integer in 1..channels"
    (unfold,) = [i for i in lr["implementations"] if i["name"] == "unfold"]
    assert unfold["default"] and unfold["available"]
    rc, text, _ = run(capsys, "ops", "--device", "cpu")
    assert "lr: local relation layer" in text and "unfold (default)" in text and "--geometry-hidden" in text
