"""A FATAL error reaches the client even when pg_doorman closes with client input it has not read.

Closing a socket with unread input makes the kernel answer with a reset (RST) instead of an orderly close, and a
client that is still sending then sees "server closed the connection unexpectedly" instead of the ErrorResponse
written just before. pg_doorman closes such connections with `Connection.close_after_error`: the error, then its
write side shut down (FIN), then the client's input read and thrown away until it closes too, within
DRAIN_MAX_BYTES and DRAIN_MAX_SECONDS.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from wire_client import error_map, md5_password_message, md5_verifier, query, startup_packet

from pg_doorman.connection import DRAIN_MAX_BYTES, DRAIN_MAX_SECONDS
from pg_doorman.devcluster import TempPostgres

StartDoorman = Callable[..., Any]
MakePoolConfig = Callable[..., dict[str, Any]]

LOGIN = {"user": "app", "database": "appdb"}
IO_TIMEOUT = 10.0


PASSWORD = "app_pass"
APP_USER = {"username": "app", "password": md5_verifier(PASSWORD, "app")}


def trusted_config(pool_config: MakePoolConfig, pg: TempPostgres, **general: Any) -> dict[str, Any]:
    """User app with an md5 password (the trusted cluster needs none from the pooler), max_message_size 1MB."""
    return pool_config(pg, [APP_USER], pool_size=4, general={"max_message_size": "1MB", **general})


def open_socket(proc: Any, unix_dir: Path | None = None) -> socket.socket:
    if unix_dir is not None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(IO_TIMEOUT)
        sock.connect(str(unix_dir / f".s.PGSQL.{proc.port}"))
        return sock
    return socket.create_connection((proc.host, proc.port), timeout=IO_TIMEOUT)


def messages(data: bytes) -> list[tuple[bytes, bytes]]:
    """Backend messages in ``data`` (a trailing partial message is left out)."""
    out = []
    pos = 0
    while len(data) - pos >= 5:
        length = struct.unpack_from("!i", data, pos + 1)[0]
        if len(data) - pos < 1 + length:
            break
        out.append((data[pos : pos + 1], data[pos + 5 : pos + 1 + length]))
        pos += 1 + length
    return out


def login(sock: socket.socket) -> None:
    sock.sendall(startup_packet(LOGIN))
    data = b""
    answered = False
    while not any(kind == b"Z" for kind, _ in messages(data)):
        chunk = sock.recv(65536)
        assert chunk, "closed during login"
        data += chunk
        for kind, body in messages(data):
            if kind == b"R" and struct.unpack_from("!i", body)[0] == 5 and not answered:
                sock.sendall(md5_password_message(PASSWORD, "app", body[4:8]))
                answered = True


def read_to_eof(sock: socket.socket) -> bytes:
    """Everything until the pooler's orderly close; a reset (ConnectionResetError) is not caught."""
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def fatal_then_eof(sock: socket.socket, payload: bytes) -> tuple[str, bytes | str]:
    """Send ``payload`` (all of it), then read until EOF: ("ok", messages) or (what failed, detail)."""
    try:
        sock.sendall(payload)
    except OSError as exc:
        return "send failed", repr(exc)
    try:
        data = read_to_eof(sock)
    except OSError as exc:
        return "read failed", repr(exc)
    return "ok", data


def sqlstates(data: bytes) -> list[str]:
    return [error_map(body).get("C", "") for kind, body in messages(data) if kind == b"E"]


def assert_serves(proc: Any) -> None:
    with socket.create_connection((proc.host, proc.port), timeout=IO_TIMEOUT) as sock:
        login(sock)
        sock.sendall(query("select 1"))
        data = b""
        while not any(kind == b"Z" for kind, _ in messages(data)):
            data += sock.recv(65536)
        assert [kind for kind, _ in messages(data)] == [b"T", b"D", b"C", b"Z"]


# ---------------------------------------------------------------- a bad message followed by more input


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_bad_length_then_junk_gets_the_error(
    doorman: StartDoorman, pool_config: MakePoolConfig, pg_trust: TempPostgres, tmp_path: Path, transport: str
) -> None:
    """A message whose length is impossible (2), then 100 kB the pooler will never parse: the client reads the
    whole 08P01 ErrorResponse and an orderly EOF, every time."""
    unix_dir = tmp_path if transport == "unix" else None
    general = {"unix_socket_dir": str(tmp_path)} if unix_dir else {}
    proc = doorman(trusted_config(pool_config, pg_trust, **general))
    results = []
    for _ in range(5):
        with open_socket(proc, unix_dir) as sock:
            login(sock)
            results.append(fatal_then_eof(sock, b"Q" + struct.pack("!i", 2) + os.urandom(100 * 1024)))
    failed = [r for r in results if r[0] != "ok"]
    assert not failed, f"{len(failed)}/5 clients did not get the error and an orderly close: {failed}"
    for _, data in results:
        assert isinstance(data, bytes)
        assert sqlstates(data) == ["08P01"], messages(data)
        fields = error_map(messages(data)[-1][1])
        assert fields["S"] == "FATAL" and "invalid message length 2" in fields["M"]
    assert_serves(proc)


