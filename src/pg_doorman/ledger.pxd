# Cython declarations for ledger.py (used only by the optional compiled build, see setup.py); the .py file runs
# unchanged without them. The forwarding loops of client and server call these methods as C calls.
import cython

from pg_doorman cimport codes
from pg_doorman.prepared cimport Expect


@cython.final
cdef class ServerLedger:
    cdef public bint client_partial
    cdef public bint copy_done_sent
    cdef public object expect
    cdef public bint in_copy
    cdef public Py_ssize_t pending_z
    cdef public object replay_source
    cdef public object retry
    cdef public bint skipping
    cdef public Py_ssize_t swallow
    cdef public Py_ssize_t syncs_after_execute
    cdef public int tx_status
    cdef public bint unsynced

    cpdef bint is_clean(self)
    cpdef bint idle(self)
    cpdef bint copy_in_ignores_sync(self)
    @cython.locals(entry=Expect)
    cpdef bint owes_only_synthetic(self)
    cpdef bint may_be_failed(self)
    cpdef bint hidden_query_first(self)
    cpdef bint synthetic_first(self)
    @cython.locals(head=Expect)
    cpdef bint lone_query(self)
    cpdef lent(self)
    cpdef sent_query(self)
    cpdef sent_extended(self)
    cpdef sent_execute(self)
    cpdef bint sent_sync(self)
    cpdef sent_copy_end(self)
    cpdef owe(self, Expect entry)
    cpdef client_cut(self, bint partial)
    cpdef replayable(self, object source)
    cpdef inject(self)
    cpdef bytes flush_synthetic(self)
    cpdef swallowed_ready(self, int status)
    cpdef bint ready(self, int status)
    cpdef bint ready_for_lone_query(self, int status)
    cpdef bint cleaned(self, int status)
    cpdef bint hidden_query_ready(self, int status)
    cpdef copy_started(self, int kind)
    cpdef copy_ended(self)
    cpdef session_ended(self)
    @cython.locals(head=Expect, flags=int, following=int)
    cpdef int complete(self, int code)
    cpdef list take_synthetic(self)
    cpdef Expect head(self)
    cpdef list failed_requests(self)
    cpdef Expect hidden_query_failed(self)
    cpdef list start_retry(self, Expect retry_sync)
    cpdef object take_retry(self, Expect retry_sync)
