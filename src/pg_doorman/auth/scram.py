"""SCRAM-SHA-256 (RFC 5802, RFC 7677) for both sides of the pooler, as small sans-I/O state machines.

* :class:`ScramServer` is pg_doorman facing a client: it checks the client's proof against a stored
  verifier (``SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>``) and, on success, exposes the
  recovered ``ClientKey``.
* :class:`ScramClient` is pg_doorman facing PostgreSQL: it logs in either with a plaintext password
  (SASLprep + PBKDF2, server signature verified) or with a ``ClientKey`` recovered from a client.

The ``ClientKey`` trick ("SCRAM passthrough"): ``ClientProof = ClientKey XOR HMAC(StoredKey, AuthMessage)``
and ``StoredKey = SHA256(ClientKey)``, so whoever knows ``ClientKey`` can answer any challenge for the same
verifier (same salt and iteration count) without knowing the password. The server signature cannot be
checked in that mode, since ``ServerKey`` is not derivable from ``ClientKey``.

Wire shape, as PostgreSQL uses it (https://www.postgresql.org/docs/current/sasl-authentication.html):
AuthenticationSASL lists ``SCRAM-SHA-256``; the client's SASLInitialResponse carries the mechanism, an int32
length and ``client-first-message``; AuthenticationSASLContinue carries ``server-first-message``; SASLResponse
carries ``client-final-message``; AuthenticationSASLFinal carries ``server-final-message``. PostgreSQL ignores
the user name in ``n=`` (it takes it from the startup packet) and libpq sends it empty.

Channel binding (RFC 5802 section 6, PostgreSQL 11+): over TLS the mechanism list starts with
``SCRAM-SHA-256-PLUS``, whose gs2 header is ``p=tls-server-end-point,,`` and whose ``c=`` carries that header
followed by the ``tls-server-end-point`` hash of the server's certificate (RFC 5929), so a man in the middle with
another certificate cannot relay the exchange. The hash is plain data here (``channel_binding``): the TLS code
computes it (pg_doorman.tls.end_point_hash). The gs2 flag ``y`` says "I could bind, but the server seems not to":
a server that does offer PLUS must refuse it (a downgrade).

Every failure raises :class:`AuthError`, whose message and SQLSTATE are fit for the client's ErrorResponse.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import re
import secrets
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum, auto

from pg_doorman.auth.saslprep import prepare_password
from pg_doorman.protocol.errors import (
    FEATURE_NOT_SUPPORTED,
    INVALID_AUTHORIZATION,
    INVALID_PASSWORD,
    PROTOCOL_VIOLATION,
    PoolerError,
)

__all__ = [
    "DEFAULT_ITERATIONS",
    "MECHANISM",
    "MECHANISM_PLUS",
    "AuthError",
    "ScramClient",
    "ScramServer",
    "ScramVerifier",
    "is_scram_verifier",
    "make_scram_verifier",
    "parse_sasl_mechanisms",
    "parse_scram_verifier",
]

MECHANISM = "SCRAM-SHA-256"
MECHANISM_PLUS = "SCRAM-SHA-256-PLUS"
CHANNEL_BINDING_TYPE = "tls-server-end-point"  # the only type PostgreSQL (and so pg_doorman) supports
DEFAULT_ITERATIONS = 4096  # PostgreSQL's default scram_iterations
SALT_LEN = 16  # PostgreSQL's SCRAM_DEFAULT_SALT_LEN
KEY_LEN = 32  # SHA-256 digest size
NONCE_RAW_LEN = 18  # PostgreSQL's SCRAM_RAW_NONCE_LEN; base64 makes it 24 printable characters

_MECHANISM_B = MECHANISM.encode("ascii")
_MECHANISM_PLUS_B = MECHANISM_PLUS.encode("ascii")
_GS2_PLUS = b"p=" + CHANNEL_BINDING_TYPE.encode("ascii") + b",,"
_GS2_NO_BINDING = b"n,,"
_GS2_BINDING_UNSEEN = b"y,,"  # the client could bind, but the server did not offer PLUS
_INT32 = struct.Struct("!i")
_VERIFIER_RE = re.compile(r"SCRAM-SHA-256\$(\d+):([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+):([A-Za-z0-9+/=]+)")


class AuthError(PoolerError):
    """Authentication failed or the SCRAM exchange was malformed; reported to the client as FATAL.

    ``sqlstate`` is ``28P01`` (invalid_password) for a wrong proof or signature, ``08P01`` for a malformed
    or inconsistent message (as PostgreSQL reports those), ``0A000`` for an unsupported feature, ``28000`` for
    a channel binding that does not match or a downgrade from it.
    """

    def __init__(self, message: str, *, sqlstate: str = INVALID_PASSWORD, detail: str | None = None) -> None:
        super().__init__(sqlstate, message, detail=detail)


def _malformed(detail: str) -> AuthError:
    return AuthError("malformed SCRAM message", sqlstate=PROTOCOL_VIOLATION, detail=detail)


# --- primitives -------------------------------------------------------------------------------------------


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.digest(key, msg, "sha256")


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def _b64decode(value: bytes | str, what: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _malformed(f"invalid base64 in {what}")


@functools.lru_cache(maxsize=256)
def _salted_password(prepared: bytes, salt: bytes, iterations: int) -> bytes:
    """Hi(password, salt, i) of RFC 5802 = PBKDF2-HMAC-SHA-256. Cached: backend logins repeat it."""
    return hashlib.pbkdf2_hmac("sha256", prepared, salt, iterations)


def _keys_from_password(password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    """(ClientKey, ServerKey) for ``password`` with PostgreSQL's SASLprep-or-raw preparation."""
    salted = _salted_password(prepare_password(password), salt, iterations)
    return _hmac(salted, b"Client Key"), _hmac(salted, b"Server Key")


