"""`fused`: a C++/OpenMP kernel for the CPU (`fused_cpu.cpp`, shipped with the package),
built with torch's cpp_extension on first use and cached on disk (TORCH_EXTENSIONS_DIR, or
torch's default extension directory), the build time reported once.

Tasks of (image, group of m channels, block of output rows), about 8 per thread, handed
out dynamically: a zero-padded copy of the block's rows of the group's m input planes and
of its key plane in a per-thread scratch, then per output row and tile of 16 (float with
AVX-512), 8 (float with AVX2, or narrow maps) or 4 (double) columns the logits of the k^2
window positions, their exponentials and the aggregation of the m channels, all from
cache; nothing of size k^2 * H'W' is written to memory. Positions outside the image get
weight exactly 0. The vector path is chosen at build time (-march=native): `isa()` says
which was compiled, `expected_isa` which this CPU's flags call for. See the .cpp for the
details (the exponential, the one-sweep softmax and its exact fallback, the stride-s
layout, the stem's m = 1 path, the backward's register-gathered scatters).

The build happens once per machine and source (see `load`): later processes load the
cached library directly; `builds()` counts the compilations into a build directory.

The kernels are dispatcher ops, `lrprof_fused::relation` and
`lrprof_fused::relation_backward`, with fake implementations and an autograd formula
registered here, and a counting rule each: lrprof's counter sees them by name.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import platform
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import torch

from lrprof.build.ops.lr_kernels.base import Relation, Sizes, register_relation
from lrprof.measure.rules import Work, register_rule

SOURCE = Path(__file__).with_name("fused_cpu.cpp")
CFLAGS = ("-O3", "-march=native", "-fopenmp", "-fno-trapping-math", "-fno-math-errno")
LDFLAGS = ("-fopenmp",)
FORWARD, BACKWARD = "lrprof_fused::relation", "lrprof_fused::relation_backward"
DTYPES = ("float32", "float64")
LOCK, BUILDS = "lrprof.lock", "builds.log"  # in the build directory: the build lock, one line per build


class _Build:
    """The extension's state in this process: loaded or not, how long loading took, and
    why it failed."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.loaded = False
        self.seconds: float | None = None
        self.built = False  # compiled in this process (rather than found in the cache)
        self.directory: str | None = None
        self.error: str | None = None
        self.reported = False


_BUILD = _Build()


def extension_name() -> str:
    """Named by a hash of the source, the flags and the CPU: a changed source, or a cache
    directory shared with another kind of machine (-march=native), builds its own copy."""
    digest = hashlib.sha256()
    digest.update(SOURCE.read_bytes())
    digest.update(" ".join(CFLAGS).encode())
    digest.update(f"{platform.machine()} {_cpu_model()} {torch.__version__}".encode())
    return f"lrprof_fused_cpu_{digest.hexdigest()[:12]}"


def _cpu_model() -> str:
    from lrprof.measure.device import cpu_model

    return cpu_model() or ""


def compiler() -> str | None:
    """The C++ compiler cpp_extension would use ($CXX, else c++)."""
    cxx = os.environ.get("CXX", "c++")
    return shutil.which(cxx)


def unavailable(device: torch.device, dtype: str) -> str | None:
    if dtype not in DTYPES:
        return "float32 and float64 only"
    if _BUILD.error is not None:
        return f"the C++ build failed: {_BUILD.error}"
    if _BUILD.loaded:
        return None
    if compiler() is None:
        return f"no C++ compiler found ({os.environ.get('CXX', 'c++')} is not on PATH; set CXX)"
    if shutil.which("ninja") is None:
        return "ninja not found (torch's cpp_extension builds with it)"
    return None


def built() -> bool:
    """Whether this process has the extension, or this machine's cache holds a finished
    build of this source that a process loads in well under a second (never builds)."""
    if _BUILD.loaded:
        return True
    name = extension_name()
    directory = build_directory(name)
    return all(os.path.exists(os.path.join(directory, f"{name}{end}")) for end in (".so", ".ok"))


def not_ready(device: torch.device, dtype: str) -> str | None:
    if built():
        return None
    return ("not built on this machine yet: `lrprof build` compiles it once (about a minute; later "
            "processes load it from the cache)")


