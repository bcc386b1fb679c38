"""The fused C++ extension's build and its vector paths: which path the build compiled
(against this CPU's flags), both tile widths against the float64 reference (the AVX2
8-lane path runs on an AVX-512 machine too, forced by LRPROF_FUSED_TILE), the stem's
m = 1 / stride 2 path, and the build cache: the same key in two processes, a stale build
directory recovered, and (slow) a second process and a process after a killed build
loading without compiling again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from test_local_relation_reference import TOL32, make_layer, ref_of, rel_err

from lrprof.build.ops.lr_kernels import fused_cpu

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **(env or {})}, **kwargs)


# --------------------------------------------------------------------------- the vector path


@pytest.mark.parametrize(("flags", "expected"), [
    ({"avx512f", "avx512bw", "avx2", "fma"}, "avx512"),
    ({"avx2", "fma", "sse4_2"}, "avx2"),
    ({"avx2"}, "scalar"),  # AVX2 without FMA: the intrinsics need both
    ({"sse2"}, "scalar"),
    (set(), "scalar"),
])
def test_expected_isa_follows_the_flags(flags, expected) -> None:
    assert fused_cpu.expected_isa(flags) == expected


def test_compiled_path_matches_this_cpu() -> None:
    """-march=native: the build compiled the AVX-512 path exactly where /proc/cpuinfo lists
    avx512f, and the 16-lane tile is used only there."""
    fused_cpu.load()
    flags = fused_cpu.cpu_flags()
    if not flags:
        pytest.skip("no /proc/cpuinfo flags on this machine")
    assert fused_cpu.isa() == fused_cpu.expected_isa(flags)
    wide, narrow = torch.ops.lrprof_fused.path(112), torch.ops.lrprof_fused.path(7)
    assert wide == f"{fused_cpu.isa()} tile={16 if fused_cpu.isa() == 'avx512' else 8}"
    assert narrow.endswith("tile=8")


@pytest.mark.slow
@pytest.mark.parametrize("march", ["x86-64-v3", "x86-64"])  # AVX2 + FMA without AVX-512; no vectors
def test_source_compiles_without_avx512(march) -> None:
    """The .cpp compiles for CPUs without AVX-512 (AVX2 path only) and without AVX2 (the
    scalar loops): a syntax-only compile of each target (~30 s each on a loaded machine)."""
    from torch.utils import cpp_extension

    compiler = fused_cpu.compiler()
    if compiler is None:
        pytest.skip("no C++ compiler")
    includes = [f"-I{path}" for path in cpp_extension.include_paths()]
    command = [compiler, "-std=c++17", "-fsyntax-only", "-O2", f"-march={march}", "-fopenmp", "-w", *includes,
               str(fused_cpu.SOURCE)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]


# (phi, C, m, k, stride, H, W): wide enough for interior 16-lane tiles; the stem's m = 1, stride 2
TILED = [
    ("sqdiff", 16, 8, 7, 1, 9, 50),
    ("absdiff", 6, 4, 5, 1, 7, 40),
    ("sqdiff", 5, 1, 7, 2, 11, 70),
    ("mul", 3, 1, 7, 2, 9, 67),
    ("mul", 4, 2, 3, 1, 6, 45),
]


@pytest.mark.parametrize("tile", ["8", "16"])
@pytest.mark.parametrize("case", TILED, ids=lambda c: f"{c[0]}-C{c[1]}-m{c[2]}-s{c[4]}-{c[5]}x{c[6]}")
def test_each_tile_width_matches_the_reference(case, tile, monkeypatch) -> None:
    """float32 through each tile width the build has (16 only with AVX-512: elsewhere the
    forced 16 falls back to 8), against the float64 reference."""
    phi, c, m, k, s, h, w = case
    layer = make_layer(c, k, m, s, phi, seed=800)
    layer.impl = "fused"
    x = torch.randn(2, c, h, w, generator=torch.Generator().manual_seed(801), dtype=torch.float64)
    ref = ref_of(layer, x)
    monkeypatch.setenv("LRPROF_FUSED_TILE", tile)
    with torch.no_grad():
        out = layer.float()(x.float())
    assert rel_err(out, ref) < TOL32


# --------------------------------------------------------------------------- the build cache


def test_cache_key_is_stable_across_processes() -> None:
    """Two processes name the build alike (and so share its directory)."""
    code = "from lrprof.build.ops.lr_kernels import fused_cpu; print(fused_cpu.extension_name())"
    names = {_python(code).stdout.strip() for _ in range(2)}
    assert len(names) == 1 and names.pop() == fused_cpu.extension_name()


def test_recover_empties_an_unfinished_build_directory(tmp_path) -> None:
    """What a killed build leaves (torch's lock file, a half-written object, ninja's files)
    goes; the build lock and the build log stay."""
    for name in ("lock", "fused_cpu.o", "build.ninja", ".ninja_log", fused_cpu.LOCK, fused_cpu.BUILDS):
        (tmp_path / name).write_text("x\n")
    (tmp_path / "sub").mkdir()
    removed = fused_cpu.recover(str(tmp_path))
    assert set(removed) == {"lock", "fused_cpu.o", "build.ninja", ".ninja_log", "sub"}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([fused_cpu.LOCK, fused_cpu.BUILDS])
    assert fused_cpu.builds(str(tmp_path)) == 1


LOAD = """
    import torch
    from lrprof.build.ops.lr_kernels import fused_cpu
    fused_cpu.load()
    x = torch.randn(1, 8, 9, 9)
    q, key = torch.randn(1, 1, 9, 9), torch.randn(1, 1, 9, 9)
    y = torch.ops.lrprof_fused.relation(x, q, key, torch.randn(1, 9), 3, 8, 1, "sqdiff")
    assert y.shape == x.shape
    print(fused_cpu.build_report()["setup"])
