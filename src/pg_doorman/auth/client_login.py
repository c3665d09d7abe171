"""A client's password exchange as a sans-I/O state machine: pg_doorman in PostgreSQL's place.

`ClientLogin(user, decision).start()` gives the first authentication request (AuthenticationMD5Password,
AuthenticationSASL or AuthenticationCleartextPassword; nothing for ``trust``, which is done at once); each
message the client sends is then passed to `feed()`, which returns the bytes to send back (possibly empty) or
raises. For JWT/PAM/LDAP the password is then in `cleartext`: the caller has it judged (`auth.external.verify`,
which may take a while and is the only step that is not sans-I/O) and hands the verdict to `settle()`. When
`done` becomes true the client has proven who it is; AuthenticationOk and the
rest of the startup reply are the caller's (it still has to find a server and its parameters). `client_key` is
the SCRAM ClientKey recovered from the proof, for SCRAM passthrough to PostgreSQL.

Every failure raises a `PoolerError` to send as FATAL: `LoginFailed` (28P01 ``password authentication failed``,
with a `why` for the log only), or 08P01 for messages that break the protocol. A Terminate raises
ConnectionAbortedError: the client gave up (libpq does that when it has no password and will ask the user).

A doomed decision (no verifier: an unknown user, an unknown database, a non-admin name on the admin console) runs
the very same exchange, with a per-user mock SCRAM salt as PostgreSQL does, and fails at the end like a wrong
password; neither the messages nor their timing tell which names exist.
"""

from __future__ import annotations

import hmac
import secrets
from typing import TYPE_CHECKING

from pg_doorman.auth.md5 import md5_verifier, new_md5_salt, verify_md5_response
from pg_doorman.auth.policy import CLEARTEXT_METHODS, Decision, Method
from pg_doorman.auth.scram import DEFAULT_ITERATIONS, SALT_LEN, AuthError, ScramServer, ScramVerifier
from pg_doorman.protocol import messages
from pg_doorman.protocol.errors import INVALID_PASSWORD, PoolerError, ProtocolViolation

if TYPE_CHECKING:
    from pg_doorman.auth.external import PasswordCheck

__all__ = ["MAX_AUTH_MESSAGE", "ClientLogin", "LoginFailed", "mock_scram_verifier"]

MAX_AUTH_MESSAGE = 8192
"""Largest message a client may send before it is authenticated. PostgreSQL allows 1000 bytes for a password
packet and 65535 for a SASL token; ours are an md5 answer (36 bytes) or a SCRAM message (about 100), and a
later cleartext token (JWT) fits in 8 kB. Anything longer is refused from its header alone, so a stranger cannot
make the pooler buffer a large body."""

_PASSWORD_MESSAGE = 0x70  # 'p': PasswordMessage, SASLInitialResponse and SASLResponse all use it
_TERMINATE = 0x58  # 'X'

# Per-process secret for mock SCRAM salts: stable for one user name (a prober sees the same salt twice, as for a
# real user), different between names and unpredictable from outside.
_MOCK_KEY = secrets.token_bytes(32)


def mock_scram_verifier(user: str) -> ScramVerifier:
    """A SCRAM verifier for a user that has none: what PostgreSQL's scram_mock_salt does, nobody's password."""
    name = user.encode("utf-8", "surrogateescape")
    salt = hmac.digest(_MOCK_KEY, b"salt\x00" + name, "sha256")[:SALT_LEN]
    key = hmac.digest(_MOCK_KEY, b"key\x00" + name, "sha256")
    return ScramVerifier(DEFAULT_ITERATIONS, salt, key, key)


class LoginFailed(PoolerError):
    """Authentication failed. ``message`` goes to the client; ``why`` is for the log only (it may say that a
    user or database does not exist, which the client must not learn)."""

    def __init__(self, sqlstate: str, message: str, *, why: str = "") -> None:
        super().__init__(sqlstate, message)
        self.why = why


