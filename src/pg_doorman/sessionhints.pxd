# The compiled build's session_hints (sessionhints.py is the pure-Python one): memchr (vectorized in libc) finds
# the rare anchor letter of each word, and only those places are compared; no Python objects. Only cimported by
# the client and rewrite modules; sessionhints.py itself is never compiled.
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.string cimport memchr

from pg_doorman cimport codes


cdef inline bint _word_at(const unsigned char *text, Py_ssize_t n, Py_ssize_t at, const char *word,
                          Py_ssize_t length) noexcept:
    """``word`` (lower case) at text[at:at + length], ASCII letters in any case (for a letter of ``word``,
    c | 0x20 equals it only when c is that letter in either case; '_' must match exactly)."""
    cdef Py_ssize_t i
    cdef unsigned char c, w
    if at < 0 or at + length > n:
        return False
    for i in range(length):
        c = text[at + i]
        w = <unsigned char>word[i]
        if c != w and (c | 0x20) != w:
            return False
    return True


cdef inline bint _contains(const unsigned char *text, Py_ssize_t n, const char *word, Py_ssize_t length,
                           Py_ssize_t anchor) noexcept:
    """Whether ``word`` occurs in ``text`` in any letter case, found through its letter at ``anchor``."""
    cdef unsigned char letter = <unsigned char>word[anchor]
    cdef unsigned char other = letter & ~0x20 if 97 <= letter <= 122 else letter
    cdef const unsigned char *hit
    cdef const unsigned char *from_ = text
    cdef const unsigned char *stop = text + n
    while from_ < stop:
        hit = <const unsigned char *>memchr(from_, letter, stop - from_)
        if hit == NULL:
            break
        if _word_at(text, n, hit - text - anchor, word, length):
            return True
        from_ = hit + 1
    if other == letter:
        return False
    from_ = text
    while from_ < stop:
        hit = <const unsigned char *>memchr(from_, other, stop - from_)
        if hit == NULL:
            return False
        if _word_at(text, n, hit - text - anchor, word, length):
            return True
        from_ = hit + 1
    return False


cdef inline int session_hints(bytes data, Py_ssize_t start, Py_ssize_t end) noexcept:
    cdef Py_ssize_t size = PyBytes_GET_SIZE(data)
    if end > size:
        end = size
    if start < 0 or end - start < 4:
        return 0
    cdef const unsigned char *text = <const unsigned char *>PyBytes_AS_STRING(data) + start
    cdef Py_ssize_t n = end - start
    cdef int hints = 0
    if _contains(text, n, b"_config", 7, 0):
        hints |= codes.HINT_SET_CONFIG
    if _contains(text, n, b"advisory", 8, 2):  # by its 'v'
        hints |= codes.HINT_ADVISORY
    if _contains(text, n, b"temp", 4, 2):  # by its 'm'
        hints |= codes.HINT_TEMP
    return hints
