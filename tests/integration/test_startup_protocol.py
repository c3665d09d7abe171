"""The startup phase of the wire protocol, byte by byte (raw sockets) and with psql/libpq.

SSLRequest and GSSENCRequest get a single 'N' and the StartupMessage follows on the same socket; unsupported
protocol versions, bad lengths, garbage and a StartupMessage without ``user`` get one ErrorResponse and a close;
idle or half-sent connections bother nobody.  The synthetic startup reply (AuthenticationOk, ParameterStatus,
BackendKeyData with pg_doorman's own pid, ReadyForQuery 'I') is checked field by field.  After login, messages with
an impossible or oversized declared length are refused with 08P01 / 53200 and only that client is closed.
"""

from __future__ import annotations

import os
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from wire_client import PROTOCOL_3_0, RawWire, error_map, query, startup_packet

from pg_doorman.devcluster import TempPostgres

StartDoorman = Callable[..., Any]
PoolConfig = Callable[..., dict[str, Any]]

HOST = "127.0.0.1"
IO_TIMEOUT = 5.0
SSL_REQUEST = struct.pack("!ii", 8, 80877103)
GSSENC_REQUEST = struct.pack("!ii", 8, 80877104)


# ---------------------------------------------------------------- raw wire helpers


def parameter_status(body: bytes) -> tuple[str, str]:
    name, value, _ = body.split(b"\0", 2)
    return name.decode(), value.decode()


class Wire(RawWire):
    """A blocking socket speaking the PostgreSQL wire protocol, for asserting exact bytes."""

    def __init__(self, port: int, timeout: float = IO_TIMEOUT) -> None:
        super().__init__(port, timeout, HOST)

    def closed_by_peer(self, timeout: float = IO_TIMEOUT) -> bool:
        return super().closed_by_peer(timeout)

    def login(self, params: dict[str, str]) -> list[tuple[bytes, bytes]]:
        """StartupMessage for a trusted user; returns everything up to and including ReadyForQuery."""
        self.send(startup_packet(params))
        return self.read_until(b"Z")

    def simple_query(self, sql: str) -> list[tuple[bytes, bytes]]:
        self.send(query(sql))
        return self.read_until(b"Z")


def data_rows(msgs: list[tuple[bytes, bytes]]) -> list[list[str | None]]:
    rows = []
    for kind, body in msgs:
        if kind != b"D":
            continue
        count = struct.unpack("!h", body[:2])[0]
        pos, row = 2, []
        for _ in range(count):
            size = struct.unpack("!i", body[pos : pos + 4])[0]
            pos += 4
            if size < 0:
                row.append(None)
            else:
                row.append(body[pos : pos + size].decode())
                pos += size
        rows.append(row)
    return rows


def expect_fatal(wire: Wire, sqlstate: str | None = None) -> dict[str, str]:
    """The next message is an ErrorResponse (with ``sqlstate`` if given) and the pooler closes the socket."""
    kind, body = wire.read_message()
    assert kind == b"E", f"expected ErrorResponse, got {kind!r}: {body[:200]!r}"
    fields = error_map(body)
    if sqlstate is not None:
        assert fields.get("C") == sqlstate, fields
    assert fields.get("S") == "FATAL", fields
    assert wire.closed_by_peer(), "connection must be closed after the FATAL error"
    return fields


LOGIN = {"user": "app", "database": "appdb"}


def assert_serves(proc: Any) -> None:
    """A normal client still gets a full login and a query answered."""
    with Wire(proc.port) as wire:
        msgs = wire.login(LOGIN)
        assert msgs[-1] == (b"Z", b"I")
        assert data_rows(wire.simple_query("select 40 + 2")) == [["42"]]
    with psycopg.connect(proc.dsn(password=""), connect_timeout=10) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def run_psql(proc: Any, conninfo_extra: str, sql: str = "select current_user") -> subprocess.CompletedProcess[str]:
    conninfo = f"host={HOST} port={proc.port} user=app dbname=appdb connect_timeout=10 {conninfo_extra}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    return subprocess.run(
        ["psql", "-X", "-At", "-d", conninfo, "-c", sql],
        env=env, capture_output=True, text=True, timeout=30, check=False,
    )


