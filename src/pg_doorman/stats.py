"""Traffic statistics of a pool: latency histograms and error counts, updated on the forwarding path.

Each server connection counts its own transactions, queries and bytes (C fields of `ServerConnection`); what a
pool needs across its servers lives here: one `Histogram` each for query, transaction and wait durations, the
number of checkouts that did not wait, and errors by SQLSTATE. Totals come out of the histograms themselves
(count and sum), so the forwarding path records a duration once and nothing else.

A histogram keeps two sets of counts, both exact at microsecond resolution:
- log-linear buckets (like HdrHistogram with three significant bits: below 16 µs one bucket per microsecond,
  above, every power of two cut into 8 buckets, so at most 12.5 % wide) for percentiles;
- the Prometheus buckets of the original's metrics (``le`` in seconds), so that an exported histogram is exact.

Percentiles are over a sliding window: `PoolStats.roll`, called once a second by the registry, keeps a snapshot
of the bucket counts every `PERIOD` seconds; the window is the difference between now and the oldest snapshot
(`WINDOW_PERIODS` periods back, the last minute). The same roll computes PgBouncer's per-period averages.
Nothing here runs per client on a timer, and recording is a few integer operations (compiled: C calls on C
arrays).
"""

from __future__ import annotations

from array import array
from collections import deque

# Bucket layout (see the module docstring).
LINEAR = 16
SUB = 8
NBUCKETS = LINEAR + SUB * 44  # values up to 2**47 µs (4.5 years); larger ones land in the last bucket
LE_BUCKETS = 5  # Prometheus buckets per histogram, +Inf not counted (the .pxd sizes C arrays with these)
# The same, as C ints in the compiled build (the names above stay importable Python values).
_LINEAR, _SUB, _NBUCKETS, _LE_BUCKETS = LINEAR, SUB, NBUCKETS, LE_BUCKETS

PERIOD = 15.0  # seconds: PgBouncer's stats_period, the averages' period
WINDOW_PERIODS = 4  # percentiles over the last minute
PERCENTILES = (0.5, 0.9, 0.95, 0.99)

# The original's Prometheus buckets, in microseconds.
QUERY_BUCKETS_US = (500, 5_000, 50_000, 500_000, 5_000_000)
XACT_BUCKETS_US = (1_000, 10_000, 100_000, 1_000_000, 10_000_000)
WAIT_BUCKETS_US = (100, 1_000, 10_000, 100_000, 1_000_000)


def _zeros(n: int) -> list[int]:
    return [0] * n


def bucket_index(us: int) -> int:
    """The log-linear bucket of a duration of ``us`` microseconds."""
    if us < _LINEAR:
        return us if us > 0 else 0
    shift = 0
    top = us
    while top >= _LINEAR:
        top >>= 1
        shift += 1
    index = _LINEAR + (shift - 1) * _SUB + (top - _SUB)
    return index if index < _NBUCKETS else _NBUCKETS - 1


def bucket_bounds(index: int) -> tuple[int, int]:
    """The durations bucket ``index`` holds: [low, high) in microseconds."""
    if index < LINEAR:
        return index, index + 1
    shift = (index - LINEAR) // SUB + 1
    top = (index - LINEAR) % SUB + SUB
    return top << shift, (top + 1) << shift


class Histogram:
    """Durations in microseconds: log-linear buckets for percentiles, exact Prometheus buckets, count and sum."""

    __slots__ = ("buckets", "count", "le_counts", "le_us", "sum_us")

    def __init__(self, le_us: tuple[int, ...]) -> None:
        assert len(le_us) == LE_BUCKETS
        # Lists here, C arrays in the compiled build (converted from these lists).
        self.buckets = _zeros(NBUCKETS)
        self.le_counts = _zeros(LE_BUCKETS + 1)  # per Prometheus bucket (not cumulative); the last is +Inf
        self.le_us = list(le_us)
        self.count = 0
        self.sum_us = 0

    def record(self, us: int) -> None:
        if us < 0:
            us = 0  # a clock step cannot make a negative duration
        self.count += 1
        self.sum_us += us
        self.buckets[bucket_index(us)] += 1
        i = 0
        while i < _LE_BUCKETS and us > self.le_us[i]:
            i += 1
        self.le_counts[i] += 1

    def record_zero(self) -> None:
        """A zero duration (a checkout that did not wait), without the bucket search."""
        self.count += 1
        self.buckets[0] += 1
        self.le_counts[0] += 1

    def snapshot(self) -> array[int]:
        """A copy of the log-linear bucket counts (for windows: see `percentiles`)."""
        return array("Q", self.buckets)

    def cumulative(self) -> tuple[tuple[float, int], ...]:
        """Prometheus buckets: (le in seconds, observations <= le), +Inf last."""
        out = []
        running = 0
        le_counts = list(self.le_counts)
        for i, bound in enumerate(list(self.le_us)):
            running += le_counts[i]
            out.append((bound / 1e6, running))
        running += le_counts[LE_BUCKETS]
        out.append((float("inf"), running))
        return tuple(out)


