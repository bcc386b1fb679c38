"""One sweep row at a time, isolated: rows are measured in a worker process, so a row that
hangs (a per-row timeout), kills its process (a segfault, the kernel's OOM killer) or leaves
a CUDA context broken (an illegal memory access poisons every later call in that process)
costs that row only. The parent records the row's failure with its reason and starts a
fresh worker for the next row. It is the same code on the CPU and on CUDA; on the CPU the
restart path is exercised by rows that fail on purpose (see the tests).

Failures inside a row that leave the process usable (an out-of-memory error, a wrong
shape) are recorded by `profile_layers` itself, in the row's `error`, and the worker goes
on; on CUDA its cached memory is released between rows.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from lrprof.build.ops.registry import spec_label
from lrprof.record.records import Record
from lrprof.spec.errors import InputError, describe
from lrprof.spec.layer import LayerSpec
from lrprof.spec.options import MeasureOptions

OUT_OF_MEMORY, KERNEL_ERROR, TIMEOUT, CRASHED, ERROR = (
    "out of memory", "kernel error", "timeout", "worker crashed", "error")
# Errors after which a CUDA context cannot be trusted: every later call may fail or lie.
CONTEXT_BREAKERS = (
    "illegal memory access", "device-side assert", "unspecified launch failure", "misaligned address",
    "CUDA error", "cudaError", "CUBLAS_STATUS_EXECUTION_FAILED", "CUDNN_STATUS_EXECUTION_FAILED",
    "an illegal instruction", "uncorrectable ECC",
)
START_TIMEOUT_S = 600.0  # importing torch on a loaded node can take minutes


def failure_kind(error: str | None) -> str | None:
    """What kind of failure a row's error text is, for the report and the progress line."""
    if not error:
        return None
    lowered = error.lower()
    if "outofmemoryerror" in lowered or "out of memory" in lowered:
        return OUT_OF_MEMORY
    if lowered.startswith("timeout"):
        return TIMEOUT
    if lowered.startswith("worker crashed") or lowered.startswith("worker died"):
        return CRASHED
    if any(marker.lower() in lowered for marker in CONTEXT_BREAKERS):
        return KERNEL_ERROR
    return ERROR


def breaks_context(error: str | None) -> bool:
    """True when the process that raised `error` should not measure another row."""
    return bool(error) and any(marker.lower() in error.lower() for marker in CONTEXT_BREAKERS)


@dataclass(frozen=True)
class WorkerSettings:
    """What a worker needs besides the row: how to measure, on how many CPU threads, and
    the modules to import first (a user's own operators register themselves there)."""

    options: MeasureOptions
    threads: int | None = None
    imports: tuple[str, ...] = ()


def import_modules(names: Sequence[str]) -> None:
    """Import each module (`--import`), so the operators it registers exist here."""
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:  # any import failure is the user's input
            raise InputError(f"--import {name}: {describe(exc)}") from None


def setup(settings: WorkerSettings) -> None:
    import torch

    if settings.threads:
        torch.set_num_threads(settings.threads)
    import_modules(settings.imports)


def measure_row(spec: LayerSpec, options: MeasureOptions) -> Record:
    """The row's record; its 3x3 conv baseline, when measured in the same schedule, leaves
    its latency in the row (`baseline_fwd_ms`) beside the ratio `profile_layers` gives."""
    from lrprof.profile.layer import profile_layers

    records = profile_layers([spec], options)
    record = records[0]
    for other in records[1:]:
        if "fwd" in other.latency:
            record.derived["baseline_fwd_ms"] = other.latency["fwd"].median_ms
        if other.error:
            record.derived["baseline_error"] = other.error
    return record


def _release_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _die_with_parent(parent: int) -> None:
    """The worker ends with the process that started it, even when that one is killed
    (SIGKILL runs no clean-up): on Linux the kernel kills it at once (PR_SET_PDEATHSIG),
    elsewhere a watcher thread notices within a second. An interrupt is the parent's to
    handle: Ctrl-C reaches the whole process group, and the worker ignores it (the parent
    stops it), so no traceback of the worker's ever reaches the terminal."""
    with contextlib.suppress(ValueError, OSError):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if os.getppid() != parent:  # the parent died before this line
        os._exit(1)
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="lrprof-parent-watch", daemon=True).start()


def _serve(conn: Any, settings: WorkerSettings, parent: int | None = None) -> None:
    """The worker's loop: a spec in, ("done", record dict) or ("raised", text) out."""
    if parent is not None:
        _die_with_parent(parent)
    try:
        setup(settings)
    except BaseException as exc:
        conn.send(("setup failed", str(exc) if isinstance(exc, InputError) else describe(exc)))
        return
    conn.send(("ready", os.getpid()))
    while True:
        try:
            spec = conn.recv()
        except (EOFError, OSError):  # the parent went away
            return
        if spec is None:
            return
        try:
            reply = ("done", measure_row(spec, settings.options).to_dict())
        except Exception as exc:  # recorded in the row by the parent
            reply = ("raised", describe(exc))
        finally:
            _release_memory()
        try:
            conn.send(reply)
        except (BrokenPipeError, OSError):
            return


@dataclass
class Outcome:
    """One row's result: its record (with `error` set when it failed) and how it went."""

    record: Record
    wall_s: float
    worker: int | None
    restarted: bool = False  # the worker was replaced after this row

    @property
    def failure(self) -> str | None:
        return failure_kind(self.record.error)