class ClientLogin:
    __slots__ = ("_decision", "_salt", "_sasl_started", "_scram", "_user", "cleartext", "client_key", "done")

    def __init__(self, user: str, decision: Decision) -> None:
        self._user = user
        self._decision = decision
        self._salt = b""
        self._scram: ScramServer | None = None
        self._sasl_started = False  # SASLInitialResponse taken: the next message is the client-final one
        self.done = False
        self.client_key: bytes | None = None
        self.cleartext: str | None = None  # a cleartext method's password, until settle()

    @property
    def max_message_length(self) -> int:
        """The longest message (its int32 length field) the client may send next."""
        return MAX_AUTH_MESSAGE

    def start(self, channel_binding: bytes | None = None) -> bytes:
        """The first authentication request; raises LoginFailed when the decision refuses outright.

        ``channel_binding``: on a TLS connection, the ``tls-server-end-point`` hash of our certificate (SCRAM then
        offers SCRAM-SHA-256-PLUS); None on a plain one."""
        decision = self._decision
        if decision.method is Method.REJECT:
            raise LoginFailed(decision.sqlstate, decision.reason, why=decision.rule)
        if decision.method is Method.TRUST:
            self.done = True
            return b""
        if decision.method is Method.PASSWORD or decision.method in CLEARTEXT_METHODS:
            return messages.AUTH_CLEARTEXT_PASSWORD
        if decision.method is Method.MD5:
            self._salt = new_md5_salt()
            return messages.auth_md5(self._salt)
        verifier = decision.verifier
        if not isinstance(verifier, ScramVerifier):
            verifier = mock_scram_verifier(self._user)
        self._scram = ScramServer(verifier, channel_binding=channel_binding)
        return messages.auth_sasl(self._scram.mechanisms())

    def feed(self, kind: int, body: bytes) -> bytes:
        """One client message; returns what to send back. Raises on failure (see the module docstring)."""
        if self.done or self.cleartext is not None:
            raise ProtocolViolation("unexpected message after authentication")
        if kind == _TERMINATE:
            raise ConnectionAbortedError("client ended the connection during authentication")
        scram = self._scram
        if kind != _PASSWORD_MESSAGE:
            expected = "SASL" if scram is not None else "password"
            raise ProtocolViolation(f"expected {expected} response, got message type {kind}")
        if self._decision.method is Method.PASSWORD:
            return self._check_password(body)
        if self._decision.method in CLEARTEXT_METHODS:
            return self._take_cleartext(body)
        if scram is None:
            return self._check_md5(body)
        try:
            if not self._sasl_started:
                self._sasl_started = True
                return messages.auth_sasl_continue(scram.handle_client_first(body))
            final = scram.handle_client_final(body)
        except AuthError as err:
            if err.sqlstate == INVALID_PASSWORD:
                raise self._failed("wrong password") from None
            raise
        if self._decision.doomed:
            raise self._failed(self._decision.reason)
        self.client_key = scram.client_key
        self.done = True
        return messages.auth_sasl_final(final)

    def _check_md5(self, body: bytes) -> bytes:
        verifier = self._decision.verifier
        if not isinstance(verifier, str):
            raise self._failed(self._decision.reason)
        if not verify_md5_response(verifier, self._salt, body):
            raise self._failed("wrong password")
        self.done = True
        return b""

    def _check_password(self, body: bytes) -> bytes:
        """A cleartext PasswordMessage (``password`` rule), checked against what is stored, as PostgreSQL does."""
        if not body.endswith(b"\x00") or b"\x00" in body[:-1]:
            raise ProtocolViolation("invalid password packet")
        password = body[:-1].decode("utf-8", "surrogateescape")
        verifier = self._decision.verifier
        if verifier is None:
            raise self._failed(self._decision.reason)
        if not password:
            raise self._failed("empty password")
        if isinstance(verifier, ScramVerifier):
            derived = ScramVerifier.from_password(password, verifier.salt, verifier.iterations).stored_key
            ok = hmac.compare_digest(derived, verifier.stored_key)
        else:
            ok = hmac.compare_digest(md5_verifier(password, self._user).encode(), verifier.encode())
        if not ok:
            raise self._failed("wrong password")
        self.done = True
        return b""

    @property
    def check(self) -> PasswordCheck | None:
        """What judges `cleartext` (None for a doomed exchange: settle() refuses whatever it is told)."""
        return self._decision.check

    def _take_cleartext(self, body: bytes) -> bytes:
        """A PasswordMessage: one NUL-terminated string (PostgreSQL: "invalid password packet size")."""
        if not body.endswith(b"\x00") or b"\x00" in body[:-1]:
            raise ProtocolViolation("invalid password packet size")
        try:
            password = body[:-1].decode("utf-8")
        except UnicodeDecodeError:
            raise self._failed("password is not valid UTF-8") from None
        if not password:
            # An LDAP server takes an empty-password bind as anonymous and says yes; PostgreSQL refuses first.
            raise self._failed("empty password returned by client")
        if self._decision.check is None:
            raise self._failed(self._decision.reason)
        self.cleartext = password
        return b""

    def settle(self, why: str | None) -> None:
        """The external check's verdict on `cleartext`: None admits the client, a reason refuses it."""
        if self.cleartext is None:
            raise ProtocolViolation("no password to settle")
        self.cleartext = None
        if why is not None:
            raise self._failed(why)
        self.done = True

    def _failed(self, why: str) -> LoginFailed:
        return LoginFailed(INVALID_PASSWORD, f'password authentication failed for user "{self._user}"', why=why)
