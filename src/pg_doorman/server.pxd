# Cython declarations for server.py (used only by the optional compiled build, see setup.py). The .py file is
# the implementation and runs unchanged without them; here its attributes get C types, so the forwarding loops
# read and write them as struct fields instead of through the interpreter.
#
# cimports only go one way (client -> pool -> server): a cycle would let a compiled module's body run while
# another one it imports from is only half initialized. So a server knows its client and its pool by the base
# classes declared here (Borrower, Lender), which ClientConnection and Pool extend.
import cython

from pg_doorman cimport clock, codes
from pg_doorman.connection cimport Connection
from pg_doorman.ledger cimport ServerLedger
from pg_doorman.prepared cimport Expect, ServerStatements
from pg_doorman.stats cimport PoolStats


cdef bytes _TAG_FIRST

cdef class ServerConnection


cdef class Borrower(Connection):
    cdef public int state
    cdef public bint transaction_mode
    cdef public long long xact_count
    cdef public long long query_count
    cdef public long long error_count
    cdef public long long wait_started

    cpdef attach_server(self, ServerConnection server)
    cpdef release_server(self)


cdef class Lender:
    cdef public double now
    cdef public PoolStats stats

    cpdef checkin(self, ServerConnection server)


cdef class ServerConnection(Connection):
    cdef public object _capture_buf
    cdef public dict _captured
    cdef public bytes _carry
    cdef public object _cleanup
    cdef public object _cleanup_buf
    cdef public object _inject_error
    cdef public object _login
    cdef public object _login_buf
    cdef public object _login_waiter
    cdef public Py_ssize_t _skip
    cdef public object _synced_waiter
    cdef public long long bytes_received
    cdef public long long bytes_sent
    cdef public bint cancel_sent
    cdef public bint capture_due
    cdef public bint check_leftovers
    cdef public Borrower client
    cdef public double created_at
    cdef public double expires_at
    cdef public set extra_keys
    cdef public bint fatal_forwarded
    cdef public double idle_expires_after
    cdef public double last_used
    cdef public ServerLedger ledger
    cdef public bint need_close_all
    cdef public bint need_deallocate_all
    cdef public bint need_reset_all
    cdef public bint need_reset_query
    cdef public bint need_unlisten
    cdef public object param_token
    cdef public dict params
    cdef public object pid
    cdef public Lender pool
    cdef public PoolStats pool_stats
    cdef public list probe
    cdef public long long query_count
    cdef public long long query_start
    cdef public long long xact_count
    cdef public long long xact_start
    cdef public object secret
    cdef public int state
    cdef public ServerStatements statements
    cdef public bint tls
    cdef public dict to_close
    cdef public bint tracked
    cdef public bint used

    @cython.locals(n=Py_ssize_t, pos=Py_ssize_t, start=Py_ssize_t, end=Py_ssize_t, kind=int, release=bint,
                   watched=bytes, ledger=ServerLedger)
    cpdef _forward(self, bytes data)

    @cython.locals(n=Py_ssize_t, pos=Py_ssize_t, start=Py_ssize_t, end=Py_ssize_t, kind=int, release=bint,
                   watched=bytes, completes=bytes, code=int, flags=int, ledger=ServerLedger)
    cpdef _forward_tracked(self, bytes data)

    @cython.locals(ledger=ServerLedger, head=Expect, entry=Expect)
    @cython.locals(start="long long", now="long long", stats=PoolStats, client=Borrower)
    cdef void _count_ready(self, int status) noexcept
    cdef void _count_error(self, bytes body)
    cpdef Py_ssize_t _on_client_error(self, bytes data, Py_ssize_t pos, Py_ssize_t end, list out)
    cpdef attach(self, Borrower client, str sync_sql)
    @cython.locals(statements=ServerStatements)
    cpdef release(self)
    cpdef _on_command_complete(self, bytes data, int at)
    @cython.locals(to_close=dict)
    cpdef bint lacks(self, bytes name, list out)
    cpdef add_statement(self, bytes name)
    cpdef _on_parameter_status(self, bytes body)
    cpdef note_session_hints(self, int hints)
