"""`lrprof check`: lrprof's own layers pass every check through the CLI; layers with one
known bug each (tests/user_layers.py) fail the check that bug breaks, and the others pass.

The expected verdicts are stated here from what each bug does, not read back from lrprof:
a layer without padding shrinks its output and computes fewer windows than the operator
(so its count falls below the exact model too); a reshape that mixes window offsets with
positions reaches scattered pixels and is no longer translation equivariant; random
positions in a plain attribute do not survive a state_dict round trip; a softmax per
channel takes d = C/heads times the operator's exponentials; filters at every pixel cost
about r times the main convolution."""

import csv
import json
from pathlib import Path

import pytest
import torch
from torch import nn
from user_layers import NonLocal, RegionConv

from lrprof.build.ops import Impl, OpDef, register_op, unregister_op
from lrprof.build.ops.cost import CostModel, Term
from lrprof.cli import main
from lrprof.measure.timing import TimingOptions
from lrprof.profile.audit import run_audit
from lrprof.spec.layer import LayerSpec
from lrprof.spec.options import MeasureOptions
from lrprof.spec.params import Param, Schema

LAYERS = str(Path(__file__).with_name("user_layers.py"))
FAST = ["--min-time", "0.01", "--min-runs", "2", "--device", "cpu", "--no-stock"]
OPTIONS = MeasureOptions.for_audit(timing=TimingOptions(warmup=1, warmup_s=0.0, min_runs=2, min_time_s=0.01),
                       memory_runs=1, stock_counters=False)
PROBES = {"output shape", "receptive field (gradient probe)",
          "translation equivariance away from the borders", "border behaviour", "every tensor registered",
          "runs in float64", "runs in float16", "runs in bfloat16", "deterministic on repeat",
          "cost (work ratio)"}
INFO = {"latency beside lrprof's implementation", "peak memory beside lrprof's implementation"}


