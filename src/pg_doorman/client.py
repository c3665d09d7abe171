"""One client connection: startup and authentication, then forwarding to a server lent by its pool.

Login runs as a coroutine (it is rare and has to wait for passwords and for the pool's first server). After it the
connection switches to plain callbacks: `data_received` walks message headers, takes a server from the pool when
a transaction starts, and writes the client's bytes through unchanged, except that in transaction mode with
prepared statements the messages naming statements (and SQL PREPARE/EXECUTE/DEALLOCATE) go through the client's
`StatementRewriter` (rewrite.py). The server side (server.py) decides when the transaction is over and calls
`release_server`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from functools import partial
from time import monotonic
from typing import TYPE_CHECKING

from pg_doorman import clock, codes, memory, sessionhints, sockets
from pg_doorman.admin import MAX_CONSOLE_MESSAGE, Console, is_admin_database, login_decision
from pg_doorman.admission import OverLimitClient
from pg_doorman.auth import external
from pg_doorman.auth.client_login import ClientLogin, LoginFailed
from pg_doorman.auth.external import PasswordCheck
from pg_doorman.auth.hba import client_address
from pg_doorman.auth.policy import ClientOrigin, Decision, Method, decide
from pg_doorman.ledger import ServerLedger
from pg_doorman.prepared import Expect
from pg_doorman.protocol import messages
from pg_doorman.protocol.errors import (
    ADMIN_SHUTDOWN,
    CONNECTION_FAILURE,
    INTERNAL_ERROR,
    INVALID_AUTHORIZATION,
    INVALID_CATALOG_NAME,
    OUT_OF_MEMORY,
    POOLER_SHUTDOWN,
    QUERY_CANCELED,
    TOO_MANY_CONNECTIONS,
    PoolerError,
    ProtocolViolation,
)
from pg_doorman.protocol.framing import MessageBuffer, type_table
from pg_doorman.protocol.startup import (
    CancelRequest,
    GSSENCRequest,
    SSLRequest,
    StartupMessage,
    parse_first_packet,
)
from pg_doorman.rewrite import StatementRewriter
from pg_doorman.server import SYNCABLE_REPORTED, Borrower, ServerConnection
from pg_doorman.tasks import spawn
from pg_doorman.tls import (
    ALPN_POSTGRESQL,
    PLAIN_REFUSED,
    TLS_RECORD_HANDSHAKE,
    ClientTlsPolicy,
    certificate_common_name,
    certificate_user_problem,
)
from pg_doorman.tls import upgrade as tls_upgrade

if TYPE_CHECKING:
    from pg_doorman.context import ClientContext
    from pg_doorman.pool import Pool

log = logging.getLogger("pg_doorman.client")

# Bytes a client may have buffered before its login has taken them: a few startup-phase messages (each capped
# far below this) and the first queries of a client that pipelines them behind its login. Beyond it reading
# pauses until the login coroutine wants more.
_MAX_BUFFERED_AT_LOGIN = 64 * 1024


# Client message types the forwarder must look at: Query, Sync, FunctionCall, Terminate and the extended-protocol
# messages that open a pipeline (after them the server cannot be released before the next Sync).
CLIENT_KIND = type_table(
    {
        "PBDCH": 1,  # opens/extends an unsynced pipeline
        "QF": 2,  # Query, FunctionCall: one ReadyForQuery each
        "S": 3,  # Sync
        "X": 4,  # Terminate
        "E": 5,  # Execute: may start a COPY, whose Syncs PostgreSQL then ignores
        "cf": 6,  # CopyDone / CopyFail end a COPY IN
    }
)

# Startup parameters that are not session settings a pooler may replay with SET.
NOT_SETTABLE = frozenset(
    {
        "user",
        "database",
        "replication",
        "options",
        "is_superuser",
        "session_authorization",
        "server_version",
        "server_version_num",
        "server_encoding",
        "integer_datetimes",
        "in_hot_standby",
        "session_user",
        "current_user",
        "lc_collate",
        "lc_ctype",
        "transaction_isolation",
        "transaction_read_only",
        "transaction_deferrable",
        "scram_iterations",
    }
)

# Reported parameters whose value PostgreSQL respells ("euc-jp" -> "EUC_JP", "iso" -> "ISO, MDY", "utc" -> "UTC",
# "true" -> "on"). application_name is reported as sent (only cut to 63 bytes), and often unique per client: it
# would cost every such login a server round trip and the pool a cache entry.
RESPELLED = frozenset(SYNCABLE_REPORTED - {"application_name"})
MAX_SPELLINGS = 4096  # pool.spelling entries; past that a new spelling is asked of a server at every login

_NAMED_KINDS = type_table({"PBDC": 1})
_MAX_QUEUED_WHILE_WAITING = 256 * 1024
# First bytes of a Query text that may be a lone BEGIN / START TRANSACTION ("b", "s", white space): a cheap
# filter before is_lone_begin; SELECT passes it and is turned away there by its third letter.
_MAYBE_BEGIN = type_table({"bBsS \t\r\n": 1})
_BEGIN_REPLY = messages.command_complete("BEGIN") + messages.READY_IN_TX
_LONE_BEGIN = re.compile(
    rb"\s*(?:begin(?:\s+(?:work|transaction))?|start\s+transaction)"
    rb"(?:\s+(?:isolation\s+level\s+(?:serializable|repeatable\s+read|read\s+committed|read\s+uncommitted)"
    rb"|read\s+only|read\s+write|not\s+deferrable|deferrable)(?:\s*,)?)*"
    rb"\s*;?\s*\x00",
    re.IGNORECASE,
)


_COPY_FROM_CLIENT = type_table({"dcf": 1})
# Every message type a frontend may send after login (PostgreSQL's SocketBackend); any other is a protocol
# violation the pooler refuses itself rather than let it cost a server (PostgreSQL would close it).
_FRONTEND_TYPES = type_table({"BCdcfDEHFPQSX": 1})


def _drop_copy_messages(data: bytes) -> bytes:
    """``data`` without its leading complete CopyData/CopyDone/CopyFail messages."""
    pos = 0
    while len(data) - pos >= 5 and _COPY_FROM_CLIENT[data[pos]]:
        end = pos + 1 + int.from_bytes(data[pos + 1 : pos + 5], "big")
        if end > len(data):
            break
        pos = end
    return data[pos:]


def is_lone_begin(data: bytes) -> bool:
    """True for one Query message that only opens a transaction (BEGIN / START TRANSACTION with options)."""
    if len(data) > 200 or len(data) < 11 or data[7] in b"lL":  # "sel(ect)" is the common miss
        return False
    head = data[5:16].lstrip().lower()
    if not (head.startswith(b"begin") or head.startswith(b"start")):
        return False
    if int.from_bytes(data[1:5], "big") != len(data) - 1:
        return False
    return _LONE_BEGIN.fullmatch(data, 5) is not None


_EXPECT_EXECUTE = Expect(codes.EXECUTE)
_EXPECT_SYNC = Expect(codes.SYNC)
_EXPECT_QUERY = Expect(codes.QUERY)
_EXPECT_DESCRIBE = Expect(codes.DESCRIBE)
_EXPECT_CLOSE = Expect(codes.CLOSE)


_SQL_PREPARE_FIRST = type_table({"pPeEdD": 1})


def replayable_reply(raw: bytes) -> bytes | None:
    """The reply to the last query in ``raw`` (what a server sent since it was lent: replies the pooler hid come
    first), if it can answer the same query again: whole messages, no ErrorResponse, ending in ReadyForQuery 'I'.
    None otherwise."""
    pos = 0
    start = 0  # where the reply to the query after the latest ReadyForQuery begins
    last = 0
    errors_since = False
    n = len(raw)
    while pos < n:
        if n - pos < 5:
            return None
        kind = raw[pos]
        end = pos + 1 + int.from_bytes(raw[pos + 1 : pos + 5], "big")
        if end > n or end < pos + 5:
            return None
        if kind == 0x45:  # 'E'
            errors_since = True
        if kind == 0x5A and pos + 6 == end:  # 'Z'
            if end == n:
                if errors_since or raw[pos + 5] != 0x49:  # 'I'
                    return None
                last = start
            start = end
            errors_since = False
        pos = end
    if start != n or not raw:
        return None
    return raw[last:]


def pool_removed() -> PoolerError:
    """What a client of a pool that a configuration reload removed gets."""
    return PoolerError(CONNECTION_FAILURE, "this pool was removed by a configuration reload")


ADMIN_DATABASES = frozenset({"pgdoorman", "pgbouncer"})


class ClientConnection(Borrower):
    __slots__ = (
        "_carry",
        "_deferred_begin",
        "_login_wait",
        "_probing",
        "_queued",
        "_queued_bytes",
        "_rx",
        "_rx_waiter",
        "_skip",
        "application_name",
        "connected_at",
        "context",
        "database",
        "is_admin",
        "param_token",
        "peer",
        "pid",
        "pool",
        "rewriter",
        "secret",
        "server",
        "tls",
        "user",
        "wait_deadline",
    )

    def __init__(self, context: ClientContext) -> None:
        self.context = context
        self.set_transport(None)
        self.state = codes.CLIENT_STARTUP
        self.pool: Pool | None = None
        self.server: ServerConnection | None = None
        # Transaction mode with prepared statements: maps the client's statements (set by track_statements).
        self.rewriter: StatementRewriter | None = None
        self.transaction_mode = True
        # The session parameters the client set (startup packet, options, SET reported back), as the pool's shared
        # interned tuple: clients with the same settings hold one object (see `params`).
        self.param_token: tuple[tuple[str, str], ...] = ()
        self.pid = 0
        self.secret = 0
        self.user = ""
        self.database = ""
        self.application_name = ""
        self.is_admin = False
        self.peer = ""
        self.tls = False  # the connection is encrypted (set once its TLS handshake completes; pg_hba's hostssl)
        self._rx = MessageBuffer(context.max_message_size)
        self._rx_waiter: asyncio.Future[None] | None = None
        # What the login coroutine waits for besides the client's bytes: a server from the pool, or the end of its
        # parameter sync (see _lend_at_login); on the admin console, room in the socket (_console_room). Failed when
        # the connection ends.
        self._login_wait: asyncio.Future[None] | None = None
        self._queued: list[bytes] = []
        self._skip = 0
        self._carry = b""
        self._deferred_begin: bytes | None = None
        self._queued_bytes = 0
        self.wait_deadline = 0.0  # monotonic time when waiting for a server ends in 53300; 0: no limit
        # Statistics (views.ClientView): counted by the servers it holds, see ServerConnection._count_ready.
        self.connected_at = monotonic()
        self.xact_count = 0
        self.query_count = 0
        self.error_count = 0
        self.wait_started = 0
        self._probing = False  # its next transaction is the pool's first pooler_check_query

    # ------------------------------------------------------------- asyncio API

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "unix"
        if not self.context.admit(self):
            # Over max_connections: a small protocol answers it and this object is dropped (see admission.py).
            refuser = OverLimitClient(self.context)
            transport.set_protocol(refuser)
            refuser.connection_made(transport)
            return
        self.set_transport(transport)  # type: ignore[arg-type]
        sockets.configure(transport.get_extra_info("socket"))
        spawn(self._login())

    def data_received(self, data: bytes) -> None:
        try:
            state = self.state
            if state == codes.CLIENT_ACTIVE:
                self._forward(data)
            elif state == codes.CLIENT_IDLE:
                self._start_transaction(data)
            elif state == codes.CLIENT_WAITING:
                self._queued.append(data)
                self._queued_bytes += len(data)
                if self._queued_bytes > _MAX_QUEUED_WHILE_WAITING:
                    self.pause_reading()  # a client that keeps sending while it waits: hold it back
            elif state == codes.CLIENT_STARTUP:
                rx = self._rx
                rx.feed(data)
                if len(rx) > _MAX_BUFFERED_AT_LOGIN:
                    self.pause_reading()  # the login coroutine resumes it when it needs more (_wait_rx)
                waiter = self._rx_waiter
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
            elif state == codes.CLIENT_CLOSED:
                self.discard_input(len(data))  # closing after an error (fail): read and dropped, see connection.py
        except Exception:
            # A bug met on this client's bytes: it loses its connection (with an ErrorResponse, and its server is
            # cleaned or closed as after any disconnect); everyone else goes on.
            log.exception("client %s: internal error", self.peer)
            self.fail(PoolerError(INTERNAL_ERROR, "internal error in pg_doorman (see its log)"))

    def eof_received(self) -> bool | None:
        # Like PostgreSQL, EOF from the client ends the session. Abort rather than close: a close would wait to
        # flush replies to a peer that may never read them, holding this client's server (and pool slot).
        # A TLS transport that is closing already reports the peer's close_notify from inside its close (uvloop
        # fails if it is aborted there); it finishes by itself.
        transport = self.transport
        if transport is not None and transport.is_closing():
            return None
        self.abort_transport()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.forget_socket()
        waiter = self._rx_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionResetError("client closed the connection"))
        self._teardown()

    def pause_writing(self) -> None:
        server = self.server
        if server is not None:
            server.pause_reading()

    def resume_writing(self) -> None:
        server = self.server
        if server is not None:
            server.resume_reading()
        elif self.is_admin:  # an admin console writing a large reply waits for this (_console_room)
            waiter = self._login_wait
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    # ---------------------------------------------------------------- helpers

    def fail(self, err: PoolerError) -> None:
        """Send a FATAL ErrorResponse and close the connection in the way that lets the client read it even while
        it is still sending (`Connection.close_after_error`); what the client held goes back at once. A client
        between transactions was sent a ReadyForQuery last: its error waits for its next message (or a moment)."""
        error = messages.error_response(err.sqlstate, err.message, severity="FATAL", detail=err.detail)
        self.close_after_error(error, self.state == codes.CLIENT_IDLE)
        self._teardown()

    # -------------------------------------------------------------- forwarding

    def _start_transaction(self, data: bytes) -> None:
        """First bytes of a new transaction (or of the session): get a server, then forward."""
        pool = self.pool
        assert pool is not None
        if data[0] == 0x58:  # Terminate between transactions: no server needed
            self.close()
            return
        if _COPY_FROM_CLIENT[data[0]]:
            # CopyData/CopyDone/CopyFail after the COPY already ended (e.g. with an error): PostgreSQL ignores
            # them, so no server is needed for them.
            data = _drop_copy_messages(data)
            if not data:
                return
        if self.context.shutting_down and self._deferred_begin is None:  # an answered BEGIN is a transaction
            self.fail(PoolerError(POOLER_SHUTDOWN, "pooler is shut down now"))
            return
        if pool.retired:
            # A reload replaced this client's pool: a retired pool opens no servers, so move to its successor.
            successor = self.context.registry.successor(pool)
            if successor is None:
                self.fail(pool_removed())
                return
            self.move_to_pool(successor)
            pool = successor
        if (
            data[0] == 0x51
            and self.transaction_mode
            and self._deferred_begin is None
            and _MAYBE_BEGIN[data[5] if len(data) > 6 else 0]
            and is_lone_begin(data)
        ):
            # Answer BEGIN now and send it with the next statement: a client that opens a transaction and then
            # thinks does not hold a server meanwhile.
            self._deferred_begin = data
            self.write(_BEGIN_REPLY)
            return
        check = self.context.check_query
        if len(data) == len(check) and data == check and self._deferred_begin is None and self.transaction_mode:
            # pooler_check_query: answered with the reply PostgreSQL gave the first such probe of this pool.
            reply = pool.check_reply
            if reply is not None and pool.check_reply_for == data:
                pool.stats_check_cache += 1
                self.write(reply)
                return
            self._probing = True  # this one goes to a server, which keeps its reply (see _keep_check_reply)
        server = pool.checkout_nowait()
        if server is not None:
            self._attach(server)
            self._forward(data)
            return
        self.state = codes.CLIENT_WAITING
        self._queued.append(data)
        self._queued_bytes = len(data)
        timeout = pool.settings.query_wait_timeout
        # No timer per wait: the pool checks its oldest waiter's deadline (Pool.expire_waiters, every 100 ms).
        self.wait_deadline = monotonic() + timeout if timeout > 0 else 0.0
        self.wait_started = clock.now_us()
        pool.enqueue(self)

    def attach_server(self, server: ServerConnection) -> None:
        """Called by the pool when a server becomes available for this waiting client."""
        self._attach(server)
        waiter = self._login_wait
        if waiter is not None:  # lent at login (_lend_at_login): no queued bytes yet
            if not waiter.done():
                waiter.set_result(None)
            return
        queued = self._queued
        self._queued = []
        self.resume_reading()
        for data in queued:
            if self.state != codes.CLIENT_ACTIVE:
                # The queued bytes finished a transaction and released the server already.
                self._start_transaction(data)
            else:
                self._forward(data)

    def _attach(self, server: ServerConnection) -> None:
        self.server = server
        self.state = codes.CLIENT_ACTIVE
        if self._probing:
            self._probing = False
            server.probe = []
        sync_sql = None
        if server.param_token is not self.param_token and server.pool.settings.sync_server_parameters:
            sync_sql = self._parameter_sync_sql(server)
        server.attach(self, sync_sql)
        if self._deferred_begin is not None:
            server.inject_message(self._deferred_begin)
            self._deferred_begin = None

    def move_to_pool(self, pool: Pool) -> None:
        """A reload replaced this client's pool: go on with its successor (a retired pool opens no servers)."""
        if self.pool is not None:
            self.pool.client_count -= 1
        pool.client_count += 1
        self.pool = pool
        self.param_token = pool.intern_params(self.params)

    @property
    def params(self) -> dict[str, str]:
        """The client's session parameters (a new dict; they are kept as `param_token`)."""
        return dict(self.param_token)

    def _parameter_sync_sql(self, server: ServerConnection) -> str | None:
        """The statement that makes the server's tracked parameters equal to this client's.

        Values are applied with set_config(), which reads them as a startup packet or postgresql.conf would: a
        list setting such as ``search_path=a,b`` stays two schemas (``SET search_path TO 'a,b'`` would name one
        schema "a,b").
        """
        mine = self.param_token
        theirs = server.params
        resets = []
        sets = []
        for name, value in mine:
            if theirs.get(name) != value:
                sets.append(
                    f"pg_catalog.set_config({messages.string_literal(name)}, {messages.string_literal(value)}, false)"
                )
                if name not in SYNCABLE_REPORTED:
                    # PostgreSQL reports the others with ParameterStatus when they change, in its own spelling;
                    # when it sends none, the value it had is the client's in another spelling ("iso" for
                    # "ISO, MDY"), and stays what the server knows.
                    theirs[name] = value
        extras = {name for name, _ in mine if name not in SYNCABLE_REPORTED}
        for name in server.extra_keys - extras:
            resets.append(f"RESET {messages.quote_ident(name)}")
            theirs.pop(name, None)
        server.extra_keys = extras
        server.param_token = self.param_token
        if sets:
            resets.append("SELECT " + ", ".join(sets))
        return ";".join(resets) or None

    def _forward(self, data: bytes) -> None:
        """Walk client message headers (reporting what the server will owe to its ledger) and pass the bytes on."""
        server = self.server
        assert server is not None
        server.bytes_sent += len(data)
        if not server.query_start:
            # The first message since the last ReadyForQuery: a query starts (and a transaction, if none is open).
            now = clock.now_us()
            server.query_start = now
            if not server.xact_start:
                server.xact_start = now
        if self.rewriter is not None:
            self._forward_tracked(data)
            return
        ledger = server.ledger
        if self._carry:
            data = self._carry + data
            self._carry = b""
        n = len(data)
        pos = self._skip
        if pos >= n:
            self._skip = pos - n
            server.write(data)
            if not self._skip:
                self._message_completed(ledger)
            return
        self._skip = 0
        kinds = CLIENT_KIND
        limit = self.context.max_message_size
        terminate_at = -1
        while True:
            if n - pos < 5:
                if pos < n:
                    # A header split across reads: keep it for the next walk.
                    self._carry = data[pos:]
                    data = data[:pos]
                break
            kind = data[pos]
            length = data[pos + 1]  # big-endian int32; shifted as a wide int (compiled: no 32-bit overflow)
            length = (length << 24) | (data[pos + 2] << 16) | (data[pos + 3] << 8) | data[pos + 4]
            if length < 4 or length > limit or not _FRONTEND_TYPES[kind]:
                self._reject_message(kind, length)
                return
            k = kinds[kind]
            if k:
                if k == 1:
                    ledger.sent_extended()
                    if kind == 80:  # Parse: its text may call set_config() or advisory lock functions
                        hints = sessionhints.session_hints(data, pos + 5, pos + 1 + length)
                        if hints:
                            server.note_session_hints(hints)
                elif k == 2:
                    ledger.sent_query()
                    if kind == 81:
                        hints = sessionhints.session_hints(data, pos + 5, pos + 1 + length)
                        if hints:
                            server.note_session_hints(hints)
                elif k == 3:
                    ledger.sent_sync()
                elif k == 5:
                    ledger.sent_execute()
                elif k == 6:
                    ledger.sent_copy_end()
                else:
                    terminate_at = pos
                    break
            end = pos + 1 + length
            if end > n:
                self._skip = end - n
                break
            pos = end
        if terminate_at >= 0:
            if terminate_at:
                server.write(data[:terminate_at])
            self.close()
            return
        ledger.client_cut(self._skip > 0)
        if data:
            server.write(data)

    def _message_completed(self, ledger: ServerLedger) -> None:
        """The rest of a message the server had only in part has been sent. If that was all the server waited
        for (a message that owes no reply, e.g. CopyData after the COPY ended), the transaction may be over."""
        was_partial = ledger.client_partial
        ledger.client_cut(False)
        if was_partial and self.transaction_mode and ledger.idle():
            self.release_server()

    def _forward_tracked(self, data: bytes) -> None:
        """Transaction mode with prepared statements: rewrite statement names and queue expected responses.

        Messages that name a statement (Parse, Bind, Describe, Close) are rewritten whole, so a split one waits in
        ``_carry`` until complete; every other message passes through as it came, split or not.
        """
        server = self.server
        assert server is not None
        ledger = server.ledger
        if self._carry:
            data = self._carry + data
            self._carry = b""
        n = len(data)
        pos = self._skip
        if pos >= n:
            self._skip = pos - n
            server.write(data)
            if not self._skip:
                self._message_completed(ledger)
            return
        self._skip = 0
        limit = self.context.max_message_size
        rewriter = self.rewriter
        assert rewriter is not None
        out: list[bytes] = []
        seg = 0
        terminate = flushed = described = False
        binds = 0
        replay_from = -1
        while True:
            if n - pos < 5:
                if pos < n:
                    self._carry = data[pos:]
                    n = pos
                break
            kind = data[pos]
            length = data[pos + 1]  # big-endian int32; shifted as a wide int (compiled: no 32-bit overflow)
            length = (length << 24) | (data[pos + 2] << 16) | (data[pos + 3] << 8) | data[pos + 4]
            if length < 4 or length > limit or not _FRONTEND_TYPES[kind]:
                self._reject_message(kind, length)
                return
            end = pos + 1 + length
            if ledger.skipping and kind != 83:
                # PostgreSQL skips everything up to the next Sync after an error: pass through, change nothing.
                pass
            elif _NAMED_KINDS[kind]:
                ledger.sent_extended()
                if kind == 68:
                    described = True  # the client learns the row shape in this batch (replay is safe)
                if kind != 80 and kind != 66 and n - pos > 5 and data[pos + 5] == 80:
                    # Describe/Close of a portal: portal names are the client's own on the server too.
                    ledger.owe(_EXPECT_DESCRIBE if kind == 68 else _EXPECT_CLOSE)
                else:
                    if end > n:
                        self._carry = data[pos:]
                        n = pos
                        break
                    if seg < pos:
                        out.append(data[seg:pos])
                    if (
                        kind == 66
                        and replay_from < 0
                        and ledger.tx_status == codes.TX_IDLE
                        and ledger.owes_only_synthetic()
                    ):
                        replay_from = pos  # a batch that starts with this Bind may be replayed (server.py)
                        described = False
                        binds = 0
                    if kind == 66:
                        binds += 1
                    try:
                        rewriter.rewrite(kind, data[pos:end], server, out, self.param_token)
                    except (ValueError, IndexError):
                        # A statement or portal name without its NUL: nothing the pooler can rename. PostgreSQL
                        # would say the same (08P01); nothing of this read reaches the server.
                        log.info("client %s sent a malformed %r message", self.peer, chr(kind))
                        self.fail(ProtocolViolation(f"invalid message format ({chr(kind)!r} message)"))
                        return
                    seg = end
            elif kind == 69:  # 'E' Execute
                if rewriter.next_execute is None:
                    ledger.owe(_EXPECT_EXECUTE)
                else:  # the Execute of a Bind of SQL PREPARE/DEALLOCATE: undone if it fails (rewrite.py)
                    ledger.owe(rewriter.next_execute)
                    rewriter.next_execute = None
                ledger.sent_execute()
            elif kind == 83:  # 'S' Sync
                # Replayable: it began with a Bind outside a transaction and it describes its result, so a client
                # that caches row descriptions (asyncpg, pgJDBC) is never handed rows of a shape it did not see.
                # Only with a single Bind: then the failed one is the batch's first request and nothing of the
                # batch reached the client before the error.
                replayable = replay_from >= 0 and described and binds == 1
                ledger.replayable(data[replay_from : pos + 5] if replayable else None)
                replay_from = -1
                if rewriter.next_execute is not None:
                    rewriter.unexecuted()
                if ledger.sent_sync():
                    ledger.owe(_EXPECT_SYNC)
            elif kind == 99 or kind == 102:  # 'c' CopyDone, 'f' CopyFail
                ledger.sent_copy_end()
            elif kind == 81 or kind == 70:  # 'Q' Query, 'F' FunctionCall
                replay_from = -1
                if kind == 81:
                    rewriter.statements.unnamed = None  # PostgreSQL drops the unnamed statement at every Query
                if kind == 81 and length < 65536 and (end > n or _SQL_PREPARE_FIRST[data[pos + 5]]):
                    # Maybe PREPARE/EXECUTE/DEALLOCATE, which the pooler tracks per client: needs the whole text
                    # (a short Query split across reads waits for its end).
                    if end > n:
                        self._carry = data[pos:]
                        n = pos
                        break
                    if seg < pos:
                        out.append(data[seg:pos])
                        seg = pos
                    if rewriter.query(data[pos:end], server, out):
                        ledger.sent_query()
                        seg = end
                        pos = end
                        continue
                ledger.owe(_EXPECT_QUERY)
                ledger.sent_query()
                if kind == 81:
                    hints = sessionhints.session_hints(data, pos + 5, end)
                    if hints:
                        server.note_session_hints(hints)
            elif kind == 72:  # 'H' Flush
                ledger.sent_extended()
                flushed = True
                replay_from = -1
            elif kind == 88:  # 'X' Terminate
                n = pos
                terminate = True
                break
            if end > n:
                self._skip = end - n
                break
            pos = end
        if seg < n:
            out.append(data[seg:n] if seg or n != len(data) else data)
        ledger.client_cut(self._skip > 0)
        if out:
            server.write(out[0] if len(out) == 1 else b"".join(out))
        if flushed and ledger.expect and ledger.owes_only_synthetic():
            # Flushed, and the server owes nothing these answers could ride along with: answer now.
            self.write(ledger.flush_synthetic())
        if terminate:
            self.close()

    def track_statements(self) -> None:
        """Transaction mode with prepared statements: map this client's statements to the pool's (rewrite.py)."""
        self.rewriter = StatementRewriter()

    def forget_statements(self) -> None:
        """DEALLOCATE ALL / DISCARD ALL ran for this client."""
        if self.rewriter is not None:
            self.rewriter.forget()

    def unmask_statement_names(self, message: bytes, entry: Expect | None = None) -> bytes:
        """An ErrorResponse/NoticeResponse naming pool-wide statements, with the client's own names instead."""
        if self.rewriter is None:
            return message
        return self.rewriter.unmask(message, entry)

    def replay(self, source: bytes) -> None:
        """Send a batch again (server.py: after a transparent re-prepare)."""
        self._forward_tracked(source)

    def _reject_message(self, kind: int, length: int) -> None:
        if not _FRONTEND_TYPES[kind]:
            self.fail(ProtocolViolation(f"invalid frontend message type {kind}"))
            return
        if length >= 1 << 31:
            length -= 1 << 32  # PostgreSQL reads the length as a signed int32: this one is negative
        if length < 4:
            self.fail(ProtocolViolation(f"invalid message length {length} for message type {kind:#04x}"))
        else:
            self.fail(
                PoolerError(
                    OUT_OF_MEMORY,
                    f"message of {length} bytes exceeds the maximum allowed size of {self.context.max_message_size}",
                )
            )

    def release_server(self) -> None:
        """The transaction is over (server saw ReadyForQuery 'I'): give the server back to the pool."""
        server = self.server
        if server is None:
            return
        self.server = None
        self.state = codes.CLIENT_IDLE
        if server.probe is not None:
            self._keep_check_reply(server)
        server.release()
        if self.context.shutting_down:
            self.fail_shutdown()

    def _keep_check_reply(self, server: ServerConnection) -> None:
        """The first pooler_check_query of this pool got its answer: keep it for the next probes, if it is one
        that can be replayed (complete, no error, idle afterwards)."""
        chunks = server.probe
        server.probe = None
        raw = b"".join(chunks) if chunks is not None else b""
        pool = self.pool
        assert pool is not None
        pool.stats_check_backend += 1
        reply = replayable_reply(raw)
        if reply is not None:
            pool.check_reply = reply
            pool.check_reply_for = self.context.check_query

    def fail_shutdown(self) -> None:
        self.fail(PoolerError(POOLER_SHUTDOWN, "pooler is shut down now"))

    def server_lost(self, server: ServerConnection) -> None:
        """The server this client holds went away: the client cannot continue its session. If PostgreSQL said why
        (its FATAL, e.g. 57P01 after pg_terminate_backend, went to the client whole), that stays the only error,
        as on a direct connection: the client is closed after it in the orderly way, with nothing added."""
        if self.server is server:
            self.server = None
            if server.fatal_forwarded:
                self.close_after_error(b"")
                self._teardown()
                return
            self.fail(
                PoolerError(
                    CONNECTION_FAILURE,
                    "server closed the connection unexpectedly",
                    detail="The PostgreSQL backend serving this session terminated.",
                )
            )

    def adopt_session_settings(self, settings: dict[str, str]) -> None:
        """The session settings its server had when the client's transaction ended (server.py,
        `_capture_settings`): those PostgreSQL does not report become the client's own, replayed on whichever
        server it gets next, as if it had sent them at startup; reported ones are already tracked."""
        pool = self.pool
        assert pool is not None
        params = {name: value for name, value in self.param_token if name in SYNCABLE_REPORTED}
        for name, value in settings.items():
            if name not in SYNCABLE_REPORTED and name not in NOT_SETTABLE:
                params[name] = value
        self.param_token = pool.intern_params(params)

    def on_parameter_status(self, name: str, value: str) -> None:
        pool = self.pool
        assert pool is not None  # only a logged-in client, which has its pool, is lent a server
        params = self.params
        params[name] = value
        self.param_token = pool.intern_params(params)

    def cancel_waiting(self) -> bool:
        """A CancelRequest for a simple query that still waits for a server: cancel it before it runs.

        The client gets what PostgreSQL would send for a query canceled at its start (57014, then
        ReadyForQuery). Extended-protocol batches keep waiting: their earlier replies would have to be invented.
        """
        if self.state != codes.CLIENT_WAITING or self._deferred_begin is not None:
            return False
        data = b"".join(self._queued)
        if len(data) < 6 or data[0] != 0x51 or int.from_bytes(data[1:5], "big") != len(data) - 1:
            return False
        if self.pool is not None:
            self.pool.remove_waiter(self)
        self._queued = []
        self.state = codes.CLIENT_IDLE
        self.write(
            messages.error_response(QUERY_CANCELED, "canceling statement due to user request", severity="ERROR")
            + messages.READY_IDLE
        )
        self.resume_reading()
        return True

    def checkout_failed(self, err: PoolerError) -> None:
        self.fail(err)

    def wait_timed_out(self) -> None:
        """Called by the pool (already removed from its waiters) when query_wait_timeout has passed."""
        if self.state != codes.CLIENT_WAITING:
            return
        pool = self.pool
        if pool is not None:
            pool.stats_wait_timeouts += 1
        log.warning(
            "client %s (%s@%s) disconnected: no server connection within query_wait_timeout",
            self.peer,
            self.user,
            self.database,
        )
        self.fail(
            PoolerError(
                TOO_MANY_CONNECTIONS,
                "could not get a server connection from the pool within query_wait_timeout",
                detail=f"pool {pool.name if pool else '?'}: all {pool.settings.pool_size if pool else 0} "
                "server connections are busy",
            )
        )

    def close(self) -> None:
        self.close_transport()
        self._teardown()

    def _teardown(self) -> None:
        if self.state == codes.CLIENT_CLOSED:
            return
        previous = self.state
        self.state = codes.CLIENT_CLOSED
        login_wait = self._login_wait
        if login_wait is not None and not login_wait.done():
            login_wait.set_exception(ConnectionResetError("the client connection ended during login"))
        if self.pool is not None:
            self.pool.client_count -= 1
            if previous == codes.CLIENT_WAITING:
                self.pool.remove_waiter(self)
        server = self.server
        if server is not None:
            self.server = None
            server.release()
        self.context.client_closed(self)

    # ------------------------------------------------------------------ login
    # The decisions live in sans-I/O objects (auth.client_login.ClientLogin for the password exchange,
    # auth.policy.choose_method for the method, admin.Console for the admin session); what follows feeds them
    # bytes, writes their replies and waits.

    async def _read_packet(self) -> bytes:
        """The next startup-phase packet; its length is capped at PostgreSQL's 10 000 bytes from the header."""
        while True:
            packet = self._rx.startup_packet()
            if packet is not None:
                return packet
            await self._wait_rx()

    async def _read_message(self, limit: int) -> tuple[int, bytes]:
        """The next typed message; a declared length over ``limit`` is refused (08P01) before its body arrives."""
        while True:
            message = self._rx.next_message(limit)
            if message is not None:
                return message
            await self._wait_rx()

    async def _wait_rx(self) -> None:
        self.resume_reading()  # data_received pauses reading while the login has not consumed what it holds
        self._rx_waiter = asyncio.get_running_loop().create_future()
        try:
            await self._rx_waiter
        finally:
            self._rx_waiter = None

    async def _login(self) -> None:
        timeout = self.context.login_timeout
        console: Console | None = None
        try:
            async with asyncio.timeout(timeout if timeout > 0 else None):
                startup = await self._negotiate()
                if startup is None:
                    return
                console = await self._authenticate(startup)
            if console is not None:  # outside client_login_timeout: a console session lasts
                await self._serve_console(console)
        except LoginFailed as err:
            log.info("client %s login failed: %s%s", self.peer, err.message, f" ({err.why})" if err.why else "")
            self.fail(err)
        except PoolerError as err:
            log.info("client %s login failed: %s", self.peer, err.message)
            self.fail(err)
        except TimeoutError:  # before OSError, of which it is a subclass
            log.info("client %s did not log in within client_login_timeout (%gs)", self.peer, timeout)
            self.fail(
                PoolerError(
                    QUERY_CANCELED,
                    "canceling authentication due to timeout",
                    detail=f"pg_doorman's client_login_timeout is {timeout:g}s",
                )
            )
        except (ConnectionError, OSError):
            self.close()
        except Exception:
            log.exception("unexpected error during client login")
            self.fail(PoolerError(INTERNAL_ERROR, "internal error during login"))

    async def _negotiate(self) -> StartupMessage | None:
        """Answer SSL/GSS requests (TLS: see tls.py) and cancels; return the StartupMessage (None when the
        connection is done)."""
        tls_setup = self.context.tls
        offered = tls_setup is not None and tls_setup.context is not None and self.peer != "unix"
        while True:
            if offered and not self.tls and await self._first_byte() == TLS_RECORD_HANDSHAKE:
                await self._start_tls(direct=True)  # PostgreSQL 17's direct TLS: a ClientHello, no SSLRequest
                continue
            first = parse_first_packet(await self._read_packet())
            if isinstance(first, SSLRequest) and offered and not self.tls:
                if len(self._rx):
                    # Bytes behind the SSLRequest were sent before our answer, in plain text: PostgreSQL refuses
                    # them too (CVE-2021-23214).
                    raise ProtocolViolation("received unencrypted data after SSL request")
                self.write(b"S")
                await self._start_tls(direct=False)
                continue
            if isinstance(first, SSLRequest | GSSENCRequest):
                if self.tls:
                    raise ProtocolViolation("SSLRequest inside a TLS connection")
                self.write(b"N")
                continue
            if isinstance(first, CancelRequest):
                self.context.cancel(first.pid, first.secret)
                self.close()
                return None
            if tls_setup is not None and self.peer != "unix":
                self._check_tls_policy(tls_setup.policy, first.user)
            if self.context.shutting_down:
                raise PoolerError(ADMIN_SHUTDOWN, "the pooler is shutting down")
            return first

    async def _first_byte(self) -> int:
        while not len(self._rx):
            await self._wait_rx()
        return self._rx.peek_byte()

    async def _start_tls(self, *, direct: bool) -> None:
        """Upgrade this connection to TLS; whatever is buffered already is the start of the handshake."""
        tls_setup = self.context.tls
        assert tls_setup is not None and tls_setup.context is not None and self.transport is not None
        limiter = tls_setup.limiter
        if limiter is not None:
            delay = limiter.reserve(monotonic())
            if delay > 0:
                await asyncio.sleep(delay)
        # A direct-TLS client's ClientHello, or the start of the handshake that arrived while the limiter held us.
        received = self._rx.take_all()
        timeout = self.context.login_timeout
        try:
            transport = await tls_upgrade(
                self.transport,
                self,  # type: ignore[arg-type]  # uvloop's protocols do not subclass asyncio's
                tls_setup.context,
                received=received,
                handshake_timeout=timeout,
            )
        except (ssl.SSLError, OSError, TimeoutError) as exc:
            log.info("client %s: TLS handshake failed: %s", self.peer, exc)
            raise ConnectionResetError("TLS handshake failed") from None
        self.set_transport(transport)
        self.tls = True
        if direct and transport.get_extra_info("ssl_object").selected_alpn_protocol() != ALPN_POSTGRESQL:
            raise ProtocolViolation(
                "received direct SSL connection request without ALPN protocol negotiation extension"
            )

    def _check_tls_policy(self, policy: ClientTlsPolicy, user: str) -> None:
        """tls_mode require and up refuse plain TCP; verify-full with tls_client_cert_user_match checks the CN."""
        if not self.tls:
            if policy.required:
                raise PoolerError(INVALID_AUTHORIZATION, PLAIN_REFUSED)
            return
        if policy.match_user:
            assert self.transport is not None
            problem = certificate_user_problem(self.transport.get_extra_info("peercert"), user)
            if problem is not None:
                raise PoolerError(
                    INVALID_AUTHORIZATION,
                    f'certificate validation (clientcert=verify-full) failed for user "{user}": {problem}',
                )

    async def _authenticate(self, startup: StartupMessage) -> Console | None:
        """Authenticate first, then route, as PostgreSQL does: before the password exchange succeeds the client
        learns nothing about which databases or users exist. Returns the console of an admin login."""
        if startup.minor_version > 0 or startup.protocol_options:
            self.write(messages.negotiate_protocol_version(0, startup.protocol_options))
        params = startup.params
        user = self.user = startup.user
        database = self.database = startup.database
        self.application_name = params.get("application_name", "")
        if is_admin_database(database):
            return await self._admin_login()
        if memory.budget.exhausted:  # the admin console stays reachable (memory.py)
            raise memory.budget.error()
        pool = self.context.registry.pool_for(database, user)
        origin = self._origin()

        # A partial, not a closure: a compiled coroutine's closure holding a function that refers back to that
        # closure is a reference cycle, which kept every closed client alive until a full collection (gcpolicy.py).
        decision_for = partial(self._login_decision, origin)
        auth_query = self.context.registry.auth_query_for(database, user)
        if auth_query is not None:  # a user only PostgreSQL knows (configured users always win): auth/auth_query.py
            verifier, login = await auth_query.login(user, decision_for, self._exchange)
            pool = self.context.registry.auth_query_pool(database, user, verifier)
        else:
            # Without a pool for (database, user) the user's password from another pool (if any) still decides the
            # exchange: an unknown database then costs the same exchange, and the same 28P01, as a wrong password.
            stored = pool.settings.password if pool is not None else self.context.registry.user_passwords.get(user)
            check = pool.settings.password_check if pool is not None else self.context.registry.user_checks.get(user)
            login = await self._exchange(ClientLogin(user, decision_for(stored, check)))
        if pool is None:
            if self.context.registry.has_database(database):
                raise PoolerError(
                    INVALID_CATALOG_NAME, f'no pool is configured for user "{user}" in database "{database}"'
                )
            raise PoolerError(INVALID_CATALOG_NAME, f'database "{database}" does not exist')
        self.pool = pool
        pool.client_count += 1
        key = login.client_key
        if key is not None and pool.settings.password.startswith("SCRAM-SHA-256$") and pool.scram_client_key != key:
            pool.scram_client_key = key
        try:
            defaults = await pool.startup_parameters()
        except PoolerError as err:
            raise PoolerError(
                err.sqlstate if err.sqlstate != "08006" else CONNECTION_FAILURE,
                f"could not connect to the server for {database}: {err.message}",
            )
        self.transaction_mode = pool.transaction_mode
        if pool.settings.prepared_statements and pool.transaction_mode:
            self.track_statements()
        await self._finish_login(defaults, params)
        return None

    def _origin(self) -> ClientOrigin:
        """What access rules see of this connection: Unix socket or TCP, the peer's address, TLS and the common
        name of a client certificate the TLS handshake verified (tls_mode verify-ca/verify-full)."""
        transport = self.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        tls = bool(self.tls) or ssl_object is not None
        name = certificate_common_name(ssl_object.getpeercert()) if ssl_object is not None else None
        return ClientOrigin(
            local=not isinstance(peer, tuple), address=client_address(peer), tls=tls, certificate_name=name
        )

    def _login_decision(self, origin: ClientOrigin, stored: str | None, check: PasswordCheck | None = None) -> Decision:
        """The access rules (pg_hba), the stored password and the user's external check (JWT, PAM, LDAP) decide
        how this user logs in (auth/policy.py)."""
        decision = decide(self.context.access_rules, origin, self.database, self.user, stored, check=check)
        self._log_trust(decision)
        return decision

    def _log_trust(self, decision: Decision) -> None:
        if decision.method is Method.TRUST:
            log.info("client %s logs in as %s to %s without a password: %s", self.peer, self.user, self.database,
                     decision.reason)  # fmt: skip

    async def _exchange(self, login: ClientLogin) -> ClientLogin:
        """Run a password exchange to its end: send its requests, feed it the client's answers. Over TLS the
        exchange gets our certificate's channel binding data (SCRAM-SHA-256-PLUS)."""
        tls_setup = self.context.tls
        first = login.start(tls_setup.end_point_hash if self.tls and tls_setup is not None else None)
        if first:
            self.write(first)
        while not login.done:
            kind, body = await self._read_message(login.max_message_length)
            reply = login.feed(kind, body)
            if reply:
                self.write(reply)
            if login.cleartext is not None and login.check is not None:  # JWT, PAM, LDAP: judged elsewhere
                login.settle(await external.verify(login.check, self.user, login.cleartext))
        return login

    async def _finish_login(self, defaults: dict[str, str], startup: dict[str, str]) -> None:
        """Settle the client's session parameters, then send AuthenticationOk, ParameterStatus, BackendKeyData
        and ReadyForQuery.

        The client is told its parameters as PostgreSQL spells them (`client_encoding=euc-jp` is reported as
        `EUC_JP`): a value the pool has not seen yet is applied on a server first and read back (the pool
        remembers the answer). In session mode the client gets its server now, and its BackendKeyData carries
        that backend's process id, as on a direct connection (pg_backend_pid(), NOTIFY's sender, tools that
        terminate a session by pid); the cancel secret stays pg_doorman's own.
        """
        pool = self.pool
        assert pool is not None
        tracked = {k: v for k, v in defaults.items() if k in SYNCABLE_REPORTED}
        for name, value in startup.items():
            if name not in NOT_SETTABLE and not name.startswith("_pq_."):
                tracked[name] = value
        tracked.update(parse_options(startup.get("options", "")))
        spelled = pool.spelling
        unknown = False
        for name, value in list(tracked.items()):
            if name in RESPELLED and defaults.get(name) != value:
                known = spelled.get((name, value))
                if known is None:
                    unknown = True
                else:
                    tracked[name] = known
        self.param_token = pool.intern_params(tracked)
        server_pid = 0
        if unknown or not self.transaction_mode:
            server = await self._lend_at_login(pool)
            for name, value in list(tracked.items()):
                if name in RESPELLED and name in server.params:
                    tracked[name] = server.params[name]
                    if len(spelled) < MAX_SPELLINGS:
                        spelled[(name, value)] = tracked[name]
            self.param_token = pool.intern_params(tracked)
            server.param_token = self.param_token
            if self.transaction_mode:
                self.release_server()
            else:
                server_pid = int(server.pid)
        self.pid, self.secret = self.context.registry.register_cancel_key(self, server_pid)
        out = [messages.AUTH_OK]
        shown = dict(defaults)
        for name, value in self.param_token:
            if name in SYNCABLE_REPORTED:
                shown[name] = value
        out.extend(messages.parameter_status(k, v) for k, v in shown.items())
        out.append(messages.backend_key_data(self.pid, self.secret))
        out.append(messages.READY_IDLE)
        self.write(b"".join(out))
        leftover = self._rx.take_all()
        if self.server is None:
            self.state = codes.CLIENT_IDLE
        self.resume_reading()  # before the leftover: handling it may pause reading for its own reasons
        if leftover:
            self.data_received(leftover)

    async def _lend_at_login(self, pool: Pool) -> ServerConnection:
        """A server for this client before its login completes, with the client's parameters applied (the
        ParameterStatus replies of the sync update the client's parameters to PostgreSQL's spelling)."""
        loop = asyncio.get_running_loop()
        server = pool.checkout_nowait()
        if server is not None:
            self._attach(server)
        else:
            self._login_wait = loop.create_future()
            self.state = codes.CLIENT_WAITING
            timeout = pool.settings.query_wait_timeout
            self.wait_deadline = monotonic() + timeout if timeout > 0 else 0.0
            pool.enqueue(self)
            try:
                await self._login_wait
            finally:
                self._login_wait = None
        server = self.server
        assert server is not None
        if server.ledger.swallow:
            self._login_wait = server.wait_until_synced(loop)
            try:
                await self._login_wait
            finally:
                self._login_wait = None
        server = self.server
        if server is None:  # lost while syncing (client.fail() already ran)
            raise ConnectionResetError("the server was lost during login")
        return server

    async def _admin_login(self) -> Console:
        """The admin database: every user name gets the same md5 challenge; then the console answers."""
        admin_user, admin_password = self.context.admin_credentials()
        decision = login_decision(
            self.user, admin_user, admin_password,
            rules=self.context.access_rules, origin=self._origin(), database=self.database,
        )  # fmt: skip
        self._log_trust(decision)
        await self._exchange(ClientLogin(self.user, decision))
        self.is_admin = True
        console = Console(self.context.admin)
        self.write(console.startup_reply())
        return console

    async def _serve_console(self, console: Console) -> None:
        """Write each chunk of the console's replies, letting the event loop run between chunks and waiting while
        this client's socket is full: a large SHOW never holds other clients up, nor piles up in memory."""
        while not console.closed:
            kind, body = await self._read_message(MAX_CONSOLE_MESSAGE)
            for chunk in console.replies(kind, body):
                if self.state == codes.CLIENT_CLOSED:
                    return
                if chunk:
                    self.write(chunk)
                await self._console_room()
        self.close()

    async def _console_room(self) -> None:
        """Let other connections run, then wait until the transport has resumed writing (below its low-water mark)
        if it is above its high-water mark (then it has paused us, and resume_writing will come)."""
        await asyncio.sleep(0)
        transport = self.transport
        limits = getattr(transport, "get_write_buffer_limits", None)  # a transport without it: no waiting
        while (
            transport is not None
            and limits is not None
            and self.state != codes.CLIENT_CLOSED
            and transport.get_write_buffer_size() > limits()[1]
        ):
            log.debug("admin console %s: waiting for the client to read its reply", self.peer)
            self._login_wait = asyncio.get_running_loop().create_future()
            try:
                await self._login_wait
            finally:
                self._login_wait = None


def parse_options(options: str) -> dict[str, str]:
    """``-c name=value`` / ``--name=value`` pairs from the startup ``options`` parameter (libpq PGOPTIONS)."""
    result: dict[str, str] = {}
    tokens: list[str] = []
    current: list[str] = []
    escaped = False
    for ch in options:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch.isspace():
            if current:
                tokens.append("".join(current))
                current = []
        else:
            current.append(ch)
    if current:
        tokens.append("".join(current))
    i = 0
    while i < len(tokens):
        token = tokens[i]
        setting = None
        if token == "-c" and i + 1 < len(tokens):
            setting = tokens[i + 1]
            i += 1
        elif token.startswith("-c") or token.startswith("--"):
            setting = token[2:]
        if setting and "=" in setting:
            name, value = setting.split("=", 1)
            result[name.replace("-", "_")] = value
        i += 1
    return result
