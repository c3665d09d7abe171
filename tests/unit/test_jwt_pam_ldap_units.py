"""The sans-I/O parts of the external password checks: the cleartext exchange in ClientLogin, the method choice,
LDAP options and filter escaping, the bounded/timed runner (auth/external.py), config loading, backend login."""

from __future__ import annotations

import asyncio
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from pg_doorman.auth import external
from pg_doorman.auth.backend import ServerCredentials, ServerLogin
from pg_doorman.auth.client_login import ClientLogin, LoginFailed
from pg_doorman.auth.jwt import JwtCheck
from pg_doorman.auth.ldap import LdapOptionError, LdapOptions, parse_ldap_options, search_filter_for
from pg_doorman.auth.pam import PamCheck
from pg_doorman.auth.policy import Decision, Method, choose_method
from pg_doorman.config import ConfigError, load_config
from pg_doorman.protocol import messages
from pg_doorman.protocol.errors import PoolerError, ProtocolViolation


@dataclass(frozen=True)
class FakeCheck:
    answer: str | None = None
    delay: float = 0.0
    blocking: bool = True
    method: str = "pam"

    def check(self, user: str, password: str) -> str | None:
        if self.delay:
            time.sleep(self.delay)
        if password == "boom":
            raise RuntimeError("module crashed")
        return self.answer


# ------------------------------------------------------------------------------- method choice


def test_an_external_check_wins_over_the_stored_password() -> None:
    check = PamCheck("svc")
    decision = choose_method("u", "md5" + "0" * 32, check=check)
    assert decision.method is Method.PAM and decision.check is check and not decision.doomed
    assert choose_method("u", "", check=check).method is Method.PAM  # no password needed
    ldap = parse_ldap_options({"ldapserver": "h", "ldapbasedn": "dc=x"})
    assert choose_method("u", None, check=ldap).method is Method.LDAP
    assert choose_method("u", "jwt-pkey-fpath:/k", check=JwtCheck("/k")).method is Method.JWT
    doomed = choose_method("u", None, rule=Method.LDAP)
    assert doomed.method is Method.LDAP and doomed.doomed


# ------------------------------------------------------------------------------- the exchange


def _login(check: object | None = None) -> ClientLogin:
    decision = Decision(Method.PAM, check=check) if check is not None else Decision(Method.PAM, reason="no user")
    return ClientLogin("alice", decision)  # type: ignore[arg-type]


def test_cleartext_exchange() -> None:
    login = _login(FakeCheck())
    assert login.start() == messages.AUTH_CLEARTEXT_PASSWORD
    assert struct.unpack("!i", login.start()[5:9])[0] == 3
    assert login.feed(ord("p"), "pässword\x00".encode()) == b""
    assert login.cleartext == "pässword" and not login.done
    with pytest.raises(ProtocolViolation):
        login.feed(ord("p"), b"again\x00")  # nothing more before the verdict
    login.settle(None)
    assert login.done and login.cleartext is None


def test_cleartext_refusals() -> None:
    login = _login(FakeCheck())
    login.start()
    login.feed(ord("p"), b"pw\x00")
    with pytest.raises(LoginFailed) as info:
        login.settle("PAM said no")
    assert info.value.sqlstate == "28P01" and info.value.why == "PAM said no"
    assert info.value.message == 'password authentication failed for user "alice"'
    for body, error in (
        (b"\x00", LoginFailed),  # empty: refused before any check (LDAP would call it an anonymous bind)
        (b"\xff\xfe\x00", LoginFailed),
        (b"pw", ProtocolViolation),
        (b"pw\x00x", ProtocolViolation),
        (b"a\x00b\x00", ProtocolViolation),
    ):
        login = _login(FakeCheck())
        login.start()
        with pytest.raises(error):
            login.feed(ord("p"), body)
        assert login.cleartext is None
    doomed = _login(None)
    doomed.start()
    with pytest.raises(LoginFailed) as info:
        doomed.feed(ord("p"), b"pw\x00")
    assert info.value.why == "no user"
    with pytest.raises(ConnectionAbortedError):
        _login(FakeCheck()).feed(ord("X"), b"")


# ------------------------------------------------------------------------------- the runner


