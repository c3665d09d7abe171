# The compiled build's session_hints (sessionhints.py is the pure-Python one): memmem over the statement text,
# no Python objects. Only cimported by client.pxd; sessionhints.py itself is never compiled.
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE

from pg_doorman cimport codes


cdef extern from "<string.h>" nogil:
    void *memmem(const void *haystack, size_t haystacklen, const void *needle, size_t needlelen)


cdef inline int session_hints(bytes data, Py_ssize_t start, Py_ssize_t end) noexcept:
    cdef Py_ssize_t size = PyBytes_GET_SIZE(data)
    if end > size:
        end = size
    if start < 0 or start >= end:
        return 0
    cdef const char *text = PyBytes_AS_STRING(data) + start
    cdef size_t n = end - start
    cdef int hints = 0
    if memmem(text, n, b"_config", 7) != NULL or memmem(text, n, b"_CONFIG", 7) != NULL:
        hints |= codes.HINT_SET_CONFIG
    if memmem(text, n, b"dvisory", 7) != NULL or memmem(text, n, b"DVISORY", 7) != NULL:
        hints |= codes.HINT_ADVISORY
    if memmem(text, n, b"temp", 4) != NULL or memmem(text, n, b"TEMP", 4) != NULL:
        hints |= codes.HINT_TEMP
    return hints
