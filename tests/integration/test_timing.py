"""A wrong password and an unknown user look the same: same messages, same ErrorResponse, same time.

An unknown user runs the whole SCRAM exchange against a mock verifier (auth/client_login.py), and fails at the end
with the 28P01 a wrong password gets.  Timing is the pooler's own time (from each client message sent to its reply
received; the client's PBKDF2 is done outside the clock), median over ``ATTEMPTS`` logins, interleaved so that load
from elsewhere falls on both sides alike.
"""

from __future__ import annotations

import statistics
import struct
import time
from collections.abc import Callable
from typing import Any

import pytest
from wire_client import RawWire, _ScramClient, error_map, frame, md5_password_message, md5_verifier, startup_packet

from pg_doorman.devcluster import TempPostgres

ATTEMPTS = 30
MD5_USER, SCRAM_USER, UNKNOWN_USER = "app", "app2", "nobody_here"


class Attempt:
    """One failed login: the message types seen, the final ErrorResponse body, the pooler's time in ms."""

    def __init__(self) -> None:
        self.kinds: list[tuple[bytes, int]] = []
        self.error = b""
        self.steps_ms: list[float] = []

    @property
    def server_ms(self) -> float:
        return sum(self.steps_ms)

    def ask(self, wire: RawWire, data: bytes) -> tuple[bytes, bytes]:
        started = time.perf_counter()
        wire.send(data)
        kind, body = wire.read_message()
        self.steps_ms.append((time.perf_counter() - started) * 1000)
        self.kinds.append((kind, struct.unpack_from("!i", body)[0] if kind == b"R" else 0))
        if kind == b"E":
            self.error = body
        return kind, body


def failed_login(port: int, user: str, password: str) -> Attempt:
    attempt = Attempt()
    with RawWire(port, 10.0) as wire:
        kind, body = attempt.ask(wire, startup_packet({"user": user, "database": "appdb"}))
        assert kind == b"R", (kind, body)
        code = struct.unpack_from("!i", body)[0]
        if code == 5:
            attempt.ask(wire, md5_password_message(password, user, body[4:8]))
        else:
            assert code == 10 and b"SCRAM-SHA-256" in body, body
            scram = _ScramClient(password)
            first = scram.client_first()
            initial = b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first
            kind, body = attempt.ask(wire, frame(b"p", initial))
            assert kind == b"R" and struct.unpack_from("!i", body)[0] == 11, (kind, body)
            final = scram.client_final(body[4:])  # PBKDF2 on our side: outside the clock
            attempt.ask(wire, frame(b"p", final))
        assert wire.closed_by_peer(5)
    assert attempt.kinds[-1][0] == b"E", attempt.kinds
    return attempt


def spread(values: list[float]) -> float:
    quartiles = statistics.quantiles(values, n=4)
    return quartiles[2] - quartiles[0]


@pytest.fixture
def pooler(pg_trust: TempPostgres, doorman: Callable[..., Any], pool_config: Callable[..., Any]) -> Any:
    # app: an md5 verifier; app2: the SCRAM verifier PostgreSQL stores (make_pool_config's default)
    users = [{"username": MD5_USER, "password": md5_verifier("app_pass", MD5_USER)}, SCRAM_USER]
    return doorman(pool_config(pg_trust, users, pool_size=2))


@pytest.mark.parametrize("known_user", [SCRAM_USER, MD5_USER], ids=["scram-user", "md5-user"])
def test_wrong_password_and_unknown_user_look_the_same(pooler: Any, known_user: str) -> None:
    failed_login(pooler.port, known_user, "wrong")  # warm-up: code paths loaded, caches filled
    failed_login(pooler.port, UNKNOWN_USER, "wrong")
    wrong: list[Attempt] = []
    unknown: list[Attempt] = []
    for _ in range(ATTEMPTS):
        wrong.append(failed_login(pooler.port, known_user, "wrong-password"))
        unknown.append(failed_login(pooler.port, UNKNOWN_USER, "wrong-password"))

    # The same ErrorResponse, byte for byte, but for the user name PostgreSQL echoes as well.
    errors = {a.error.replace(known_user.encode(), b"<user>") for a in wrong}
    errors |= {a.error.replace(UNKNOWN_USER.encode(), b"<user>") for a in unknown}
    assert len(errors) == 1, errors
    fields = error_map(errors.pop())
    expected = ("FATAL", "28P01", 'password authentication failed for user "<user>"')
    assert (fields["S"], fields["C"], fields["M"]) == expected

    wrong_ms = [a.server_ms for a in wrong]
    unknown_ms = [a.server_ms for a in unknown]
    if known_user == SCRAM_USER:
        # The same exchange: AuthenticationSASL, SASLContinue, ErrorResponse; the same total time.
        assert {tuple(a.kinds) for a in wrong + unknown} == {((b"R", 10), (b"R", 11), (b"E", 0))}
    else:
        # An md5 user gets an md5 challenge; an unknown name gets SCRAM (PostgreSQL's mock, whose default
        # password_encryption is scram-sha-256). Compare the verification step: the last round trip.
        wrong_ms = [a.steps_ms[-1] for a in wrong]
        unknown_ms = [a.steps_ms[-1] for a in unknown]
        assert {tuple(a.kinds) for a in wrong} == {((b"R", 5), (b"E", 0))}
    difference = abs(statistics.median(wrong_ms) - statistics.median(unknown_ms))
    noise = max(spread(wrong_ms), spread(unknown_ms))
    print(
        f"\ntiming ({known_user}): wrong password median {statistics.median(wrong_ms):.3f} ms "
        f"(IQR {spread(wrong_ms):.3f}), unknown user {statistics.median(unknown_ms):.3f} ms "
        f"(IQR {spread(unknown_ms):.3f}), difference {difference:.3f} ms"
    )
    assert difference < max(3 * noise, 0.25), (difference, noise)
