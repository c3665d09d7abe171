# Cython declarations for prepared.py (used only by the optional compiled build, see setup.py); the .py file
# runs unchanged without them.

from pg_doorman cimport codes, sessionhints


cdef class Expect


cdef class Statement:
    cdef public Expect bind_expect
    cdef public Expect describe_expect
    cdef public int hints
    cdef public bytes name
    cdef public bytes parse_message
    cdef public bytes query
    cdef public bytes scope
    cdef public bytes settings
    cdef public object sql_command
    cdef public bint stale
    cdef public bytes types


cdef class Expect:
    cdef public object client_name
    cdef public int code
    cdef public bytes data
    cdef public bint hide
    cdef public bytes parsed
    cdef public Statement stmt
    cdef public object undo


cdef class StatementRegistry:
    cdef public object _by_key
    cdef public dict _by_name
    cdef public dict _generations
    cdef public object _namer
    cdef public dict _settings_interned
    cdef public dict _settings_keys
    cdef public Py_ssize_t capacity
    cdef public Py_ssize_t evictions
    cdef public Py_ssize_t hits
    cdef public Py_ssize_t misses

    cpdef Statement get(self, bytes query, bytes types, bytes settings=*, bytes scope=*)


cdef class ServerStatements:
    cdef public object _names
    cdef public bint aborted
    cdef public Py_ssize_t capacity
    cdef public Py_ssize_t evictions
    cdef public dict opened
    cdef public dict sql
    cdef public Py_ssize_t sql_owner
    cdef public Py_ssize_t sql_pending


cdef class ClientStatements:
    cdef public dict named
    cdef public Statement unnamed

    cpdef Statement lookup(self, bytes name)


cpdef (Py_ssize_t, Py_ssize_t) name_after_first_cstring(bytes body)
cpdef bytes rebuild_with_name(bytes kind, bytes body, Py_ssize_t start, Py_ssize_t end, bytes name)
