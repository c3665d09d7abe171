"""Client-facing TLS against real clients: psql (libpq 15) with every sslmode, psycopg, and Python's ssl module for
PostgreSQL 17's direct TLS (ALPN ``postgresql``); plus proof that the bytes on the wire are encrypted."""

from __future__ import annotations

import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from wire_client import RawWire, error_map, query, startup_packet

from pg_doorman.devcluster import TempPostgres, TlsFiles, generate_certificates, issue_client_certificate

PSQL = "psql"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return generate_certificates(str(tmp_path_factory.mktemp("tls")))


@pytest.fixture(scope="module")
def client_cert(certs: TlsFiles) -> tuple[str, str]:
    return issue_client_certificate(certs, "app")


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A second, unrelated CA: its certificates must be refused."""
    return generate_certificates(str(tmp_path_factory.mktemp("other")))


def tls_general(certs: TlsFiles, mode: str, **extra: Any) -> dict[str, Any]:
    return {"tls_mode": mode, "tls_certificate": certs.server_cert, "tls_private_key": certs.server_key, **extra}


def psql(dsn: str, sql: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "PGCONNECT_TIMEOUT": "10"}
    return subprocess.run([PSQL, dsn, "-XAtc", sql], capture_output=True, text=True, env=env, timeout=30, check=False)


def libpq(proc: Any, **params: str) -> str:
    return proc.dsn() + "".join(f" {k}={v}" for k, v in params.items())


def test_require_accepts_psql_over_tls_and_refuses_plain(
    doorman: Any, pg_trust: TempPostgres, pool_config: Any, certs: TlsFiles
) -> None:
    proc = doorman(pool_config(pg_trust, general=tls_general(certs, "require")))
    ok = psql(libpq(proc, sslmode="require"), "select 41 + 1")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == "42"
    info = psql(libpq(proc, sslmode="require"), r"\conninfo")
    assert "SSL connection (protocol: TLSv1." in info.stdout, info.stdout
    plain = psql(libpq(proc, sslmode="disable"), "select 1")
    assert plain.returncode != 0
    assert "Connection without SSL is not allowed by tls_mode." in plain.stderr
    with pytest.raises(psycopg.OperationalError, match="Connection without SSL is not allowed by tls_mode"):
        psycopg.connect(proc.dsn() + " sslmode=disable").close()
    # The admin console is behind the same rule.
    assert psql(proc.admin_dsn() + " sslmode=disable", "show pools").returncode != 0
    assert psql(proc.admin_dsn() + " sslmode=require", "show version").returncode == 0


def test_psql_verifies_pg_doorman_certificate(
    doorman: Any, pg_trust: TempPostgres, pool_config: Any, certs: TlsFiles, other_ca: TlsFiles
) -> None:
    proc = doorman(pool_config(pg_trust, general=tls_general(certs, "allow")))
    full = psql(libpq(proc, sslmode="verify-full", sslrootcert=certs.ca_cert), "select 1")
    assert full.returncode == 0, full.stderr
    wrong = psql(libpq(proc, sslmode="verify-ca", sslrootcert=other_ca.ca_cert), "select 1")
    assert wrong.returncode != 0 and "certificate verify failed" in wrong.stderr
    # allow: plain clients are still served, and prefer (libpq's default) gets TLS.
    assert psql(libpq(proc, sslmode="disable"), "select 1").returncode == 0
    with psycopg.connect(proc.dsn() + " sslmode=prefer") as conn:
        assert conn.pgconn.ssl_in_use
    with psycopg.connect(proc.dsn() + " sslmode=disable") as conn:
        assert not conn.pgconn.ssl_in_use


def test_without_certificate_ssl_request_is_answered_n(single: Any) -> None:
    assert psql(libpq(single, sslmode="require"), "select 1").returncode != 0
    with psycopg.connect(single.dsn() + " sslmode=prefer") as conn:
        assert not conn.pgconn.ssl_in_use


def test_verify_ca_demands_a_client_certificate_from_the_ca(
    doorman: Any,
    pg_trust: TempPostgres,
    pool_config: Any,
    certs: TlsFiles,
    client_cert: tuple[str, str],
    other_ca: TlsFiles,
) -> None:
    general = tls_general(certs, "verify-ca", tls_ca_cert=certs.ca_cert)
    proc = doorman(pool_config(pg_trust, general=general))
    crt, key = client_cert
    good = psql(libpq(proc, sslmode="require", sslcert=crt, sslkey=key), "select 1")
    assert good.returncode == 0, good.stderr
    assert psql(libpq(proc, sslmode="require"), "select 1").returncode != 0  # no certificate
    stranger = issue_client_certificate(other_ca, "app")
    bad = psql(libpq(proc, sslmode="require", sslcert=stranger[0], sslkey=stranger[1]), "select 1")
    assert bad.returncode != 0
    assert "Connection without SSL" in psql(libpq(proc, sslmode="disable"), "select 1").stderr


def test_verify_full_maps_certificate_cn_to_the_user(
    doorman: Any, pg_trust: TempPostgres, pool_config: Any, certs: TlsFiles, client_cert: tuple[str, str]
) -> None:
    general = tls_general(certs, "verify-full", tls_ca_cert=certs.ca_cert, tls_client_cert_user_match=True)
    proc = doorman(pool_config(pg_trust, users=("app", "app2"), general=general))
    crt, key = client_cert  # CN=app
    assert psql(libpq(proc, sslmode="require", sslcert=crt, sslkey=key), "select 1").returncode == 0
    other = psql(proc.dsn(user="app2") + f" sslmode=require sslcert={crt} sslkey={key}", "select 1")
    assert other.returncode != 0
    assert 'certificate validation (clientcert=verify-full) failed for user "app2": CN "app" does not match' in (
        other.stderr
    )


def test_psycopg_sslmode_require_carries_big_results_and_cancel(
    doorman: Any, pg_trust: TempPostgres, pool_config: Any, certs: TlsFiles
) -> None:
    proc = doorman(pool_config(pg_trust, general=tls_general(certs, "require")))
    with psycopg.connect(proc.dsn() + " sslmode=require", autocommit=True) as conn:
        assert conn.pgconn.ssl_in_use
        rows = conn.execute("select repeat('x', 1000) from generate_series(1, 5000)").fetchall()
        assert len(rows) == 5000 and rows[-1][0] == "x" * 1000
        with conn.pipeline():
            cursors = [conn.execute("select %s::int", (i,)) for i in range(50)]
        assert [c.fetchone()[0] for c in cursors] == list(range(50))  # type: ignore[index]
        # libpq 15 sends its CancelRequest in plain text even under tls_mode require: it is honoured.
        timer = threading.Timer(0.5, conn.cancel)
        timer.start()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("select pg_sleep(10)")
        timer.join()
        assert conn.execute("select 1").fetchone() == (1,)


# ---------------------------------------------------------------------- direct TLS (PostgreSQL 17)


def direct_tls(port: int, alpn: list[str] | None) -> ssl.SSLSocket:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    return ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10))


def test_direct_tls_with_alpn_logs_in(doorman: Any, pg_md5: TempPostgres, pool_config: Any, certs: TlsFiles) -> None:
    proc = doorman(pool_config(pg_md5, general=tls_general(certs, "require")))
    wire = RawWire(proc.port, 10)
    wire.sock = direct_tls(proc.port, ["postgresql"])
    assert wire.sock.selected_alpn_protocol() == "postgresql"
    replies = wire.login({"user": "app", "database": "appdb"}, "app_pass")
    assert replies[-1][0] == b"Z"
    wire.send(query("select 'direct'"))
    rows = wire.read_until(b"Z")
    assert any(kind == b"D" and b"direct" in body for kind, body in rows)


def test_direct_tls_without_alpn_is_refused(
    doorman: Any, pg_trust: TempPostgres, pool_config: Any, certs: TlsFiles
) -> None:
    proc = doorman(pool_config(pg_trust, general=tls_general(certs, "allow")))
    wire = RawWire(proc.port, 10)
    wire.sock = direct_tls(proc.port, None)
    kind, body = wire.read_message()
    assert kind == b"E"
    fields = error_map(body)
    assert fields["C"] == "08P01"
    assert "without ALPN" in fields["M"]


def test_broken_handshakes_leave_the_pooler_serving(
    doorman: Any, pg_trust: TempPostgres, pool_config: Any, certs: TlsFiles
) -> None:
    proc = doorman(pool_config(pg_trust, general=tls_general(certs, "allow")))
    # A fake TLS record: the handshake fails and the connection closes; the process serves on.
    raw = socket.create_connection(("127.0.0.1", proc.port), timeout=10)
    raw.sendall(b"\x16\x03\x01\x00\x05hello" + b"\x00" * 100)
    raw.settimeout(10)
    try:
        while raw.recv(4096):
            pass
    except OSError:
        pass
    raw.close()
    # A client that stops in the middle of its handshake does not hold anything.
    half = socket.create_connection(("127.0.0.1", proc.port), timeout=10)
    half.sendall(struct.pack("!ii", 8, 80877103))
    assert half.recv(1) == b"S"
    half.sendall(b"\x16\x03\x01")
    half.close()
    assert psql(libpq(proc, sslmode="require"), "select 1").returncode == 0


def test_plaintext_after_ssl_request_gets_protocol_violation(
    doorman: Any, pg_trust: TempPostgres, pool_config: Any, certs: TlsFiles
) -> None:
    proc = doorman(pool_config(pg_trust, general=tls_general(certs, "allow")))
    wire = RawWire(proc.port, 10)
    wire.send(struct.pack("!ii", 8, 80877103) + startup_packet({"user": "app", "database": "appdb"}))
    kind, body = wire.read_message()
    assert kind == b"E"
    assert error_map(body)["C"] == "08P01"
    assert "unencrypted data after SSL request" in error_map(body)["M"]


def test_handshake_rate_limit_admits_every_client(
    doorman: Any, pg_trust: TempPostgres, pool_config: Any, certs: TlsFiles
) -> None:
    general = tls_general(certs, "require", tls_rate_limit_per_second=100)
    proc = doorman(pool_config(pg_trust, general=general))
    results: list[int] = []

    def connect() -> None:
        with psycopg.connect(proc.dsn() + " sslmode=require") as conn:
            results.append(conn.execute("select 1").fetchone()[0])  # type: ignore[index]

    started = time.monotonic()
    threads = [threading.Thread(target=connect) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [1] * 12
    assert time.monotonic() - started >= 0.1  # 12 handshakes at 1 per 10 ms


# ---------------------------------------------------------------------- the wire is encrypted


class CaptureProxy:
    """A TCP relay that records every byte going each way (to prove what crosses the wire)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.captured = bytearray()
        self.first_bytes: list[bytes] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            first: list[bytes] = []
            self.first_bytes.append(b"")
            index = len(self.first_bytes) - 1
            threading.Thread(target=self._pipe, args=(client, upstream, index, first), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, -1, first), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, index: int, first: list[bytes]) -> None:
        try:
            while data := src.recv(65536):
                with self._lock:
                    self.captured += data
                    if index >= 0 and len(self.first_bytes[index]) < 8:
                        self.first_bytes[index] += data[: 8 - len(self.first_bytes[index])]
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def capture() -> Iterator[type[CaptureProxy]]:
    proxies: list[CaptureProxy] = []

    class Tracked(CaptureProxy):
        def __init__(self, target_port: int) -> None:
            super().__init__(target_port)
            proxies.append(self)

    yield Tracked
    for proxy in proxies:
        proxy.close()


