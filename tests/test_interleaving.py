"""Rows that are compared are timed in one schedule, taking turns in a rotating order, so a
change of machine speed during a run hits them alike."""

import time

import pytest
import torch
from torch import nn

import lrprof.profile.steps as steps_module
from lrprof.measure.parts import Parts, time_parts_interleaved
from lrprof.measure.timing import Stats, TimingOptions, time_interleaved
from lrprof.profile.layer import profile_layers
from lrprof.profile.net import NetSpec, profile_nets
from lrprof.spec.layer import LayerSpec
from lrprof.spec.options import MeasureOptions

CPU = torch.device("cpu")
# Blocks of one call: each call (1 ms) is longer than the block target (0.02 s / 40 runs).
ONE_CALL_BLOCKS = TimingOptions(warmup=1, warmup_s=0, min_runs=4, min_time_s=0.002)


def logging_candidates(log, names=("a", "b", "c")):
    def make(name):
        def fn():
            log.append(name)
            time.sleep(0.001)
        return fn
    return [(name, make(name)) for name in names]


def test_candidates_take_turns_in_a_rotating_order():
    log: list[str] = []
    results = time_interleaved(logging_candidates(log), CPU, ONE_CALL_BLOCKS)
    timed = log[3:]  # after each candidate's one warm-up call
    rounds = [timed[i:i + 3] for i in range(0, len(timed), 3)]
    assert len(rounds) >= 4
    for index, order in enumerate(rounds):
        assert sorted(order) == ["a", "b", "c"]  # every candidate once per round
        assert order[0] == "abc"[index % 3]  # and the first place rotates
    assert all(isinstance(r, Stats) and r.calls_per_run == 1 for r in results.values())
    assert all(len(r.samples_ms) == r.runs >= 4 for r in results.values())


def test_a_failing_candidate_is_dropped_and_the_others_finish():
    calls = {"n": 0}

    def flaky():
        calls["n"] += 1
        if calls["n"] > 2:
            raise RuntimeError("out of memory")
        time.sleep(0.001)

    log: list[str] = []
    candidates = logging_candidates(log, ("a", "b")) + [("flaky", flaky)]
    results = time_interleaved(candidates, CPU, ONE_CALL_BLOCKS)
    assert isinstance(results["flaky"], RuntimeError)
    assert isinstance(results["a"], Stats) and isinstance(results["b"], Stats)


@pytest.fixture
def captured_schedule(monkeypatch):
    schedules = []
    real = steps_module.time_interleaved

    def capture(candidates, device, options=None):
        schedules.append([key for key, _ in candidates])
        return real(candidates, device, options)

    monkeypatch.setattr(steps_module, "time_interleaved", capture)
    return schedules


def test_a_layer_report_times_all_rows_and_phases_in_one_schedule(captured_schedule):
    specs = [LayerSpec(op="lr", k=3, m=4, channels=8, height=8, width=8, device="cpu"),
             LayerSpec(op="lr", k=5, m=4, channels=8, height=8, width=8, device="cpu")]
    options = MeasureOptions(backward=True, memory_runs=1, stock_counters=False,
                             timing=TimingOptions(warmup=1, warmup_s=0, min_runs=2, min_time_s=0.01))
    records = profile_layers(specs, options)
    assert [r.derived["role"] for r in records] == ["measured", "measured", "baseline"]
    (schedule,) = captured_schedule
    assert sorted(schedule) == [(i, p) for i in range(3) for p in ("fwd", "fwd_bwd")]
    assert records[0].derived["fwd_latency_vs_baseline"] == pytest.approx(
        records[0].latency["fwd"].median_ms / records[2].latency["fwd"].median_ms)


def test_net_vs_times_both_networks_in_one_schedule(captured_schedule):
    options = MeasureOptions.for_net(hooked_runs=2, stock_counters=False,
                         timing=TimingOptions(warmup=1, warmup_s=0, min_runs=2, min_time_s=0.01))
    profiles = profile_nets([NetSpec("lr26", height=32, width=32), NetSpec("resnet26", height=32, width=32)],
                            options)
    (schedule,) = captured_schedule
    assert schedule == [(0, "fwd"), (1, "fwd")]
    assert all(p.net.error is None and len(p.stages) == 6 for p in profiles)


def test_hooked_breakdowns_alternate_between_models():
    order: list[str] = []

    def model(name):
        net = nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU())
        net.register_forward_pre_hook(lambda *_: order.append(name))
        return net

    entries = [Parts(model("a"), (torch.randn(1, 3, 4, 4),), ["0", "1"]),
               Parts(model("b"), (torch.randn(1, 3, 4, 4),), ["0"])]
    times = time_parts_interleaved(entries, CPU, runs=4)
    assert order == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert [len(times[0]["0"]), len(times[0]["1"]), len(times[1]["0"])] == [4, 4, 4]
