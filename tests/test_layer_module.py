"""`lrprof layer --module`: a user's own nn.Module, loaded from a file or a dotted module
path, profiled like lrprof's own layers: MACs forward and backward, a table of every
submodule whose own MACs sum to the total, the stock counters, the 3x3 conv baseline;
bad input is exit 2 naming the option, the user's code failing is one line and exit 1.

Expected MACs are worked out here by hand from the layers' shapes."""

import csv
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from lrprof.build.usermodule import ModuleSpec
from lrprof.cli import main
from lrprof.measure.timing import TimingOptions
from lrprof.profile.module import profile_instance, profile_module
from lrprof.spec.options import MeasureOptions

LAYERS = str(Path(__file__).with_name("user_layers.py"))
FAST = ["--min-time", "0.01", "--min-runs", "2", "--device", "cpu"]
OPTIONS = MeasureOptions(timing=TimingOptions(warmup=1, warmup_s=0.0, min_runs=2, min_time_s=0.01),
                        memory_runs=1, hooked_runs=2, stock_counters=False)


def run(capsys, *args):
    rc = main([str(a) for a in args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def rows_of(directory):
    with open(directory / "layer.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def tiny_cnn_macs(batch: int, channels: int, size: int, classes: int = 10) -> dict[str, int]:
    """TinyCNN by hand: 3x3 stem 3 -> C, two 3x3 convs C -> C, x * sigmoid(x) in the root's
    own forward (one multiply per element), a C -> classes linear; batch norm counts 0."""
    hw = size * size
    conv = batch * channels * channels * 9 * hw
    return {"stem": batch * channels * 3 * 9 * hw, "blocks.0.conv": conv, "blocks.1.conv": conv,
            "root": batch * channels * hw, "head": batch * channels * classes}


def test_per_module_table_of_a_small_cnn_sums_to_the_total(tmp_path, capsys):
    rc, out, err = run(capsys, "layer", "--module", f"{LAYERS}:TinyCNN", "--init", '{"channels": 8}',
                       "--input", "2x3x12x12", *FAST, "--out", tmp_path, "--quiet")
    assert rc == 0, err
    rows = rows_of(tmp_path)
    (whole,) = [r for r in rows if r["kind"] == "module"]
    parts = {r["part"]: r for r in rows if r["kind"] == "module-part"}
    by_hand = tiny_cnn_macs(2, 8, 12)
    total = sum(by_hand.values())
    assert int(whole["fwd_MACs"]) == total
    assert sum(int(p["own_fwd_MACs"]) for p in parts.values()) == total
    assert int(parts["(whole module)"]["own_fwd_MACs"]) == by_hand["root"]
    for name in ("stem", "blocks.0.conv", "blocks.1.conv", "head"):
        assert int(parts[name]["fwd_MACs"]) == by_hand[name]
    assert int(parts["blocks"]["fwd_MACs"]) == 2 * by_hand["blocks.0.conv"]
    assert int(parts["blocks.0.norm"]["fwd_MACs"]) == 0
    assert float(parts["stem"]["MACs_share_pct"]) == pytest.approx(100 * by_hand["stem"] / total)
    assert float(parts["(whole module)"]["latency_share_pct"]) == pytest.approx(100)
    assert 0 < float(parts["blocks.0.conv"]["latency_share_pct"]) < 100
    assert int(parts["blocks.1"]["params"]) == 8 * 8 * 9 + 2 * 8
    assert parts["head"]["type"] == "Linear" and parts["blocks.0"]["calls"] == "1"
    md = (tmp_path / "layer.md").read_text()
    assert "## Submodules" in md and "| blocks.0.conv" in md and "## What stock counters see" in md


def test_identity_says_what_was_profiled_and_the_baseline_is_timed_beside_it(tmp_path, capsys):
    rc, out, err = run(capsys, "layer", "--module", f"{LAYERS}:TinyCNN", "--init",
                       '{"classes": 5, "channels": 4}', "--input", "1x3x8x8", *FAST, "--out", tmp_path,
                       "--quiet")
    assert rc == 0, err
    rows = rows_of(tmp_path)
    (whole,) = [r for r in rows if r["kind"] == "module"]
    assert set(whole["identity"].split()) == {"module", "init", "input", "dtype", "device", "compile"}
    assert whole["module"] == f"{LAYERS}:TinyCNN"
    assert json.loads(whole["init"]) == {"channels": 4, "classes": 5} and whole["init"].index("channels") < \
        whole["init"].index("classes")  # canonical: sorted keys
    assert (whole["input"], whole["dtype"], whole["device"]) == ("1x3x8x8", "float32", "cpu")
    assert whole["compile"] == "none"
    (baseline,) = [r for r in rows if r.get("role") == "baseline"]
    assert (baseline["op"], baseline["k"], baseline["channels"]) == ("conv", "3", "3")
    assert (baseline["height"], baseline["stride"]) == ("8", "1")
    assert int(baseline["fwd_MACs"]) == 3 * 3 * 9 * 64
    assert float(whole["fwd_latency_vs_baseline"]) > 0 and float(whole["fwd_peak_bytes"]) >= 0
    report = json.loads((tmp_path / "layer.json").read_text())
    (record,) = [r for r in report["records"] if r["kind"] == "module"]
    assert record["detail"]["source"] == LAYERS and len(record["detail"]["source_sha256"]) == 64


def test_backward_of_a_conv_is_two_forwards(tmp_path, capsys):
    """torch.nn.Conv2d through its dotted module path: the backward (input and weight
    gradients) costs two forwards."""
    init = '{"in_channels": 4, "out_channels": 6, "kernel_size": 3, "padding": 1, "bias": false}'
    rc, out, err = run(capsys, "layer", "--module", "torch.nn:Conv2d", "--init", init, "--input", "2x4x8x8",
                       "--backward", "--no-stock", *FAST, "--out", tmp_path, "--quiet")
    assert rc == 0, err
    (whole,) = [r for r in rows_of(tmp_path) if r["kind"] == "module"]
    forward = 2 * 6 * 64 * 4 * 9
    assert int(whole["fwd_MACs"]) == forward and int(whole["bwd_MACs"]) == 2 * forward
    assert float(whole["fwd_bwd_median_ms"]) > 0


def test_several_inputs_comma_separated_or_repeated(tmp_path, capsys):
    for inputs in (["--input", "1x4x6x6,1x4x6x6"], ["--input", "1x4x6x6", "--input", "1x4x6x6"]):
        rc, out, err = run(capsys, "layer", "--module", f"{LAYERS}:TwoInputs", *inputs, "--no-stock", *FAST,
                           "--out", tmp_path, "--quiet")
        assert rc == 0, err
        (whole,) = [r for r in rows_of(tmp_path) if r["kind"] == "module"]
        assert whole["input"] == "1x4x6x6,1x4x6x6"
        assert int(whole["fwd_MACs"]) == 4 * 4 * 36 + 4 * 36  # the 1x1 conv, then the gate multiply


def test_a_package_module_with_relative_imports(tmp_path, capsys, monkeypatch):
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "parts.py").write_text("from torch import nn\n\ndef make(c):\n    return nn.Conv2d(c, c, 1)\n")
    (package / "attention.py").write_text(
        "from torch import nn\nfrom .parts import make\n\n"
        "class Mixer(nn.Module):\n    def __init__(self, channels):\n        super().__init__()\n"
        "        self.mix = make(channels)\n\n    def forward(self, x):\n        return self.mix(x)\n")
    monkeypatch.chdir(tmp_path)
    for target in ("mypkg.attention:Mixer", str(package / "attention.py") + ":Mixer"):
        rc, out, err = run(capsys, "layer", "--module", target, "--init", '{"channels": 4}',
                           "--input", "1x4x5x5", "--no-stock", *FAST, "--out", tmp_path / "out", "--quiet")
        assert rc == 0, err
        (whole,) = [r for r in rows_of(tmp_path / "out") if r["kind"] == "module"]
        assert int(whole["fwd_MACs"]) == 4 * 4 * 25


@pytest.mark.parametrize("args, option, words", [
    (["--init", "{'channels': 8}"], "--init", "not JSON"),
    (["--init", "8"], "--init", "not a JSON int"),
    (["--init", '{"widht": 8}'], "--init", "widht is not an argument of TinyCNN(channels"),
    (["--input", "1x3xAx8"], "--input", "shape(s) such as 1x64x56x56"),
    (["--input", "1x3x0x8"], "--input", "shape(s) such as 1x64x56x56"),
    (["--input", "1x3x8x8,"], "--input", "none empty"),
    (["--dtype", "float8"], "--dtype", "one of float32"),
    (["--k", "3"], "--k", "with --module, give the constructor's arguments in --init"),
    (["--channels", "16"], "--channels", "not with --module"),
    (["--compile", "nosuchbackend"], "--compile", "a torch.compile backend"),
])
def test_bad_input_is_exit_2_naming_the_option(args, option, words, capsys):
    base = {"--init": '{"channels": 4}', "--input": "1x3x8x8"}
    extra = []
    for flag, value in zip(args[::2], args[1::2], strict=True):
        if flag in base:
            base[flag] = value
        else:
            extra += [flag, value]
    flat = [x for pair in base.items() for x in pair]
    rc, out, err = run(capsys, "layer", "--module", f"{LAYERS}:TinyCNN", *flat, *extra, *FAST)
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith(f"lrprof: error: {option}:") and words in err


@pytest.mark.parametrize("target, words", [
    ("user_layers.py", "a colon before the class name"),
    ("no/such/file.py:Net", "no such file"),
    (f"{LAYERS}:NoSuchClass", "its nn.Module classes: Block, ChannelwiseAttention"),
    ("no_such_package.layers:Net", "an importable module"),
])
def test_a_target_that_names_nothing_is_exit_2(target, words, capsys):
    rc, out, err = run(capsys, "layer", "--module", target, "--input", "1x3x8x8", *FAST)
    assert rc == 2 and err.startswith("lrprof: error: --module:") and words in err and err.count("\n") == 1


def test_module_options_without_module_and_module_without_input_are_exit_2(capsys):
    rc, out, err = run(capsys, "layer", "--init", '{"channels": 4}', *FAST)
    assert rc == 2 and "--init: only with --module" in err
    rc, out, err = run(capsys, "layer", "--module", f"{LAYERS}:TinyCNN", *FAST)
    assert rc == 2 and "--input:" in err


def test_the_users_code_failing_is_one_line_and_exit_1(tmp_path, capsys):
    broken = tmp_path / "broken.py"
    broken.write_text("import torch\nraise ImportError('needs a GPU build')\n")
    syntax = tmp_path / "syntax.py"
    syntax.write_text("class Net(:\n    pass\n")
    cases = [
        (f"{LAYERS}:FailsToBuild", '{"channels": 4}', "building FailsToBuild(channels=4) failed: ValueError"),
        (f"{LAYERS}:FailsToRun", '{"channels": 4}', "running FailsToRun(channels=4) failed: RuntimeError"),
        (f"{broken}:Net", "{}", "importing " + str(broken) + " failed: ImportError: needs a GPU build"),
        (f"{syntax}:Net", "{}", "failed: SyntaxError"),
    ]
    for target, init, words in cases:
        rc, out, err = run(capsys, "layer", "--module", target, "--init", init, "--input", "1x4x8x8", *FAST)
        assert rc == 1
        assert err.count("\n") == 1 and words in err and "Traceback" not in err


def test_a_compiled_module_counts_its_eager_ops(tmp_path, capsys):
    rc, out, err = run(capsys, "layer", "--module", f"{LAYERS}:TinyCNN", "--init", '{"channels": 4}',
                       "--input", "1x3x8x8", "--compile", "eager", "--no-stock", *FAST, "--out", tmp_path,
                       "--quiet")
    assert rc == 0, err
    rows = rows_of(tmp_path)
    (whole,) = [r for r in rows if r["kind"] == "module"]
    assert whole["compile"] == "eager" and "compiled[eager]" in whole["name"]
    assert int(whole["fwd_MACs"]) == sum(tiny_cnn_macs(1, 4, 8).values())
    parts = {r["part"]: r for r in rows if r["kind"] == "module-part"}
    assert int(parts["stem"]["fwd_MACs"]) == tiny_cnn_macs(1, 4, 8)["stem"]  # named as in the eager module
    assert parts["stem"]["fwd_median_ms"] == ""  # fused: no time of its own
    assert "its parts run fused" in (tmp_path / "layer.md").read_text()


def test_the_api_profiles_a_module_you_built():
    from user_layers import TinyCNN

    model = TinyCNN(channels=4).eval()
    profile = profile_instance(model, (torch.randn(1, 3, 8, 8),), OPTIONS)
    assert profile.record.counted["fwd_MACs"] == sum(tiny_cnn_macs(1, 4, 8).values())
    assert profile.baseline is not None and profile.baseline.config["op"] == "conv"
    own = sum(p.counted["own_fwd_MACs"] for p in profile.parts)
    assert own == profile.record.counted["fwd_MACs"]


def test_the_api_spec_and_a_stride_2_baseline():
    init = {"in_channels": 4, "out_channels": 4, "kernel_size": 3, "padding": 1, "groups": 2, "stride": 2}
    spec = ModuleSpec.create(f"{LAYERS}:LocalAttention", init, [(1, 4, 8, 8)])
    profile = profile_module(spec, OPTIONS)
    assert profile.record.config["input"] == "1x4x8x8"
    assert profile.baseline.config["stride"] == 2  # the module halves the map


@pytest.mark.slow
def test_an_inductor_compiled_module(tmp_path, capsys):
    rc, out, err = run(capsys, "layer", "--module", f"{LAYERS}:TinyCNN", "--init", '{"channels": 4}',
                       "--input", "1x3x8x8", "--compile", "inductor", *FAST, "--out", tmp_path, "--quiet")
    assert rc == 0, err
    (whole,) = [r for r in rows_of(tmp_path) if r["kind"] == "module"]
    assert int(whole["fwd_MACs"]) == sum(tiny_cnn_macs(1, 4, 8).values())
    assert float(whole["fwd_median_ms"]) > 0


def test_nn_module_default_dtype_is_left_alone():
    assert torch.get_default_dtype() == torch.float32 and nn.Conv2d(1, 1, 1).weight.dtype == torch.float32


def test_masks_built_with_bitwise_ops_count_zero_and_are_not_uncounted():
    from lrprof.measure import counting

    class Masked(nn.Module):
        def forward(self, x):
            keep = ~(x > 0) & (x > -1) | (x < -2)
            return x.masked_fill(keep ^ (x > 5), 0.0) * 2

    result = counting.count(Masked(), torch.randn(2, 3))
    assert result.complete and result.macs == 6


def test_an_op_no_rule_counts_is_listed_and_fails_the_row(tmp_path, capsys):
    path = tmp_path / "gelu_like.py"
    path.write_text("import torch\nfrom torch import nn\n\n"
                    "class ErfGate(nn.Module):\n    def forward(self, x):\n        return x * torch.erf(x)\n")
    rc, out, err = run(capsys, "layer", "--module", f"{path}:ErfGate", "--input", "1x2x4x4", "--no-stock",
                       *FAST, "--out", tmp_path, "--quiet")
    assert rc == 1
    assert "check failed: uncounted ops" in err
    (whole,) = [r for r in rows_of(tmp_path) if r["kind"] == "module"]
    assert whole["uncounted_ops"] == "uncounted ops: aten::erf x1" and whole["uncounted"] == "True"
    assert int(whole["fwd_MACs"]) == 32  # the multiply is still counted