@pytest.fixture
def trusted(pg_trust: TempPostgres, doorman: StartDoorman, pool_config: PoolConfig) -> Any:
    """pg_doorman with users app/app2 that need no password, on the trusted cluster; max_message_size 1MB."""
    config = pool_config(
        pg_trust,
        [{"username": "app", "password": ""}, {"username": "app2", "password": ""}],
        pool_size=4,
        general={"max_message_size": "1MB"},
    )
    return doorman(config)


# ---------------------------------------------------------------- SSL / GSS negotiation


@pytest.mark.parametrize(
    "preamble", [[SSL_REQUEST], [GSSENC_REQUEST], [GSSENC_REQUEST, SSL_REQUEST], [SSL_REQUEST, GSSENC_REQUEST]],
    ids=["ssl", "gssenc", "gssenc-then-ssl", "ssl-then-gssenc"],
)
def test_encryption_requests_get_n_then_startup_works(trusted: Any, preamble: list[bytes]) -> None:
    with Wire(trusted.port) as wire:
        for request in preamble:
            wire.send(request)
            # Exactly one byte, and nothing after it until the client speaks again.
            assert wire.read_bytes(1) == b"N"
            wire.sock.settimeout(0.2)
            with pytest.raises(TimeoutError):
                wire.sock.recv(1)
            wire.sock.settimeout(IO_TIMEOUT)
        msgs = wire.login(LOGIN)
        assert msgs[0] == (b"R", struct.pack("!i", 0))
        assert msgs[-1] == (b"Z", b"I")
        assert data_rows(wire.simple_query("select current_user")) == [["app"]]


def test_psql_sslmode_prefer_and_require(trusted: Any) -> None:
    ok = run_psql(trusted, "sslmode=prefer")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == "app"
    required = run_psql(trusted, "sslmode=require")
    assert required.returncode == 2
    assert "server does not support SSL" in required.stderr
    # libpq's own sslmode=require fails the same way through psycopg.
    with pytest.raises(psycopg.OperationalError, match="does not support SSL"):
        psycopg.connect(trusted.dsn(password="") + " sslmode=require", connect_timeout=10)
    assert_serves(trusted)


def test_psql_gssencmode_prefer(trusted: Any) -> None:
    result = run_psql(trusted, "gssencmode=prefer sslmode=prefer")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "app"


def test_libpq_direct_tls_fails_cleanly(trusted: Any) -> None:
    """PG17 direct TLS (a ClientHello instead of a StartupMessage) is not supported: a fast failure, no hang."""
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(trusted.dsn(password="") + " sslmode=require sslnegotiation=direct", connect_timeout=10)
    assert time.monotonic() - started < 5
    assert_serves(trusted)


# ---------------------------------------------------------------- bad first packets


@pytest.mark.parametrize(("version", "label"), [(0x00020000, "2.0"), (0x00040000, "4.0")])
def test_unsupported_protocol_version(trusted: Any, version: int, label: str) -> None:
    with Wire(trusted.port) as wire:
        wire.send(startup_packet(LOGIN, version=version))
        fields = expect_fatal(wire, "0A000")
        assert label in fields["M"]
    assert_serves(trusted)


@pytest.mark.parametrize("version", [0x00030002, 0x00030005])
def test_newer_minor_version_is_negotiated_down_to_3_0(trusted: Any, version: int) -> None:
    """As PostgreSQL 15 does: NegotiateProtocolVersion (3.0, unknown _pq_ options listed), then a normal login."""
    with Wire(trusted.port) as wire:
        wire.send(startup_packet(LOGIN | {"_pq_.future_option": "x"}, version=version))
        msgs = wire.read_until(b"Z")
        kinds = [kind for kind, _ in msgs]
        assert kinds[0] == b"v"
        newest, count = struct.unpack_from("!ii", msgs[0][1])
        assert (newest, count) == (0, 1)
        assert msgs[0][1][8:] == b"_pq_.future_option\x00"
        assert kinds[1] == b"R" and msgs[-1] == (b"Z", b"I")
        wire.send(query("select 41 + 1"))
        assert data_rows(wire.read_until(b"Z")) == [["42"]]
    assert_serves(trusted)


