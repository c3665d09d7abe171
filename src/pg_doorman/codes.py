"""Small integer constants the hot path compares on every message: connection states and the codes of the
responses a server still owes.

Plain ints here. The compiled modules get the same values as C constants from codes.pxd: they write `codes.X`,
which Cython resolves at compile time (a bare module-level int would be a dict lookup, an int object and a
rich comparison each time). This file itself is never compiled.
"""

from __future__ import annotations

# ClientConnection.state
CLIENT_STARTUP = 0  # negotiating and logging in
CLIENT_IDLE = 1  # between transactions: holds no server
CLIENT_WAITING = 2  # a transaction waits for a server from the pool
CLIENT_ACTIVE = 3  # holds a server
CLIENT_CLOSED = 4

# ServerConnection.state
SERVER_CONNECTING = 0  # logging in
SERVER_IDLE = 1  # in its pool, lent to nobody
SERVER_ACTIVE = 2  # lent to a client
SERVER_CLEANUP = 3  # running the cleanup (ROLLBACK, RESET ALL, ...) before going back to the pool
SERVER_CLOSED = 4
SERVER_CAPTURE = 5  # lent; reading the session settings its client's SET left, before the server goes back

# What a server owes for a request (prepared.Expect.code), matched against its responses.
PARSE = 1  # '1' ParseComplete
BIND = 2  # '2' BindComplete
DESCRIBE = 3  # 'T' RowDescription or 'n' NoData (after 't' for a statement)
EXECUTE = 4  # 'C' CommandComplete, 'I' EmptyQueryResponse, 's' PortalSuspended
CLOSE = 5  # '3' CloseComplete
SYNC = 6  # 'Z' ReadyForQuery; stops the skip-after-error
QUERY = 7  # 'Z' ReadyForQuery of a simple Query / FunctionCall; errors inside do not complete it
SYNTHETIC = 8  # produced by the pooler: `data` is written when the entry reaches the head of the queue
HIDDEN_QUERY = 9  # a simple Query the pooler inserted: its whole reply, up to ReadyForQuery, is dropped

# ReadyForQuery transaction status bytes.
TX_IDLE = 73  # 'I'
TX_IN_BLOCK = 84  # 'T'
TX_FAILED = 69  # 'E'

# sessionhints.session_hints(): what a statement's text suggests it does to the session (bits).
HINT_SET_CONFIG = 1  # set_config(): settings change without a SET tag
HINT_ADVISORY = 2  # advisory lock functions: a session-level lock may outlive the transaction
HINT_TEMP = 4  # "temp": a temporary object (CREATE TEMP TABLE ... AS reports only "SELECT n") may outlive it

# What ServerLedger.complete() tells the server's forwarding loop about one response (bits).
HIDE = 1  # cut this message from the stream (the answer to a request the pooler inserted)
SYNTHETIC_NEXT = 2  # answers the pooler owes are due right after this message (ServerLedger.take_synthetic)
