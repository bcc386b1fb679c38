"""Was the machine quiet while we timed? The facts that say so, read before and after each
timing session, and the bounds past which a row's timing is flagged unreliable.

Read around a timing session (`snapshot`): the load average, the tasks of other processes
runnable on the cores we may use (sampled a few times: a task that is busy 15% of the time
shows as 0.15), the CPU affinity mask, the frequency governor of those cores where the
kernel exposes it, and on CUDA the SM clock and temperature. Read during timing (by
`lrprof.measure.timing`, per row): page faults per call and involuntary context switches
per timed second.

Oversubscription: more torch threads than free cores (the allowed cores minus the other
runnable tasks on them). OpenMP threads then wait on a busy core and a small layer's median
can jump by 30x from one run to the next.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch

# Past these a row's timing is flagged unreliable (quiet 2-core CPU here: quartiles 1-3 %
# of the median, drift between fresh processes 0.88x-1.17x, a few switches per second).
IQR_BOUND = 0.10  # interquartile range / median within a run
TREND_BOUND = 0.10  # last third of a run's samples against its first third
DRIFT_BOUND = 0.20  # (max - min) / median of the per-process medians (--repeat)
SWITCH_BOUND = 50.0  # involuntary context switches per timed second: another task on our cores
RUNNABLE_SAMPLES, RUNNABLE_INTERVAL_S = 5, 0.01

BOUNDS_TEXT = (f"a timing is unreliable when its IQR passes {IQR_BOUND:.0%} of its median, its last "
               f"third of runs differs from its first third by more than {TREND_BOUND:.0%}, its "
               f"per-process medians spread more than {DRIFT_BOUND:.0%} (--repeat), it was "
               f"preempted more than {SWITCH_BOUND:g} times per timed second, or the CPU was "
               "oversubscribed")


def allowed_cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _task_states(own_pid: int) -> list[tuple[str, int]] | None:
    """(state, last CPU) of every thread of every other process; None where /proc is unreadable."""
    proc = Path("/proc")
    if not (proc / "self" / "stat").is_file():
        return None
    found = []
    for pid_dir in proc.iterdir():
        if not pid_dir.name.isdigit() or int(pid_dir.name) == own_pid:
            continue
        with contextlib.suppress(OSError):
            for task in (pid_dir / "task").iterdir():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    text = (task / "stat").read_text()
                    fields = text[text.rindex(")") + 2:].split()
                    found.append((fields[0], int(fields[36])))  # state; processor (field 39)
    return found


def other_runnable(cpus: list[int], samples: int = RUNNABLE_SAMPLES,
                   interval_s: float = RUNNABLE_INTERVAL_S) -> float | None:
    """Mean number of other processes' threads runnable on `cpus` over a few samples."""
    wanted, own = set(cpus), os.getpid()
    counts = []
    for i in range(samples):
        states = _task_states(own)
        if states is None:
            return None
        counts.append(sum(1 for state, cpu in states if state == "R" and cpu in wanted))
        if i + 1 < samples:
            time.sleep(interval_s)
    return statistics.fmean(counts)


def governors(cpus: list[int]) -> dict[str, str] | None:
    """The cpufreq governor of each allowed core; None where the kernel does not expose it
    (virtual machines often do not)."""
    found = {}
    for cpu in cpus:
        path = Path(f"/sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor")
        with contextlib.suppress(OSError):
            found[str(cpu)] = path.read_text().strip()
    return found or None


def cuda_clocks(device: torch.device) -> dict[str, Any]:
    """SM clock (MHz) and temperature (C) through NVML, or why they could not be read."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as exc:  # no NVML: say so rather than guess
        return {"unreadable": f"NVML: {exc}"}
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
        return {"sm_clock_mhz": pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM),
                "temperature_c": pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU)}
    except Exception as exc:
        return {"unreadable": f"NVML: {exc}"}
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def snapshot(device: torch.device) -> dict[str, Any]:
    cpus = allowed_cpus()
    facts: dict[str, Any] = {
        "load_average": load_average(),
        "affinity": cpus,
        "other_runnable": other_runnable(cpus),
        "governors": governors(cpus),
    }
    if device.type == "cuda":
        facts["cuda"] = cuda_clocks(device)
    return facts


def session(before: dict[str, Any], after: dict[str, Any], threads: int | None,
            device: torch.device) -> dict[str, Any]:
    """One timing session's noise record, with its oversubscription verdict."""
    record: dict[str, Any] = {"threads": threads, "before": before, "after": after}
    warning = oversubscription(before, after, threads) if device.type == "cpu" else None
    record["oversubscribed"] = warning is not None
    record["warning"] = warning
    return record


def oversubscription(before: dict[str, Any], after: dict[str, Any], threads: int | None) -> str | None:
    """A warning naming the oversubscription, or None: more threads than free cores."""
    if not threads:
        return None
    cpus = len(before.get("affinity") or []) or (os.cpu_count() or 1)
    busy = [v for v in (before.get("other_runnable"), after.get("other_runnable")) if v is not None]
    others = max(busy, default=0.0)
    free = max(cpus - others, 0.0)
    if threads > cpus:
        return (f"oversubscribed: {threads} torch threads on {cpus} allowed core(s); "
                "use --threads <= the cores in the affinity mask")
    if threads > free + 0.5:  # a core counts as busy when another task ran there most of the time
        return (f"oversubscribed: {threads} torch threads, {cpus} allowed core(s), {others:.1f} other "
                f"runnable task(s) on them ({free:.1f} free): timings will jump; use fewer "
                "--threads, pin with taskset, or a quiet machine")
    return None