@pytest.mark.parametrize("length", [0, 4, 7, 10_001, 0x7FFFFFFF, -1])
def test_bad_startup_length(trusted: Any, length: int) -> None:
    with Wire(trusted.port) as wire:
        wire.send(struct.pack("!i", length) + struct.pack("!i", PROTOCOL_3_0))
        expect_fatal(wire, "08P01")
    assert_serves(trusted)


def test_startup_length_limit_is_10000_inclusive(trusted: Any) -> None:
    base = startup_packet(LOGIN | {"application_name": ""})
    pad = 10_000 - len(base)
    packet = startup_packet(LOGIN | {"application_name": "a" * pad})
    assert len(packet) == 10_000
    with Wire(trusted.port) as wire:
        wire.send(packet)
        msgs = wire.read_until(b"Z")
        assert msgs[-1] == (b"Z", b"I")
    packet = startup_packet(LOGIN | {"application_name": "a" * (pad + 1)})
    with Wire(trusted.port) as wire:
        wire.send(packet)
        expect_fatal(wire, "08P01")


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 32,  # TLS ClientHello
        struct.pack("!ii", 8, 0x12345678),
        struct.pack("!ii", 12, PROTOCOL_3_0) + b"abcd",  # no NUL terminators
        struct.pack("!ii", 16, PROTOCOL_3_0) + b"user\0app",  # missing value terminator
        struct.pack("!ii", 12, 80877102) + b"\0\0\0\1",  # CancelRequest of the wrong length
    ],
    ids=["http", "tls-hello", "unknown-code", "no-terminators", "half-pair", "short-cancel"],
)
def test_garbage_first_packet(trusted: Any, garbage: bytes) -> None:
    with Wire(trusted.port) as wire:
        wire.send(garbage)
        expect_fatal(wire)
    assert_serves(trusted)


@pytest.mark.parametrize("params", [{"database": "appdb"}, {"user": "", "database": "appdb"}, {}])
def test_startup_without_user_is_28000(trusted: Any, params: dict[str, str]) -> None:
    with Wire(trusted.port) as wire:
        wire.send(startup_packet(params))
        expect_fatal(wire, "28000")
    assert_serves(trusted)


def test_cancel_request_with_unknown_key_just_closes(trusted: Any) -> None:
    with Wire(trusted.port) as wire:
        wire.send(struct.pack("!iiii", 16, 80877102, 12345, 67890))
        assert wire.closed_by_peer()
    assert_serves(trusted)


def test_silent_and_half_sent_clients_do_not_affect_others(trusted: Any) -> None:
    silent = Wire(trusted.port)
    half_open = Wire(trusted.port)
    half_open.send(startup_packet(LOGIN)[:10])
    half_header = Wire(trusted.port)
    half_header.send(b"\x00\x00")
    try:
        for _ in range(3):
            dropped = Wire(trusted.port)
            dropped.send(startup_packet(LOGIN)[:7])
            dropped.close()
            dropped = Wire(trusted.port)
            dropped.close()
        assert_serves(trusted)
        # The half-sent startup completes later and still works.
        half_open.send(startup_packet(LOGIN)[10:])
        msgs = half_open.read_until(b"Z")
        assert msgs[-1] == (b"Z", b"I")
        assert data_rows(half_open.simple_query("select 7")) == [["7"]]
        # A startup packet trickled in byte by byte works as well.
        with Wire(trusted.port) as slow:
            for i, byte in enumerate(startup_packet(LOGIN) + query("select 8")):
                slow.send(bytes([byte]))
                if i % 10 == 0:
                    time.sleep(0.001)
            msgs = slow.read_until(b"Z")
            msgs = slow.read_until(b"Z")
            assert data_rows(msgs) == [["8"]]
    finally:
        silent.close()
        half_open.close()
        half_header.close()
    assert trusted.returncode is None


# ---------------------------------------------------------------- startup reply


