"""tls.py without sockets: what each mode means, the handshake limiter, the CN check, contexts and config errors."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import Any

import pytest

from pg_doorman import tls
from pg_doorman.config import ConfigError, load_config
from pg_doorman.connection import Connection
from pg_doorman.devcluster import TlsFiles, generate_certificates


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return generate_certificates(str(tmp_path_factory.mktemp("certs")))


@pytest.mark.parametrize(
    ("mode", "has_cert", "match", "expected"),
    [
        # mode, certificate configured, tls_client_cert_user_match -> offered, required, verify_client, match_user
        (None, True, False, (True, False, False, False)),
        (None, False, False, (False, False, False, False)),
        ("disable", True, False, (False, False, False, False)),
        ("allow", True, False, (True, False, False, False)),
        ("prefer", True, False, (True, False, False, False)),
        ("require", True, False, (True, True, False, False)),
        ("verify-ca", True, True, (True, True, True, False)),
        ("verify-full", True, False, (True, True, True, False)),
        ("verify-full", True, True, (True, True, True, True)),
    ],
)
def test_client_policy(mode: str | None, has_cert: bool, match: bool, expected: tuple[bool, ...]) -> None:
    policy = tls.client_policy(mode, has_cert, match)
    assert (policy.offered, policy.required, policy.verify_client, policy.match_user) == expected


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        # ask (SSLRequest), need (N fails), verify_ca, verify_host, retry_with_tls
        ("disable", (False, False, False, False, False)),
        ("allow", (False, False, False, False, True)),
        ("prefer", (True, False, False, False, False)),
        ("require", (True, True, False, False, False)),
        ("verify-ca", (True, True, True, False, False)),
        ("verify-full", (True, True, True, True, False)),
    ],
)
def test_server_plan(mode: str, expected: tuple[bool, ...]) -> None:
    plan = tls.server_plan(mode)
    assert (plan.ask, plan.need, plan.verify_ca, plan.verify_host, plan.retry_with_tls) == expected


def test_limiter_grants_rate_over_100_per_10ms_window() -> None:
    limiter = tls.HandshakeLimiter(200)  # 2 per window
    assert [limiter.reserve(1.0) for _ in range(2)] == [0.0, 0.0]
    waits = [limiter.reserve(1.0) for _ in range(4)]
    assert waits == pytest.approx([0.01, 0.01, 0.02, 0.02])
    assert limiter.reserve(1.5) == 0.0  # an idle gap resets the window


def test_certificate_user_problem() -> None:
    cert: dict[str, Any] = {"subject": ((("countryName", "NL"),), (("commonName", "app"),))}
    assert tls.certificate_user_problem(cert, "app") is None
    assert tls.certificate_user_problem(cert, "bob") == 'CN "app" does not match'
    assert tls.certificate_user_problem({"subject": ()}, "app") == "the certificate has no common name"
    assert tls.certificate_user_problem(None, "app") == "no client certificate"


def test_contexts_are_tls12_plus_with_intermediate_ciphers(certs: TlsFiles) -> None:
    ctx = tls.client_context(certs.server_cert, certs.server_key, certs.ca_cert, verify_client=True)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    names = {c["name"] for c in ctx.get_ciphers()}
    assert "ECDHE-RSA-AES128-GCM-SHA256" in names
    assert not any("CBC" in n or n.startswith("AES128-") or "RC4" in n or "3DES" in n for n in names if "TLS_" not in n)
    backend = tls.backend_context("verify-full", certs.ca_cert, None, None, "x")
    assert backend.check_hostname and backend.verify_mode == ssl.CERT_REQUIRED
    assert tls.backend_context("require", None, None, None, "").verify_mode == ssl.CERT_NONE


def test_fingerprint_follows_file_contents(tmp_path: Path) -> None:
    f = tmp_path / "ca.crt"
    f.write_text("a")
    first = tls.fingerprint(str(f), None, None)
    assert tls.fingerprint(str(f), None, None) == first
    f.write_text("b")
    assert tls.fingerprint(str(f), None, None) != first
    assert tls.fingerprint(None, None, None) == ""


class FakeTransport:
    def __init__(self, extra: dict[str, Any]) -> None:
        self.extra = extra

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.extra.get(name, default)

    def write(self, data: bytes) -> None:
        pass


def test_no_direct_socket_writes_on_a_tls_transport() -> None:
    a, b = socket.socketpair()
    try:
        conn = Connection()
        conn.set_transport(FakeTransport({"socket": a}))  # type: ignore[arg-type]
        assert conn._fd == a.fileno()  # plain: the fast path is on
        conn.set_transport(FakeTransport({"socket": a, "sslcontext": object()}))  # type: ignore[arg-type]
        assert conn._fd == -1
        conn.set_transport(FakeTransport({"socket": a, "ssl_object": object()}))  # type: ignore[arg-type]
        assert conn._fd == -1
    finally:
        a.close()
        b.close()


# ------------------------------------------------------------------------------ configuration


def write_config(tmp_path: Path, general: str = "", pool: str = "") -> Path:
    path = tmp_path / "c.toml"
    path.write_text(
        f'[general]\nadmin_username = "a"\nadmin_password = "b"\n{general}\n'
        f'[pools.db]\nserver_port = 5432\n{pool}\n[[pools.db.users]]\nusername = "u"\npassword = "p"\npool_size = 1\n'
    )
    return path


def test_tls_settings_load_and_are_not_refused(tmp_path: Path, certs: TlsFiles) -> None:
    path = write_config(
        tmp_path,
        f'tls_mode = "verify-full"\ntls_certificate = "{certs.server_cert}"\ntls_private_key = "{certs.server_key}"\n'
        f'tls_ca_cert = "{certs.ca_cert}"\ntls_rate_limit_per_second = 200\ntls_client_cert_user_match = true\n'
        f'server_tls_mode = "verify-ca"\nserver_tls_ca_cert = "{certs.ca_cert}"',
        'server_tls_mode = "verify-full"',
    )
    config = load_config(path)
    assert not any("tls" in line for line in config.not_active)
    general = config.general
    assert (general.tls_mode, general.tls_rate_limit_per_second, general.tls_client_cert_user_match) == (
        "verify-full",
        200,
        True,
    )
    settings = config.pool_settings("db", "u")
    assert settings is not None
    assert settings.server_tls.mode == "verify-full"  # the pool's own mode
    assert settings.server_tls.ca_cert == certs.ca_cert  # inherited from general
    assert settings.server_tls.fingerprint


@pytest.mark.parametrize(
    ("general", "pool", "expected"),
    [
        ('tls_mode = "require"', "", "general.tls_mode: 'require' needs tls_certificate and tls_private_key"),
        ('tls_certificate = "{crt}"', "", "general.tls_certificate: set both tls_certificate and tls_private_key"),
        (
            'tls_mode = "verify-ca"\ntls_certificate = "{crt}"\ntls_private_key = "{key}"',
            "",
            "general.tls_mode: 'verify-ca' needs tls_ca_cert",
        ),
        ("tls_rate_limit_per_second = 150", "", "general.tls_rate_limit_per_second: must be 0 or a multiple of 100"),
        ('tls_certificate = "{bad}"\ntls_private_key = "{key}"', "", "general.tls_certificate: cannot read"),
        ('tls_certificate = "{crt}"\ntls_private_key = "{bad}"', "", "general.tls_private_key: cannot load"),
        ('tls_certificate = "{crt}"\ntls_private_key = "{other_key}"', "", "general.tls_private_key: cannot load"),
        ('server_tls_mode = "verify-full"', "", "general.server_tls_mode: 'verify-full' needs server_tls_ca_cert"),
        ("", 'server_tls_mode = "verify-ca"', "pools.db.server_tls_mode: 'verify-ca' needs server_tls_ca_cert"),
        ("", 'server_tls_ca_cert = "{bad}"', "pools.db.server_tls_ca_cert: cannot read the CA certificates"),
        ("", 'server_tls_certificate = "{crt}"', "pools.db.server_tls_certificate: set both"),
        ('server_tls_mode = "bogus"', "", "general.server_tls_mode"),
        ('tls_mode = "bogus"', "", "general.tls_mode"),
    ],
)
def test_tls_config_errors_name_the_key(
    tmp_path: Path, certs: TlsFiles, general: str, pool: str, expected: str
) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
    other = generate_certificates(str(tmp_path / "other"))
    values = {"crt": certs.server_cert, "key": certs.server_key, "bad": str(bad), "other_key": other.server_key}
    path = write_config(tmp_path, general.format(**values), pool.format(**values))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert expected in str(info.value)
