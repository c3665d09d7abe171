"""Authentication: the password math (MD5, SCRAM-SHA-256, SASLprep) for both sides of the pooler.

Everything here is sans-I/O: pure functions and small state machines over bytes. `policy.choose_method` decides
which method a client gets, `client_login.ClientLogin` runs that exchange and `backend.ServerLogin` logs in to
PostgreSQL; the connection code only feeds in message bodies and sends back what these return. The checks that
need the outside world (JWT keys on disk, PAM, LDAP) are `external.PasswordCheck` values run by `external.verify`.
"""

from __future__ import annotations

from pg_doorman.auth.md5 import (
    is_md5_verifier,
    md5_response_for_password,
    md5_salted_response,
    md5_verifier,
    new_md5_salt,
    verify_md5_response,
)
from pg_doorman.auth.saslprep import SASLprepError, prepare_password, saslprep
from pg_doorman.auth.scram import (
    AuthError,
    ScramClient,
    ScramServer,
    ScramVerifier,
    is_scram_verifier,
    make_scram_verifier,
    parse_sasl_mechanisms,
    parse_scram_verifier,
)

__all__ = [
    "AuthError",
    "SASLprepError",
    "ScramClient",
    "ScramServer",
    "ScramVerifier",
    "is_md5_verifier",
    "is_scram_verifier",
    "make_scram_verifier",
    "md5_response_for_password",
    "md5_salted_response",
    "md5_verifier",
    "new_md5_salt",
    "parse_sasl_mechanisms",
    "parse_scram_verifier",
    "prepare_password",
    "saslprep",
    "verify_md5_response",
]