EXPECTED_PARAMETERS = {
    "server_version",
    "server_encoding",
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "integer_datetimes",
    "standard_conforming_strings",
    "application_name",
}


def test_startup_reply_shape(trusted: Any, pg_trust: TempPostgres) -> None:
    with Wire(trusted.port) as wire:
        msgs = wire.login(LOGIN | {"application_name": "startup_shape_test"})
        kinds = [k for k, _ in msgs]
        assert msgs[0] == (b"R", struct.pack("!i", 0))
        assert msgs[-1] == (b"Z", b"I")
        # AuthenticationOk, then ParameterStatus*, BackendKeyData, ReadyForQuery — nothing else.
        assert set(kinds[1:-2]) == {b"S"}
        assert kinds[-2] == b"K"
        params = dict(parameter_status(body) for k, body in msgs if k == b"S")
        assert set(params) >= EXPECTED_PARAMETERS, sorted(params)
        assert params["application_name"] == "startup_shape_test"
        assert params["server_version"] == pg_trust.psql("show server_version")
        assert params["server_encoding"] == "UTF8"
        assert params["integer_datetimes"] == "on"
        assert params["standard_conforming_strings"] == "on"
        key_body = msgs[-2][1]
        assert len(key_body) == 8
        pid, _secret = struct.unpack("!ii", key_body)
        rows = data_rows(wire.simple_query("select pg_backend_pid(), current_setting('application_name')"))
        backend_pid = int(rows[0][0] or 0)
        assert backend_pid in pg_trust.backend_pids(user="app", db="appdb")
        assert pid != backend_pid
        assert pid > 0
        # The application_name reached the server session too.
        assert rows[0][1] == "startup_shape_test"


def test_startup_reply_reports_client_parameters(trusted: Any) -> None:
    with Wire(trusted.port) as wire:
        msgs = wire.login(LOGIN | {"client_encoding": "LATIN1", "DateStyle": "SQL, DMY"})
        params = dict(parameter_status(body) for k, body in msgs if k == b"S")
        assert params["client_encoding"] == "LATIN1"
        assert params["DateStyle"] == "SQL, DMY"
        rows = data_rows(wire.simple_query("show client_encoding"))
        assert rows == [["LATIN1"]]


def test_backend_key_is_pooler_own_for_psycopg(trusted: Any) -> None:
    with trusted.connect(password="", application_name="psycopg_key_test") as a, trusted.connect(password="") as b:
        assert a.info.parameter_status("application_name") == "psycopg_key_test"
        real = a.execute("select pg_backend_pid()").fetchone()
        assert real is not None
        assert a.info.backend_pid != real[0]
        # Each client has its own key.
        assert a.info.backend_pid != b.info.backend_pid


def test_startup_and_query_in_one_packet(trusted: Any) -> None:
    """A client that pipelines its first query behind the StartupMessage gets it answered after login."""
    with Wire(trusted.port) as wire:
        wire.send(startup_packet(LOGIN) + query("select 'pipelined'"))
        first = wire.read_until(b"Z")
        assert first[0] == (b"R", struct.pack("!i", 0))
        assert data_rows(wire.read_until(b"Z")) == [["pipelined"]]


# ---------------------------------------------------------------- after login


@pytest.fixture
def bystander(trusted: Any) -> Iterator[psycopg.Connection[Any]]:
    """Another client inside an open transaction while a bad client misbehaves."""
    conn = psycopg.connect(trusted.dsn(user="app2", password=""), connect_timeout=10)
    conn.execute("select 1")  # opens a transaction (psycopg is not in autocommit)
    yield conn
    conn.close()


def check_bystander(conn: psycopg.Connection[Any]) -> None:
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
    assert conn.execute("select 2").fetchone() == (2,)
    conn.commit()
    assert conn.execute("select 3").fetchone() == (3,)


