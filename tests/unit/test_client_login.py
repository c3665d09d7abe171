"""Client authentication without sockets: the method policy, the ClientLogin exchange fed bytes, the admin console,
the pre-auth message cap and the over-limit protocol (BackendKeyData keys: test_registry.py)."""

from __future__ import annotations

import struct

import pytest

from pg_doorman.admin import Console, is_admin_database, login_decision
from pg_doorman.admission import OverLimitClient
from pg_doorman.auth.client_login import MAX_AUTH_MESSAGE, ClientLogin, LoginFailed, mock_scram_verifier
from pg_doorman.auth.md5 import md5_response_for_password, md5_verifier
from pg_doorman.auth.policy import Decision, Method, choose_method
from pg_doorman.auth.scram import AuthError, ScramClient, ScramVerifier, make_scram_verifier, parse_scram_verifier
from pg_doorman.protocol.errors import ProtocolViolation
from pg_doorman.protocol.framing import MessageBuffer

P = 0x70  # 'p'


def auth_code(message: bytes) -> int:
    assert message[:1] == b"R"
    return int(struct.unpack_from("!i", message, 5)[0])


def auth_payload(message: bytes) -> bytes:
    return message[9:]


def fields(message: bytes) -> dict[str, str]:
    assert message[:1] == b"E"
    return {part[:1].decode(): part[1:].decode() for part in message[5:].split(b"\0") if part}


# ---------------------------------------------------------------- policy


SCRAM = make_scram_verifier("scram_pw", salt=b"0123456789abcdef")
MD5 = md5_verifier("md5_pw", "u")


@pytest.mark.parametrize(
    ("stored", "rule", "method", "doomed"),
    [
        (MD5, None, Method.MD5, False),
        (SCRAM, None, Method.SCRAM_SHA_256, False),
        ("plain_pw", None, Method.SCRAM_SHA_256, False),
        (None, None, Method.SCRAM_SHA_256, True),
        # An md5 rule (the admin console): SCRAM secrets are upgraded, plaintext is hashed, unknown users doomed.
        (MD5, Method.MD5, Method.MD5, False),
        (SCRAM, Method.MD5, Method.SCRAM_SHA_256, False),
        ("plain_pw", Method.MD5, Method.MD5, False),
        (None, Method.MD5, Method.MD5, True),
        # A SCRAM rule cannot be served by an MD5 secret.
        (MD5, Method.SCRAM_SHA_256, Method.SCRAM_SHA_256, True),
        (SCRAM, Method.SCRAM_SHA_256, Method.SCRAM_SHA_256, False),
    ],
)
def test_choose_method(stored: str | None, rule: Method | None, method: Method, doomed: bool) -> None:
    decision = choose_method("u", stored, rule=rule)
    assert decision.method is method
    assert decision.doomed is doomed


def test_choose_method_verifiers() -> None:
    assert choose_method("u", MD5).verifier == MD5
    assert choose_method("u", SCRAM).verifier == parse_scram_verifier(SCRAM)
    assert choose_method("u", "plain_pw", rule=Method.MD5).verifier == md5_verifier("plain_pw", "u")
    plain = choose_method("u", "plain_pw").verifier
    assert isinstance(plain, ScramVerifier)
    assert choose_method("u", "plain_pw").verifier is plain  # derived once (PBKDF2 is slow)


def test_empty_password_is_rejected_with_28000() -> None:
    decision = choose_method("x", "")
    assert decision.method is Method.REJECT
    assert decision.sqlstate == "28000"
    assert (
        decision.reason
        == 'password authentication is not configured for user "x" (empty password; a trust rule is needed)'
    )
    with pytest.raises(LoginFailed) as info:
        ClientLogin("x", decision).start()
    assert (info.value.sqlstate, info.value.message) == ("28000", decision.reason)


# ---------------------------------------------------------------- md5


def md5_login(user: str, decision: Decision) -> tuple[ClientLogin, bytes]:
    login = ClientLogin(user, decision)
    request = login.start()
    assert auth_code(request) == 5
    return login, auth_payload(request)


def test_md5_right_password() -> None:
    login, salt = md5_login("u", choose_method("u", MD5))
    assert len(salt) == 4
    assert login.feed(P, md5_response_for_password("md5_pw", "u", salt) + b"\0") == b""
    assert login.done
    assert login.client_key is None
    with pytest.raises(ProtocolViolation):
        login.feed(P, b"again\0")


