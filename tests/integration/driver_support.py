"""What the driver tests (test_drivers_python.py, test_drivers_external.py) share: the table they write, direct
checks against PostgreSQL, and the log checks that catch problems the drivers themselves would not report."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Any

import psycopg

from pg_doorman.devcluster import TempPostgres

StartDoorman = Callable[..., Any]
PoolConfig = Callable[..., dict[str, Any]]

USER, PASSWORD, DB = "app", "app_pass", "appdb"

# pg_doorman log lines that mean something went wrong inside the pooler.
BAD_LOG = re.compile(r"Traceback|Task exception|pooler-issued (query|command) failed|sent data while idle")
# PostgreSQL log lines that are errors; the only expected ones are the deliberate divisions by zero.
PG_ERROR = re.compile(r"^.*\b(ERROR|FATAL|PANIC):\s+(.*)$", re.MULTILINE)
EXPECTED_PG_ERRORS = re.compile(r"division by zero")


def table_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def direct(cluster: TempPostgres) -> psycopg.Connection[Any]:
    """A direct connection to ``cluster`` as the table owner (``pg_trust`` trusts TCP logins)."""
    return psycopg.connect(cluster.dsn(user=USER, db=DB), autocommit=True, connect_timeout=10)


def create_table(cluster: TempPostgres, prefix: str) -> str:
    name = table_name(prefix)
    with direct(cluster) as conn:
        conn.execute(
            f"CREATE TABLE {name} (client int NOT NULL, seq int NOT NULL, val bigint NOT NULL, "
            "PRIMARY KEY (client, seq))"
        )
    return name


def table_totals(cluster: TempPostgres, table: str) -> tuple[int, int]:
    with direct(cluster) as conn:
        row = conn.execute(f"SELECT count(*), coalesce(sum(val), 0) FROM {table}").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def server_backends(cluster: TempPostgres) -> int:
    return len(cluster.backend_pids(user=USER, db=DB))


def max_server_statements(proc: Any, tries: int = 12) -> int:
    """Largest pg_prepared_statements count seen on the pooled servers (the probe itself prepares nothing:
    psycopg's simple-query path, a plain string with no parameters and prepare=False)."""
    seen = 0
    with psycopg.connect(proc.dsn(), autocommit=True, connect_timeout=10) as conn:
        for _ in range(tries):
            row = conn.execute("SELECT count(*) FROM pg_prepared_statements", prepare=False).fetchone()
            assert row is not None
            seen = max(seen, int(row[0]))
    return seen


class LogWindow:
    """PostgreSQL's log lines written while a test's workload ran."""

    def __init__(self, cluster: TempPostgres) -> None:
        self.cluster = cluster
        self.start = len(cluster.log_text())

    def unexpected_pg_errors(self) -> list[str]:
        text = self.cluster.log_text()[self.start :]
        return [m.group(0) for m in PG_ERROR.finditer(text) if not EXPECTED_PG_ERRORS.search(m.group(2))]


def assert_clean_logs(proc: Any, window: LogWindow) -> None:
    bad = [line for line in proc.log_text().splitlines() if BAD_LOG.search(line)]
    assert not bad, "pg_doorman logged problems:\n" + "\n".join(bad[:20])
    errors = window.unexpected_pg_errors()
    assert not errors, "PostgreSQL logged unexpected errors:\n" + "\n".join(errors[:20])
