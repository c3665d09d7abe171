"""pg_doorman's own TLS record layer (tlsstream) against hostile and heavy clients: garbage and half records after
login, a client that leaves mid-record or ends with close_notify while its transaction is open, big results to a
client that does not read, big COPY input, TLS 1.2, and a renegotiation attempt. After each, the one backend of the
pool (pool_size 1) is lent to the next client clean.

The hostile client is Python's ssl on memory BIOs over a plain socket (`TlsWire`), so a test can put raw bytes on
the wire between real records; the heavy ones are psycopg (libpq) and ``openssl s_client``."""

from __future__ import annotations

import os
import random
import shutil
import socket
import ssl
import struct
import subprocess
import time
from typing import Any

import psycopg
import pytest
from wire_client import RawWire, error_map, query

from pg_doorman.devcluster import TempPostgres, TlsFiles, generate_certificates

SSL_REQUEST = struct.pack("!ii", 8, 80877103)
LOGIN = {"user": "app", "database": "appdb"}


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return generate_certificates(str(tmp_path_factory.mktemp("tls")))


def tls_general(certs: TlsFiles, mode: str = "require") -> dict[str, Any]:
    return {"tls_mode": mode, "tls_certificate": certs.server_cert, "tls_private_key": certs.server_key}


class TlsWire(RawWire):
    """RawWire over TLS, with the records under our control: `send_raw` writes bytes to the TCP socket as they are."""

    def __init__(self, port: int, timeout: float = 10.0, *, maximum: ssl.TLSVersion | None = None) -> None:
        super().__init__(port, timeout)
        self.sock.sendall(SSL_REQUEST)
        assert self.sock.recv(1) == b"S"
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        if maximum is not None:
            ctx.maximum_version = maximum
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                self._receive()
        self._flush()

    def _flush(self) -> None:
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def _receive(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("connection closed")
        self.incoming.write(data)

    def send(self, data: bytes) -> None:
        self.tls.write(data)
        self._flush()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, n: int) -> None:
        while len(self.buf) < n:
            try:
                chunk = self.tls.read(65536)
            except ssl.SSLWantReadError:
                self._receive()
                continue
            if not chunk:
                raise EOFError("close_notify")
            self.buf += chunk

    def ended(self, timeout: float) -> bool:
        """True when the pooler ends this connection (close_notify, an alert, EOF or reset) within ``timeout``."""
        self.sock.settimeout(timeout)
        try:
            while True:
                try:
                    if not self.tls.read(65536):
                        return True
                except ssl.SSLWantReadError:
                    self._receive()
        except (EOFError, ssl.SSLError, ConnectionResetError):
            return True
        except TimeoutError:
            return False


def open_transaction(port: int) -> TlsWire:
    """A TLS client in the middle of a transaction that changed the session: what the next client must not see."""
    wire = TlsWire(port)
    assert wire.login(LOGIN, "app_pass")[-1][0] == b"Z"
    wire.send(query("begin; set search_path = leaked; create temp table leak_marker(x int)"))
    replies = wire.read_until(b"Z")
    assert replies[-1] == (b"Z", b"T"), replies
    return wire


def assert_next_client_clean(proc: Any) -> None:
    with psycopg.connect(proc.dsn("app", "app_pass") + " sslmode=require", connect_timeout=10) as conn:
        assert conn.execute("show search_path").fetchone() == ('"$user", public',)
        assert conn.execute("select count(*) from pg_class where relname = 'leak_marker'").fetchone() == (0,)
        assert conn.execute("select 1").fetchone() == (1,)


@pytest.fixture
def proc(doorman: Any, pg_md5: TempPostgres, pool_config: Any, certs: TlsFiles) -> Any:
    return doorman(pool_config(pg_md5, pool_size=1, general=tls_general(certs)))


def test_garbage_record_in_a_transaction_ends_only_that_client(proc: Any) -> None:
    wire = open_transaction(proc.port)
    # An application-data record whose authentication tag cannot verify.
    wire.send_raw(b"\x17\x03\x03\x00\x20" + b"\xa5" * 32)
    assert wire.ended(10)
    assert_next_client_clean(proc)
    assert "TLS error from" in proc.log_text()


