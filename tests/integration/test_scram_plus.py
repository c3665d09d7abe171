"""SCRAM-SHA-256-PLUS (channel binding ``tls-server-end-point``) against real clients and a real PostgreSQL 15.

Client side: psql (libpq 15) and psycopg (its own libpq) with ``channel_binding=require`` log in through pg_doorman
over TLS, which libpq allows only when the server proved it holds the certificate libpq saw (the binding data
libpq computes itself must match pg_doorman's); a wrong password still fails; over plain TCP libpq refuses by
itself. Server side: pg_doorman logs in to PostgreSQL (``ssl = on``, ``hostssl ... scram-sha-256``) with PLUS, and a
man in the middle with a certificate of its own makes PostgreSQL refuse that login.
"""

from __future__ import annotations

import asyncio
import datetime
import re
import ssl
import struct
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from cryptography.x509.oid import NameOID
from test_auth_query import LOOKUP_SQL, QUERY
from wire_client import RawWire, error_map, frame, startup_packet

from conftest import APP_DB, DoormanProcess, StartDoorman, make_pool_config, new_cluster
from pg_doorman.auth.scram import ScramClient, parse_sasl_mechanisms
from pg_doorman.devcluster import TempPostgres, TlsFiles, generate_certificates

BAD_PASSWORD = 'password authentication failed for user "app"'
NO_SSL = "channel binding (is )?required, but SSL not in use"  # libpq 15's words, then later ones'


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return generate_certificates(str(tmp_path_factory.mktemp("plus")))


