#!/usr/bin/env python3
"""Garbage-collection stalls with many clients: ``SELECT 1`` latency while thousands of idle clients are held and
logins / disconnects churn.

    .venv/bin/python bench/gc_stall.py [--clients 10000] [--seconds 30] [--gc tuned|default] [--gc both]

Starts a throwaway PostgreSQL and pg_doorman (``-l debug``, so that it logs every full collection with its
pause), opens ``--clients`` idle logged-in clients, then for ``--seconds``: ``--churn`` clients log in and out
back to back, and every ``--burst-every`` seconds ``--burst`` of the idle clients disconnect and as many new ones
log in. Meanwhile a probe process of its own runs ``SELECT 1`` one after another on one connection and records
each round trip. Prints p50 / p99 / p99.9 / max of the probe, the number of round trips over 10 / 50 ms, and the
pooler's full collections (count, total and longest pause) for each ``--gc`` policy (``PG_DOORMAN_GC``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import re
import resource
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))
if str(REPO / "src") not in sys.path:
    sys.path.append(str(REPO / "src"))

import pgwire  # noqa: E402
import procstat  # noqa: E402
from targets import Credentials, PgDoorman  # noqa: E402

USER = "bench"
PASSWORD = "bench_pw"
DATABASE = "bench"
GC_LINE = re.compile(r"gc: generation (\d) collection took ([0-9.]+) ms \(([0-9.]+) ms CPU\)")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--clients", type=int, default=10_000, help="idle logged-in clients held open")
    p.add_argument("--seconds", type=float, default=30.0, help="how long the probe runs while logins churn")
    p.add_argument("--churn", type=int, default=8, help="clients logging in and out back to back")
    p.add_argument("--burst", type=int, default=1000, help="idle clients replaced at once every --burst-every s")
    p.add_argument("--burst-every", type=float, default=5.0)
    p.add_argument("--pool-size", type=int, default=10)
    p.add_argument("--gc", default="both", choices=("tuned", "default", "both"), help="PG_DOORMAN_GC for the pooler")
    p.add_argument("--src", type=Path, help="run pg_doorman from another checkout's src/ (built in place)")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--probe", nargs=4, metavar=("PORT", "USER", "DATABASE", "SECONDS"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------- the probe


def _read_message(sock: socket.socket, buf: bytearray) -> tuple[bytes, bytes]:
    while True:
        if len(buf) >= 5:
            length = struct.unpack_from("!i", buf, 1)[0]
            if len(buf) >= 1 + length:
                kind, body = bytes(buf[:1]), bytes(buf[5 : 1 + length])
                del buf[: 1 + length]
                return kind, body
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("the pooler closed the probe's connection")
        buf += data


def probe(port: int, user: str, database: str, seconds: float) -> None:
    """Blocking ``SELECT 1`` round trips for ``seconds``; prints a JSON list of round-trip seconds."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    params = f"user\0{user}\0database\0{database}\0application_name\0gc_stall_probe\0\0".encode()
    body = struct.pack("!i", 196608) + params
    sock.sendall(struct.pack("!i", len(body) + 4) + body)
    buf = bytearray()
    while True:
        kind, payload = _read_message(sock, buf)
        if kind == b"R" and struct.unpack_from("!i", payload)[0] == 5:
            inner = hashlib.md5((PASSWORD + user).encode()).hexdigest()
            digest = b"md5" + hashlib.md5(inner.encode() + payload[4:8]).hexdigest().encode() + b"\0"
            sock.sendall(b"p" + struct.pack("!i", len(digest) + 4) + digest)
        elif kind == b"E":
            raise SystemExit(f"probe login failed: {payload!r}")
        elif kind == b"Z":
            break
    query = b"Q" + struct.pack("!i", 4 + 9) + b"SELECT 1\0"
    samples: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.perf_counter()
        sock.sendall(query)
        while _read_message(sock, buf)[0] != b"Z":
            pass
        samples.append(time.perf_counter() - t0)
    sock.close()
    print(json.dumps(samples))


def summarize(samples: list[float]) -> dict[str, Any]:
    ordered = sorted(samples)

    def rank(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3

    return {
        "queries": len(ordered),
        "p50_ms": rank(0.50),
        "p99_ms": rank(0.99),
        "p999_ms": rank(0.999),
        "max_ms": ordered[-1] * 1e3,
        "over_10ms": sum(1 for s in ordered if s > 0.010),
        "over_50ms": sum(1 for s in ordered if s > 0.050),
    }


# ------------------------------------------------------------------------------------------- the load


async def _churn(port: int, stop: asyncio.Event, counts: dict[str, int]) -> None:
    while not stop.is_set():
        try:
            _, writer = await pgwire.login("127.0.0.1", port, USER, DATABASE, PASSWORD, timeout=30)
            pgwire.close(writer)
            counts["churn"] += 1
        except Exception:
            counts["errors"] += 1
            await asyncio.sleep(0.05)


async def _bursts(
    port: int, idle: list[asyncio.StreamWriter], args: argparse.Namespace, stop: asyncio.Event, counts: dict[str, int]
) -> None:
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), args.burst_every)
        if stop.is_set():
            return
        leaving = [idle.pop(0) for _ in range(min(args.burst, len(idle)))]
        for writer in leaving:
            pgwire.close(writer)
        fresh, errors = await pgwire.hold_idle("127.0.0.1", port, USER, DATABASE, PASSWORD, len(leaving))
        idle.extend(fresh)
        counts["burst"] += len(fresh)
        counts["errors"] += len(errors)


