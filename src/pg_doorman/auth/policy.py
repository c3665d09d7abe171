"""Which authentication a client gets: the one place that turns "what we know about this user" into a method.

PostgreSQL decides in two steps: pg_hba.conf names a method for the connection (the first matching record
decides, `auth.hba`), and the role's stored secret must be able to serve it (an ``md5`` rule is upgraded to SCRAM
when the role stores a SCRAM secret; a ``scram-sha-256`` rule cannot be served by an MD5 secret; a role without a
usable secret goes through a doomed exchange rather than being refused outright, so that the reply does not tell
which roles exist). :func:`decide` is the first step, :func:`choose_method` the second;
:class:`pg_doorman.auth.client_login.ClientLogin` carries the decision out, and the connection code only moves
bytes. Without access rules the stored password's kind decides (the admin console asks for md5).

The rule that ties them: **no password means no login, unless a rule says trust.** An empty password is refused
(28000) under every method but ``trust``; ``trust`` logs in without an exchange even when a password is set.

A user's own external check (a ``jwt-pkey-fpath:`` password, ``auth_pam_service``, ``auth_ldap``:
auth/external.py) decides when no access rule names a method: the client then sends its password in the clear
(JWT, PAM, LDAP) and the check judges it.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pg_doorman.auth.hba import HbaRules, IPAddress, Method, Rule
from pg_doorman.auth.md5 import is_md5_verifier, md5_verifier
from pg_doorman.auth.scram import ScramVerifier, make_scram_verifier, parse_scram_verifier
from pg_doorman.protocol.errors import INVALID_AUTHORIZATION

if TYPE_CHECKING:
    from pg_doorman.auth.external import PasswordCheck

__all__ = [
    "CLEARTEXT_METHODS",
    "ClientOrigin",
    "Decision",
    "Method",
    "choose_method",
    "decide",
    "scram_verifier_for_plaintext",
]

_EXCHANGES = frozenset({Method.MD5, Method.SCRAM_SHA_256, Method.PASSWORD})
# The client sends its password in the clear and `Decision.check` (auth/external.py) judges it.
CLEARTEXT_METHODS = frozenset({Method.JWT, Method.PAM, Method.LDAP})


@dataclass(frozen=True, slots=True)
class ClientOrigin:
    """What access rules see of a connection: Unix socket or TCP, the peer's address, TLS and its certificate.

    ``certificate_name`` is the CN of a verified client certificate (None: no certificate was presented)."""

    local: bool
    address: IPAddress | None = None
    tls: bool = False
    certificate_name: str | None = None

    @property
    def host(self) -> str:
        """As PostgreSQL names the client in its messages: ``[local]`` or the address."""
        return "[local]" if self.local or self.address is None else str(self.address)

    @property
    def encryption(self) -> str:
        return "SSL encryption" if self.tls else "no encryption"


@dataclass(frozen=True, slots=True)
class Decision:
    """What :func:`decide` / :func:`choose_method` decided.

    ``method`` is TRUST (no exchange), MD5, SCRAM_SHA_256, PASSWORD (cleartext) or REJECT. ``verifier`` is what
    the client's answer is checked against: an ``md5...`` verifier for MD5 and PASSWORD, a parsed SCRAM verifier
    for SCRAM-SHA-256 (and PASSWORD), or None for a doomed exchange that nobody can pass (an unknown user: the
    client gets the same challenge and the same failure as for a wrong password). ``reason`` says why, for the
    log; for REJECT it is also the message sent to the client with ``sqlstate``. ``rule`` names the pg_hba record
    that decided (``file:line``), for the log.
    For the cleartext methods (JWT, PAM, LDAP) ``check`` judges the password instead, and None dooms the
    exchange.
    """

    method: Method
    verifier: str | ScramVerifier | None = None
    reason: str = ""
    sqlstate: str = ""
    rule: str = ""
    check: PasswordCheck | None = None

    @property
    def doomed(self) -> bool:
        if self.method in CLEARTEXT_METHODS:
            return self.check is None
        return self.method in _EXCHANGES and self.verifier is None


@functools.lru_cache(maxsize=1024)
def scram_verifier_for_plaintext(password: str) -> ScramVerifier:
    """A SCRAM verifier for a plaintext password from the config, derived once per process (PBKDF2 is slow).

    The salt is random, so two processes (or a reload that drops the cache) derive different verifiers; each
    client exchange uses one verifier from start to end, so that never matters.
    """
    return parse_scram_verifier(make_scram_verifier(password))


@functools.lru_cache(maxsize=1024)
def _scram_verifier(text: str) -> ScramVerifier | None:
    """``text`` parsed as a SCRAM verifier (cached: every login of the user asks), or None if it is none."""
    try:
        return parse_scram_verifier(text)
    except ValueError:
        return None


def choose_method(
    user: str, stored_password: str | None, *, rule: Method | None = None, check: PasswordCheck | None = None
) -> Decision:
    """Choose the challenge for ``user`` whose configured password is ``stored_password``.

    Contract, for everything that later feeds this function:

    * ``stored_password`` is what the configuration (later: auth_query) holds for the user: an MD5 verifier, a
      SCRAM-SHA-256 verifier, plaintext, ``""`` (no password), or None when the user is unknown. An unknown user
      always gets a doomed exchange of the method the rule asks for (SCRAM-SHA-256 by default), never a refusal,
      so that the answer does not depend on whether the name exists.
    * ``rule`` is the password method an access rule demands for this connection (MD5, SCRAM_SHA_256 or
      PASSWORD; the admin console passes MD5); None means "follow the stored password". ``trust`` and ``reject``
      are decided by :func:`decide` before this is asked.
    * An empty password is refused (28000): only a trust rule lets a user without a password in.
    * An MD5 verifier cannot serve a SCRAM rule (a doomed SCRAM exchange, as in PostgreSQL); a SCRAM verifier
      serves an MD5 rule with SCRAM (PostgreSQL's upgrade); plaintext serves either. PASSWORD asks for the
      cleartext password and checks it against whatever is stored.
    * ``check`` is the user's external password check (``auth_pam_service``, ``auth_ldap``, a
      ``jwt-pkey-fpath:`` password: `PoolSettings.password_check`); it wins over the stored password, as PAM
      does in the original. It applies only when no access rule names a method (``rule`` None).
    """
    if check is not None and (rule is None or rule in CLEARTEXT_METHODS):
        return Decision(Method(check.method), check=check)
    if rule in CLEARTEXT_METHODS:  # the rule asks for a check the user has none of: nobody can pass
        assert rule is not None
        return Decision(rule, reason=f'user "{user}" has no {rule.value} authentication configured')
    if stored_password is None:
        return Decision(rule or Method.SCRAM_SHA_256, reason=f'user "{user}" is not configured')
    if stored_password == "":
        return Decision(
            Method.REJECT,
            reason=f'password authentication is not configured for user "{user}" '
            "(empty password; a trust rule is needed)",
            sqlstate=INVALID_AUTHORIZATION,
        )
    scram = _scram_verifier(stored_password) if stored_password.startswith("SCRAM-SHA-256$") else None
    if rule is Method.PASSWORD:
        if scram is not None:
            return Decision(Method.PASSWORD, scram)
        if is_md5_verifier(stored_password):
            return Decision(Method.PASSWORD, stored_password)
        return Decision(Method.PASSWORD, md5_verifier(stored_password, user))
    if is_md5_verifier(stored_password):
        if rule is Method.SCRAM_SHA_256:
            return Decision(Method.SCRAM_SHA_256, reason=f'user "{user}" has an MD5 password, not a SCRAM secret')
        return Decision(Method.MD5, stored_password)
    if scram is not None:
        return Decision(Method.SCRAM_SHA_256, scram)
    if rule is Method.MD5:
        return Decision(Method.MD5, md5_verifier(stored_password, user))
    return Decision(Method.SCRAM_SHA_256, scram_verifier_for_plaintext(stored_password))


def decide(
    rules: HbaRules | None,
    origin: ClientOrigin,
    database: str,
    user: str,
    stored_password: str | None,
    *,
    default: Method | None = None,
    check: PasswordCheck | None = None,
) -> Decision:
    """How ``user`` connecting from ``origin`` to ``database`` logs in, under access rules ``rules``.

    ``rules`` None means no access rules are configured: every client gets the ``default`` password method
    (None: follow the stored password). With rules, the first matching record decides, as in PostgreSQL: none →
    refused (28000, PostgreSQL's ``no pg_hba.conf entry`` message); ``reject`` → refused; ``trust`` → in without
    an exchange; ``cert`` → in when the client certificate's CN is the user name; md5 / scram-sha-256 / password →
    :func:`choose_method`. A method pg_doorman does not carry out refuses.
    """
    if rules is None:
        return choose_method(user, stored_password, rule=default, check=check)
    who = f'host "{origin.host}", user "{user}", database "{database}", {origin.encryption}'
    rule = rules.match("local" if origin.local else "host", database, user, origin.address, origin.tls)
    if rule is None:
        return _refused(f"no pg_hba.conf entry for {who}", "no rule matches")
    method = rule.method
    if method is Method.REJECT:
        return _refused(f"pg_hba.conf rejects connection for {who}", "reject rule", rule)
    certificate = _certificate_check(rule, origin, user)
    if certificate is not None:
        return certificate
    if method is Method.TRUST:
        return Decision(Method.TRUST, reason=f"trust rule {rule.where}", rule=rule.where)
    if method is Method.CERT:
        return Decision(Method.TRUST, reason=f"client certificate CN matches, cert rule {rule.where}", rule=rule.where)
    if method in _EXCHANGES:
        decision = choose_method(user, stored_password, rule=method)
        return Decision(decision.method, decision.verifier, decision.reason, decision.sqlstate, rule.where)
    if method is Method.LDAP or method is Method.PAM:
        # The rule's own check (its ldap* options, its pamservice), whatever the user has configured.
        decision = choose_method(user, stored_password, rule=method, check=_rule_check(rule))
        return dataclasses.replace(decision, rule=rule.where)
    return _refused(
        f'{method.value} authentication failed for user "{user}"',
        f'method "{method.value}" is not supported by pg_doorman',
        rule,
    )


@functools.lru_cache(maxsize=256)
def _rule_check(rule: Rule) -> PasswordCheck:
    """The password check an ``ldap`` or ``pam`` rule names (built once per rule; the options were checked when
    the rules were loaded)."""
    from pg_doorman.auth.external import password_check_of
    from pg_doorman.auth.ldap import parse_ldap_options

    if rule.method is Method.PAM:
        check = password_check_of("", rule.option("pamservice") or "postgresql", None)
    else:
        options = {name: value for name, value in rule.options if name != "clientcert"}
        check = password_check_of("", None, parse_ldap_options(options))
    assert check is not None
    return check


def _certificate_check(rule: Rule, origin: ClientOrigin, user: str) -> Decision | None:
    """A refusal when the rule needs a client certificate the connection lacks (``cert``, ``clientcert=``)."""
    clientcert = rule.option("clientcert")
    if rule.method is not Method.CERT and clientcert is None:
        return None
    if origin.certificate_name is None:
        if rule.method is Method.CERT:
            return _refused(f'certificate authentication failed for user "{user}"', "no client certificate", rule)
        return _refused("connection requires a valid client certificate", "no client certificate", rule)
    if (rule.method is Method.CERT or clientcert == "verify-full") and origin.certificate_name != user:
        return _refused(
            f'certificate authentication failed for user "{user}"',
            f'the certificate is for "{origin.certificate_name}"',
            rule,
        )
    return None


def _refused(message: str, why: str, rule: Rule | None = None) -> Decision:
    where = f"{why} ({rule.where}: {rule.text})" if rule is not None else why
    return Decision(
        Method.REJECT,
        reason=message,
        sqlstate=INVALID_AUTHORIZATION,
        rule=where,
    )
