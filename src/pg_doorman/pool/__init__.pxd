# Cython declarations for pool/__init__.py (used only by the optional compiled build, see setup.py); the .py
# file runs unchanged without them.
import cython

from pg_doorman cimport clock, codes
from pg_doorman.server cimport Borrower, Lender, ServerConnection


cdef class Pool(Lender):
    cdef public object settings
    cdef public object name
    cdef public bint transaction_mode
    cdef public bint round_robin
    cdef public list idle
    cdef public object waiters
    cdef public set servers
    cdef public Py_ssize_t opening
    cdef public bint retired
    cdef public bint paused
    cdef public object registry
    cdef public object default_params
    cdef public object scram_client_key
    cdef public dict spelling
    cdef public object _params_future
    cdef public dict _param_tokens
    cdef public object _last_connect_error
    cdef public object coordinator
    cdef public double waiting_since
    cdef public bint _params_pending
    cdef public double _params_since
    cdef public dict _stall_watch
    cdef public Py_ssize_t stats_checkouts
    cdef public Py_ssize_t stats_waits
    cdef public Py_ssize_t stats_wait_timeouts
    cdef public Py_ssize_t stats_servers_opened
    cdef public Py_ssize_t stats_connect_errors
    cdef public Py_ssize_t stats_server_statement_evictions
    cdef public long long stats_closed_bytes_sent
    cdef public long long stats_closed_bytes_received
    cdef public Py_ssize_t client_count
    cdef public bytes check_reply
    cdef public bytes check_reply_for
    cdef public Py_ssize_t stats_check_backend
    cdef public Py_ssize_t stats_check_cache

    @cython.locals(server=ServerConnection, idle=list)
    cpdef ServerConnection checkout_nowait(self)

    @cython.locals(client=Borrower)
    cpdef checkin(self, ServerConnection server)
