"""pooler_check_query (inventory §3.13): the first probe of a pool goes to PostgreSQL, whose reply is kept and
replayed to later probes without a server; only a whole, error-free reply that leaves the session idle is kept;
a probe inside a transaction, or after a reload changed the setting, is a query like any other."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

import yaml
from wire_client import WireClient, data_row_values, query

from conftest import DoormanProcess, make_pool_config
from pg_doorman.client import replayable_reply
from pg_doorman.devcluster import TempPostgres
from pg_doorman.protocol import messages

StartDoorman = Callable[..., DoormanProcess]


def _wire(proc: DoormanProcess) -> WireClient:
    return WireClient.connect(proc.host, proc.port, user="app", database="appdb", password="app_pass")


def _probe(client: WireClient, sql: str) -> list[Any]:
    client.send(query(sql))
    return client.read_until_ready()


def _start(doorman: StartDoorman, cluster: TempPostgres, check: str) -> DoormanProcess:
    cluster.psql("CREATE SEQUENCE IF NOT EXISTS probe_seq; GRANT USAGE ON SEQUENCE probe_seq TO app", db="appdb")
    return doorman(make_pool_config(cluster, pool_size=2, general={"pooler_check_query": check}))


def test_the_first_probe_reaches_postgresql_and_later_ones_get_its_reply(
    doorman: StartDoorman, pg_trust: TempPostgres
) -> None:
    # A query with a side effect shows whether PostgreSQL ran it: nextval() would count up.
    check = "SELECT nextval('probe_seq')"
    proc = _start(doorman, pg_trust, check)
    with _wire(proc) as one, _wire(proc) as two:
        first = _probe(one, check)
        assert [m.type for m in first] == ["T", "D", "C", "Z"]
        value = data_row_values(first[1].body)[0]
        for client in (one, two, one):
            again = _probe(client, check)
            assert again == first  # byte for byte, without a server
        # The same text with a trailing space is another query: PostgreSQL runs it.
        other = _probe(one, check + " ")
        assert int(data_row_values(other[1].body)[0] or b"0") == int(value or b"0") + 1


def test_the_default_empty_query_probe(doorman: StartDoorman, pg_trust: TempPostgres) -> None:
    proc = doorman(make_pool_config(pg_trust, pool_size=1))
    with _wire(proc) as client:
        replies = [_probe(client, ";") for _ in range(3)]
    assert [m.type for m in replies[0]] == ["I", "Z"]
    assert replies[0] == replies[1] == replies[2]


def test_a_failing_probe_is_never_kept(doorman: StartDoorman, pg_trust: TempPostgres) -> None:
    check = "SELECT nextval('probe_seq') / 0"
    proc = _start(doorman, pg_trust, check)
    with _wire(proc) as client:
        for _ in range(2):
            reply = _probe(client, check)
            assert [m.type for m in reply][-2:] == ["E", "Z"]
        # Each one ran on PostgreSQL: the sequence moved twice.
        current = _probe(client, "SELECT nextval('probe_seq') AS n")
    before = int(pg_trust.psql("SELECT last_value FROM probe_seq", db="appdb").strip())
    assert before >= 3 and data_row_values(current[1].body)[0] is not None


def test_inside_a_transaction_the_probe_is_an_ordinary_query(doorman: StartDoorman, pg_trust: TempPostgres) -> None:
    check = "SELECT nextval('probe_seq')"
    proc = _start(doorman, pg_trust, check)
    with _wire(proc) as client:
        cached = _probe(client, check)
        _probe(client, "BEGIN")
        _probe(client, "SELECT 1")
        inside = _probe(client, check)
        assert inside[-1].body == b"T"
        assert data_row_values(inside[1].body) != data_row_values(cached[1].body)
        _probe(client, "COMMIT")
        assert _probe(client, check) == cached


def test_a_reload_with_another_check_query_forgets_the_kept_reply(
    doorman: StartDoorman, pg_trust: TempPostgres
) -> None:
    check = "SELECT nextval('probe_seq')"
    proc = _start(doorman, pg_trust, check)
    with _wire(proc) as client:
        first = _probe(client, check)
        config = yaml.safe_load(proc.config_path.read_text())
        config["general"]["pooler_check_query"] = "SELECT nextval('probe_seq') AS renamed"
        proc.config_path.write_text(yaml.safe_dump(config))
        mark = len(proc.log_text())
        proc.send_signal(signal.SIGHUP)
        proc.wait_for_log("reloaded", after=mark)
        # The old text is an ordinary query now, the new one is probed afresh and then kept.
        old = _probe(client, check)
        assert data_row_values(old[1].body) != data_row_values(first[1].body)
        new = _probe(client, "SELECT nextval('probe_seq') AS renamed")
        assert _probe(client, "SELECT nextval('probe_seq') AS renamed") == new


def test_replayable_reply_takes_the_last_reply_only_when_whole_and_idle() -> None:
    hidden = messages.command_complete("SET") + messages.READY_IDLE  # a parameter sync's reply, cut for the client
    reply = messages.EMPTY_QUERY_RESPONSE + messages.READY_IDLE
    assert replayable_reply(hidden + reply) == reply
    assert replayable_reply(reply) == reply
    error = messages.error_response("22012", "division by zero", severity="ERROR")
    assert replayable_reply(error + messages.READY_IDLE) is None
    assert replayable_reply(hidden[:-1]) is None  # cut short
    assert replayable_reply(b"I\x00\x00\x00\x04" + b"Z\x00\x00\x00\x05T") is None  # inside a transaction
    assert replayable_reply(reply + b"Z") is None  # trailing bytes
    assert replayable_reply(b"") is None
    assert replayable_reply(b"I\x00\x00\x00\x02" + messages.READY_IDLE) is None  # a bad length