@pytest.fixture(scope="module")
def ecdsa_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed P-384 certificate signed with ECDSA-SHA384: its binding data is a SHA-384 hash."""
    directory = tmp_path_factory.mktemp("ecdsa")
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA384())
    )
    cert_path, key_path = directory / "server.crt", directory / "server.key"
    cert_path.write_bytes(cert.public_bytes(Encoding.PEM))
    key_path.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    key_path.chmod(0o600)
    return str(cert_path), str(key_path)


def tls_general(certificate: str, private_key: str) -> dict[str, Any]:
    return {"tls_mode": "allow", "tls_certificate": certificate, "tls_private_key": private_key}


def psql(dsn: str, sql: str = "select current_user") -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "PGCONNECT_TIMEOUT": "10"}
    return subprocess.run(["psql", dsn, "-XAtc", sql], capture_output=True, text=True, env=env, timeout=30, check=False)


def libpq(proc: DoormanProcess, user: str = "app", password: str | None = None, **params: str) -> str:
    return proc.dsn(user=user, password=password) + "".join(f" {k}={v}" for k, v in params.items())


# ------------------------------------------------------------------ clients → pg_doorman


def test_psql_and_psycopg_require_channel_binding_over_tls(
    doorman: StartDoorman, pg_scram: TempPostgres, certs: TlsFiles
) -> None:
    """The pool's password is the role's SCRAM verifier: the ClientKey recovered from the PLUS exchange then logs
    pg_doorman in to PostgreSQL (passthrough), so the binding must not disturb that either."""
    proc = doorman(make_pool_config(pg_scram, general=tls_general(certs.server_cert, certs.server_key)))
    ok = psql(libpq(proc, sslmode="require", channel_binding="require"))
    assert (ok.returncode, ok.stdout.strip()) == (0, "app"), ok.stderr
    with psycopg.connect(libpq(proc, sslmode="require", channel_binding="require")) as conn:
        assert conn.execute("select current_user, 40 + 2").fetchone() == ("app", 42)
        assert conn.pgconn.ssl_in_use
    wrong = psql(libpq(proc, password="not-the-password", sslmode="require", channel_binding="require"))
    assert wrong.returncode != 0
    assert BAD_PASSWORD in wrong.stderr
    with pytest.raises(psycopg.OperationalError, match=BAD_PASSWORD):
        psycopg.connect(libpq(proc, password="nope", sslmode="require", channel_binding="require")).close()
    # A client that chooses not to bind (n,,) over TLS is fine too, as PostgreSQL allows.
    no_binding = psql(libpq(proc, sslmode="require", channel_binding="disable"))
    assert (no_binding.returncode, no_binding.stdout.strip()) == (0, "app"), no_binding.stderr


def test_plain_tcp_with_channel_binding_required_is_refused_by_libpq(
    doorman: StartDoorman, pg_scram: TempPostgres, certs: TlsFiles
) -> None:
    proc = doorman(make_pool_config(pg_scram, general=tls_general(certs.server_cert, certs.server_key)))
    refused = psql(libpq(proc, sslmode="disable", channel_binding="require"))
    assert refused.returncode != 0
    assert re.search(NO_SSL, refused.stderr), refused.stderr
    with pytest.raises(psycopg.OperationalError, match=NO_SSL):
        psycopg.connect(libpq(proc, sslmode="disable", channel_binding="require")).close()
    # The same client without the requirement logs in with plain SCRAM-SHA-256 (PLUS is never offered there).
    plain = psql(libpq(proc, sslmode="disable"))
    assert (plain.returncode, plain.stdout.strip()) == (0, "app"), plain.stderr


def test_ecdsa_sha384_certificate_binds_with_sha384(
    doorman: StartDoorman, pg_scram: TempPostgres, ecdsa_files: tuple[str, str]
) -> None:
    """libpq hashes our certificate itself (SHA-384 here, RFC 5929): a login means both sides agree."""
    proc = doorman(make_pool_config(pg_scram, general=tls_general(*ecdsa_files)))
    ok = psql(libpq(proc, sslmode="require", channel_binding="require"))
    assert (ok.returncode, ok.stdout.strip()) == (0, "app"), ok.stderr
    with psycopg.connect(libpq(proc, sslmode="require", channel_binding="require")) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_plaintext_configured_password_with_plus(
    doorman: StartDoorman, pg_scram: TempPostgres, certs: TlsFiles
) -> None:
    """A plaintext password in the config: pg_doorman makes the SCRAM verifier; binding works the same."""
    user = {"username": "app", "password": "app_pass", "server_username": "app", "server_password": "app_pass"}
    proc = doorman(make_pool_config(pg_scram, users=[user], general=tls_general(certs.server_cert, certs.server_key)))
    ok = psql(libpq(proc, sslmode="require", channel_binding="require"))
    assert (ok.returncode, ok.stdout.strip()) == (0, "app"), ok.stderr
    wrong = psql(libpq(proc, password="app_pas", sslmode="require", channel_binding="require"))
    assert BAD_PASSWORD in wrong.stderr


def raw_login(proc: DoormanProcess, *, tls: bool) -> tuple[RawWire, list[str]]:
    """A hand-driven client up to the AuthenticationSASL request: the wire and the mechanisms offered."""
    wire = RawWire(proc.port, 10)
    if tls:
        wire.send(struct.pack("!ii", 8, 80877103))  # SSLRequest
        assert wire.read_bytes(1) == b"S"
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        wire.sock = ctx.wrap_socket(wire.sock)
    wire.send(startup_packet({"user": "app", "database": APP_DB}))
    kind, body = wire.read_message()
    assert kind == b"R" and struct.unpack_from("!i", body)[0] == 10
    return wire, parse_sasl_mechanisms(body[4:])


def fatal(wire: RawWire) -> dict[str, str]:
    kind, body = wire.read_message()
    assert kind == b"E", (kind, body)
    return error_map(body)


def sasl_initial(mechanism: str, client_first: bytes) -> bytes:
    return frame(b"p", mechanism.encode() + b"\x00" + struct.pack("!i", len(client_first)) + client_first)


def test_hostile_gs2_headers_over_the_wire(doorman: StartDoorman, pg_scram: TempPostgres, certs: TlsFiles) -> None:
    """Downgrades, bindings to another certificate and PLUS on plain TCP end in PostgreSQL's errors; a client
    leaving midway costs nothing; the pooler serves on."""
    proc = doorman(make_pool_config(pg_scram, general=tls_general(certs.server_cert, certs.server_key)))
    wire, offered = raw_login(proc, tls=True)
    assert offered == ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]
    wire.send(sasl_initial("SCRAM-SHA-256", b"y,,n=,r=abcdef"))  # "the server cannot bind", said over TLS
    error = fatal(wire)
    assert (error["S"], error["C"], error["M"]) == ("FATAL", "28000", "SCRAM channel binding negotiation error")
    wire.close()

    wire, _ = raw_login(proc, tls=True)  # PLUS with the hash of some other certificate
    client = ScramClient(password="app_pass", channel_binding=b"\x07" * 32)
    wire.send(frame(b"p", client.initial_response(offered)))
    kind, body = wire.read_message()
    assert kind == b"R" and struct.unpack_from("!i", body)[0] == 11
    wire.send(frame(b"p", client.handle_server_first(body[4:])))
    error = fatal(wire)
    assert (error["C"], error["M"]) == ("28000", "SCRAM channel binding check failed")
    wire.close()

    wire, _ = raw_login(proc, tls=True)  # PLUS with an unknown binding type
    wire.send(sasl_initial("SCRAM-SHA-256-PLUS", b"p=tls-unique,,n=,r=abcdef"))
    error = fatal(wire)
    assert (error["C"], error["M"]) == ("08P01", 'unsupported SCRAM channel-binding type "tls-unique"')
    wire.close()

    wire, offered = raw_login(proc, tls=False)  # PLUS where it was never offered
    assert offered == ["SCRAM-SHA-256"]
    wire.send(sasl_initial("SCRAM-SHA-256-PLUS", b"p=tls-server-end-point,,n=,r=abcdef"))
    error = fatal(wire)
    assert (error["C"], error["M"]) == ("08P01", "client selected an invalid SASL authentication mechanism")
    wire.close()

    wire, offered = raw_login(proc, tls=True)  # leaves after server-first
    wire.send(frame(b"p", ScramClient(password="app_pass", channel_binding=b"\x07" * 32).initial_response(offered)))
    assert wire.read_message()[0] == b"R"
    wire.close()

    ok = psql(libpq(proc, sslmode="require", channel_binding="require"))
    assert (ok.returncode, ok.stdout.strip()) == (0, "app"), ok.stderr


@pytest.fixture(scope="module")
def pg_lookup() -> Iterator[TempPostgres]:
    """A SCRAM cluster with the auth_query lookup function and a role only PostgreSQL knows."""
    cluster = new_cluster("scram-sha-256")
    try:
        cluster.psql(LOOKUP_SQL, db=APP_DB)
        cluster.create_user("dyn_scram", "scram_pw", encryption="scram-sha-256")
        yield cluster
    finally:
        cluster.cleanup()


def test_auth_query_passthrough_with_plus(doorman: StartDoorman, pg_lookup: TempPostgres, certs: TlsFiles) -> None:
    """auth_query passthrough: the ClientKey of a PLUS exchange opens the user's own pool in PostgreSQL."""
    aq = {"query": QUERY, "user": "doorman_auth", "password": "auth_pw", "workers": 1, "min_interval": "0s"}
    config = make_pool_config(
        pg_lookup, users=(), auth_query=aq, general=tls_general(certs.server_cert, certs.server_key)
    )
    proc = doorman(config)
    for _ in range(2):  # the second login reads the cache and reuses the pool
        ok = psql(libpq(proc, user="dyn_scram", password="scram_pw", sslmode="require", channel_binding="require"))
        assert (ok.returncode, ok.stdout.strip()) == (0, "dyn_scram"), ok.stderr
    wrong = psql(libpq(proc, user="dyn_scram", password="nope", sslmode="require", channel_binding="require"))
    assert 'password authentication failed for user "dyn_scram"' in wrong.stderr