def test_verify_runs_blocking_checks_off_the_loop_bounded_and_timed() -> None:
    async def scenario() -> None:
        assert await external.verify(FakeCheck(), "u", "p") is None
        assert await external.verify(FakeCheck("nope"), "u", "p") == "nope"
        crashed = await external.verify(FakeCheck(), "u", "boom")
        assert crashed is not None and "module crashed" in crashed
        # the loop keeps running while checks block, and at most MAX_CONCURRENT_CHECKS run at once
        ticks = 0
        running = 0
        peak = 0
        lock = threading.Lock()

        @dataclass(frozen=True)
        class Counting:
            blocking: bool = True
            method: str = "ldap"

            def check(self, user: str, password: str) -> str | None:
                nonlocal running, peak
                with lock:
                    running += 1
                    peak = max(peak, running)
                time.sleep(0.1)
                with lock:
                    running -= 1
                return None

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        results = await asyncio.gather(*(external.verify(Counting(), "u", "p") for _ in range(20)))
        task.cancel()
        assert results == [None] * 20
        assert peak == external.MAX_CONCURRENT_CHECKS
        assert ticks >= 15  # ~0.3 s of checks; the loop ticked throughout
        timed_out = await external.verify(FakeCheck(delay=0.5), "u", "p", timeout=0.1)
        assert timed_out == "pam check did not answer within 0.1s"

    asyncio.run(scenario())


def test_quick_checks_run_inline() -> None:
    async def scenario() -> None:
        assert await external.verify(FakeCheck("no", blocking=False), "u", "p") == "no"

    asyncio.run(scenario())


# ------------------------------------------------------------------------------- LDAP options


def test_ldap_options_as_postgresql_defines_them() -> None:
    simple = parse_ldap_options({"ldapserver": "a b", "ldapprefix": "cn=", "ldapsuffix": ",dc=x", "ldaptls": "1"})
    assert simple.servers == ("a", "b") and not simple.search_mode and simple.start_tls
    assert simple.effective_port == 389
    search = parse_ldap_options({"ldapserver": "h", "ldapbasedn": "dc=x", "ldapscheme": "ldaps", "ldapport": "1636"})
    assert search.search_mode and search.effective_port == 1636
    assert parse_ldap_options({"ldapserver": "h", "ldapbasedn": "dc=x", "ldapscheme": "ldaps"}).effective_port == 636
    url = parse_ldap_options({"ldapurl": "ldaps://ldap.example.org:1636/ou=p,dc=x??one?(mail=$username)"})
    assert url == LdapOptions(
        servers=("ldap.example.org",),
        port=1636,
        scheme="ldaps",
        base_dn="ou=p,dc=x",
        scope="one",
        search_filter="(mail=$username)",
    )


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({}, "ldapserver"),
        ({"ldapserver": " "}, "ldapserver"),
        ({"ldapserver": "h"}, "ldapbasedn"),
        ({"ldapserver": "h", "ldapsuffix": ",dc=x", "ldapsearchfilter": "(uid=$username)"}, "ldapsuffix"),
        ({"ldapserver": "h", "ldapbasedn": "dc=x", "ldapbindpasswd": "p"}, "ldapbindpasswd"),
        ({"ldapserver": "h", "ldapbasedn": "dc=x", "ldaptls": "maybe"}, "ldaptls"),
        ({"ldapserver": "h", "ldapbasedn": "dc=x", "ldapport": "0"}, "ldapport"),
        ({"ldapserver": "h", "ldapbasedn": "dc=x", "ldapport": True}, "ldapport"),
        ({"ldapserver": "h", "ldapbasedn": "dc=x", "ldaptlscacert": "/ca.pem"}, "ldaptlscacert"),
        ({"ldapurl": "http://h/dc=x"}, "ldapurl"),
        ({"ldapurl": "ldap:///dc=x"}, "ldapurl"),
        ({"ldapurl": "ldap://h/dc=x?uid?tree"}, "ldapurl"),
        ({"ldapurl": "ldap://h/dc=x", "ldapserver": "h"}, "ldapurl"),
        ({"ldapserver": ["h"], "ldapbasedn": "dc=x"}, "ldapserver"),
        ({"ldapurl": "ldap://h/dc=x?uid??(uid=$username)"}, "ldapsearchfilter"),
    ],
)
def test_bad_ldap_options(raw: dict[str, object], key: str) -> None:
    with pytest.raises(LdapOptionError) as info:
        parse_ldap_options(raw)
    assert info.value.key == key


def test_ldap_filter_values_are_escaped() -> None:
    options = parse_ldap_options({"ldapserver": "h", "ldapbasedn": "dc=x"})
    assert search_filter_for(options, "*)(uid=*") == r"(uid=\2a\29\28uid=\2a)"
    assert search_filter_for(options, "a\\b\x00") == r"(uid=a\5cb\00)"
    custom = parse_ldap_options(
        {"ldapserver": "h", "ldapbasedn": "dc=x", "ldapsearchfilter": "(|(uid=$username)(mail=$username))"}
    )
    assert search_filter_for(custom, "x*") == r"(|(uid=x\2a)(mail=x\2a))"


