"""SCRAM-SHA-256-PLUS without sockets: the RFC 5929 ``tls-server-end-point`` hash of certificates made here, every
gs2 header case of PostgreSQL's auth-scram.c fed as bytes, ClientLogin over TLS, and ServerLogin choosing PLUS."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import struct
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from cryptography.x509.oid import NameOID

from pg_doorman.auth.backend import ServerCredentials, ServerLogin
from pg_doorman.auth.client_login import ClientLogin, LoginFailed
from pg_doorman.auth.policy import choose_method
from pg_doorman.auth.scram import AuthError, ScramClient, ScramServer, ScramVerifier, make_scram_verifier
from pg_doorman.protocol.errors import FEATURE_NOT_SUPPORTED, INVALID_AUTHORIZATION, PROTOCOL_VIOLATION
from pg_doorman.tls import build_client_tls, certificate_file_end_point_hash, end_point_hash

PLUS = b"SCRAM-SHA-256-PLUS"
PLAIN = b"SCRAM-SHA-256"
BINDING = hashlib.sha256(b"our certificate").digest()
P = 0x70


# ---------------------------------------------------------------- certificates and their hash

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def make_certificate(
    key: PrivateKey, algorithm: hashes.HashAlgorithm | None, cn: str = "localhost"
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    return builder.sign(key, algorithm)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def test_rsa_sha256_certificate_hashes_with_sha256(rsa_key: rsa.RSAPrivateKey) -> None:
    der = make_certificate(rsa_key, hashes.SHA256()).public_bytes(Encoding.DER)
    assert end_point_hash(der) == hashlib.sha256(der).digest()


def test_ecdsa_sha384_certificate_hashes_with_sha384() -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    der = make_certificate(key, hashes.SHA384()).public_bytes(Encoding.DER)
    value = end_point_hash(der)
    assert value == hashlib.sha384(der).digest()
    assert value is not None and len(value) == 48


def test_rsa_sha512_certificate_hashes_with_sha512(rsa_key: rsa.RSAPrivateKey) -> None:
    der = make_certificate(rsa_key, hashes.SHA512()).public_bytes(Encoding.DER)
    assert end_point_hash(der) == hashlib.sha512(der).digest()


# DER of the OIDs sha256WithRSAEncryption (1.2.840.113549.1.1.11), sha1WithRSAEncryption (...1.5) and
# md5WithRSAEncryption (...1.4): the same length, so a certificate can be relabelled byte for byte.
RSA_SHA256_OID = bytes.fromhex("06092a864886f70d01010b")
RSA_SHA1_OID = bytes.fromhex("06092a864886f70d010105")
RSA_MD5_OID = bytes.fromhex("06092a864886f70d010104")


@pytest.mark.parametrize(("oid", "name"), [(RSA_SHA1_OID, "sha1"), (RSA_MD5_OID, "md5")])
def test_sha1_and_md5_signatures_are_hashed_with_sha256(rsa_key: rsa.RSAPrivateKey, oid: bytes, name: str) -> None:
    """RFC 5929 section 4.1: MD5 and SHA-1 signatures are replaced by SHA-256. (OpenSSL 3 no longer signs with
    them, so a SHA-256 certificate is relabelled: the hash reads the algorithm, it does not check the signature.)"""
    original = make_certificate(rsa_key, hashes.SHA256()).public_bytes(Encoding.DER)
    assert original.count(RSA_SHA256_OID) == 2  # in the signed part and in the outer signatureAlgorithm
    der = original.replace(RSA_SHA256_OID, oid)
    assert x509.load_der_x509_certificate(der).signature_hash_algorithm.name == name  # type: ignore[union-attr]
    assert end_point_hash(der) == hashlib.sha256(der).digest()
    assert end_point_hash(der) != hashlib.new(name, der).digest()


def test_ed25519_certificate_has_no_end_point_hash() -> None:
    """The signature names no hash: RFC 5929 defines no binding, so PLUS is not offered with such a certificate."""
    der = make_certificate(ed25519.Ed25519PrivateKey.generate(), None).public_bytes(Encoding.DER)
    assert end_point_hash(der) is None


def test_garbage_is_no_certificate() -> None:
    assert end_point_hash(b"\x30\x03\x02\x01\x00") is None
    assert end_point_hash(b"") is None


def write_pem(path: Path, *certs: x509.Certificate) -> str:
    path.write_bytes(b"".join(c.public_bytes(Encoding.PEM) for c in certs))
    return str(path)


def test_certificate_file_hash_is_of_the_leaf(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    leaf = make_certificate(rsa_key, hashes.SHA256(), "leaf")
    issuer = make_certificate(ec.generate_private_key(ec.SECP384R1()), hashes.SHA384(), "issuer")
    path = write_pem(tmp_path / "chain.pem", leaf, issuer)
    assert certificate_file_end_point_hash(path) == hashlib.sha256(leaf.public_bytes(Encoding.DER)).digest()
    (tmp_path / "junk.pem").write_text("not a certificate")
    assert certificate_file_end_point_hash(str(tmp_path / "junk.pem")) is None
    assert certificate_file_end_point_hash(str(tmp_path / "missing.pem")) is None


def test_client_tls_setup_carries_the_hash_once(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    cert = make_certificate(key, hashes.SHA384())
    cert_path = write_pem(tmp_path / "server.crt", cert)
    key_path = tmp_path / "server.key"
    key_path.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    setup = build_client_tls("allow", cert_path, str(key_path), None)
    assert setup.context is not None
    assert setup.end_point_hash == hashlib.sha384(cert.public_bytes(Encoding.DER)).digest()
    off = build_client_tls("disable", cert_path, str(key_path), None)
    assert off.context is None and off.end_point_hash is None


# ---------------------------------------------------------------- the server side of the exchange, as bytes


def initial(client_first: bytes, mechanism: bytes = PLUS) -> bytes:
    return mechanism + b"\x00" + struct.pack("!i", len(client_first)) + client_first


def verifier(password: str = "pw") -> ScramVerifier:
    return ScramVerifier.from_password(password, b"saltsaltsaltsalt", 4)


def client_final(
    server: ScramServer, gs2: bytes, cbind: bytes, password: str = "pw", *, c: bytes | None = None
) -> bytes:
    """Answer ``server`` (after an ``initial(gs2 + b"n=,r=abc")``) with a correct proof for ``c=``."""
    bare = b"n=,r=abc"
    server_first = server.handle_client_first(initial(gs2 + bare, PLUS if gs2.startswith(b"p") else PLAIN))
    nonce = server_first.split(b",")[0][2:]
    without_proof = b"c=" + (c if c is not None else base64.b64encode(gs2 + cbind)) + b",r=" + nonce
    auth_message = bare + b"," + server_first + b"," + without_proof
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), b"saltsaltsaltsalt", 4)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    signature = hmac.new(hashlib.sha256(client_key).digest(), auth_message, "sha256").digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    return without_proof + b",p=" + base64.b64encode(proof)


def test_plus_with_the_right_binding_authenticates() -> None:
    server = ScramServer(verifier(), channel_binding=BINDING)
    final = client_final(server, b"p=tls-server-end-point,,", BINDING)
    assert server.handle_client_final(final).startswith(b"v=")
    assert server.authenticated and server.mechanism == "SCRAM-SHA-256-PLUS"


@pytest.mark.parametrize(
    "c",
    [
        base64.b64encode(b"p=tls-server-end-point,," + hashlib.sha256(b"a man in the middle").digest()),
        base64.b64encode(b"p=tls-server-end-point,,"),  # the header without the data
        base64.b64encode(b"p=tls-server-end-point,," + BINDING + b"x"),
        b"biws",
        b"eSws",
        b"",
        b"!!notbase64!!",
    ],
)
def test_plus_with_wrong_binding_data_fails_28000(c: bytes) -> None:
    server = ScramServer(verifier(), channel_binding=BINDING)
    final = client_final(server, b"p=tls-server-end-point,,", BINDING, c=c)
    with pytest.raises(AuthError) as err:
        server.handle_client_final(final)
    assert (err.value.sqlstate, err.value.message) == (INVALID_AUTHORIZATION, "SCRAM channel binding check failed")
    assert not server.authenticated


def test_wrong_password_with_plus_is_still_28p01() -> None:
    server = ScramServer(verifier("right"), channel_binding=BINDING)
    final = client_final(server, b"p=tls-server-end-point,,", BINDING, password="wrong")
    with pytest.raises(AuthError) as err:
        server.handle_client_final(final)
    assert err.value.sqlstate == "28P01"


@pytest.mark.parametrize("flag", [b"n,,", b"y,,"])
def test_plus_without_binding_data_is_malformed(flag: bytes) -> None:
    server = ScramServer(verifier(), channel_binding=BINDING)
    with pytest.raises(AuthError) as err:
        server.handle_client_first(initial(flag + b"n=,r=abc", PLUS))
    assert (err.value.sqlstate, err.value.message) == (PROTOCOL_VIOLATION, "malformed SCRAM message")
    assert err.value.detail == (
        "The client selected SCRAM-SHA-256-PLUS, but the SCRAM message does not include channel binding data."
    )


def test_y_over_tls_is_a_downgrade() -> None:
    server = ScramServer(verifier(), channel_binding=BINDING)
    with pytest.raises(AuthError) as err:
        server.handle_client_first(initial(b"y,,n=,r=abc", PLAIN))
    assert (err.value.sqlstate, err.value.message) == (INVALID_AUTHORIZATION, "SCRAM channel binding negotiation error")
    assert err.value.detail is not None and "thinks the server does not" in err.value.detail


def test_y_and_n_on_a_plain_connection_authenticate() -> None:
    for flag in (b"y,,", b"n,,"):
        server = ScramServer(verifier())
        assert server.handle_client_final(client_final(server, flag, b"")).startswith(b"v=")


def test_n_over_tls_is_a_client_that_chose_not_to_bind() -> None:
    """libpq's channel_binding=disable over TLS: plain SCRAM, accepted as PostgreSQL accepts it."""
    server = ScramServer(verifier(), channel_binding=BINDING)
    assert server.handle_client_final(client_final(server, b"n,,", b"")).startswith(b"v=")
    assert server.mechanism == "SCRAM-SHA-256"