async def _measure(port: int, pid: int, log_path: Path, args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.monotonic()
    idle, errors = await pgwire.hold_idle("127.0.0.1", port, USER, DATABASE, PASSWORD, args.clients, concurrency=64)
    log(f"  {len(idle)} idle clients in {time.monotonic() - t0:.1f}s ({len(errors)} errors: {errors[:2]})")
    rss_idle = procstat.rss_kib(pid)
    log_offset = log_path.stat().st_size  # the collections that count are those while the probe runs
    probe_proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--probe",
        str(port),
        USER,
        DATABASE,
        str(args.seconds),
        stdout=subprocess.PIPE,
    )
    stop = asyncio.Event()
    counts = {"churn": 0, "burst": 0, "errors": 0}
    load = [asyncio.create_task(_churn(port, stop, counts)) for _ in range(args.churn)]
    load.append(asyncio.create_task(_bursts(port, idle, args, stop, counts)))
    out, _ = await probe_proc.communicate()
    stop.set()
    await asyncio.gather(*load, return_exceptions=True)
    rss_end = procstat.rss_kib(pid)
    await pgwire.close_all(idle)
    if probe_proc.returncode != 0:
        raise RuntimeError(f"the probe failed (exit {probe_proc.returncode})")
    result = summarize(json.loads(out))
    with open(log_path, "rb") as pooler_log:
        pooler_log.seek(log_offset)
        lines = [m.groups() for m in GC_LINE.finditer(pooler_log.read().decode(errors="replace"))]
    pauses = [float(wall) for gen, wall, _ in lines if gen == "2"]
    cpu = [float(cpu) for gen, _, cpu in lines if gen == "2"]
    young = [float(wall) for gen, wall, _ in lines if gen != "2"]  # logged only when >= 50 ms
    result.update(
        logins_churned=counts["churn"],
        logins_in_bursts=counts["burst"],
        login_errors=counts["errors"],
        idle_clients=len(idle),
        rss_idle_mib=rss_idle / 1024,
        rss_end_mib=rss_end / 1024,
        full_collections=len(pauses),
        gc_pause_total_ms=sum(pauses),
        gc_pause_max_ms=max(pauses, default=0.0),
        gc_cpu_max_ms=max(cpu, default=0.0),
        young_over_50ms=len(young),
    )
    return result


def run_policy(policy: str, pg: Any, creds: Credentials, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    workdir = work / policy
    workdir.mkdir()
    doorman = PgDoorman(
        workdir,
        creds,
        server_host=pg.host,
        server_port=pg.port,
        pool_size=args.pool_size,
        extra_general={"max_connections": args.clients + 2 * args.burst + args.churn + 100},
        command="{python} -m pg_doorman -l debug {config}",
        src=args.src,
    )
    os.environ["PG_DOORMAN_GC"] = policy  # the pooler inherits the bench's environment
    doorman.start()
    try:
        pid = doorman.pid()
        assert pid is not None
        log(f"gc policy {policy}: pg_doorman pid {pid} on port {doorman.port}")
        result = asyncio.run(_measure(doorman.port, pid, doorman.stdout_path, args))
    finally:
        doorman.stop()
    result["gc"] = policy
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.probe:
        port, user, database, seconds = args.probe
        probe(int(port), user, database, float(seconds))
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    needed = args.clients + 2 * args.burst + args.churn + 200
    if hard < needed:
        log(f"warning: the open-files hard limit {hard} is below the {needed} this run needs")
    from pg_doorman.devcluster import TempPostgres

    policies = ("default", "tuned") if args.gc == "both" else (args.gc,)
    results = []
    work = Path(tempfile.mkdtemp(prefix="pg_doorman_gcstall_"))
    pg = TempPostgres(auth="md5", settings={"max_connections": "200"}, users={USER: PASSWORD})
    try:
        pg.start()
        pg.create_database(DATABASE, owner=USER)
        # the md5 verifier: the pooler then asks clients for md5 (the probe's blocking login speaks only that)
        creds = Credentials(USER, PASSWORD, DATABASE, "md5", pg.role_password_hash(USER))
        for policy in policies:
            results.append(run_policy(policy, pg, creds, args, work))
    finally:
        pg.cleanup()
        if os.environ.get("GC_STALL_KEEP") is None:
            shutil.rmtree(work, ignore_errors=True)
    cols = ("gc", "queries", "p50_ms", "p99_ms", "p999_ms", "max_ms", "over_10ms", "over_50ms")
    cols += ("full_collections", "gc_pause_max_ms", "gc_cpu_max_ms", "gc_pause_total_ms", "young_over_50ms")
    cols += ("logins_churned", "logins_in_bursts")
    cols += ("login_errors", "rss_idle_mib", "rss_end_mib")
    print(
        f"{args.clients} idle clients, {args.churn} churning logins, {args.burst} replaced every "
        f"{args.burst_every:g}s, {args.seconds:g}s of SELECT 1\n"
    )
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in results:
        cells = [f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c]) for c in cols]
        print("| " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args), "results": results}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
