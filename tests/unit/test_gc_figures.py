"""gcpolicy.figures and the pg_doorman_gc_* families it feeds: zero without a policy, counting once one is in."""

from __future__ import annotations

import gc

from pg_doorman import gcpolicy
from pg_doorman.observe import metrics


def samples() -> dict[str, float]:
    return {s.name: s.value for family in metrics._collector() for s in family.samples}


def test_figures_are_zero_without_a_policy() -> None:
    assert gcpolicy.current() is None
    assert gcpolicy.figures() == gcpolicy.Figures(0, 0.0, 0.0)
    assert samples() == {
        "pg_doorman_gc_full_collections_total": 0,
        "pg_doorman_gc_pause_seconds_total": 0.0,
        "pg_doorman_gc_longest_pause_seconds": 0.0,
    }


def test_a_full_collection_is_counted_with_its_pause() -> None:
    gcpolicy.install("default", freeze_survivors=False)  # CPython's thresholds: nothing to undo but the hook
    try:
        before = gcpolicy.figures()
        junk: list[object] = []
        junk.append(junk)  # a cycle for the collector to find
        del junk
        gc.collect()
        gc.collect(0)  # a young collection: may be the longest pause, never a full one
        after = gcpolicy.figures()
        assert after.full_collections == before.full_collections + 1
        assert after.pause_seconds_total > before.pause_seconds_total
        assert after.longest_pause_seconds >= after.pause_seconds_total / after.full_collections
        assert samples() == {
            "pg_doorman_gc_full_collections_total": after.full_collections,
            "pg_doorman_gc_pause_seconds_total": after.pause_seconds_total,
            "pg_doorman_gc_longest_pause_seconds": after.longest_pause_seconds,
        }
    finally:
        gcpolicy.uninstall()
    assert gcpolicy.figures() == gcpolicy.Figures()
