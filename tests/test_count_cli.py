"""`lrprof count` from the command line: the operator's count as `layer` gives it, a user's
module with its tree, the conventions, --backward with and without the input's gradient,
--meta (and its refusals), uncounted ops failing, and bad input exit 2."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from lrprof.cli import main

HERE = Path(__file__).parent
MODELS = str(HERE / "count_models.py")
EXAMPLE = str(HERE.parent / "examples" / "my_layers.py")


def run(capsys, *args):
    rc = main([str(a) for a in args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def records(directory: Path) -> list[dict]:
    return json.loads((directory / "count.json").read_text())["records"]


def test_op_counts_what_layer_counts(capsys, tmp_path):
    rc, out, err = run(capsys, "count", "--op", "lr", "--k", "7", "--m", "8", "--out", tmp_path)
    assert rc == 0, err
    main_record = records(tmp_path)[0]
    assert main_record["kind"] == "count"
    assert main_record["counted"]["fwd_MACs"] == 27_124_048  # what `lrprof layer --k 7 --m 8` counts
    assert "27,124,048" in out
    assert {p.name for p in tmp_path.iterdir()} == {"count.md", "count.csv", "count.json"}


def test_module_tree_with_shapes(capsys, tmp_path):
    rc, out, err = run(capsys, "count", "--module", f"{EXAMPLE}:SmallCNN", "--input", "8x3x64x64",
                       "--out", tmp_path, "--no-plots", "--depth", "1")
    assert rc == 0, err
    with open(tmp_path / "count.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    kinds = [r["kind"] for r in rows]
    assert kinds[0] == "count" and set(kinds[1:]) == {"count-part"}
    parts = {r["part"]: r for r in rows[1:]}
    assert parts["stem"]["input_shape"] == "8x3x64x64"
    assert parts["stem"]["output_shape"] == "8x32x64x64"
    assert int(parts["stem"]["fwd_MACs"]) == 8 * 32 * 64 * 64 * 3 * 9
    assert all(p.count(".") == 0 for p in parts)  # depth 1
    assert "Op families" in (tmp_path / "count.md").read_text()


def test_conventions_and_flops(capsys, tmp_path):
    rc, _, err = run(capsys, "count", "--net", "resnet50", "--meta", "--depth", "0",
                     "--convention", "flopcounter", "--out", tmp_path, "--quiet")
    assert rc == 0, err
    exact = records(tmp_path)[0]["counted"]
    assert exact["fwd_FLOPs"] == 2 * exact["fwd_MACs"] == 2 * 4_089_184_256
    rc, _, err = run(capsys, "count", "--net", "resnet50", "--meta", "--depth", "0",
                     "--convention", "fvcore", "--out", tmp_path, "--quiet")
    assert rc == 0, err
    record = records(tmp_path)[0]
    assert record["counted"]["fwd_MACs"] > 4_089_184_256  # batch norm and the pool, as fvcore counts
    assert record["derived"]["lrprof_fwd_MACs"] == 4_089_184_256


def test_backward_with_and_without_the_input_gradient(capsys, tmp_path):
    base = ["count", "--module", f"{EXAMPLE}:SmallCNN", "--input", "2x3x16x16", "--backward", "--quiet"]
    assert run(capsys, *base, "--out", tmp_path / "with")[0] == 0
    assert run(capsys, *base, "--no-input-grad", "--out", tmp_path / "without")[0] == 0
    with_grad = records(tmp_path / "with")[0]["counted"]
    without = records(tmp_path / "without")[0]["counted"]
    stem = 2 * 32 * 16 * 16 * 3 * 9  # the stem's input gradient: the image needs none
    assert with_grad["bwd_MACs"] - without["bwd_MACs"] == stem
    assert with_grad["bwd_MACs"] == 2 * with_grad["fwd_MACs"]


def test_meta_refuses_value_reads_in_one_line(capsys):
    rc, _, err = run(capsys, "count", "--module", f"{MODELS}:Routed", "--input", "1x4x8x8", "--meta")
    assert rc == 1
    assert err.count("\n") == 1 and "aten::_local_scalar_dense" in err and "--meta" in err


def test_uncounted_op_fails(capsys, tmp_path):
    rc, _, err = run(capsys, "count", "--module", f"{MODELS}:NoRule", "--input", "2x3", "--out", tmp_path)
    assert rc == 1
    assert "aten::cos" in err
    # a peer's convention counts what it counts: nothing fails
    rc, _, err = run(capsys, "count", "--module", f"{MODELS}:NoRule", "--input", "2x3", "--out", tmp_path,
                     "--convention", "fvcore")
    assert rc == 0, err


@pytest.mark.parametrize("args, option", [
    (["--convention", "bogus"], "--convention"),
    (["--no-input-grad"], "--input-grad"),
    (["--module", f"{EXAMPLE}:SmallCNN", "--input", "1x3x8x8", "--k", "7"], "--k"),
    (["--net", "resnet50", "--init", "{}"], "--init"),
    (["--net", "resnet50", "--channels", "32"], "--channels"),
    (["--module", f"{EXAMPLE}:SmallCNN", "--op", "lr", "--input", "1x3x8x8"], "--op"),
    (["--depth", "-1"], "--depth"),
])
def test_bad_input_exit_2(capsys, args, option):
    rc, _, err = run(capsys, "count", *args)
    assert rc == 2
    assert option in err
