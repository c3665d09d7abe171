"""Signs of session changes in statement text (sessionhints.py), and what the client's forwarding loop does
with them: the pure-Python function directly, the compiled one (a C inline function) through the client."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_forwarding import make_pair

from pg_doorman import codes
from pg_doorman.protocol import messages
from pg_doorman.sessionhints import session_hints


@pytest.mark.parametrize(
    ("sql", "hints"),
    [
        ("SELECT abalance FROM pgbench_accounts WHERE aid = 1", 0),
        ("SELECT set_config('statement_timeout', '1s', false)", codes.HINT_SET_CONFIG),
        ("SELECT SET_CONFIG('x.y', '1', false)", codes.HINT_SET_CONFIG),
        ("SELECT pg_advisory_lock(1)", codes.HINT_ADVISORY),
        ("select PG_ADVISORY_LOCK(1), set_config('a.b', '', false)", codes.HINT_ADVISORY | codes.HINT_SET_CONFIG),
        ("CREATE TEMP TABLE t AS SELECT 1", codes.HINT_TEMP),
        ("select Pg_Advisory_Lock(1), Set_Config('a.b', '', false) into Temporary t", 7),
        ("select 'advisor', '_confi', 'tem'", 0),  # near misses, including at the end of the text
        ("select 1 into temporary t", codes.HINT_TEMP),
    ],
)
def test_session_hints(sql: str, hints: int) -> None:
    data = messages.query(sql)
    assert session_hints(data, 5, len(data)) == hints
    assert session_hints(data, 5, 6) == 0  # only the given range is searched


@pytest.mark.parametrize("tracked", [False, True])
def test_set_config_in_a_query_arms_the_settings_capture(tmp_path: Path, tracked: bool) -> None:
    client, server, _pool = make_pair(tmp_path, tracked=tracked)
    client.data_received(messages.query("select 1"))
    assert not server.capture_due and not server.need_reset_all
    server.data_received(messages.command_complete("SELECT 1") + messages.READY_IDLE)
    client.data_received(messages.query("select set_config('statement_timeout', '5s', false)"))
    assert server.capture_due and server.need_reset_all