@pytest.mark.parametrize("flag", [b"n,,", b"y,,"])
def test_c_must_repeat_the_flag_without_binding(flag: bytes) -> None:
    other = b"eSws" if flag == b"n,," else b"biws"
    server = ScramServer(verifier())
    with pytest.raises(AuthError) as err:
        server.handle_client_final(client_final(server, flag, b"", c=other))
    assert err.value.sqlstate == PROTOCOL_VIOLATION
    assert err.value.message == "unexpected SCRAM channel-binding attribute in client-final-message"


def test_p_with_the_plain_mechanism_is_malformed() -> None:
    server = ScramServer(verifier(), channel_binding=BINDING)
    with pytest.raises(AuthError) as err:
        server.handle_client_first(initial(b"p=tls-server-end-point,,n=,r=abc", PLAIN))
    assert err.value.sqlstate == PROTOCOL_VIOLATION
    assert err.value.detail is not None and "without channel binding" in err.value.detail


def test_plus_on_a_plain_connection_is_an_invalid_mechanism() -> None:
    server = ScramServer(verifier())  # no binding data: PLUS was not offered
    with pytest.raises(AuthError) as err:
        server.handle_client_first(initial(b"p=tls-server-end-point,,n=,r=abc", PLUS))
    assert err.value.sqlstate == PROTOCOL_VIOLATION
    assert err.value.message == "client selected an invalid SASL authentication mechanism"