def run(capsys, *args):
    rc = main([str(a) for a in args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def statuses(directory):
    with open(directory / "check.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["kind"] == "check"]
    return {r["check"]: r["status"] for r in rows}


def audit(cls, op, **params):
    spec = LayerSpec(op=op, channels=8, height=10, width=10, device="cpu", **params)
    return run_audit(f"{LAYERS}:{cls}", spec, options=OPTIONS)


def failed(result):
    return {r.check for r in result.results if r.passed is False}


# ---- lrprof's own layers pass every check, through the CLI ----------------------------------


@pytest.mark.parametrize("target, args", [
    ("lrprof/build/ops/local_relation.py:LocalRelation2d", ["--op", "lr", "--k", "5", "--m", "4"]),
    ("lrprof/build/ops/local_relation.py:LocalRelation2d",
     ["--op", "lr", "--k", "3", "--m", "2", "--stride", "2"]),
    ("lrprof/build/ops/sasa.py:SelfAttention2d", ["--op", "sasa", "--k", "5", "--heads", "4"]),
    ("lrprof.build.ops.sasa:SelfAttention2d", ["--op", "sasa", "--k", "3", "--heads", "2", "--stride", "2"]),
])
def test_lrprofs_own_layers_pass_every_check(target, args, tmp_path, capsys):
    rc, out, err = run(capsys, "check", target, *args, "--channels", "8", "--size", "12", *FAST,
                       "--out", tmp_path, "--quiet")
    assert rc == 0, err
    found = statuses(tmp_path)
    assert {c: s for c, s in found.items() if c in PROBES} == dict.fromkeys(PROBES, "pass")
    assert {found[c] for c in INFO} == {"info"}
    assert err == ""


# ---- one bug each: the matching check fails, the others pass --------------------------------


@pytest.mark.parametrize("cls, op, params, expected", [
    ("LocalRelation", "lr", {"k": 3, "m": 4}, set()),
    ("LocalRelation", "lr", {"k": 3, "m": 4, "stride": 2}, set()),
    # fewer windows are computed, so the count is below the operator's too
    ("ShrinkingLocalRelation", "lr", {"k": 3, "m": 4}, {"output shape", "cost (work ratio)"}),
    # positions mixed with offsets: scattered footprint, and not the same function everywhere
    ("ScrambledLocalRelation", "lr", {"k": 3, "m": 4},
     {"receptive field (gradient probe)", "translation equivariance away from the borders"}),
    ("UnregisteredLocalRelation", "lr", {"k": 3, "m": 4}, {"every tensor registered"}),
    ("LocalAttention", "sasa", {"k": 3, "heads": 2}, set()),
    ("ChannelwiseAttention", "sasa", {"k": 3, "heads": 2}, {"cost (work ratio)"}),
])
def test_each_bug_fails_its_check_and_only_that(cls, op, params, expected):
    result = audit(cls, op, **params)
    assert failed(result) == expected
    ran = {r.check for r in result.results}
    assert ran >= PROBES
    assert all(r.passed is not None for r in result.results if r.check in PROBES)  # nothing skipped


def test_what_each_failure_says():
    shrinking = {r.check: r for r in audit("ShrinkingLocalRelation", "lr", k=3, m=4).results}
    assert shrinking["output shape"].measured.startswith("2x8x8x8")
    assert "10x10 (same size)" in shrinking["output shape"].expected
    scrambled = {r.check: r for r in audit("ScrambledLocalRelation", "lr", k=3, m=4).results}
    assert "scattered" in scrambled["receptive field (gradient probe)"].measured
    assert "3x3 window (9 positions)" in scrambled["receptive field (gradient probe)"].expected
    unregistered = {r.check: r for r in audit("UnregisteredLocalRelation", "lr", k=3, m=4).results}
    text = unregistered["every tensor registered"].measured
    assert "state_dict" in text and "random_positions (1x2x3x3)" in text
    channelwise = {r.check: r for r in audit("ChannelwiseAttention", "sasa", k=3, heads=2).results}
    cost = channelwise["cost (work ratio)"]
    assert cost.figure == pytest.approx(1.0)  # the same MACs: only the softmax is per channel
    # C = 8, 2 heads: d = 4 channels per head, so 4 times the 2 * 9 * 100 exponentials
    assert "7,200 exponentials where the operator has 1,800" in cost.measured


def test_zero_padding_taken_as_pixels_fails_the_border_check(tmp_path):
    """A user layer that reads the zero padding as pixels (no mask) against lrprof's, which
    masks: only the border check fails."""
    source = Path(LAYERS).read_text() + '''

class ZeroPaddedLocalRelation(LocalRelation):
    def forward(self, x):
        b, c, h, w = x.shape
        g, k2 = self.groups, self.k * self.k
        q = self.queries(x)
        logits = -(q.flatten(2).unsqueeze(2) - self.windows(self.key(x))) ** 2
        weights = torch.softmax(logits + self.prior(self.positions()).view(1, g, k2, 1), dim=2)
        values = self.windows(x).view(b, g, self.m, k2, -1)
        return self.project((values * weights.unsqueeze(2)).sum(3).view(b, c, *q.shape[-2:]))
'''
    path = tmp_path / "padded.py"
    path.write_text(source)
    spec = LayerSpec(op="lr", channels=8, height=10, width=10, device="cpu", k=3, m=4)
    result = run_audit(f"{path}:ZeroPaddedLocalRelation", spec, options=OPTIONS)
    assert failed(result) == {"border behaviour"}
    border = next(r for r in result.results if r.check == "border behaviour")
    assert "padding enters as pixels" in border.measured


# ---- filters at every pixel, against a DRConv-like operator registered here ------------------


def _region_cost(spec: LayerSpec) -> CostModel:
    c, hw, b = spec.channels, spec.height * spec.width, spec.batch
    k, r = spec.param("k"), spec.param("regions")
    return CostModel(
        terms=(Term("guide k x k conv", b * c * r * k * k * hw, "B*C*r*k^2*HW"),
               Term("main conv, one filter per pixel", b * c * c * k * k * hw, "B*C^2*k^2*HW")),
        params=c * r * k * k + r * c * c * k * k,
    )


REGION_OP = OpDef(
    name="regionconv",
    summary="DRConv-like region-aware convolution (registered by a test)",
    schema=Schema((Param("k", int, 3, "kernel size", minimum=1, maximum=7, odd=True, headline=True),
                   Param("regions", int, 4, "regions r", minimum=1, maximum=16, headline=True))),
    impls=(Impl("gather", "each pixel's own filter, gathered",
                lambda spec: RegionConv(spec.channels, spec.param("k"), spec.param("regions"))),),
    cost=_region_cost,
    stride_param=None,
)


@pytest.fixture
def regionconv():
    register_op(REGION_OP)
    yield REGION_OP
    unregister_op("regionconv")


def test_filters_at_every_pixel_fail_the_cost_check(regionconv):
    good = audit("RegionConv", "regionconv", k=3, regions=4)
    assert failed(good) == set()
    bad = audit("EveryPixelRegionConv", "regionconv", k=3, regions=4)
    assert failed(bad) == {"cost (work ratio)"}
    cost = next(r for r in bad.results if r.check == "cost (work ratio)")
    # C = 8, r = 4, k = 3: (guide C*r + all r filters r*C*C) / (guide C*r + one filter C*C) = 3
    assert cost.figure == pytest.approx((8 * 4 + 4 * 8 * 8) / (8 * 4 + 8 * 8))


def test_the_regionconv_check_through_the_cli(regionconv, tmp_path, capsys):
    rc, out, err = run(capsys, "check", f"{LAYERS}:EveryPixelRegionConv", "--op", "regionconv",
                       "--regions", "4", "--channels", "8", "--size", "10", *FAST, "--out", tmp_path,
                       "--quiet")
    assert rc == 1
    assert statuses(tmp_path)["cost (work ratio)"] == "FAIL"
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "check failed: cost (work ratio)" in lines[0]
    assert "3x the operator's work" in lines[0]


# ---- a global operator, registered here: the probes take their expectations from it -------


def _nonlocal_cost(spec: LayerSpec) -> CostModel:
    c, b, n = spec.channels, spec.batch, spec.height * spec.width
    inner = c // 2
    keys = -(-spec.height // 2) * -(-spec.width // 2) if spec.param("subsample") else n
    return CostModel(
        terms=(Term("theta, phi, g 1x1", 3 * b * c * inner * n, "3*B*C*C'*N"),
               Term("theta . phi, attention . g", 2 * b * n * keys * inner, "2*B*N*N'*C'"),
               Term("output 1x1", b * inner * c * n, "B*C'*C*N")),
        params=4 * c * inner, softmax_exps=b * n * keys)


GLOBAL_OP = OpDef(
    name="globalattn",
    summary="embedded-Gaussian non-local block (registered by a test)",
    schema=Schema((Param("subsample", bool, False, "2x2 max-pool of phi and g"),)),
    impls=(Impl("matmul", "two matrix products",
                lambda spec: NonLocal(spec.channels, spec.param("subsample"))),),
    cost=_nonlocal_cost,
    stride_param=None,
)


@pytest.fixture
def globalattn():
    register_op(GLOBAL_OP)
    yield GLOBAL_OP
    unregister_op("globalattn")


@pytest.mark.parametrize("subsample, symmetry, footprint", [
    # any permutation of the pixels permutes the output; every pixel reaches every other
    (False, "permutation equivariance", "global (all 10x10 positions)"),
    # pooling keeps only even shifts exact, and routes the gradient through the maxima only
    (True, "translation equivariance (circular shift)", "scattered over a 10x10 box"),
])
def test_a_global_operator_gets_global_expectations(globalattn, subsample, symmetry, footprint):
    result = audit("NonLocal", "globalattn", subsample=subsample)
    assert failed(result) == set()
    rows = {r.check: r for r in result.results}
    assert symmetry in rows and rows[symmetry].passed
    assert rows["receptive field (gradient probe)"].measured.endswith(footprint)
    assert rows["border behaviour"].passed and rows["cost (work ratio)"].figure == 1.0


def test_a_local_layer_fails_against_a_global_operator(globalattn):
    """lrprof's local relation layer offered as the non-local block: its window is not the
    whole map, and it is not permutation equivariant."""
    spec = LayerSpec(op="globalattn", channels=8, height=10, width=10, device="cpu")
    result = run_audit("lrprof/build/ops/local_relation.py:LocalRelation2d", spec,
                       init={"kernel_size": 3, "m": 4}, options=OPTIONS)
    assert {"receptive field (gradient probe)", "permutation equivariance"} <= failed(result)


# ---- the constructor mapping -----------------------------------------------------------------


def test_the_popular_constructor_is_mapped_and_shown(tmp_path, capsys):
    rc, out, err = run(capsys, "check", f"{LAYERS}:LocalAttention", "--op", "sasa", "--k", "3",
                       "--heads", "2", "--channels", "8", "--size", "10", *FAST, "--out", tmp_path, "--quiet")
    assert rc == 0, err
    report = json.loads((tmp_path / "check.json").read_text())
    (section,) = [s for s in report["sections"] if s["title"].startswith("Constructor arguments")]
    mapped = {r["constructor argument"]: (r["value"], r["from"]) for r in section["rows"]}
    assert mapped["in_channels"] == ("8", "operator parameter channels")
    assert mapped["out_channels"] == ("8", "derived: channels (the operator keeps C channels)")
    assert mapped["kernel_size"] == ("3", "operator parameter k")
    assert mapped["padding"] == ("1", "derived: k // 2 (same padding)")
    assert mapped["groups"] == ("2", "operator parameter heads")
    assert mapped["bias"] == ("False", "the class's default")
    assert mapped["(none)"] == ("rel_logits='factored'",
                                "no constructor argument takes it: the class's own choice is profiled")
    md = (tmp_path / "check.md").read_text()
    assert "| groups " in md and "operator parameter heads" in md


def test_init_overrides_a_mapped_argument():
    spec = LayerSpec(op="sasa", channels=8, height=10, width=10, device="cpu", k=3, heads=2)
    result = run_audit(f"{LAYERS}:LocalAttention", spec, init={"groups": 4}, options=OPTIONS)
    row = next(r for r in result.mapping.rows if r["constructor argument"] == "groups")
    assert row["value"] == 4 and row["from"] == "--init (instead of heads=2)"
    # 4 heads of width 2 where the operator has 2 of width 4: twice its exponentials
    assert failed(result) == {"cost (work ratio)"}


@pytest.mark.parametrize("args, option, words", [
    (["--init", "{channels: 8}"], "--init", "not JSON"),
    (["--init", "[8]"], "--init", "not a JSON list"),
    (["--init", '{"colour": 1}'], "--init", "colour is not an argument of LocalAttention("),
    (["--k", "4"], "--k", "odd"),
    (["--op", "nosuchop"], "--op", "one of"),
    (["--heads", "3"], "--heads", "must divide channels"),
    (["--max-work-ratio", "0.5"], "--max-work-ratio", ">= 1"),
    (["--m", "2"], "--m", "not a parameter of op sasa"),
])
def test_bad_input_is_exit_2_naming_the_option(args, option, words, capsys):
    base = {"--op": "sasa", "--k": "3", "--heads": "2"}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    flat = [x for pair in base.items() for x in pair]
    rc, out, err = run(capsys, "check", f"{LAYERS}:LocalAttention", *flat, "--channels", "8", "--size", "10",
                       *FAST)
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith(f"lrprof: error: {option}:") and words in err


def test_a_required_argument_nothing_maps_is_exit_2(tmp_path, capsys):
    path = tmp_path / "needs.py"
    path.write_text("from torch import nn\n\nclass Needs(nn.Module):\n"
                    "    def __init__(self, channels, colour):\n        super().__init__()\n")
    rc, out, err = run(capsys, "check", f"{path}:Needs", "--op", "lr", "--channels", "8", *FAST)
    assert rc == 2 and "--init" in err and "needs colour" in err and err.count("\n") == 1


def test_a_class_that_fails_to_build_or_run_is_one_line_exit_1(capsys):
    for cls, words in (("FailsToBuild", "building FailsToBuild(channels=8) failed: ValueError: channels "
                                        "must be prime"),
                       ("FailsToRun", "running FailsToRun(channels=8) failed: RuntimeError")):
        rc, out, err = run(capsys, "check", f"{LAYERS}:{cls}", "--op", "lr", "--channels", "8",
                           "--size", "10", *FAST)
        assert rc == 1
        assert err.count("\n") == 1 and words in err and "Traceback" not in err


def test_check_rows_identify_what_was_checked(tmp_path, capsys):
    rc, out, err = run(capsys, "check", f"{LAYERS}:ChannelwiseAttention", "--op", "sasa", "--k", "3",
                       "--heads", "2", "--channels", "8", "--size", "10", *FAST, "--out", tmp_path, "--quiet")
    assert rc == 1
    with open(tmp_path / "check.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    checks = [r for r in rows if r["kind"] == "check"]
    identity = set(checks[0]["identity"].split())
    assert {"module", "init", "op", "channels", "height", "width", "dtype", "device", "k", "heads",
            "check"} <= identity
    assert checks[0]["module"].endswith("user_layers.py:ChannelwiseAttention")
    assert json.loads(checks[0]["init"])["groups"] == 2
    assert {r["kind"] for r in rows} == {"check", "module", "layer"}  # yours and lrprof's, timed
    assert "cost (work ratio)" in err and err.count("check failed") == 1


def test_lrprofs_implementation_is_timed_in_the_same_schedule():
    result = audit("LocalAttention", "sasa", k=3, heads=2)
    assert result.user.latency["fwd"].median_ms > 0 and result.own.latency["fwd"].median_ms > 0
    assert result.user.derived["fwd_latency_vs_lrprof"] == pytest.approx(
        result.user.latency["fwd"].median_ms / result.own.latency["fwd"].median_ms)
    assert result.own.config["impl"] == "shift"  # the operator's default implementation
    assert result.user.counted["fwd_MACs"] == result.own.counted["fwd_MACs"]  # both do exactly the model


def test_nothing_in_a_probe_leaks_the_default_dtype():
    audit("UnregisteredLocalRelation", "lr", k=3, m=4)
    assert torch.get_default_dtype() == torch.float32
    assert isinstance(nn.Linear(2, 2).weight.dtype, torch.dtype)


# ---- the README's example file and commands --------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "my_layers.py"


def test_the_readme_example_layers_at_a_small_size():
    spec = LayerSpec(op="sasa", channels=8, height=10, width=10, device="cpu", k=3, heads=2)
    assert failed(run_audit(f"{EXAMPLES}:LocalAttention", spec, options=OPTIONS)) == set()
    channelwise = run_audit(f"{EXAMPLES}:ChannelwiseAttention", spec, options=OPTIONS)
    assert failed(channelwise) == {"cost (work ratio)"}


def readme_commands() -> list[tuple[list[str], int]]:
    """The commands of the README's 'Profile your own layer' section, with the exit status
    each one's comment states (0 when none)."""
    import shlex

    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Profile your own layer"):]
    block = section[section.index("```bash") + 7:section.index("```", section.index("```bash") + 7)]
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        if line.startswith("lrprof "):
            command, _, comment = line.partition("#")
            status = int(comment.split("exit")[1]) if "exit" in comment else 0
            commands.append((shlex.split(command)[1:], status))
    return commands


def test_the_readme_section_has_both_commands():
    commands = [args[0] for args, _ in readme_commands()]
    assert "layer" in commands and "check" in commands


@pytest.mark.slow
def test_the_readme_commands_run_as_written(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    for args, status in readme_commands():
        rc, out, err = run(capsys, *args, "--out", tmp_path, "--quiet")
        assert rc == status, (args, err)


def test_names_match_without_case_or_underscores(globalattn, tmp_path):
    from lrprof.build.ops import get_op, resolve_spec
    from lrprof.build.usermodule import load_target
    from lrprof.profile.audit.mapping import map_arguments

    path = tmp_path / "popular.py"
    path.write_text("from torch import nn\n\nclass NLBlock(nn.Module):\n"
                    "    def __init__(self, In_Channels, sub_sample=True, bn_layer=True):\n"
                    "        super().__init__()\n")
    spec = LayerSpec(op="globalattn", channels=8, height=10, width=10, device="cpu", subsample=False)
    mapping = map_arguments(load_target(f"{path}:NLBlock"), get_op("globalattn"), resolve_spec(spec), {})
    assert mapping.kwargs == {"In_Channels": 8, "sub_sample": False}
    assert [r["from"] for r in mapping.rows] == [
        "operator parameter channels", "operator parameter subsample", "the class's default"]
