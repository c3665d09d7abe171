"""Slowloris and the cost of unauthenticated clients, with figures (README "Hardening").

1,000 connections that send part of a startup packet and then nothing: a legitimate client's query latency (p99
over 200 queries) and connect time barely move while they hang on, they are all closed with 57014 after
``client_login_timeout``, and each costs the pooler a few KiB of RSS.  Clients parked at the password prompt with a
maximal (10,000-byte) startup packet cost no more.  (A huge declared password message is refused from its header:
tests/integration/test_startup_protocol.py, test_oversized_password_message_is_refused_at_once_without_buffering.)
"""

from __future__ import annotations

import resource
import select
import socket
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from wire_client import md5_verifier, startup_packet

from pg_doorman.devcluster import TempPostgres

HALF_OPEN = 1000
LOGIN_TIMEOUT_S = 8.0
LOGIN = {"user": "app", "database": "appdb"}
QUERIES = 200
P99_SLOWDOWN_BOUND = 3.0  # p99 with the half-open crowd stays under 3x the p99 without (+ 2 ms scheduling noise)
RSS_PER_CLIENT_KIB_BOUND = 48


@pytest.fixture(autouse=True)
def enough_descriptors() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, 4 * HALF_OPEN + 512)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= 2 * HALF_OPEN + 256, "cannot raise RLIMIT_NOFILE"
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
def crowded(pg_trust: TempPostgres, doorman: Callable[..., Any], pool_config: Callable[..., Any]) -> Any:
    users = [{"username": "app", "password": md5_verifier("app_pass", "app")}]
    general = {
        "client_login_timeout": f"{LOGIN_TIMEOUT_S:g}s",
        "max_connections": 3 * HALF_OPEN,
        "backlog": 4096,
    }
    return doorman(pool_config(pg_trust, users, pool_size=4, general=general))


def open_many(port: int, count: int, payload: bytes) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        if payload:
            sock.sendall(payload)
        socks.append(sock)
    return socks


def query_latencies_ms(conn: psycopg.Connection[Any]) -> list[float]:
    out = []
    for i in range(QUERIES):
        started = time.perf_counter()
        assert conn.execute("select %s::int", [i]).fetchone() == (i,)
        out.append((time.perf_counter() - started) * 1000)
    return out


def connect_ms(proc: Any, count: int = 20) -> float:
    """Median time of a full psycopg login (md5) and one query through the pooler."""
    times = []
    for _ in range(count):
        started = time.perf_counter()
        with psycopg.connect(proc.dsn(), connect_timeout=5, autocommit=True) as conn:
            conn.execute("select 1")
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


def wait_all_closed(socks: list[socket.socket], timeout: float) -> int:
    """Wait until the pooler closed every socket; returns how many are still open at the deadline."""
    open_socks = {s.fileno(): s for s in socks}
    poller = select.poll()
    for fd in open_socks:
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    deadline = time.monotonic() + timeout
    while open_socks and time.monotonic() < deadline:
        for fd, _ in poller.poll(200):
            sock = open_socks[fd]
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                poller.unregister(fd)
                del open_socks[fd]
            else:
                assert data.startswith(b"E") and b"C57014\x00" in data, data
    return len(open_socks)


def test_thousand_half_open_startups_do_not_slow_others_and_are_closed(crowded: Any) -> None:
    with psycopg.connect(crowded.dsn(), connect_timeout=5, autocommit=True) as conn:
        query_latencies_ms(conn)  # warm-up
        alone = query_latencies_ms(conn)
        connect_alone = connect_ms(crowded)
        rss_before = crowded.rss_kib()
        started = time.monotonic()
        socks = open_many(crowded.port, HALF_OPEN, startup_packet(LOGIN)[:10])
        try:
            time.sleep(0.5)  # let the pooler accept and park them all
            crowd = query_latencies_ms(conn)
            connect_crowd = connect_ms(crowded)
            rss_per_client = (crowded.rss_kib() - rss_before) / HALF_OPEN
            assert time.monotonic() - started < LOGIN_TIMEOUT_S - 1, "measurement outlasted the login timeout"
            print(
                f"\nslowloris: p99 {p99(alone):.2f} ms alone, {p99(crowd):.2f} ms with {HALF_OPEN} half-open; "
                f"median {statistics.median(alone):.2f} / {statistics.median(crowd):.2f} ms; "
                f"connect {connect_alone:.1f} / {connect_crowd:.1f} ms; RSS {rss_per_client:.1f} KiB per half-open"
            )
            assert p99(crowd) < P99_SLOWDOWN_BOUND * p99(alone) + 2.0
            assert connect_crowd < P99_SLOWDOWN_BOUND * connect_alone + 5.0
            assert rss_per_client < RSS_PER_CLIENT_KIB_BOUND
            still_open = wait_all_closed(socks, LOGIN_TIMEOUT_S + 10)
            closed_after = time.monotonic() - started
            assert still_open == 0, f"{still_open} half-open connections outlived client_login_timeout"
            assert closed_after > LOGIN_TIMEOUT_S - 0.5
            print(f"slowloris: all {HALF_OPEN} closed {closed_after:.1f}s after opening (timeout {LOGIN_TIMEOUT_S}s)")
        finally:
            for sock in socks:
                sock.close()
        assert conn.execute("select 42").fetchone() == (42,)
    assert crowded.returncode is None


@pytest.mark.parametrize("stage", ["max-startup-packet-half-sent", "parked-at-password-prompt"])
def test_rss_per_unauthenticated_client_is_small(crowded: Any, stage: str) -> None:
    """Each unauthenticated client costs a few KiB, whatever it sends: a startup packet of the maximal 10,000 bytes
    (declared, 9,999 sent) or a complete one of 10,000 bytes and then silence at the password prompt."""
    base = len(startup_packet(LOGIN | {"application_name": ""}))
    full = startup_packet(LOGIN | {"application_name": "z" * (10_000 - base)})
    assert len(full) == 10_000
    payload = full[:-1] if stage == "max-startup-packet-half-sent" else full
    count = HALF_OPEN // 2
    psycopg.connect(crowded.dsn(), connect_timeout=5).close()  # code paths loaded before the baseline
    before = crowded.rss_kib()
    socks = open_many(crowded.port, count, payload)
    try:
        time.sleep(1.0)
        per_client = (crowded.rss_kib() - before) / count
        print(f"\n{stage}: {per_client:.1f} KiB RSS per unauthenticated client ({count} clients)")
        assert per_client < RSS_PER_CLIENT_KIB_BOUND
        with psycopg.connect(crowded.dsn(), connect_timeout=5) as conn:
            assert conn.execute("select 7").fetchone() == (7,)
    finally:
        for sock in socks:
            sock.close()
    assert crowded.returncode is None
