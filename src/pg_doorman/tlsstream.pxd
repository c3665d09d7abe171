# Cython declarations for tlsstream.py (compiled build only; the .py runs unchanged without them). tlsio is
# cimported: the compiled build calls OpenSSL from C (tlsio.pxd), the pure-Python one goes through tlsio.py.
from pg_doorman cimport tlsio


cdef class TlsTransport:
    cdef public object app
    cdef public object raw
    cdef public object ssl_object
    cdef object _sock
    cdef object _incoming
    cdef object _outgoing
    cdef object _handshake
    cdef int _fd
    cdef bint _queued
    cdef bint _closing

    cpdef data_received(self, data)
    cpdef write(self, data)
    cdef _receive(self, bytes data)
    cdef _flush(self)
