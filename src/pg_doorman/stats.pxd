# Cython declarations for stats.py (used only by the optional compiled build, see setup.py); the .py file runs
# unchanged without them. Bucket counts are C arrays (the sizes are stats.py's NBUCKETS and LE_BUCKETS, checked
# by tests/unit/test_stats.py), so recording a duration is C arithmetic without Python objects.
import cython


cdef int _LINEAR, _SUB, _NBUCKETS, _LE_BUCKETS


@cython.locals(shift=int, top="long long", index=int)
cpdef int bucket_index(long long us) noexcept


@cython.final
cdef class Histogram:
    cdef public unsigned long long buckets[368]
    cdef public long long le_us[5]
    cdef public unsigned long long le_counts[6]
    cdef public unsigned long long count
    cdef public long long sum_us

    @cython.locals(i=Py_ssize_t)
    cpdef void record(self, long long us) noexcept

    cpdef void record_zero(self) noexcept


@cython.final
cdef class PoolStats:
    cdef public Histogram query
    cdef public Histogram xact
    cdef public Histogram wait
    cdef public dict errors_by_sqlstate
    cdef public object _history
    cdef public double _period_start
    cdef public tuple _period_totals
    cdef public dict averages