def _random_nonce() -> bytes:
    return _b64(secrets.token_bytes(NONCE_RAW_LEN))


def _is_printable(value: bytes) -> bool:
    """RFC 5802 ``printable``: %x21-2B / %x2D-7E (visible ASCII except ',')."""
    return bool(value) and all(0x21 <= c <= 0x7E and c != 0x2C for c in value)


def _check_nonce(nonce: bytes) -> bytes:
    nonce = bytes(nonce)
    if not _is_printable(nonce):
        raise ValueError("SCRAM nonce must be non-empty printable ASCII without ','")
    return nonce


def _saslname(username: str) -> bytes:
    """RFC 5802 ``saslname``: UTF-8 with ',' and '=' escaped as =2C and =3D."""
    return username.replace("=", "=3D").replace(",", "=2C").encode("utf-8")


def _attr(part: bytes, name: bytes) -> bytes:
    """The value of ``name=value``; raise if ``part`` is a different attribute."""
    if len(part) < 2 or part[:1] != name or part[1:2] != b"=":
        raise _malformed(f"expected attribute '{name.decode()}'")
    return part[2:]


# --- verifier ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScramVerifier:
    """A parsed ``pg_authid`` SCRAM secret. Keys are kept out of ``repr`` so that it is safe to log."""

    iterations: int
    salt: bytes
    stored_key: bytes = field(repr=False)
    server_key: bytes = field(repr=False)

    @classmethod
    def from_password(
        cls, password: str, salt: bytes | None = None, iterations: int = DEFAULT_ITERATIONS
    ) -> ScramVerifier:
        """Derive a verifier as ``CREATE ROLE … PASSWORD`` does (random 16-byte salt unless given)."""
        if iterations <= 0:
            raise ValueError("SCRAM iteration count must be positive")
        if salt is None:
            salt = secrets.token_bytes(SALT_LEN)
        elif not salt:
            raise ValueError("SCRAM salt must not be empty")
        client_key, server_key = _keys_from_password(password, bytes(salt), iterations)
        return cls(iterations, bytes(salt), _sha256(client_key), server_key)

    def to_text(self) -> str:
        """``SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>``, standard base64, as in ``pg_authid``."""

        def b64s(data: bytes) -> str:
            return _b64(data).decode("ascii")

        return f"{MECHANISM}${self.iterations}:{b64s(self.salt)}${b64s(self.stored_key)}:{b64s(self.server_key)}"


def is_scram_verifier(text: str) -> bool:
    """True if ``text`` parses as a SCRAM-SHA-256 verifier."""
    try:
        parse_scram_verifier(text)
    except ValueError:
        return False
    return True