def test_ldap_refuses_empty_passwords_and_odd_names_before_any_network() -> None:
    unreachable = parse_ldap_options({"ldapserver": "203.0.113.1", "ldapbasedn": "dc=x"})
    assert unreachable.check("alice", "") is not None and "empty password" in (unreachable.check("alice", "") or "")
    for name in ("a*", "a(", "a)", "a\\", "a/"):
        assert unreachable.check(name, "pw") == "invalid character in user name for LDAP authentication"


# ------------------------------------------------------------------------------- config


def _config(tmp_path: Path, users: str, pool_extra: str = "") -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(
        "general:\n  admin_username: a\n  admin_password: b\n"
        f"pools:\n  db:\n    server_port: 5432\n{pool_extra}    users:\n{users}"
    )
    return path


def test_config_builds_the_password_checks(tmp_path: Path) -> None:
    key = tmp_path / "k.pem"
    key.write_bytes(
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    path = _config(
        tmp_path,
        "      - {username: p, auth_pam_service: login, pool_size: 1}\n"
        "      - {username: l, auth_ldap: true, pool_size: 1, ldap: {ldapport: 1389}}\n"
        f"      - {{username: j, password: 'jwt-pkey-fpath:{key}', pool_size: 1}}\n"
        "      - {username: m, password: secret, pool_size: 1}\n",
        "    ldap: {ldapserver: ldap.example.org, ldapbasedn: 'dc=example,dc=org'}\n",
    )
    config = load_config(str(path))
    checks = {s.username: s.password_check for s in config.all_pool_settings()}
    assert checks["p"] == PamCheck("login")
    assert checks["l"] == LdapOptions(servers=("ldap.example.org",), port=1389, base_dn="dc=example,dc=org")
    assert checks["j"] == JwtCheck(str(key))
    assert checks["m"] is None
    assert not any("auth_pam_service" in line for line in config.not_active)


@pytest.mark.parametrize(
    ("users", "needle"),
    [
        ("      - {username: u, auth_pam_service: 'a/b', pool_size: 1}\n", "expected a PAM service name"),
        ("      - {username: u, auth_ldap: true, pool_size: 1}\n", "needs LDAP options"),
        ("      - {username: u, pool_size: 1, ldap: {ldapserver: h}}\n", "without auth_ldap: true"),
        (
            "      - {username: u, auth_pam_service: login, auth_ldap: true, pool_size: 1, "
            "ldap: {ldapserver: h, ldapbasedn: 'dc=x'}}\n",
            "one external authentication method",
        ),
        ("      - {username: u, password: 'jwt-pkey-fpath:/nonexistent.pem', pool_size: 1}\n", "cannot read"),
        ("      - {username: u, password: 'jwt-pkey-fpath:', pool_size: 1}\n", "needs the path"),
        (
            "      - {username: u, password: x, server_username: s, server_password: 'jwt-priv-key-fpath:/nope', "
            "pool_size: 1}\n",
            "cannot read",
        ),
        ("      - {username: u, pool_size: 1}\n", "password: required key is missing"),
        ("      - {username: u, auth_ldap: true, pool_size: 1, ldap: {ldapserver: h, ldapprefix: x, ldapbasedn: y}}\n",
         "cannot mix options"),
    ],
)  # fmt: skip
def test_config_errors(tmp_path: Path, users: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(str(_config(tmp_path, users)))
    assert needle in str(info.value)


def test_unused_pool_ldap_options_warn(tmp_path: Path) -> None:
    path = _config(tmp_path, "      - {username: u, password: x, pool_size: 1}\n", "    ldap: {ldapserver: h}\n")
    assert any("these options are unused" in line for line in load_config(str(path)).warnings)


# ------------------------------------------------------------------------------- backend login


def test_backend_jwt_private_key_is_never_sent_as_a_hash(tmp_path: Path) -> None:
    creds = ServerCredentials(user="app", password="jwt-priv-key-fpath:/nope")
    login = ServerLogin(creds, "db", {})
    with pytest.raises(PoolerError, match="must ask for a cleartext password"):
        login.feed(ord("R"), struct.pack("!i", 5) + b"salt")
    with pytest.raises(PoolerError, match="cannot sign a JWT"):
        login.feed(ord("R"), struct.pack("!i", 3))


def test_the_ldap_bind_password_stays_out_of_logs_and_the_api() -> None:
    from pg_doorman.observe.api import jsonable

    options = parse_ldap_options(
        {"ldapserver": "h", "ldapbasedn": "dc=x", "ldapbinddn": "cn=r", "ldapbindpasswd": "s3"}
    )
    assert options.bind_password == "s3"
    assert "s3" not in repr(options) and "s3" not in str(options)
    shown = jsonable(options)
    assert shown["bind_password"] == "********" and shown["bind_dn"] == "cn=r"
