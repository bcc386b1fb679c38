"""The local relation layer's implementations (shift, compiled, fused, triton) against the
naive float64 loop reference of test_local_relation_reference (written from the layer's
definition, not from any implementation), their gradients against finite differences and
against autograd through the unfold formulation, and what the counter and the reports
see of them.

The fused C++ extension is built once per machine (cached on disk, ~40 s the first time)
and loaded once per session. torch.compile costs seconds per graph: one compiled case runs
by default, the others are marked slow. Triton's kernels run here under its CPU
interpreter in a subprocess (TRITON_INTERPRET=1 must be set before triton is imported).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from test_local_relation_reference import TOL32, TOL64, make_layer, ref_of, rel_err

from lrprof.build.ops import get_op
from lrprof.build.ops.local_relation import LocalRelation2d, cost_of
from lrprof.build.ops.lr_kernels import fused_cpu
from lrprof.measure import counting, roofline
from lrprof.spec.errors import SpecError

ROOT = Path(__file__).resolve().parents[1]

# (phi, C, m, k, stride, H, W, B): borders everywhere (k up to 7 on maps of 5..9), stride
# 2 and 3, m not dividing C, each phi.
CASES = [
    ("sqdiff", 10, 4, 5, 2, 7, 6, 2),
    ("absdiff", 6, 4, 7, 1, 5, 9, 1),
    ("mul", 5, 2, 3, 3, 8, 7, 2),
]
# Wide enough for the fused kernel's vector tiles (8 floats) with interior tiles, at
# stride 1 and at stride 2 (whose padded rows the kernel splits into column phases).
WIDE = ("sqdiff", 16, 8, 7, 1, 6, 29, 1)
WIDE_S2 = ("mul", 12, 8, 5, 2, 7, 37, 1)


def case_id(case) -> str:
    phi, c, m, k, s, h, w, b = case
    return f"{phi}-C{c}-m{m}-k{k}-s{s}-{h}x{w}-B{b}"


def layer_and_input(case, impl: str, seed: int, scale: float = 1.0) -> tuple[LocalRelation2d, torch.Tensor]:
    phi, c, m, k, s, h, w, b = case
    layer = make_layer(c, k, m, s, phi, seed=seed)
    layer.impl = impl
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(b, c, h, w, generator=gen, dtype=torch.float64) * scale
    return layer, x


def forward(layer: LocalRelation2d, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return layer(x)


def gradients(layer: LocalRelation2d, x: torch.Tensor, grad: torch.Tensor) -> list[torch.Tensor]:
    """Gradients of <layer(x), grad> with respect to x and every parameter."""
    x = x.detach().clone().requires_grad_(True)
    return list(torch.autograd.grad(layer(x), [x, *layer.parameters()], grad))


def grads_error(got: list[torch.Tensor], expected: list[torch.Tensor]) -> float:
    """Largest error over all gradients, relative to the largest reference gradient (a
    per-tensor ratio is meaningless where the true gradient is 0, e.g. the geometry prior's
    last bias, to which the softmax is invariant)."""
    scale = max(e.abs().max().item() for e in expected)
    assert scale > 0
    return max((g - e).abs().max().item() for g, e in zip(got, expected, strict=True)) / scale


def check_against_reference(case, impl: str, seed: int) -> None:
    layer, x = layer_and_input(case, impl, seed)
    ref = ref_of(layer, x)
    err64 = rel_err(forward(layer, x), ref)
    assert err64 < TOL64, f"{impl} float64 {case_id(case)}: {err64:.3e}"
    layer32, x32 = layer.float(), x.float()
    out32 = forward(layer32, x32)
    assert out32.dtype == torch.float32
    err32 = rel_err(out32, ref_of(layer32, x32))
    assert err32 < TOL32, f"{impl} float32 {case_id(case)}: {err32:.3e}"


# --------------------------------------------------------------------------- forward


@pytest.mark.parametrize("case", CASES + [WIDE, WIDE_S2], ids=case_id)
@pytest.mark.parametrize("impl", ["shift", "fused"])
def test_matches_naive_reference(impl: str, case) -> None:
    check_against_reference(case, impl, seed=100 + (CASES + [WIDE, WIDE_S2]).index(case))


def test_fused_large_logits_take_the_exact_path() -> None:
    """Inputs scaled by 40: logits within a window differ by thousands, beyond what the
    kernel's one-sweep exponentials (relative to the centre's logit) can hold; it must notice
    and redo those tiles relative to the true maximum."""
    for case in (WIDE, WIDE_S2, CASES[0]):
        layer, x = layer_and_input(case, "fused", seed=300, scale=40.0)
        ref = ref_of(layer, x)
        assert rel_err(forward(layer, x), ref) < TOL64
        assert rel_err(forward(layer.float(), x.float()), ref_of(layer.float(), x.float())) < TOL32


@pytest.mark.parametrize("impl", ["shift", "fused"])
def test_outside_weight_is_exactly_zero(impl: str) -> None:
    """Every prior shifted by a large constant: the output still matches the reference only
    if positions outside the image get weight exactly 0 (a finite masked logit such as -100
    would take the weight), in the kernel's vector tiles too. float32 takes a smaller shift:
    its prior would otherwise lose the precision the comparison needs."""
    for dtype, shift, tol in ((torch.float64, 1e4, TOL64), (torch.float32, 30.0, TOL32)):
        layer, x = layer_and_input(("absdiff", 4, 2, 7, 1, 3, 13, 1), impl, seed=400)
        layer, x = layer.to(dtype), x.to(dtype)
        with torch.no_grad():
            layer.geometry[2].bias += shift
        out = forward(layer, x)
        assert torch.isfinite(out).all()
        assert rel_err(out, ref_of(layer, x)) < tol


# --------------------------------------------------------------------------- backward


@pytest.mark.parametrize("case", CASES + [WIDE, WIDE_S2], ids=case_id)
@pytest.mark.parametrize("impl", ["shift", "fused"])
def test_gradients_match_autograd_through_unfold(impl: str, case) -> None:
    """Every gradient (x and all parameters) in float64, against autograd through the
    unfold formulation (whose ops are torch's own)."""
    layer, x = layer_and_input(case, impl, seed=500)
    gen = torch.Generator().manual_seed(501)
    grad = torch.randn(forward(layer, x).shape, generator=gen, dtype=torch.float64)
    got = gradients(layer, x, grad)
    layer.impl = "unfold"
    assert grads_error(got, gradients(layer, x, grad)) < 1e-10


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_fused_backward_matches_finite_differences(case) -> None:
    """The C++ backward op against finite differences of the C++ forward op (gradcheck,
    float64), for x, query, key and the prior."""
    fused_cpu.load()
    phi, c, m, k, s, h, w, b = case
    g, ho, wo = -(-c // m), (h - 1) // s + 1, (w - 1) // s + 1
    gen = torch.Generator().manual_seed(600)

    def draw(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_(True)

    inputs = (draw(b, c, h, w), draw(b, g, ho, wo), draw(b, g, h, w), draw(g, k * k))
    assert torch.autograd.gradcheck(
        lambda x, q, key, prior: torch.ops.lrprof_fused.relation(x, q, key, prior, k, m, s, phi), inputs,
        eps=1e-6, atol=1e-7, rtol=1e-5)


# --------------------------------------------------------------------------- compiled


def check_compiled(case) -> None:
    layer, x = layer_and_input(case, "compiled", seed=700)
    xg = x.clone().requires_grad_(True)
    out = layer(xg)  # one compile: the forward+backward graph serves both checks
    assert rel_err(out.detach(), ref_of(layer, x)) < TOL64
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(701), dtype=torch.float64)
    got = list(torch.autograd.grad(out, [xg, *layer.parameters()], grad))
    layer.impl = "unfold"
    assert grads_error(got, gradients(layer, x, grad)) < 1e-10


def test_compiled_matches_reference_and_unfold_gradients() -> None:
    """torch.compile of the window-view formulation: stride 2, m not dividing C, borders."""
    check_compiled(CASES[0])


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES[1:], ids=case_id)
def test_compiled_other_phis(case) -> None:
    check_compiled(case)


def test_compiled_prepare_reports_compile_time_apart() -> None:
    """prepare() compiles and says so; the count stays the formulation's (eager ops under
    the counter's dispatch mode, never inductor's kernels)."""
    layer, x = layer_and_input(CASES[0], "compiled", seed=710)
    counted = counting.count(layer, x)
    assert counted.complete
    spec_cost = cost_of(10, 7, 6, 5, 4, 2, batch=2)
    assert counted.macs == spec_cost.macs and counted.softmax_exps == spec_cost.softmax_exps
    done = layer.prepare((x,), backward=False)
    assert done["setup_s"] > 0 and "torch.compile" in done["setup"]


# --------------------------------------------------------------------------- triton (interpreter)


TRITON_SCRIPT = textwrap.dedent("""
    import json, sys, torch
    sys.path.insert(0, {tests!r})
    from test_local_relation_reference import make_layer, ref_of, rel_err
    from test_lr_impls import CASES, gradients, grads_error, layer_and_input, forward
    results = []
    for index, case in enumerate(CASES):
        layer, x = layer_and_input(case, "triton", seed=800 + index)
        ref = ref_of(layer, x)
        err64 = rel_err(forward(layer, x), ref)
        err32 = rel_err(forward(layer.float(), x.float()), ref_of(layer.float(), x.float()))
        layer = layer.double()
        grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(900), dtype=torch.float64)
        got = gradients(layer, x, grad)
        layer.impl = "unfold"
        results.append({{"case": case, "err64": err64, "err32": err32,
                         "grad_err": grads_error(got, gradients(layer, x, grad))}})
    print(json.dumps(results))
""")


def test_triton_kernels_under_the_interpreter_match_reference() -> None:
    """Forward (float64 and float32) against the naive reference and every gradient against
    autograd through unfold, the Triton kernels run by Triton's CPU interpreter."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}
    done = subprocess.run([sys.executable, "-c", TRITON_SCRIPT.format(tests=str(ROOT / "tests"))],
                          capture_output=True, text=True, env=env, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(results) == len(CASES)
    for r in results:
        assert r["err64"] < TOL64, r
        assert r["err32"] < TOL32, r
        assert r["grad_err"] < 1e-10, r


# --------------------------------------------------------------------------- counting


@pytest.mark.parametrize("impl", ["unfold", "shift", "fused", "compiled"])
def test_counter_sees_every_implementation(impl: str) -> None:
    """Complete counts (no uncounted op, no opaque kernel), forward equal to the exact
    model; the backward counted too (the fused op's rule covers its recomputation)."""
    layer, x = layer_and_input(CASES[0], impl, seed=1000)
    counted = counting.count(layer.float(), x.float(), backward=True)
    assert counted.complete, counting.missing_text(counted)
    exact = cost_of(10, 7, 6, 5, 4, 2, batch=2)
    assert counted.macs == exact.macs
    assert counted.softmax_exps == exact.softmax_exps
    assert counted.bwd_macs > counted.macs
    ops = {row.op for row in counted.by_op}
    assert ("lrprof_fused::relation" in ops) == (impl == "fused")
    assert ("lrprof_fused::relation_backward" in ops) == (impl == "fused")


# --------------------------------------------------------------------------- availability


def test_fused_reports_a_missing_compiler(monkeypatch) -> None:
    monkeypatch.setattr(fused_cpu, "_BUILD", fused_cpu._Build())
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    fused = get_op("lr").impl("fused")
    reason = fused.unavailable_reason(torch.device("cpu"), "float32")
    assert reason is not None and "compiler" in reason
    assert "float32 and float64" in fused.unavailable_reason(torch.device("cpu"), "float16")
    assert "cpu" in fused.unavailable_reason(torch.device("cuda"), "float32")


def test_impl_all_lists_what_cannot_run(monkeypatch) -> None:
    from lrprof.build.grid import layer_grid

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    grid = layer_grid("lr", {}, "all", device="cpu")
    impls = [s.impl for s in grid.specs]
    assert impls[0] == "unfold" and {"shift", "compiled", "fused"} <= set(impls)
    assert "triton" not in impls
    # with triton installed the reason is the missing GPU; without it, the missing package
    reason = grid.unavailable["lr"]["triton"]
    assert ("CUDA" in reason) if importlib.util.find_spec("triton") else ("not installed" in reason)


def test_unknown_impl_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match="impl"):
        LocalRelation2d(8, 3, 4, impl="nope")


def test_every_impl_shares_the_parameters() -> None:
    """Same state_dict keys and shapes whatever the implementation."""
    def shapes_of(impl: str) -> dict:
        return {k: tuple(v.shape) for k, v in LocalRelation2d(12, 5, 5, impl=impl).state_dict().items()}

    shapes = {impl.name: shapes_of(impl.name) for impl in get_op("lr").impls}
    first = shapes["unfold"]
    assert all(s == first for s in shapes.values())


# --------------------------------------------------------------------------- roofline


def test_roofline_picks_the_bound_and_the_fraction() -> None:
    ceiling = roofline.Ceilings("cpu", "float32", 2, bandwidth_GBps=10.0, compute_GFLOPs=100.0,
                                copy_bytes=1, matmul_n=1, seconds=0.0, method="test")
    memory = roofline.roofline(flops=1e6, design_bytes=1e6, minimal_bytes=5e5, seconds=2e-4, ceiling=ceiling)
    assert memory["bound"] == "memory"  # 1e-4 s for the bytes, 1e-5 s for the FLOPs
    assert memory["roofline_fraction"] == pytest.approx(0.5)
    assert memory["achieved_GBps"] == pytest.approx(5.0)
    assert memory["minimal_GBps"] == pytest.approx(2.5)
    compute = roofline.roofline(flops=1e8, design_bytes=1e6, minimal_bytes=None, seconds=2e-3,
                                ceiling=ceiling)
    assert compute["bound"] == "compute" and compute["roofline_fraction"] == pytest.approx(0.5)


def test_ceilings_are_measured_once_per_process(monkeypatch) -> None:
    calls = []
    fake = roofline.Ceilings("cpu", "float64", torch.get_num_threads(), 1.0, 1.0, 1, 1, 0.0, "fake")
    monkeypatch.setattr(roofline, "_MEASURED", {})
    monkeypatch.setattr(roofline, "_measure", lambda *a: calls.append(a) or fake)
    assert roofline.ceilings("cpu", "float64") is roofline.ceilings("cpu", "float64") is fake
    assert len(calls) == 1
    assert roofline.measured() == [fake]


# --------------------------------------------------------------------------- networks


def test_net_impl_reaches_every_local_relation_layer_and_keeps_the_paper_identity() -> None:
    from lrprof.build.nets import create_net
    from lrprof.profile.net import NetSpec, net_costs

    net = create_net("lr26", impl="fused")
    layers = [m for m in net.modules() if isinstance(m, LocalRelation2d)]
    assert layers and all(m.impl == "fused" for m in layers)
    spec = NetSpec("lr50", options=(("impl", "fused"),))
    assert spec.label == "lr50(impl=fused)"
    assert spec.is_default_net  # the implementation does not change the network
    x = torch.randn(1, 3, 32, 32)
    counted = counting.count(net.eval(), x)
    assert counted.complete
    assert counted.macs == sum(c.macs for c in net_costs(NetSpec("lr26", height=32, width=32)))


# --------------------------------------------------------------------------- reports


def test_layer_report_puts_implementations_side_by_side_with_their_roofline(tmp_path) -> None:
    """`lrprof layer --impl unfold,shift,fused`: every row checked and counted, the roofline
    columns filled from ceilings recorded in the report's environment; --no-roofline drops them."""
    from test_cli_layer import layer_args, read_reports, run_in_process

    out = tmp_path / "out"
    run = read_reports(run_in_process(layer_args(out, impl="unfold,shift,fused", size="10")), out)
    assert run.rc == 0, run.out + run.err
    rows = {r["impl"]: r for r in run.rows}
    assert set(rows) == {"unfold", "shift", "fused", "torch"}
    for impl, row in rows.items():
        assert row["verdict"] == "ok", (impl, row["verdict"])
        assert row["bound"] in ("memory", "compute")
        assert float(row["achieved_GBps"]) > 0 and float(row["roofline_fraction"]) > 0
        assert int(row["minimal_bytes"]) > 0
    design = {impl: int(rows[impl]["design_bytes"]) for impl in ("unfold", "shift", "fused")}
    assert design["unfold"] > design["shift"] > design["fused"]
    assert "Roofline (forward)" in run.out
    ceilings = run.json["environment"]["ceilings"]
    assert ceilings and ceilings[0]["bandwidth_GBps"] > 0 and ceilings[0]["compute_GFLOPs"] > 0

    out = tmp_path / "plain"
    run = read_reports(run_in_process(layer_args(out, "--no-roofline", impl="fused", size="10")), out)
    assert run.rc == 0
    assert all(r.get("achieved_GBps", "") == "" for r in run.rows)
    assert "Roofline (forward)" not in run.out


@pytest.mark.parametrize("args", [
    ["net", "lr50", "--impl", "nope"],
    ["net", "resnet50", "--impl", "fused"],
    ["layer", "--impl", "fused", "--dtype", "float16"],
])
def test_impl_that_cannot_run_is_one_line_exit_2(args, monkeypatch) -> None:
    from test_cli_layer import run_in_process

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    run = run_in_process(args)
    assert run.rc == 2
    lines = run.err.strip().splitlines()
    assert len(lines) == 1 and "--impl" in lines[0]


# --------------------------------------------------------------------------- CUDA


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
def test_triton_on_cuda_matches_reference(dtype: str, monkeypatch) -> None:
    """The compiled Triton kernels on a GPU, against the naive reference computed in float64
    from the same (rounded) weights and input; the 1x1 convs without TF32."""
    from lrprof.measure.accuracy import TOLERANCE

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    torch_dtype = getattr(torch, dtype)
    tol = TOL64 if dtype == "float64" else TOL32 if dtype == "float32" else TOLERANCE[dtype]
    for index, case in enumerate(CASES + [WIDE, WIDE_S2]):
        layer, x = layer_and_input(case, "triton", seed=1100 + index)
        layer, x = layer.to("cuda", torch_dtype), x.to("cuda", torch_dtype)
        out = forward(layer, x).cpu()
        expected = ref_of(layer.cpu().double(), x.cpu().double())
        assert rel_err(out, expected) < tol, (dtype, case_id(case))


@pytest.mark.cuda
def test_triton_on_cuda_gradients_match_unfold() -> None:
    for index, case in enumerate(CASES + [WIDE, WIDE_S2]):
        layer, x = layer_and_input(case, "triton", seed=1200 + index)
        layer, x = layer.cuda(), x.cuda()
        grad = torch.randn(forward(layer, x).shape, device="cuda", dtype=torch.float64)
        got = gradients(layer, x, grad)
        layer.impl = "unfold"
        assert grads_error(got, gradients(layer, x, grad)) < 1e-10, case_id(case)


@pytest.mark.cuda
def test_on_cuda_fused_is_unavailable_and_triton_is_counted() -> None:
    assert "cpu" in get_op("lr").impl("fused").unavailable_reason(torch.device("cuda"), "float32")
    layer, x = layer_and_input(CASES[0], "triton", seed=1300)
    counted = counting.count(layer.cuda().float(), x.cuda().float(), backward=True)
    assert counted.complete, counting.missing_text(counted)
    exact = cost_of(10, 7, 6, 5, 4, 2, batch=2)
    assert counted.macs > exact.macs  # the max sweep computes the logits twice
    assert {"lrprof_triton::relation", "lrprof_triton::relation_backward"} <= {r.op for r in counted.by_op}
