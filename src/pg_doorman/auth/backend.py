"""PostgreSQL login as a sans-I/O state machine: what pg_doorman sends when it opens a server connection.

`ServerLogin.start()` gives the StartupMessage; every backend message is then fed to `feed()`, which returns the
bytes to send back (possibly empty). When ReadyForQuery arrives `done` becomes true and `params`, `pid` and
`secret` describe the new session. An ErrorResponse raises `ServerError` with PostgreSQL's SQLSTATE and text.

Over TLS the caller passes ``channel_binding`` (the ``tls-server-end-point`` hash of PostgreSQL's certificate): a
SCRAM login then uses SCRAM-SHA-256-PLUS when PostgreSQL offers it, as libpq's ``channel_binding=prefer`` does.
`auth_method` tells which method the login used.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pg_doorman.auth.jwt import JWT_PRIVATE_KEY_PREFIX, JwtKeyError, mint_backend_token
from pg_doorman.auth.md5 import md5_response_for_password, md5_salted_response
from pg_doorman.auth.scram import MECHANISM, ScramClient, parse_sasl_mechanisms
from pg_doorman.protocol import messages
from pg_doorman.protocol.errors import (
    FEATURE_NOT_SUPPORTED,
    INVALID_PASSWORD,
    PoolerError,
    ProtocolViolation,
    ServerError,
)


@dataclass(frozen=True, slots=True)
class ServerCredentials:
    """What pg_doorman can prove to PostgreSQL.

    Exactly one kind of material is normally present: a plaintext password (explicit ``server_password`` or a
    plaintext user password), an MD5 verifier (pass-the-hash), or a SCRAM ClientKey recovered from a client's
    proof (passthrough). None of them means PostgreSQL must trust the connection.
    """

    user: str
    password: str | None = None
    md5_verifier: str | None = None
    scram_client_key: bytes | None = None


class ServerLogin:
    __slots__ = (
        "_channel_binding",
        "_creds",
        "_scram",
        "auth_method",
        "database",
        "done",
        "params",
        "pid",
        "secret",
        "startup_params",
    )

    def __init__(
        self,
        creds: ServerCredentials,
        database: str,
        startup_params: dict[str, str],
        *,
        channel_binding: bytes | None = None,
    ) -> None:
        self._creds = creds
        self._channel_binding = channel_binding
        self._scram: ScramClient | None = None
        self.auth_method = "trust"  # what PostgreSQL asked for: password, md5, SCRAM-SHA-256(-PLUS)
        self.database = database
        self.startup_params = startup_params
        self.done = False
        self.params: dict[str, str] = {}
        self.pid = 0
        self.secret = 0

    def start(self) -> bytes:
        params = {"user": self._creds.user, "database": self.database}
        params.update(self.startup_params)
        return messages.startup_message(params)

    def feed(self, kind: int, body: bytes) -> bytes:
        if kind == 0x52:  # 'R' authentication request
            return self._on_auth(body)
        if kind == 0x53:  # 'S' ParameterStatus
            name, value = messages.parse_parameter_status(body)
            self.params[name] = value
            return b""
        if kind == 0x4B:  # 'K' BackendKeyData
            self.pid, self.secret = struct.unpack_from("!ii", body)
            return b""
        if kind == 0x5A:  # 'Z' ReadyForQuery
            self.done = True
            return b""
        if kind == 0x45:  # 'E' ErrorResponse
            fields = messages.parse_error_fields(body)
            raise ServerError(
                fields.get("C", "08006"),
                fields.get("M", "server rejected the connection"),
                severity=fields.get("V", fields.get("S", "FATAL")),
                detail=fields.get("D"),
            )
        if kind in (0x4E, 0x76):  # NoticeResponse, NegotiateProtocolVersion: nothing to answer
            return b""
        raise ProtocolViolation(f"unexpected message {chr(kind)!r} from server during login")

    def _on_auth(self, body: bytes) -> bytes:
        code = struct.unpack_from("!i", body)[0]
        creds = self._creds
        if code == 0:
            return b""
        if code == 3:  # cleartext
            self.auth_method = "password"
            if creds.password is None:
                raise self._no_material("password")
            if creds.password.startswith(JWT_PRIVATE_KEY_PREFIX):  # the original's backend JWT (auth/jwt.py)
                return messages.password_message(self._backend_token() + b"\x00")
            return messages.password_message(creds.password.encode() + b"\x00")
        if creds.password is not None and creds.password.startswith(JWT_PRIVATE_KEY_PREFIX) and code in (5, 10):
            raise PoolerError(
                INVALID_PASSWORD,
                f'server_password of user "{creds.user}" is a JWT private key, but the server asked for '
                f"{'md5' if code == 5 else 'SCRAM-SHA-256'} authentication (it must ask for a cleartext password)",
            )
        if code == 5:  # md5 with 4-byte salt
            self.auth_method = "md5"
            salt = body[4:8]
            if creds.password is not None:
                return messages.password_message(md5_response_for_password(creds.password, creds.user, salt) + b"\x00")
            if creds.md5_verifier is not None:
                return messages.password_message(md5_salted_response(creds.md5_verifier, salt) + b"\x00")
            raise self._no_material("md5")
        if code == 10:  # SASL: mechanism list
            mechanisms = parse_sasl_mechanisms(body[4:])
            if MECHANISM not in mechanisms:
                raise PoolerError(FEATURE_NOT_SUPPORTED, "server offered no supported SASL mechanism")
            binding = self._channel_binding
            if creds.password is not None:
                self._scram = ScramClient(password=creds.password, channel_binding=binding)
            elif creds.scram_client_key is not None:
                self._scram = ScramClient(client_key=creds.scram_client_key, channel_binding=binding)
            else:
                raise self._no_material("SCRAM-SHA-256")
            initial = self._scram.initial_response(mechanisms)
            self.auth_method = self._scram.mechanism
            return messages.password_message(initial)
        if code == 11:
            if self._scram is None:
                raise ProtocolViolation("SASLContinue without SASL start")
            return messages.password_message(self._scram.handle_server_first(body[4:]))
        if code == 12:
            if self._scram is None:
                raise ProtocolViolation("SASLFinal without SASL start")
            self._scram.handle_server_final(body[4:])
            return b""
        raise PoolerError(
            FEATURE_NOT_SUPPORTED, f"authentication method {code} requested by the server is not supported"
        )

    def _backend_token(self) -> bytes:
        path = (self._creds.password or "").removeprefix(JWT_PRIVATE_KEY_PREFIX)
        try:
            return mint_backend_token(path, self._creds.user).encode()
        except JwtKeyError as err:
            raise PoolerError(INVALID_PASSWORD, f"cannot sign a JWT for the server: {err}") from None

    def _no_material(self, method: str) -> PoolerError:
        return PoolerError(
            INVALID_PASSWORD,
            f'server requested {method} authentication for user "{self._creds.user}" but pg_doorman has no '
            "credentials for it (set server_password, or a password hash that PostgreSQL also stores; with a "
            "SCRAM verifier a client must log in first)",
        )
