"""JWT authentication through pg_doorman with real clients, both directions.

Client side: a user whose password is ``jwt-pkey-fpath:<public key>`` is asked for a cleartext password
(AuthenticationCleartextPassword, code 3) and logs in with an RS256 token whose ``preferred_username`` is its
name; every other token (expired, not yet valid, for another user, signed by another key, ``alg: none``, HS256
"signed" with the public key as the HMAC secret, without ``exp``, garbage, empty, oversized) is refused with 28P01
(08P01 for a message too large to read). Server side: ``server_password: jwt-priv-key-fpath:<private key>``
makes pg_doorman answer a cleartext request of the server with a fresh token, checked here by a small
authenticating proxy in front of the real PostgreSQL.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from wire_client import RawWire, error_map, frame, startup_packet

from pg_doorman.devcluster import TempPostgres

StartDoorman = Callable[..., Any]
PoolConfig = Callable[..., dict[str, Any]]

HOST = "127.0.0.1"
USER = "svc-billing"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Keys:
    """An RSA key pair written to PEM files."""

    def __init__(self, directory: Path, name: str) -> None:
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.public_pem = self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.public_path = directory / f"{name}.pub.pem"
        self.private_path = directory / f"{name}.pem"
        self.public_path.write_bytes(self.public_pem)
        self.private_path.write_bytes(
            self.private.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )

    def token(self, **claims: Any) -> str:
        now = int(time.time())
        body: dict[str, Any] = {"preferred_username": USER, "iat": now, "exp": now + 300}
        body.update(claims)
        return jwt.encode({k: v for k, v in body.items() if v is not None}, self.private, algorithm="RS256")


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path, "issuer")


@pytest.fixture
def jwt_doorman(doorman: StartDoorman, pg_trust: TempPostgres, pool_config: PoolConfig, keys: Keys) -> Any:
    user = {"username": USER, "password": f"jwt-pkey-fpath:{keys.public_path}", "server_username": "app"}
    return doorman(pool_config(pg_trust, users=[user, "app"], pool_size=2))


def _connect(proc: Any, token: str) -> psycopg.Connection[Any]:
    return psycopg.connect(
        host=proc.host, port=proc.port, user=USER, dbname="appdb", password=token, connect_timeout=10, autocommit=True
    )


def cleartext_login(port: int, user: str, password: str, database: str = "appdb") -> dict[str, str]:
    """Log in on the wire answering AuthenticationCleartextPassword with ``password``: the ErrorResponse's
    fields, or {} when the login succeeded (AuthenticationOk)."""
    wire = RawWire(port, 15.0, HOST)
    try:
        wire.send(startup_packet({"user": user, "database": database}))
        kind, body = wire.read_message()
        assert kind == b"R" and struct.unpack("!i", body[:4])[0] == 3, (kind, body)
        wire.send(frame(b"p", password.encode() + b"\x00"))
        kind, body = wire.read_message()
        if kind == b"E":
            return error_map(body)
        assert kind == b"R" and body == b"\x00\x00\x00\x00", (kind, body)
        return {}
    finally:
        wire.sock.close()


class Refusal:
    def __init__(self, fields: dict[str, str]) -> None:
        self.sqlstate = fields.get("C")
        self.message = fields.get("M", "")


def _refused(proc: Any, token: str) -> Refusal:
    fields = cleartext_login(proc.port, USER, token)
    assert fields, "the login succeeded"
    return Refusal(fields)


def test_valid_token_logs_in_as_the_server_user(jwt_doorman: Any, keys: Keys) -> None:
    with _connect(jwt_doorman, keys.token()) as conn:
        assert conn.execute("select current_user, 40 + 2").fetchone() == ("app", 42)
    # the same token again (a pool of clients sharing one token) and a second fresh one
    with _connect(jwt_doorman, keys.token()) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_server_asks_for_a_cleartext_password(jwt_doorman: Any) -> None:
    wire = RawWire(jwt_doorman.port, 5.0, HOST)
    wire.send(startup_packet({"user": USER, "database": "appdb"}))
    kind, body = wire.read_message()
    assert kind == b"R" and struct.unpack("!i", body[:4])[0] == 3


@pytest.mark.parametrize(
    ("why", "make"),
    [
        ("expired", lambda k: k.token(exp=int(time.time()) - 5)),
        ("not yet valid", lambda k: k.token(nbf=int(time.time()) + 300)),
        ("other user", lambda k: k.token(preferred_username="svc-other")),
        ("no user claim", lambda k: k.token(preferred_username=None)),
        ("user claim not a string", lambda k: k.token(preferred_username=[USER])),
        ("no exp", lambda k: k.token(exp=None)),
        ("exp not a number", lambda k: k.token(exp="tomorrow")),
        ("garbage", lambda k: "not-a-jwt"),
        ("three garbage parts", lambda k: "a.b.c"),
        ("signature cut", lambda k: k.token()[:-10]),
    ],
)
def test_bad_tokens_are_refused(jwt_doorman: Any, keys: Keys, why: str, make: Callable[[Keys], str]) -> None:
    err = _refused(jwt_doorman, make(keys))
    assert err.sqlstate == "28P01", why
    assert err.message == f'password authentication failed for user "{USER}"'
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):  # a real client too
        _connect(jwt_doorman, make(keys)).close()


def test_token_signed_by_another_key_is_refused(jwt_doorman: Any, tmp_path: Path) -> None:
    other = Keys(tmp_path, "intruder")
    assert _refused(jwt_doorman, other.token()).sqlstate == "28P01"
    jwt_doorman.wait_for_log("signature does not match")


def test_alg_none_is_refused(jwt_doorman: Any) -> None:
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    claims = _b64(json.dumps({"preferred_username": USER, "exp": int(time.time()) + 300}).encode())
    assert _refused(jwt_doorman, f"{header}.{claims}.").sqlstate == "28P01"


def test_hs256_with_the_public_key_as_secret_is_refused(jwt_doorman: Any, keys: Keys) -> None:
    """Algorithm confusion: a verifier that let the token choose HS256 would check it with the public key."""
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = _b64(json.dumps({"preferred_username": USER, "exp": int(time.time()) + 300}).encode())
    signing_input = f"{header}.{claims}".encode()
    signature = _b64(hmac.new(keys.public_pem, signing_input, hashlib.sha256).digest())
    assert _refused(jwt_doorman, f"{header}.{claims}.{signature}").sqlstate == "28P01"
    jwt_doorman.wait_for_log("not signed RS256")


def test_empty_password_and_oversized_token(jwt_doorman: Any) -> None:
    wire = RawWire(jwt_doorman.port, 5.0, HOST)
    wire.send(startup_packet({"user": USER, "database": "appdb"}))
    wire.read_message()
    wire.send(frame(b"p", b"\x00"))
    kind, body = wire.read_message()
    assert kind == b"E" and error_map(body)["C"] == "28P01"
    wire = RawWire(jwt_doorman.port, 5.0, HOST)
    wire.send(startup_packet({"user": USER, "database": "appdb"}))
    wire.read_message()
    wire.send(b"p" + struct.pack("!i", 1_000_004))  # only the header: refused from it
    kind, body = wire.read_message()
    assert kind == b"E" and error_map(body)["C"] == "08P01"


def test_malformed_password_message_and_client_leaving(jwt_doorman: Any, keys: Keys) -> None:
    wire = RawWire(jwt_doorman.port, 5.0, HOST)
    wire.send(startup_packet({"user": USER, "database": "appdb"}))
    wire.read_message()
    wire.send(frame(b"p", b"abc\x00def\x00"))  # two strings
    kind, body = wire.read_message()
    assert kind == b"E" and error_map(body)["C"] == "08P01"
    for _ in range(5):  # leave right after the request, and halfway through the token
        wire = RawWire(jwt_doorman.port, 5.0, HOST)
        wire.send(startup_packet({"user": USER, "database": "appdb"}))
        wire.read_message()
        token = keys.token().encode() + b"\x00"
        wire.send(b"p" + struct.pack("!i", len(token) + 4) + token[:20])
        wire.sock.close()
    with _connect(jwt_doorman, keys.token()) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_token_of_a_user_in_an_unknown_database_is_refused_like_a_bad_one(jwt_doorman: Any, keys: Keys) -> None:
    assert cleartext_login(jwt_doorman.port, USER, "x", "nodb")["C"] == "28P01"
    # only a good token learns that the database does not exist, as in PostgreSQL
    assert cleartext_login(jwt_doorman.port, USER, keys.token(), "nodb")["C"] == "3D000"


def test_rotating_the_key_file_takes_effect_without_reload(jwt_doorman: Any, keys: Keys, tmp_path: Path) -> None:
    new = Keys(tmp_path, "rotated")
    old_token = keys.token()
    keys.public_path.write_bytes(new.public_pem)
    assert _refused(jwt_doorman, old_token).sqlstate == "28P01"
    with _connect(jwt_doorman, new.token()) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_missing_or_bad_key_file_fails_the_config_check(doorman: StartDoorman, pg_trust: TempPostgres,
                                                        pool_config: PoolConfig, tmp_path: Path) -> None:  # fmt: skip
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n")
    for path, needle in ((tmp_path / "missing.pem", "cannot read"), (bad, "not a PEM public key")):
        user = {"username": USER, "password": f"jwt-pkey-fpath:{path}", "server_username": "app"}
        proc = doorman(pool_config(pg_trust, users=[user]), wait=False)
        assert proc.wait(30) != 0
        assert needle in proc.log_text()


# ------------------------------------------------------------------------ server side


class JwtCheckingProxy:
    """A PostgreSQL front that asks for a cleartext password, checks it as an RS256 JWT with ``public_pem``, and
    then relays the connection to the real server (which trusts). Records every token's claims."""

    def __init__(self, upstream_port: int, public_pem: bytes) -> None:
        self.upstream_port = upstream_port
        self.public_pem = public_pem
        self.claims: list[dict[str, Any]] = []
        self.refusals: list[str] = []
        self.listener = socket.create_server((HOST, 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    @staticmethod
    def _read_exact(sock: socket.socket, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    def _serve(self, client: socket.socket) -> None:
        with client:
            try:
                length = struct.unpack("!i", self._read_exact(client, 4))[0]
                startup = struct.pack("!i", length) + self._read_exact(client, length - 4)
                client.sendall(b"R" + struct.pack("!ii", 8, 3))
                kind = self._read_exact(client, 1)
                size = struct.unpack("!i", self._read_exact(client, 4))[0]
                token = self._read_exact(client, size - 4).rstrip(b"\x00").decode()
                assert kind == b"p"
                try:
                    self.claims.append(jwt.decode(token, self.public_pem, algorithms=["RS256"]))
                except jwt.InvalidTokenError as err:
                    self.refusals.append(str(err))
                    body = b"SFATAL\x00C28P01\x00Mbad token\x00\x00"
                    client.sendall(b"E" + struct.pack("!i", len(body) + 4) + body)
                    return
                upstream = socket.create_connection((HOST, self.upstream_port))
            except (ConnectionError, OSError, AssertionError):
                return
            with upstream:
                upstream.sendall(startup)
                threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()
                self._pipe(client, upstream)

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            try:
                sink.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def proxy_for(pg_trust: TempPostgres) -> Iterator[Callable[[bytes], JwtCheckingProxy]]:
    proxies: list[JwtCheckingProxy] = []

    def make(public_pem: bytes) -> JwtCheckingProxy:
        proxy = JwtCheckingProxy(pg_trust.port, public_pem)
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()


def _backend_jwt_config(proxy: JwtCheckingProxy, private_path: Path) -> dict[str, Any]:
    user = {
        "username": "app",
        "password": "app_pass",
        "server_username": "app",
        "server_password": f"jwt-priv-key-fpath:{private_path}",
        "pool_size": 2,
    }
    return {"pools": {"appdb": {"server_host": HOST, "server_port": proxy.port, "users": [user]}}}


def test_backend_jwt_is_minted_for_the_server(doorman: StartDoorman, keys: Keys,
                                              proxy_for: Callable[[bytes], JwtCheckingProxy]) -> None:  # fmt: skip
    proxy = proxy_for(keys.public_pem)
    proc = doorman(_backend_jwt_config(proxy, keys.private_path))
    before = int(time.time())
    with psycopg.connect(proc.dsn(), connect_timeout=10, autocommit=True) as conn:
        assert conn.execute("select current_user").fetchone() == ("app",)
    assert proxy.claims, proxy.refusals
    claims = proxy.claims[0]
    assert claims["preferred_username"] == "app"
    assert before + 115 <= claims["exp"] <= int(time.time()) + 121


def test_backend_jwt_signed_by_the_wrong_key_fails_the_client_login(
    doorman: StartDoorman, keys: Keys, tmp_path: Path, proxy_for: Callable[[bytes], JwtCheckingProxy]
) -> None:
    proxy = proxy_for(Keys(tmp_path, "server-expects").public_pem)
    proc = doorman(_backend_jwt_config(proxy, keys.private_path))
    with pytest.raises(psycopg.OperationalError, match="bad token"):
        psycopg.connect(proc.dsn(), connect_timeout=10)
    assert proxy.refusals and not proxy.claims