def percentiles(now: array[int], then: array[int] | None, qs: tuple[float, ...] = PERCENTILES) -> dict[str, int]:
    """Percentiles (µs, the middle of the bucket reached) of the durations recorded between two snapshots of a
    histogram's buckets (``then`` None: since it was created). All zero when nothing was recorded."""
    counts = [a - b for a, b in zip(now, then, strict=True)] if then is not None else list(now)
    total = sum(counts)
    result = {}
    for q in qs:
        key = f"{q:g}"
        if not total:
            result[key] = 0
            continue
        rank = max(1, -(-int(q * total * 1000) // 1000))  # ceil(q * total), without float surprises at .5
        running = 0
        for index, count in enumerate(counts):
            running += count
            if running >= rank:
                low, high = bucket_bounds(index)
                result[key] = (low + high - 1) // 2 if high - low > 1 else low
                break
    return result


class PoolStats:
    """The histograms and error counts of one pool, and their per-period view (`roll`)."""

    __slots__ = (
        "_history",
        "_period_start",
        "_period_totals",
        "averages",
        "errors_by_sqlstate",
        "query",
        "wait",
        "xact",
    )

    def __init__(self) -> None:
        self.query = Histogram(QUERY_BUCKETS_US)
        self.xact = Histogram(XACT_BUCKETS_US)
        self.wait = Histogram(WAIT_BUCKETS_US)
        self.errors_by_sqlstate: dict[str, int] = {}
        # (query, xact, wait) bucket snapshots, one per period, oldest first.
        self._history: deque[tuple[array[int], array[int], array[int]]] = deque(maxlen=WINDOW_PERIODS)
        self._period_start = -1.0
        self._period_totals: tuple[int, ...] = ()
        self.averages: dict[str, int] = dict.fromkeys(AVERAGE_KEYS, 0)

    def count_error(self, sqlstate: str) -> None:
        """An ErrorResponse from PostgreSQL reached a client of this pool."""
        by_code = self.errors_by_sqlstate
        by_code[sqlstate] = by_code.get(sqlstate, 0) + 1

    @property
    def errors(self) -> int:
        return sum(self.errors_by_sqlstate.values())

    def totals(self, bytes_received: int, bytes_sent: int) -> tuple[int, ...]:
        """The counters the averages are computed from, in `AVERAGE_KEYS`' order of sources."""
        query, xact, wait = self.query, self.xact, self.wait
        return (
            xact.count,
            query.count,
            bytes_received,
            bytes_sent,
            self.errors,
            xact.sum_us,
            query.sum_us,
            wait.sum_us,
            wait.count,
        )

    def roll(self, now: float, bytes_received: int, bytes_sent: int) -> None:
        """Once a second: at each period's end, the period's averages and a snapshot for the percentile window."""
        if self._period_start < 0:
            self._period_start = now
            self._period_totals = self.totals(bytes_received, bytes_sent)
            return
        elapsed = now - self._period_start
        if elapsed < PERIOD:
            return
        current = self.totals(bytes_received, bytes_sent)
        delta = [a - b for a, b in zip(current, self._period_totals, strict=True)]
        xacts, queries, received, sent, errors, xact_us, query_us, wait_us, waits = delta
        self.averages = {
            # PgBouncer: counts and bytes per second over the period; times per transaction / query / wait.
            "avg_xact_count": round(xacts / elapsed),
            "avg_query_count": round(queries / elapsed),
            "avg_recv": round(received / elapsed),
            "avg_sent": round(sent / elapsed),
            "avg_errors": round(errors / elapsed),
            "avg_xact_time_us": xact_us // xacts if xacts else 0,
            "avg_query_time_us": query_us // queries if queries else 0,
            "avg_wait_time_us": wait_us // waits if waits else 0,
        }
        self._period_start = now
        self._period_totals = current
        self._history.append((self.query.snapshot(), self.xact.snapshot(), self.wait.snapshot()))

    def window_percentiles(self) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
        """Query, transaction and wait percentiles (µs) over the window: since the oldest kept snapshot."""
        oldest = self._history[0] if self._history else (None, None, None)
        return (
            percentiles(self.query.snapshot(), oldest[0]),
            percentiles(self.xact.snapshot(), oldest[1]),
            percentiles(self.wait.snapshot(), oldest[2]),
        )


AVERAGE_KEYS = (
    "avg_xact_count",
    "avg_query_count",
    "avg_recv",
    "avg_sent",
    "avg_errors",
    "avg_xact_time_us",
    "avg_query_time_us",
    "avg_wait_time_us",
)
