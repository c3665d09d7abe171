"""The startup phase of the wire protocol, byte by byte (raw sockets) and with psql/libpq.

SSLRequest and GSSENCRequest get a single 'N' and the StartupMessage follows on the same socket; unsupported
protocol versions, bad lengths, garbage and a StartupMessage without ``user`` get one ErrorResponse and a close;
idle or half-sent connections bother nobody, and are dropped after ``client_login_timeout``.  Before
authentication a client cannot make the pooler hold a large message (08P01 from the header alone), and clients over
``max_connections`` take no slot.  The synthetic startup reply (AuthenticationOk, ParameterStatus, BackendKeyData
with pg_doorman's own random pid, ReadyForQuery 'I') is checked field by field.  After login, messages with an
impossible or oversized declared length are refused with 08P01 / 53200 and only that client is closed.

Clients log in with md5 (a one-round-trip exchange a raw socket can answer; ``RawWire.login``).
"""

from __future__ import annotations

import itertools
import os
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from wire_client import (
    PROTOCOL_3_0,
    RawWire,
    error_map,
    md5_password_message,
    md5_verifier,
    query,
    startup_packet,
)

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

    def login(  # type: ignore[override]
        self, params: dict[str, str], *, version: int = PROTOCOL_3_0, pipelined: bytes = b""
    ) -> list[tuple[bytes, bytes]]:
        """Log in as ``params["user"]`` with its password; everything after the md5 request up to ReadyForQuery."""
        msgs = super().login(params, PASSWORDS[params["user"]], version=version, pipelined=pipelined)
        assert msgs[-1][0] == b"Z", msgs
        return msgs

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
PASSWORDS = {"app": "app_pass", "app2": "app2_pass"}


def assert_serves(proc: Any) -> None:
    """A normal client still gets a full login and a query answered."""
    with Wire(proc.port) as wire:
        msgs = wire.login(LOGIN)
        assert msgs[-1] == (b"Z", b"I")
        assert data_rows(wire.simple_query("select 40 + 2")) == [["42"]]
    with psycopg.connect(proc.dsn(), connect_timeout=10) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def run_psql(proc: Any, conninfo_extra: str, sql: str = "select current_user") -> subprocess.CompletedProcess[str]:
    conninfo = f"host={HOST} port={proc.port} user=app password=app_pass dbname=appdb connect_timeout=10"
    conninfo += " " + conninfo_extra
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    return subprocess.run(
        ["psql", "-X", "-At", "-d", conninfo, "-c", sql],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def md5_users(*names: str) -> list[dict[str, str]]:
    return [{"username": name, "password": md5_verifier(PASSWORDS[name], name)} for name in names]


@pytest.fixture
def pooler(pg_trust: TempPostgres, doorman: StartDoorman, pool_config: PoolConfig) -> Any:
    """pg_doorman with users app/app2 (md5 passwords), on the trusted cluster; max_message_size 1MB."""
    config = pool_config(pg_trust, md5_users("app", "app2"), pool_size=4, general={"max_message_size": "1MB"})
    return doorman(config)


# ---------------------------------------------------------------- SSL / GSS negotiation


@pytest.mark.parametrize(
    "preamble",
    [[SSL_REQUEST], [GSSENC_REQUEST], [GSSENC_REQUEST, SSL_REQUEST], [SSL_REQUEST, GSSENC_REQUEST]],
    ids=["ssl", "gssenc", "gssenc-then-ssl", "ssl-then-gssenc"],
)
def test_encryption_requests_get_n_then_startup_works(pooler: Any, preamble: list[bytes]) -> None:
    with Wire(pooler.port) as wire:
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


def test_psql_sslmode_prefer_and_require(pooler: Any) -> None:
    ok = run_psql(pooler, "sslmode=prefer")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == "app"
    required = run_psql(pooler, "sslmode=require")
    assert required.returncode == 2
    assert "server does not support SSL" in required.stderr
    # libpq's own sslmode=require fails the same way through psycopg.
    with pytest.raises(psycopg.OperationalError, match="does not support SSL"):
        psycopg.connect(pooler.dsn() + " sslmode=require", connect_timeout=10)
    assert_serves(pooler)


def test_psql_gssencmode_prefer(pooler: Any) -> None:
    result = run_psql(pooler, "gssencmode=prefer sslmode=prefer")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "app"


def test_libpq_direct_tls_fails_cleanly(pooler: Any) -> None:
    """PG17 direct TLS (a ClientHello instead of a StartupMessage) is not supported: a fast failure, no hang."""
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pooler.dsn() + " sslmode=require sslnegotiation=direct", connect_timeout=10)
    assert time.monotonic() - started < 5
    assert_serves(pooler)


# ---------------------------------------------------------------- bad first packets