def test_oversized_message_then_more_gets_53200(
    doorman: StartDoorman, pool_config: MakePoolConfig, pg_trust: TempPostgres
) -> None:
    """A declared length over max_message_size (1MB), then 300 kB of its body: 53200, then EOF."""
    proc = doorman(trusted_config(pool_config, pg_trust))
    results = []
    for _ in range(5):
        with open_socket(proc) as sock:
            login(sock)
            results.append(fatal_then_eof(sock, b"Q" + struct.pack("!i", 2 * 1024 * 1024) + b"x" * (300 * 1024)))
    failed = [r for r in results if r[0] != "ok"]
    assert not failed, f"{len(failed)}/5 clients did not get the error and an orderly close: {failed}"
    for _, data in results:
        assert isinstance(data, bytes)
        assert sqlstates(data) == ["53200"], messages(data)
    assert_serves(proc)


def test_libpq_sees_the_error_of_an_oversized_query(
    doorman: StartDoorman, pool_config: MakePoolConfig, pg_trust: TempPostgres
) -> None:
    """psycopg sending a 2 MB query (over max_message_size 1MB) gets SQLSTATE 53200, not a lost connection."""
    proc = doorman(trusted_config(pool_config, pg_trust))
    for _ in range(3):
        with psycopg.connect(proc.dsn(password=PASSWORD), autocommit=True, connect_timeout=10) as conn:
            with pytest.raises(psycopg.OperationalError) as info:
                conn.execute("select length(%s)", ["y" * (2 * 1024 * 1024)])
            assert info.value.sqlstate == "53200", str(info.value)
    assert_serves(proc)


# ---------------------------------------------------------------- bounds


def test_client_that_floods_and_never_reads_is_cut_off(
    doorman: StartDoorman, pool_config: MakePoolConfig, pg_trust: TempPostgres
) -> None:
    """After the error the pooler reads at most DRAIN_MAX_BYTES of a client that keeps sending, then resets it;
    other clients are served meanwhile."""
    proc = doorman(trusted_config(pool_config, pg_trust))
    sock = open_socket(proc)
    login(sock)
    sock.sendall(b"Q" + struct.pack("!i", 2))
    sent = 0
    ended: dict[str, Any] = {}

    def flood() -> None:
        nonlocal sent
        chunk = b"j" * 65536
        try:
            while sent < 64 * DRAIN_MAX_BYTES:
                sent += sock.send(chunk)
        except OSError as exc:
            ended["error"] = exc
        ended["at"] = time.monotonic()

    t0 = time.monotonic()
    thread = threading.Thread(target=flood, daemon=True)
    thread.start()
    assert_serves(proc)
    thread.join(DRAIN_MAX_SECONDS + 5)
    sock.close()
    assert not thread.is_alive(), "the pooler is still reading a client that floods it"
    assert isinstance(ended.get("error"), ConnectionResetError | BrokenPipeError), ended
    assert ended["at"] - t0 < DRAIN_MAX_SECONDS + 1.0
    # It stopped reading soon after the bound: the flood got no further than the bound plus what the two
    # kernels' socket buffers hold.
    assert sent < DRAIN_MAX_BYTES + 16 * 1024 * 1024
    assert_serves(proc)


def test_client_that_trickles_and_never_closes_is_closed_after_the_time_bound(
    doorman: StartDoorman, pool_config: MakePoolConfig, pg_trust: TempPostgres
) -> None:
    """A client that keeps sending a few bytes and never closes: closed DRAIN_MAX_SECONDS after the error."""
    proc = doorman(trusted_config(pool_config, pg_trust))
    with open_socket(proc) as sock:
        login(sock)
        sock.sendall(b"Q" + struct.pack("!i", 2))
        t0 = time.monotonic()
        received = b""
        closed_at = None
        sock.settimeout(0.05)
        while time.monotonic() - t0 < DRAIN_MAX_SECONDS + 3:
            try:
                sock.send(b"x")
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                closed_at = time.monotonic()
                break
            received += chunk
            if not chunk:
                # Our side sees EOF (the pooler's FIN) first; the close comes with the time bound.
                sock.settimeout(0.05)
                time.sleep(0.05)
        assert closed_at is not None, "never closed"
        assert DRAIN_MAX_SECONDS - 0.5 < closed_at - t0 < DRAIN_MAX_SECONDS + 1.5
        assert sqlstates(received) == ["08P01"]


# ---------------------------------------------------------------- shutdown


CLIENTS = 50


