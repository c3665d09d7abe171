# Cython declarations for rewrite.py (used only by the optional compiled build, see setup.py); the .py file runs
# unchanged without them. The client's frame walk calls `rewrite` and `query` as C calls (final: no vtable).
import cython

from pg_doorman cimport codes
from pg_doorman.ledger cimport ServerLedger
from pg_doorman.prepared cimport (
    ClientStatements,
    Expect,
    ServerStatements,
    Statement,
    name_after_first_cstring,
    rebuild_with_name,
)
from pg_doorman.server cimport ServerConnection


cdef Py_ssize_t NAME_LIMIT
cdef bytes _SQL_BIND
cdef bytes _SQL_EXECUTE
cdef bytes _SQL_CLOSE


@cython.final
cdef class StatementRewriter:
    cdef public bytes _settings
    cdef public object _token
    cdef public dict _unnamed_cache
    cdef public Expect _unnamed_parse_complete
    cdef public Expect next_execute
    cdef public Py_ssize_t owner
    cdef public dict sql_prepared
    cdef public ClientStatements statements

    @cython.locals(statements=ClientStatements, stmt=Statement, bound=Statement, described=Statement,
                   synthetic=Expect, expect=Expect, body=bytes, name=bytes, start=Py_ssize_t, end=Py_ssize_t,
                   ledger=ServerLedger)
    cpdef rewrite(self, int kind, bytes raw, ServerConnection server, list out, tuple token)

    @cython.locals(ledger=ServerLedger)
    cpdef _parse(self, Statement stmt, ServerConnection server, list out, Expect synthetic, object undo,
                 object probe)

    cpdef bint query(self, bytes message, ServerConnection server, list out)
    cpdef unexecuted(self)


cpdef ensure_prepared(Statement stmt, ServerConnection server, list out)