def reliability(stats: Any) -> list[str]:
    """Why a latency distribution is not to be trusted (empty: within every bound)."""
    reasons = []
    if stats.median_ms > 0 and stats.iqr_ms / stats.median_ms > IQR_BOUND:
        reasons.append(f"IQR {stats.iqr_ms / stats.median_ms:.0%} of median (bound {IQR_BOUND:.0%})")
    for group in stats.process_samples():
        third = len(group) // 3
        if third >= 2:
            first, last = statistics.median(group[:third]), statistics.median(group[-third:])
            if first > 0 and abs(last / first - 1) > TREND_BOUND:
                reasons.append(f"drifted {last / first - 1:+.0%} within a run (bound {TREND_BOUND:.0%})")
                break
    medians = stats.process_medians_ms()
    if len(medians) >= 2 and stats.median_ms > 0:
        spread = (max(medians) - min(medians)) / stats.median_ms
        if spread > DRIFT_BOUND:
            reasons.append(f"process medians {spread:.0%} apart (bound {DRIFT_BOUND:.0%})")
    switches = getattr(stats, "involuntary_switches_per_s", None)
    if switches is not None and switches > SWITCH_BOUND:
        reasons.append(f"preempted {switches:.0f} times per second (bound {SWITCH_BOUND:g})")
    return reasons


def flag_rows(records: list[Any], sessions: list[dict[str, Any]]) -> None:
    """Attach the sessions to each timed record and flag the unreliable ones
    (`derived["timing_unreliable"]`: the reasons, or None)."""
    oversubscribed = [s["warning"] for s in sessions if s.get("warning")]
    for record in records:
        if not record.latency:
            continue
        record.detail["noise"] = sessions
        record.derived["oversubscribed"] = bool(oversubscribed)
        reasons = [f"{phase}: {why}" for phase, stats in record.latency.items()
                   for why in reliability(stats)]
        if oversubscribed:
            reasons.append(oversubscribed[0].split(":")[0])
        record.derived["timing_unreliable"] = "; ".join(reasons) or None


def warnings(records: list[Any]) -> list[str]:
    """The oversubscription warning of these records' timing sessions (the first one's
    text, and in how many sessions it happened)."""
    sessions: list[dict[str, Any]] = []
    for record in records:
        for s in record.detail.get("noise") or []:
            if s not in sessions:
                sessions.append(s)
    warned = [s["warning"] for s in sessions if s.get("warning")]
    if not warned:
        return []
    where = f" (in {len(warned)} of {len(sessions)} timing sessions)" if len(sessions) > 1 else ""
    return [warned[0] + where]


def spread_text(stats: Any) -> str:
    """'IQR 2.1% within, 6.3% between 3 processes': the two spreads side by side."""
    if stats is None or not stats.median_ms:
        return ""
    within = f"IQR {stats.iqr_ms / stats.median_ms:.1%} within"
    medians = stats.process_medians_ms()
    if len(medians) < 2:
        return within
    between = (max(medians) - min(medians)) / stats.median_ms
    return f"{within}, {between:.1%} between {len(medians)} processes (max-min of medians)"


def report_notes(records: list[Any]) -> list[str]:
    """Lines for a report: what the machine looked like while timing, and which rows are flagged."""
    sessions: list[dict[str, Any]] = []
    for record in records:
        for s in record.detail.get("noise") or []:
            if s not in sessions:
                sessions.append(s)
    if not sessions:
        return []
    notes = []
    if len(sessions) == 1:
        s = sessions[0]
        before, after = s["before"], s["after"]
        text = (f"timing: load average {_fmt(before.get('load_average'))} before, "
                f"{_fmt(after.get('load_average'))} after; other runnable tasks on the allowed "
                f"cores {_fmt(before.get('other_runnable'))} before, {_fmt(after.get('other_runnable'))} "
                f"after; {s.get('threads') or 'n/a'} torch thread(s) on cores {before.get('affinity')}; "
                f"governor {_governor(before.get('governors'))}")
        if "cuda" in before:
            text += f"; CUDA {before['cuda']} before, {after.get('cuda')} after"
        notes.append(text)
    else:
        snaps = [snap for s in sessions for snap in (s["before"], s["after"])]
        loads = [snap["load_average"][0] for snap in snaps if snap.get("load_average")]
        others = [snap["other_runnable"] for snap in snaps if snap.get("other_runnable") is not None]
        text = (f"timing: {len(sessions)} sessions (one per process); 1-minute load average "
                f"{_range(loads)}; other runnable tasks on the allowed cores {_range(others)}; "
                f"{sessions[0].get('threads') or 'n/a'} torch thread(s) on cores "
                f"{sessions[0]['before'].get('affinity')}; governor "
                f"{_governor(sessions[0]['before'].get('governors'))}")
        cuda = [(s["before"].get("cuda"), s["after"].get("cuda")) for s in sessions if "cuda" in s["before"]]
        if cuda:
            text += "; CUDA before/after per session: " + "; ".join(f"{a} / {b}" for a, b in cuda)
        notes.append(text)
    notes += [f"warning: {w}" for w in warnings(records)]
    flagged = [f"{r.name} ({r.derived['timing_unreliable']})" for r in records
               if r.derived.get("timing_unreliable")]
    notes.append("unreliable timings: " + ("; ".join(flagged) if flagged else "none") + f". {BOUNDS_TEXT}.")
    return notes


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _range(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"{min(values):.2f}" if min(values) == max(values) else f"{min(values):.2f}-{max(values):.2f}"


def _governor(found: dict[str, str] | None) -> str:
    if not found:
        return "unreadable"
    values = sorted(set(found.values()))
    return values[0] if len(values) == 1 else ", ".join(f"cpu{c}: {g}" for c, g in found.items())