@pytest.mark.parametrize("length", [0, 2, 3])
@pytest.mark.parametrize("kind", [b"Q", b"P", b"S"])
def test_message_with_bogus_length_after_login(trusted: Any, bystander: Any, kind: bytes, length: int) -> None:
    with Wire(trusted.port) as wire:
        wire.login(LOGIN)
        wire.send(kind + struct.pack("!i", length))
        expect_fatal(wire, "08P01")
    check_bystander(bystander)
    assert_serves(trusted)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"P" + b"s1", id="parse-name-unterminated"),
        pytest.param(b"P" + b"s1\x00select 1", id="parse-query-unterminated"),
        pytest.param(b"B" + b"", id="bind-empty"),
        pytest.param(b"B" + b"\x00s1", id="bind-statement-unterminated"),
        pytest.param(b"D" + b"Ss1", id="describe-unterminated"),
        pytest.param(b"C" + b"Ss1", id="close-unterminated"),
    ],
)
def test_malformed_extended_message_after_login(trusted: Any, bystander: Any, body: bytes) -> None:
    """Parse/Bind/Describe/Close whose strings are not NUL-terminated: the pooler reads their statement names
    (prepared statements in transaction mode), so it must refuse them itself, and only that client."""
    with Wire(trusted.port) as wire:
        wire.login(LOGIN)
        wire.send(body[:1] + struct.pack("!i", len(body) + 3) + body[1:] + b"S\x00\x00\x00\x04")
        expect_fatal(wire, "08P01")
    check_bystander(bystander)
    assert_serves(trusted)


def test_bogus_length_inside_a_transaction(trusted: Any, bystander: Any) -> None:
    with Wire(trusted.port) as wire:
        wire.login(LOGIN)
        msgs = wire.simple_query("begin")
        assert msgs[-1] == (b"Z", b"T")
        wire.send(query("select 1") + b"Q\x00\x00\x00\x01")
        # The valid query may be answered first; then the error and the close.
        while True:
            kind, body = wire.read_message()
            if kind == b"E":
                assert error_map(body)["C"] == "08P01"
                break
        assert wire.closed_by_peer()
    check_bystander(bystander)
    assert_serves(trusted)


def test_message_over_max_message_size(trusted: Any, bystander: Any) -> None:
    with Wire(trusted.port) as wire:
        wire.login(LOGIN)
        # A declared length over 1MB: refused from the header alone.
        wire.send(b"Q" + struct.pack("!i", 2 * 1024 * 1024))
        fields = expect_fatal(wire, "53200")
        assert "1048576" in fields["M"] or "size" in fields["M"]
    with Wire(trusted.port) as wire:
        wire.login(LOGIN)
        # Just below the limit works ...
        sql = "select length('" + "x" * (1024 * 1024 - 100) + "')"
        assert data_rows(wire.simple_query(sql)) == [[str(1024 * 1024 - 100)]]
        # ... and an actually sent message just over it does not.
        sql = "select length('" + "x" * (1024 * 1024 + 100) + "')"
        try:
            wire.send(query(sql))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the pooler may close before reading everything
        expect_fatal(wire, "53200")
    check_bystander(bystander)
    assert_serves(trusted)


def test_huge_message_with_psycopg_is_refused(trusted: Any) -> None:
    with trusted.connect(password="") as conn:
        with pytest.raises(psycopg.OperationalError):
            conn.execute("select length(%s)", ["y" * (2 * 1024 * 1024)])
        assert conn.closed or conn.broken
    assert_serves(trusted)


def test_many_bad_clients_concurrently(trusted: Any) -> None:
    """Misbehaving connections in parallel with good ones: every good client is served."""
    bad_inputs = [
        b"GET / HTTP/1.0\r\n\r\n",
        struct.pack("!i", 3),
        startup_packet(LOGIN, version=0x00020000),
        startup_packet({"database": "appdb"}),
        b"",
    ]
    errors: list[BaseException] = []

    def bad(data: bytes) -> None:
        try:
            with Wire(trusted.port) as wire:
                if data:
                    wire.send(data)
                    wire.closed_by_peer(2)
        except OSError:
            pass

    def good() -> None:
        try:
            assert_serves(trusted)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=bad, args=(d,)) for d in bad_inputs * 4]
    threads += [threading.Thread(target=good) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert trusted.returncode is None