def parse_scram_verifier(text: str) -> ScramVerifier:
    """Parse ``SCRAM-SHA-256$<iter>:<salt-b64>$<StoredKey-b64>:<ServerKey-b64>``; ValueError if malformed."""
    match = _VERIFIER_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError("not a SCRAM-SHA-256 verifier: expected 'SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>'")
    iter_text, salt_b64, stored_b64, server_b64 = match.groups()
    try:
        salt = base64.b64decode(salt_b64, validate=True)
        stored_key = base64.b64decode(stored_b64, validate=True)
        server_key = base64.b64decode(server_b64, validate=True)
    except binascii.Error:
        raise ValueError("SCRAM-SHA-256 verifier contains invalid base64")
    iterations = int(iter_text)
    if iterations <= 0:
        raise ValueError("SCRAM-SHA-256 verifier has a non-positive iteration count")
    if not salt:
        raise ValueError("SCRAM-SHA-256 verifier has an empty salt")
    if len(stored_key) != KEY_LEN or len(server_key) != KEY_LEN:
        raise ValueError(f"SCRAM-SHA-256 verifier keys must be {KEY_LEN} bytes")
    return ScramVerifier(iterations, salt, stored_key, server_key)


def make_scram_verifier(password: str, salt: bytes | None = None, iterations: int = DEFAULT_ITERATIONS) -> str:
    """The text PostgreSQL would store for ``password`` (SASLprep applied, raw bytes if prep fails)."""
    return ScramVerifier.from_password(password, salt, iterations).to_text()


def parse_sasl_mechanisms(data: bytes) -> list[str]:
    """Mechanism names from an AuthenticationSASL payload (NUL-terminated names, then an empty one)."""
    names = bytes(data).split(b"\x00")
    if len(names) < 2 or names[-1] != b"" or names[-2] != b"":
        raise _malformed("SASL mechanism list is not NUL-terminated")
    return [n.decode("ascii", "replace") for n in names[:-2]]


# --- server side: pg_doorman authenticates a client -------------------------------------------------------


class _Step(Enum):
    START = auto()
    CONTINUE = auto()
    FINAL = auto()
    DONE = auto()
    FAILED = auto()


