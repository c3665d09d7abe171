# The compiled build's now_us (clock.py is the pure-Python one): clock_gettime(CLOCK_MONOTONIC) without a Python
# call or a Python int. Only cimported by the compiled modules' .pxd files; clock.py itself is never compiled.
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec


cdef inline long long now_us() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <long long>ts.tv_sec * 1000000 + ts.tv_nsec // 1000
