"""Shared fixtures: throwaway PostgreSQL clusters, a pg_doorman process factory and a pools-config builder.

Session clusters (``pg_trust``, ``pg_md5``, ``pg_scram``) are shared by every test: do not stop, kill or
reconfigure them; ask ``pg_factory`` for a private cluster instead.  Every cluster has the roles in ``USERS``
and a database ``appdb`` owned by ``app``.  Everything listens on 127.0.0.1 only.

When a test fails, the tail of each pg_doorman log (and of each private cluster's server log) is attached to
the failure report.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from pg_doorman import connection
from pg_doorman.devcluster import TempPostgres, find_free_port

if TYPE_CHECKING:
    import psycopg

REPO_ROOT = Path(__file__).resolve().parent.parent
USERS: dict[str, str] = {"app": "app_pass", "app2": "app2_pass"}
APP_DB = "appdb"
ADMIN_USER = "admin"
ADMIN_PASSWORD = "admin_pass"
ADMIN_DB = "pgdoorman"
READY_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0

_DOORMANS = pytest.StashKey[list["DoormanProcess"]]()
_CLUSTERS = pytest.StashKey[list[TempPostgres]]()


# ---------------------------------------- clusters


def new_cluster(auth: str, **kwargs: Any) -> TempPostgres:
    """Start a cluster with the standard roles (``USERS``) and database (``appdb`` owned by ``app``)."""
    kwargs.setdefault("users", dict(USERS))
    cluster = TempPostgres(auth=auth, **kwargs)
    try:
        cluster.start()
        cluster.create_database(APP_DB, owner="app")
    except BaseException:
        cluster.cleanup()
        raise
    return cluster


@pytest.fixture(autouse=True)
def end_left_drains() -> Iterator[None]:
    """A connection closing after an error stays in connection.py's module-level set until its connection_lost,
    which a stand-in transport or a finished event loop never delivers: end such drains after each test, so that
    the next test (which may count drains) starts with none. (Here, not in tests/unit/conftest.py: the test
    modules import this file as ``conftest``, and a second conftest module would shadow it.)"""
    yield
    connection.forget_drains()


@pytest.fixture(scope="session")
def pg_trust() -> Iterator[TempPostgres]:
    """Shared cluster where TCP logins are trusted (role passwords stored as SCRAM anyway)."""
    cluster = new_cluster("trust")
    yield cluster
    cluster.cleanup()


@pytest.fixture(scope="session")
def pg_md5() -> Iterator[TempPostgres]:
    """Shared cluster with ``md5`` auth over TCP and md5 password hashes."""
    cluster = new_cluster("md5")
    yield cluster
    cluster.cleanup()


@pytest.fixture(scope="session")
def pg_scram() -> Iterator[TempPostgres]:
    """Shared cluster with ``scram-sha-256`` auth over TCP and SCRAM password verifiers."""
    cluster = new_cluster("scram-sha-256")
    yield cluster
    cluster.cleanup()


@pytest.fixture(params=["md5", "scram"])
def pg_hashed(request: pytest.FixtureRequest) -> TempPostgres:
    """Runs the test once against ``pg_md5`` and once against ``pg_scram``."""
    cluster: TempPostgres = request.getfixturevalue(f"pg_{request.param}")
    return cluster


@pytest.fixture
def pg_factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., TempPostgres]]:
    """``pg_factory(auth="md5", **kwargs)``: a private cluster (for kill/restart tests), removed after."""
    created: list[TempPostgres] = []
    request.node.stash[_CLUSTERS] = created

    def make(auth: str = "trust", **kwargs: Any) -> TempPostgres:
        cluster = new_cluster(auth, **kwargs)
        created.append(cluster)
        return cluster

    yield make
    for cluster in created:
        cluster.cleanup()


# ---------------------------------------- pools config


def make_pool_config(
    cluster: TempPostgres,
    users: Sequence[str | Mapping[str, Any]] = ("app",),
    pool_mode: str = "transaction",
    pool_size: int = 10,
    *,
    db: str = APP_DB,
    general: Mapping[str, Any] | None = None,
    **pool_settings: Any,
) -> dict[str, Any]:
    """Build ``{"pools": {db: {...}}}`` (plus ``general`` if given) for pg_doorman pointing at ``cluster``.

    A user given by name gets the verifier stored in pg_authid as its ``password`` (md5 or SCRAM, as the
    cluster stores it), i.e. passthrough auth with no plaintext in the config.  A user given as a mapping is
    merged over those defaults, e.g. ``{"username": "app", "server_username": "app", "server_password":
    "app_pass"}`` or ``{"username": "x", "password": "md5..."}``.  Extra keyword arguments become pool keys.
    """
    user_entries: list[dict[str, Any]] = []
    for user in users:
        entry: dict[str, Any] = {"username": user} if isinstance(user, str) else dict(user)
        entry.setdefault("pool_size", pool_size)
        if "password" not in entry:
            entry["password"] = cluster.role_password_hash(entry["username"])
        user_entries.append(entry)
    pool: dict[str, Any] = {
        "server_host": "127.0.0.1",
        "server_port": cluster.port,
        "pool_mode": pool_mode,
        **pool_settings,
        "users": user_entries,
    }
    config: dict[str, Any] = {"pools": {db: pool}}
    if general is not None:
        config["general"] = dict(general)
    return config


@pytest.fixture(name="pool_config")
def _pool_config() -> Callable[..., dict[str, Any]]:
    """The ``make_pool_config`` helper as a fixture, so tests need not import conftest."""
    return make_pool_config


# ---------------------------------------- config files


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} to TOML: {value!r}")


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _toml_table(path: list[str], table: Mapping[str, Any], out: list[str], header: str | None) -> None:
    scalars = {k: v for k, v in table.items() if not isinstance(v, dict) and not _is_table_array(v)}
    if header is not None:
        out.append(header)
    for key, value in scalars.items():
        out.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key, value in table.items():
        sub_path = [*path, _toml_key(key)]
        if isinstance(value, dict):
            out.append("")
            _toml_table(sub_path, value, out, f"[{'.'.join(sub_path)}]")
        elif _is_table_array(value):
            for item in value:
                out.append("")
                _toml_table(sub_path, item, out, f"[[{'.'.join(sub_path)}]]")


def dump_toml(data: Mapping[str, Any]) -> str:
    """Minimal TOML writer for config dicts (tables, arrays of tables, scalars, scalar lists).

    The result is parsed back with tomllib and compared, so a writer bug fails loudly instead of producing a
    config that silently means something else.
    """
    out: list[str] = []
    _toml_table([], data, out, None)
    text = "\n".join(out).lstrip("\n") + "\n"
    if tomllib.loads(text) != data:
        raise AssertionError(f"TOML writer round-trip mismatch:\n{text}")
    return text


def write_config(config: Mapping[str, Any], path: Path, fmt: str = "yaml") -> Path:
    """Write ``config`` as YAML or TOML to ``path`` and return it."""
    if fmt == "yaml":
        path.write_text(yaml.safe_dump(dict(config), sort_keys=False), encoding="utf-8")
    elif fmt == "toml":
        path.write_text(dump_toml(config), encoding="utf-8")
    else:
        raise ValueError(f"fmt must be 'yaml' or 'toml', got {fmt!r}")
    return path


# ---------------------------------------- pg_doorman


def _conninfo(**parts: str) -> str:
    def quote(value: str) -> str:
        if value and not any(c in value for c in " '\\"):
            return value
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"

    return " ".join(f"{k}={quote(v)}" for k, v in parts.items())


class DoormanProcess:
    """A pg_doorman started as ``python -m pg_doorman CONFIG -l debug`` with its output in ``log_path``."""

    def __init__(
        self,
        *,
        popen: subprocess.Popen[bytes],
        host: str,
        port: int,
        config: dict[str, Any],
        config_path: Path,
        log_path: Path,
    ) -> None:
        self.popen = popen
        self.host = host
        self.port = port
        self.config = config
        self.config_path = config_path
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def rss_kib(self) -> int:
        """Resident memory of the pg_doorman process (VmRSS), in KiB."""
        with open(f"/proc/{self.pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError(f"no VmRSS for pid {self.pid}")

    @property
    def returncode(self) -> int | None:
        """Exit code, or None while running (polls)."""
        return self.popen.poll()

    def dsn(self, user: str = "app", password: str | None = None, db: str = APP_DB) -> str:
        """libpq key=value string for connecting through this pg_doorman (password defaults from USERS)."""
        if password is None:
            password = USERS.get(user)
        parts = {"host": self.host, "port": str(self.port), "user": user, "dbname": db}
        if password is not None:
            parts["password"] = password
        return _conninfo(**parts)

    def admin_dsn(self) -> str:
        """DSN of the admin console (database ``pgdoorman``)."""
        general = self.config.get("general", {})
        return self.dsn(
            user=general.get("admin_username", ADMIN_USER),
            password=general.get("admin_password", ADMIN_PASSWORD),
            db=ADMIN_DB,
        )

    def connect(
        self, user: str = "app", password: str | None = None, db: str = APP_DB, **kwargs: Any
    ) -> psycopg.Connection[Any]:
        """A psycopg connection through the pooler (``kwargs`` go to ``psycopg.connect``)."""
        import psycopg

        kwargs.setdefault("connect_timeout", 10)
        return psycopg.connect(self.dsn(user, password, db), **kwargs)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait_for_log(self, needle: str | re.Pattern[str], *, timeout: float = 10.0, after: int = 0) -> str:
        """Wait until the log (from character offset ``after``) contains ``needle``; return that line.

        Take ``after = len(proc.log_text())`` before an action to wait for the line the action causes.
        """
        pattern = needle if isinstance(needle, re.Pattern) else re.compile(re.escape(needle))
        deadline = time.monotonic() + timeout
        while True:
            text = self.log_text()[after:]
            match = pattern.search(text)
            if match:
                start = text.rfind("\n", 0, match.start()) + 1
                end = text.find("\n", match.end())
                return text[start : end if end != -1 else len(text)]
            if time.monotonic() > deadline:
                raise TimeoutError(f"{pattern.pattern!r} not in pg_doorman log after {timeout}s:\n{self.log_tail()}")
            time.sleep(0.05)

    def send_signal(self, sig: int) -> None:
        self.popen.send_signal(sig)

    def wait(self, timeout: float | None = None) -> int:
        """Wait for exit and return the exit code (``subprocess.TimeoutExpired`` on timeout)."""
        return self.popen.wait(timeout)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, then SIGKILL if still running after ``timeout`` seconds; returns the exit code."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Wait until the listener accepts TCP connections; raise with the log if the process exits first."""
        deadline = time.monotonic() + timeout
        while True:
            if self.popen.poll() is not None:
                raise RuntimeError(
                    f"pg_doorman exited with code {self.popen.returncode} before listening on "
                    f"{self.host}:{self.port}; log:\n{self.log_text()}"
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"pg_doorman did not listen on {self.host}:{self.port} within {timeout}s; log:\n{self.log_text()}"
                )
            time.sleep(0.05)

    def __repr__(self) -> str:
        return f"DoormanProcess(pid={self.pid}, port={self.port}, config={str(self.config_path)!r})"