def test_md5_wrong_password_and_doomed_fail_alike() -> None:
    login, salt = md5_login("u", choose_method("u", MD5))
    with pytest.raises(LoginFailed) as wrong:
        login.feed(P, md5_response_for_password("nope", "u", salt) + b"\0")
    login, salt = md5_login("u", choose_method("u", None, rule=Method.MD5))
    with pytest.raises(LoginFailed) as doomed:
        login.feed(P, md5_response_for_password("md5_pw", "u", salt) + b"\0")
    assert (wrong.value.sqlstate, wrong.value.message) == (doomed.value.sqlstate, doomed.value.message)
    assert wrong.value.message == 'password authentication failed for user "u"'
    assert wrong.value.why == "wrong password"
    assert doomed.value.why == 'user "u" is not configured'


def test_salts_are_fresh() -> None:
    salts = {md5_login("u", choose_method("u", MD5))[1] for _ in range(20)}
    assert len(salts) > 15


def test_unexpected_message_during_exchange() -> None:
    login, _ = md5_login("u", choose_method("u", MD5))
    with pytest.raises(ProtocolViolation, match="expected password response, got message type 81"):
        login.feed(0x51, b"select 1\0")
    login = ClientLogin("u", choose_method("u", SCRAM))
    login.start()
    with pytest.raises(ProtocolViolation, match="expected SASL response"):
        login.feed(0x51, b"select 1\0")
    with pytest.raises(ConnectionAbortedError):
        login.feed(0x58, b"")


# ---------------------------------------------------------------- SCRAM


def scram_exchange(login: ClientLogin, client: ScramClient) -> bytes:
    """Run a whole exchange; returns the AuthenticationSASLFinal message."""
    request = login.start()
    assert auth_code(request) == 10
    assert auth_payload(request) == b"SCRAM-SHA-256\0\0"
    server_first = login.feed(P, client.initial_response())
    assert auth_code(server_first) == 11
    assert not login.done
    final = login.feed(P, client.handle_server_first(auth_payload(server_first)))
    assert auth_code(final) == 12
    client.handle_server_final(auth_payload(final))
    return final


def test_scram_right_password_gives_the_client_key() -> None:
    login = ClientLogin("u", choose_method("u", SCRAM))
    scram_exchange(login, ScramClient(password="scram_pw"))
    assert login.done
    # The ClientKey answers any later challenge of the same verifier (SCRAM passthrough to PostgreSQL).
    assert login.client_key is not None
    again = ClientLogin("u", choose_method("u", SCRAM))
    scram_exchange(again, ScramClient(client_key=login.client_key))
    assert again.done


def test_scram_plaintext_password() -> None:
    login = ClientLogin("u", choose_method("u", "plain_pw"))
    scram_exchange(login, ScramClient(password="plain_pw"))
    assert login.done


def test_scram_wrong_password_and_unknown_user_fail_alike() -> None:
    with pytest.raises(LoginFailed) as wrong:
        scram_exchange(ClientLogin("u", choose_method("u", SCRAM)), ScramClient(password="nope"))
    with pytest.raises(LoginFailed) as unknown:
        scram_exchange(ClientLogin("v", choose_method("v", None)), ScramClient(password="scram_pw"))
    assert wrong.value.sqlstate == unknown.value.sqlstate == "28P01"
    assert wrong.value.message.replace('"u"', "X") == unknown.value.message.replace('"v"', "X")


def test_doomed_scram_looks_like_a_real_user() -> None:
    """An unknown user's server-first carries a salt of its own (stable per name, as PostgreSQL's mock salt),
    not one salt shared by every unknown name, and the usual iteration count."""

    def salt_and_iterations(user: str) -> tuple[bytes, bytes]:
        login = ClientLogin(user, choose_method(user, None))
        login.start()
        first = auth_payload(login.feed(P, ScramClient(password="x").initial_response()))
        attrs = dict(part.split(b"=", 1) for part in first.split(b","))
        return attrs[b"s"], attrs[b"i"]

    assert salt_and_iterations("ghost") == salt_and_iterations("ghost")
    assert salt_and_iterations("ghost")[0] != salt_and_iterations("phantom")[0]
    assert salt_and_iterations("ghost")[1] == b"4096"
    assert mock_scram_verifier("ghost") == mock_scram_verifier("ghost")


def test_malformed_scram_is_08p01_even_for_unknown_users() -> None:
    for stored in (SCRAM, None):
        login = ClientLogin("u", choose_method("u", stored))
        login.start()
        with pytest.raises(AuthError) as info:
            login.feed(P, b"SCRAM-SHA-256\0garbage")
        assert info.value.sqlstate == "08P01"


# ---------------------------------------------------------------- pre-auth message cap


