"""The release decision (reset.py) and how a server connection carries it out, without sockets: which queries a
session needs at release in each mode, how their replies decide between lending the server again and closing it,
and what bookkeeping a server drops after DISCARD ALL / DEALLOCATE ALL / RESET."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from test_forwarding import pair_in

from pg_doorman import codes
from pg_doorman.app import Application
from pg_doorman.client import ClientConnection
from pg_doorman.config import ConfigError, load_config
from pg_doorman.protocol import messages
from pg_doorman.protocol.framing import MessageBuffer
from pg_doorman.reset import (
    CLOSE,
    DONE,
    LEFTOVER_CHECK,
    LEFTOVER_KINDS,
    PENDING,
    Cleanup,
    ResetPolicy,
    is_discard_all,
    leftovers_in_row,
)
from pg_doorman.server import ServerConnection

RESET_SETTINGS = "SET SESSION AUTHORIZATION DEFAULT;RESET ALL"
NO_FLAGS = {
    "in_transaction": False,
    "need_close_all": False,
    "need_unlisten": False,
    "need_deallocate_all": False,
    "need_reset_all": False,
    "suspect_leftovers": False,
}


def policy(
    *, transaction_mode: bool = True, reset_query: str = "DISCARD ALL", always: bool = False, targeted: bool = True
) -> ResetPolicy:
    return ResetPolicy.build(
        transaction_mode=transaction_mode, reset_query=reset_query, reset_always=always, targeted=targeted
    )


def queries(p: ResetPolicy, **flags: bool) -> tuple[str, ...]:
    cleanup = p.cleanup(**{**NO_FLAGS, **flags})
    return () if cleanup is None else cleanup.queries


def check_row(*values: bool | None) -> bytes:
    """The body of a DataRow of LEFTOVER_CHECK (text format)."""
    parts = [len(values).to_bytes(2, "big")]
    for value in values:
        if value is None:
            parts.append((-1).to_bytes(4, "big", signed=True))
        else:
            parts.append((1).to_bytes(4, "big") + (b"t" if value else b"f"))
    return b"".join(parts)


def error_body(text: str) -> bytes:
    return messages.error_response("42601", text, severity="ERROR")[5:]


def tag_body(tag: str) -> bytes:
    return messages.command_complete(tag)[5:]


# ---------------------------------------------------------------- the policy


def test_transaction_mode_clean_session_needs_nothing() -> None:
    assert queries(policy()) == ()


def test_transaction_mode_targeted_cleanup_in_one_query() -> None:
    got = queries(
        policy(),
        in_transaction=True,
        need_close_all=True,
        need_unlisten=True,
        need_deallocate_all=True,
        need_reset_all=True,
    )
    assert got == ("ROLLBACK;CLOSE ALL;UNLISTEN *;DEALLOCATE ALL;SET SESSION AUTHORIZATION DEFAULT;RESET ALL",)


def test_targeted_cleanup_off_keeps_only_the_rollback() -> None:
    assert queries(policy(targeted=False), in_transaction=True, need_reset_all=True) == ("ROLLBACK",)


def test_session_mode_resets_at_every_release() -> None:
    p = policy(transaction_mode=False)
    assert p.reset_on_release and p.covers_all
    assert queries(p) == ("DISCARD ALL",)
    # DISCARD ALL covers the targeted statements; it cannot run in a transaction block, hence its own Query.
    assert queries(p, in_transaction=True, need_reset_all=True, need_unlisten=True) == ("ROLLBACK", "DISCARD ALL")
    # Session mode has no leftover check: the reset query is the policy.
    assert queries(p, suspect_leftovers=True) == ("DISCARD ALL",)


def test_custom_reset_query_runs_after_the_targeted_cleanup() -> None:
    p = policy(transaction_mode=False, reset_query="  SELECT pg_advisory_unlock_all()  ")
    assert not p.covers_all
    assert queries(p) == ("SELECT pg_advisory_unlock_all()",)
    assert queries(p, need_reset_all=True) == (RESET_SETTINGS, "SELECT pg_advisory_unlock_all()")


@pytest.mark.parametrize("empty", ["", "   "])
def test_empty_reset_query_disables_it(empty: str) -> None:
    p = policy(transaction_mode=False, reset_query=empty)
    assert not p.reset_on_release
    assert queries(p) == ()
    assert queries(p, need_reset_all=True) == (RESET_SETTINGS,)


def test_transaction_mode_runs_the_reset_query_only_when_always() -> None:
    assert not policy().reset_on_release
    p = policy(always=True)
    assert p.reset_on_release and queries(p) == ("DISCARD ALL",)
    # DISCARD ALL drops temporary tables and advisory locks: no check needed.
    assert queries(p, suspect_leftovers=True) == ("DISCARD ALL",)
    custom = policy(always=True, reset_query="RESET ALL")
    assert queries(custom, suspect_leftovers=True) == ("RESET ALL", LEFTOVER_CHECK)


def test_leftover_check_only_after_a_signal() -> None:
    assert queries(policy(), suspect_leftovers=True) == (LEFTOVER_CHECK,)
    assert queries(policy(), in_transaction=True, suspect_leftovers=True) == ("ROLLBACK", LEFTOVER_CHECK)
    cleanup = policy().cleanup(**{**NO_FLAGS, "suspect_leftovers": True})
    assert cleanup is not None and cleanup.checks


def test_listen_and_cursors_are_checked_when_the_cleanup_would_not_cover_them() -> None:
    assert queries(policy(), need_unlisten=True) == ("UNLISTEN *",)
    assert queries(policy(targeted=False), need_unlisten=True) == (LEFTOVER_CHECK,)
    assert queries(policy(targeted=False), need_close_all=True) == (LEFTOVER_CHECK,)
    assert queries(policy(targeted=False), need_reset_all=True) == ()


@pytest.mark.parametrize("sql", ["DISCARD ALL", "discard all;", "  Discard\n  ALL ; "])
def test_discard_all_spellings(sql: str) -> None:
    assert is_discard_all(sql)


def test_other_queries_are_not_discard_all() -> None:
    assert not is_discard_all("DISCARD TEMP")
    assert not is_discard_all("DISCARD ALL; SELECT 1")


def test_policy_from_settings_is_shared(tmp_path: Path) -> None:
    app = make_app(tmp_path, pool="pool_mode: session")
    settings = app.registry.pools[("db", "u")].settings
    assert ResetPolicy.from_settings(settings) is ResetPolicy.from_settings(settings)


# ---------------------------------------------------------------- one cleanup run


def test_cleanup_done_after_every_ready_for_query() -> None:
    run = Cleanup(("ROLLBACK", "DISCARD ALL"), checks=False)
    assert run.request() == messages.query("ROLLBACK") + messages.query("DISCARD ALL")
    assert run.feed(67, tag_body("ROLLBACK")) == PENDING
    assert run.feed(90, b"I") == PENDING
    assert run.feed(67, tag_body("DISCARD ALL")) == PENDING
    assert run.feed(90, b"I") == DONE
    assert run.statements_dropped and run.params_reset


@pytest.mark.parametrize(
    ("tag", "dropped", "reset"),
    [("DEALLOCATE ALL", True, False), ("RESET", False, True), ("CLOSE CURSOR ALL", False, False)],
)
def test_cleanup_tags_say_what_bookkeeping_goes(tag: str, dropped: bool, reset: bool) -> None:
    run = Cleanup(("x",), checks=False)
    run.feed(67, tag_body(tag))
    assert run.feed(90, b"I") == DONE
    assert (run.statements_dropped, run.params_reset) == (dropped, reset)


def test_cleanup_error_closes() -> None:
    run = Cleanup(("ROLLBACK", "SELECT 1/0"), checks=False)
    run.feed(90, b"I")
    assert run.feed(69, error_body("division by zero")) == CLOSE
    assert run.failure == "'SELECT 1/0' failed: division by zero"


def test_cleanup_that_leaves_a_transaction_open_closes() -> None:
    run = Cleanup(("BEGIN",), checks=False)
    run.feed(67, tag_body("BEGIN"))
    assert run.feed(90, b"T") == CLOSE
    assert "inside a transaction" in run.failure


@pytest.mark.parametrize("kind", [b"G", b"H", b"W"])
def test_cleanup_that_starts_a_copy_closes(kind: bytes) -> None:
    run = Cleanup(("COPY t FROM STDIN",), checks=False)
    assert run.feed(kind[0], b"\x00\x00\x00") == CLOSE
    assert "COPY" in run.failure


def test_leftover_check_row_decides() -> None:
    clean = Cleanup(("RESET ALL", LEFTOVER_CHECK), checks=True)
    assert clean.feed(90, b"I") == PENDING
    assert clean.feed(68, check_row(False, False, False, False)) == PENDING
    assert clean.feed(90, b"I") == DONE

    dirty = Cleanup((LEFTOVER_CHECK,), checks=True)
    dirty.feed(68, check_row(True, False, None, True))
    assert dirty.feed(90, b"I") == CLOSE
    assert dirty.leftovers == (LEFTOVER_KINDS[0], LEFTOVER_KINDS[3]) and not dirty.failure


def test_rows_of_a_custom_reset_query_are_not_the_check() -> None:
    run = Cleanup(("SELECT true, true, true, true", LEFTOVER_CHECK), checks=True)
    run.feed(68, check_row(True, True, True, True))
    run.feed(90, b"I")
    run.feed(68, check_row(False, False, False, False))
    assert run.feed(90, b"I") == DONE


def test_leftovers_in_row_reads_text_booleans() -> None:
    assert leftovers_in_row(check_row(False, True, False, False)) == ("temporary objects",)
    assert leftovers_in_row(check_row(None, None, None, None)) == ()


# ---------------------------------------------------------------- config


def write_config(tmp_path: Path, general: str = "", pool: str = "") -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(
        "general: {admin_username: a, admin_password: b" + (", " + general if general else "") + "}\n"
        "pools: {db: {" + (pool + ", " if pool else "") + "users: [{username: u, password: '', pool_size: 1}]}}\n"
    )
    return path


def make_app(tmp_path: Path, general: str = "", pool: str = "") -> Application:
    return Application(load_config(write_config(tmp_path, general, pool)))


def test_reset_query_defaults(tmp_path: Path) -> None:
    settings = load_config(write_config(tmp_path)).pool_settings("db", "u")
    assert settings is not None
    assert (settings.server_reset_query, settings.server_reset_query_always) == ("DISCARD ALL", False)


def test_reset_query_general_and_pool_override(tmp_path: Path) -> None:
    config = load_config(
        write_config(
            tmp_path,
            general="server_reset_query: 'RESET ALL', server_reset_query_always: true",
            pool="server_reset_query: '', server_reset_query_always: false",
        )
    )
    assert config.general.server_reset_query == "RESET ALL" and config.general.server_reset_query_always
    settings = config.pool_settings("db", "u")
    assert settings is not None
    assert (settings.server_reset_query, settings.server_reset_query_always) == ("", False)
    inherited = load_config(write_config(tmp_path, general="server_reset_query: 'RESET ALL'"))
    settings = inherited.pool_settings("db", "u")
    assert settings is not None and settings.server_reset_query == "RESET ALL"


@pytest.mark.parametrize(
    ("general", "pool", "problem"),
    [
        ("server_reset_query: 1", "", "general.server_reset_query: expected a string"),
        ("server_reset_query_always: 'yes'", "", "general.server_reset_query_always: expected true or false"),
        ("", "server_reset_query_always: 1", "pools.db.server_reset_query_always: expected true or false"),
        ('server_reset_query: "DISCARD ALL\\0"', "", "general.server_reset_query: must not contain NUL"),
    ],
)
def test_reset_query_bad_values(tmp_path: Path, general: str, pool: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tmp_path, general, pool))
    assert problem in str(info.value)


# ---------------------------------------------------------------- a server carrying it out


def attach_pair(app: Application, transaction_mode: bool) -> tuple[ClientConnection, ServerConnection, Any]:
    return pair_in(app, transaction_mode=transaction_mode, tracked=transaction_mode)


def sent_queries(server: ServerConnection) -> list[str]:
    buf = MessageBuffer()
    buf.feed(server.transport.data)  # type: ignore[union-attr]
    server.transport.data.clear()  # type: ignore[union-attr]
    return [body[:-1].decode() for kind, body in buf.messages() if kind == 81]


def run_query(client: ClientConnection, server: ServerConnection, tag: str, status: bytes = b"I") -> None:
    client.data_received(messages.query("select whatever"))
    assert sent_queries(server) == ["select whatever"]
    server.data_received(messages.command_complete(tag) + messages.ready_for_query(status))


def test_plain_transaction_is_checked_in_without_a_query(tmp_path: Path) -> None:
    async def run() -> None:
        client, server, pool = attach_pair(make_app(tmp_path), transaction_mode=True)
        run_query(client, server, "SELECT 1")
        assert pool.idle == [server] and sent_queries(server) == []

    asyncio.run(run())


@pytest.mark.parametrize("row", [(False, False, False, False), (True, False, False, False)])
def test_check_leftovers_flag_runs_the_check_once(tmp_path: Path, row: tuple[bool, ...]) -> None:
    """What the client side does for advisory-lock text: set ``server.check_leftovers`` during the
    transaction. The check runs at release; a row with a leftover closes the server."""

    async def run() -> None:
        client, server, pool = attach_pair(make_app(tmp_path), transaction_mode=True)
        client.data_received(messages.query("select pg_advisory_lock(1)"))
        server.check_leftovers = True  # the client side's part
        sent_queries(server)
        server.data_received(messages.command_complete("SELECT 1") + messages.READY_IDLE)
        assert client.server is None and not server.check_leftovers, "consumed at release"
        assert sent_queries(server) == [LEFTOVER_CHECK]
        assert server.state == codes.SERVER_CLEANUP and pool.idle == []
        reply = messages.message(b"D", check_row(*row)) + messages.command_complete("SELECT 1") + messages.READY_IDLE
        server.data_received(reply)
        if any(row):
            assert server.transport.closed  # type: ignore[union-attr]
            assert pool.idle == []
        else:
            assert not server.transport.closed  # type: ignore[union-attr]
            assert pool.idle == [server] and server.state == codes.SERVER_IDLE

    asyncio.run(run())


def test_advisory_lock_text_arms_the_check(tmp_path: Path) -> None:
    """The client's forwarding loop finds advisory lock function names (sessionhints.py); the check runs."""

    async def run() -> None:
        client, server, _pool = attach_pair(make_app(tmp_path), transaction_mode=True)
        client.data_received(messages.query("SELECT pg_advisory_lock(1)"))
        assert server.check_leftovers
        sent_queries(server)
        server.data_received(messages.command_complete("SELECT 1") + messages.READY_IDLE)
        assert sent_queries(server) == [LEFTOVER_CHECK]

    asyncio.run(run())


