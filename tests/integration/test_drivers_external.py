"""Prepared statements in transaction mode with non-Python drivers: node-postgres, postgres.js and pgJDBC.

Each test starts pg_doorman with a small transaction-mode pool (2-4 server connections) in front of the shared
``pg_trust`` cluster and runs a driver program with 20-50 concurrent connections, each preparing and reusing
several statements with its driver's defaults: no ``DISCARD ALL``, no ``DEALLOCATE``, no cache switched off.

* node-postgres: named queries (``{name, text, values}``), parsed once per connection, then only bound by
  name; one name with a different text per client; some names only on even/odd clients.
* postgres.js: ``prepare: true`` (its default) and pipelining, many queries in flight on one connection
  (``Promise.all``), including inside transactions.
* pgJDBC: a plain ``DriverManager`` program with ``prepareThreshold=1`` (server-side statements from the first
  execution), ``addBatch``/``executeBatch`` in transactions.

The driver programs check every value they get back (tests/drivers/node/*.js, tests/drivers/java/
DriverTest.java) and print a JSON summary; the tests here compare that summary with the table contents read
directly from PostgreSQL, check that the clients were really spread over several server connections, that the
only errors PostgreSQL logged were the deliberate divisions by zero, and that pg_doorman logged no traceback.
One variant of each test sets ``server_prepared_statements_cache_size: 2`` so the pooler evicts and
re-prepares statements on the servers all the time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from driver_support import (
    DB,
    PASSWORD,
    USER,
    LogWindow,
    PoolConfig,
    StartDoorman,
    assert_clean_logs,
    create_table,
    max_server_statements,
    server_backends,
    table_totals,
)

from pg_doorman.devcluster import TempPostgres

REPO_ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = REPO_ROOT / "tests" / "drivers" / "node"
JAVA_DIR = REPO_ROOT / "tests" / "drivers" / "java"
JDBC_JARS = (
    Path.home() / ".m2/repository/org/postgresql/postgresql/42.7.13/postgresql-42.7.13.jar",
    Path("/usr/share/java/postgresql.jar"),
)


# ---------------------------------------------------------------- helpers


def pool(pool_config: PoolConfig, cluster: TempPostgres, pool_size: int, server_cache: int | None) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if server_cache is not None:
        extra["server_prepared_statements_cache_size"] = server_cache
    return pool_config(cluster, pool_size=pool_size, **extra)


def check_summary(summary: dict[str, Any], *, clients: int, pool_size: int) -> None:
    assert summary["failures"] == [], summary["failures"]
    assert summary.get("unexpectedServerErrorCount", 0) == 0, summary.get("unexpectedServerErrors")
    pids = summary["pids"] if isinstance(summary["pids"], int) else len(summary["pids"])
    # Every client saw at most pool_size distinct servers in total, and the clients were spread over them:
    # statements prepared once were executed on several server connections.
    assert 2 <= pids <= pool_size, summary
    assert summary["multiServerClients"] >= clients // 2, summary


def run_program(
    argv: list[str], *, cwd: Path, env_extra: dict[str, str] | None = None, timeout: float = 150
) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(env_extra or {})
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    summary = json.loads(lines[-1]) if lines else None
    assert proc.returncode == 0 and summary is not None, (
        f"{' '.join(argv)} exited {proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    )
    return summary


# ---------------------------------------------------------------- node


@pytest.fixture(scope="session")
def node_programs() -> Path:
    """tests/drivers/node with its node_modules (``npm ci`` from package-lock.json when missing)."""
    node = shutil.which("node")
    npm = shutil.which("npm")
    assert node and npm, "node and npm are needed for these tests: run scripts/setup.sh"
    if not all((NODE_DIR / "node_modules" / pkg / "package.json").exists() for pkg in ("pg", "postgres")):
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=NODE_DIR, check=True, timeout=300
        )
    return NODE_DIR


def node_config(proc: Any, table: str, clients: int, iterations: int, **extra: Any) -> dict[str, str]:
    cfg = {
        "host": proc.host,
        "port": proc.port,
        "user": USER,
        "password": PASSWORD,
        "database": DB,
        "table": table,
        "clients": clients,
        "iterations": iterations,
        **extra,
    }
    return {"DRIVER_TEST_CONFIG": json.dumps(cfg)}


@pytest.mark.parametrize("server_cache", [None, 2], ids=["default_cache", "server_cache_2"])
def test_node_postgres_named_queries(
    server_cache: int | None,
    node_programs: Path,
    pg_trust: TempPostgres,
    doorman: StartDoorman,
    pool_config: PoolConfig,
) -> None:
    pool_size, clients, iterations = 3, 30, 40
    table = create_table(pg_trust, "nodepg")
    proc = doorman(pool(pool_config, pg_trust, pool_size, server_cache))
    window = LogWindow(pg_trust)

    summary = run_program(
        ["node", "pg_named.js"], cwd=node_programs, env_extra=node_config(proc, table, clients, iterations)
    )

    check_summary(summary, clients=clients, pool_size=pool_size)
    want_rows = clients * iterations
    want_sum = sum(c + i for c in range(clients) for i in range(iterations))
    assert (summary["rows"], summary["sum"]) == (want_rows, want_sum)
    assert summary["rollbacks"] == clients * len([i for i in range(iterations) if i % 5 == 2])
    # Rolled-back inserts are gone, committed ones all there.
    assert table_totals(pg_trust, table) == (want_rows, want_sum)
    assert server_backends(pg_trust) <= pool_size
    if server_cache is not None:
        # Statements really were evicted from the servers: at most the cache size (+ the probe query itself).
        assert max_server_statements(proc) <= server_cache + 1
    assert_clean_logs(proc, window)


@pytest.mark.parametrize("server_cache", [None, 2], ids=["default_cache", "server_cache_2"])
def test_postgresjs_pipelined_prepared(
    server_cache: int | None,
    node_programs: Path,
    pg_trust: TempPostgres,
    doorman: StartDoorman,
    pool_config: PoolConfig,
) -> None:
    pool_size, clients, rounds = 4, 25, 20
    table = create_table(pg_trust, "postgresjs")
    proc = doorman(pool(pool_config, pg_trust, pool_size, server_cache))
    window = LogWindow(pg_trust)

    summary = run_program(
        ["node", "postgresjs_pipeline.js"],
        cwd=node_programs,
        env_extra=node_config(proc, table, clients, rounds, fanout=12),
    )

    check_summary(summary, clients=clients, pool_size=pool_size)
    want_rows = clients * rounds * 4
    want_sum = sum(c + r * k for c in range(clients) for r in range(rounds) for k in (1, 2, 3, 4))
    assert (summary["rows"], summary["sum"]) == (want_rows, want_sum)
    assert summary["rollbacks"] == clients * len([r for r in range(rounds) if r % 4 == 1])
    assert table_totals(pg_trust, table) == (want_rows, want_sum)
    assert server_backends(pg_trust) <= pool_size
    if server_cache is not None:
        assert max_server_statements(proc) <= server_cache + 1
    assert_clean_logs(proc, window)


# ---------------------------------------------------------------- pgJDBC


@pytest.fixture(scope="session")
def java_program(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """(classpath jar, directory with the compiled DriverTest) -- compiled here with javac."""
    javac = shutil.which("javac")
    assert shutil.which("java") and javac, "java and javac are needed for this test: run scripts/setup.sh"
    jar = next((p for p in JDBC_JARS if p.exists()), None)
    assert jar is not None, f"no pgJDBC jar at {' or '.join(map(str, JDBC_JARS))}: run scripts/setup.sh"
    out = tmp_path_factory.mktemp("java")
    subprocess.run(
        [javac, "-d", str(out), "-cp", str(jar), str(JAVA_DIR / "DriverTest.java")],
        check=True,
        timeout=120,
        capture_output=True,
    )
    return str(jar), out


@pytest.mark.parametrize("server_cache", [None, 2], ids=["default_cache", "server_cache_2"])
def test_pgjdbc_prepare_threshold_1_batches(
    server_cache: int | None,
    java_program: tuple[str, Path],
    pg_trust: TempPostgres,
    doorman: StartDoorman,
    pool_config: PoolConfig,
) -> None:
    jar, classes = java_program
    pool_size, clients, iterations = 3, 24, 30
    table = create_table(pg_trust, "pgjdbc")
    proc = doorman(pool(pool_config, pg_trust, pool_size, server_cache))
    window = LogWindow(pg_trust)
    url = f"jdbc:postgresql://{proc.host}:{proc.port}/{DB}?prepareThreshold=1&connectTimeout=20&socketTimeout=120"

    summary = run_program(
        [
            "java",
            "-cp",
            f"{jar}{os.pathsep}{classes}",
            "DriverTest",
            url,
            USER,
            PASSWORD,
            table,
            str(clients),
            str(iterations),
        ],
        cwd=classes,
    )

    check_summary(summary, clients=clients, pool_size=pool_size)
    # prepareThreshold=1 really made pgJDBC use named server-side statements on every connection.
    assert summary["serverPrepared"] == clients
    want_rows = sum(3 + i % 3 for i in range(iterations)) * clients
    want_sum = sum(c + i + k for c in range(clients) for i in range(iterations) for k in range(3 + i % 3))
    assert (summary["rows"], summary["sum"]) == (want_rows, want_sum)
    assert summary["rollbacks"] == clients * len([i for i in range(iterations) if i % 5 == 2])
    assert table_totals(pg_trust, table) == (want_rows, want_sum)
    assert server_backends(pg_trust) <= pool_size
    if server_cache is not None:
        assert max_server_statements(proc) <= server_cache + 1
    assert_clean_logs(proc, window)
