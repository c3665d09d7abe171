"""ServerLedger driven with message kinds and statuses only: no sockets, no Application.

Each test plays one exchange the way the forwarding loops report it (client side: `sent_*`, `owe`, `client_cut`;
server side: `ready`, `complete`, `copy_started`, ...) and checks what the ledger then says about release
(`idle`) and cleanliness (`is_clean`).
"""

from __future__ import annotations

from pg_doorman import codes
from pg_doorman.ledger import ServerLedger
from pg_doorman.prepared import Expect

IDLE, IN_BLOCK, FAILED = codes.TX_IDLE, codes.TX_IN_BLOCK, codes.TX_FAILED


def test_new_ledger_is_clean_and_idle() -> None:
    ledger = ServerLedger()
    assert ledger.is_clean()
    assert ledger.idle()


def test_simple_query_released_on_its_ready_for_query() -> None:
    ledger = ServerLedger()
    ledger.sent_query()
    assert not ledger.idle() and not ledger.is_clean()
    assert ledger.ready(IDLE) is True
    assert ledger.is_clean()


def test_transaction_block_keeps_the_server() -> None:
    ledger = ServerLedger()
    ledger.sent_query()
    assert ledger.ready(IN_BLOCK) is False  # BEGIN: inside a transaction
    ledger.sent_query()
    assert ledger.ready(FAILED) is False  # failed transaction
    ledger.sent_query()
    assert ledger.ready(IDLE) is True  # ROLLBACK


def test_pipelined_queries_release_after_the_last() -> None:
    ledger = ServerLedger()
    ledger.sent_query()
    ledger.sent_query()
    assert ledger.ready(IDLE) is False
    assert ledger.ready(IDLE) is True


def test_unsynced_pipeline_is_not_idle() -> None:
    ledger = ServerLedger()
    ledger.sent_extended()  # Parse
    ledger.sent_extended()  # Bind
    ledger.sent_execute()
    assert not ledger.is_clean()
    assert ledger.sent_sync() is True
    assert ledger.ready(IDLE) is True


def test_message_cut_in_the_middle_is_never_clean() -> None:
    """A client that left after part of a message (CopyData outside COPY owes no reply): PostgreSQL still waits
    for the rest, so the server must not go to the next client."""
    ledger = ServerLedger()
    ledger.client_cut(True)
    assert not ledger.is_clean()
    assert not ledger.idle()
    ledger.client_cut(False)
    assert ledger.is_clean()


def test_partial_message_holds_release_even_after_ready_for_query() -> None:
    ledger = ServerLedger()
    ledger.sent_query()
    ledger.client_cut(True)  # a second message follows, cut short
    assert ledger.ready(IDLE) is False
    ledger.client_cut(False)
    assert ledger.idle()


def test_copy_in_ignores_syncs_sent_before_copy_done() -> None:
    """Extended-protocol COPY FROM STDIN with the Sync sent right behind Execute (as drivers do): PostgreSQL
    ignores that Sync, so only the Sync after CopyDone is answered."""
    ledger = ServerLedger()
    ledger.sent_extended()  # Parse/Bind
    ledger.sent_execute()
    assert ledger.sent_sync() is True  # counted for now: the COPY has not started yet
    ledger.copy_started(ord("G"))  # CopyInResponse: that Sync is ignored after all
    assert ledger.pending_z == 0
    assert ledger.copy_in_ignores_sync()
    assert ledger.sent_sync() is False  # inside COPY IN: no answer
    ledger.sent_copy_end()
    assert ledger.sent_sync() is True
    ledger.copy_ended()  # CommandComplete
    assert ledger.ready(IDLE) is True


def test_copy_out_does_not_discount_syncs() -> None:
    ledger = ServerLedger()
    ledger.sent_query()
    ledger.copy_started(ord("H"))
    assert not ledger.is_clean()
    ledger.copy_ended()
    assert ledger.ready(IDLE) is True


def test_client_left_during_copy_is_not_clean() -> None:
    ledger = ServerLedger()
    ledger.sent_query()
    ledger.copy_started(ord("G"))
    assert not ledger.is_clean()


def test_injected_query_is_swallowed_first() -> None:
    ledger = ServerLedger()
    ledger.inject()
    ledger.sent_query()
    assert not ledger.is_clean()
    ledger.swallowed_ready(IDLE)
    assert ledger.swallow == 0
    assert ledger.ready(IDLE) is True


