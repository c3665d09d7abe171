"""pg_hba rules without sockets: the parser, the first-match lookup and the decisions built on them.

The first part replays every record of the example section of PostgreSQL 15's "The pg_hba.conf File" (Example
21.1) as a table: the record(s), then connections and the method PostgreSQL would pick (None: refused, "error":
the record does not load here, with why).
"""

from __future__ import annotations

import ipaddress
import struct
from pathlib import Path

import pytest

from pg_doorman.admin import login_decision
from pg_doorman.auth.client_login import ClientLogin, LoginFailed
from pg_doorman.auth.hba import (
    ConnType,
    HbaError,
    HbaRules,
    Method,
    client_address,
    legacy_rules,
    load_hba_file,
    parse_hba,
)
from pg_doorman.auth.md5 import md5_verifier
from pg_doorman.auth.policy import ClientOrigin, choose_method, decide
from pg_doorman.auth.scram import make_scram_verifier
from pg_doorman.protocol.errors import ProtocolViolation

P = 0x70
FILES = {
    "/etc/hba/admins": "alice, bob  # the DBAs\ncarol\n",
    "/etc/hba/demodbs": "demo1\ndemo2,demo3\n",
    "/etc/hba/nested": "@admins\ndave\n",
    "/etc/hba/loop": "@loop\n",
}


def read_fixture(path: Path) -> str:
    try:
        return FILES[str(path)]
    except KeyError:
        raise FileNotFoundError(2, "No such file or directory", str(path)) from None


def rules(text: str) -> HbaRules:
    return parse_hba(text, source="pg_hba.conf", base_dir=Path("/etc/hba"), read_file=read_fixture)


def errors(text: str) -> list[str]:
    with pytest.raises(HbaError) as info:
        rules(text)
    return list(info.value.lines)


def lookup(r: HbaRules, conn: str, db: str, user: str, addr: str | None = None, tls: bool = False) -> Method | None:
    address = ipaddress.ip_address(addr) if addr else None
    rule = r.match("local" if conn == "local" else "host", db, user, address, tls)
    return rule.method if rule is not None else None


# ------------------------------------------------------------------------ PostgreSQL's Example 21.1

LOCAL, HOST = "local", "host"
T, R, MD5, SCRAM, GSS, IDENT = Method.TRUST, Method.REJECT, Method.MD5, Method.SCRAM_SHA_256, Method.GSS, Method.IDENT

DOC_EXAMPLES: list[tuple[str, list[tuple[tuple[str, str, str, str | None], Method | None]]]] = [
    # Any local user, any database, over Unix sockets.
    ("local   all   all   trust", [((LOCAL, "x", "y", None), T), ((HOST, "x", "y", "127.0.0.1"), None)]),
    # The same over loopback TCP.
    (
        "host    all   all   127.0.0.1/32   trust",
        [((HOST, "x", "y", "127.0.0.1"), T), ((HOST, "x", "y", "127.0.0.2"), None), ((LOCAL, "x", "y", None), None)],
    ),
    # The same with a separate netmask column.
    (
        "host    all   all   127.0.0.1   255.255.255.255   trust",
        [((HOST, "x", "y", "127.0.0.1"), T), ((HOST, "x", "y", "127.0.0.2"), None)],
    ),
    # The same over IPv6.
    ("host    all   all   ::1/128   trust", [((HOST, "x", "y", "::1"), T), ((HOST, "x", "y", "127.0.0.1"), None)]),
    # Users from 192.168.93.x to database postgres with ident (parsed; the method is refused by decide()).
    (
        "host    postgres   all   192.168.93.0/24   ident",
        [((HOST, "postgres", "y", "192.168.93.7"), IDENT), ((HOST, "other", "y", "192.168.93.7"), None)],
    ),
    # Host 192.168.12.10 to database postgres with a password.
    (
        "host    postgres   all   192.168.12.10/32   scram-sha-256",
        [((HOST, "postgres", "y", "192.168.12.10"), SCRAM), ((HOST, "postgres", "y", "192.168.12.11"), None)],
    ),
    # Reject 192.168.54.1; GSSAPI-encrypted connections from anywhere (never here); plain gss from .12.10.
    (
        "host    all   all   192.168.54.1/32   reject\n"
        "hostgssenc all all  0.0.0.0/0         gss\n"
        "host    all   all   192.168.12.10/32  gss",
        [
            ((HOST, "x", "y", "192.168.54.1"), R),
            ((HOST, "x", "y", "10.1.2.3"), None),
            ((HOST, "x", "y", "192.168.12.10"), GSS),
        ],
    ),
    # 192.168.x.x with ident and a user-name map.
    ("host    all   all   192.168.0.0/16   ident map=omicron", [((HOST, "x", "y", "192.168.200.1"), IDENT)]),
    # Own database only, except administrators (@admins) and members of +support.
    (
        "local   sameuser   all   md5\nlocal   all   @admins   md5\nlocal   all   +support   md5",
        [
            ((LOCAL, "joe", "joe", None), MD5),
            ((LOCAL, "other", "joe", None), None),
            ((LOCAL, "other", "carol", None), MD5),
        ],
    ),
    # The last two lines combined.
    ("local   all   @admins,+support   md5", [((LOCAL, "x", "bob", None), MD5), ((LOCAL, "x", "joe", None), None)]),
    # Lists and files in the database column.
    (
        "local   db1,db2,@demodbs   all   md5",
        [
            ((LOCAL, "db2", "u", None), MD5),
            ((LOCAL, "demo3", "u", None), MD5),
            ((LOCAL, "db3", "u", None), None),
        ],
    ),
]