class ScramServer:
    """One SCRAM-SHA-256 exchange with a client, checked against ``verifier``.

    Drive it with :meth:`handle_client_first` (SASLInitialResponse body → AuthenticationSASLContinue data)
    and :meth:`handle_client_final` (SASLResponse body → AuthenticationSASLFinal data). ``nonce`` is the
    server's nonce part (printable ASCII without ','; random 18 bytes in base64 by default).
    ``channel_binding``: the ``tls-server-end-point`` hash of our certificate on a TLS connection (then
    SCRAM-SHA-256-PLUS is offered and a ``y`` flag is a downgrade); None on a plain connection.
    Any :class:`AuthError` ends the exchange; the checks and messages are PostgreSQL's (auth-scram.c).
    """

    def __init__(
        self, verifier: ScramVerifier, nonce: bytes | None = None, *, channel_binding: bytes | None = None
    ) -> None:
        self._verifier = verifier
        self._server_nonce = _random_nonce() if nonce is None else _check_nonce(nonce)
        self._channel_binding = None if channel_binding is None else bytes(channel_binding)
        self._binding_in_use = False  # the client chose SCRAM-SHA-256-PLUS
        self._expected_cbind = b""  # the c= value of client-final-message, base64 text
        self._step = _Step.START
        self._client_first_bare = b""
        self._server_first = b""
        self._nonce = b""
        self._client_key: bytes | None = None

    def mechanisms(self) -> bytes:
        """AuthenticationSASL payload: PLUS first when we can bind, each NUL-terminated, then the list's NUL."""
        if self._channel_binding is not None:
            return _MECHANISM_PLUS_B + b"\x00" + _MECHANISM_B + b"\x00\x00"
        return _MECHANISM_B + b"\x00\x00"

    @property
    def authenticated(self) -> bool:
        return self._step is _Step.DONE

    @property
    def mechanism(self) -> str:
        """The mechanism the client chose (after :meth:`handle_client_first`)."""
        return MECHANISM_PLUS if self._binding_in_use else MECHANISM

    @property
    def client_key(self) -> bytes:
        """The client's ClientKey, recovered from its proof; only after a successful exchange."""
        if self._client_key is None:
            raise RuntimeError("SCRAM exchange has not completed successfully")
        return self._client_key

    def _expect(self, step: _Step) -> None:
        if self._step is not step:
            self._step = _Step.FAILED
            raise AuthError("unexpected SASL message", sqlstate=PROTOCOL_VIOLATION)

    def handle_client_first(self, sasl_initial_response_payload: bytes) -> bytes:
        """Parse SASLInitialResponse (mechanism NUL, int32 length, client-first); return server-first."""
        self._expect(_Step.START)
        self._step = _Step.FAILED  # until this step succeeds
        mechanism, data = _split_initial_response(bytes(sasl_initial_response_payload))
        if mechanism == _MECHANISM_PLUS_B and self._channel_binding is not None:
            self._binding_in_use = True
        elif mechanism != _MECHANISM_B:
            # PLUS on a plain connection too: we did not offer it.
            raise AuthError("client selected an invalid SASL authentication mechanism", sqlstate=PROTOCOL_VIOLATION)
        gs2_header, self._client_first_bare, client_nonce = _parse_client_first(
            data, binding_in_use=self._binding_in_use, binding_offered=self._channel_binding is not None
        )
        # c= repeats the gs2 header, followed by the certificate hash with PLUS ("biws" is base64 of "n,,").
        self._expected_cbind = _b64(gs2_header + (self._channel_binding or b"") if self._binding_in_use else gs2_header)
        self._nonce = client_nonce + self._server_nonce
        v = self._verifier
        self._server_first = b"r=%s,s=%s,i=%d" % (self._nonce, _b64(v.salt), v.iterations)
        self._step = _Step.FINAL
        return self._server_first

    def handle_client_final(self, sasl_response_payload: bytes) -> bytes:
        """Check client-final-message (channel binding, nonce, proof); return server-final ``v=…``."""
        self._expect(_Step.FINAL)
        self._step = _Step.FAILED
        data = bytes(sasl_response_payload)
        parts = data.split(b",")
        if len(parts) < 3:
            raise _malformed("client-final-message must carry c=, r= and p=")
        cbind = _attr(parts[0], b"c")
        if not hmac.compare_digest(cbind, self._expected_cbind):
            if self._binding_in_use:
                raise AuthError("SCRAM channel binding check failed", sqlstate=INVALID_AUTHORIZATION)
            raise AuthError(
                "unexpected SCRAM channel-binding attribute in client-final-message", sqlstate=PROTOCOL_VIOLATION
            )
        if not hmac.compare_digest(_attr(parts[1], b"r"), self._nonce):
            raise AuthError("invalid SCRAM response", sqlstate=PROTOCOL_VIOLATION, detail="Nonce does not match.")
        proof_attr = parts[-1]
        proof = _b64decode(_attr(proof_attr, b"p"), "proof")
        if len(proof) != KEY_LEN:
            raise _malformed("invalid SCRAM proof length")
        without_proof = data[: len(data) - len(proof_attr) - 1]
        auth_message = b",".join((self._client_first_bare, self._server_first, without_proof))

        v = self._verifier
        client_key = _xor(proof, _hmac(v.stored_key, auth_message))
        if not hmac.compare_digest(_sha256(client_key), v.stored_key):
            raise AuthError("password authentication failed", sqlstate=INVALID_PASSWORD)
        self._client_key = client_key
        self._step = _Step.DONE
        return b"v=" + _b64(_hmac(v.server_key, auth_message))


def _split_initial_response(body: bytes) -> tuple[bytes, bytes]:
    """(mechanism name, client-first-message) of a SASLInitialResponse body."""
    nul = body.find(b"\x00")
    if nul < 0:
        raise _malformed("SASLInitialResponse has no mechanism name")
    mechanism = body[:nul]
    if mechanism not in (_MECHANISM_B, _MECHANISM_PLUS_B):
        raise AuthError("client selected an invalid SASL authentication mechanism", sqlstate=PROTOCOL_VIOLATION)
    rest = body[nul + 1 :]
    if len(rest) < 4:
        raise _malformed("SASLInitialResponse is truncated")
    (length,) = _INT32.unpack_from(rest)
    data = rest[4:]
    if length < 0:
        raise _malformed("SCRAM requires an initial response")
    if length != len(data):
        raise _malformed("SASLInitialResponse length does not match its data")
    return mechanism, data


_NO_BINDING_DATA = (
    "The client selected SCRAM-SHA-256-PLUS, but the SCRAM message does not include channel binding data."
)


