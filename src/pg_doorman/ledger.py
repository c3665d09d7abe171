"""What a server connection still owes its client, and whether it may go back to the pool.

Every rule that decides when a server is released, and whether it is clean enough to lend to someone else, lives
here (the shape of h11's `_state.py`): nothing outside this class writes its fields. The client's forwarding loop
reports each message it passes to the server (`sent_*`, `owe`, `client_cut`), the server's forwarding loop reports
each message that matters from PostgreSQL (`ready`, `error`, `copy_started`, `complete`, ...), and both ask the
ledger what follows. It knows nothing of sockets, pools or which client holds the server, so its unit tests feed
it message kinds and statuses only (tests/unit/test_ledger.py).

What it tracks:

* ``pending_z``: ReadyForQuery messages still due (one per Query, FunctionCall, and Sync that PostgreSQL answers);
* ``unsynced``: extended-protocol messages were sent after the last Sync (PostgreSQL holds an open pipeline);
* ``skipping``: an ErrorResponse came and PostgreSQL ignores the client's messages up to the next Sync;
* COPY: ``in_copy`` (CopyIn/CopyOut/CopyBoth seen, not ended), ``copy_done_sent`` and ``syncs_after_execute``
  (PostgreSQL ignores Syncs that reach it during COPY IN, so they owe no ReadyForQuery);
* ``swallow``: queries the pooler injected whose replies, up to their ReadyForQuery, are cut from the stream;
* ``expect``: the queue of responses owed for requests sent or answered by the pooler (prepared statements,
  prepared.Expect; empty unless the pool remaps statements);
* ``tx_status``: the transaction status of the last ReadyForQuery;
* ``replay_source`` / ``retry``: a batch that may be sent again after a stale cached plan, and the retry under way;
* ``client_partial``: the client's last message reached PostgreSQL only in part. PostgreSQL then waits for the
  rest of it, and whoever's bytes come next would complete it: such a server is never clean.

`is_clean()` is what release asks before a server goes back to the pool; a server that is not clean is closed.
"""

from __future__ import annotations

from collections import deque

from pg_doorman import codes
from pg_doorman.prepared import Expect