@pytest.mark.parametrize(("text", "cases"), DOC_EXAMPLES, ids=[t.split("\n")[0][:40] for t, _ in DOC_EXAMPLES])
def test_postgresql_documentation_examples(
    text: str, cases: list[tuple[tuple[str, str, str, str | None], Method | None]]
) -> None:
    r = rules(text)
    for (conn, db, user, addr), expected in cases:
        assert lookup(r, conn, db, user, addr) is expected, (conn, db, user, addr)


@pytest.mark.parametrize(
    "text",
    [
        "host    all   all   localhost   trust",
        "host    all   mike   .example.com   md5",
        "host    all   all    .example.com   scram-sha-256",
    ],
)
def test_documentation_host_names_are_refused_at_load(text: str) -> None:
    [line] = errors(text)
    assert line.startswith("pg_hba.conf:1: host name") and "not supported by pg_doorman" in line


def test_documentation_group_entries_warn_that_they_never_match() -> None:
    r = rules("local all @admins md5\nlocal all +support md5\nlocal all @admins,+support md5")
    assert r.warnings == (
        'pg_hba.conf:2: this rule never matches: "+support" (pg_doorman does not know group membership)',
        'pg_hba.conf:3: these entries never match: "+support" (pg_doorman does not know group membership)',
    )
    assert lookup(r, LOCAL, "x", "support") is None


# ------------------------------------------------------------------------ first match decides


def test_first_match_decides_even_when_its_method_cannot_serve() -> None:
    """PostgreSQL stops at the first matching record; the original kept scanning past a method it was not asked."""
    r = rules("host all all 127.0.0.1/32 scram-sha-256\nhost all all 127.0.0.1/32 md5")
    origin = ClientOrigin(local=False, address=ipaddress.ip_address("127.0.0.1"))
    decision = decide(r, origin, "db", "u", md5_verifier("pw", "u"))
    assert decision.method is Method.SCRAM_SHA_256 and decision.doomed and decision.rule == "pg_hba.conf:1"


def test_order_matters_reject_before_trust() -> None:
    r = rules("host all all 127.0.0.1/32 reject\nhost all all 0.0.0.0/0 trust")
    assert lookup(r, HOST, "d", "u", "127.0.0.1") is R
    assert lookup(r, HOST, "d", "u", "127.0.0.2") is T


# ------------------------------------------------------------------------ grammar details


def test_connection_types() -> None:
    r = rules(
        "hostssl all a 0.0.0.0/0 trust\nhostnossl all b 0.0.0.0/0 trust\n"
        "hostgssenc all c 0.0.0.0/0 trust\nhostnogssenc all d 0.0.0.0/0 trust\nhost all e all trust"
    )
    assert r.warnings == ("pg_hba.conf:3: hostgssenc never matches (pg_doorman declines GSSAPI encryption)",)
    assert [r.match("host", "x", "a", ipaddress.ip_address("10.0.0.1"), tls) is not None for tls in (0, 1)] == [
        False,
        True,
    ]
    assert [r.match("host", "x", "b", ipaddress.ip_address("10.0.0.1"), tls) is not None for tls in (0, 1)] == [
        True,
        False,
    ]
    assert lookup(r, HOST, "x", "c", "10.0.0.1") is None
    assert lookup(r, HOST, "x", "d", "10.0.0.1") is T and lookup(r, LOCAL, "x", "d") is None
    assert lookup(r, HOST, "x", "e", "2001:db8::1") is T  # the address keyword all
    assert lookup(r, LOCAL, "x", "a") is None  # host* records never match Unix sockets