def load() -> None:
    """Build (or find in the cache) and load the extension, once per process.

    Once per machine and source: the first process to get `lrprof.lock` (an flock, which the
    kernel drops when its holder dies, so a killed build never leaves it held) builds with
    cpp_extension and then writes the `<name>.ok` stamp; every later process, and every
    process that waited on that lock, finds the stamp and loads the library directly,
    without ninja or a compiler. A directory without the stamp holds no finished build (a
    build killed part-way leaves torch's own `lock` file, which would make cpp_extension
    wait forever, and half-written objects): it is emptied and built afresh."""
    if _BUILD.loaded:
        return
    with _BUILD.lock:
        if _BUILD.loaded:
            return
        if _BUILD.error is not None:
            raise RuntimeError(f"the fused C++ extension failed to build: {_BUILD.error}")
        name = extension_name()
        directory = build_directory(name)
        started = time.perf_counter()
        try:
            built = _load_or_build(name, directory)
        except Exception as exc:  # a missing or broken compiler: this implementation is out
            first = str(exc).strip().splitlines()
            _BUILD.error = f"{type(exc).__name__}: {first[0] if first else ''}"[:300]
            raise
        _BUILD.seconds = time.perf_counter() - started
        _BUILD.built = built
        _BUILD.directory = directory
        _register_python_side()
        _BUILD.loaded = True


def loaded() -> bool:
    """Whether this process has loaded the extension (never builds)."""
    return _BUILD.loaded


def build_directory(name: str) -> str:
    from torch.utils import cpp_extension

    root = os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()
    return os.path.join(root, name)


