"""Report schema version 2: `lrprof schema` prints a JSON Schema that every report lrprof
writes (layer, net, module, sweep, check) and every comparison validates against, and that
rejects a report whose figures are of the wrong type. Version-1 reports still compare."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest

from lrprof.cli import main

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--min-runs", "2", "--min-time", "0.01", "--device", "cpu", "--no-plots", "--quiet"]


@pytest.fixture(scope="module")
def schema(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("schema") / "schema.json"
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(["schema"]) == 0
    out.write_text(buffer.getvalue())
    printed = json.loads(buffer.getvalue())
    jsonschema.Draft202012Validator.check_schema(printed)
    return printed


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, Path]:
    """One report of every command that writes one, as small as each can be made."""
    base = tmp_path_factory.mktemp("reports")
    made = {}
    runs = {
        "layer": ["layer", "--k", "3", "--m", "4", "--channels", "8", "--size", "8", "--backward", *QUICK],
        "module": ["layer", "--module", f"{ROOT}/examples/my_layers.py:SmallCNN", "--input", "1x3x16x16",
                   *QUICK],
        "net": ["net", "resnet26", "--size", "32", "--min-runs", "2", "--min-time", "0.01",
                "--hooked-runs", "2", "--no-stock", "--device", "cpu", "--no-plots", "--quiet"],
        "sweep": ["sweep", "--op", "lr", "--k", "3", "--m", "2,4", "--channels", "4", "--size", "6",
                  "--min-runs", "2", "--min-time", "0.005", "--warmup", "1", "--baseline", "none",
                  "--device", "cpu", "--no-plots", "--quiet", "--in-process"],
        "count": ["count", "--module", f"{ROOT}/examples/my_layers.py:SmallCNN", "--input", "1x3x16x16",
                  "--backward", "--device", "cpu", "--no-plots", "--quiet"],
        "check": ["check", f"{ROOT}/lrprof/build/ops/local_relation.py:LocalRelation2d", "--op", "lr",
                  "--k", "3", "--m", "4", "--channels", "8", "--size", "8", "--min-runs", "2",
                  "--min-time", "0.01", "--device", "cpu", "--no-stock", "--quiet"],
    }
    for name, argv in runs.items():
        out = base / name
        assert main([*argv, "--out", str(out)]) == 0, name
        made[name] = next(out.glob("*.json"))
    compared = base / "compare"
    assert main(["compare", str(made["layer"]), str(made["layer"]), "--out", str(compared)]) == 0
    made["compare"] = compared / "compare.json"
    return made


@pytest.mark.parametrize("kind", ["layer", "module", "net", "sweep", "check", "count", "compare"])
def test_every_report_validates(schema, reports, kind) -> None:
    data = json.loads(reports[kind].read_text())
    jsonschema.validate(data, schema)
    if kind != "compare":
        assert data["schema"] == "lrprof.report/2"
        assert all("exact" not in r for r in data["records"])  # version 2 names its groups


def test_counted_apart_from_the_model(reports) -> None:
    """The counted MACs of the default-like layer row sit in `counted`, the model's in `model`."""
    row = json.loads(reports["layer"].read_text())["records"][0]
    assert row["counted"]["fwd_MACs"] == row["model"]["exact_MACs"] > 0
    assert "exact_MACs" not in row["counted"] and "fwd_MACs" not in row["model"]


def test_a_latency_given_as_a_string_is_rejected(schema, reports) -> None:
    data = json.loads(reports["layer"].read_text())
    broken = copy.deepcopy(data)
    broken["records"][0]["latency"] = "fast"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)
    broken = copy.deepcopy(data)
    broken["records"][0]["latency"]["fwd"]["median_ms"] = "1.5"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_a_version_1_report_still_compares(tmp_path, reports, capsys) -> None:
    """The committed baseline is version 1; a version-1 copy of a new report matches the new
    report row for row."""
    v2 = json.loads(reports["layer"].read_text())
    v1 = copy.deepcopy(v2)
    v1["schema"] = "lrprof.report/1"
    for record in v1["records"]:
        record["exact"] = {**record.pop("counted"), **record.pop("model")}
    old = tmp_path / "v1.json"
    old.write_text(json.dumps(v1))
    assert main(["compare", str(old), str(reports["layer"])]) == 0
    assert "no regression" in capsys.readouterr().out