@pytest.mark.parametrize("tag", ["CREATE TABLE", "CREATE TABLE AS", "CREATE VIEW", "CREATE SEQUENCE"])
def test_create_tags_arm_the_check(tmp_path: Path, tag: str) -> None:
    async def run() -> None:
        client, server, _pool = attach_pair(make_app(tmp_path), transaction_mode=True)
        run_query(client, server, tag)
        assert sent_queries(server) == [LEFTOVER_CHECK]

    asyncio.run(run())


def test_session_mode_discard_all_drops_the_bookkeeping(tmp_path: Path) -> None:
    async def run() -> None:
        app = make_app(tmp_path, pool="pool_mode: session")
        client, server, pool = attach_pair(app, transaction_mode=False)
        run_query(client, server, "SELECT 1")
        assert client.server is server, "session mode keeps the server"
        server.statements.sql[b"p"] = b"PREPARE p AS select 1"
        server.extra_keys = {"search_path"}
        server.params["search_path"] = "myschema"
        server.params["application_name"] = "client_app"
        client.close()
        assert sent_queries(server) == ["DISCARD ALL"]
        server.data_received(
            messages.parameter_status("application_name", "pg_doorman")
            + messages.command_complete("DISCARD ALL")
            + messages.READY_IDLE
        )
        assert pool.idle == [server] and server.state == codes.SERVER_IDLE
        assert server.statements.sql == {} and server.extra_keys == set()
        assert "search_path" not in server.params
        assert dict(server.param_token)["application_name"] == "pg_doorman"

    asyncio.run(run())