def _load_or_build(name: str, directory: str) -> bool:
    """Load the cached library, or build it under the directory's lock; True if built here."""
    os.makedirs(directory, exist_ok=True)
    library, stamp = os.path.join(directory, f"{name}.so"), os.path.join(directory, f"{name}.ok")
    if os.path.exists(stamp) and os.path.exists(library):
        torch.ops.load_library(library)
        return False
    with open(os.path.join(directory, LOCK), "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # waits for a build in another process
        try:
            if os.path.exists(stamp) and os.path.exists(library):
                torch.ops.load_library(library)
                return False
            recover(directory)
            from torch.utils import cpp_extension

            started = time.perf_counter()
            cpp_extension.load(name=name, sources=[str(SOURCE)], extra_cflags=list(CFLAGS),
                               extra_ldflags=list(LDFLAGS), build_directory=directory,
                               is_python_module=False, verbose=False)
            with open(os.path.join(directory, BUILDS), "a") as log:
                log.write(f"{os.getpid()} {time.perf_counter() - started:.1f}\n")
            with open(stamp + ".tmp", "w") as out:
                out.write(f"{isa()}\n")
            os.replace(stamp + ".tmp", stamp)
            return True
        finally:
            fcntl.flock(held, fcntl.LOCK_UN)


def recover(directory: str) -> list[str]:
    """Empty a build directory that holds no finished build (no stamp), keeping the lock and
    the build log: torch's stale `lock` of a killed build, half-written objects. Returns
    what it removed. Call with the directory's lock held."""
    removed = []
    for entry in sorted(os.listdir(directory)):
        if entry in (LOCK, BUILDS):
            continue
        path = os.path.join(directory, entry)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        removed.append(entry)
    return removed


def builds(directory: str | None = None) -> int:
    """How many times the extension was compiled into `directory` (this source's, by default)."""
    path = os.path.join(directory or build_directory(extension_name()), BUILDS)
    if not os.path.exists(path):
        return 0
    with open(path) as log:
        return sum(1 for line in log if line.strip())


def isa() -> str:
    """The vector path the loaded extension was compiled with: avx512, avx2 or scalar."""
    return str(torch.ops.lrprof_fused.isa())


def expected_isa(flags: set[str] | frozenset[str]) -> str:
    """The path the .cpp compiles to under -march=native on a CPU with these /proc/cpuinfo
    flags: AVX-512F first (16-lane tiles; then the 8-lane AVX2 path is compiled too and
    picked per call for narrow maps), else AVX2 with FMA, else the scalar loops."""
    if "avx512f" in flags:
        return "avx512"
    if {"avx2", "fma"} <= set(flags):
        return "avx2"
    return "scalar"


def cpu_flags() -> frozenset[str]:
    """This CPU's flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def describe_build() -> dict[str, Any]:
    """{"setup_s", "setup"}: the extension loaded (built first where the cache has none), how
    and how long it took."""
    load()
    what = "built" if _BUILD.built else "loaded from the cache"
    return {"setup_s": _BUILD.seconds, "setup": f"C++ extension ({isa()}) {what} in {_BUILD.seconds:.1f} s "
                                               f"({_BUILD.directory})"}


def build_report() -> dict[str, Any]:
    """`describe_build()` the first time it is asked, {} afterwards: the build time is
    reported once per process."""
    described = describe_build()
    if _BUILD.reported:
        return {}
    _BUILD.reported = True
    return described


def valgrind_problem() -> str | None:
    """Why valgrind (--instructions) cannot run this build here: -march=native on an AVX-512
    CPU compiles instructions valgrind does not decode."""
    if expected_isa(cpu_flags()) == "avx512":
        return "compiled for AVX-512 here, which valgrind cannot run (--instructions)"
    return None


def _register_python_side() -> None:
    def fake_forward(x, query, key, prior, k, m, stride, phi):
        return x.new_empty((x.shape[0], x.shape[1], query.shape[2], query.shape[3]))

    def fake_backward(grad, x, query, key, prior, k, m, stride, phi):
        return (torch.empty_like(x), torch.empty_like(query), torch.empty_like(key), torch.empty_like(prior))

    def setup_context(ctx, inputs, output):
        x, query, key, prior, k, m, stride, phi = inputs
        ctx.save_for_backward(x, query, key, prior)
        ctx.settings = (k, m, stride, phi)

    def backward(ctx, grad):
        x, query, key, prior = ctx.saved_tensors
        dx, dquery, dkey, dprior = torch.ops.lrprof_fused.relation_backward(
            grad, x, query, key, prior, *ctx.settings)
        return dx, dquery, dkey, dprior, None, None, None, None

    torch.library.register_fake(FORWARD)(fake_forward)
    torch.library.register_fake(BACKWARD)(fake_backward)
    torch.library.register_autograd(FORWARD, backward, setup_context=setup_context)


def _window_products(args: tuple) -> tuple[int, int, int]:
    """(B*G*k^2*H'W', B*C*k^2*H'W', B*G*k^2*H'W') from a call's (x, query, ..., k) arguments."""
    x, query, k = args[0], args[1], args[4]
    batch, channels = x.shape[0], x.shape[1]
    groups, out_hw = query.shape[1], query.shape[2] * query.shape[3]
    return batch * groups * k * k * out_hw, batch * channels * k * k * out_hw, batch * groups * k * k * out_hw


def forward_work(args: tuple, kwargs: dict, out: Any) -> Work:
    """Composability (G k^2 H'W') and aggregation (C k^2 H'W') MACs, G k^2 H'W' exps."""
    logits, products, _ = _window_products(args)
    return Work(macs=logits + products, exps=logits)


def backward_work(args: tuple, kwargs: dict, out: Any) -> Work:
    """The softmax recomputed (composability MACs and exps), grad of the weights and grad_x
    (C k^2 H'W' each), softmax backward (2 per logit) and grad_query, grad_key (1 each)."""
    logits, products, _ = _window_products(args[1:])
    return Work(macs=logits * (1 + 2 + 2) + 2 * products, exps=logits)


register_rule(FORWARD, forward_work, "composability + aggregation MACs, one exp per window position")
register_rule(BACKWARD, backward_work,
              "recomputed softmax; grads of weights and x (C*k^2*H'W' each); softmax and phi backward")


class Fused(Relation):
    pointwise = "matmul"
    name = "fused"
    summary = "C++/OpenMP kernel: logits, softmax and aggregation per row tile, no k^2 buffer"
    backward = ("a C++ backward kernel (lrprof_fused::relation_backward) that recomputes the softmax "
                "per tile; nothing of size k^2 saved")
    devices = ("cpu",)

    def unavailable(self, device: torch.device, dtype: str) -> str | None:
        return unavailable(device, dtype)

    def __call__(self, layer, x, query, key, prior):
        load()
        return torch.ops.lrprof_fused.relation(x, query, key, prior, layer.kernel_size, layer.m,
                                               layer.stride, layer.phi)

    def prepare(self, layer, inputs, backward):
        return build_report()

    def not_ready(self, device: torch.device, dtype: str) -> str | None:
        return not_ready(device, dtype)

    build_ahead = staticmethod(describe_build)

    def valgrind_problem(self) -> str | None:
        return valgrind_problem()

    def traffic(self, n: Sizes) -> dict[str, int]:
        b, e = n.batch, n.e
        padded = (n.height + n.k) * (n.width + n.k + 16)
        return {
            "x, key, query read once": b * (n.channels * n.hw + n.groups * (n.hw + n.out_hw)) * e,
            "padded copies of x and key written, read (per-thread scratch)":
                2 * b * (n.channels + n.groups) * padded * e,
            "aggregated written once": b * n.channels * n.out_hw * e,
        }

    def buffers(self, n: Sizes) -> dict[str, int]:
        m = -(-n.channels // n.groups)
        plane = (n.height + n.k) * (n.width + n.k + 16)
        return {"per-thread scratch (m+1 padded planes), per thread": (m + 1) * plane * n.e}


register_relation(Fused())