class ServerLedger:
    """The request/response bookkeeping of one server connection (see the module docstring)."""

    __slots__ = (
        "client_partial",
        "copy_done_sent",
        "expect",
        "in_copy",
        "pending_z",
        "replay_source",
        "retry",
        "skipping",
        "swallow",
        "syncs_after_execute",
        "tx_status",
        "unsynced",
    )

    def __init__(self) -> None:
        self.pending_z = 0
        self.unsynced = False
        self.skipping = False
        self.in_copy = False
        self.copy_done_sent = False
        self.syncs_after_execute = 0
        self.swallow = 0
        self.expect: deque[Expect] = deque()
        self.tx_status = codes.TX_IDLE
        self.replay_source: bytes | None = None
        self.retry: bytes | None = None
        self.client_partial = False

    # ------------------------------------------------------------ questions

    def is_clean(self) -> bool:
        """Nothing is owed and nothing is half-sent: the server may be lent to another client as it is (after
        the session cleanup that its transaction status and session state call for)."""
        return not (
            self.pending_z > 0
            or self.unsynced
            or self.in_copy
            or self.swallow
            or self.expect
            or self.client_partial
            or self.retry is not None
        )

    def idle(self) -> bool:
        """Owes nothing and sits outside a transaction: in transaction mode the server goes back now."""
        return (
            self.pending_z <= 0
            and self.tx_status == codes.TX_IDLE
            and not self.unsynced
            and not self.expect
            and not self.client_partial
        )

    def copy_in_ignores_sync(self) -> bool:
        """A Sync sent now reaches PostgreSQL inside COPY IN, which ignores it (no ReadyForQuery for it)."""
        return self.in_copy and not self.copy_done_sent

    def owes_only_synthetic(self) -> bool:
        """Every answer still owed is one the pooler makes up itself (none is waiting for the server)."""
        for entry in self.expect:  # noqa: SIM110 - a plain loop: compiled, it needs no generator object
            if entry.code != codes.SYNTHETIC:
                return False
        return True

    def may_be_failed(self) -> bool:
        """PostgreSQL may be in a failed transaction when it reaches the next message: the last ReadyForQuery said
        so, or a Query or Sync is still in flight whose outcome may leave it so. (Within one batch nothing else can:
        an error there makes PostgreSQL skip the rest of the batch.)"""
        return self.tx_status == codes.TX_FAILED or self.pending_z > 0

    def hidden_query_first(self) -> bool:
        """The reply now coming is to a query the pooler inserted in the stream (dropped whole)."""
        expect = self.expect
        return bool(expect) and expect[0].code == codes.HIDDEN_QUERY

    def synthetic_first(self) -> bool:
        expect = self.expect
        return bool(expect) and expect[0].code == codes.SYNTHETIC

    def lone_query(self) -> bool:
        """Only one simple Query is owed, with nothing to undo: its reply needs no matching (the fast path)."""
        expect = self.expect
        if len(expect) != 1:
            return False
        head = expect[0]
        return head.code == codes.QUERY and head.undo is None

    # ------------------------------------------------------- client → server

    def lent(self) -> None:
        """The server starts serving a client (it was clean: nothing is owed)."""
        self.pending_z = 0
        self.unsynced = False

    def sent_query(self) -> None:
        """A Query or FunctionCall: one ReadyForQuery is due; COPY's ignored-Sync count starts over."""
        self.pending_z += 1
        self.syncs_after_execute = 0

    def sent_extended(self) -> None:
        """Parse, Bind, Describe, Close or Flush: a pipeline is open until the next Sync."""
        self.unsynced = True

    def sent_execute(self) -> None:
        """Execute: may start a COPY IN, whose Syncs up to CopyDone/CopyFail PostgreSQL ignores."""
        self.unsynced = True
        self.syncs_after_execute = 0
        self.copy_done_sent = False

    def sent_sync(self) -> bool:
        """Sync: ends the pipeline and the skip after an error. True when PostgreSQL will answer it (not inside
        COPY IN): one more ReadyForQuery is due."""
        self.unsynced = False
        self.skipping = False
        if self.in_copy and not self.copy_done_sent:
            return False
        self.pending_z += 1
        if not self.copy_done_sent:
            self.syncs_after_execute += 1
        return True

    def sent_copy_end(self) -> None:
        """CopyDone or CopyFail."""
        self.copy_done_sent = True

    def owe(self, entry: Expect) -> None:
        """A response is due for a request sent (or answered by the pooler) in this position."""
        self.expect.append(entry)

    def client_cut(self, partial: bool) -> None:
        """The client's bytes so far end inside a message (``partial``) or on a message boundary."""
        self.client_partial = partial

    def replayable(self, source: bytes | None) -> None:
        """The batch just synced may be sent again if its first Bind meets a stale plan (None: it may not)."""
        self.replay_source = source

    def inject(self) -> None:
        """The pooler sent a query of its own; its reply up to ReadyForQuery is hidden."""
        self.swallow += 1

    def flush_synthetic(self) -> bytes:
        """All owed answers are the pooler's own and the client flushed: they are due now."""
        data = b"".join([entry.data for entry in self.expect])
        self.expect.clear()
        return data

    # ------------------------------------------------------- server → client

    def swallowed_ready(self, status: int) -> None:
        """The ReadyForQuery ending the reply to an injected query."""
        self.tx_status = status
        self.swallow -= 1

    def ready(self, status: int) -> bool:
        """ReadyForQuery for the client; True when the server owes nothing more (``idle()``)."""
        self.tx_status = status
        self.pending_z -= 1
        return self.idle()

    def ready_for_lone_query(self, status: int) -> bool:
        """`ready` on the fast path, where at most one simple Query is queued (see `lone_query`)."""
        expect = self.expect
        if expect:
            expect.popleft()
        return self.ready(status)

    def cleaned(self, status: int) -> bool:
        """ReadyForQuery of the pooler's cleanup between clients; True when the session is idle again."""
        self.tx_status = status
        return status == codes.TX_IDLE

    def hidden_query_ready(self, status: int) -> bool:
        """ReadyForQuery ending the reply to a query the pooler inserted; True when answers the pooler owes
        follow at once (`take_synthetic`)."""
        self.tx_status = status
        expect = self.expect
        expect.popleft()
        return bool(expect) and expect[0].code == codes.SYNTHETIC

    def copy_started(self, kind: int) -> None:
        """CopyInResponse / CopyOutResponse / CopyBothResponse. For COPY IN the Syncs the client sent after its
        Execute (and before CopyDone) are ignored by PostgreSQL: they owe no ReadyForQuery."""
        self.in_copy = True
        if kind != 71:  # 'G' CopyInResponse
            return
        ignored = self.syncs_after_execute
        self.syncs_after_execute = 0
        if ignored <= 0:
            return
        self.pending_z -= ignored
        expect = self.expect
        if expect:
            kept: deque[Expect] = deque()
            for entry in expect:
                if ignored and entry.code == codes.SYNC and kept:
                    ignored -= 1
                    continue
                kept.append(entry)
            expect.clear()
            expect.extend(kept)

    def copy_ended(self) -> None:
        """CommandComplete or ErrorResponse: any COPY is over."""
        self.in_copy = False

    def session_ended(self) -> None:
        """An ErrorResponse with severity FATAL or PANIC: PostgreSQL ends the session after it and answers
        nothing more. One more ReadyForQuery is counted as due, one that never comes, so the server is neither
        idle nor clean from here on: a client leaving before the server's socket closes cannot send it back to
        the pool (`is_clean` needs no field of its own for this rare case)."""
        self.pending_z += 1

    def complete(self, code: int) -> int:
        """A response that completes a request of kind ``code`` (prepared.COMPLETES); returns codes.HIDE and
        codes.SYNTHETIC_NEXT bits for the forwarding loop."""
        expect = self.expect
        if not expect:
            return 0
        head = expect[0]
        if head.code != code and not (head.code == codes.QUERY and code == codes.SYNC):
            return 0
        expect.popleft()
        flags = codes.HIDE if head.hide else 0
        if expect:
            following = expect[0].code
            if following == codes.SYNTHETIC or following == codes.HIDDEN_QUERY:
                flags |= codes.SYNTHETIC_NEXT
        return flags

    def take_synthetic(self) -> list[bytes]:
        """The answers the pooler owes at the head of the queue, taken off it."""
        expect = self.expect
        out: list[bytes] = []
        while expect and expect[0].code == codes.SYNTHETIC:
            out.append(expect.popleft().data)
        return out

    def head(self) -> Expect | None:
        expect = self.expect
        return expect[0] if expect else None

    def failed_requests(self) -> list[Expect]:
        """An ErrorResponse for the client: the requests PostgreSQL rejected or will skip, taken off the queue
        (the caller undoes what the pooler assumed of them). A simple Query stays queued: its ReadyForQuery is
        still due. After an extended-protocol error PostgreSQL skips to the next Sync."""
        self.in_copy = False
        expect = self.expect
        if not expect:
            return []
        if expect[0].code == codes.QUERY:
            return [expect[0]]
        failed = [expect.popleft()]
        while expect and expect[0].code != codes.SYNC:
            failed.append(expect.popleft())
        if not expect:
            self.skipping = True
        return failed

    def hidden_query_failed(self) -> Expect:
        """An ErrorResponse inside the reply to a query the pooler inserted (it stays queued until its
        ReadyForQuery)."""
        return self.expect[0]

    def start_retry(self, retry_sync: Expect) -> list[Expect]:
        """The batch's first Bind met a stale plan: it will be replayed once. The requests up to its Sync are
        failed (returned for undo) and the Sync's ReadyForQuery is hidden (``retry_sync``)."""
        self.retry = self.replay_source
        self.in_copy = False
        expect = self.expect
        failed: list[Expect] = []
        while expect and expect[0].code != codes.SYNC:
            failed.append(expect.popleft())
        if expect:
            expect[0] = retry_sync
        return failed

    def take_retry(self, retry_sync: Expect) -> bytes | None:
        """The hidden ReadyForQuery of a failed batch has come: the batch to send again (once), else None."""
        source = self.retry
        if source is None or retry_sync in self.expect:  # Expect compares by identity
            return None
        self.retry = None
        return source