def test_session_mode_inside_a_transaction_rolls_back_first(tmp_path: Path) -> None:
    async def run() -> None:
        client, server, pool = attach_pair(make_app(tmp_path, pool="pool_mode: session"), transaction_mode=False)
        run_query(client, server, "BEGIN", status=b"T")
        client.close()
        assert sent_queries(server) == ["ROLLBACK", "DISCARD ALL"]
        server.data_received(messages.command_complete("ROLLBACK") + messages.READY_IDLE)
        assert server.state == codes.SERVER_CLEANUP, "waits for the second ReadyForQuery"
        server.data_received(messages.command_complete("DISCARD ALL") + messages.READY_IDLE)
        assert pool.idle == [server]

    asyncio.run(run())


def test_failed_reset_query_closes_the_server(tmp_path: Path) -> None:
    async def run() -> None:
        app = make_app(tmp_path, pool="pool_mode: session, server_reset_query: 'SELECT 1/0'")
        client, server, pool = attach_pair(app, transaction_mode=False)
        run_query(client, server, "SELECT 1")
        client.close()
        assert sent_queries(server) == ["SELECT 1/0"]
        server.data_received(messages.message(b"E", error_body("division by zero")) + messages.READY_IDLE)
        assert server.transport.closed and pool.idle == []  # type: ignore[union-attr]

    asyncio.run(run())


def test_session_mode_without_reset_query_is_checked_in_at_once(tmp_path: Path) -> None:
    async def run() -> None:
        client, server, pool = attach_pair(
            make_app(tmp_path, pool="pool_mode: session, server_reset_query: ''"), transaction_mode=False
        )
        run_query(client, server, "CREATE TABLE")
        client.close()
        assert sent_queries(server) == [] and pool.idle == [server]

    asyncio.run(run())


def test_reset_always_in_transaction_mode_forgets_prepared_statements(tmp_path: Path) -> None:
    async def run() -> None:
        client, server, pool = attach_pair(
            make_app(tmp_path, general="server_reset_query_always: true"), transaction_mode=True
        )
        server.add_statement(b"DOORMAN_1")
        run_query(client, server, "SELECT 1")
        assert sent_queries(server) == ["DISCARD ALL"]
        server.data_received(messages.command_complete("DISCARD ALL") + messages.READY_IDLE)
        assert pool.idle == [server] and b"DOORMAN_1" not in server.statements

    asyncio.run(run())
