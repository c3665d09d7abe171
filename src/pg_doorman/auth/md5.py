"""PostgreSQL MD5 password authentication math (pure functions, no I/O).

``pg_authid.rolpassword`` for an MD5 role holds ``"md5" + hex(md5(password + username))``. On login the
server sends a 4-byte salt (AuthenticationMD5Password) and the client answers with a PasswordMessage
carrying ``"md5" + hex(md5(hex32 + salt))``, where ``hex32`` is the 32 hex digits of that verifier.

Because the response only needs ``hex32``, the pooler can both check a client's answer and answer
PostgreSQL itself knowing just the stored verifier ("pass-the-hash"); see the protocol docs,
https://www.postgresql.org/docs/current/auth-password.html.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

__all__ = [
    "MD5_SALT_LEN",
    "is_md5_verifier",
    "md5_response_for_password",
    "md5_salted_response",
    "md5_verifier",
    "new_md5_salt",
    "verify_md5_response",
]

MD5_SALT_LEN = 4
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def _md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def md5_verifier(password: str, username: str) -> str:
    """The verifier PostgreSQL stores for ``password`` of role ``username``: ``"md5" + 32 hex digits``."""
    return "md5" + _md5_hex(password.encode("utf-8") + username.encode("utf-8"))


def is_md5_verifier(text: str) -> bool:
    """True if ``text`` looks like a stored MD5 verifier (``md5`` followed by exactly 32 hex digits)."""
    return len(text) == 35 and text.startswith("md5") and all(c in _HEX_DIGITS for c in text[3:])


def _hex32(verifier_or_hex: str) -> bytes:
    """The 32 hex digits of an ``md5…`` verifier or a bare digest, lower-cased as PostgreSQL writes them."""
    digits = verifier_or_hex
    if len(digits) == 35 and digits.startswith("md5"):
        digits = digits[3:]
    if len(digits) != 32 or not all(c in _HEX_DIGITS for c in digits):
        raise ValueError("not an MD5 verifier: expected 'md5' followed by 32 hex digits")
    return digits.lower().encode("ascii")


def new_md5_salt() -> bytes:
    """A fresh random salt for AuthenticationMD5Password."""
    return secrets.token_bytes(MD5_SALT_LEN)


def md5_salted_response(verifier_or_hex: str, salt: bytes) -> bytes:
    """``b"md5" + hex(md5(hex32 + salt))``: the PasswordMessage payload without its trailing NUL.

    Accepts ``"md5<32 hex>"`` or the bare 32 hex digits; raises ValueError on anything else or on a salt
    that is not 4 bytes.
    """
    if len(salt) != MD5_SALT_LEN:
        raise ValueError(f"MD5 salt must be {MD5_SALT_LEN} bytes, got {len(salt)}")
    return b"md5" + _md5_hex(_hex32(verifier_or_hex) + bytes(salt)).encode("ascii")


def md5_response_for_password(password: str, username: str, salt: bytes) -> bytes:
    """What a client knowing the plaintext password answers to an MD5 challenge (no trailing NUL)."""
    return md5_salted_response(md5_verifier(password, username), salt)


def verify_md5_response(verifier: str, salt: bytes, response: bytes) -> bool:
    """Check a client's PasswordMessage payload against the stored ``verifier`` and the salt we sent.

    ``response`` may carry the PasswordMessage's trailing NUL or not. The comparison is constant-time.
    For a plaintext configured password pass ``md5_verifier(password, username)`` as ``verifier``.
    Raises ValueError if ``verifier`` is not an MD5 verifier (the caller picks the method by verifier kind).
    """
    expected = md5_salted_response(verifier, salt)
    body = bytes(response)
    if body.endswith(b"\x00"):
        body = body[:-1]
    return hmac.compare_digest(expected, body)