@pytest.mark.parametrize(("version", "label"), [(0x00020000, "2.0"), (0x00040000, "4.0")])
def test_unsupported_protocol_version(pooler: Any, version: int, label: str) -> None:
    with Wire(pooler.port) as wire:
        wire.send(startup_packet(LOGIN, version=version))
        fields = expect_fatal(wire, "0A000")
        assert label in fields["M"]
    assert_serves(pooler)


@pytest.mark.parametrize("version", [0x00030002, 0x00030005])
def test_newer_minor_version_is_negotiated_down_to_3_0(pooler: Any, version: int) -> None:
    """As PostgreSQL 15 does: NegotiateProtocolVersion (3.0, unknown _pq_ options listed), then a normal login."""
    with Wire(pooler.port) as wire:
        msgs = wire.login(LOGIN | {"_pq_.future_option": "x"}, version=version)
        kinds = [kind for kind, _ in msgs]
        assert kinds[0] == b"v"
        newest, count = struct.unpack_from("!ii", msgs[0][1])
        assert (newest, count) == (0, 1)
        assert msgs[0][1][8:] == b"_pq_.future_option\x00"
        assert kinds[1] == b"R" and msgs[-1] == (b"Z", b"I")
        wire.send(query("select 41 + 1"))
        assert data_rows(wire.read_until(b"Z")) == [["42"]]
    assert_serves(pooler)


@pytest.mark.parametrize("length", [0, 4, 7, 10_001, 0x7FFFFFFF, -1])
def test_bad_startup_length(pooler: Any, length: int) -> None:
    with Wire(pooler.port) as wire:
        wire.send(struct.pack("!i", length) + struct.pack("!i", PROTOCOL_3_0))
        expect_fatal(wire, "08P01")
    assert_serves(pooler)


def test_startup_length_limit_is_10000_inclusive(pooler: Any) -> None:
    base = startup_packet(LOGIN | {"application_name": ""})
    pad = 10_000 - len(base)
    params = LOGIN | {"application_name": "a" * pad}
    assert len(startup_packet(params)) == 10_000
    with Wire(pooler.port) as wire:
        msgs = wire.login(params)
        assert msgs[-1] == (b"Z", b"I")
    packet = startup_packet(LOGIN | {"application_name": "a" * (pad + 1)})
    with Wire(pooler.port) as wire:
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
def test_garbage_first_packet(pooler: Any, garbage: bytes) -> None:
    with Wire(pooler.port) as wire:
        wire.send(garbage)
        expect_fatal(wire)
    assert_serves(pooler)


@pytest.mark.parametrize("params", [{"database": "appdb"}, {"user": "", "database": "appdb"}, {}])
def test_startup_without_user_is_28000(pooler: Any, params: dict[str, str]) -> None:
    with Wire(pooler.port) as wire:
        wire.send(startup_packet(params))
        expect_fatal(wire, "28000")
    assert_serves(pooler)


def test_cancel_request_with_unknown_key_just_closes(pooler: Any) -> None:
    with Wire(pooler.port) as wire:
        wire.send(struct.pack("!iiii", 16, 80877102, 12345, 67890))
        assert wire.closed_by_peer()
    assert_serves(pooler)


def test_silent_and_half_sent_clients_do_not_affect_others(pooler: Any) -> None:
    silent = Wire(pooler.port)
    half_open = Wire(pooler.port)
    half_open.send(startup_packet(LOGIN)[:10])
    half_header = Wire(pooler.port)
    half_header.send(b"\x00\x00")
    try:
        for _ in range(3):
            dropped = Wire(pooler.port)
            dropped.send(startup_packet(LOGIN)[:7])
            dropped.close()
            dropped = Wire(pooler.port)
            dropped.close()
        assert_serves(pooler)
        # The half-sent startup completes later and still works.
        half_open.send(startup_packet(LOGIN)[10:])
        kind, body = half_open.read_message()
        assert kind == b"R" and struct.unpack("!i", body[:4])[0] == 5
        half_open.send(md5_password_message("app_pass", "app", body[4:8]))
        msgs = half_open.read_until(b"Z")
        assert msgs[-1] == (b"Z", b"I")
        assert data_rows(half_open.simple_query("select 7")) == [["7"]]
        # A startup packet and a password answer trickled in byte by byte work as well.
        with Wire(pooler.port) as slow:

            def trickle(data: bytes) -> None:
                for i, byte in enumerate(data):
                    slow.send(bytes([byte]))
                    if i % 10 == 0:
                        time.sleep(0.001)

            trickle(startup_packet(LOGIN))
            kind, body = slow.read_message()
            assert kind == b"R"
            trickle(md5_password_message("app_pass", "app", body[4:8]) + query("select 8"))
            msgs = slow.read_until(b"Z")
            msgs = slow.read_until(b"Z")
            assert data_rows(msgs) == [["8"]]
    finally:
        silent.close()
        half_open.close()
        half_header.close()
    assert pooler.returncode is None


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