def failed_record(spec: LayerSpec, error: str) -> Record:
    """The row of a configuration whose measurement never returned: its identity, the
    deterministic cost model, and the reason."""
    from lrprof.build.ops.registry import get_op

    record = Record(kind="layer", name=spec_label(spec), config=spec.config(), error=error)
    try:
        cost = get_op(spec.op).cost(spec)
        record.counted["params"] = cost.params
        record.model.update({"exact_MACs": cost.macs, "exact_exps": cost.softmax_exps,
                             "paper_O_MACs": cost.paper_macs})
    except Exception:  # the cost model is a courtesy here; the error is what matters
        pass
    record.derived["role"] = "measured"
    return record


class RowRunner:
    """Measures rows one at a time, in a worker process (`isolate`, the default) or in this
    process (no timeout, no protection from crashes: for debugging). `on_restart` hears why
    a worker was replaced."""

    def __init__(self, settings: WorkerSettings, isolate: bool = True,
                 on_restart: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.isolate = isolate
        self.on_restart = on_restart or (lambda why: None)
        self.restarts = 0
        self._process: Any = None
        self._conn: Any = None
        self._pid: int | None = None
        if not isolate:
            setup(settings)

    # -- the worker's life ------------------------------------------------------------------

    def _start(self) -> None:
        context = multiprocessing.get_context("spawn")  # fresh: no inherited CUDA or OpenMP state
        parent, child = context.Pipe()
        process = context.Process(target=_serve, args=(child, self.settings, os.getpid()), daemon=True,
                                  name="lrprof-sweep-worker")
        with _no_interrupt():  # the worker starts ignoring Ctrl-C (it imports torch first)
            process.start()
        child.close()  # only the worker holds its end: its exit reads as EOF here
        self._process, self._conn = process, parent
        if not parent.poll(START_TIMEOUT_S):
            self._stop(kill=True)
            raise RuntimeError(f"the sweep's worker process did not start within {START_TIMEOUT_S:g} s")
        try:
            kind, payload = parent.recv()
        except (EOFError, OSError):
            code = process.exitcode
            self._stop(kill=True)
            raise RuntimeError(f"the sweep's worker process died while starting ({_exit_text(code)})") \
                from None
        if kind != "ready":
            self._stop(kill=True)
            raise InputError(payload)
        self._pid = payload

    def _stop(self, kill: bool = False) -> None:
        process, conn = self._process, self._conn
        self._process = self._conn = self._pid = None
        if conn is not None:
            if not kill:
                with contextlib.suppress(BrokenPipeError, OSError):
                    conn.send(None)
            conn.close()
        if process is not None:
            if not kill:
                process.join(5)  # an idle worker exits at once on the None
            if process.is_alive():
                process.kill()
                process.join(10)

    def _restart(self, why: str) -> None:
        self._stop(kill=True)
        self.restarts += 1
        self.on_restart(why)

    def close(self, kill: bool = False) -> None:
        """Stop the worker: asked to finish, or (`kill`, on an interrupt) at once."""
        if self._process is not None:
            self._stop(kill=kill)

    def __enter__(self) -> RowRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pid(self) -> int | None:
        return self._pid if self.isolate else os.getpid()

    # -- one row ----------------------------------------------------------------------------

    def run(self, spec: LayerSpec, timeout_s: float | None = None) -> Outcome:
        started = time.perf_counter()
        if not self.isolate:
            try:
                record = measure_row(spec, self.settings.options)
            except Exception as exc:
                record = failed_record(spec, describe(exc))
            finally:
                _release_memory()
            return Outcome(record, time.perf_counter() - started, os.getpid())
        if self._process is None:
            self._start()
        pid = self._pid
        conn = self._conn
        conn.send(spec)
        if not conn.poll(timeout_s):
            record = failed_record(spec, f"timeout: no result after {timeout_s:g} s (worker {pid} "
                                         "stopped)")
            self._restart(f"worker {pid} stopped after a {timeout_s:g} s timeout on {spec_label(spec)}")
            return Outcome(record, time.perf_counter() - started, pid, restarted=True)
        try:
            kind, payload = conn.recv()
        except (EOFError, OSError):
            self._process.join(10)
            code = self._process.exitcode
            record = failed_record(spec, f"worker crashed: worker {pid} died ({_exit_text(code)})")
            self._restart(f"worker {pid} died ({_exit_text(code)}) on {spec_label(spec)}")
            return Outcome(record, time.perf_counter() - started, pid, restarted=True)
        record = Record.from_dict(payload) if kind == "done" else failed_record(spec, payload)
        restarted = False
        if breaks_context(record.error):
            self._restart(f"worker {pid} replaced: {spec_label(spec)} may have left its device "
                          f"context broken ({record.error})")
            restarted = True
        return Outcome(record, time.perf_counter() - started, pid, restarted)


@contextlib.contextmanager
def _no_interrupt():
    """SIGINT ignored while a worker is started, so the worker inherits that (an ignored
    signal stays ignored across exec) and Ctrl-C during its start-up prints nothing."""
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        # a Ctrl-C meanwhile was lost with the ignored signal: nothing to replay


def _exit_text(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        import signal

        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"