def _parse_client_first(data: bytes, *, binding_in_use: bool, binding_offered: bool) -> tuple[bytes, bytes, bytes]:
    """(gs2-header, client-first-message-bare, client nonce) of a client-first-message.

    The gs2 header is checked as PostgreSQL does: ``p=tls-server-end-point`` only with the PLUS mechanism,
    ``n`` or ``y`` only without it, ``y`` refused where PLUS was offered (the client was made to think we cannot
    bind: a downgrade), and no authorization identity."""
    flag = data[:1]
    if flag in (b"n", b"y"):
        if binding_in_use:
            raise _malformed(_NO_BINDING_DATA)
        if flag == b"y" and binding_offered:
            raise AuthError(
                "SCRAM channel binding negotiation error",
                sqlstate=INVALID_AUTHORIZATION,
                detail="The client supports SCRAM channel binding but thinks the server does not.  "
                "However, this server does support channel binding.",
            )
        if data[1:2] != b",":
            raise _malformed("comma expected after the channel-binding flag")
        rest_at = 2
    elif flag == b"p":
        if not binding_in_use:
            raise _malformed(
                "The client selected SCRAM-SHA-256 without channel binding, "
                "but the SCRAM message includes channel binding data."
            )
        comma = data.find(b",")
        if comma < 0:
            raise _malformed("gs2 header is not terminated")
        binding_type = _attr(data[:comma], b"p")
        if binding_type != CHANNEL_BINDING_TYPE.encode("ascii"):
            shown = "".join(chr(c) if 0x21 <= c <= 0x7E else "?" for c in binding_type[:30])
            raise AuthError(f'unsupported SCRAM channel-binding type "{shown}"', sqlstate=PROTOCOL_VIOLATION)
        rest_at = comma + 1
    else:
        raise _malformed("unexpected channel-binding flag")
    # gs2-header = cbind-flag "," [authzid] ","
    if data[rest_at : rest_at + 1] == b"a":
        raise AuthError("client uses authorization identity, but it is not supported", sqlstate=FEATURE_NOT_SUPPORTED)
    if data[rest_at : rest_at + 1] != b",":
        raise _malformed("unexpected attribute in gs2 header")
    gs2_header, bare = data[: rest_at + 1], data[rest_at + 1 :]

    parts = bare.split(b",")
    if parts[0].startswith(b"m="):
        raise AuthError("client requires an unsupported SCRAM extension", sqlstate=FEATURE_NOT_SUPPORTED)
    if len(parts) < 2:
        raise _malformed("client-first-message must carry n= and r=")
    _attr(parts[0], b"n")  # the user name is ignored: it comes from the startup packet
    nonce = _attr(parts[1], b"r")
    if not _is_printable(nonce):
        raise _malformed("client nonce is empty or not printable")
    return gs2_header, bare, nonce


# --- client side: pg_doorman authenticates to PostgreSQL --------------------------------------------------