def test_half_a_record_then_gone(proc: Any) -> None:
    wire = open_transaction(proc.port)
    wire.send_raw(b"\x17\x03\x03\x01\x00" + b"\x00" * 17)  # announces 256 bytes, sends 17
    wire.close()
    assert_next_client_clean(proc)


def test_a_query_split_into_one_byte_tcp_segments(proc: Any) -> None:
    wire = TlsWire(proc.port)
    assert wire.login(LOGIN, "app_pass")[-1][0] == b"Z"
    wire.tls.write(query("select 'pieces'"))
    records = wire.outgoing.read()
    wire.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for i in range(len(records)):
        wire.send_raw(records[i : i + 1])
        time.sleep(0.001)
    replies = wire.read_until(b"Z")
    assert any(kind == b"D" and b"pieces" in body for kind, body in replies)


def test_many_queries_in_one_tcp_segment(proc: Any) -> None:
    wire = TlsWire(proc.port)
    assert wire.login(LOGIN, "app_pass")[-1][0] == b"Z"
    for i in range(50):  # fifty records, sent together
        wire.tls.write(query(f"select {i}"))
    wire.send_raw(wire.outgoing.read())
    values = []
    for _ in range(50):
        values += [body for kind, body in wire.read_until(b"Z") if kind == b"D"]
    assert [int(body[6:]) for body in values] == list(range(50))


def test_close_notify_in_a_transaction_ends_the_session(proc: Any) -> None:
    wire = open_transaction(proc.port)
    try:
        wire.tls.unwrap()  # close_notify; the TCP connection stays open
    except ssl.SSLWantReadError:
        pass
    wire._flush()
    assert_next_client_clean(proc)  # pool_size 1: served only once the pooler let the first session go
    assert wire.ended(10)


def test_big_result_to_a_client_that_does_not_read_is_held_back(proc: Any) -> None:
    wire = TlsWire(proc.port)
    assert wire.login(LOGIN, "app_pass")[-1][0] == b"Z"
    rss_before = proc.rss_kib()
    wire.send(query("select repeat('x', 10000) from generate_series(1, 20000)"))  # 200 MB
    time.sleep(3)  # not reading: the pooler must stop reading the backend rather than buffer it
    grown = proc.rss_kib() - rss_before
    assert grown < 64 * 1024, f"RSS grew by {grown} KiB while the client did not read"
    rows = 0
    while True:
        kind, body = wire.read_message()
        if kind == b"D":
            rows += 1
            assert body.endswith(b"x" * 100)
        elif kind == b"Z":
            break
    assert rows == 20000


def test_big_copy_in_and_out_over_tls(proc: Any) -> None:
    line = ("y" * 1000 + "\n").encode()
    with psycopg.connect(proc.dsn("app", "app_pass") + " sslmode=require", connect_timeout=10) as conn:
        assert conn.pgconn.ssl_in_use
        conn.execute("create temp table copied(v text)")
        with conn.cursor().copy("copy copied from stdin") as copy:
            for _ in range(20):
                copy.write(line * 1000)  # 20 MB in 1 MB writes
        assert conn.execute("select count(*), sum(length(v)) from copied").fetchone() == (20000, 20000 * 1000)
        out = bytearray()
        with conn.cursor().copy("copy copied to stdout") as copy:
            for chunk in copy:
                out += chunk
        assert len(out) == 20000 * len(line)
        conn.rollback()


def test_tls_1_2_client(proc: Any) -> None:
    wire = TlsWire(proc.port, maximum=ssl.TLSVersion.TLSv1_2)
    assert wire.tls.version() == "TLSv1.2"
    assert wire.login(LOGIN, "app_pass")[-1][0] == b"Z"
    wire.send(query("select 'twelve'"))
    assert any(kind == b"D" and b"twelve" in body for kind, body in wire.read_until(b"Z"))