def test_next_message_refuses_a_long_declared_length_from_the_header() -> None:
    buf = MessageBuffer()
    buf.feed(b"p" + struct.pack("!i", 100 * 1024 * 1024) + b"x" * 10)
    with pytest.raises(ProtocolViolation, match="invalid message length"):
        buf.next_message(MAX_AUTH_MESSAGE)
    buf = MessageBuffer()
    buf.feed(b"p\0\0\0\3")
    with pytest.raises(ProtocolViolation, match="invalid message length"):
        buf.next_message(MAX_AUTH_MESSAGE)


def test_next_message_takes_complete_messages_up_to_the_limit() -> None:
    buf = MessageBuffer()
    body = b"y" * (MAX_AUTH_MESSAGE - 4)
    message = b"p" + struct.pack("!i", len(body) + 4) + body
    buf.feed(message[:100])
    assert buf.next_message(MAX_AUTH_MESSAGE) is None
    buf.feed(message[100:] + b"Q\0\0\0\5;")
    assert buf.next_message(MAX_AUTH_MESSAGE) == (P, body)
    assert buf.next_message(MAX_AUTH_MESSAGE) == (0x51, b";")
    assert buf.next_message(MAX_AUTH_MESSAGE) is None


# ---------------------------------------------------------------- admin console


def test_admin_login_decision() -> None:
    decision = login_decision("admin", "admin", "secret")
    assert (decision.method, decision.verifier) == (Method.MD5, md5_verifier("secret", "admin"))
    for user, password in (("app", "secret"), ("admin", "")):
        decision = login_decision(user, "admin", password)
        assert decision.method is Method.MD5
        assert decision.doomed
    assert is_admin_database("pgdoorman") and is_admin_database("pgbouncer") and not is_admin_database("appdb")


def test_console_answers() -> None:
    console = Console()
    reply = console.feed(0x51, b"SHOW POOLS\0")
    error, ready = reply[:-6], reply[-6:]
    assert fields(error)["C"] == "0A000"
    assert fields(error)["S"] == "ERROR"
    assert ready == b"Z\0\0\0\5I"
    for kind in b"PBDECH":
        assert console.feed(kind, b"") == b""
    reply = console.feed(0x53, b"")  # the extended-protocol batch fails once, at its Sync
    assert fields(reply[:-6])["C"] == "0A000" and reply[-6:] == b"Z\0\0\0\5I"
    assert console.feed(0x53, b"") == b"Z\0\0\0\5I"
    with pytest.raises(ProtocolViolation):
        console.feed(ord("d"), b"copy data")
    assert not console.closed
    assert console.feed(0x58, b"") == b""
    assert console.closed
    assert Console.startup_reply().startswith(b"R\0\0\0\x08\0\0\0\0")


# ---------------------------------------------------------------- over max_connections


class FakeTransport:
    def __init__(self) -> None:
        self.written = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


class FakeContext:
    login_timeout = 0.0

    def __init__(self) -> None:
        self.cancels: list[tuple[int, int]] = []

    def cancel(self, pid: int, secret: int) -> None:
        self.cancels.append((pid, secret))


def over_limit() -> tuple[OverLimitClient, FakeTransport, FakeContext]:
    context = FakeContext()
    transport = FakeTransport()
    client = OverLimitClient(context)  # type: ignore[arg-type]
    client.connection_made(transport)  # type: ignore[arg-type]
    return client, transport, context


def test_over_limit_client_gets_n_then_53300() -> None:
    client, transport, _ = over_limit()
    startup = struct.pack("!ii", 8 + 9, 196608) + b"user\0app\0\0"
    client.data_received(struct.pack("!ii", 8, 80877103) + startup[:5])
    assert transport.written == b"N"
    assert not transport.closed
    client.data_received(startup[5:])
    assert fields(transport.written[1:]) == {
        "S": "FATAL",
        "V": "FATAL",
        "C": "53300",
        "M": "sorry, too many clients already",
    }
    assert transport.closed


@pytest.mark.parametrize("first", [struct.pack("!i", 100_000) + b"\0" * 4, b"GET / HTTP/1.1\r\n\r\n"])
def test_over_limit_client_with_a_bad_first_packet_is_answered_at_once(first: bytes) -> None:
    client, transport, _ = over_limit()
    client.data_received(first)
    assert fields(transport.written)["C"] == "53300"
    assert transport.closed


def test_over_limit_cancel_request_is_processed() -> None:
    client, transport, context = over_limit()
    client.data_received(struct.pack("!iiii", 16, 80877102, 42, -7))
    assert context.cancels == [(42, -7)]
    assert transport.written == b""
    assert transport.closed