def test_quotes_comments_lists_and_continuations() -> None:
    r = rules(
        '# comment line\n\n  host "all" "my user" 10.0.0.0/8 trust # trailing\n'
        'host db1, db2,"d,3" u 10.0.0.0/8 md5\n'
        'host "with ""quote""" \\\n  all 10.0.0.0/8 reject\n'
        "local sameuser all password"
    )
    assert [rule.line for rule in r.rules] == [3, 4, 5, 7]
    assert lookup(r, HOST, "all", "my user", "10.1.1.1") is T
    assert lookup(r, HOST, "other", "my user", "10.1.1.1") is None  # a quoted "all" is a name
    assert [lookup(r, HOST, db, "u", "10.0.0.1") for db in ("db1", "db2", "d,3", "db4")] == [MD5, MD5, MD5, None]
    assert lookup(r, HOST, 'with "quote"', "x", "10.0.0.1") is R
    assert lookup(r, LOCAL, "joe", "joe") is Method.PASSWORD
    assert r.rules[0].text == 'host "all" "my user" 10.0.0.0/8 trust # trailing'


def test_addresses_masks_and_ipv6() -> None:
    r = rules(
        "host all a 10.1.2.3/8 trust\nhost all b 192.168.1.0 255.255.255.0 trust\n"
        "host all c 2001:db8::/32 trust\nhost all d fe80:: ffff:ffff:: trust"
    )
    assert r.rules[0].network == ipaddress.ip_network("10.0.0.0/8")  # host bits are masked, as PostgreSQL does
    assert lookup(r, HOST, "x", "a", "10.200.0.1") is T
    assert lookup(r, HOST, "x", "b", "192.168.1.77") is T and lookup(r, HOST, "x", "b", "192.168.2.1") is None
    assert lookup(r, HOST, "x", "c", "2001:db8:1::5") is T and lookup(r, HOST, "x", "c", "2001:db9::1") is None
    assert lookup(r, HOST, "x", "d", "fe80::1:2") is T
    # An IPv4 client seen on a dual-stack socket is matched as IPv4.
    assert lookup(r, HOST, "x", "a", "::ffff:10.9.9.9") is T


def test_include_files() -> None:
    r = rules("local all @nested md5")
    assert {lookup(r, LOCAL, "x", u) for u in ("alice", "carol", "dave")} == {MD5}
    assert lookup(r, LOCAL, "x", "eve") is None
    assert lookup(rules('local all "@admins" md5'), LOCAL, "x", "@admins") is MD5  # quoted: a name


