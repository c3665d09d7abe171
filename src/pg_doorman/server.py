"""One PostgreSQL server connection: login, forwarding to the client that holds it, cleanup on release.

The forwarding path (`_forward`) walks only message headers and reports the messages that matter to the server's
`ServerLedger` (ledger.py), which decides when the server may go back to the pool and whether it is clean:
ReadyForQuery and its transaction status, ErrorResponse, COPY start and end, and with remapped prepared statements
every response that completes a request. The server itself looks at ParameterStatus (parameter tracking) and at
CommandComplete tags that make the session dirty (SET, DECLARE, LISTEN, PREPARE) or roll back what statements
prepared in the transaction may depend on (ROLLBACK). Everything else is written to the client as it arrived.

Responses to queries the pooler itself injected (parameter sync, deferred BEGIN) come first on the wire; the
ledger counts them and they are cut out of the stream up to and including their ReadyForQuery.
"""

from __future__ import annotations

import asyncio
import logging
import random
from time import monotonic
from typing import TYPE_CHECKING

from pg_doorman import clock, codes, sockets
from pg_doorman.auth.backend import ServerCredentials, ServerLogin
from pg_doorman.connection import Connection
from pg_doorman.ledger import ServerLedger
from pg_doorman.prepared import COMPLETES_TABLE, PARSE_SETTINGS, Expect, ServerStatements
from pg_doorman.protocol import messages
from pg_doorman.protocol.errors import CONNECTION_FAILURE, INTERNAL_ERROR, PoolerError, ServerError
from pg_doorman.protocol.framing import MessageBuffer, type_table
from pg_doorman.reset import CLOSE, PENDING, Cleanup, ResetPolicy
from pg_doorman.stats import PoolStats
from pg_doorman.tls import is_tls, open_cancel_connection, peer_end_point_hash

if TYPE_CHECKING:
    from pg_doorman.client import ClientConnection
    from pg_doorman.pool import Pool

log = logging.getLogger("pg_doorman.server")


# Message types from the server whose body the forwarder must look at.
WATCHED = type_table({"ZSCEGHWAc": 1})
# With prepared statements every response that completes a request is watched too (prepared.COMPLETES).
WATCHED_TRACKED = bytes(
    1 if watched or completes else 0 for watched, completes in zip(WATCHED, COMPLETES_TABLE, strict=True)
)

# Severities after which PostgreSQL ends the session (ErrorResponse field 'V', or 'S' before PostgreSQL 9.6).
_SESSION_ENDING = frozenset({"FATAL", "PANIC"})

# First letters of the CommandComplete tags that change what cleanup a session needs (SET, RESET, DECLARE
# CURSOR, DISCARD ALL, DEALLOCATE ALL, PREPARE, LISTEN, CLOSE CURSOR ALL); other tags skip the call.
_TAG_FIRST = type_table({"SRDPLC": 1})

# Parameters PostgreSQL reports with ParameterStatus and a client may change with SET.
SYNCABLE_REPORTED = frozenset(
    {
        "application_name",
        "client_encoding",
        "DateStyle",
        "IntervalStyle",
        "TimeZone",
        "standard_conforming_strings",
        "default_transaction_read_only",
    }
)

# The session's own settings (set by SET, set_config or the pooler's parameter sync), read before a cleanup.
_CAPTURE_QUERY = messages.query("SELECT name, setting FROM pg_catalog.pg_settings WHERE source = 'session'")

# The ReadyForQuery that ends a batch being retried (hidden).
_RETRY_SYNC = Expect(codes.SYNC, hide=True)
# The CloseComplete of a retired statement closed just before it is parsed again (hidden).
_HIDDEN_CLOSE = Expect(codes.CLOSE, hide=True)


class Borrower(Connection):
    """What a server calls on the client connection it is lent to (`client.ClientConnection`).

    A base class here rather than an import of the client module: the compiled build then reaches these through
    C calls and C fields, while cimports stay one-way (client -> pool -> server).
    """

    __slots__ = ("error_count", "query_count", "state", "transaction_mode", "wait_started", "xact_count")

    state: int  # codes.CLIENT_*
    transaction_mode: bool
    # Statistics (SHOW CLIENTS): counted by the server it holds, at each ReadyForQuery and ErrorResponse.
    xact_count: int
    query_count: int
    error_count: int
    wait_started: int  # clock.now_us() when it began to wait for a server; 0 when not waiting

    @property
    def waiting(self) -> bool:
        """Queued in its pool for a server."""
        return self.state == codes.CLIENT_WAITING

    def attach_server(self, server: ServerConnection) -> None:
        """The pool hands a server to this waiting client."""
        raise NotImplementedError

    def release_server(self) -> None:
        """The transaction is over (ReadyForQuery 'I'): give the server back."""
        raise NotImplementedError


class Lender:
    """What a server calls on the pool that owns it (`pool.Pool`); a base class for the same reason as
    `Borrower`."""

    __slots__ = ("now", "stats")

    # monotonic() as of the pool's last tick (every WAIT_CHECK_INTERVAL): server lifetimes and idle times need
    # no clock read per transaction.
    now: float
    stats: PoolStats  # the pool's latency histograms and error counts

    def checkin(self, server: ServerConnection) -> None:
        """Take a clean, idle server back."""
        raise NotImplementedError


