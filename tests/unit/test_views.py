"""Read-only views (views.py) of a pool, its servers and clients, built without sockets."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from test_forwarding import make_pair

from pg_doorman import views
from pg_doorman.protocol import messages

QUERY = messages.query("select 1")
REPLY = messages.command_complete("SELECT 1") + messages.READY_IDLE


def test_views_follow_a_transaction(tmp_path: Path) -> None:
    client, server, pool = make_pair(tmp_path, tracked=False)
    client.pid, server.pid = 1234, 99
    [before] = views.pool_views([pool])
    assert (before.servers_idle, before.servers_active, before.clients_waiting) == (1, 0, 0)
    assert before.name == "db/u" and before.pool_mode == "transaction" and before.pool_size == 1

    client.data_received(QUERY)  # the transaction takes the idle server
    [during] = views.pool_views([pool])
    assert (during.servers_idle, during.servers_active) == (0, 1)
    assert during.checkouts == before.checkouts + 1
    [s] = views.server_views([pool])
    assert (s.pid, s.state, s.client_pid, s.clean) == (99, "active", 1234, False)
    [c] = views.client_views([client])
    assert (c.pid, c.state, c.server_pid) == (1234, "active", 99)

    server.data_received(REPLY)  # ReadyForQuery 'I': back to the pool
    [after] = views.pool_views([pool])
    assert (after.servers_idle, after.servers_active) == (1, 0)
    [s] = views.server_views([pool])
    assert (s.state, s.client_pid, s.clean, s.transaction_status) == ("idle", 0, True, "I")
    assert views.client_views([client])[0].state == "idle"


def test_views_are_frozen_snapshots(tmp_path: Path) -> None:
    client, _server, pool = make_pair(tmp_path, tracked=False)
    snapshot = views.pool_views([pool])[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        snapshot.servers_idle = 5  # type: ignore[misc]
    client.data_received(QUERY)
    assert snapshot.servers_idle == 1  # taken before: does not follow the pool