def test_load_file_reads_includes_relative_to_it(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "users").write_text("u1 u2\n")
    (tmp_path / "hba.conf").write_text("host all @sub/users 127.0.0.1/32 trust\nbogus line\n")
    with pytest.raises(HbaError) as info:
        load_hba_file(tmp_path / "hba.conf")
    assert info.value.lines == (f'{tmp_path / "hba.conf"}:2: invalid connection type "bogus"',)
    (tmp_path / "hba.conf").write_text("host all @sub/users 127.0.0.1/32 trust\n")
    assert lookup(load_hba_file(tmp_path / "hba.conf"), HOST, "d", "u2", "127.0.0.1") is T
    with pytest.raises(HbaError, match="cannot read"):
        load_hba_file(tmp_path / "missing.conf")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("hots all all 0.0.0.0/0 trust", 'invalid connection type "hots"'),
        ("host,local all all 0.0.0.0/0 trust", "multiple values specified for connection type"),
        ("host", "end-of-line before database specification"),
        ("host all", "end-of-line before role specification"),
        ("host all all", "end-of-line before IP address specification"),
        ("host all all 10.0.0.0/8", "end-of-line before authentication method"),
        ("local all all", "end-of-line before authentication method"),
        ("host all all 10.0.0.0/8 trusted", 'invalid authentication method "trusted"'),
        ("host all all 10.0.0.0/33 trust", 'invalid CIDR mask in address "10.0.0.0/33"'),
        ("host all all 10.0.0.0/x trust", 'invalid CIDR mask in address "10.0.0.0/x"'),
        ("host all all 10.0.0.1 trust", 'invalid IP mask "trust"'),
        ("host all all 10.0.0.1 255.0.255.0 trust", 'invalid IP mask "255.0.255.0"'),
        ("host all all 10.0.0.1 ffff:: trust", "IP address and mask do not match"),
        ("host all all 10.0.0.1", "end-of-line before netmask specification"),
        ("host all all samenet trust", '"samenet" is not supported by pg_doorman'),
        ("host all all samehost trust", '"samehost" is not supported by pg_doorman'),
        ("host all all 10.0.0.0/8 md5 clientcert=verify-full", "clientcert can only be configured for hostssl rows"),
        ("hostssl all all 10.0.0.0/8 md5 clientcert=1", 'invalid value for clientcert: "1"'),
        ("hostssl all all 10.0.0.0/8 cert clientcert=verify-ca", 'clientcert only accepts "verify-full"'),
        ("host all all 10.0.0.0/8 cert", "cert authentication is only supported on hostssl connections"),
        ("host all all 10.0.0.0/8 md5 map=x", 'unrecognized authentication option name "map" for method "md5"'),
        ("host all all 10.0.0.0/8 md5 clientcert", 'authentication option not in name=value format: "clientcert"'),
        ('host "all all 10.0.0.0/8 md5', "unterminated quoted string"),
        ("local all @missing md5", 'could not open secondary authentication file "@missing"'),
        ("local all @loop md5", "includes nested deeper than 10 levels"),
        ("local all +blocked reject", "skipping a reject rule would admit the clients it names"),
        ("local samerole all reject", "skipping a reject rule would admit the clients it names"),
    ],
)
def test_bad_lines_name_file_and_line(text: str, message: str) -> None:
    [line] = errors("# header\n" + text)
    assert line.startswith("pg_hba.conf:2: ") and message in line, line


def test_every_bad_line_is_reported_at_once() -> None:
    assert [line.split(":")[1] for line in errors("bad 1\nlocal all all trust\nbad 2\n")] == ["1", "3"]


def test_unsupported_methods_parse_with_a_warning() -> None:
    r = rules('local all all peer map=m\nhost all all 0.0.0.0/0 ldap ldapserver=x ldapprefix="cn=" ldapsuffix=",dc=x"')
    assert [rule.method for rule in r.rules] == [Method.PEER, Method.LDAP]
    assert len(r.warnings) == 1 and 'method "peer" is not supported by pg_doorman' in r.warnings[0]
    assert r.rules[1].option("ldapprefix") == "cn="


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("host all all 0.0.0.0/0 ldap ldapserver=x ldapbogus=1", "ldapbogus"),
        ('host all all 0.0.0.0/0 ldap ldapserver=x ldapprefix="uid=" ldapbasedn="dc=x"', "ldap"),
        ("host all all 0.0.0.0/0 pam pamservice=x nonsense=1", 'unrecognized authentication option name "nonsense"'),
    ],
)
def test_ldap_and_pam_rule_options_are_checked_at_load(line: str, message: str) -> None:
    [error] = errors(line)
    assert error.startswith("pg_hba.conf:1: ") and message in error, error


def test_ldap_and_pam_rules_name_their_own_check() -> None:
    ldap = rules('host all all 0.0.0.0/0 ldap ldapserver=10.1.1.1 ldapprefix="uid=" ldapsuffix=",dc=x"')
    decision = decide(ldap, tcp("10.0.0.1"), "db", "u", None)
    assert decision.method is Method.LDAP and decision.check is not None and not decision.doomed
    assert decision.rule == "pg_hba.conf:1"
    pam = rules("host all all 0.0.0.0/0 pam pamservice=pg_doorman_x")
    decision = decide(pam, tcp("10.0.0.1"), "db", "u", "stored-is-not-used")
    assert decision.method is Method.PAM and getattr(decision.check, "service", None) == "pg_doorman_x"
    default = decide(rules("host all all 0.0.0.0/0 pam"), tcp("10.0.0.1"), "db", "u", None)
    assert getattr(default.check, "service", None) == "postgresql"


def test_replication_never_matches() -> None:
    r = rules("local replication all trust\nlocal all all md5")
    assert lookup(r, LOCAL, "replication", "u") is MD5 and "replication" in r.warnings[0]


