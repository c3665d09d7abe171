"""What a server session needs before it is lent to another client: the SQL that resets it, or the verdict that
it must be closed instead.

The decision is sans-I/O. `ResetPolicy` (from a pool's settings) turns what the session did — a transaction left
open, the dirty flags armed by CommandComplete tags, a suspicion of leftovers — into a `Cleanup`: the Query
messages to send at release. The server connection writes them and feeds every reply message to
`Cleanup.feed`, which says when the session is clean (`DONE`), or that the server must be closed (`CLOSE`, with
the reason in `failure` or `leftovers`). The server connection only does the I/O and its own bookkeeping.

Three layers, cheapest first:

* **Targeted cleanup** (transaction mode, and session mode without a reset query): ``ROLLBACK`` if the client
  left inside a transaction; ``CLOSE ALL`` / ``UNLISTEN *`` / ``DEALLOCATE ALL`` / ``SET SESSION AUTHORIZATION
  DEFAULT;RESET ALL`` only when a ``DECLARE``, ``LISTEN``, untracked ``PREPARE`` or ``SET``/``RESET`` tag made
  them needed (``cleanup_server_connections``).
* **server_reset_query** (PgBouncer's setting, default ``DISCARD ALL``): run at every release in session mode —
  a session can leave anything behind (protocol-level prepared statements, temporary tables, advisory locks)
  and no tag reveals all of it — and in transaction mode too with ``server_reset_query_always``. ``DISCARD
  ALL`` covers everything the targeted cleanup does, so then the targeted part is skipped. It cannot run inside
  a transaction block (nor in a multi-statement Query), so it is always its own Query message, after the
  ``ROLLBACK``. The original pg_doorman has no such setting (inventory §3.8); we follow PgBouncer.
* **Leftover check** (transaction mode only): state that no transaction-mode cleanup may remove, because the
  client believes it still has it — a session-level advisory lock, a temporary table, and, when the targeted
  cleanup is off, a LISTEN or a WITH HOLD cursor. The next client would inherit it (another client's lock
  held, ``42P07`` on its own ``CREATE TEMP TABLE``), so such a server is closed rather than lent again. The
  check is one catalog query, run only after a cheap signal during the transaction: a ``CREATE ...`` tag (temp
  tables, views, sequences; ``ON COMMIT DROP`` ones are gone at commit, and the check then sees none), or
  `ServerConnection.check_leftovers` set by the client side for statement text that mentions advisory locks.
  Ordinary transactions never pay for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pg_doorman.protocol import messages

if TYPE_CHECKING:
    from pg_doorman.config import PoolSettings

DISCARD_ALL = "DISCARD ALL"

# One row of booleans, one per kind of leftover (LEFTOVER_KINDS, same order). Evaluated in its own implicit
# transaction after the cleanup: the client's transaction-level advisory locks and portals are gone by then, so
# whatever it finds outlives transactions. pg_my_temp_schema() is 0 until the session first created a temporary
# object; the CASE keeps the catalog scans for sessions that did.
LEFTOVER_CHECK = (
    "SELECT"
    " EXISTS (SELECT 1 FROM pg_catalog.pg_locks"
    " WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid()),"
    " CASE WHEN pg_catalog.pg_my_temp_schema() = 0 THEN false ELSE"
    " EXISTS (SELECT 1 FROM pg_catalog.pg_class WHERE relnamespace = pg_catalog.pg_my_temp_schema())"
    " OR EXISTS (SELECT 1 FROM pg_catalog.pg_type WHERE typnamespace = pg_catalog.pg_my_temp_schema())"
    " OR EXISTS (SELECT 1 FROM pg_catalog.pg_proc WHERE pronamespace = pg_catalog.pg_my_temp_schema()) END,"
    " EXISTS (SELECT 1 FROM pg_catalog.pg_cursors WHERE is_holdable),"
    " EXISTS (SELECT 1 FROM pg_catalog.pg_listening_channels())"
)
LEFTOVER_KINDS = ("session-level advisory lock", "temporary objects", "WITH HOLD cursor", "LISTEN")

# Cleanup.feed outcomes.
PENDING = 0
DONE = 1
CLOSE = 2


def is_discard_all(sql: str) -> bool:
    """``sql`` is ``DISCARD ALL`` (any case, spacing, trailing semicolons): a reset that covers everything."""
    return " ".join(sql.strip().rstrip(";").split()).upper() == DISCARD_ALL


@dataclass(frozen=True, slots=True)
class ResetPolicy:
    """How the servers of one pool are reset at release; built once from the pool's settings."""

    reset_query: str
    """The reset query to run at release ("" = none)."""
    reset_on_release: bool
    """``reset_query`` runs at every release: session mode, or ``server_reset_query_always``."""
    targeted: bool
    """``cleanup_server_connections``: the targeted statements run when their flags are armed."""
    check_leftovers: bool
    """Transaction mode: a suspicion of leftovers is checked, and a server that has any is closed."""
    covers_all: bool
    """The reset query is DISCARD ALL and runs at every release: nothing else is needed."""

    @classmethod
    def from_settings(cls, settings: PoolSettings) -> ResetPolicy:
        """The policy of a pool's settings (shared: servers ask for it at each release that needs a cleanup)."""
        key = (
            settings.pool_mode == "transaction",
            settings.server_reset_query,
            settings.server_reset_query_always,
            settings.cleanup_server_connections,
        )
        policy = _POLICIES.get(key)
        if policy is None:
            policy = _POLICIES[key] = cls.build(
                transaction_mode=key[0], reset_query=key[1], reset_always=key[2], targeted=key[3]
            )
        return policy

    @classmethod
    def build(cls, *, transaction_mode: bool, reset_query: str, reset_always: bool, targeted: bool) -> ResetPolicy:
        query = reset_query.strip()
        on_release = bool(query) and (reset_always or not transaction_mode)
        return cls(
            reset_query=query if on_release else "",
            reset_on_release=on_release,
            targeted=targeted,
            check_leftovers=transaction_mode,
            covers_all=on_release and is_discard_all(query),
        )

    def cleanup(
        self,
        *,
        in_transaction: bool,
        need_close_all: bool,
        need_unlisten: bool,
        need_deallocate_all: bool,
        need_reset_all: bool,
        suspect_leftovers: bool,
    ) -> Cleanup | None:
        """What to run at release, or None when the server can go back to the pool as it is.

        ``suspect_leftovers``: a signal seen during the transaction (a ``CREATE`` tag, advisory-lock text).
        """
        queries: list[str] = []
        first = ["ROLLBACK"] if in_transaction else []
        if self.targeted and not self.covers_all:
            if need_close_all:
                first.append("CLOSE ALL")
            if need_unlisten:
                first.append("UNLISTEN *")
            if need_deallocate_all:
                first.append("DEALLOCATE ALL")
            if need_reset_all:
                # RESET ALL leaves role and session_authorization alone (GUC_NO_RESET_ALL): a client's SET ROLE
                # would follow the server to the next client. DEFAULT is the logged-in user: allowed to anyone.
                first.append("SET SESSION AUTHORIZATION DEFAULT")
                first.append("RESET ALL")
        if first:
            queries.append(";".join(first))
        if self.reset_on_release:
            queries.append(self.reset_query)
        # Without the targeted cleanup a LISTEN or a cursor stays: look whether it is still there.
        uncovered = not self.targeted and (need_unlisten or need_close_all)
        check = self.check_leftovers and not self.covers_all and (suspect_leftovers or uncovered)
        if check:
            queries.append(LEFTOVER_CHECK)
        if not queries:
            return None
        return Cleanup(tuple(queries), check)