def test_startup_reply_shape(pooler: Any, pg_trust: TempPostgres) -> None:
    with Wire(pooler.port) as wire:
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


def test_startup_reply_reports_client_parameters(pooler: Any) -> None:
    with Wire(pooler.port) as wire:
        msgs = wire.login(LOGIN | {"client_encoding": "LATIN1", "DateStyle": "SQL, DMY"})
        params = dict(parameter_status(body) for k, body in msgs if k == b"S")
        assert params["client_encoding"] == "LATIN1"
        assert params["DateStyle"] == "SQL, DMY"
        rows = data_rows(wire.simple_query("show client_encoding"))
        assert rows == [["LATIN1"]]


def test_backend_key_is_pooler_own_for_psycopg(pooler: Any) -> None:
    with pooler.connect(application_name="psycopg_key_test") as a, pooler.connect() as b:
        assert a.info.parameter_status("application_name") == "psycopg_key_test"
        real = a.execute("select pg_backend_pid()").fetchone()
        assert real is not None
        assert a.info.backend_pid != real[0]
        # Each client has its own key.
        assert a.info.backend_pid != b.info.backend_pid


def test_login_and_query_in_one_packet(pooler: Any) -> None:
    """A client that pipelines its first query behind its password answer gets it answered after login."""
    with Wire(pooler.port) as wire:
        first = wire.login(LOGIN, pipelined=query("select 'pipelined'"))
        assert first[0] == (b"R", struct.pack("!i", 0))
        assert data_rows(wire.read_until(b"Z")) == [["pipelined"]]


# ---------------------------------------------------------------- after login


@pytest.fixture
def bystander(pooler: Any) -> Iterator[psycopg.Connection[Any]]:
    """Another client inside an open transaction while a bad client misbehaves."""
    conn = psycopg.connect(pooler.dsn(user="app2"), connect_timeout=10)
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
def test_message_with_bogus_length_after_login(pooler: Any, bystander: Any, kind: bytes, length: int) -> None:
    with Wire(pooler.port) as wire:
        wire.login(LOGIN)
        wire.send(kind + struct.pack("!i", length))
        expect_fatal(wire, "08P01")
    check_bystander(bystander)
    assert_serves(pooler)


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
def test_malformed_extended_message_after_login(pooler: Any, bystander: Any, body: bytes) -> None:
    """Parse/Bind/Describe/Close whose strings are not NUL-terminated: the pooler reads their statement names
    (prepared statements in transaction mode), so it must refuse them itself, and only that client."""
    with Wire(pooler.port) as wire:
        wire.login(LOGIN)
        wire.send(body[:1] + struct.pack("!i", len(body) + 3) + body[1:] + b"S\x00\x00\x00\x04")
        expect_fatal(wire, "08P01")
    check_bystander(bystander)
    assert_serves(pooler)


def test_bogus_length_inside_a_transaction(pooler: Any, bystander: Any) -> None:
    with Wire(pooler.port) as wire:
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
    assert_serves(pooler)


def test_message_over_max_message_size(pooler: Any, bystander: Any) -> None:
    with Wire(pooler.port) as wire:
        wire.login(LOGIN)
        # A declared length over 1MB: refused from the header alone.
        wire.send(b"Q" + struct.pack("!i", 2 * 1024 * 1024))
        fields = expect_fatal(wire, "53200")
        assert "1048576" in fields["M"] or "size" in fields["M"]
    with Wire(pooler.port) as wire:
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
    assert_serves(pooler)


def test_huge_message_with_psycopg_is_refused(pooler: Any) -> None:
    with pooler.connect() as conn:
        with pytest.raises(psycopg.OperationalError):
            conn.execute("select length(%s)", ["y" * (2 * 1024 * 1024)])
        assert conn.closed or conn.broken
    assert_serves(pooler)


