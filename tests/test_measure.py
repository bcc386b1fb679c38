"""Measurement primitives: latency statistics and timing, peak memory, device facts."""

import os
import sys
import time

import pytest
import torch

import lrprof
from lrprof.measure import device as device_facts
from lrprof.measure.memory import CPU_METHOD, MemoryStats, cpu_peak, peak_memory, tensor_bytes
from lrprof.measure.timing import Stats, TimingOptions, time_callable, warm_up
from lrprof.spec.errors import SpecError
from lrprof.spec.words import plural

MIB = 2**20
CPU = torch.device("cpu")

# ---- Stats ------------------------------------------------------------------------------


def test_stats_from_times_odd_count():
    stats = Stats.from_times([5.0, 1.0, 4.0, 2.0, 3.0], calls_per_run=7, method="m", threads=3)
    assert (stats.median_ms, stats.q1_ms, stats.q3_ms) == (3.0, 2.0, 4.0)
    assert (stats.min_ms, stats.max_ms) == (1.0, 5.0)
    assert stats.runs == 5
    assert stats.calls_per_run == 7
    assert stats.method == "m"
    assert stats.threads == 3
    assert stats.iqr_ms == 2.0


def test_stats_from_times_two_values_interpolates_quartiles():
    stats = Stats.from_times([3.0, 1.0], calls_per_run=1, method="m")
    assert stats.median_ms == pytest.approx(2.0)
    assert stats.q1_ms == pytest.approx(1.5)
    assert stats.q3_ms == pytest.approx(2.5)
    assert (stats.min_ms, stats.max_ms, stats.runs) == (1.0, 3.0, 2)
    assert stats.threads is None


@pytest.mark.parametrize("times", [[], [1.0]])
def test_stats_need_two_runs(times):
    with pytest.raises(ValueError):
        Stats.from_times(times, calls_per_run=1, method="m")


def test_stats_dict_round_trip():
    stats = Stats.from_times([1.0, 2.0, 4.0], calls_per_run=10, method="m", threads=1)
    assert Stats.from_dict(stats.to_dict()) == stats
    assert stats.samples_ms == (1.0, 2.0, 4.0)  # the raw runs are kept, in order


# ---- timing -----------------------------------------------------------------------------


def test_warm_up_runs_at_least_the_asked_calls():
    calls = []
    per_call = warm_up(lambda: calls.append(1), CPU, TimingOptions(warmup=4, warmup_s=0))
    assert len(calls) == 4
    assert per_call >= 0


def test_time_callable_cpu_times_blocks_on_torch_threads():
    x = torch.randn(32, 32)
    calls = []

    def fn():
        calls.append(1)
        return x @ x

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the conftest fixture restores the session's setting
    options = TimingOptions(min_runs=3, min_time_s=0.05, warmup=1, warmup_s=0)
    stats = time_callable(fn, CPU, options)
    assert "timeit" in stats.method and "interleaved" in stats.method
    assert stats.threads == 1
    assert len(stats.samples_ms) == stats.runs
    assert stats.runs >= 2
    assert stats.calls_per_run >= 1
    assert 0 < stats.min_ms <= stats.q1_ms <= stats.median_ms <= stats.q3_ms <= stats.max_ms
    assert len(calls) >= stats.runs * stats.calls_per_run  # fn itself was timed
    assert torch.get_num_threads() == 1  # timing leaves the thread setting alone
    torch.set_num_threads(before)


def test_time_callable_cpu_defaults_to_torch_threads():
    x = torch.randn(16, 16)
    options = TimingOptions(min_runs=2, min_time_s=0.02, warmup=1, warmup_s=0)
    stats = time_callable(lambda: x + x, CPU, options)
    assert stats.threads == torch.get_num_threads()


def test_time_callable_cpu_honours_min_runs():
    options = TimingOptions(min_runs=12, min_time_s=0.05, warmup=5, warmup_s=0)
    stats = time_callable(lambda: time.sleep(0.0005), CPU, options)
    assert stats.runs >= 12


@pytest.mark.parametrize("field,value", [("min_runs", 1), ("min_time_s", float("nan")),
                                         ("min_time_s", float("inf")), ("min_time_s", 0.0),
                                         ("warmup", -1), ("warmup_s", float("inf"))])
