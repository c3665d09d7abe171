"""Fuzzing a real pg_doorman (in front of a real PostgreSQL) with malformed startup packets and post-login messages.

A seeded mutator, not a grammar: every case is built from ``random.Random(f"{seed}:{phase}:{index}")``, so one seed
replays a whole run and a case index replays one case.  The seed is printed at the start and in every failure:
``PG_DOORMAN_FUZZ_SEED=123 pytest tests/integration/test_fuzz.py``.  The budget is ``PG_DOORMAN_FUZZ_SECONDS`` per
phase (12 s by default, for CI); a longer run on demand:
``PG_DOORMAN_FUZZ_SECONDS=600 .venv/bin/pytest tests/integration/test_fuzz.py -q -s``.

After each batch of cases: the process is alive, a legitimate psycopg client gets correct answers (simple and
prepared queries, so a server left in a strange state by a fuzz client would show), and the process's RSS has grown
by less than ``RSS_BOUND_MIB`` over its warmed-up start.  Whatever pg_doorman sends a fuzz client must be well-framed
backend messages, and a FATAL error is followed by the close.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from wire_client import (
    PROTOCOL_3_0,
    RawWire,
    bind,
    close,
    copy_data,
    copy_done,
    copy_fail,
    describe,
    error_map,
    execute,
    flush,
    frame,
    md5_verifier,
    parse,
    query,
    startup_packet,
    sync,
    terminate,
)

from pg_doorman.devcluster import TempPostgres

FUZZ_SECONDS = float(os.environ.get("PG_DOORMAN_FUZZ_SECONDS", "12"))
SEED = int(os.environ.get("PG_DOORMAN_FUZZ_SEED") or random.SystemRandom().randrange(2**32))
BATCH = 25
RSS_BOUND_MIB = 40
QUIET_S = 0.05  # a fuzz client stops reading after this much silence ...
CASE_READ_S = 1.0  # ... or after this long
LOGIN = {"user": "app", "database": "appdb"}
PASSWORD = "app_pass"
BACKEND_TYPES = set(b"RSKZEDTCnIstG HWcdANv123")
SSL_REQUEST = struct.pack("!ii", 8, 80877103)
GSSENC_REQUEST = struct.pack("!ii", 8, 80877104)

pytestmark = pytest.mark.timeout(int(2 * FUZZ_SECONDS) + 240)


# ---------------------------------------------------------------- case generators


def random_bytes(rng: random.Random, limit: int = 64) -> bytes:
    return rng.randbytes(rng.randrange(limit + 1))


def random_params(rng: random.Random) -> bytes:
    """A startup parameter list: sometimes sound, sometimes garbage (no terminators, NULs, non-UTF-8, huge)."""
    pairs: list[bytes] = []
    for _ in range(rng.randrange(6)):
        key = rng.choice([b"user", b"database", b"options", b"application_name", b"_pq_.x", b"", random_bytes(rng, 12)])
        value = rng.choice([b"app", b"appdb", b"-c work_mem=1MB", b"\xff\xfe", b"x" * rng.randrange(4000), b""])
        pairs.append(key + b"\0" + value + b"\0")
    body = b"".join(pairs)
    roll = rng.random()
    if roll < 0.2:
        return body  # final terminator missing
    if roll < 0.3:
        return body[: rng.randrange(len(body) + 1)]
    if roll < 0.4:
        return random_bytes(rng, 200)
    return body + b"\0"


def startup_case(rng: random.Random) -> list[bytes]:
    """The chunks one unauthenticated client sends."""
    preamble = [rng.choice([SSL_REQUEST, GSSENC_REQUEST]) for _ in range(rng.randrange(3))]
    kind = rng.randrange(9)
    if kind == 0:  # impossible or absurd lengths
        length = rng.choice([-1, 0, 1, 3, 4, 7, 8, 10_001, 2**31 - 1, rng.randrange(-(2**31), 2**31)])
        packet = struct.pack("!i", length) + random_bytes(rng)
    elif kind == 1:  # a sound startup packet cut short
        sound = startup_packet(LOGIN)
        packet = sound[: rng.randrange(len(sound))]
    elif kind == 2:  # oversized: declared (and partly sent) beyond 10 000 bytes
        packet = struct.pack("!ii", rng.randrange(10_001, 1 << 20), PROTOCOL_3_0) + b"user\0" + b"a" * 12_000
    elif kind == 3:  # random protocol version with sound parameters
        version = rng.choice([rng.randrange(-(2**31), 2**31), 0x00020000, 0x00030001, 0x00040000, 1234 << 16 | 5678])
        packet = startup_packet(LOGIN, version)
    elif kind == 4:  # garbage parameters with a correct length
        body = struct.pack("!i", PROTOCOL_3_0) + random_params(rng)
        packet = struct.pack("!i", len(body) + 4) + body
    elif kind == 5:  # CancelRequest: random keys, wrong lengths
        length = rng.choice([16, 16, 12, 20, 8])
        packet = struct.pack("!ii", length, 80877102) + rng.randbytes(max(length - 8, 0))
    elif kind == 6:  # an encryption request with a wrong length or a trailing body
        packet = struct.pack("!ii", rng.choice([4, 9, 12, 16]), rng.choice([80877103, 80877104])) + random_bytes(rng, 8)
    elif kind == 7:  # a sound startup then garbage instead of the password
        packet = startup_packet(LOGIN) + random_bytes(rng, 40)
    else:  # noise
        packet = random_bytes(rng, 300)
    if rng.random() < 0.2:  # a typed-looking message first, as a confused client would send
        packet = frame(bytes([rng.randrange(256)]), random_bytes(rng, 20)) + packet
    data = b"".join(preamble) + packet
    return split_randomly(rng, data)


def split_randomly(rng: random.Random, data: bytes) -> list[bytes]:
    if len(data) < 2 or rng.random() < 0.6:
        return [data]
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randrange(1, 4))))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def mutate(rng: random.Random, message: bytes) -> bytes:
    """Damage one message: flip bytes inside its body (length kept), cut it, or lie about its length."""
    roll = rng.randrange(5)
    body = bytearray(message[5:])
    if roll == 0 and body:
        for _ in range(rng.randrange(1, 4)):
            body[rng.randrange(len(body))] = rng.randrange(256)
        return message[:1] + struct.pack("!i", len(body) + 4) + bytes(body)
    if roll == 1:  # body truncated, length fixed to match
        cut = bytes(body[: rng.randrange(len(body) + 1)])
        return message[:1] + struct.pack("!i", len(cut) + 4) + cut
    if roll == 2:  # length too small
        return message[:1] + struct.pack("!i", rng.randrange(-4, 4)) + bytes(body)
    if roll == 3:  # length too large (the body never comes)
        return message[:1] + struct.pack("!i", len(body) + 4 + rng.randrange(1, 1 << 16)) + bytes(body)
    return message[:1] + struct.pack("!i", len(body) + 4) + bytes(body) + random_bytes(rng, 8)  # trailing junk


def sound_message(rng: random.Random) -> bytes:
    name = rng.choice(["", "s1", "s2", "x" * 70])
    return rng.choice(
        [
            query(rng.choice(["select 1", "begin", "commit", "select pg_sleep(0)", "copy (select 1) to stdout", ""])),
            parse(name, rng.choice(["select $1::int", "select 1", "bogus sql"]), rng.choice([(), (23,)])),
            bind("", name, rng.choice([(), ("1",), (None, "2")])),
            describe(rng.choice("SP"), name),
            execute("", rng.randrange(3)),
            close(rng.choice("SP"), name),
            sync(),
            flush(),
            copy_data(random_bytes(rng, 16)),
            copy_done(),
            copy_fail("x"),
        ]
    )


def session_case(rng: random.Random) -> list[bytes]:
    """What one logged-in client sends: sound and damaged messages, random types, messages after Terminate."""
    out = []
    for _ in range(rng.randrange(1, 8)):
        roll = rng.random()
        if roll < 0.35:
            out.append(sound_message(rng))
        elif roll < 0.7:
            out.append(mutate(rng, sound_message(rng)))
        elif roll < 0.85:
            out.append(frame(bytes([rng.randrange(256)]), random_bytes(rng, 40)))
        elif roll < 0.92:
            out.append(terminate() + sound_message(rng))
        else:
            out.append(random_bytes(rng, 30))
    return split_randomly(rng, b"".join(out))


# ---------------------------------------------------------------- driving one case


def read_reply(sock: socket.socket) -> tuple[bytes, bool]:
    """Everything the pooler sends until it closes, goes quiet for QUIET_S, or CASE_READ_S passes."""
    data = b""
    deadline = time.monotonic() + CASE_READ_S
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(min(QUIET_S, left))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return data, False
        except OSError:
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


def check_framing(data: bytes, closed: bool, *, skip_n: int = 0) -> None:
    """Backend bytes are whole, known messages (after ``skip_n`` single 'N' answers); a FATAL ends the stream."""
    pos = 0
    for _ in range(skip_n):
        if pos < len(data) and data[pos : pos + 1] == b"N":
            pos += 1
    while pos < len(data):
        assert data[pos] in BACKEND_TYPES, f"unknown backend message type {data[pos : pos + 1]!r} at {pos}: {data!r}"
        if pos + 5 > len(data):
            assert not closed, f"closed inside a message header: {data[pos:]!r}"
            return
        length = struct.unpack_from("!i", data, pos + 1)[0]
        assert length >= 4, f"backend message with length {length}: {data!r}"
        end = pos + 1 + length
        if end > len(data):
            assert not closed, f"closed inside a message: {data[pos:]!r}"
            return
        if data[pos : pos + 1] == b"E" and error_map(data[pos + 5 : end]).get("S") == "FATAL":
            assert end == len(data), f"bytes after a FATAL error: {data[end:]!r}"
        pos = end


def send_chunks(sock: socket.socket, chunks: list[bytes]) -> None:
    for chunk in chunks:
        try:
            sock.sendall(chunk)
        except OSError:
            return  # the pooler closed: fine, the reply says why


def run_startup_case(port: int, chunks: list[bytes]) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        send_chunks(sock, chunks)
        data, closed = read_reply(sock)
    # An encryption request is answered 'N' whatever its length (as PostgreSQL does): up to three of them per case.
    check_framing(data, closed, skip_n=3)


def run_session_case(port: int, chunks: list[bytes]) -> None:
    with RawWire(port, 5.0) as wire:
        assert wire.login(LOGIN, PASSWORD)[-1] == (b"Z", b"I")
        send_chunks(wire.sock, chunks)
        data, closed = read_reply(wire.sock)
    check_framing(data, closed)


# ---------------------------------------------------------------- the run


def check_health(proc: Any, rng: random.Random, baseline_kib: int) -> None:
    assert proc.returncode is None, f"pg_doorman exited with {proc.returncode}"
    value = rng.randrange(1_000_000)
    with psycopg.connect(proc.dsn(), connect_timeout=5, autocommit=True) as conn:
        assert conn.execute("select %s::int * 2", [value]).fetchone() == (value * 2,)
        assert conn.execute("select %s::int + 1", [value], prepare=True).fetchone() == (value + 1,)
        assert conn.execute("select %s::text", [str(value)], prepare=True).fetchone() == (str(value),)
        with conn.transaction():
            assert conn.execute("select count(*) from generate_series(1, 100)").fetchone() == (100,)
    grown_mib = (proc.rss_kib() - baseline_kib) / 1024
    assert grown_mib < RSS_BOUND_MIB, f"RSS grew by {grown_mib:.1f} MiB"


@contextlib.contextmanager
def reproducible(phase: str, index: int, chunks: list[bytes] | None) -> Iterator[None]:
    try:
        yield
    except BaseException as exc:
        sent = b"".join(chunks)[:400] if chunks is not None else b"(health check)"
        raise AssertionError(
            f"fuzz failure: PG_DOORMAN_FUZZ_SEED={SEED} phase={phase} case={index}: {exc}\nsent: {sent!r}"
        ) from exc


def fuzz(proc: Any, phase: str, make_case: Callable[[random.Random], list[bytes]], run: Callable[..., None]) -> int:
    print(f"\nfuzz {phase}: PG_DOORMAN_FUZZ_SEED={SEED}, {FUZZ_SECONDS:g}s")
    check_health(proc, random.Random(0), proc.rss_kib())  # code paths loaded before the baseline
    baseline = proc.rss_kib()
    deadline = time.monotonic() + FUZZ_SECONDS
    index = 0
    while time.monotonic() < deadline:
        for _ in range(BATCH):
            rng = random.Random(f"{SEED}:{phase}:{index}")
            chunks = make_case(rng)
            with reproducible(phase, index, chunks):
                run(proc.port, chunks)
            index += 1
        with reproducible(phase, index - 1, None):
            check_health(proc, random.Random(f"{SEED}:{phase}:health:{index}"), baseline)
    print(f"fuzz {phase}: {index} cases, RSS {(proc.rss_kib() - baseline) / 1024:+.1f} MiB")
    return index


@pytest.fixture
def fuzz_target(pg_trust: TempPostgres, doorman: Callable[..., Any], pool_config: Callable[..., Any]) -> Any:
    users = [{"username": "app", "password": md5_verifier(PASSWORD, "app")}]
    general = {"max_message_size": "1MB", "client_login_timeout": "2s"}
    return doorman(pool_config(pg_trust, users, pool_size=3, general=general))


def test_fuzz_startup_packets(fuzz_target: Any) -> None:
    assert fuzz(fuzz_target, "startup", startup_case, run_startup_case) >= BATCH


def test_fuzz_messages_after_login(fuzz_target: Any) -> None:
    assert fuzz(fuzz_target, "session", session_case, run_session_case) >= BATCH


# ---------------------------------------------------------------- regressions found by the fuzzer


def test_unknown_message_type_is_refused_by_the_pooler_without_costing_a_server(fuzz_target: Any) -> None:
    """Found by seed 3543613687: a logged-in client's message of an unknown type (b"4") went to PostgreSQL, which
    closed that server with its own FATAL, followed by the pooler's "server closed the connection unexpectedly".
    Now the pooler answers one FATAL 08P01 itself (as PostgreSQL would) and the pooled servers live on."""
    check_health(fuzz_target, random.Random(1), fuzz_target.rss_kib())
    opened_before = fuzz_target.log_text().count("opened server")
    for kind in (b"4", b"p", b"\x00", b"\xff", b"V"):
        with RawWire(fuzz_target.port, 5.0) as wire:
            wire.login(LOGIN, PASSWORD)
            wire.send(frame(kind, b"junk") + query("select 1"))
            data, closed = read_reply(wire.sock)
        assert closed
        check_framing(data, closed)
        fields = error_map(data[5:])
        assert (fields["S"], fields["C"]) == ("FATAL", "08P01"), fields
        assert fields["M"] == f"invalid frontend message type {kind[0]}", fields
        assert "F" not in fields, "the error must come from the pooler, not from a PostgreSQL backend"
    check_health(fuzz_target, random.Random(2), fuzz_target.rss_kib())
    assert fuzz_target.log_text().count("opened server") == opened_before