def test_many_bad_clients_concurrently(pooler: Any) -> None:
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
            with Wire(pooler.port) as wire:
                if data:
                    wire.send(data)
                    wire.closed_by_peer(2)
        except OSError:
            pass

    def good() -> None:
        try:
            assert_serves(pooler)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=bad, args=(d,)) for d in bad_inputs * 4]
    threads += [threading.Thread(target=good) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert pooler.returncode is None


# ---------------------------------------------------------------- before authentication: bounded cost


def test_oversized_password_message_is_refused_at_once_without_buffering(
    pg_trust: TempPostgres, doorman: StartDoorman, pool_config: PoolConfig
) -> None:
    """A stranger declares a 100 MB password message (under the default 256 MB max_message_size) and starts sending
    it: refused from the header (08P01), before any of the body is held, and six such clients do not grow the
    pooler's memory."""
    pooler = doorman(pool_config(pg_trust, md5_users("app", "app2")))
    assert_serves(pooler)  # code paths loaded before the baseline
    before = pooler.rss_kib()
    wires: list[Wire] = []
    senders: list[threading.Thread] = []
    try:
        for _ in range(6):
            wire = Wire(pooler.port)
            wires.append(wire)
            wire.send(startup_packet(LOGIN))
            kind, _ = wire.read_message()
            assert kind == b"R"
            declared = b"p" + struct.pack("!i", 100 * 1024 * 1024)

            def send_body(wire: Wire = wire, head: bytes = declared) -> None:
                try:
                    wire.sock.sendall(head + b"x" * (8 * 1024 * 1024))
                except OSError:
                    pass  # the pooler refused and closed: the rest cannot be sent

            sender = threading.Thread(target=send_body, daemon=True)
            sender.start()
            senders.append(sender)
        for sender in senders:  # refused at once: the rest of each body cannot be sent
            sender.join(5)
        time.sleep(0.3)
        grown_mib = (pooler.rss_kib() - before) / 1024
        assert grown_mib < 20, f"RSS grew by {grown_mib:.1f} MiB for six refused clients"
        for wire in wires:
            started = time.monotonic()
            kind, body = wire.read_message()
            assert kind == b"E", (kind, body)
            fields = error_map(body)
            assert (fields["C"], fields["M"]) == ("08P01", "invalid message length"), fields
            assert time.monotonic() - started < 1
    finally:
        for wire in wires:
            wire.close()
        for sender in senders:
            sender.join(10)
    assert_serves(pooler)


@pytest.fixture
def impatient(pg_trust: TempPostgres, doorman: StartDoorman, pool_config: PoolConfig) -> Any:
    """pg_doorman with client_login_timeout 1s and room for two clients."""
    general = {"client_login_timeout": "1s", "max_connections": 2, "backlog": 64}  # backlog: 2 would drop SYNs
    return doorman(pool_config(pg_trust, md5_users("app", "app2"), pool_size=4, general=general))


@pytest.mark.parametrize("stall", ["partial-startup", "after-challenge"])
def test_stalled_login_is_closed_after_client_login_timeout(impatient: Any, stall: str) -> None:
    with Wire(impatient.port) as wire:
        started = time.monotonic()
        if stall == "partial-startup":
            wire.send(startup_packet(LOGIN)[:12])
        else:
            wire.send(startup_packet(LOGIN))
            assert wire.read_message()[0] == b"R"
        fields = expect_fatal(wire, "57014")
        assert "authentication" in fields["M"] and "timeout" in fields["M"], fields
        assert 0.8 < time.monotonic() - started < 4
    assert_serves(impatient)


def test_clients_over_max_connections_take_no_slot(impatient: Any) -> None:
    """Refused connections (here: ones that never finish their first packet) are not counted as clients: when a
    real client leaves, the next one gets its slot even while the refused ones are still connected."""
    first, second = Wire(impatient.port), Wire(impatient.port)
    stalled: list[Wire] = []
    try:
        first.login(LOGIN)
        second.login(LOGIN | {"user": "app2"})
        for _ in range(3):
            stalled.append(Wire(impatient.port))
            stalled[-1].send(startup_packet(LOGIN)[:6])
        # SSLRequest is still answered for an over-limit client, then the StartupMessage gets 53300.
        with Wire(impatient.port) as over:
            over.send(struct.pack("!ii", 8, 80877103))
            assert over.read_bytes(1) == b"N"
            over.send(startup_packet(LOGIN))
            fields = expect_fatal(over, "53300")
            assert fields["M"] == "sorry, too many clients already"
        first.close()
        time.sleep(0.3)  # the pooler sees the close
        with Wire(impatient.port) as third:
            assert third.login(LOGIN)[-1] == (b"Z", b"I")
        # The over-limit connections were dropped after client_login_timeout too.
        for wire in stalled:
            assert wire.closed_by_peer(3)
    finally:
        for wire in (first, second, *stalled):
            wire.close()


def test_backend_key_pids_are_random_and_unique(pooler: Any) -> None:
    keys = []
    wires = [Wire(pooler.port) for _ in range(10)]
    try:
        for wire in wires:
            msgs = wire.login(LOGIN)
            keys.append(struct.unpack("!ii", next(body for kind, body in msgs if kind == b"K")))
    finally:
        for wire in wires:
            wire.close()
    pids = sorted(pid for pid, _ in keys)
    assert len(set(pids)) == len(pids)
    assert all(pid > 0 for pid in pids)
    # Sequential ids (1, 2, 3, ...) would tell how many clients came before and where a neighbour's key is.
    assert not all(b - a == 1 for a, b in itertools.pairwise(pids)), pids