def test_hidden_parse_response_is_cut_and_synthetic_answers_follow() -> None:
    ledger = ServerLedger()
    ledger.owe(Expect(codes.PARSE, hide=True))  # Parse the pooler inserted
    ledger.owe(Expect(codes.SYNTHETIC, data=b"1\x00\x00\x00\x04"))  # the client's Parse, answered by the pooler
    ledger.owe(Expect(codes.BIND))
    assert ledger.complete(codes.PARSE) == codes.HIDE | codes.SYNTHETIC_NEXT
    assert ledger.take_synthetic() == [b"1\x00\x00\x00\x04"]
    assert ledger.complete(codes.BIND) == 0
    assert ledger.is_clean()


def test_response_that_matches_nothing_changes_nothing() -> None:
    ledger = ServerLedger()
    ledger.owe(Expect(codes.BIND))
    assert ledger.complete(codes.DESCRIBE) == 0
    assert len(ledger.expect) == 1


def test_query_entry_completes_on_ready_for_query() -> None:
    ledger = ServerLedger()
    ledger.owe(Expect(codes.QUERY))
    ledger.sent_query()
    assert ledger.complete(codes.SYNC) == 0
    assert ledger.ready(IDLE) is True


def test_error_fails_requests_up_to_sync_and_skips() -> None:
    ledger = ServerLedger()
    parse, bind, execute, sync = Expect(codes.PARSE), Expect(codes.BIND), Expect(codes.EXECUTE), Expect(codes.SYNC)
    for entry in (parse, bind, execute):
        ledger.owe(entry)
    failed = ledger.failed_requests()
    assert failed == [parse, bind, execute]
    assert ledger.skipping  # no Sync queued yet: PostgreSQL ignores what comes until one
    assert ledger.sent_sync() is True
    assert not ledger.skipping
    ledger.owe(sync)
    assert ledger.complete(codes.SYNC) == 0
    assert ledger.ready(IDLE) is True


def test_error_inside_a_simple_query_keeps_its_entry() -> None:
    ledger = ServerLedger()
    query = Expect(codes.QUERY)
    ledger.owe(query)
    ledger.sent_query()
    assert ledger.failed_requests() == [query]
    assert list(ledger.expect) == [query]  # its ReadyForQuery is still due
    assert ledger.complete(codes.SYNC) == 0
    assert ledger.ready(IDLE) is True


def test_flush_answers_synthetic_entries_at_once() -> None:
    ledger = ServerLedger()
    ledger.owe(Expect(codes.SYNTHETIC, data=b"a"))
    ledger.owe(Expect(codes.SYNTHETIC, data=b"b"))
    assert ledger.owes_only_synthetic()
    assert ledger.flush_synthetic() == b"ab"
    assert ledger.is_clean()


def test_hidden_query_reply_then_synthetic() -> None:
    ledger = ServerLedger()
    ledger.owe(Expect(codes.HIDDEN_QUERY))
    ledger.owe(Expect(codes.SYNTHETIC, data=b"x"))
    assert ledger.hidden_query_first()
    assert ledger.hidden_query_ready(IDLE) is True
    assert ledger.take_synthetic() == [b"x"]
    assert ledger.is_clean()


def test_retry_of_a_stale_plan_happens_once() -> None:
    ledger = ServerLedger()
    retry_sync = Expect(codes.SYNC, hide=True)
    bind, execute, sync = Expect(codes.BIND), Expect(codes.EXECUTE), Expect(codes.SYNC)
    for entry in (bind, execute, sync):
        ledger.owe(entry)
    ledger.replayable(b"batch")
    assert ledger.start_retry(retry_sync) == [bind, execute]
    assert not ledger.is_clean()  # the retry is under way
    assert ledger.take_retry(retry_sync) is None  # its hidden ReadyForQuery has not come yet
    assert ledger.complete(codes.SYNC) == codes.HIDE
    assert ledger.take_retry(retry_sync) == b"batch"
    assert ledger.take_retry(retry_sync) is None


def test_cleanup_ready_reports_idle() -> None:
    ledger = ServerLedger()
    assert ledger.cleaned(IDLE) is True
    assert ledger.cleaned(IN_BLOCK) is False


def test_lent_starts_a_fresh_account() -> None:
    ledger = ServerLedger()
    ledger.sent_extended()
    ledger.lent()
    assert ledger.is_clean()
