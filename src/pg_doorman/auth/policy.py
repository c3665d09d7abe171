"""Which authentication a client gets: the one place that turns "what we know about this user" into a method.

PostgreSQL decides in two steps: pg_hba.conf names a method for the connection, and the role's stored secret
must be able to serve it (an ``md5`` rule is upgraded to SCRAM when the role stores a SCRAM secret; a
``scram-sha-256`` rule cannot be served by an MD5 secret; a role without a usable secret goes through a doomed
exchange rather than being refused outright, so that the reply does not tell which roles exist). pg_doorman has no
access rules yet, so today the rule is implicit: the stored password's kind decides, and the admin console asks
for md5. :func:`choose_method` is where access rules (pg_hba ``trust``/``reject``/``md5``/``scram-sha-256``),
auth_query, JWT, PAM and LDAP plug in; :class:`pg_doorman.auth.client_login.ClientLogin` carries the decision
out, and the connection code only moves bytes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from pg_doorman.auth.md5 import is_md5_verifier, md5_verifier
from pg_doorman.auth.scram import ScramVerifier, make_scram_verifier, parse_scram_verifier
from pg_doorman.protocol.errors import INVALID_AUTHORIZATION

if TYPE_CHECKING:
    from pg_doorman.auth.external import PasswordCheck

__all__ = ["CLEARTEXT_METHODS", "Decision", "Method", "choose_method", "scram_verifier_for_plaintext"]


class Method(Enum):
    """How a client proves who it is (PostgreSQL's pg_hba method names)."""

    MD5 = "md5"
    SCRAM_SHA_256 = "scram-sha-256"
    REJECT = "reject"  # refused before any exchange, with `Decision.reason` as the client's message
    # The client sends its password in the clear and `Decision.check` (auth/external.py) judges it.
    JWT = "jwt"
    PAM = "pam"
    LDAP = "ldap"


CLEARTEXT_METHODS = frozenset({Method.JWT, Method.PAM, Method.LDAP})


@dataclass(frozen=True, slots=True)
class Decision:
    """What :func:`choose_method` decided.

    ``verifier`` is what the client's answer is checked against: an ``md5...`` verifier for MD5, a parsed SCRAM
    verifier for SCRAM-SHA-256, or None for a doomed exchange that nobody can pass (an unknown user: the client
    gets the same challenge and the same failure as for a wrong password). For the cleartext methods (JWT, PAM,
    LDAP) ``check`` judges the password instead, and None dooms the exchange. ``reason`` says why, for the log;
    for REJECT it is also the message sent to the client with ``sqlstate``.
    """

    method: Method
    verifier: str | ScramVerifier | None = None
    reason: str = ""
    sqlstate: str = ""
    check: PasswordCheck | None = None

    @property
    def doomed(self) -> bool:
        if self.method in CLEARTEXT_METHODS:
            return self.check is None
        return self.method is not Method.REJECT and self.verifier is None


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
    * ``rule`` is the method an access rule demands for this connection (the admin console passes MD5; pg_hba
      will pass the matching line's method); None means "follow the stored password". A ``trust`` rule will return
      a decision without exchange here, and is the only way an empty password can log in; ``reject`` becomes
      REJECT.
    * An empty password is refused (28000): without access rules it would let anybody in from anywhere.
    * An MD5 verifier cannot serve a SCRAM rule (a doomed SCRAM exchange, as in PostgreSQL); a SCRAM verifier
      serves an MD5 rule with SCRAM (PostgreSQL's upgrade); plaintext serves either.
    * ``check`` is the user's external password check (``auth_pam_service``, ``auth_ldap``, a
      ``jwt-pkey-fpath:`` password: `PoolSettings.password_check`); it wins over the stored password, as PAM
      does in the original. An ``ldap``/``pam`` access rule will pass its own check with ``rule``.
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
    if is_md5_verifier(stored_password):
        if rule is Method.SCRAM_SHA_256:
            return Decision(Method.SCRAM_SHA_256, reason=f'user "{user}" has an MD5 password, not a SCRAM secret')
        return Decision(Method.MD5, stored_password)
    scram = _scram_verifier(stored_password) if stored_password.startswith("SCRAM-SHA-256$") else None
    if scram is not None:
        return Decision(Method.SCRAM_SHA_256, scram)
    if rule is Method.MD5:
        return Decision(Method.MD5, md5_verifier(stored_password, user))
    return Decision(Method.SCRAM_SHA_256, scram_verifier_for_plaintext(stored_password))
