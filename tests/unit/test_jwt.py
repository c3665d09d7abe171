"""JWT checks and minting (auth/jwt.py) with plain values: tokens, keys on disk, no sockets."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pg_doorman.auth.jwt import (
    BACKEND_TOKEN_LIFETIME,
    JwtCheck,
    JwtKeyError,
    load_private_key,
    load_public_key,
    mint_backend_token,
    token_problem,
)

PRIVATE = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem_public(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _pem_private(key: Any) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _token(key: rsa.RSAPrivateKey = PRIVATE, **claims: Any) -> str:
    body: dict[str, Any] = {"preferred_username": "alice", "exp": int(time.time()) + 60}
    body.update(claims)
    return pyjwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm="RS256")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


PUBLIC = PRIVATE.public_key()


def test_a_good_token_passes() -> None:
    assert token_problem(_token(), "alice", PUBLIC) is None
    assert token_problem(_token(nbf=int(time.time()) - 1, iat=int(time.time()) + 30), "alice", PUBLIC) is None


@pytest.mark.parametrize(
    ("make_token", "needle"),
    [
        (lambda: _token(exp=int(time.time()) - 1), "expired"),
        (lambda: _token(nbf=int(time.time()) + 60), "not valid yet"),
        (lambda: _token(exp=None), "no 'exp' claim"),
        (lambda: _token(preferred_username="bob"), 'for "bob"'),
        (lambda: _token(preferred_username="Alice"), 'for "Alice"'),
        (lambda: _token(preferred_username=None), "no preferred_username"),
        (lambda: _token(preferred_username=7), "no preferred_username"),
        (lambda: _token(OTHER), "signature does not match"),
        (lambda: "garbage", "not a valid JWT"),
        (lambda: "", "not a valid JWT"),
        (lambda: "a.b.c", "not a valid JWT"),
        # A cut signature is refused; whether as bad base64 or as a wrong signature depends on its last bytes.
        (lambda: _token()[:-4], ("not a valid JWT", "signature does not match")),
        (lambda: _token()[:-6] + "AAAAAA", "signature does not match"),
    ],
)
def test_bad_tokens(make_token: Callable[[], str], needle: str | tuple[str, ...]) -> None:
    # Made when the test runs, not at collection: a token that expires in 60 s must not expire in the queue.
    problem = token_problem(make_token(), "alice", PUBLIC)
    needles = (needle,) if isinstance(needle, str) else needle
    assert problem is not None and any(text in problem for text in needles), problem


def test_alg_none_and_hs256_confusion_are_refused() -> None:
    claims = _b64(json.dumps({"preferred_username": "alice", "exp": int(time.time()) + 60}).encode())
    none_header = _b64(json.dumps({"alg": "none"}).encode())
    assert token_problem(f"{none_header}.{claims}.", "alice", PUBLIC) == "JWT is not signed RS256"
    hs_header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    signature = _b64(hmac.new(_pem_public(PRIVATE), f"{hs_header}.{claims}".encode(), hashlib.sha256).digest())
    assert token_problem(f"{hs_header}.{claims}.{signature}", "alice", PUBLIC) == "JWT is not signed RS256"
    rs512 = pyjwt.encode({"preferred_username": "alice", "exp": int(time.time()) + 60}, PRIVATE, algorithm="RS512")
    assert token_problem(rs512, "alice", PUBLIC) == "JWT is not signed RS256"


def test_keys_are_loaded_checked_and_reloaded_when_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    path.write_bytes(_pem_public(PRIVATE))
    check = JwtCheck(str(path))
    assert check.check("alice", _token()) is None
    assert load_public_key(str(path)) is load_public_key(str(path))  # cached while unchanged
    replacement = tmp_path / "new.pem"
    replacement.write_bytes(_pem_public(OTHER))
    replacement.replace(path)  # rotate
    assert check.check("alice", _token()) is not None
    assert check.check("alice", _token(OTHER)) is None
    path.unlink()
    problem = check.check("alice", _token(OTHER))
    assert problem is not None and "cannot read" in problem


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"", "not a PEM public key"),
        (b"hello", "not a PEM public key"),
        (b"x" * (2 << 20), "too large"),
    ],
)
def test_unusable_public_key_files(tmp_path: Path, content: bytes, needle: str) -> None:
    path = tmp_path / "k.pem"
    path.write_bytes(content)
    with pytest.raises(JwtKeyError, match=needle):
        load_public_key(str(path))


def test_non_rsa_keys_are_refused(tmp_path: Path) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    public = tmp_path / "ec.pub"
    public.write_bytes(
        ec_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    private = tmp_path / "ec.pem"
    private.write_bytes(_pem_private(ec_key))
    with pytest.raises(JwtKeyError, match="not an RSA public key"):
        load_public_key(str(public))
    with pytest.raises(JwtKeyError, match="not an RSA private key"):
        load_private_key(str(private))
    with pytest.raises(JwtKeyError, match="not an unencrypted PEM private key"):
        load_private_key(str(public))


def test_backend_token(tmp_path: Path) -> None:
    path = tmp_path / "priv.pem"
    path.write_bytes(_pem_private(PRIVATE))
    before = int(time.time())
    token = mint_backend_token(str(path), "app_owner")
    assert pyjwt.get_unverified_header(token)["alg"] == "RS256"
    claims = pyjwt.decode(token, PUBLIC, algorithms=["RS256"])
    assert claims["preferred_username"] == "app_owner"
    assert before + BACKEND_TOKEN_LIFETIME <= claims["exp"] <= int(time.time()) + BACKEND_TOKEN_LIFETIME
    assert token_problem(token, "app_owner", PUBLIC) is None  # pg_doorman in front of pg_doorman
    with pytest.raises(JwtKeyError, match="cannot read"):
        mint_backend_token(str(tmp_path / "missing.pem"), "x")
