"""Password math: MD5, SASLprep, SCRAM-SHA-256 verifiers and both ends of the SCRAM exchange (no sockets)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import struct

import pytest

from pg_doorman.auth.md5 import (
    is_md5_verifier,
    md5_response_for_password,
    md5_salted_response,
    md5_verifier,
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
from pg_doorman.protocol.errors import INVALID_PASSWORD, PROTOCOL_VIOLATION, PoolerError

# Verifiers written by PostgreSQL 15 itself (CREATE ROLE … PASSWORD, then SELECT rolpassword FROM pg_authid).
PG_SCRAM_VERIFIERS = {
    "pencil": "SCRAM-SHA-256$4096:kCGeTiJeptNP8nNNNPabtA==$MtiGqAkwhk52ZH0BUZ/w2M4SNFXVeIQg2QGR8yBIbmY="
    ":WsIJqxQ+g8C/75ymJuNruMMDZyx6rNeuNUlI0TkrTeU=",
    # soft hyphen is "mapped to nothing": hashed as "IX"
    "I\u00adX": "SCRAM-SHA-256$4096:YW0B253IIBg2bt+Nw5mKnw==$k1mQQL7NlGeYA74L3xMysfEGbVi46BtJXBsrsMkBvLY="
    ":HyU3Bxull1EDWUDVq9sQfR4X9NdBepoTH/i7HY09TIY=",
    # ROMAN NUMERAL NINE, NFKC → "IX"
    "\u2168": "SCRAM-SHA-256$4096:qnFzkdZhRFq2S5yduua2Ug==$U0g1qEqxF6xJAPknbiSRJFda1oyQ1UOqpz8K407JHTs="
    ":3EmvanJC8uolWDGufABpZrT4Wj1FfXKGeq9kyrNahz8=",
    # violates the bidi rule: SASLprep fails, PostgreSQL hashes the raw UTF-8 bytes
    "\u0627\u0031": "SCRAM-SHA-256$4096:/MpCag+NoWEhnxTw4J8q7w==$wgjHRZpFG4mFI//5vXyr/Fb973HHjQzEa5Ju7VSlrK0="
    ":dTX1KE/DrlhK38FlPX5zTIRGCvG5mW/4aKlY41yzzRk=",
    # non-ASCII space mapped to U+0020, other non-ASCII kept
    "p\u00e4ss w\u00f6rd\u00a0x": "SCRAM-SHA-256$4096:xhX6EcQM2bOB/AboNmFV3Q==$7E4slEkS7c65/Zx+suAhqZB9B9RE4OQaqGHI"
    "7cjmMgw=:NLLaM9am8Ie1gEW4vio6oswfjzmHbrUJCn+BgB/3lNE=",
}

SALT = b"\x01\x02\x03\x04"


def sasl_initial_response(client_first: bytes, mechanism: bytes = b"SCRAM-SHA-256") -> bytes:
    return mechanism + b"\x00" + struct.pack("!i", len(client_first)) + client_first


def run_exchange(client: ScramClient, server: ScramServer) -> None:
    server_first = server.handle_client_first(client.initial_response())
    server_final = server.handle_client_final(client.handle_server_first(server_first))
    client.handle_server_final(server_final)


def verifier_for(password: str, iterations: int = 4096) -> ScramVerifier:
    return parse_scram_verifier(make_scram_verifier(password, iterations=iterations))


# --- MD5 ---------------------------------------------------------------------------------------------------


def test_md5_verifier_matches_independent_computation() -> None:
    expected = "md5" + hashlib.md5(b"secret" + b"alice").hexdigest()
    assert md5_verifier("secret", "alice") == expected


@pytest.mark.parametrize(
    ("password", "user", "verifier"),
    [
        ("postgres", "postgres", "md53175bce1d3201d16594cebf9d7eb3f9d"),
        ("secret", "mal", "md5336f8198aa4dec49eb104e9d02cbe732"),  # from pg_authid
    ],
)
def test_md5_verifier_known_values(password: str, user: str, verifier: str) -> None:
    assert md5_verifier(password, user) == verifier
    assert is_md5_verifier(verifier)


def test_md5_salted_response_is_md5_of_hex_and_salt() -> None:
    verifier = md5_verifier("secret", "alice")
    expected = b"md5" + hashlib.md5(verifier[3:].encode() + SALT).hexdigest().encode()
    assert md5_salted_response(verifier, SALT) == expected
    assert md5_salted_response(verifier[3:], SALT) == expected  # bare hex accepted
    assert md5_salted_response(verifier[3:].upper(), SALT) == expected  # PostgreSQL hashes lowercase hex
    assert md5_response_for_password("secret", "alice", SALT) == expected
    # what libpq computes: md5(md5(password + user) + salt)
    inner = hashlib.md5(b"secretalice").hexdigest().encode()
    assert expected == b"md5" + hashlib.md5(inner + SALT).hexdigest().encode()


def test_verify_md5_response_accepts_with_and_without_nul() -> None:
    verifier = md5_verifier("secret", "alice")
    response = md5_response_for_password("secret", "alice", SALT)
    assert verify_md5_response(verifier, SALT, response)
    assert verify_md5_response(verifier, SALT, response + b"\x00")
    assert verify_md5_response(verifier, SALT, bytes(memoryview(response + b"\x00")))


def test_verify_md5_response_rejects_wrong_password_salt_or_user() -> None:
    verifier = md5_verifier("secret", "alice")
    assert not verify_md5_response(verifier, SALT, md5_response_for_password("wrong", "alice", SALT))
    assert not verify_md5_response(verifier, SALT, md5_response_for_password("secret", "bob", SALT))
    assert not verify_md5_response(verifier, SALT, md5_response_for_password("secret", "alice", b"\0\0\0\0"))
    assert not verify_md5_response(verifier, SALT, b"")
    assert not verify_md5_response(verifier, SALT, b"md5" + b"0" * 32 + b"\x00")


def test_verify_md5_response_against_plaintext_password() -> None:
    response = md5_response_for_password("s3cr3t", "carol", SALT)
    assert verify_md5_response(md5_verifier("s3cr3t", "carol"), SALT, response + b"\x00")


@pytest.mark.parametrize("bad", ["", "md5", "md5xyz", "md5" + "g" * 32, "SCRAM-SHA-256$4096:x$y:z", "a" * 31])
def test_md5_rejects_non_md5_verifier(bad: str) -> None:
    assert not is_md5_verifier(bad)
    with pytest.raises(ValueError):
        md5_salted_response(bad, SALT)


def test_md5_rejects_wrong_salt_length() -> None:
    with pytest.raises(ValueError):
        md5_salted_response(md5_verifier("a", "b"), b"\x00\x01\x02")


# --- SASLprep ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "prepared"),
    [
        ("I\u00adX", "IX"),  # RFC 4013 §3 examples
        ("user", "user"),
        ("USER", "USER"),
        ("\u00aa", "a"),
        ("\u2168", "IX"),
        ("a\u00a0b\u3000c", "a b c"),  # non-ASCII spaces
        ("\u0627\u0628", "\u0627\u0628"),  # right-to-left only: fine
    ],
)
def test_saslprep_rfc4013_examples(text: str, prepared: str) -> None:
    assert saslprep(text) == prepared


@pytest.mark.parametrize(
    "text",
    [
        "\u00e9\u0007",  # prohibited control character (non-ASCII string, so it is checked)
        "\u0627\u0031",  # RandALCat first but not last
        "\u0627a\u0628",  # mixes RandALCat and LCat
        "\u00ad",  # empty after mapping
        "\u00e9\ue000",  # private use
        "\u00e9\U000e0001",  # tagging character
        "\u00e9\u0221",  # unassigned in Unicode 3.2
    ],
)
def test_saslprep_rejects(text: str) -> None:
    with pytest.raises(SASLprepError):
        saslprep(text)
    assert prepare_password(text) == text.encode("utf-8")  # PostgreSQL falls back to the raw bytes


def test_prepare_password_ascii_is_untouched() -> None:
    # PostgreSQL skips SASLprep entirely for ASCII, even for characters SASLprep would prohibit.
    assert prepare_password("a\x07b") == b"a\x07b"
    assert prepare_password("") == b""
    assert prepare_password("I\u00adX") == b"IX"


def test_prepare_password_invalid_utf8_uses_raw_bytes() -> None:
    raw = b"pa\xffss"
    assert prepare_password(raw.decode("utf-8", "surrogateescape")) == raw


# --- SCRAM verifiers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("password", list(PG_SCRAM_VERIFIERS))
def test_make_scram_verifier_matches_postgresql(password: str) -> None:
    stored = PG_SCRAM_VERIFIERS[password]
    parsed = parse_scram_verifier(stored)
    assert len(parsed.salt) == 16
    assert make_scram_verifier(password, parsed.salt, parsed.iterations) == stored
    assert parsed.to_text() == stored


def test_make_scram_verifier_format() -> None:
    text = make_scram_verifier("pencil")
    m = re.fullmatch(r"SCRAM-SHA-256\$4096:([A-Za-z0-9+/=]{24})\$([A-Za-z0-9+/=]{44}):([A-Za-z0-9+/=]{44})", text)
    assert m is not None
    assert len(base64.b64decode(m.group(1), validate=True)) == 16
    assert make_scram_verifier("pencil") != text  # fresh random salt each time
    assert is_scram_verifier(text)


def test_scram_verifier_keys_follow_rfc5802() -> None:
    salt = bytes(range(16))
    v = parse_scram_verifier(make_scram_verifier("pencil", salt, 10))
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", salt, 10)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    assert v.iterations == 10
    assert v.salt == salt
    assert v.stored_key == hashlib.sha256(client_key).digest()
    assert v.server_key == hmac.new(salted, b"Server Key", "sha256").digest()


def test_scram_verifier_repr_hides_keys() -> None:
    v = verifier_for("pencil", iterations=1)
    assert base64.b64encode(v.stored_key).decode() not in repr(v)
    assert v.stored_key.hex() not in repr(v)
    assert "stored_key" not in repr(v)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "md53175bce1d3201d16594cebf9d7eb3f9d",
        "SCRAM-SHA-256$4096:c2FsdA==$AAAA:AAAA",  # keys too short
        "SCRAM-SHA-256$0:" + PG_SCRAM_VERIFIERS["pencil"].split(":", 1)[1],  # zero iterations
        "SCRAM-SHA-256$4096:c2Fsd$" + PG_SCRAM_VERIFIERS["pencil"].split("$")[2],  # bad base64 padding
        "SCRAM-SHA-1$4096:" + PG_SCRAM_VERIFIERS["pencil"].split(":", 1)[1],
        PG_SCRAM_VERIFIERS["pencil"] + "$extra",
    ],
)
def test_parse_scram_verifier_rejects(bad: str) -> None:
    assert not is_scram_verifier(bad)
    with pytest.raises(ValueError):
        parse_scram_verifier(bad)


# --- RFC 7677 test vector ----------------------------------------------------------------------------------

RFC_CLIENT_NONCE = b"rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_NONCE = b"%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
RFC_SALT_B64 = "W22ZaJ0SNY7soEsUEjb6gQ=="
RFC_CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_FIRST = b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
RFC_CLIENT_FINAL = (
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
RFC_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def test_rfc7677_vector_client_side() -> None:
    client = ScramClient(password="pencil", nonce=RFC_CLIENT_NONCE, username="user")
    assert client.initial_response() == sasl_initial_response(RFC_CLIENT_FIRST)
    assert client.handle_server_first(RFC_SERVER_FIRST) == RFC_CLIENT_FINAL
    client.handle_server_final(RFC_SERVER_FINAL)
    assert client.finished


def test_rfc7677_vector_server_side() -> None:
    verifier = ScramVerifier.from_password("pencil", base64.b64decode(RFC_SALT_B64), 4096)
    server = ScramServer(verifier, nonce=RFC_SERVER_NONCE)
    assert server.handle_client_first(sasl_initial_response(RFC_CLIENT_FIRST)) == RFC_SERVER_FIRST
    assert server.handle_client_final(RFC_CLIENT_FINAL) == RFC_SERVER_FINAL
    assert server.authenticated
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", base64.b64decode(RFC_SALT_B64), 4096)
    assert server.client_key == hmac.new(salted, b"Client Key", "sha256").digest()


# --- SCRAM exchanges ---------------------------------------------------------------------------------------


def test_mechanisms_payload() -> None:
    plain = ScramServer(verifier_for("pw", iterations=1))
    assert plain.mechanisms() == b"SCRAM-SHA-256\x00\x00"
    assert parse_sasl_mechanisms(plain.mechanisms()) == ["SCRAM-SHA-256"]
    bound = ScramServer(verifier_for("pw", iterations=1), channel_binding=b"\x01" * 32)
    assert parse_sasl_mechanisms(bound.mechanisms()) == ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]
    assert parse_sasl_mechanisms(b"SCRAM-SHA-256-PLUS\x00SCRAM-SHA-256\x00\x00") == [
        "SCRAM-SHA-256-PLUS",
        "SCRAM-SHA-256",
    ]
    with pytest.raises(AuthError):
        parse_sasl_mechanisms(b"SCRAM-SHA-256\x00")


def test_client_initial_response_shape() -> None:
    body = ScramClient(password="x").initial_response()
    mech, rest = body.split(b"\x00", 1)
    assert mech == b"SCRAM-SHA-256"
    (length,) = struct.unpack_from("!i", rest)
    client_first = rest[4:]
    assert length == len(client_first)
    m = re.fullmatch(rb"n,,n=,r=([\x21-\x2b\x2d-\x7e]{24})", client_first)
    assert m is not None


@pytest.mark.parametrize("password", ["pencil", "", "p\u00e4ss w\u00f6rd", "\u0627\u0031", "a,b=c"])
def test_password_round_trip(password: str) -> None:
    verifier = verifier_for(password, iterations=64)
    server = ScramServer(verifier)
    client = ScramClient(password=password)
    run_exchange(client, server)
    assert client.finished and server.authenticated
    salted = hashlib.pbkdf2_hmac("sha256", prepare_password(password), verifier.salt, 64)
    assert server.client_key == hmac.new(salted, b"Client Key", "sha256").digest()


def test_saslprep_equivalent_passwords_authenticate() -> None:
    verifier = verifier_for("IX", iterations=16)
    for typed in ("I\u00adX", "\u2168"):
        run_exchange(ScramClient(password=typed), ScramServer(verifier))


@pytest.mark.parametrize("password", list(PG_SCRAM_VERIFIERS))
def test_round_trip_against_postgresql_verifiers(password: str) -> None:
    server = ScramServer(parse_scram_verifier(PG_SCRAM_VERIFIERS[password]))
    run_exchange(ScramClient(password=password), server)


def test_client_key_passthrough() -> None:
    """The ClientKey recovered by one ScramServer logs in to another server holding the same verifier."""
    verifier = verifier_for("correct horse", iterations=128)
    front = ScramServer(verifier)
    run_exchange(ScramClient(password="correct horse"), front)
    client_key = front.client_key

    back = ScramServer(verifier)  # stands in for PostgreSQL with the same pg_authid entry
    passthrough = ScramClient(client_key=client_key)
    run_exchange(passthrough, back)
    assert passthrough.finished and back.authenticated
    assert back.client_key == client_key


def test_client_key_mode_does_not_verify_server_signature() -> None:
    verifier = verifier_for("pw", iterations=8)
    server = ScramServer(verifier)
    run_exchange(ScramClient(password="pw"), server)
    client = ScramClient(client_key=server.client_key)
    other = ScramServer(verifier)
    client.handle_server_first(other.handle_client_first(client.initial_response()))
    client.handle_server_final(b"v=" + base64.b64encode(b"\x00" * 32))  # ServerKey unknown: format only
    assert client.finished


def test_client_key_for_other_verifier_is_rejected() -> None:
    front = ScramServer(verifier_for("pw", iterations=8))
    run_exchange(ScramClient(password="pw"), front)
    back = ScramServer(verifier_for("pw", iterations=8))  # same password, different salt
    with pytest.raises(AuthError) as err:
        run_exchange(ScramClient(client_key=front.client_key), back)
    assert err.value.sqlstate == INVALID_PASSWORD


def test_wrong_password_rejected() -> None:
    server = ScramServer(verifier_for("right", iterations=16))
    client = ScramClient(password="wrong")
    server_first = server.handle_client_first(client.initial_response())
    with pytest.raises(AuthError) as err:
        server.handle_client_final(client.handle_server_first(server_first))
    assert err.value.sqlstate == INVALID_PASSWORD
    assert isinstance(err.value, PoolerError) and err.value.fatal
    assert not server.authenticated
    with pytest.raises(RuntimeError):
        _ = server.client_key
    with pytest.raises(AuthError):  # the exchange is over
        server.handle_client_final(b"c=biws,r=x,p=" + base64.b64encode(b"\0" * 32))


def _started(password: str = "pw") -> tuple[ScramClient, ScramServer, bytes]:
    server = ScramServer(verifier_for(password, iterations=8))
    client = ScramClient(password=password)
    client_final = client.handle_server_first(server.handle_client_first(client.initial_response()))
    return client, server, client_final


def test_tampered_nonce_rejected() -> None:
    _, server, final = _started()
    # Change the last nonce character (to one it is not: a random nonce may well end in "X").
    tampered = re.sub(
        rb"r=([^,]+)", lambda m: b"r=" + m.group(1)[:-1] + (b"Y" if m.group(1).endswith(b"X") else b"X"), final
    )
    assert tampered != final
    with pytest.raises(AuthError) as err:
        server.handle_client_final(tampered)
    assert err.value.sqlstate == PROTOCOL_VIOLATION


@pytest.mark.parametrize("cbind", [b"eSws", b"cCx0bHMtdW5pcXVlLCw=", b"", b"!!!"])
def test_tampered_channel_binding_rejected(cbind: bytes) -> None:
    _, server, final = _started()
    with pytest.raises(AuthError) as err:
        server.handle_client_final(final.replace(b"c=biws", b"c=" + cbind))
    assert err.value.sqlstate == PROTOCOL_VIOLATION


def test_tampered_proof_rejected() -> None:
    _, server, final = _started()
    head, proof = final.rsplit(b",p=", 1)
    raw = bytearray(base64.b64decode(proof))
    raw[0] ^= 1
    with pytest.raises(AuthError) as err:
        server.handle_client_final(head + b",p=" + base64.b64encode(bytes(raw)))
    assert err.value.sqlstate == INVALID_PASSWORD


@pytest.mark.parametrize(
    "final",
    [
        b"",
        b"c=biws",
        b"r=abc,c=biws,p=AAAA",
        b"c=biws,r=abc,p=" + base64.b64encode(b"\0" * 31),
    ],
)
def test_malformed_client_final_rejected(final: bytes) -> None:
    _, server, _ = _started()
    with pytest.raises(AuthError):
        server.handle_client_final(final)


def test_proof_must_be_last_and_extensions_are_ignored() -> None:
    _, server, final = _started()
    head, proof = final.rsplit(b",p=", 1)
    with pytest.raises(AuthError):
        server.handle_client_final(head + b",p=" + proof + b",x=1")
    # an extension before the proof changes the AuthMessage, so the proof no longer verifies
    _, server, final = _started()
    head, proof = final.rsplit(b",p=", 1)
    with pytest.raises(AuthError) as err:
        server.handle_client_final(head + b",x=1,p=" + proof)
    assert err.value.sqlstate == INVALID_PASSWORD


@pytest.mark.parametrize(
    ("client_first", "mechanism"),
    [
        (b"n,,n=,r=abc", b"SCRAM-SHA-256-PLUS"),
        (b"n,,n=,r=abc", b"SCRAM-SHA-1"),
        (b"p=tls-server-end-point,,n=,r=abc", b"SCRAM-SHA-256"),
        (b"x,,n=,r=abc", b"SCRAM-SHA-256"),
        (b"n,,m=ext,n=,r=abc", b"SCRAM-SHA-256"),
        (b"n,,n=", b"SCRAM-SHA-256"),
        (b"n,,n=,r=", b"SCRAM-SHA-256"),
        (b"n,,r=abc", b"SCRAM-SHA-256"),
        (b"n,x=1,n=,r=abc", b"SCRAM-SHA-256"),
        (b"n,", b"SCRAM-SHA-256"),
        (b"", b"SCRAM-SHA-256"),
    ],
)
def test_bad_client_first_rejected(client_first: bytes, mechanism: bytes) -> None:
    server = ScramServer(verifier_for("pw", iterations=1))
    with pytest.raises(AuthError):
        server.handle_client_first(sasl_initial_response(client_first, mechanism))


@pytest.mark.parametrize(
    "body",
    [
        b"SCRAM-SHA-256",  # no NUL
        b"SCRAM-SHA-256\x00\x00\x00",  # truncated length
        b"SCRAM-SHA-256\x00\xff\xff\xff\xff",  # -1: no initial response
        b"SCRAM-SHA-256\x00\x00\x00\x00\x20n,,n=,r=abc",  # length mismatch
    ],
)
def test_malformed_initial_response_rejected(body: bytes) -> None:
    with pytest.raises(AuthError) as err:
        ScramServer(verifier_for("pw", iterations=1)).handle_client_first(body)
    assert err.value.sqlstate == PROTOCOL_VIOLATION


def test_channel_binding_flag_p_is_rejected() -> None:
    server = ScramServer(verifier_for("pw", iterations=1))
    with pytest.raises(AuthError) as err:
        server.handle_client_first(sasl_initial_response(b"p=tls-server-end-point,,n=,r=abc"))
    assert err.value.sqlstate == PROTOCOL_VIOLATION
    assert err.value.detail is not None and "channel binding" in err.value.detail


@pytest.mark.parametrize("gs2", [b"y,,", b"n,,"])
def test_flag_y_and_n_are_accepted_on_a_plain_connection(gs2: bytes) -> None:
    """The channel-binding value must echo the gs2 header exactly ("y" is no downgrade where PLUS is not offered)."""
    verifier = verifier_for("pw", iterations=4)
    server = ScramServer(verifier, nonce=b"SERVERNONCE")
    client_nonce = b"clientnonce"
    bare = b"n=ignored,r=" + client_nonce
    server_first = server.handle_client_first(sasl_initial_response(gs2 + bare))
    assert server_first.startswith(b"r=clientnonceSERVERNONCE,s=")
    without_proof = b"c=" + base64.b64encode(gs2) + b",r=" + client_nonce + b"SERVERNONCE"
    auth_message = bare + b"," + server_first + b"," + without_proof
    salted = hashlib.pbkdf2_hmac("sha256", b"pw", verifier.salt, 4)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    signature = hmac.new(verifier.stored_key, auth_message, "sha256").digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    final = server.handle_client_final(without_proof + b",p=" + base64.b64encode(proof))
    expected = hmac.new(verifier.server_key, auth_message, "sha256").digest()
    assert final == b"v=" + base64.b64encode(expected)


def test_server_out_of_order_calls_rejected() -> None:
    server = ScramServer(verifier_for("pw", iterations=1))
    with pytest.raises(AuthError):
        server.handle_client_final(b"c=biws,r=x,p=AAAA")
    server = ScramServer(verifier_for("pw", iterations=1))
    body = ScramClient(password="pw").initial_response()
    server.handle_client_first(body)
    with pytest.raises(AuthError):
        server.handle_client_first(body)


def test_server_nonce_is_random_and_printable() -> None:
    verifier = verifier_for("pw", iterations=1)
    firsts = {ScramServer(verifier).handle_client_first(sasl_initial_response(b"n,,n=,r=abc")) for _ in range(3)}
    assert len(firsts) == 3
    for first in firsts:
        m = re.match(rb"r=abc([\x21-\x2b\x2d-\x7e]{24}),s=", first)
        assert m is not None
    with pytest.raises(ValueError):
        ScramServer(verifier, nonce=b"has,comma")


# --- ScramClient against a misbehaving server --------------------------------------------------------------


def test_client_requires_exactly_one_secret() -> None:
    with pytest.raises(ValueError):
        ScramClient()
    with pytest.raises(ValueError):
        ScramClient(password="x", client_key=b"\0" * 32)
    with pytest.raises(ValueError):
        ScramClient(client_key=b"short")


@pytest.mark.parametrize(
    "server_first",
    [
        b"r=OTHERNONCE,s=c2FsdA==,i=4096",  # does not extend our nonce
        b"r=ournonceX,s=c2FsdA==,i=0",
        b"r=ournonceX,s=c2FsdA==,i=-1",
        b"r=ournonceX,s=c2FsdA==,i=abc",
        b"r=ournonceX,s=,i=4096",
        b"r=ournonceX,s=***,i=4096",
        b"r=ournonceX,i=4096,s=c2FsdA==",
        b"m=ext,r=ournonceX,s=c2FsdA==,i=4096",
        b"r=ournonceX,s=c2FsdA==",
        b"",
    ],
)
def test_client_rejects_bad_server_first(server_first: bytes) -> None:
    client = ScramClient(password="pw", nonce=b"ournonce")
    client.initial_response()
    with pytest.raises(AuthError):
        client.handle_server_first(server_first)


def test_client_rejects_bad_server_signature() -> None:
    server = ScramServer(verifier_for("pw", iterations=4))
    client = ScramClient(password="pw")
    server_first = server.handle_client_first(client.initial_response())
    server.handle_client_final(client.handle_server_first(server_first))
    with pytest.raises(AuthError) as err:
        client.handle_server_final(b"v=" + base64.b64encode(b"\x01" * 32))
    assert err.value.sqlstate == INVALID_PASSWORD
    assert not client.finished


@pytest.mark.parametrize("server_final", [b"e=invalid-proof", b"v=", b"v=AAAA", b"x=1", b""])
def test_client_rejects_error_or_malformed_server_final(server_final: bytes) -> None:
    for client in (ScramClient(password="pw", nonce=b"n"), ScramClient(client_key=b"\0" * 32, nonce=b"n")):
        client.initial_response()
        client.handle_server_first(b"r=nX,s=c2FsdA==,i=1")
        with pytest.raises(AuthError):
            client.handle_server_final(server_final)


def test_client_out_of_order_calls_rejected() -> None:
    client = ScramClient(password="pw")
    with pytest.raises(AuthError):
        client.handle_server_first(b"r=x,s=c2FsdA==,i=1")
    client = ScramClient(password="pw")
    client.initial_response()
    with pytest.raises(AuthError):
        client.initial_response()
