# codes.py as C constants for the compiled modules, which cimport this file (codes.py is never compiled).
# The values must be those of codes.py: tests/unit/test_build.py compares the two files.

cdef enum:
    CLIENT_STARTUP = 0
    CLIENT_IDLE = 1
    CLIENT_WAITING = 2
    CLIENT_ACTIVE = 3
    CLIENT_CLOSED = 4

    SERVER_CONNECTING = 0
    SERVER_IDLE = 1
    SERVER_ACTIVE = 2
    SERVER_CLEANUP = 3
    SERVER_CLOSED = 4
    SERVER_CAPTURE = 5

    PARSE = 1
    BIND = 2
    DESCRIBE = 3
    EXECUTE = 4
    CLOSE = 5
    SYNC = 6
    QUERY = 7
    SYNTHETIC = 8
    HIDDEN_QUERY = 9

    TX_IDLE = 73
    TX_IN_BLOCK = 84
    TX_FAILED = 69

    HINT_SET_CONFIG = 1
    HINT_ADVISORY = 2
    HINT_TEMP = 4

    HIDE = 1
    SYNTHETIC_NEXT = 2