def test_legacy_allow_list() -> None:
    r = legacy_rules(["10.0.0.0/8", "::1/128"])
    assert [rule.conn_type for rule in r.rules] == [ConnType.LOCAL, ConnType.HOST, ConnType.HOST]
    assert lookup(r, LOCAL, "d", "u") is MD5 and lookup(r, HOST, "d", "u", "10.3.3.3") is MD5
    assert lookup(r, HOST, "d", "u", "::1") is MD5 and lookup(r, HOST, "d", "u", "127.0.0.1") is None
    with pytest.raises(HbaError, match=r"general.hba\[1\]: invalid CIDR range 'nope'"):
        legacy_rules(["10.0.0.0/8", "nope"])


def test_client_address() -> None:
    assert client_address(("127.0.0.2", 5000)) == ipaddress.ip_address("127.0.0.2")
    assert client_address(("fe80::1%lo", 5000, 0, 1)) == ipaddress.ip_address("fe80::1")
    assert client_address("") is None and client_address(None) is None and client_address(("garbage", 1)) is None


# ------------------------------------------------------------------------ decisions


def tcp(addr: str, tls: bool = False, cn: str | None = None) -> ClientOrigin:
    return ClientOrigin(local=False, address=ipaddress.ip_address(addr), tls=tls, certificate_name=cn)


UNIX = ClientOrigin(local=True)
SCRAM_SECRET = make_scram_verifier("pw", salt=b"0123456789abcdef")


def test_no_matching_rule_is_refused_with_postgresql_message() -> None:
    r = rules("host all all 127.0.0.1/32 trust")
    decision = decide(r, tcp("127.0.0.2"), "db", "u", "secret")
    assert (decision.method, decision.sqlstate) == (Method.REJECT, "28000")
    assert decision.reason == 'no pg_hba.conf entry for host "127.0.0.2", user "u", database "db", no encryption'
    assert decide(r, UNIX, "db", "u", "x").reason.startswith('no pg_hba.conf entry for host "[local]"')
    assert "SSL encryption" in decide(r, tcp("10.0.0.1", tls=True), "db", "u", "x").reason


def test_reject_rule_message_and_log_note() -> None:
    r = rules("host all all 127.0.0.1/32 reject")
    decision = decide(r, tcp("127.0.0.1"), "db", "u", "secret")
    assert (
        decision.reason == 'pg_hba.conf rejects connection for host "127.0.0.1", user "u", database "db", no encryption'
    )
    assert decision.rule == "reject rule (pg_hba.conf:1: host all all 127.0.0.1/32 reject)"
    with pytest.raises(LoginFailed) as info:
        ClientLogin("u", decision).start()
    assert (info.value.sqlstate, info.value.why) == ("28000", decision.rule)


@pytest.mark.parametrize("stored", ["", None, "secret", md5_verifier("pw", "u"), SCRAM_SECRET])
def test_trust_logs_in_without_exchange_whatever_is_stored(stored: str | None) -> None:
    decision = decide(rules("local all all trust"), UNIX, "db", "u", stored)
    assert decision.method is Method.TRUST and decision.rule == "pg_hba.conf:1"
    login = ClientLogin("u", decision)
    assert login.start() == b"" and login.done


def test_no_password_means_no_login_unless_trust() -> None:
    for method in ("md5", "scram-sha-256", "password"):
        decision = decide(rules(f"local all all {method}"), UNIX, "db", "u", "")
        assert (decision.method, decision.sqlstate) == (Method.REJECT, "28000"), method
    assert decide(None, UNIX, "db", "u", "").method is Method.REJECT  # no rules at all: still refused


def test_password_methods_follow_postgresql() -> None:
    md5, plain = md5_verifier("pw", "u"), "pw"
    d = decide(rules("local all all md5"), UNIX, "db", "u", SCRAM_SECRET)
    assert d.method is Method.SCRAM_SHA_256 and not d.doomed  # md5 rule + SCRAM secret: SCRAM
    d = decide(rules("local all all md5"), UNIX, "db", "u", plain)
    assert d.method is Method.MD5 and d.verifier == md5
    d = decide(rules("local all all scram-sha-256"), UNIX, "db", "u", md5)
    assert d.method is Method.SCRAM_SHA_256 and d.doomed  # scram rule + md5 secret: refused at the end
    for stored in (plain, md5, SCRAM_SECRET):
        assert decide(rules("local all all password"), UNIX, "db", "u", stored).method is Method.PASSWORD