# ------------------------------------------------------------------ pg_doorman → PostgreSQL


@pytest.fixture(scope="module")
def pg_scram_ssl(certs: TlsFiles) -> Iterator[TempPostgres]:
    """PostgreSQL 15 with ssl = on and ``hostssl all all 127.0.0.1/32 scram-sha-256`` (plain TCP refused)."""
    cluster = new_cluster("scram-sha-256", tls=certs, tls_only=True)
    yield cluster
    cluster.cleanup()


def login_lines(proc: DoormanProcess) -> list[str]:
    return [line for line in proc.log_text().splitlines() if "logged in as app with" in line]


@pytest.mark.parametrize(
    "user",
    [
        {"username": "app"},
        {"username": "app", "password": "app_pass", "server_username": "app", "server_password": "app_pass"},
    ],
    ids=["passthrough", "server_password"],
)
def test_pg_doorman_logs_in_to_postgresql_with_plus(
    doorman: StartDoorman, pg_scram_ssl: TempPostgres, user: dict[str, str]
) -> None:
    proc = doorman(make_pool_config(pg_scram_ssl, users=[user], server_tls_mode="require"))
    with psycopg.connect(proc.dsn()) as conn:
        row = conn.execute("select current_user, ssl from pg_stat_ssl where pid = pg_backend_pid()").fetchone()
        assert row == ("app", True)
    proc.wait_for_log("logged in as app with SCRAM-SHA-256-PLUS")
    assert all(line.endswith("with SCRAM-SHA-256-PLUS") for line in login_lines(proc)), login_lines(proc)


