# Cython declarations for client.py (used only by the optional compiled build, see setup.py); the .py file runs
# unchanged without them.
import cython

from pg_doorman cimport clock, codes, sessionhints
from pg_doorman.context cimport ClientContext
from pg_doorman.pool cimport Pool
from pg_doorman.prepared cimport Expect
from pg_doorman.ledger cimport ServerLedger
from pg_doorman.rewrite cimport StatementRewriter
from pg_doorman.server cimport Borrower, ServerConnection


cdef bytes _NAMED_KINDS
cdef bytes _COPY_FROM_CLIENT
cdef bytes _FRONTEND_TYPES
cdef bytes _SQL_PREPARE_FIRST
cdef bytes _MAYBE_BEGIN


cdef class ClientConnection(Borrower):
    cdef public bytes _carry
    cdef public object _deferred_begin
    cdef public list _queued
    cdef public Py_ssize_t _queued_bytes
    cdef public object _rx
    cdef public object _login_wait
    cdef public bint _probing
    cdef public object _rx_waiter
    cdef public Py_ssize_t _skip
    cdef public object application_name
    cdef public double connected_at
    cdef public ClientContext context
    cdef public object database
    cdef public bint is_admin
    cdef public tuple param_token
    cdef public object peer
    cdef public object pid
    cdef public Pool pool
    cdef public StatementRewriter rewriter
    cdef public object secret
    cdef public ServerConnection server
    cdef public bint tls
    cdef public object user
    cdef public double wait_deadline

    @cython.locals(n=Py_ssize_t, pos=Py_ssize_t, end=Py_ssize_t, length=Py_ssize_t, limit=Py_ssize_t, kind=int,
                   k=int, terminate_at=Py_ssize_t, kinds=bytes, server=ServerConnection, ledger=ServerLedger,
                   hints=int, now="long long")
    cpdef _forward(self, bytes data)

    cpdef _message_completed(self, ServerLedger ledger)

    @cython.locals(n=Py_ssize_t, pos=Py_ssize_t, end=Py_ssize_t, length=Py_ssize_t, limit=Py_ssize_t, kind=int,
                   seg=Py_ssize_t, binds=Py_ssize_t, replay_from=Py_ssize_t, replayable=bint,
                   terminate=bint, flushed=bint, described=bint, server=ServerConnection, out=list,
                   rewriter=StatementRewriter, ledger=ServerLedger, hints=int)
    cpdef _forward_tracked(self, bytes data)

    @cython.locals(server=ServerConnection, pool=Pool, check=bytes)
    cpdef _start_transaction(self, bytes data)

    @cython.locals(server=ServerConnection)
    cpdef release_server(self)

    cpdef _attach(self, ServerConnection server)
    cpdef attach_server(self, ServerConnection server)


cpdef bint is_lone_begin(bytes data)