def test_timing_options_reject_values_that_could_hang_or_mislead(field, value):
    with pytest.raises(SpecError):
        TimingOptions(**{field: value})


# ---- memory -----------------------------------------------------------------------------


def _two_live_tensors():
    first = torch.empty(MIB, dtype=torch.float32)  # 4 MiB
    second = torch.empty(MIB, dtype=torch.float32)  # 4 MiB more while the first is alive
    return first, second


def _one_after_the_other():
    first = torch.ones(MIB, dtype=torch.float32)
    del first
    second = torch.ones(MIB, dtype=torch.float32)
    del second


def test_cpu_peak_counts_tensors_alive_together():
    stats = cpu_peak(_two_live_tensors, runs=3, resident=123)
    assert 8 * MIB <= stats.peak_bytes < 8 * MIB + 64 * 1024
    assert 8 * MIB <= stats.min_bytes <= stats.peak_bytes <= stats.max_bytes < 8 * MIB + 64 * 1024
    assert stats.runs == 3
    assert stats.resident_bytes == 123
    assert stats.method == CPU_METHOD


def test_cpu_peak_subtracts_frees():
    stats = cpu_peak(_one_after_the_other, runs=2)
    assert 4 * MIB <= stats.peak_bytes < 4 * MIB + 64 * 1024


def test_cpu_peak_of_no_allocation_is_zero():
    stats = cpu_peak(lambda: 1 + 1, runs=2)
    assert stats.peak_bytes < 1024
    assert stats.max_bytes < 1024


def test_cpu_peak_keeps_profiler_lines_off_stderr_and_restores_it(capfd, monkeypatch):
    monkeypatch.setattr(sys, "stderr", sys.__stderr__)  # a stream on fd 2, as in a terminal
    cpu_peak(_two_live_tensors, runs=1)
    os.write(2, b"still here\n")
    assert capfd.readouterr().err == "still here\n"


def test_peak_memory_on_cpu_reports_resident_and_runs():
    stats = peak_memory(_two_live_tensors, CPU, runs=2, resident=4096)
    assert stats.method == CPU_METHOD
    assert stats.runs == 2
    assert stats.resident_bytes == 4096
    assert stats.peak_bytes >= 8 * MIB


def test_memory_stats_from_peaks():
    stats = MemoryStats.from_peaks([30, 10, 20], resident=5, method="m")
    assert (stats.peak_bytes, stats.min_bytes, stats.max_bytes, stats.runs) == (20, 10, 30, 3)
    assert MemoryStats(**stats.to_dict()) == stats


def test_tensor_bytes_counts_params_buffers_and_tensors():
    linear = torch.nn.Linear(4, 3)  # 12 + 3 float32 parameters
    norm = torch.nn.BatchNorm1d(5)  # 10 float32 parameters, 10 float32 + 1 int64 buffers
    half = torch.zeros(10, dtype=torch.float16)
    assert tensor_bytes(linear) == 15 * 4
    assert tensor_bytes(norm) == 20 * 4 + 8
    assert tensor_bytes(half) == 20
    assert tensor_bytes(linear, norm, half) == 60 + 88 + 20
    assert tensor_bytes() == 0


# ---- device facts -----------------------------------------------------------------------


def test_collect_cpu_facts():
    env = device_facts.collect(CPU)
    assert env.device == "cpu"
    assert env.torch_version == torch.__version__
    assert env.lrprof_version == lrprof.__version__
    assert env.cpu_logical_cores == os.cpu_count()
    assert env.cpu_logical_cores >= 1
    assert env.torch_threads == torch.get_num_threads()
    assert env.torch_threads >= 1
    assert env.device_name
    assert env.python_version
    assert env.cuda == {}
    assert f"{plural(env.torch_threads, 'thread')}" in env.summary()


def test_environment_dict_round_trip():
    env = device_facts.collect(CPU)
    assert device_facts.Environment.from_dict(env.to_dict()) == env
    partial = device_facts.Environment.from_dict({"device": "cpu", "device_name": "x"})
    assert partial.torch_version is None
    assert partial.cuda == {}
    assert partial.unreadable == {}