class ScramClient:
    """One SCRAM-SHA-256 login to PostgreSQL, with a plaintext ``password`` or a recovered ``client_key``.

    Drive it with :meth:`initial_response` (the server's mechanisms → SASLInitialResponse body),
    :meth:`handle_server_first` (AuthenticationSASLContinue data → SASLResponse body) and
    :meth:`handle_server_final` (AuthenticationSASLFinal data). ``nonce`` is our nonce (printable ASCII without
    ','; random 18 bytes in base64 by default); ``username`` goes into ``n=`` (PostgreSQL ignores it; libpq sends
    it empty). ``channel_binding``: the ``tls-server-end-point`` hash of the server's certificate on a TLS
    connection (None: plain, or a certificate without one); with it the login binds to the TLS channel when the
    server offers SCRAM-SHA-256-PLUS, as libpq's ``channel_binding=prefer`` does.
    """

    def __init__(
        self,
        *,
        password: str | None = None,
        client_key: bytes | None = None,
        nonce: bytes | None = None,
        username: str = "",
        channel_binding: bytes | None = None,
    ) -> None:
        if (password is None) == (client_key is None):
            raise ValueError("exactly one of password or client_key is required")
        if client_key is not None and len(client_key) != KEY_LEN:
            raise ValueError(f"ClientKey must be {KEY_LEN} bytes")
        self._password = password
        self._client_key = None if client_key is None else bytes(client_key)
        self._nonce = _random_nonce() if nonce is None else _check_nonce(nonce)
        self._client_first_bare = b"n=" + _saslname(username) + b",r=" + self._nonce
        self._channel_binding = None if channel_binding is None else bytes(channel_binding)
        self._gs2_header = _GS2_NO_BINDING
        self.mechanism = MECHANISM
        self._expected_signature: bytes | None = None
        self._step = _Step.START

    def _expect(self, step: _Step) -> None:
        if self._step is not step:
            self._step = _Step.FAILED
            raise AuthError("unexpected SASL message from the server", sqlstate=PROTOCOL_VIOLATION)

    def initial_response(self, offered: Sequence[str] = (MECHANISM,)) -> bytes:
        """SASLInitialResponse body: mechanism NUL, int32 length, ``<gs2-header>n=…,r=<nonce>``.

        With channel binding data, SCRAM-SHA-256-PLUS when ``offered`` lists it (gs2 header
        ``p=tls-server-end-point,,``), else ``y,,`` (we could bind, the server did not offer to: a server that
        can bind refuses that as a downgrade). Without it, ``n,,``."""
        self._expect(_Step.START)
        if self._channel_binding is not None and MECHANISM_PLUS in offered:
            self.mechanism, self._gs2_header = MECHANISM_PLUS, _GS2_PLUS
        elif self._channel_binding is not None:
            self._gs2_header = _GS2_BINDING_UNSEEN
        client_first = self._gs2_header + self._client_first_bare
        self._step = _Step.CONTINUE
        name = self.mechanism.encode("ascii")
        return name + b"\x00" + _INT32.pack(len(client_first)) + client_first

    def handle_server_first(self, data: bytes) -> bytes:
        """Answer server-first-message ``r=…,s=…,i=…`` with client-final-message ``c=biws,r=…,p=…``."""
        self._expect(_Step.CONTINUE)
        self._step = _Step.FAILED
        server_first = bytes(data)
        parts = server_first.split(b",")
        if parts[0].startswith(b"m="):
            raise AuthError("server requires an unsupported SCRAM extension", sqlstate=FEATURE_NOT_SUPPORTED)
        if len(parts) < 3:
            raise _malformed("server-first-message must carry r=, s= and i=")
        nonce = _attr(parts[0], b"r")
        if not nonce.startswith(self._nonce) or not _is_printable(nonce):
            raise AuthError("invalid SCRAM response (nonce mismatch)", sqlstate=PROTOCOL_VIOLATION)
        salt = _b64decode(_attr(parts[1], b"s"), "salt")
        if not salt:
            raise _malformed("empty SCRAM salt")
        iter_text = _attr(parts[2], b"i")
        if not iter_text.isdigit() or int(iter_text) <= 0:
            raise _malformed("invalid SCRAM iteration count")
        iterations = int(iter_text)

        if self._password is not None:
            client_key, server_key = _keys_from_password(self._password, salt, iterations)
        else:
            assert self._client_key is not None
            client_key, server_key = self._client_key, None
        cbind_input = self._gs2_header
        if self.mechanism == MECHANISM_PLUS:
            assert self._channel_binding is not None
            cbind_input += self._channel_binding
        without_proof = b"c=" + _b64(cbind_input) + b",r=" + nonce  # c=biws: base64("n,,")
        auth_message = b",".join((self._client_first_bare, server_first, without_proof))
        proof = _xor(client_key, _hmac(_sha256(client_key), auth_message))
        if server_key is not None:
            self._expected_signature = _hmac(server_key, auth_message)
        self._step = _Step.FINAL
        return without_proof + b",p=" + _b64(proof)

    def handle_server_final(self, data: bytes) -> None:
        """Check server-final-message; the signature is verified only in password mode (needs ServerKey)."""
        self._expect(_Step.FINAL)
        self._step = _Step.FAILED
        first = bytes(data).split(b",", 1)[0]
        if first.startswith(b"e="):
            reason = first[2:].decode("ascii", "replace")
            raise AuthError(f"SCRAM authentication failed on the server: {reason}")
        signature = _b64decode(_attr(first, b"v"), "server signature")
        if len(signature) != KEY_LEN:
            raise _malformed("invalid SCRAM server signature length")
        if self._expected_signature is not None and not hmac.compare_digest(signature, self._expected_signature):
            raise AuthError("incorrect server signature")
        self._step = _Step.DONE

    @property
    def finished(self) -> bool:
        """True once the server-final message has been accepted."""
        return self._step is _Step.DONE
