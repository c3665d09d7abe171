# Cython declarations for connection.py (used only by the optional compiled build, see setup.py); the .py file
# runs unchanged without them. directio is cimported: the compiled build uses the C send_nowait of directio.pxd.
import cython

from pg_doorman cimport directio


cdef class Connection:
    cdef public double _drain_deadline
    cdef public double _drain_idle_close_at
    cdef public Py_ssize_t _drain_left
    cdef public bytes _drain_notice
    cdef public object _drain_timer
    cdef public int _fd
    cdef public bint _queued_in_transport
    cdef public bint _read_paused
    cdef public object _send
    cdef public object transport

    cpdef pause_reading(self)
    cpdef resume_reading(self)
    cpdef forget_socket(self)
    cpdef close_transport(self)
    cpdef abort_transport(self)
    cpdef close_after_error(self, bytes data, bint wait_for_input=*)
    cpdef discard_input(self, Py_ssize_t size)
    cpdef write(self, data)

    @cython.locals(sent=Py_ssize_t)
    cdef bytes _write_direct(self, bytes data)
