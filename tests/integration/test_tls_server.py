"""TLS from pg_doorman to PostgreSQL (server_tls_*), against a real PostgreSQL with ``ssl = on`` whose pg_hba admits
TCP clients only with ``hostssl`` (plain connections are refused by PostgreSQL itself)."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from test_tls_client import CaptureProxy

from pg_doorman.devcluster import TempPostgres, TlsFiles, generate_certificates, issue_client_certificate


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return generate_certificates(str(tmp_path_factory.mktemp("pgtls")))


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return generate_certificates(str(tmp_path_factory.mktemp("other")))


@pytest.fixture(scope="module")
def pg_ssl_only(certs: TlsFiles) -> Iterator[TempPostgres]:
    """PostgreSQL with ssl = on and only ``hostssl`` rules for the app roles (md5 passwords)."""
    from conftest import new_cluster

    cluster = new_cluster("md5", tls=certs, tls_only=True)
    yield cluster
    cluster.cleanup()


def app_user(**extra: Any) -> dict[str, Any]:
    return {"username": "app", **extra}  # the role's md5 verifier: passthrough


def backend_uses_ssl(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()").fetchone()
    assert row is not None
    return bool(row[0])


def test_require_encrypts_server_connections(doorman: Any, pg_ssl_only: TempPostgres, pool_config: Any) -> None:
    proc = doorman(pool_config(pg_ssl_only, users=[app_user()], server_tls_mode="require"))
    with proc.connect() as conn:
        assert backend_uses_ssl(conn)
    # SHOW CLIENTS/SERVERS aside, the server connection says so itself (the cancel path reads it).
    with proc.connect() as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_disable_is_refused_by_hostssl_and_allow_retries_over_tls(
    doorman: Any, pg_ssl_only: TempPostgres, pool_config: Any
) -> None:
    plain = doorman(pool_config(pg_ssl_only, users=[app_user()], server_tls_mode="disable"))
    with pytest.raises(psycopg.OperationalError, match="no encryption"):
        plain.connect().close()
    allow = doorman(pool_config(pg_ssl_only, users=[app_user()]))  # allow is the default
    with allow.connect() as conn:
        assert backend_uses_ssl(conn)


def test_prefer_falls_back_and_require_fails_without_server_tls(
    doorman: Any, pg_trust: TempPostgres, pool_config: Any
) -> None:
    prefer = doorman(pool_config(pg_trust, server_tls_mode="prefer"))
    with prefer.connect() as conn:
        assert not backend_uses_ssl(conn)
    require = doorman(pool_config(pg_trust, server_tls_mode="require"))
    with pytest.raises(psycopg.OperationalError, match="does not support TLS"):
        require.connect().close()


def test_verify_ca_and_verify_full_check_postgresql_certificate(
    doorman: Any, pg_ssl_only: TempPostgres, pool_config: Any, certs: TlsFiles, other_ca: TlsFiles
) -> None:
    for mode in ("verify-ca", "verify-full"):
        good = doorman(
            pool_config(pg_ssl_only, users=[app_user()], server_tls_mode=mode, server_tls_ca_cert=certs.ca_cert)
        )
        with good.connect() as conn:
            assert backend_uses_ssl(conn)
    wrong = doorman(
        pool_config(pg_ssl_only, users=[app_user()], server_tls_mode="verify-ca", server_tls_ca_cert=other_ca.ca_cert)
    )
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        wrong.connect().close()


def test_mutual_tls_presents_pg_doorman_certificate(
    doorman: Any, pg_factory: Callable[..., TempPostgres], pool_config: Any, certs: TlsFiles
) -> None:
    cluster = pg_factory("md5", tls=certs, tls_only=True, tls_client_cert=True)
    crt, key = issue_client_certificate(certs, "pg_doorman")
    with_cert = doorman(
        pool_config(
            cluster,
            users=[app_user()],
            server_tls_mode="require",
            server_tls_certificate=crt,
            server_tls_private_key=key,
        )
    )
    with with_cert.connect() as conn:
        assert backend_uses_ssl(conn)
        row = conn.execute("select client_dn from pg_stat_ssl where pid = pg_backend_pid()").fetchone()
        assert row is not None and "pg_doorman" in row[0]
    without = doorman(pool_config(cluster, users=[app_user()], server_tls_mode="require"))
    with pytest.raises(psycopg.OperationalError):
        without.connect().close()


def test_per_pool_override_and_cancel_over_tls(
    doorman: Any, pg_ssl_only: TempPostgres, pool_config: Any, certs: TlsFiles
) -> None:
    proxy = CaptureProxy(pg_ssl_only.port)  # sees the first bytes of every connection to PostgreSQL
    try:
        config = pool_config(pg_ssl_only, users=[app_user()], server_tls_mode="require", general={
            "server_tls_mode": "disable"})  # fmt: skip
        config["pools"]["appdb"]["server_port"] = proxy.port
        proc = doorman(config)
        with proc.connect(autocommit=True) as conn:
            assert backend_uses_ssl(conn)
            timer = threading.Timer(0.5, conn.cancel)
            timer.start()
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("select pg_sleep(10)")
            timer.join()
        ssl_request = bytes.fromhex("0000000804d2162f")
        assert len(proxy.first_bytes) >= 2  # the session and the cancel connection
        assert all(first == ssl_request for first in proxy.first_bytes), proxy.first_bytes
        assert b"pg_sleep" not in proxy.captured
    finally:
        proxy.close()


def test_reload_with_changed_files_recreates_only_their_pools(
    doorman: Any, pg_ssl_only: TempPostgres, pool_config: Any, certs: TlsFiles, tmp_path: Path
) -> None:
    ca_copy = tmp_path / "ca.crt"
    shutil.copy(certs.ca_cert, ca_copy)
    config = pool_config(
        pg_ssl_only,
        users=[app_user(pool_size=1)],
        server_tls_mode="verify-ca",
        server_tls_ca_cert=str(ca_copy),
    )
    other = pool_config(pg_ssl_only, users=[app_user(pool_size=1)], server_tls_mode="require", db="postgres")
    config["pools"]["postgres"] = other["pools"]["postgres"]
    proc = doorman(config)

    def backend_pid(db: str) -> int:
        with proc.connect(db=db) as conn:
            row = conn.execute("select pg_backend_pid()").fetchone()
            assert row is not None
            return int(row[0])

    before = backend_pid("appdb"), backend_pid("postgres")
    assert backend_pid("appdb") == before[0]  # pool_size 1: the same backend serves again
    ca_copy.write_text(ca_copy.read_text() + "\n")  # same CA, changed file
    with psycopg.connect(proc.admin_dsn(), autocommit=True) as admin:
        admin.execute("RELOAD")
    after = backend_pid("appdb"), backend_pid("postgres")
    assert after[0] != before[0]  # a new pool with new connections
    assert after[1] == before[1]  # untouched


def test_backend_tls_rides_on_pg_doormans_record_layer(pg_ssl_only: TempPostgres, certs: TlsFiles) -> None:
    """open_backend in-process against PostgreSQL with ssl = on: the protocol above gets a tlsstream.TlsTransport
    (not the event loop's TLS) once the handshake is done, and PostgreSQL answers a startup packet sent through
    it (its md5 challenge)."""
    import asyncio
    import struct

    from pg_doorman import tls, tlsstream

    class Startup(asyncio.Protocol):
        def __init__(self, reply: asyncio.Future[bytes]) -> None:
            self.transport: Any = None
            self.reply = reply

        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            params = b"user\x00app\x00database\x00appdb\x00\x00"
            transport.write(struct.pack("!ii", 8 + len(params), 196608) + params)

        def data_received(self, data: bytes) -> None:
            if not self.reply.done():
                self.reply.set_result(data)

    async def run() -> tuple[object, bytes, str]:
        protocol = Startup(asyncio.get_running_loop().create_future())
        opened = await tls.open_backend(
            lambda: protocol,
            "127.0.0.1",
            pg_ssl_only.port,
            tls.server_plan("verify-ca"),
            tls.backend_context("verify-ca", certs.ca_cert, None, None, ""),
            use_tls=True,
            handshake_timeout=10,
        )
        assert opened is protocol
        reply = await asyncio.wait_for(protocol.reply, 10)
        version = protocol.transport.get_extra_info("ssl_object").version()
        transport = protocol.transport
        transport.close()
        return transport, reply, version

    transport, reply, version = asyncio.run(run())
    assert isinstance(transport, tlsstream.TlsTransport)
    assert reply[:1] == b"R" and struct.unpack("!i", reply[5:9])[0] == 5  # AuthenticationMD5Password
    assert version in ("TLSv1.2", "TLSv1.3")