@pytest.mark.parametrize(
    ("client_first", "sqlstate", "message"),
    [
        (b"p=tls-unique,,n=,r=abc", PROTOCOL_VIOLATION, 'unsupported SCRAM channel-binding type "tls-unique"'),
        (b"p=tls-exporter,,n=,r=abc", PROTOCOL_VIOLATION, 'unsupported SCRAM channel-binding type "tls-exporter"'),
        (b"p=\xff\x00bad,,n=,r=abc", PROTOCOL_VIOLATION, 'unsupported SCRAM channel-binding type "??bad"'),
        (b"p=tls-server-end-point,a=someone,n=,r=abc", FEATURE_NOT_SUPPORTED, "client uses authorization identity"),
        (b"p=tls-server-end-point", PROTOCOL_VIOLATION, "malformed SCRAM message"),
        (b"p=tls-server-end-point,", PROTOCOL_VIOLATION, "malformed SCRAM message"),
        (b"p=tls-server-end-point,x,n=,r=abc", PROTOCOL_VIOLATION, "malformed SCRAM message"),
        (b"p,,n=,r=abc", PROTOCOL_VIOLATION, "malformed SCRAM message"),
        (b"p=tls-server-end-point,,n=,r=", PROTOCOL_VIOLATION, "malformed SCRAM message"),
        (b"p=tls-server-end-point,,m=ext,n=,r=abc", FEATURE_NOT_SUPPORTED, "unsupported SCRAM extension"),
        (b"q,,n=,r=abc", PROTOCOL_VIOLATION, "malformed SCRAM message"),
        (b"", PROTOCOL_VIOLATION, "malformed SCRAM message"),
    ],
)
def test_bad_plus_headers_are_refused(client_first: bytes, sqlstate: str, message: str) -> None:
    server = ScramServer(verifier(), channel_binding=BINDING)
    with pytest.raises(AuthError) as err:
        server.handle_client_first(initial(client_first, PLUS))
    assert err.value.sqlstate == sqlstate
    assert message in err.value.message