def test_plain_backend_logs_in_without_plus(doorman: StartDoorman, pg_scram: TempPostgres) -> None:
    """The control: the same log line says SCRAM-SHA-256 where the server connection is not TLS."""
    proc = doorman(make_pool_config(pg_scram, server_tls_mode="disable"))
    with psycopg.connect(proc.dsn()) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    proc.wait_for_log("logged in as app with SCRAM-SHA-256")
    assert login_lines(proc) and not any("PLUS" in line for line in login_lines(proc)), login_lines(proc)


class TlsInterceptor:
    """A man in the middle for PostgreSQL's TLS: it answers the SSLRequest itself, shows its own certificate, and
    relays everything to PostgreSQL over a second TLS connection (asyncio in a thread of its own)."""

    def __init__(self, upstream_port: int, certificate: str, private_key: str) -> None:
        self.upstream_port = upstream_port
        self.server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.server_ctx.load_cert_chain(certificate, private_key)
        self.client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.client_ctx.check_hostname = False
        self.client_ctx.verify_mode = ssl.CERT_NONE
        self.loop = asyncio.new_event_loop()
        self.relayed = 0
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        assert ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await reader.readexactly(8)
            writer.write(b"S")
            await writer.drain()
            await writer.start_tls(self.server_ctx)
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            up_writer.write(request)
            await up_writer.drain()
            assert await up_reader.readexactly(1) == b"S"
            await up_writer.start_tls(self.client_ctx)
            self.relayed += 1
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
            writer.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def _shutdown(self) -> None:
        self.server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def interceptor(pg_scram_ssl: TempPostgres, tmp_path: Path) -> Iterator[TlsInterceptor]:
    other = generate_certificates(str(tmp_path / "mitm"))  # a certificate of its own, from another CA
    mitm = TlsInterceptor(pg_scram_ssl.port, other.server_cert, other.server_key)
    yield mitm
    mitm.close()


def test_a_man_in_the_middle_breaks_the_binding(
    doorman: StartDoorman, pg_scram_ssl: TempPostgres, interceptor: TlsInterceptor
) -> None:
    """server_tls_mode=require does not check PostgreSQL's certificate, so pg_doorman talks TLS to the interceptor
    happily; PLUS still exposes it: PostgreSQL hashes its own certificate, pg_doorman hashed the interceptor's."""
    # The control: the interceptor does relay a session (the superuser is trusted, no SCRAM involved).
    direct = psql(
        f"host=127.0.0.1 port={interceptor.port} user=postgres dbname=postgres sslmode=require gssencmode=disable",
        "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
    )
    assert (direct.returncode, direct.stdout.strip()) == (0, "t"), direct.stderr
    config = make_pool_config(pg_scram_ssl, users=[{"username": "app"}], server_tls_mode="require")
    config["pools"][APP_DB]["server_port"] = interceptor.port
    proc = doorman(config)
    relayed = interceptor.relayed
    with pytest.raises(psycopg.OperationalError) as err:
        psycopg.connect(proc.dsn()).close()
    assert "SCRAM channel binding check failed" in str(err.value), proc.log_tail()
    assert interceptor.relayed > relayed
    assert "SCRAM channel binding check failed" in pg_scram_ssl.log_text()
