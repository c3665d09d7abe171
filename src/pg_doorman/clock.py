"""The clock the statistics read: monotonic microseconds.

This file is the pure-Python implementation. The compiled build never imports it on the hot path: `clock.pxd`
holds a C version (one `clock_gettime(CLOCK_MONOTONIC)` through the vDSO, about 20 ns and no Python objects),
which the compiled modules cimport under the same name.
"""

from __future__ import annotations

from time import monotonic_ns


def now_us() -> int:
    """Monotonic time in microseconds (the same clock as `time.monotonic()`)."""
    return monotonic_ns() // 1000
