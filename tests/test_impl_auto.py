"""`--impl auto` (the default of `layer` and `net`): the fastest implementation in the
operator's measured order that runs on the device, is ready without a long one-time step
and passes a small output check against float64; each one passed over is named with its
reason, and the report says what was chosen. `lrprof build` readies the fused kernel."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from test_register_operator import DWSEP, build

from lrprof.build.ops import Impl, register_op, unregister_op
from lrprof.build.ops.lr_kernels import fused_cpu
from lrprof.build.ops.registry import get_op
from lrprof.cli import main
from lrprof.profile import choice as choice_module
from lrprof.profile.choice import choose_impl

CPU = torch.device("cpu")
FAST = ["--min-time", "0.02", "--min-runs", "2", "--no-stock", "--no-op-times", "--no-energy",
        "--no-roofline", "--no-plots", "--device", "cpu"]


@pytest.fixture(autouse=True)
def fresh_choices():
    """Each test sees the machine as it is now (choices are cached per process)."""
    choice_module._choose.cache_clear()
    yield
    choice_module._choose.cache_clear()


def _fused_built() -> bool:
    try:
        fused_cpu.load()
    except Exception:
        return False
    return True


def test_auto_takes_the_fused_kernel_once_built() -> None:
    if not _fused_built():
        pytest.skip("the fused C++ extension does not build here")
    chosen = choose_impl(get_op("lr"), CPU, "float32", {"k": 7, "m": 8})
    assert chosen.impl == "fused"
    assert chosen.passed_over == ()
    assert "fastest of fused, compiled, shift, unfold" in chosen.text()


def test_auto_passes_over_what_is_not_ready(monkeypatch) -> None:
    """A fused kernel not built yet is never built by a command: shift is taken, and the
    report says how to build the faster one once; compile-per-process is not ready either."""
    monkeypatch.setattr(fused_cpu, "built", lambda: False)
    chosen = choose_impl(get_op("lr"), CPU, "float32", {"k": 7, "m": 8})
    assert chosen.impl == "shift"
    reasons = dict(chosen.passed_over)
    assert list(reasons) == ["fused", "compiled"]
    assert "lrprof build" in reasons["fused"]
    assert "every process" in reasons["compiled"]
    assert "fastest ready" in chosen.reason


def test_auto_passes_over_what_cannot_run_in_this_dtype() -> None:
    chosen = choose_impl(get_op("lr"), CPU, "float16", {"k": 3, "m": 4})
    assert chosen.impl == "shift"
    assert dict(chosen.passed_over)["fused"] == "float32 and float64 only"


def test_auto_passes_over_a_wrong_output() -> None:
    """An implementation first in the order whose output is wrong is not taken."""
    op = dataclasses.replace(
        DWSEP, name="dwsep_auto",
        impls=(Impl("torch", "two nn.Conv2d", build("plain")), Impl("broken", "adds 0.01", build("broken"))),
        speed_order={"cpu": ("broken", "torch")})
    register_op(op)
    try:
        chosen = choose_impl(op, CPU, "float32", {"k": 3, "stride": 1, "multiplier": 1})
    finally:
        unregister_op("dwsep_auto")
    assert chosen.impl == "torch"
    assert "failed its output check: rel. error" in dict(chosen.passed_over)["broken"]


def test_an_operator_without_an_order_gets_its_default() -> None:
    chosen = choose_impl(get_op("sasa"), CPU, "float32", {})
    assert chosen.impl == get_op("sasa").default_impl
    assert "no measured speed order" in chosen.reason


def test_layer_reports_what_auto_chose(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(fused_cpu, "built", lambda: False)  # the choice then does not depend on the cache
    code = main(["layer", "--k", "3", "--m", "4", "--channels", "16", "--size", "12", *FAST,
                 "--out", str(tmp_path / "a")])
    assert code == 0
    data = json.loads((tmp_path / "a" / "layer.json").read_text())
    lr = next(r for r in data["records"] if r["config"]["op"] == "lr")
    assert lr["config"]["impl"] == "shift"  # the row's identity is the implementation that ran
    assert lr["detail"]["impl_choice"]["impl"] == "shift"
    assert any(n.startswith("--impl auto chose shift for lr on cpu") for n in data["notes"])
    conv = next(r for r in data["records"] if r["config"]["op"] == "conv")
    assert "impl_choice" not in conv["detail"]  # the baseline was not chosen by auto


def test_a_named_implementation_is_not_a_choice(tmp_path) -> None:
    code = main(["layer", "--k", "3", "--m", "4", "--channels", "16", "--size", "12", "--impl", "unfold",
                 *FAST, "--out", str(tmp_path / "a")])
    assert code == 0
    data = json.loads((tmp_path / "a" / "layer.json").read_text())
    assert data["records"][0]["config"]["impl"] == "unfold"
    assert "impl_choice" not in data["records"][0]["detail"]
    assert not any("--impl auto" in n for n in data["notes"])


def test_an_unknown_implementation_names_auto(capsys) -> None:
    assert main(["layer", "--impl", "fastest", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "--impl" in err and "auto" in err and len(err.strip().splitlines()) == 1


def test_net_takes_the_choice_for_its_local_relation_layers(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(fused_cpu, "built", lambda: False)
    code = main(["net", "lr26", "--size", "32", "--device", "cpu", "--min-time", "0.01", "--min-runs", "2",
                 "--hooked-runs", "2", "--no-stock", "--no-op-times", "--no-energy", "--no-plots",
                 "--out", str(tmp_path / "n")])
    assert code == 0
    data = json.loads((tmp_path / "n" / "net.json").read_text())
    net = next(r for r in data["records"] if r["kind"] == "net")
    assert net["name"] == "lr26(impl=shift)"
    assert any(n.startswith("--impl auto chose shift for lr on cpu") for n in data["notes"])


def test_build_readies_the_fused_kernel_and_says_what_auto_takes(capsys) -> None:
    if not _fused_built():
        pytest.skip("the fused C++ extension does not build here")
    assert main(["build", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "lr[fused]: C++ extension" in out
    assert "--impl auto chose fused for lr on cpu (float32)" in out


def test_build_reports_a_failed_build(capsys) -> None:
    def broken() -> dict:
        raise RuntimeError("no C++ compiler found")

    op = get_op("lr")
    impls = tuple(dataclasses.replace(i, build_ahead=broken) if i.name == "fused" else i for i in op.impls)
    patched = dataclasses.replace(op, impls=impls)
    register_op(patched, replace=True)
    try:
        code = main(["build", "--device", "cpu"])
    finally:
        register_op(op, replace=True)
    assert code == 1
    assert "lr[fused]: failed: RuntimeError: no C++ compiler found" in capsys.readouterr().out


def test_importing_one_implementation_first_keeps_every_one_and_the_order() -> None:
    """A kernel module imported before the operator (as this file does) once left the
    operator with that implementation alone, and made it the default."""
    import subprocess
    import sys

    code = ("import lrprof.build.ops.lr_kernels.fused_cpu\n"
            "from lrprof.build.ops.registry import get_op\n"
            "print(' '.join(i.name for i in get_op('lr').impls))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["unfold", "shift", "compiled", "fused", "triton"]


AVX512 = frozenset({"avx512f", "avx2", "fma"})


def test_auto_under_instructions_passes_over_what_valgrind_cannot_run(monkeypatch) -> None:
    """valgrind does not decode AVX-512: where -march=native compiles it, --instructions
    must not get the fused kernel (the docs' gate recipe died in valgrind on it)."""
    monkeypatch.setattr(fused_cpu, "built", lambda: True)
    monkeypatch.setattr(fused_cpu, "cpu_flags", lambda: AVX512)
    chosen = choose_impl(get_op("lr"), CPU, "float32", {"k": 3, "m": 4}, instructions=True)
    assert chosen.impl != "fused"
    assert "valgrind cannot run" in dict(chosen.passed_over)["fused"]
    monkeypatch.setattr(fused_cpu, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert fused_cpu.valgrind_problem() is None  # AVX2 code runs under valgrind


def test_naming_an_implementation_valgrind_cannot_run_is_one_line(monkeypatch, capsys) -> None:
    from lrprof.measure import instructions

    monkeypatch.setattr(fused_cpu, "cpu_flags", lambda: AVX512)
    monkeypatch.setattr(instructions, "check_available", lambda: None)
    assert main(["layer", "--impl", "fused", "--k", "3", "--m", "4", "--channels", "8", "--size", "8",
                 "--instructions", *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--impl" in err[0] and "valgrind cannot run" in err[0]
