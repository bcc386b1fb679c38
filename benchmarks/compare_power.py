"""How often do lrprof compare's gates cry wolf, and how often do they catch a real slowdown?
Measured for real: fresh `lrprof layer` profiles, compared pair by pair.

    python benchmarks/compare_power.py --pairs 100 --repeat 5 --instruction-pairs 5   # the full run
    python benchmarks/compare_power.py --pairs 3 --repeat 3 --instruction-pairs 1    # a smoke run

It prints its progress and an estimate of the time left after every round; run it on a
quiet machine (nothing else on the measured core), as root or a user allowed to pin.

Every profile is a fresh `lrprof layer` process (one small local relation layer beside its
3x3 conv baseline, 1 thread, pinned to one core, `--repeat R`). In each round i it runs:
  C_i  identical code;
  M_i  identical code while a duty-cycle process pinned to the same core is busy a
       fraction of every period (started before the profile, ended after it): the machine
       is slower;
  K_i  the layer's forward also spins a calibrated Python loop (about --code-slowdown of
       its time; injected through a sitecustomize module in the profile's environment):
       the code is slower, the machine is not.
Pairs: (C_{i-1}, C_i) identical code -> a "worse" verdict is a false alarm; (C_i, M_i) and
(C_i, K_i) -> a "worse" verdict is a detection.

Gates, all from the same profiles: plain (the first process of each profile alone, raw
latency), replicated (all R processes pooled), normalised (`--normalize baseline`, first
process), normalised + replicated. The normalised gates are blind to a slower machine by
design (the baseline slows alike): they are scored on the code slowdown. The instruction
gate (`--instructions`, callgrind) runs its own profiles (valgrind makes them slow):
identical pairs and code-slowed pairs; a slower machine does not change instruction counts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lrprof.gate.compare import Thresholds, compare  # noqa: E402
from lrprof.measure.timing import Stats  # noqa: E402
from lrprof.record.records import Report  # noqa: E402
from lrprof.report import render_json  # noqa: E402

SITECUSTOMIZE = textwrap.dedent('''\
    # Written by benchmarks/compare_power.py: a code slowdown for the experiment. The local
    # relation layer's forward first spins LRPROF_BENCH_SPIN iterations of a Python loop.
    import os
    _spin = int(os.environ.get("LRPROF_BENCH_SPIN", "0"))
    if _spin:
        from lrprof.build.ops import local_relation as _lr
        _forward = _lr.LocalRelation2d.forward

        def _slower(self, *args, **kwargs):
            for _ in range(_spin):
                pass
            return _forward(self, *args, **kwargs)

        _lr.LocalRelation2d.forward = _slower
    ''')

HOG = textwrap.dedent('''\
    import os, sys, time
    core, busy, period = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
    os.sched_setaffinity(0, {core})
    while True:
        start = time.perf_counter()
        while time.perf_counter() - start < busy:
            pass
        time.sleep(max(period - busy, 0.0))
    ''')


@dataclass
class Tally:
    hits: int = 0
    pairs: int = 0

    def add(self, flagged: bool) -> None:
        self.hits += int(flagged)
        self.pairs += 1

    def text(self) -> str:
        return f"{self.hits}/{self.pairs}" if self.pairs else "-"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=100, help="pairs of identical code (rounds)")
    parser.add_argument("--detection-pairs", type=int,
                        help="rounds that also run the two slowed profiles (default: every round)")
    parser.add_argument("--repeat", type=int, default=5, help="processes per profile (--repeat)")
    parser.add_argument("--instruction-pairs", type=int, default=5,
                        help="identical and code-slowed pairs for the instruction gate (0: skip)")
    parser.add_argument("--core", type=int, default=1, help="the core every profile and the hog run on")
    parser.add_argument("--duty", type=float, default=0.2,
                        help="busy fraction of the duty-cycle process (0.2: about 1.3x here)")
    parser.add_argument("--period-ms", type=float, default=10.0)
    parser.add_argument("--code-slowdown", type=float, default=0.3, help="extra forward time: 0.3 = 1.3x")
    parser.add_argument("--max-slowdown", default="10%", help="the threshold every gate uses")
    parser.add_argument("--max-instruction-growth", default="1%")
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--min-time", type=float, default=0.1, help="seconds of timing per row and process")
    parser.add_argument("--keep", type=Path, help="keep the profiles here (default: a temporary directory)")
    return parser.parse_args()


def layer_command(args: argparse.Namespace, out: Path, repeat: int, instructions: bool) -> list[str]:
    command = [sys.executable, "-m", "lrprof", "layer", "--op", "lr", "--k", "7", "--m", "8",
               "--channels", str(args.channels), "--size", str(args.size), "--threads", "1",
               "--device", "cpu", "--no-stock", "--no-check-output", "--min-runs", "10",
               "--min-time", str(args.min_time), "--repeat", str(repeat), "--out", str(out), "--quiet"]
    return command + (["--instructions"] if instructions else [])


def profile(args: argparse.Namespace, out: Path, env: dict[str, str], repeat: int,
            instructions: bool = False, hog: bool = False) -> Path:
    """One fresh `lrprof layer` run pinned to the core (with the hog beside it on request)."""
    pinned = {args.core}
    hog_process = None
    if hog:
        busy = args.duty * args.period_ms / 1e3
        hog_process = subprocess.Popen([sys.executable, "-c", HOG, str(args.core), str(busy),
                                        str(args.period_ms / 1e3)])
        time.sleep(0.2)  # let it settle into its rhythm
    try:
        done = subprocess.run(layer_command(args, out, repeat, instructions), env=env,
                              capture_output=True, text=True, check=False,
                              preexec_fn=lambda: os.sched_setaffinity(0, pinned))
    finally:
        if hog_process is not None:
            hog_process.kill()
            hog_process.wait()
    if done.returncode not in (0, 1) or not (out / "layer.json").is_file():
        raise SystemExit(f"profile {out} failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
    return out / "layer.json"


def first_process(path: Path) -> Path:
    """The same report as if only its first process had run: what a plain profile gives."""
    report = Report.from_dict(json.loads(path.read_text()))
    for record in report.records:
        for phase, stats in record.latency.items():
            first = next(g for g in stats.process_samples() if len(g) >= 2)
            record.latency[phase] = Stats.from_times(list(first), stats.calls_per_run, stats.method,
                                                     stats.threads)
    out = path.with_name("layer.first.json")
    out.write_text(render_json(report))
    return out


def flagged(old: Path, new: Path, thresholds: Thresholds) -> bool:
    return compare(old, new, thresholds).regression


def lr_ratio(old: Path, new: Path) -> float:
    """new / old median of the local relation row (the slowdown achieved)."""
    def median(path: Path) -> float:
        data = json.loads(path.read_text())
        row = next(r for r in data["records"] if r["config"]["op"] == "lr")
        return row["latency"]["fwd"]["median_ms"]
    return median(new) / median(old)


def unreliable(path: Path) -> int:
    data = json.loads(path.read_text())
    return sum(1 for r in data["records"] if r["derived"].get("timing_unreliable"))


def calibrate_spin(args: argparse.Namespace) -> int:
    """Loop iterations that cost about --code-slowdown of the layer's forward, measured here
    on the pinned core with 1 thread."""
    import torch

    from lrprof.measure.timing import TimingOptions, time_callable
    from lrprof.profile.layer import prepare_spec
    from lrprof.profile.replicate import build_row
    from lrprof.spec.layer import LayerSpec

    os.sched_setaffinity(0, {args.core})
    torch.set_num_threads(1)
    spec = prepare_spec(LayerSpec(op="lr", k=7, m=8, channels=args.channels, height=args.size,
                                  width=args.size, device="cpu"))
    module, inputs = build_row(spec, 0, torch.device("cpu"))

    def forward() -> None:
        with torch.no_grad():
            module(*inputs)

    options = TimingOptions(min_runs=10, min_time_s=0.5)
    fwd_ms = time_callable(forward, torch.device("cpu"), options).median_ms
    loops = 200_000

    def spin() -> None:
        for _ in range(loops):
            pass

    spin_ms = time_callable(spin, torch.device("cpu"), options).median_ms
    return max(1, round(args.code_slowdown * fwd_ms / spin_ms * loops))


def main() -> None:
    args = parse_args()
    from lrprof.gate.compare import parse_percent

    slowdown = parse_percent(args.max_slowdown, "max-slowdown")
    growth = parse_percent(args.max_instruction_growth, "max-instruction-growth")
    raw = Thresholds(max_slowdown=slowdown, max_memory_growth=10.0, max_instruction_growth=growth)
    normalised = Thresholds(max_slowdown=slowdown, max_memory_growth=10.0,
                            max_instruction_growth=growth, normalize="baseline")
    work = args.keep or Path(tempfile.mkdtemp(prefix="lrprof-power-"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "site").mkdir(exist_ok=True)
    (work / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    spin = calibrate_spin(args)
    base_env = dict(os.environ)
    base_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), base_env.get("PYTHONPATH")]))
    slow_env = {**base_env, "LRPROF_BENCH_SPIN": str(spin),
                "PYTHONPATH": os.pathsep.join([str(work / "site"), base_env["PYTHONPATH"]])}
    print(f"profiles in {work}; {args.pairs} rounds, --repeat {args.repeat}, core {args.core}, "
          f"1 thread, C={args.channels} {args.size}x{args.size}, threshold {args.max_slowdown}; "
          f"hog busy {args.duty:.0%} of {args.period_ms:g} ms; code slowdown {spin} loop iterations "
          f"(~{args.code_slowdown:.0%} of the forward)", flush=True)
    load_before = os.getloadavg()
    started = time.perf_counter()

    gates = ["plain (1 process)", f"replicated (--repeat {args.repeat})", "normalised (1 process)",
             f"normalised + replicated (--repeat {args.repeat})"]
    false_alarms = {g: Tally() for g in gates}
    machine = {g: Tally() for g in gates}
    code = {g: Tally() for g in gates}
    achieved = {"machine": [], "code": []}
    flagged_rows = 0

    def score(tallies: dict[str, Tally], old: Path, new: Path, normalised_too: bool = True) -> None:
        pairs = [(old, new), (first_process(old), first_process(new))]
        verdicts = {
            gates[0]: flagged(pairs[1][0], pairs[1][1], raw),
            gates[1]: flagged(pairs[0][0], pairs[0][1], raw),
        }
        if normalised_too:
            verdicts[gates[2]] = flagged(pairs[1][0], pairs[1][1], normalised)
            verdicts[gates[3]] = flagged(pairs[0][0], pairs[0][1], normalised)
        for gate, verdict in verdicts.items():
            tallies[gate].add(verdict)

    detection = args.pairs if args.detection_pairs is None else min(args.detection_pairs, args.pairs)
    profiles = 0
    previous = profile(args, work / "c0", base_env, args.repeat)
    for i in range(1, args.pairs + 1):
        clean = profile(args, work / f"c{i}", base_env, args.repeat)
        score(false_alarms, previous, clean)
        made = [clean]
        if i <= detection:
            slowed_machine = profile(args, work / f"m{i}", base_env, args.repeat, hog=True)
            slowed_code = profile(args, work / f"k{i}", slow_env, args.repeat)
            score(machine, clean, slowed_machine)
            score(code, clean, slowed_code)
            achieved["machine"].append(lr_ratio(clean, slowed_machine))
            achieved["code"].append(lr_ratio(clean, slowed_code))
            made += [slowed_machine, slowed_code]
        flagged_rows += sum(unreliable(p) for p in made)
        profiles += len(made)
        previous = clean
        elapsed = time.perf_counter() - started
        print(f"round {i}/{args.pairs}: {elapsed / 60:.1f} min so far, about "
              f"{elapsed / i * (args.pairs - i) / 60:.1f} min to go", flush=True)

    instr = {"identical": Tally(), "code": Tally()}
    drift: list[float] = []  # instruction count change between identical profiles
    if args.instruction_pairs:
        prev = profile(args, work / "i0", base_env, 1, instructions=True)
        for j in range(1, args.instruction_pairs + 1):
            same = profile(args, work / f"i{j}", base_env, 1, instructions=True)
            slow = profile(args, work / f"ik{j}", slow_env, 1, instructions=True)
            instr["identical"].add(_instructions_flagged(prev, same, raw))
            instr["code"].add(_instructions_flagged(same, slow, raw))
            drift += _instruction_changes(prev, same)
            achieved.setdefault("code (instructions)", []).append(
                _instruction_ratio(same, slow))
            prev = same
            print(f"instruction pair {j}/{args.instruction_pairs} done", flush=True)

    minutes = (time.perf_counter() - started) / 60
    print()
    print(f"{'gate':44s} {'false alarms':>13s} {'machine slower':>15s} {'code slower':>12s}")
    for g in gates:
        blind = g.startswith("normalised")
        m = f"{machine[g].text()}" + (" (blind)" if blind else "")
        print(f"{g:44s} {false_alarms[g].text():>13s} {m:>15s} {code[g].text():>12s}")
    print(f"{'instructions (callgrind, ' + args.max_instruction_growth + ')':44s} "
          f"{instr['identical'].text():>13s} {'n/a':>15s} {instr['code'].text():>12s}")
    for kind, ratios in achieved.items():
        if ratios:
            print(f"achieved {kind} slowdown of the layer: median {statistics.median(ratios):.3f}x, "
                  f"range {min(ratios):.3f}-{max(ratios):.3f}x over {len(ratios)} pairs")
    if drift:
        print(f"instruction counts of identical code: largest change {max(drift):.4%} over "
              f"{len(drift)} row comparisons")
    print(f"rows flagged unreliable: {flagged_rows} of {2 * profiles}; load average "
          f"{load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after; {minutes:.1f} minutes")
    print("machine slower: a duty-cycle process on the measured core; normalised gates divide it out "
          "(blind by design) and are scored on the code slowdown. false alarms: pairs of identical code.")


def _instruction_counts(path: Path) -> dict[str, int]:
    data = json.loads(path.read_text())
    return {r["name"]: r["counted"]["fwd_instructions"] for r in data["records"]
            if "fwd_instructions" in r["counted"]}


def _instruction_changes(old: Path, new: Path) -> list[float]:
    a, b = _instruction_counts(old), _instruction_counts(new)
    return [abs(b[n] - a[n]) / a[n] for n in a if n in b and a[n]]


def _instruction_ratio(old: Path, new: Path) -> float:
    """new / old instructions of the local relation row."""
    a, b = _instruction_counts(old), _instruction_counts(new)
    name = next(n for n in a if n.startswith("lr"))
    return b[name] / a[name]


def _instructions_flagged(old: Path, new: Path, thresholds: Thresholds) -> bool:
    """The instruction gate alone: a worse or better instruction count of any row."""
    result = compare(old, new, thresholds)
    return any(m.metric.endswith("_instructions") and m.status == "worse"
               for r in result.rows for m in r.metrics)


if __name__ == "__main__":
    main()
