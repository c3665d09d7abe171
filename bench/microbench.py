"""Pure-Python cost of one pooled transaction: client and server callbacks with fake transports (no sockets).

Measures what pg_doorman's own code spends per transaction on the forwarding path, apart from the event loop
and the kernel: `python bench/microbench.py [--mode simple|extended|prepared] [--tracked/--untracked]`.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from tempfile import TemporaryDirectory

from pg_doorman import codes
from pg_doorman.app import Application
from pg_doorman.client import ClientConnection
from pg_doorman.config import load_config
from pg_doorman.protocol import messages
from pg_doorman.server import ServerConnection


class FakeTransport:
    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0

    def write(self, data: bytes) -> None:
        self.n += 1

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def is_closing(self) -> bool:
        return False

    def close(self) -> None: ...


def frontend(mode: str) -> bytes:
    sql = "SELECT abalance FROM pgbench_accounts WHERE aid = $1"
    if mode == "simple":
        return messages.query("SELECT abalance FROM pgbench_accounts WHERE aid = 4242;")
    statement = b"P_0" if mode == "prepared" else b""
    bind = messages.message(b"B", b"\x00" + statement + b"\x00\x00\x00\x00\x01\x00\x00\x00\x044242\x00\x00")
    execute = messages.message(b"E", b"\x00\x00\x00\x00\x00")
    if mode == "prepared":
        return bind + execute + messages.SYNC
    parse = messages.message(b"P", b"\x00" + sql.encode() + b"\x00\x00\x00")
    describe = messages.message(b"D", b"P\x00")
    return parse + bind + describe + execute + messages.SYNC


def backend(mode: str) -> bytes:
    column = b"abalance\x00" + b"\x00" * 6 + b"\x00\x00\x00\x17\x00\x04\xff\xff\xff\xff\x00\x00"
    row_desc = messages.message(b"T", b"\x00\x01" + column)
    row = messages.message(b"D", b"\x00\x01\x00\x00\x00\x010")
    tail = messages.command_complete("SELECT 1") + messages.READY_IDLE
    if mode == "simple":
        return row_desc + row + tail
    if mode == "prepared":
        return messages.BIND_COMPLETE + row + tail
    # The server has the statement after the first transaction, so the pooler does not send Parse again.
    return messages.BIND_COMPLETE + row_desc + row + tail


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", default="simple", choices=["simple", "extended", "prepared"])
    parser.add_argument("--untracked", action="store_true", help="prepared_statements: false")
    parser.add_argument("-n", type=int, default=200_000)
    args = parser.parse_args()
    with TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_text(
            "general: {admin_username: a, admin_password: b, prepared_statements: %s}\n"
            "pools: {db: {users: [{username: u, password: '', pool_size: 1}]}}\n"
            % ("false" if args.untracked else "true")
        )
        app = Application(load_config(path))
    pool = app.registry.pools[("db", "u")]
    server = ServerConnection(pool)
    server.set_transport(FakeTransport())  # type: ignore[arg-type]
    server.state = codes.SERVER_IDLE
    pool.servers.add(server)
    pool.idle.append(server)
    client = ClientConnection(app.context)
    client.set_transport(FakeTransport())  # type: ignore[arg-type]
    client.pool = pool
    client.state = codes.CLIENT_IDLE
    client.transaction_mode = True
    if pool.settings.prepared_statements:
        client.track_statements()
    client.param_token = server.param_token
    if args.mode == "prepared":
        # The client prepared P_0 once, and the server has it.
        parse = messages.message(b"P", b"P_0\x00SELECT abalance FROM pgbench_accounts WHERE aid = $1\x00\x00\x00")
        client.data_received(parse + messages.SYNC)
        server.data_received(messages.PARSE_COMPLETE + messages.READY_IDLE)
    fe, be = frontend(args.mode), backend(args.mode)
    if args.mode == "extended":
        client.data_received(fe)
        server.data_received(messages.PARSE_COMPLETE + be)
    for _ in range(1000):
        client.data_received(fe)
        server.data_received(be)
    ledger = server.ledger
    state = ([e.code for e in ledger.expect], ledger.pending_z, ledger.unsynced, chr(ledger.tx_status))
    assert client.server is None and pool.idle, ("server not released", state)
    t0 = time.perf_counter()
    for _ in range(args.n):
        client.data_received(fe)
        server.data_received(be)
    dt = time.perf_counter() - t0
    print(f"{args.mode} tracked={not args.untracked}: {dt / args.n * 1e6:.2f} µs per transaction (Python only)")


if __name__ == "__main__":
    asyncio.run(main())