def test_renegotiation_is_refused_and_the_pooler_serves_on(proc: Any) -> None:
    openssl = shutil.which("openssl")
    assert openssl is not None
    # s_client speaks PostgreSQL's SSLRequest itself; "R" on a line of its own asks for a renegotiation (TLS 1.2).
    client = subprocess.run(
        [openssl, "s_client", "-connect", f"127.0.0.1:{proc.port}", "-starttls", "postgres", "-tls1_2"],
        input=b"R\n",
        capture_output=True,
        timeout=30,
        check=False,
    )
    output = (client.stdout + client.stderr).decode(errors="replace")
    assert "RENEGOTIATING" in output, output
    assert "no renegotiation" in output or "no_renegotiation" in output, output
    assert_next_client_clean(proc)


def test_plain_error_before_tls_and_encrypted_error_after(proc: Any) -> None:
    # tls_mode require: the refusal of a plain startup is plain; an error after TLS comes encrypted.
    wire = TlsWire(proc.port)
    wire.send(query("select 1")[:3])  # not a startup packet: 3 bytes, then the client stops
    wire.send(b"\x00\x00\x00\x08\x00\x00\x00\x00")
    kind, body = wire.read_message()
    assert kind == b"E"
    assert error_map(body)["C"] == "08P01"


def mutate(records: bytes, rng: random.Random) -> bytes:
    """A valid run of records, damaged one way: a flipped bit, cut short, a length field changed, random bytes
    appended or put in front, a record type changed, or two records swapped."""
    data = bytearray(records)
    how = rng.randrange(7)
    if how == 0:
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif how == 1:
        del data[rng.randrange(1, len(data)) :]
    elif how == 2:
        data[3:5] = struct.pack("!H", rng.choice((0, 1, 0x4000, 0x4101, 0xFFFF, len(data) - 4)))
    elif how == 3:
        data += rng.randbytes(rng.randrange(1, 300))
    elif how == 4:
        data[:0] = rng.randbytes(rng.randrange(1, 40))
    elif how == 5:
        data[0] = rng.choice((0x14, 0x15, 0x16, 0x18, 0x00, 0xFF))
    else:
        data = bytearray(records[len(records) // 2 :] + records[: len(records) // 2])
    return bytes(data)


def test_damaged_records_never_reach_postgresql_or_hurt_the_pooler(proc: Any) -> None:
    """A seeded mutator over the record layer (PG_DOORMAN_FUZZ_SEED, PG_DOORMAN_FUZZ_SECONDS as test_fuzz.py):
    every damaged record either fails that client's connection or, by chance intact, runs the query; the pooler
    lives, its memory stays bounded, and the next client always gets a clean backend."""
    seed = int(os.environ.get("PG_DOORMAN_FUZZ_SEED", "11"))
    budget = float(os.environ.get("PG_DOORMAN_FUZZ_SECONDS", "8"))
    rng = random.Random(seed)
    rss_start = proc.rss_kib()
    deadline = time.monotonic() + budget
    rounds = 0
    while time.monotonic() < deadline:
        wire = TlsWire(proc.port)
        assert wire.login(LOGIN, "app_pass")[-1][0] == b"Z"
        wire.send(query("begin; set search_path = leaked"))
        wire.read_until(b"Z")
        wire.tls.write(query("select 'fuzz' from generate_series(1, 3)"))
        wire.tls.write(query("create temp table leak_marker(x int)"))
        wire.send_raw(mutate(wire.outgoing.read(), rng))
        if rng.random() < 0.5:
            wire.close()  # gone at once, whatever the pooler made of it
        else:
            wire.ended(0.3)
            wire.close()
        rounds += 1
        if rounds % 10 == 0:
            assert proc.returncode is None, proc.log_tail()
            assert_next_client_clean(proc)
    assert rounds >= 10, rounds
    assert proc.returncode is None
    assert_next_client_clean(proc)
    assert proc.rss_kib() - rss_start < 32 * 1024, "the pooler's memory grew under damaged records"