def child_env() -> dict[str, str]:
    """The environment for a pg_doorman child process: libpq's PG* variables removed (they would change what a
    test connects to), pg_doorman's own PG_DOORMAN_* switches (the pure-Python run) kept."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PG") or k.startswith("PG_DOORMAN_")}


def prepare_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Copy ``config`` and fill in listen address, a free port and admin credentials where missing."""
    full = copy.deepcopy(dict(config))
    general = full.setdefault("general", {})
    general.setdefault("host", "127.0.0.1")
    if "port" not in general:
        general["port"] = find_free_port()
    general.setdefault("admin_username", ADMIN_USER)
    general.setdefault("admin_password", ADMIN_PASSWORD)
    # general first: easier to read when a config is printed in a failure report
    return {"general": general, **{k: v for k, v in full.items() if k != "general"}}


StartDoorman = Callable[..., DoormanProcess]


@pytest.fixture
def doorman(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StartDoorman]:
    """Factory ``start_doorman(config, *, fmt="yaml", extra_args=(), env=None, wait=True) -> DoormanProcess``.

    With ``wait=False`` the process is returned right after spawning (for tests of startup failures).
    Every process started here is stopped at teardown.
    """
    started: list[DoormanProcess] = []
    request.node.stash[_DOORMANS] = started

    def start_doorman(
        config: Mapping[str, Any],
        *,
        fmt: str = "yaml",
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        wait: bool = True,
    ) -> DoormanProcess:
        full = prepare_config(config)
        index = len(started)
        config_path = write_config(full, tmp_path / f"pg_doorman_{index}.{fmt}", fmt)
        log_path = tmp_path / f"pg_doorman_{index}.log"
        proc_env = child_env()
        proc_env["PYTHONUNBUFFERED"] = "1"
        proc_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH")) if p)
        proc_env.update(env or {})
        argv = [sys.executable, "-m", "pg_doorman", str(config_path), "-l", "debug", *extra_args]
        with open(log_path, "wb") as log_file:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=proc_env,
                cwd=tmp_path,
            )
        proc = DoormanProcess(
            popen=popen,
            host=full["general"]["host"],
            port=int(full["general"]["port"]),
            config=full,
            config_path=config_path,
            log_path=log_path,
        )
        started.append(proc)
        if wait:
            proc.wait_ready()
            expected = os.environ.get("PG_DOORMAN_EXPECT_HOT_PATH")
            quiet = {"-l", "--log-level", "-d", "--daemon"} & set(extra_args) or "LOG_LEVEL" in (env or {})
            if expected and not quiet:
                # The suite runs twice (scripts/test.sh): each run's processes must use the build it tests.
                proc.wait_for_log("hot path: ", timeout=10)
                assert f"hot path: {expected}" in proc.log_text(), proc.log_tail()
        return proc

    yield start_doorman
    for proc in started:
        proc.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach pg_doorman and private-cluster log tails to the report of a failed test."""
    report: pytest.TestReport = yield
    if report.failed:
        for proc in item.stash.get(_DOORMANS, []):
            report.sections.append((f"pg_doorman log (pid {proc.pid}, port {proc.port})", proc.log_tail()))
        for cluster in item.stash.get(_CLUSTERS, []):
            report.sections.append((f"PostgreSQL log (port {cluster.port})", cluster.log_tail()))
    return report


@pytest.fixture
def single(doorman: StartDoorman, pg_trust: TempPostgres) -> DoormanProcess:
    """pg_doorman in front of ``pg_trust`` in transaction mode with one server connection for user ``app``:
    every client of the pool is served by the same backend, so whatever one leaves behind, the next one meets."""
    return doorman(make_pool_config(pg_trust, pool_size=1))