@pytest.mark.parametrize("method", ["peer", "ident", "radius radiusservers=x", "gss"])
def test_unsupported_method_refuses(method: str) -> None:
    decision = decide(rules(f"local all all {method}"), UNIX, "db", "u", "secret")
    name = method.split()[0]
    assert (decision.method, decision.sqlstate) == (Method.REJECT, "28000")
    assert decision.reason == f'{name} authentication failed for user "u"'
    assert f'method "{name}" is not supported by pg_doorman' in decision.rule


def test_certificates() -> None:
    cert = rules("hostssl all all 0.0.0.0/0 cert")
    assert decide(cert, tcp("10.0.0.1", tls=True), "db", "u", "x").reason == (
        'certificate authentication failed for user "u"'
    )  # no certificate (until TLS passes one in)
    assert decide(cert, tcp("10.0.0.1", tls=True, cn="u"), "db", "u", "").method is Method.TRUST
    assert decide(cert, tcp("10.0.0.1", tls=True, cn="v"), "db", "u", "x").method is Method.REJECT
    assert decide(cert, tcp("10.0.0.1"), "db", "u", "x").reason.startswith("no pg_hba.conf entry")  # plain: no match
    full = rules("hostssl all all 0.0.0.0/0 md5 clientcert=verify-full")
    assert decide(full, tcp("10.0.0.1", tls=True), "db", "u", "x").reason == (
        "connection requires a valid client certificate"
    )
    assert decide(full, tcp("10.0.0.1", tls=True, cn="v"), "db", "u", "x").method is Method.REJECT
    assert decide(full, tcp("10.0.0.1", tls=True, cn="u"), "db", "u", "x").method is Method.MD5
    ca = rules("hostssl all all 0.0.0.0/0 md5 clientcert=verify-ca")
    assert decide(ca, tcp("10.0.0.1", tls=True, cn="v"), "db", "u", "x").method is Method.MD5


def test_admin_console_decisions() -> None:
    r = rules("host all admin 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 md5\nlocal all all scram-sha-256")
    origin = tcp("127.0.0.1")
    assert login_decision("admin", "admin", "", rules=r, origin=origin).method is Method.TRUST
    assert login_decision("other", "admin", "pw", rules=r, origin=origin).method is Method.MD5
    assert login_decision("admin", "admin", "pw", rules=r, origin=UNIX).method is Method.SCRAM_SHA_256
    refused = login_decision("admin", "admin", "pw", rules=r, origin=tcp("127.0.0.2"))
    assert (
        refused.reason == 'no pg_hba.conf entry for host "127.0.0.2", user "admin", database "pgdoorman", no encryption'
    )
    trusting = rules("host all all 127.0.0.1/32 trust")
    other = login_decision("mallory", "admin", "pw", rules=trusting, origin=origin)
    assert (other.method, other.reason) == (Method.REJECT, 'role "mallory" does not exist')
    assert login_decision("admin", "admin", "pw").method is Method.MD5  # no rules: md5 as before


# ------------------------------------------------------------------------ cleartext exchange


def cleartext(decision_stored: str | None, password: bytes, user: str = "u") -> ClientLogin:
    login = ClientLogin(user, choose_method(user, decision_stored, rule=Method.PASSWORD))
    request = login.start()
    assert request[:1] == b"R" and struct.unpack_from("!i", request, 5)[0] == 3
    login.feed(P, password)
    return login


@pytest.mark.parametrize("stored", ["pw", md5_verifier("pw", "u"), SCRAM_SECRET])
def test_password_method_checks_cleartext_against_any_stored_kind(stored: str) -> None:
    assert cleartext(stored, b"pw\0").done
    with pytest.raises(LoginFailed) as info:
        cleartext(stored, b"nope\0")
    assert (info.value.sqlstate, info.value.why) == ("28P01", "wrong password")


def test_password_method_hostile_input() -> None:
    with pytest.raises(LoginFailed, match="password authentication failed"):
        cleartext(None, b"pw\0")  # unknown user: same failure
    with pytest.raises(LoginFailed):
        cleartext("pw", b"\0")  # empty password never passes
    for body in (b"pw", b"p\0w\0", b""):
        with pytest.raises(ProtocolViolation):
            cleartext("pw", body)
