"""JWT authentication, both ways: a client's token checked against an RSA public key, a token minted for PostgreSQL.

Client side: a user whose password is ``jwt-pkey-fpath:<path to an RSA public key in PEM>`` is asked for a
cleartext password and sends a JWT. The token passes when it is signed RS256 by the matching private key (no other
algorithm: ``none`` and HS256 are refused before any key is used, so a token "signed" with the public key as an
HMAC secret gets nowhere), carries ``exp`` and has not expired, is not used before its ``nbf``, and its
``preferred_username`` is exactly the user name the client logs in as. No leeway, as in the original pg_doorman.

Backend side: a ``server_password`` of ``jwt-priv-key-fpath:<path to an RSA private key>`` makes pg_doorman answer
PostgreSQL's cleartext password request with a fresh RS256 token ``{"preferred_username": server_username,
"exp": now + 120}`` (for PostgreSQL-side JWT authentication plugins), as the original does.

Keys are read from disk once and kept while the file is unchanged (path, size and modification time): replacing
the file rotates the key for the next login, without a reload. Checking a token is a few dozen microseconds of
CPU, so it runs on the event loop.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass
from typing import Any

import jwt as pyjwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key

__all__ = [
    "BACKEND_TOKEN_LIFETIME",
    "JWT_PRIVATE_KEY_PREFIX",
    "JWT_PUBLIC_KEY_PREFIX",
    "JwtCheck",
    "JwtKeyError",
    "load_private_key",
    "load_public_key",
    "mint_backend_token",
    "token_problem",
]

JWT_PUBLIC_KEY_PREFIX = "jwt-pkey-fpath:"
JWT_PRIVATE_KEY_PREFIX = "jwt-priv-key-fpath:"
BACKEND_TOKEN_LIFETIME = 120  # seconds, as the original
_ALGORITHMS = ["RS256"]
_MAX_KEY_FILE = 1 << 20  # a PEM key is a few kB; refuse to read anything large


class JwtKeyError(ValueError):
    """A key file that cannot be used: missing, unreadable, not PEM, or not RSA."""


def _read(path: str) -> tuple[bytes, tuple[int, int, int]]:
    try:
        with open(path, "rb") as file:
            stat = os.fstat(file.fileno())
            if stat.st_size > _MAX_KEY_FILE:
                raise JwtKeyError(f"{path}: too large for a PEM key ({stat.st_size} bytes)")
            return file.read(_MAX_KEY_FILE + 1), (stat.st_ino, stat.st_size, stat.st_mtime_ns)
    except OSError as err:
        raise JwtKeyError(f"cannot read {path}: {err.strerror or err}") from None


def _version(path: str) -> tuple[int, int, int]:
    try:
        stat = os.stat(path)
    except OSError as err:
        raise JwtKeyError(f"cannot read {path}: {err.strerror or err}") from None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


@functools.lru_cache(maxsize=64)
def _public_key(path: str, version: tuple[int, int, int]) -> RSAPublicKey:
    data, _ = _read(path)
    try:
        key = load_pem_public_key(data)
    except ValueError:
        raise JwtKeyError(f"{path}: not a PEM public key") from None
    if not isinstance(key, RSAPublicKey):
        raise JwtKeyError(f"{path}: not an RSA public key (JWT authentication uses RS256)")
    return key


@functools.lru_cache(maxsize=64)
def _private_key(path: str, version: tuple[int, int, int]) -> RSAPrivateKey:
    data, _ = _read(path)
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise JwtKeyError(f"{path}: not an unencrypted PEM private key") from None
    if not isinstance(key, RSAPrivateKey):
        raise JwtKeyError(f"{path}: not an RSA private key (tokens are signed RS256)")
    return key


def load_public_key(path: str) -> RSAPublicKey:
    """The RSA public key in ``path`` (cached while the file is unchanged); raises JwtKeyError."""
    return _public_key(path, _version(path))


def load_private_key(path: str) -> RSAPrivateKey:
    """The RSA private key in ``path`` (cached while the file is unchanged); raises JwtKeyError."""
    return _private_key(path, _version(path))


def token_problem(token: str, user: str, key: RSAPublicKey) -> str | None:
    """Why ``token`` does not log ``user`` in, or None when it does. The reason is for the log only."""
    try:
        claims: dict[str, Any] = pyjwt.decode(
            token,
            key,
            algorithms=_ALGORITHMS,
            options={"require": ["exp"], "verify_iat": False, "verify_aud": False, "verify_iss": False},
            leeway=0,
        )
    except pyjwt.ExpiredSignatureError:
        return "JWT has expired"
    except pyjwt.ImmatureSignatureError:
        return "JWT is not valid yet (nbf)"
    except pyjwt.InvalidAlgorithmError:
        return "JWT is not signed RS256"
    except pyjwt.InvalidSignatureError:
        return "JWT signature does not match the user's public key"
    except pyjwt.MissingRequiredClaimError as err:
        return f"JWT has no {err.claim!r} claim"
    except pyjwt.DecodeError as err:
        return f"not a valid JWT ({err})"
    except pyjwt.InvalidTokenError as err:
        return f"JWT refused ({err})"
    name = claims.get("preferred_username")
    if not isinstance(name, str):
        return "JWT has no preferred_username claim"
    if name != user:
        return f'JWT is for "{name}", not for this user'
    return None


@dataclass(frozen=True, slots=True)
class JwtCheck:
    """The password check of a ``jwt-pkey-fpath:`` user: the password is a JWT (see the module docstring)."""

    public_key_path: str
    method = "jwt"
    blocking = False  # RSA verification is quick

    def check(self, user: str, password: str) -> str | None:
        try:
            key = load_public_key(self.public_key_path)
        except JwtKeyError as err:
            return f"JWT public key unusable: {err}"
        return token_problem(password, user, key)


def mint_backend_token(private_key_path: str, user: str, *, now: float | None = None) -> str:
    """A fresh RS256 token for PostgreSQL's cleartext password request; raises JwtKeyError."""
    key = load_private_key(private_key_path)
    issued = int(time.time() if now is None else now)
    return pyjwt.encode({"preferred_username": user, "exp": issued + BACKEND_TOKEN_LIFETIME}, key, algorithm="RS256")
