"""LDAP authentication (``auth_ldap`` + ``ldap`` options) through pg_doorman against a real OpenLDAP slapd.

Both of PostgreSQL's modes: simple bind (ldapprefix/ldapsuffix) and search+bind (ldapbasedn, anonymous or with
ldapbinddn/ldapbindpasswd, ldapsearchattribute or ldapsearchfilter), plain and with StartTLS (certificate checked
against ldaptlscacert). Refused: a wrong password, an unknown user, a user name that is not unique, a filter
injection (``*)(uid=*``), an empty password (which an LDAP server would take as an anonymous bind and accept), and
everything when the LDAP server is down.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from ldap_fixture import BASE_DN, PEOPLE_DN, READER_DN, READER_PASSWORD, USERS, Slapd, start_slapd
from test_ext_auth_jwt import cleartext_login

from pg_doorman.devcluster import TempPostgres, find_free_port

StartDoorman = Callable[..., Any]
PoolConfig = Callable[..., dict[str, Any]]


@pytest.fixture(scope="module")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    server = start_slapd(tmp_path_factory.mktemp("ldap") / "slapd")
    yield server
    server.stop()


def _ldap_user(name: str, **own: Any) -> dict[str, Any]:
    user: dict[str, Any] = {"username": name, "auth_ldap": True, "server_username": "app", "pool_size": 2}
    if own:
        user["ldap"] = own
    return user


def _start(doorman: StartDoorman, pg_trust: TempPostgres, ldap: dict[str, Any], users: list[str]) -> Any:
    entries: list[dict[str, Any]] = [_ldap_user(name) for name in users]
    entries.append({"username": "app", "password": "app_pass", "pool_size": 2})
    pool = {"server_host": "127.0.0.1", "server_port": pg_trust.port, "ldap": ldap, "users": entries}
    return doorman({"pools": {"appdb": pool}})


NAMES = ["alice", "bob", "twin", "nobody", "*)(uid=*", "*", "alice)(|(uid=*", "alice,ou=people"]


def _assert_only_right_passwords(proc: Any) -> None:
    """alice and bob log in with their own password only; everything else gets 28P01."""
    for user in ("alice", "bob"):
        with psycopg.connect(proc.dsn(user, USERS[user]), connect_timeout=10) as conn:
            assert conn.execute("select current_user").fetchone() == ("app",)
    assert cleartext_login(proc.port, "alice", USERS["bob"])["C"] == "28P01"
    assert cleartext_login(proc.port, "alice", "wrong")["C"] == "28P01"
    assert cleartext_login(proc.port, "nobody", "anything")["C"] == "28P01"
    for name in ("*)(uid=*", "*", "alice)(|(uid=*", "alice,ou=people"):
        for password in (USERS["alice"], "x"):
            assert cleartext_login(proc.port, name, password)["C"] == "28P01", name
    assert cleartext_login(proc.port, "alice", "")["C"] == "28P01"


def test_simple_bind(doorman: StartDoorman, pg_trust: TempPostgres, slapd: Slapd) -> None:
    ldap = {"ldapserver": "127.0.0.1", "ldapport": slapd.port, "ldapprefix": "uid=", "ldapsuffix": f",{PEOPLE_DN}"}
    proc = _start(doorman, pg_trust, ldap, NAMES)
    _assert_only_right_passwords(proc)
    proc.wait_for_log("invalidCredentials")


def test_search_and_bind_anonymous(doorman: StartDoorman, pg_trust: TempPostgres, slapd: Slapd) -> None:
    ldap = {"ldapserver": "127.0.0.1", "ldapport": slapd.port, "ldapbasedn": BASE_DN}
    proc = _start(doorman, pg_trust, ldap, NAMES)
    _assert_only_right_passwords(proc)
    assert cleartext_login(proc.port, "twin", "twin-pw")["C"] == "28P01"
    proc.wait_for_log('LDAP user "twin" is not unique')
    proc.wait_for_log("invalid character in user name for LDAP authentication")
    proc.wait_for_log('LDAP user "nobody" does not exist')


def test_search_and_bind_with_bind_dn_and_filter(doorman: StartDoorman, pg_trust: TempPostgres, slapd: Slapd) -> None:
    ldap = {
        "ldapurl": f"ldap://127.0.0.1:{slapd.port}/{BASE_DN}?uid?sub",
        "ldapbinddn": READER_DN,
        "ldapbindpasswd": READER_PASSWORD,
    }
    proc = _start(doorman, pg_trust, ldap, NAMES)
    _assert_only_right_passwords(proc)
    # a filter matching the mail attribute too: the user logs in with either name
    ldap = {
        "ldapserver": "127.0.0.1",
        "ldapport": slapd.port,
        "ldapbasedn": PEOPLE_DN,
        "ldapbinddn": READER_DN,
        "ldapbindpasswd": READER_PASSWORD,
        "ldapsearchfilter": "(|(uid=$username)(mail=$username))",
    }
    proc = _start(doorman, pg_trust, ldap, ["alice@example.org", "alice", "twin", "*)(uid=*"])
    assert cleartext_login(proc.port, "alice@example.org", USERS["alice"]) == {}
    assert cleartext_login(proc.port, "alice", USERS["alice"]) == {}
    assert cleartext_login(proc.port, "twin", "twin-pw") == {}  # only one twin under ou=people
    assert cleartext_login(proc.port, "*)(uid=*", USERS["alice"])["C"] == "28P01"


def test_wrong_bind_dn_password_refuses_everyone(doorman: StartDoorman, pg_trust: TempPostgres, slapd: Slapd) -> None:
    ldap = {
        "ldapserver": "127.0.0.1",
        "ldapport": slapd.port,
        "ldapbasedn": BASE_DN,
        "ldapbinddn": READER_DN,
        "ldapbindpasswd": "not-the-reader-password",
    }
    proc = _start(doorman, pg_trust, ldap, ["alice"])
    assert cleartext_login(proc.port, "alice", USERS["alice"])["C"] == "28P01"
    proc.wait_for_log("could not perform the initial LDAP bind")


def test_starttls_checks_the_server_certificate(doorman: StartDoorman, pg_trust: TempPostgres, slapd: Slapd) -> None:
    ldap = {"ldapserver": "127.0.0.1", "ldapport": slapd.port, "ldapbasedn": BASE_DN, "ldaptls": 1}
    trusted = _start(doorman, pg_trust, {**ldap, "ldaptlscacert": str(slapd.ca_file)}, ["alice"])
    assert cleartext_login(trusted.port, "alice", USERS["alice"]) == {}
    assert cleartext_login(trusted.port, "alice", "wrong")["C"] == "28P01"
    untrusted = _start(doorman, pg_trust, ldap, ["alice"])  # the system CAs do not know the test CA
    assert cleartext_login(untrusted.port, "alice", USERS["alice"])["C"] == "28P01"
    untrusted.wait_for_log("certificate verify failed")


def test_user_level_options_override_the_pool(doorman: StartDoorman, pg_trust: TempPostgres, slapd: Slapd) -> None:
    pool_ldap = {"ldapserver": "127.0.0.1", "ldapport": find_free_port(), "ldapbasedn": BASE_DN}  # nothing there
    users = [
        _ldap_user("alice", ldapport=slapd.port),
        _ldap_user("bob"),
    ]
    pool = {"server_host": "127.0.0.1", "server_port": pg_trust.port, "ldap": pool_ldap, "users": users}
    proc = doorman({"pools": {"appdb": pool}})
    assert cleartext_login(proc.port, "alice", USERS["alice"]) == {}
    assert cleartext_login(proc.port, "bob", USERS["bob"])["C"] == "28P01"
    proc.wait_for_log("could not connect to the LDAP server")


def test_ldap_server_down_refuses_quickly(doorman: StartDoorman, pg_trust: TempPostgres) -> None:
    ldap = {"ldapserver": "127.0.0.1", "ldapport": find_free_port(), "ldapprefix": "uid=", "ldapsuffix": ",dc=x"}
    proc = _start(doorman, pg_trust, ldap, ["alice"])
    started = time.monotonic()
    assert cleartext_login(proc.port, "alice", "pw")["C"] == "28P01"
    assert time.monotonic() - started < 3
    with psycopg.connect(proc.dsn("app", "app_pass"), connect_timeout=10) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


@pytest.mark.parametrize(
    ("ldap", "needle"),
    [
        ({"ldapbasedn": BASE_DN}, "requires ldapserver"),
        ({"ldapserver": "h"}, "requires ldapbasedn, ldapprefix or ldapsuffix"),
        ({"ldapserver": "h", "ldapprefix": "uid=", "ldapbasedn": BASE_DN}, "cannot mix options"),
        ({"ldapserver": "h", "ldapbasedn": BASE_DN, "ldapsearchattribute": "uid", "ldapsearchfilter": "(uid=$u)"},
         "cannot be combined with ldapsearchattribute"),
        ({"ldapserver": "h", "ldapbasedn": BASE_DN, "ldapscheme": "ldapx"}, "expected 'ldap' or 'ldaps'"),
        ({"ldapserver": "h", "ldapbasedn": BASE_DN, "ldapport": 70000}, "expected a port number"),
        ({"ldapserver": "h", "ldapbasedn": BASE_DN, "ldapserverx": "h"}, "unknown LDAP option"),
        ({"ldapserver": "h", "ldapbasedn": BASE_DN, "ldaptls": 1, "ldapscheme": "ldaps"}, "StartTLS cannot be used"),
    ],
)  # fmt: skip
def test_bad_ldap_options_fail_the_config_check(
    doorman: StartDoorman, pg_trust: TempPostgres, ldap: dict[str, Any], needle: str
) -> None:
    pool = {"server_host": "127.0.0.1", "server_port": pg_trust.port, "ldap": ldap, "users": [_ldap_user("alice")]}
    started = doorman({"pools": {"appdb": pool}}, wait=False)
    assert started.wait(30) != 0
    assert needle in started.log_text()


def test_auth_ldap_without_options_fails_the_config_check(doorman: StartDoorman, pg_trust: TempPostgres) -> None:
    pool = {"server_host": "127.0.0.1", "server_port": pg_trust.port, "users": [_ldap_user("alice")]}
    proc = doorman({"pools": {"appdb": pool}}, wait=False)
    assert proc.wait(30) != 0
    assert "needs LDAP options" in proc.log_text()


def test_a_pg_hba_ldap_rule_checks_with_its_own_options(
    doorman: StartDoorman, pg_trust: TempPostgres, slapd: Slapd
) -> None:
    """PostgreSQL's way: the pg_hba record says ``ldap`` and carries the options; the users need no LDAP settings
    (nor a password) of their own. A second record sends another address nowhere (no match: refused)."""
    hba = (
        f'host all all 127.0.0.1/32 ldap ldapserver=127.0.0.1 ldapport={slapd.port} ldapprefix="uid=" '
        f'ldapsuffix=",{PEOPLE_DN}"\n'
    )
    users: list[dict[str, Any]] = [
        {"username": name, "password": "", "server_username": "app", "pool_size": 2} for name in ("alice", "bob")
    ]
    pool = {"server_host": "127.0.0.1", "server_port": pg_trust.port, "users": users}
    proc = doorman({"general": {"pg_hba": hba}, "pools": {"appdb": pool}})
    with psycopg.connect(proc.dsn("alice", USERS["alice"]), connect_timeout=10) as conn:
        assert conn.execute("select current_user").fetchone() == ("app",)
    assert cleartext_login(proc.port, "alice", USERS["bob"])["C"] == "28P01"
    assert cleartext_login(proc.port, "bob", "")["C"] == "28P01"  # empty: refused before any bind
    assert cleartext_login(proc.port, "*)(uid=*", USERS["alice"])["C"] == "28P01"