def test_authzid_is_refused_without_binding_too() -> None:
    server = ScramServer(verifier())
    with pytest.raises(AuthError) as err:
        server.handle_client_first(initial(b"n,a=someone,n=,r=abc", PLAIN))
    assert err.value.sqlstate == FEATURE_NOT_SUPPORTED


# ---------------------------------------------------------------- our ScramClient, both ways


@pytest.mark.parametrize("key_mode", [False, True])
def test_client_binds_when_plus_is_offered(key_mode: bool) -> None:
    """Password login and passthrough (a ClientKey recovered from an earlier PLUS exchange) both bind."""
    server = ScramServer(verifier(), channel_binding=BINDING)
    first = ScramClient(password="pw", channel_binding=BINDING)
    body = first.initial_response(["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"])
    assert body.startswith(PLUS + b"\x00") and b"p=tls-server-end-point,,n=," in body
    final = first.handle_server_first(server.handle_client_first(body))
    assert final.startswith(b"c=" + base64.b64encode(b"p=tls-server-end-point,," + BINDING) + b",r=")
    first.handle_server_final(server.handle_client_final(final))
    assert first.finished and first.mechanism == "SCRAM-SHA-256-PLUS"
    if key_mode:
        again = ScramServer(verifier(), channel_binding=BINDING)
        client = ScramClient(client_key=server.client_key, channel_binding=BINDING)
        body = client.initial_response(["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"])
        client.handle_server_final(
            again.handle_client_final(client.handle_server_first(again.handle_client_first(body)))
        )
        assert again.authenticated and again.mechanism == "SCRAM-SHA-256-PLUS"


def test_client_with_another_certificate_hash_is_refused() -> None:
    """What PostgreSQL sees when a man in the middle shows pg_doorman a certificate of its own."""
    server = ScramServer(verifier(), channel_binding=BINDING)
    client = ScramClient(password="pw", channel_binding=hashlib.sha256(b"mitm").digest())
    body = client.initial_response(["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"])
    final = client.handle_server_first(server.handle_client_first(body))
    with pytest.raises(AuthError) as err:
        server.handle_client_final(final)
    assert err.value.sqlstate == INVALID_AUTHORIZATION


def test_client_says_y_when_plus_is_not_offered_and_n_without_tls() -> None:
    plain_server = ScramServer(verifier())
    client = ScramClient(password="pw", channel_binding=BINDING)
    body = client.initial_response(["SCRAM-SHA-256"])
    assert body.split(b"\x00", 1)[1][4:].startswith(b"y,,")
    final = client.handle_server_first(plain_server.handle_client_first(body))
    assert final.startswith(b"c=eSws,")
    client.handle_server_final(plain_server.handle_client_final(final))
    assert client.mechanism == "SCRAM-SHA-256"
    unbound = ScramClient(password="pw")
    body = unbound.initial_response(["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"])
    assert body.startswith(PLAIN + b"\x00") and body.split(b"\x00", 1)[1][4:].startswith(b"n,,")


# ---------------------------------------------------------------- ClientLogin and ServerLogin


def auth_payload(message: bytes) -> bytes:
    assert message[:1] == b"R"
    return message[9:]


SCRAM_TEXT = make_scram_verifier("scram_pw", salt=b"0123456789abcdef")