@pytest.mark.parametrize("prepared", [False, True])
def test_data_over_tls_is_encrypted_on_the_wire(
    doorman: Any, pg_trust: TempPostgres, pool_config: Any, certs: TlsFiles, capture: type[CaptureProxy], prepared: bool
) -> None:
    proc = doorman(pool_config(pg_trust, general=tls_general(certs, "require")))
    proxy = capture(proc.port)
    marker = "MARKER_3f9c2e_secret"
    dsn = f"host=127.0.0.1 port={proxy.port} user=app password=app_pass dbname=appdb sslmode=require"
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=0 if prepared else None) as conn:
        for i in range(200):  # the forwarding fast path, many times over
            row = conn.execute(f"select '{marker}' || %s::text", (i,)).fetchone()
            assert row == (f"{marker}{i}",)
    assert len(proxy.captured) > 200 * 40
    assert marker.encode() not in proxy.captured
    # The same through a plain connection does show the marker: the capture works.
    plain = capture(pg_trust.port)
    with psycopg.connect(
        f"host=127.0.0.1 port={plain.port} user=app password=app_pass dbname=appdb sslmode=disable"
    ) as c:
        c.execute(f"select '{marker}'")
    assert marker.encode() in plain.captured


def test_bad_certificate_is_a_config_error(
    doorman: Any, pg_trust: TempPostgres, pool_config: Any, certs: TlsFiles, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.key"
    broken.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    general = {"tls_mode": "require", "tls_certificate": certs.server_cert, "tls_private_key": str(broken)}
    proc = doorman(pool_config(pg_trust, general=general), wait=False)
    assert proc.popen.wait(20) != 0
    assert "general.tls_private_key" in proc.log_text()


def test_pg_hba_cert_record_admits_the_certificate_named_user(
    doorman: Any, pg_trust: TempPostgres, pool_config: Any, certs: TlsFiles, client_cert: tuple[str, str]
) -> None:
    """``hostssl ... cert``: the client certificate (verified by tls_mode verify-ca) stands in for the password,
    for the user its common name names; a plain connection matches no record."""
    general = tls_general(certs, "verify-ca", tls_ca_cert=certs.ca_cert)
    general["pg_hba"] = "hostssl all all 127.0.0.1/32 cert\n"
    proc = doorman(pool_config(pg_trust, users=("app", "app2"), general=general))
    crt, key = client_cert  # CN=app
    ok = psql(proc.dsn() + f" sslmode=require sslcert={crt} sslkey={key}", "select current_user")
    assert ok.returncode == 0 and ok.stdout.strip() == "app", ok.stderr
    other = psql(proc.dsn(user="app2") + f" sslmode=require sslcert={crt} sslkey={key}", "select 1")
    assert other.returncode != 0 and 'certificate authentication failed for user "app2"' in other.stderr
