"""Latency histograms and per-period statistics (stats.py): bucket layout, exact Prometheus buckets,
percentiles, the 15 s roll; and that the compiled build's C array sizes are the module's constants."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pg_doorman import stats
from pg_doorman.stats import (
    LE_BUCKETS,
    NBUCKETS,
    PERIOD,
    Histogram,
    PoolStats,
    bucket_bounds,
    bucket_index,
    percentiles,
)


def test_buckets_are_contiguous_and_at_most_one_eighth_wide() -> None:
    previous_high = 0
    for index in range(NBUCKETS):
        low, high = bucket_bounds(index)
        assert low == previous_high, index
        assert high > low
        if low >= 16:
            assert (high - low) / low <= 0.125
        previous_high = high


@pytest.mark.parametrize("us", [0, 1, 15, 16, 17, 31, 32, 33, 499, 500, 501, 10**6, 123_456_789, 2**40 + 5])
def test_a_duration_lands_in_the_bucket_that_holds_it(us: int) -> None:
    low, high = bucket_bounds(bucket_index(us))
    assert low <= us < high


def test_huge_durations_land_in_the_last_bucket() -> None:
    assert bucket_index(2**60) == NBUCKETS - 1


def test_prometheus_buckets_are_exact_at_their_bounds() -> None:
    histogram = Histogram(stats.QUERY_BUCKETS_US)
    for us in (500, 501, 5_000, 5_001, 4_999_999, 5_000_000, 5_000_001, -3):
        histogram.record(us)
    # le=0.0005 holds 500 and the negative duration (clamped to 0); 501 and 5000 are <= 0.005, ...
    assert histogram.cumulative() == (
        (0.0005, 2),
        (0.005, 4),
        (0.05, 5),
        (0.5, 5),
        (5.0, 7),
        (float("inf"), 8),
    )
    assert histogram.count == 8
    assert histogram.sum_us == 500 + 501 + 5_000 + 5_001 + 4_999_999 + 5_000_000 + 5_000_001


def test_record_zero_counts_a_checkout_that_did_not_wait() -> None:
    histogram = Histogram(stats.WAIT_BUCKETS_US)
    histogram.record_zero()
    histogram.record(250)
    assert histogram.count == 2 and histogram.sum_us == 250
    assert histogram.cumulative()[0] == (0.0001, 1)
    assert histogram.snapshot()[0] == 1


def test_percentiles_of_a_known_distribution() -> None:
    histogram = Histogram(stats.QUERY_BUCKETS_US)
    for us in range(1, 101):  # 1..100 µs, one each
        histogram.record(us * 10)
    result = percentiles(histogram.snapshot(), None)
    for key, want in (("0.5", 500), ("0.9", 900), ("0.95", 950), ("0.99", 990)):
        assert abs(result[key] - want) <= want * 0.07, (key, result[key])


def test_percentiles_over_a_window_ignore_what_came_before_it() -> None:
    histogram = Histogram(stats.QUERY_BUCKETS_US)
    for _ in range(1000):
        histogram.record(10)
    before = histogram.snapshot()
    for _ in range(10):
        histogram.record(100_000)
    window = percentiles(histogram.snapshot(), before)
    assert 87_500 <= window["0.5"] <= 112_500
    assert percentiles(histogram.snapshot(), histogram.snapshot()) == dict.fromkeys(("0.5", "0.9", "0.95", "0.99"), 0)


def test_roll_gives_per_second_rates_and_average_durations_per_period() -> None:
    pool = PoolStats()
    pool.roll(100.0, 0, 0)  # the first call starts the period
    for _ in range(30):
        pool.xact.record(2_000)
        pool.query.record(1_000)
        pool.query.record(1_000)
        pool.wait.record_zero()
    pool.count_error("42P01")
    pool.roll(100.0 + PERIOD / 2, 1_000, 2_000)  # period not over: nothing changes
    assert pool.averages["avg_xact_count"] == 0
    pool.roll(100.0 + PERIOD, 1_500, 3_000)
    assert pool.averages == {
        "avg_xact_count": 2,  # 30 in 15 s
        "avg_query_count": 4,
        "avg_recv": 100,
        "avg_sent": 200,
        "avg_errors": 0,  # 1 in 15 s rounds to 0 per second
        "avg_xact_time_us": 2_000,
        "avg_query_time_us": 1_000,
        "avg_wait_time_us": 0,
    }
    assert pool.errors == 1 and pool.errors_by_sqlstate == {"42P01": 1}
    # The next period's percentiles see only what happened after the snapshot just taken.
    pool.query.record(300_000)
    query_pct, _xact_pct, _wait_pct = pool.window_percentiles()
    assert query_pct["0.5"] > 250_000


def test_the_compiled_arrays_have_the_module_sizes() -> None:
    pxd = (Path(stats.__file__).parent / "stats.pxd").read_text()
    assert re.search(rf"buckets\[{NBUCKETS}\]", pxd)
    assert re.search(rf"le_us\[{LE_BUCKETS}\]", pxd)
    assert re.search(rf"le_counts\[{LE_BUCKETS + 1}\]", pxd)
