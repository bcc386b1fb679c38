"""Numbers a person can read: latency to the precision its spread supports, counts whole and
separated, one unit per quantity, plurals."""

import pytest

from lrprof.measure.timing import Stats
from lrprof.report.numbers import decimals_for_spread, figure, latency_text, mib
from lrprof.spec.words import plural


def stats(median, q1, q3, runs=10, calls=1):
    return Stats(median, q1, q3, q1 * 0.9, q3 * 1.1, runs, calls, "t")


@pytest.mark.parametrize("median,q1,q3,text", [
    (213.129, 184.856, 220.366, "213 [185-220] n=10"),  # a 35 ms spread: no decimals
    (0.4602, 0.4123, 0.5431, "0.46 [0.41-0.54] n=10"),
    (77.31, 74.02, 79.14, "77.3 [74.0-79.1] n=10"),
    (12.0, 12.0, 12.0, "12.0 [12.0-12.0] n=10"),  # no spread: three digits of the median
])
def test_latency_carries_the_digits_its_spread_supports(median, q1, q3, text):
    assert latency_text(stats(median, q1, q3)) == text


def test_runs_that_average_calls_say_so():
    assert latency_text(stats(1.0, 0.9, 1.1, runs=12, calls=50)).endswith("n=12x50")


def test_decimals_follow_two_significant_digits_of_the_spread():
    assert decimals_for_spread(35.5, 213) == 0
    assert decimals_for_spread(3.55, 21) == 1
    assert decimals_for_spread(0.0355, 0.2) == 3


@pytest.mark.parametrize("value,text", [
    (19624.0, "19,624"), (20812.3, "20,812"), (999.6, "1,000"), (1.23456, "1.23"),
    (-0.0123, "-0.0123"), (2.5e-4, "2.50e-4"), (float("inf"), "inf"),
])
def test_figures_never_use_e_notation_above_a_thousandth(value, text):
    assert figure(value) == text


def test_memory_is_mib_and_plurals_agree():
    assert mib(3 * 2**20) == 3.0 and mib(None) is None
    assert plural(1, "thread") == "1 thread" and plural(2, "thread") == "2 threads"
    assert plural(1, "matched row") == "1 matched row" and plural(3, "row") == "3 rows"