# Policies by (transaction mode, reset query, reset always, targeted cleanup): a handful per configuration.
_POLICIES: dict[tuple[bool, str, bool, bool], ResetPolicy] = {}


class Cleanup:
    """One run of release queries on one server, fed the server's reply messages in order.

    Every query must end with ReadyForQuery 'I' and without an ErrorResponse or a COPY; otherwise the session
    is in a state nobody knows and the server is closed (as PgBouncer closes a server whose reset query fails).
    The tags of what ran say what bookkeeping the server must drop: prepared statements after ``DEALLOCATE
    ALL`` / ``DISCARD ALL``, the parameters it set after ``RESET`` / ``DISCARD ALL`` (a custom reset query's
    ``RESET name`` is taken as a ``RESET ALL``: forgetting a parameter only costs a ``SET`` later).
    """

    __slots__ = ("_done", "checks", "failure", "leftovers", "params_reset", "queries", "statements_dropped")

    def __init__(self, queries: tuple[str, ...], checks: bool) -> None:
        self.queries = queries
        self.checks = checks  # the last query is LEFTOVER_CHECK
        self.failure = ""  # why the server must be closed, when a query failed
        self.leftovers: tuple[str, ...] = ()  # what the check found (LEFTOVER_KINDS)
        self.statements_dropped = False
        self.params_reset = False
        self._done = 0  # queries answered (ReadyForQuery seen)

    def request(self) -> bytes:
        """The Query messages, in one write: PostgreSQL answers them in order, one ReadyForQuery each."""
        return b"".join(messages.query(sql) for sql in self.queries)

    @property
    def current(self) -> str:
        """The query whose reply is being read."""
        return self.queries[min(self._done, len(self.queries) - 1)]

    def feed(self, kind: int, body: bytes) -> int:
        """One reply message (type byte, body): PENDING, DONE (clean: lend it again) or CLOSE."""
        if kind == 90:  # 'Z' ReadyForQuery
            self._done += 1
            if body[:1] != b"I":
                self.failure = f"{self._summary()} left the session inside a transaction"
                return CLOSE
            if self._done < len(self.queries):
                return PENDING
            return CLOSE if self.leftovers else DONE
        if kind == 69:  # 'E' ErrorResponse
            error = messages.parse_error_fields(body).get("M", "error")
            self.failure = f"{self._summary()} failed: {error}"
            return CLOSE
        if kind in (71, 72, 87):  # 'G' 'H' 'W': a COPY would wait for data nobody sends
            self.failure = f"{self._summary()} started a COPY"
            return CLOSE
        if kind == 67:  # 'C' CommandComplete
            tag = messages.parse_command_tag(body)
            if tag == b"DISCARD ALL":
                self.statements_dropped = self.params_reset = True
            elif tag == b"DEALLOCATE ALL":
                self.statements_dropped = True
            elif tag == b"RESET":
                self.params_reset = True
        elif kind == 68 and self.checks and self._done == len(self.queries) - 1:  # 'D' the check's row
            self.leftovers = leftovers_in_row(body)
        return PENDING

    def _summary(self) -> str:
        sql = self.current
        if sql == LEFTOVER_CHECK:
            return "the leftover check"
        return repr(sql if len(sql) <= 80 else sql[:77] + "...")


def leftovers_in_row(body: bytes) -> tuple[str, ...]:
    """The kinds of leftovers a DataRow of LEFTOVER_CHECK reports (text format: 't' for true)."""
    found = []
    count = int.from_bytes(body[:2], "big")
    pos = 2
    for index in range(min(count, len(LEFTOVER_KINDS))):
        length = int.from_bytes(body[pos : pos + 4], "big", signed=True)
        pos += 4
        if length > 0:
            if body[pos : pos + length] == b"t":
                found.append(LEFTOVER_KINDS[index])
            pos += length
    return tuple(found)