class ServerConnection(Connection):
    """A PostgreSQL backend owned by a `Pool`, lent to one client at a time."""

    __slots__ = (
        "_capture_buf",
        "_captured",
        "_carry",
        "_cleanup",
        "_cleanup_buf",
        "_inject_error",
        "_login",
        "_login_buf",
        "_login_waiter",
        "_skip",
        "_synced_waiter",
        "bytes_received",
        "bytes_sent",
        "cancel_sent",
        "capture_due",
        "check_leftovers",
        "client",
        "created_at",
        "expires_at",
        "extra_keys",
        "fatal_forwarded",
        "idle_expires_after",
        "last_used",
        "ledger",
        "need_close_all",
        "need_deallocate_all",
        "need_reset_all",
        "need_reset_query",
        "need_unlisten",
        "param_token",
        "params",
        "pid",
        "pool",
        "pool_stats",
        "probe",
        "query_count",
        "query_start",
        "secret",
        "state",
        "statements",
        "tls",
        "to_close",
        "tracked",
        "used",
        "xact_count",
        "xact_start",
    )

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.set_transport(None)
        self.state = codes.SERVER_CONNECTING
        self.client: ClientConnection | None = None
        self.params: dict[str, str] = {}
        self.param_token: tuple[tuple[str, str], ...] = ()
        self.extra_keys: set[str] = set()
        self.pid = 0
        self.secret = 0
        self.tls = False  # the connection to PostgreSQL is encrypted (a cancel request then is too)
        self.ledger = ServerLedger()  # what this server owes its client: the release and cleanliness rules
        # Statistics. Bytes: sent to PostgreSQL, received from it. query_start/xact_start: clock.now_us() when the
        # client's first message after a ReadyForQuery (after an idle ReadyForQuery) went out; 0 in between.
        self.pool_stats = pool.stats
        self.probe: list[bytes] | None = None  # what PostgreSQL sends while it answers a pooler_check_query
        self.bytes_sent = 0
        self.bytes_received = 0
        self.query_count = 0
        self.xact_count = 0
        self.query_start = 0
        self.xact_start = 0
        self.need_reset_all = False
        # The client changed a setting (SET, RESET, set_config) in this transaction: before the server goes back
        # to the pool, read the session's settings so that they follow the client (_capture_settings).
        self.capture_due = False
        self._capture_buf = MessageBuffer()
        self._captured: dict[str, str] = {}
        self.need_close_all = False
        self.need_unlisten = False
        self.need_deallocate_all = False
        # A reset query runs at every release (session mode, or server_reset_query_always): see reset.py.
        self.need_reset_query = ResetPolicy.from_settings(pool.settings).reset_on_release
        # Something this transaction did may outlive it (a CREATE, advisory-lock text seen by the client side):
        # look for leftovers at release. Consumed by release().
        self.check_leftovers = False
        self.cancel_sent = False
        # PostgreSQL's own FATAL went to the client: it ends the session, and the client needs no second error
        # when the socket then closes (client.server_lost). Set off the hot path, where the error is parsed.
        self.fatal_forwarded = False
        self.used = False
        settings = pool.settings
        self.tracked = settings.prepared_statements and pool.transaction_mode
        # What this session has prepared (pool statements, SQL-level statements of the client it last served).
        self.statements = ServerStatements(settings.server_prepared_statements_cache_size)
        # Statements to close at the next checkout: evicted from the cache (True: may be taken back until then) or
        # retired (False: must be parsed afresh).
        self.to_close: dict[bytes, bool] = {}
        self._skip = 0
        self._synced_waiter: asyncio.Future[None] | None = None  # see wait_until_synced
        self._inject_error: ServerError | None = None
        self._carry = b""
        self._cleanup_buf = MessageBuffer()
        self._cleanup: Cleanup | None = None
        self._login: ServerLogin | None = None
        self._login_buf = MessageBuffer()
        self._login_waiter: asyncio.Future[None] | None = None
        now = monotonic()
        self.created_at = now
        self.last_used = now
        settings = pool.settings
        lifetime = settings.server_lifetime
        self.expires_at = now + lifetime * random.uniform(0.8, 1.2) if lifetime > 0 else float("inf")
        idle = settings.idle_timeout
        self.idle_expires_after = idle * random.uniform(0.8, 1.2) if idle > 0 else float("inf")

    # ------------------------------------------------------------------ login

    async def login(self, creds: ServerCredentials, database: str, startup_params: dict[str, str]) -> None:
        """Run the startup/authentication exchange; raises PoolerError/ServerError/OSError on failure."""
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self._login = ServerLogin(creds, database, startup_params, channel_binding=peer_end_point_hash(self.transport))
        self._login_waiter = loop.create_future()
        self.write(self._login.start())
        try:
            await self._login_waiter
        finally:
            self._login_waiter = None
        login = self._login
        self._login = None
        self.pid, self.secret = login.pid, login.secret
        log.debug("server pid=%s: logged in as %s with %s", login.pid, creds.user, login.auth_method)
        self.params = login.params
        self.refresh_param_token()
        self.state = codes.SERVER_IDLE

    def _on_login_data(self, data: bytes) -> None:
        login = self._login
        waiter = self._login_waiter
        if login is None or waiter is None or waiter.done():
            return
        self._login_buf.feed(data)
        try:
            for kind, body in self._login_buf.messages():
                reply = login.feed(kind, body)
                if reply and self.transport is not None:
                    self.write(reply)
                if login.done:
                    waiter.set_result(None)
                    return
        except Exception as exc:  # every failure becomes the login's outcome
            waiter.set_exception(exc)

    def refresh_param_token(self) -> None:
        """Recompute the identity token of the parameters a client may have changed on this session."""
        extra = self.extra_keys
        params = self.params
        self.param_token = self.pool.intern_params(
            {k: v for k, v in params.items() if k in SYNCABLE_REPORTED or k in extra}
        )

    # ------------------------------------------------------------- asyncio API

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.set_transport(transport)  # type: ignore[arg-type]
        self.tls = is_tls(transport)
        sockets.configure(transport.get_extra_info("socket"))

    def data_received(self, data: bytes) -> None:
        try:
            state = self.state
            if state == codes.SERVER_ACTIVE:
                self.bytes_received += len(data)
                if self.probe is not None:
                    self.probe.append(data)  # the reply to a pooler_check_query (client._keep_check_reply)
                if self.tracked:
                    self._forward_tracked(data)
                else:
                    self._forward(data)
            elif state == codes.SERVER_CONNECTING:
                self._on_login_data(data)
            elif state == codes.SERVER_CLEANUP:
                self._on_cleanup_data(data)
            elif state == codes.SERVER_CAPTURE:
                self._on_capture_data(data)
            else:
                # An idle server must not talk: it is a FATAL error before termination, or garbage.
                log.info("server pid=%s sent data while idle; closing it", self.pid)
                self.close()
        except Exception:
            # A bug met on this server's bytes: its client loses its connection and the server is dropped (its
            # session state is unknown now); everyone else goes on.
            log.exception("server pid=%s: internal error", self.pid)
            client = self.client
            if client is not None:
                client.fail(PoolerError(INTERNAL_ERROR, "internal error in pg_doorman (see its log)"))
            self.abort()

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.forget_socket()
        previous = self.state
        self.state = codes.SERVER_CLOSED
        waiter = self._login_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc or PoolerError(CONNECTION_FAILURE, "server closed the connection during login"))
        self.pool.forget(self, previous)
        client = self.client
        self.client = None
        if client is not None:
            client.server_lost(self)

    def pause_writing(self) -> None:
        client = self.client
        if client is not None:
            client.pause_reading()

    def resume_writing(self) -> None:
        client = self.client
        if client is not None:
            client.resume_reading()

    # -------------------------------------------------------------- forwarding

    def _forward(self, data: bytes) -> None:
        """Pass a chunk from PostgreSQL to the client, reporting what matters to the ledger."""
        if self._carry:
            data = self._carry + data
            self._carry = b""
        ledger = self.ledger
        n = len(data)
        pos = self._skip
        if pos >= n:
            self._skip = pos - n
            if not ledger.swallow:
                client = self.client
                if client is not None:
                    client.write(data)
            return
        self._skip = 0
        start = 0  # first byte not yet cut out by swallowing
        watched = WATCHED
        release = False
        while True:
            if n - pos < 5:
                if pos < n:
                    self._carry = data[pos:]
                    n = pos
                break
            kind = data[pos]
            end = data[pos + 1]  # big-endian int32 length; shifted as a wide int (compiled: no 32-bit overflow)
            end = pos + 1 + ((end << 24) | (data[pos + 2] << 16) | (data[pos + 3] << 8) | data[pos + 4])
            if not watched[kind]:
                if end > n:
                    self._skip = end - n
                    pos = n
                    break
                pos = end
                continue
            if end > n:
                self._carry = data[pos:]
                n = pos
                break
            if kind == 90:  # 'Z' ReadyForQuery
                if ledger.swallow:
                    ledger.swallowed_ready(data[pos + 5])
                    start = end
                    if self._inject_error is not None:
                        self._injected_command_failed()
                        return
                    if self._synced_waiter is not None and not ledger.swallow:
                        self._synced()
                elif ledger.ready_for_lone_query(data[pos + 5]):
                    self._count_ready(data[pos + 5])
                    client = self.client
                    release = client is not None and client.transaction_mode
            elif kind == 83:  # 'S' ParameterStatus
                self._on_parameter_status(data[pos + 5 : end])
            elif kind == 67:  # 'C' CommandComplete
                ledger.copy_ended()
                if not ledger.swallow and _TAG_FIRST[data[pos + 5]]:
                    self._on_command_complete(data, pos + 5)
            elif kind == 69:  # 'E' ErrorResponse
                ledger.copy_ended()
                if ledger.swallow:
                    self._note_inject_error(data[pos + 5 : end])
                else:
                    self._count_error(data[pos + 5 : end])
            elif kind == 71 or kind == 72 or kind == 87:  # 'G' 'H' 'W' CopyIn/CopyOut/CopyBoth
                ledger.copy_started(kind)
            if ledger.swallow:
                start = end
            pos = end
        if ledger.swallow:
            start = n
        client = self.client
        if client is not None and start < n:
            client.write(data[start:n] if start or n != len(data) else data)
        if release and client is not None:
            if self.capture_due:
                self._capture_settings()
            else:
                client.release_server()

    def _forward_tracked(self, data: bytes) -> None:
        """`_forward` plus matching of responses to the ledger's queue: hides answers to requests the pooler
        inserted, inserts answers for requests it did not send (synthetic ParseComplete/CloseComplete) at their
        position, and after an ErrorResponse undoes what PostgreSQL skips up to the next Sync."""
        ledger = self.ledger
        if ledger.lone_query():
            # A lone simple Query (the common case): nothing to match but its ReadyForQuery.
            self._forward(data)
            return
        if self._carry:
            data = self._carry + data
            self._carry = b""
        n = len(data)
        pos = self._skip
        if pos >= n:
            self._skip = pos - n
            if not ledger.swallow and not ledger.hidden_query_first():
                client = self.client
                if client is not None:
                    client.write(data)
            return
        self._skip = 0
        start = 0
        out: list[bytes] | None = None
        if ledger.synthetic_first():
            # Answers the pooler owes for requests it did not send come before anything the server says now.
            out = ledger.take_synthetic()
        watched = WATCHED_TRACKED
        completes = COMPLETES_TABLE
        release = False
        while True:
            if n - pos < 5:
                if pos < n:
                    self._carry = data[pos:]
                    n = pos
                break
            kind = data[pos]
            end = data[pos + 1]  # big-endian int32 length; shifted as a wide int (compiled: no 32-bit overflow)
            end = pos + 1 + ((end << 24) | (data[pos + 2] << 16) | (data[pos + 3] << 8) | data[pos + 4])
            if not watched[kind]:
                if end > n:
                    self._skip = end - n
                    pos = n
                    break
                pos = end
                continue
            if end > n:
                self._carry = data[pos:]
                n = pos
                break
            if ledger.swallow:
                if kind == 90:
                    ledger.swallowed_ready(data[pos + 5])
                    if self._inject_error is not None:
                        self._injected_command_failed()
                        return
                    if self._synced_waiter is not None and not ledger.swallow:
                        self._synced()
                elif kind == 83:
                    self._on_parameter_status(data[pos + 5 : end])
                elif kind == 69:
                    self._note_inject_error(data[pos + 5 : end])
                start = end
                pos = end
                continue
            if ledger.hidden_query_first():
                # The reply to a query the pooler inserted: dropped whole, up to its ReadyForQuery.
                if kind == 90:
                    if ledger.hidden_query_ready(data[pos + 5]):
                        if out is None:
                            out = []
                        out.extend(ledger.take_synthetic())
                elif kind == 83:
                    self._on_parameter_status(data[pos + 5 : end])
                elif kind == 69:
                    fields = messages.parse_error_fields(data[pos + 5 : end])
                    log.info("pooler-issued query failed on server pid=%s: %s", self.pid, fields.get("M"))
                    self._fail_request(ledger.hidden_query_failed())
                start = end
                pos = end
                continue
            code = completes[kind]
            if code:
                flags = ledger.complete(code)
                if flags:
                    if out is None:
                        out = []
                    if flags & codes.HIDE:
                        out.append(data[start:pos])
                        start = end
                    if flags & codes.SYNTHETIC_NEXT:
                        out.append(data[start:end])
                        start = end
                        out.extend(ledger.take_synthetic())
            if kind == 90:  # 'Z' ReadyForQuery
                self._count_ready(data[pos + 5])
                if ledger.ready(data[pos + 5]):
                    client = self.client
                    release = client is not None and client.transaction_mode
            elif kind == 69:  # 'E' ErrorResponse: the request failed, PostgreSQL skips to the next Sync
                self._count_error(data[pos + 5 : end])
                if out is None:
                    out = []
                out.append(data[start:pos])
                start = self._on_client_error(data, pos, end, out)
            elif kind == 83:
                self._on_parameter_status(data[pos + 5 : end])
            elif kind == 67:
                ledger.copy_ended()
                if _TAG_FIRST[data[pos + 5]]:
                    self._on_command_complete(data, pos + 5)
            elif kind == 71 or kind == 72 or kind == 87:
                ledger.copy_started(kind)
            pos = end
        if ledger.swallow or ledger.hidden_query_first():
            start = n
        client = self.client
        if client is not None:
            if out is None:
                if start < n:
                    client.write(data[start:n] if start or n != len(data) else data)
            else:
                out.append(data[start:n])
                client.write(b"".join(out))
        source = ledger.take_retry(_RETRY_SYNC)
        if source is not None:
            self._replay_batch(source)
            return
        if release and client is not None:
            if self.capture_due:
                self._capture_settings()
            else:
                client.release_server()

    def _count_ready(self, status: int) -> None:
        """A ReadyForQuery for the client: a query ended (and with status 'I', a transaction); record durations."""
        start = self.query_start
        if not start:
            return  # a further ReadyForQuery of one pipeline: its time is the first one's
        now = clock.now_us()
        self.query_start = 0
        stats = self.pool_stats
        stats.query.record(now - start)
        self.query_count += 1
        client = self.client
        if client is not None:
            client.query_count += 1
        if status == 73:  # 'I'
            stats.xact.record(now - self.xact_start)
            self.xact_start = 0
            self.xact_count += 1
            if client is not None:
                client.xact_count += 1

    def _count_error(self, body: bytes) -> None:
        """An ErrorResponse goes to the client whole: count it by SQLSTATE (rare: parsed here, off the common
        path), and note a FATAL one, after which PostgreSQL closes the session itself."""
        fields = messages.parse_error_fields(body)
        self.pool_stats.count_error(fields.get("C", "XX000"))
        client = self.client
        if client is not None:
            client.error_count += 1
            if fields.get("V", fields.get("S")) in _SESSION_ENDING:
                self.fatal_forwarded = True
                self.ledger.session_ended()

    def _on_client_error(self, data: bytes, pos: int, end: int, out: list[bytes]) -> int:
        """An ErrorResponse for the client at data[pos:end]; returns where the bytes still to forward start
        (``pos`` to forward it, ``end`` to hide it). Undoes what the failed and skipped requests would have done
        and, for a stale cached plan at the first Bind of a replayable batch, arranges the retry."""
        ledger = self.ledger
        # A transaction may roll back with this error (an implicit one does): statements parsed in this lending
        # are retired at its end (see release).
        self.statements.aborted = True
        head = ledger.head()
        stale = head is not None and head.stmt is not None and self._is_stale_plan_error(data[pos + 5 : end])
        if stale:
            # Retire the statement pool-wide: the next use of the text prepares a new one.
            assert head is not None and head.stmt is not None
            self.pool.registry.forget(head.stmt)
        if (
            stale
            and head is not None
            and head.code == codes.BIND
            and ledger.replay_source is not None
            and ledger.retry is None
        ):
            # The statement's result type changed under it (DDL): re-prepare and run the batch again, once,
            # instead of failing the client. Its error and the ReadyForQuery that ends the failed batch are hidden.
            self._fail_requests(ledger.start_retry(_RETRY_SYNC))
            return end
        self._fail_requests(ledger.failed_requests())
        client = self.client
        if client is not None and data.find(b'"DOORMAN_', pos, end) >= 0:
            # The message names the pool-wide statement: give the client back its own name.
            out.append(client.unmask_statement_names(data[pos:end], head))
            return end
        return pos

    def _note_inject_error(self, body: bytes) -> None:
        fields = messages.parse_error_fields(body)
        log.warning("pooler-issued command failed on server pid=%s: %s", self.pid, fields.get("M"))
        if self._inject_error is None:
            self._inject_error = ServerError(
                fields.get("C", "08P01"), fields.get("M", "command failed"), severity="FATAL", detail=fields.get("D")
            )

    def _injected_command_failed(self) -> None:
        """A command sent on the client's behalf (parameter sync, deferred BEGIN) failed: the session the client
        believes in does not exist on this server, so the client cannot go on."""
        err = self._inject_error
        self._inject_error = None
        client = self.client
        if client is not None and err is not None:
            client.fail(err)
        else:
            self.close()

    @staticmethod
    def _is_stale_plan_error(body: bytes) -> bool:
        """The pool statement cannot be used any more: DDL changed its result type, or a type it was parsed with
        (a parameter's) was dropped, e.g. by another session, after it was prepared."""
        fields = messages.parse_error_fields(body)
        code, text = fields.get("C"), fields.get("M", "")
        return (code == "0A000" and text.startswith("cached plan must not change result")) or (
            code == "XX000" and text.startswith("cache lookup failed for type")
        )

    def _replay_batch(self, source: bytes) -> None:
        """Send a failed batch again: the retired statement's Bind now maps to a fresh statement, which the
        client side prepares first (hidden Parse), so PostgreSQL plans it anew."""
        client = self.client
        if client is None or self.transport is None or getattr(client, "rewriter", None) is None:
            return
        log.info("server pid=%s: statement result type changed; re-preparing and retrying the batch", self.pid)
        client.replay(source)
        self.ledger.replayable(None)  # once: a second failure of the same batch reaches the client

    def _fail_requests(self, entries: list[Expect]) -> None:
        """Requests PostgreSQL rejected or skipped, in wire order: undone last first (each undo restores what was
        there before its own request)."""
        for entry in reversed(entries):
            self._fail_request(entry)

    def _fail_request(self, entry: Expect) -> None:
        """A request PostgreSQL rejected or skipped: undo what the pooler assumed it would do."""
        if entry.parsed:
            self.statements.discard(entry.parsed)
        undo = entry.undo
        if undo is not None:
            if entry.code == codes.QUERY or entry.code == codes.HIDDEN_QUERY:
                entry.undo = None  # a Query reports at most one error that matters here
            undo()

    def _on_parameter_status(self, body: bytes) -> None:
        name, value = messages.parse_parameter_status(body)
        self.params[name] = value
        if self.statements.opened and not self.ledger.swallow and name.lower() in PARSE_SETTINGS:
            # The client changed a setting statements are keyed by (not the pooler's own sync): one parsed in this
            # lending may have been keyed by the old value but parsed under the new (a Parse pipelined behind the
            # SET). Such a statement must not be shared.
            self._retire_opened()
        if name in SYNCABLE_REPORTED:
            self.refresh_param_token()
            client = self.client
            if client is not None:
                # Also while swallowing a sync: the server's spelling of the client's value is canonical.
                client.on_parameter_status(name, value)

    def _on_command_complete(self, data: bytes, at: int) -> None:
        first = data[at]
        if first == 83:  # 'S'
            if data.startswith(b"SET\x00", at):
                self.need_reset_all = True
                self.capture_due = True
        elif first == 68:  # 'D'
            if data.startswith(b"DECLARE CURSOR\x00", at):
                self.need_close_all = True
            elif data.startswith(b"DISCARD ALL\x00", at):
                self._clean_after_reset(close_all=True, deallocate=True, unlisten=True)
                self._statements_gone()
            elif data.startswith(b"DEALLOCATE ALL\x00", at):
                self.need_deallocate_all = False
                self._statements_gone()
        elif first == 80:  # 'P'
            if data.startswith(b"PREPARE\x00", at):
                if not self.statements.sql_prepare_completed():  # not one the pooler tracks (rewrite.py)
                    self.need_deallocate_all = True
            elif data.startswith(b"PREPARE TRANSACTION\x00", at):
                self._retire_opened()  # whether it commits is decided elsewhere: assume the worst
        elif first == 76:  # 'L'
            if data.startswith(b"LISTEN\x00", at):
                self.need_unlisten = True
        elif first == 82:  # 'R'
            if data.startswith(b"RESET\x00", at):
                # A RESET does not undo other SETs, but it may undo a parameter the pooler synced (e.g. a
                # startup search_path): reset at release so the tracked parameters are true again.
                self.need_reset_all = True
                self.capture_due = True
            elif data.startswith(b"ROLLBACK\x00", at):  # also ROLLBACK TO SAVEPOINT, and COMMIT of a failed one
                self._retire_opened()
        elif first == 67:  # 'C'
            if data.startswith(b"CLOSE CURSOR ALL\x00", at):
                self.need_close_all = False
            elif data.startswith(b"CREATE ", at):
                # CREATE TABLE/VIEW/SEQUENCE/FUNCTION...: maybe a temporary object, which outlives the transaction
                # (unless ON COMMIT DROP). Rare enough to pay for a look at release.
                self.check_leftovers = True

    def _parse_settings_changed(self, before: tuple[tuple[str, str], ...], after: tuple[tuple[str, str], ...]) -> bool:
        """Whether two parameter tokens differ in a setting statements are keyed by (prepared.PARSE_SETTINGS)."""
        registry = self.pool.registry
        return bool(registry.settings_key(before) != registry.settings_key(after))

    def _retire_opened(self) -> None:
        """Statements parsed on this server since it was lent may not mean what their key says any more: a
        transaction or savepoint rolled back, and they may depend on objects created in it (a type, a table), gone
        now (PostgreSQL keeps prepared statements across a rollback, and would re-analyse them later with the
        parameter types fixed at parse time: XX000 cache lookup failed); or a setting they are keyed by changed.
        They are retired: closed, and parsed afresh when next used."""
        for name in self.statements.retire_opened():
            self.to_close[name] = False

    def _statements_gone(self) -> None:
        self.forget_statements()
        client = self.client
        if client is not None:
            client.forget_statements()

    def _clean_after_reset(self, *, close_all: bool, deallocate: bool, unlisten: bool) -> None:
        self.need_reset_all = False
        if close_all:
            self.need_close_all = False
        if deallocate:
            self.need_deallocate_all = False
        if unlisten:
            self.need_unlisten = False
        self._forget_extra_params()

    def _forget_extra_params(self) -> None:
        """After RESET ALL, parameters PostgreSQL does not report are back at their defaults."""
        for name in self.extra_keys:
            self.params.pop(name, None)
        self.extra_keys = set()
        self.refresh_param_token()

    # ------------------------------------------------------- settings capture

    def note_session_hints(self, hints: int) -> None:
        """The client's statement text suggests a session change no command tag reports (sessionhints.py)."""
        if hints & codes.HINT_SET_CONFIG:
            self.need_reset_all = True
            self.capture_due = True
        if hints & (codes.HINT_ADVISORY | codes.HINT_TEMP):
            # A session-level lock or a temporary object would outlive the transaction: look at release.
            self.check_leftovers = True

    def _capture_settings(self) -> None:
        """The transaction is over but the client changed settings in it. PostgreSQL reports only a few of them
        (ParameterStatus); the others would be lost at the cleanup's RESET ALL, and the client's next transaction
        would run with the server's defaults. Read them all (pg_settings, source 'session') while the server is
        still the client's, make them the client's session settings (they follow it to any server, as its
        startup settings do), then release. The client may send its next request meanwhile: it goes to this
        server, behind the query, and its reply is forwarded as usual."""
        self.capture_due = False
        self.state = codes.SERVER_CAPTURE
        self._capture_buf = MessageBuffer()
        self._captured = {}
        self.write(_CAPTURE_QUERY)

    def _on_capture_data(self, data: bytes) -> None:
        buf: MessageBuffer = self._capture_buf
        buf.feed(data)
        replies = buf.messages()
        done = False
        for kind, body in replies:
            if kind == 68:  # 'D' DataRow: name, setting
                values = messages.parse_data_row(body)
                if len(values) == 2 and values[0] is not None and values[1] is not None:
                    self._captured[values[0].decode()] = values[1].decode()
            elif kind == 69:
                log.warning(
                    "reading session settings failed on server pid=%s: %s",
                    self.pid,
                    messages.parse_error_fields(body).get("M"),
                )
                self._captured = {}
            elif kind == 90:
                done = True
                break
        replies.close()  # the buffer keeps only what follows the query's reply
        if done:
            self._capture_done(buf.take_all())

    def _capture_done(self, rest: bytes) -> None:
        captured = self._captured
        self._captured = {}
        self.state = codes.SERVER_ACTIVE
        client = self.client
        if client is None:
            return
        if captured:
            before = client.param_token
            client.adopt_session_settings(captured)
            if self.statements.opened and self._parse_settings_changed(before, client.param_token):
                # A statement parsed after the SET was keyed by the settings before it (see _on_parameter_status).
                self._retire_opened()
            # This session has them now too: a later client's parameter sync resets what it does not share, even
            # where no cleanup runs (cleanup_server_connections: false).
            extras = {name for name, _ in client.param_token if name not in SYNCABLE_REPORTED}
            for name in extras:
                self.params[name] = captured.get(name, self.params.get(name, ""))
            self.extra_keys = extras | self.extra_keys
            self.refresh_param_token()
        if rest:
            self.data_received(rest)  # replies to what the client sent meanwhile
        elif self.ledger.idle() and client.transaction_mode and self.client is client:
            client.release_server()

    # ---------------------------------------------------------- attach/release

    def attach(self, client: ClientConnection, sync_sql: str | None) -> None:
        """Lend this server to ``client``; ``sync_sql`` (if any) is sent first and its reply swallowed."""
        self.client = client
        self.state = codes.SERVER_ACTIVE
        self.used = True
        self.ledger.lent()
        if self.to_close or self.statements.sql:
            self._close_at_checkout(client)
        if sync_sql:
            self.inject(sync_sql)

    def wait_until_synced(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
        """A future that completes once the replies to the queries the pooler injected (parameter sync, deferred
        BEGIN) are all in: the server's parameters are then those the client will see. A failure of those
        queries or of the connection fails the client instead (its login waits on the same future)."""
        waiter: asyncio.Future[None] = loop.create_future()
        if self.ledger.swallow:
            self._synced_waiter = waiter
        else:
            waiter.set_result(None)
        return waiter

    def _synced(self) -> None:
        waiter = self._synced_waiter
        self._synced_waiter = None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def inject(self, sql: str) -> None:
        """Send a pooler-issued simple query whose whole reply is hidden from the client."""
        self.inject_message(messages.query(sql))

    def inject_message(self, query_message: bytes) -> None:
        """Send a complete Query message whose reply (up to its ReadyForQuery) is hidden from the client."""
        assert self.transport is not None
        self.ledger.inject()
        self.write(query_message)

    def _close_at_checkout(self, client: ClientConnection) -> None:
        """At checkout, when no portal can use them: close statements evicted from this server's cache or retired,
        and the SQL-level statements of another client (Close drops those too): they must never be found by this
        one. One hidden Close per name and a Sync, whose replies are cut from the stream."""
        assert self.transport is not None
        names = list(self.to_close)
        self.to_close.clear()
        statements = self.statements
        sql = statements.sql
        if sql:
            rewriter = getattr(client, "rewriter", None)
            if rewriter is None or rewriter.owner != statements.sql_owner:
                names.extend(sql)
                sql.clear()
        if names:
            self.ledger.inject()
            self.write(b"".join([messages.message(b"C", b"S" + name + b"\x00") for name in names]) + messages.SYNC)

    def lacks(self, name: bytes, out: list[bytes]) -> bool:
        """Whether statement ``name`` must be parsed on this server before it is used. One evicted from the cache
        but not closed yet is taken back; one retired but not closed yet is closed first (a hidden Close appended
        to ``out``), so that the Parse that follows does not meet it."""
        if name in self.statements:
            return False
        to_close = self.to_close
        if to_close:
            revivable = to_close.pop(name, None)
            if revivable:
                self._add_statement(name, False)
                return False
            if revivable is not None:
                out.append(messages.message(b"C", b"S" + name + b"\x00"))
                self.ledger.owe(_HIDDEN_CLOSE)
        return True

    def add_statement(self, name: bytes) -> None:
        """A Parse of pool statement ``name`` is sent to this server."""
        self._add_statement(name, True)

    def _add_statement(self, name: bytes, parsed: bool) -> None:
        evicted = self.statements.add(name, parsed)
        if evicted is not None:
            old, opened_now = evicted
            self.to_close[old] = not opened_now  # may be taken back until closed, unless it may be rolled back

    def forget_statements(self) -> None:
        """DEALLOCATE ALL / DISCARD ALL ran on this session."""
        self.statements.clear()
        self.to_close.clear()

    def _settle_statements(self) -> None:
        """The client is done with this server. Statements parsed in its transactions are kept if those committed;
        if one may have rolled back (an error, or the client left inside a transaction, which cleanup rolls back),
        they are retired (see `_retire_opened`)."""
        for name in self.statements.settle(self.ledger.tx_status != codes.TX_IDLE):
            self.to_close[name] = False

    def release(self) -> None:
        """The client is done with this server (transaction over): clean it if needed, back to the pool."""
        self.client = None
        self.last_used = self.pool.now
        self.resume_reading()  # the client may have left while it held this server's reads back
        statements = self.statements
        if statements.opened or statements.aborted:
            self._settle_statements()
        pool = self.pool
        if (
            self.cancel_sent  # a cancel may still be in flight toward this backend: never lend it again
            or self.state != codes.SERVER_ACTIVE
            # The client left in the middle of a request, a COPY or a message: close, do not drain.
            or not self.ledger.is_clean()
            or self._carry
            or self._skip
        ):
            self.close()
        elif self.ledger.tx_status == codes.TX_IDLE and not (
            self.need_reset_all
            or self.need_close_all
            or self.need_unlisten
            or self.need_deallocate_all
            or self.need_reset_query
            or self.check_leftovers
        ):
            pool.checkin(self)
        else:
            cleanup = self.cleanup_for_release()
            self.check_leftovers = False
            if cleanup is not None:
                self.start_cleanup(cleanup)
            else:
                pool.checkin(self)

    def cleanup_for_release(self) -> Cleanup | None:
        """What this session needs before another client may have it (reset.py decides), or None."""
        return ResetPolicy.from_settings(self.pool.settings).cleanup(
            in_transaction=self.ledger.tx_status != codes.TX_IDLE,
            need_close_all=self.need_close_all,
            need_unlisten=self.need_unlisten,
            need_deallocate_all=self.need_deallocate_all,
            need_reset_all=self.need_reset_all,
            suspect_leftovers=self.check_leftovers,
        )

    def start_cleanup(self, cleanup: Cleanup) -> None:
        """Send the cleanup's queries; the server returns to the pool when the last one ends clean
        (`_on_cleanup_data`), and is closed otherwise."""
        assert self.transport is not None
        self.state = codes.SERVER_CLEANUP
        self._carry = b""
        self._cleanup_buf = MessageBuffer()
        self._cleanup = cleanup
        self.write(cleanup.request())

    def _on_cleanup_data(self, data: bytes) -> None:
        cleanup = self._cleanup
        if cleanup is None:  # never: a cleanup is started before this state is entered
            self.close()
            return
        buf: MessageBuffer = self._cleanup_buf
        buf.feed(data)
        for kind, body in buf.messages():
            if kind == 83:
                name, value = messages.parse_parameter_status(body)
                self.params[name] = value
                if name in SYNCABLE_REPORTED:
                    # e.g. ROLLBACK undid a set_config(), DISCARD ALL reset a SET: the token must not keep naming
                    # the undone value.
                    self.refresh_param_token()
                continue
            if kind == 90:
                self.ledger.cleaned(body[0])  # the ledger keeps the transaction status
            outcome = cleanup.feed(kind, body)
            if outcome == PENDING:
                continue
            self._cleanup = None
            if outcome == CLOSE:
                if cleanup.failure:
                    log.warning("cleanup failed on server pid=%s: %s; closing it", self.pid, cleanup.failure)
                else:
                    log.info(
                        "server pid=%s: closing it instead of lending it again: the client left %s behind",
                        self.pid,
                        ", ".join(cleanup.leftovers),
                    )
                self.close()
                return
            self.need_reset_all = self.need_close_all = self.need_unlisten = False
            self.need_deallocate_all = False
            if cleanup.params_reset:
                self._forget_extra_params()  # RESET ALL / DISCARD ALL: what the pooler SET is gone
            if cleanup.statements_dropped:
                self.forget_statements()  # DEALLOCATE ALL / DISCARD ALL
            self.state = codes.SERVER_IDLE
            self.pool.checkin(self)
            return

    # ------------------------------------------------------------- flow control

    def close(self) -> None:
        if self.transport is not None and self.state != codes.SERVER_CLOSED:
            try:
                self.write(messages.TERMINATE)
            except Exception:
                pass
            self.close_transport()

    def abort(self) -> None:
        self.abort_transport()

    # ----------------------------------------------------------------- cancel

    async def send_cancel(self) -> None:
        """Ask PostgreSQL (on a new connection, as the protocol requires) to cancel this backend's query."""
        self.cancel_sent = True
        settings = self.pool.settings
        try:
            if settings.server_host.startswith("/"):
                path = f"{settings.server_host}/.s.PGSQL.{settings.server_port}"
                reader, writer = await asyncio.open_unix_connection(path)
            elif self.tls:  # over TLS as the session itself (inventory 7.2)
                reader, writer = await open_cancel_connection(settings.server_host, settings.server_port, settings)
            else:
                reader, writer = await asyncio.open_connection(settings.server_host, settings.server_port)
            writer.write(messages.cancel_request(self.pid, self.secret))
            await writer.drain()
            await asyncio.wait_for(reader.read(), settings.connect_timeout)
            writer.close()
        except (TimeoutError, OSError, ValueError) as exc:
            log.warning("cancel request for server pid=%s failed: %s", self.pid, exc)


def login_error(exc: BaseException) -> PoolerError:
    """Map a failed server login to what the client should see."""
    if isinstance(exc, ServerError | PoolerError):
        return exc
    if isinstance(exc, asyncio.TimeoutError):
        return PoolerError(CONNECTION_FAILURE, "timeout while connecting to the server (connect_timeout)")
    return PoolerError(CONNECTION_FAILURE, f"could not connect to the server: {exc}")