def idle_raw_clients(proc: Any, count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        sock = open_socket(proc)
        login(sock)
        socks.append(sock)
    return socks


def shutdown_notices(socks: list[socket.socket]) -> tuple[int, list[str]]:
    """How many clients read a 58006 ErrorResponse followed by an orderly EOF, and what the others got."""
    ok = 0
    problems = []
    for sock in socks:
        try:
            data = read_to_eof(sock)
        except OSError as exc:
            problems.append(repr(exc))
            continue
        if sqlstates(data) == ["58006"]:
            ok += 1
        else:
            problems.append(repr(messages(data)))
    return ok, problems


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_shutdown_notice_reaches_every_idle_raw_client(
    doorman: StartDoorman, pool_config: MakePoolConfig, pg_trust: TempPostgres, sig: signal.Signals
) -> None:
    proc = doorman(trusted_config(pool_config, pg_trust))
    socks = idle_raw_clients(proc, CLIENTS)
    try:
        proc.send_signal(sig)
        assert proc.wait(10) == 0
        ok, problems = shutdown_notices(socks)
        assert ok == CLIENTS, f"{ok}/{CLIENTS} clients got 58006; the others: {problems[:5]}"
    finally:
        for sock in socks:
            sock.close()


@pytest.mark.parametrize("pool_mode", ["transaction", "session"])
def test_sigint_notice_reaches_every_idle_psycopg_client(
    doorman: StartDoorman, pool_config: MakePoolConfig, pg_trust: TempPostgres, pool_mode: str
) -> None:
    """50 idle psycopg connections; after SIGINT each one's next query fails with SQLSTATE 58006 (in session
    mode every client holds a server, so they get the notice when shutdown_timeout ends)."""
    config = pool_config(
        pg_trust,
        [APP_USER],
        pool_size=CLIENTS if pool_mode == "session" else 4,
        pool_mode=pool_mode,
        general={"shutdown_timeout": "1s"},
    )
    proc = doorman(config)
    conns = [psycopg.connect(proc.dsn(password=PASSWORD), autocommit=True, connect_timeout=10) for _ in range(CLIENTS)]
    try:
        for conn in conns:
            conn.execute("select 1")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
        got: list[str | None] = []
        for conn in conns:
            try:
                conn.execute("select 1")
                got.append("no error")
            except psycopg.OperationalError as exc:
                got.append(exc.sqlstate or str(exc).strip().splitlines()[0])
        assert got.count("58006") == CLIENTS, f"{got.count('58006')}/{CLIENTS} got 58006: {sorted(set(got))}"
    finally:
        for conn in conns:
            conn.close()


def test_sigint_notice_reaches_clients_that_are_sending(
    doorman: StartDoorman, pool_config: MakePoolConfig, pg_trust: TempPostgres
) -> None:
    """Clients in the middle of sending a large (unfinished) query when SIGINT arrives still read 58006."""
    proc = doorman(trusted_config(pool_config, pg_trust))
    socks = idle_raw_clients(proc, 20)
    try:
        body_size = 512 * 1024
        header = b"Q" + struct.pack("!i", 4 + body_size)
        for sock in socks:
            sock.sendall(header + b"x" * 1024)  # the rest of the body is still to come
        proc.send_signal(signal.SIGINT)
        results = []
        for sock in socks:
            results.append(fatal_then_eof(sock, b"x" * (64 * 1024)))
        assert proc.wait(10) == 0
        ok = sum(1 for status, data in results if status == "ok" and sqlstates(data) == ["58006"])  # type: ignore[arg-type]
        assert ok == len(socks), f"{ok}/{len(socks)} got 58006: {[r for r in results if r[0] != 'ok'][:3]}"
    finally:
        for sock in socks:
            sock.close()


def test_sigint_notice_reaches_busy_psycopg_clients(
    doorman: StartDoorman, pool_config: MakePoolConfig, pg_trust: TempPostgres
) -> None:
    """50 psycopg clients running one query after another when SIGINT arrives: each one's last query fails with
    SQLSTATE 58006 (a client sends its next query right after the ReadyForQuery the pooler's notice follows, so
    the pooler closes with that query unread)."""
    proc = doorman(trusted_config(pool_config, pg_trust))
    conns = [psycopg.connect(proc.dsn(password=PASSWORD), autocommit=True, connect_timeout=10) for _ in range(CLIENTS)]
    results: list[str] = []
    start = threading.Barrier(CLIENTS + 1)

    def run_queries(conn: psycopg.Connection[Any]) -> None:
        start.wait()
        try:
            for _ in range(100_000):
                conn.execute("select 1")
            results.append("no error")
        except psycopg.OperationalError as exc:
            results.append(exc.sqlstate or str(exc).strip().splitlines()[-1])

    threads = [threading.Thread(target=run_queries, args=(conn,)) for conn in conns]
    try:
        for thread in threads:
            thread.start()
        start.wait()
        time.sleep(0.3)  # let them run
        proc.send_signal(signal.SIGINT)
        for thread in threads:
            thread.join(20)
        assert proc.wait(10) == 0
        counts = {r: results.count(r) for r in set(results)}
        assert counts.get("58006") == CLIENTS, f"{counts.get('58006', 0)}/{CLIENTS} got 58006: {counts}"
    finally:
        for conn in conns:
            conn.close()