"""


@pytest.mark.slow
def test_second_process_and_killed_build_load_without_compiling(tmp_path) -> None:
    """One build per source and machine: a second process loads it from the cache; a build
    killed part-way (its torch lock file and objects left behind) does not block the next
    process, which builds once, after which processes load again. ~2 builds: minutes."""
    env = {"TORCH_EXTENSIONS_DIR": str(tmp_path / "a")}
    first = _python(LOAD, env, timeout=600)
    assert first.returncode == 0, first.stderr
    assert " built in " in first.stdout
    second = _python(LOAD, env, timeout=120)
    assert second.returncode == 0, second.stderr
    assert "loaded from the cache" in second.stdout
    directory = Path(first.stdout.split("(")[-1].rstrip().rstrip(")"))
    assert fused_cpu.builds(str(directory)) == 1

    env = {"TORCH_EXTENSIONS_DIR": str(tmp_path / "b")}
    killed_dir = tmp_path / "b" / fused_cpu.extension_name()
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(LOAD)], cwd=ROOT,
                            env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while not (killed_dir / "lock").exists() and time.monotonic() < deadline:  # torch's lock: building
        time.sleep(0.2)
    time.sleep(3)  # the compiler at work
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (killed_dir / "lock").exists()  # what made cpp_extension wait forever
    after = _python(LOAD, env, timeout=600)
    assert after.returncode == 0, after.stderr
    assert " built in " in after.stdout
    again = _python(LOAD, env, timeout=120)
    assert "loaded from the cache" in again.stdout, again.stderr
    assert fused_cpu.builds(str(killed_dir)) == 1


# --------------------------------------------------------------------------- exp and FMA ceilings


def test_peaks_are_rates() -> None:
    """The extension's micro-benchmarks return positive rates (never asserted against a
    figure: the machine is shared)."""
    fused_cpu.load()
    assert torch.ops.lrprof_fused.peak("exp", 20) > 0
    assert torch.ops.lrprof_fused.peak("fma", 20) > 0
    with pytest.raises(RuntimeError, match="fma or exp"):
        torch.ops.lrprof_fused.peak("copy", 1)


def test_roofline_gives_the_exp_and_fma_fractions() -> None:
    from lrprof.measure import roofline

    ceiling = roofline.Ceilings("cpu", "float32", 2, bandwidth_GBps=10.0, compute_GFLOPs=100.0, copy_bytes=1,
                                matmul_n=1, seconds=0.0, method="fake", exp_per_s=1e9, torch_exp_per_s=5e8,
                                fma_GFLOPs=200.0)
    out = roofline.roofline(flops=1e7, design_bytes=1e6, minimal_bytes=None, seconds=1e-3, ceiling=ceiling,
                            exps=2e5)
    assert out["exp_fraction"] == pytest.approx(0.2)  # 2e8 exp/s of 1e9
    assert out["fma_fraction"] == pytest.approx(0.05)  # 10 GFLOP/s of 200
    assert "exp_fraction" not in roofline.roofline(1e7, 1e6, None, 1e-3, ceiling)  # no exps: no column
    assert "exp/s" in ceiling.text() and "FMA" in ceiling.text()


# --------------------------------------------------------------------------- the GPU check


def test_gpu_check_refuses_without_cuda(tmp_path) -> None:
    """Without a CUDA device the GPU check prints one refusal line, runs nothing, writes no
    report and exits 2."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stdout.splitlines() == ["gpu_check: refused: no CUDA device visible to torch "
                                        "(torch.cuda.is_available() is False); nothing run"]
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("tile", ["8", "16"])
@pytest.mark.parametrize("case", TILED, ids=lambda c: f"{c[0]}-C{c[1]}-m{c[2]}-s{c[4]}-{c[5]}x{c[6]}")
def test_each_tile_width_backward_matches_autograd(case, tile, monkeypatch) -> None:
    """float32 gradients through each tile width against float64 autograd through unfold."""
    phi, c, m, k, s, h, w = case
    layer = make_layer(c, k, m, s, phi, seed=810)
    gen = torch.Generator().manual_seed(811)
    x = torch.randn(2, c, h, w, generator=gen, dtype=torch.float64)
    grad = torch.randn(2, c, (h - 1) // s + 1, (w - 1) // s + 1, generator=gen, dtype=torch.float64)

    def gradients(module, inputs):
        inputs = inputs.detach().clone().requires_grad_(True)
        return torch.autograd.grad(module(inputs), [inputs, *module.parameters()], grad.to(inputs.dtype))

    layer.impl = "unfold"
    expected = gradients(layer, x)
    monkeypatch.setenv("LRPROF_FUSED_TILE", tile)
    layer.impl = "fused"
    got = gradients(layer.float(), x.float())
    scale = max(e.abs().max().item() for e in expected)
    assert max((g.double() - e).abs().max().item() for g, e in zip(got, expected, strict=True)) / scale < 1e-4