def test_client_login_over_tls_offers_plus_and_recovers_the_client_key() -> None:
    login = ClientLogin("u", choose_method("u", SCRAM_TEXT))
    request = login.start(BINDING)
    assert auth_payload(request) == b"SCRAM-SHA-256-PLUS\x00SCRAM-SHA-256\x00\x00"
    client = ScramClient(password="scram_pw", channel_binding=BINDING)
    server_first = login.feed(P, client.initial_response(["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]))
    final = login.feed(P, client.handle_server_first(auth_payload(server_first)))
    client.handle_server_final(auth_payload(final))
    assert login.done and login.client_key is not None
    # The recovered key logs in to PostgreSQL (passthrough) with or without binding there.
    plain = ScramServer(ScramVerifier.from_password("scram_pw", b"0123456789abcdef", 4096))
    backend = ScramClient(client_key=login.client_key)
    body = backend.initial_response()
    backend.handle_server_final(plain.handle_client_final(backend.handle_server_first(plain.handle_client_first(body))))
    assert plain.authenticated


def test_client_login_over_tls_refuses_a_downgrade_and_a_wrong_binding() -> None:
    login = ClientLogin("u", choose_method("u", SCRAM_TEXT))
    login.start(BINDING)
    with pytest.raises(AuthError) as err:
        login.feed(P, ScramClient(password="scram_pw", channel_binding=BINDING).initial_response(["SCRAM-SHA-256"]))
    assert err.value.sqlstate == INVALID_AUTHORIZATION
    login = ClientLogin("u", choose_method("u", SCRAM_TEXT))
    login.start(BINDING)
    client = ScramClient(password="scram_pw", channel_binding=b"\x00" * 32)
    first = login.feed(P, client.initial_response(["SCRAM-SHA-256-PLUS"]))
    with pytest.raises(AuthError) as err:
        login.feed(P, client.handle_server_first(auth_payload(first)))
    assert err.value.sqlstate == INVALID_AUTHORIZATION and not login.done


def test_client_login_plain_connection_lists_only_scram_and_fails_wrong_password() -> None:
    login = ClientLogin("u", choose_method("u", SCRAM_TEXT))
    assert auth_payload(login.start(None)) == b"SCRAM-SHA-256\x00\x00"
    client = ScramClient(password="wrong")
    first = login.feed(P, client.initial_response())
    with pytest.raises(LoginFailed):
        login.feed(P, client.handle_server_first(auth_payload(first)))


def backend_sasl(mechanisms: bytes) -> bytes:
    """The body of an AuthenticationSASL message from PostgreSQL."""
    return struct.pack("!i", 10) + mechanisms


def feed_backend(login: ServerLogin, server: ScramServer, mechanisms: bytes) -> str:
    """Drive ``login`` against ``server`` as PostgreSQL would; returns the gs2 flag pg_doorman sent."""
    login.start()
    initial_message = login.feed(0x52, backend_sasl(mechanisms))
    body = initial_message[5:]
    server_first = server.handle_client_first(body)
    reply = login.feed(0x52, struct.pack("!i", 11) + server_first)
    server_final = server.handle_client_final(reply[5:])
    assert login.feed(0x52, struct.pack("!i", 12) + server_final) == b""
    assert login.feed(0x52, struct.pack("!i", 0)) == b""
    return body.split(b"\x00", 1)[1][4:5].decode()


def test_server_login_uses_plus_when_postgresql_offers_it() -> None:
    login = ServerLogin(ServerCredentials("app", password="pw"), "db", {}, channel_binding=BINDING)
    flag = feed_backend(login, ScramServer(verifier(), channel_binding=BINDING), PLUS + b"\x00" + PLAIN + b"\x00\x00")
    assert (flag, login.auth_method) == ("p", "SCRAM-SHA-256-PLUS")


def test_server_login_passthrough_key_binds_too() -> None:
    source = ScramServer(verifier(), channel_binding=BINDING)  # the client's own PLUS exchange with pg_doorman
    source.handle_client_final(client_final(source, b"p=tls-server-end-point,,", BINDING))
    login = ServerLogin(ServerCredentials("app", scram_client_key=source.client_key), "db", {}, channel_binding=BINDING)
    flag = feed_backend(login, ScramServer(verifier(), channel_binding=BINDING), PLUS + b"\x00" + PLAIN + b"\x00\x00")
    assert (flag, login.auth_method) == ("p", "SCRAM-SHA-256-PLUS")


def test_server_login_without_plus_on_offer_or_without_tls() -> None:
    login = ServerLogin(ServerCredentials("app", password="pw"), "db", {}, channel_binding=BINDING)
    assert feed_backend(login, ScramServer(verifier()), PLAIN + b"\x00\x00") == "y"
    assert login.auth_method == "SCRAM-SHA-256"
    login = ServerLogin(ServerCredentials("app", password="pw"), "db", {})
    assert (
        feed_backend(login, ScramServer(verifier(), channel_binding=BINDING), PLUS + b"\x00" + PLAIN + b"\x00\x00")
        == "n"
    )
    assert login.auth_method == "SCRAM-SHA-256"


def test_server_login_with_a_certificate_mismatch_fails() -> None:
    login = ServerLogin(ServerCredentials("app", password="pw"), "db", {}, channel_binding=b"\x01" * 32)
    with pytest.raises(AuthError) as err:
        feed_backend(login, ScramServer(verifier(), channel_binding=BINDING), PLUS + b"\x00" + PLAIN + b"\x00\x00")
    assert err.value.sqlstate == INVALID_AUTHORIZATION


def test_server_login_refuses_a_truncated_mechanism_list() -> None:
    login = ServerLogin(ServerCredentials("app", password="pw"), "db", {}, channel_binding=BINDING)
    login.start()
    with pytest.raises(AuthError):
        login.feed(0x52, backend_sasl(PLUS + b"\x00" + PLAIN))
