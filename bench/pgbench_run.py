"""Run pgbench once and turn its output and per-transaction log into numbers."""

from __future__ import annotations

import glob
import math
import os
import re
import resource
import subprocess
from dataclasses import asdict, dataclass, field
from typing import Any

PGBENCH = "pgbench"


@dataclass
class PgbenchResult:
    ok: bool
    command: list[str]
    tps: float | None = None
    transactions: int | None = None
    failed: int | None = None
    latency_avg_ms: float | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    p999_ms: float | None = None
    max_ms: float | None = None
    samples: int = 0
    elapsed_s: float | None = None
    # CPU used by pgbench itself (µs per transaction), to see when the client is the bottleneck.
    pgbench_user_us: float | None = None
    pgbench_sys_us: float | None = None
    error: str | None = None
    output_tail: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


_RE_TPS = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.M)
_RE_TPS_ANY = re.compile(r"^tps = ([0-9.]+)", re.M)
_RE_TX = re.compile(r"^number of transactions actually processed: (\d+)", re.M)
_RE_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.M)
_RE_LAT = re.compile(r"^latency average = ([0-9.]+) ms", re.M)


def percentile(sorted_values: list[int], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    n = len(sorted_values)
    rank = max(1, math.ceil(q * n))
    return float(sorted_values[min(n, rank) - 1])


def read_latencies_us(prefix: str) -> list[int]:
    """Latencies (µs) from pgbench's per-transaction logs ``PREFIX.PID[.THREAD]``; removes the files.

    Line format: ``client_id transaction_no time script_no time_epoch time_us [...]`` where ``time`` is the
    transaction's latency in µs (or ``failed``/``skipped`` for transactions that did not complete).
    """
    values: list[int] = []
    for path in glob.glob(glob.escape(prefix) + ".*"):
        with open(path, "rb") as f:
            for line in f:
                parts = line.split(maxsplit=3)
                if len(parts) >= 3 and parts[2].isdigit():
                    values.append(int(parts[2]))
        os.unlink(path)
    return values


def run(
    *,
    host: str,
    port: int,
    user: str,
    database: str,
    password: str | None,
    protocol: str,
    clients: int,
    threads: int,
    duration: int,
    sampling_rate: float,
    log_prefix: str,
    select_only: bool = True,
    extra_env: dict[str, str] | None = None,
) -> PgbenchResult:
    cmd = [
        PGBENCH,
        "-n",
        *(["-S"] if select_only else []),
        "-M",
        protocol,
        "-c",
        str(clients),
        "-j",
        str(threads),
        "-T",
        str(duration),
        "-h",
        host,
        "-p",
        str(port),
        "-U",
        user,
        "-l",
        "--log-prefix",
        log_prefix,
        "--sampling-rate",
        str(sampling_rate),
        database,
    ]
    env = dict(os.environ)
    env.update({"PGSSLMODE": "disable", "LC_ALL": "C", "PGAPPNAME": "pgbench"})
    if password is not None:
        env["PGPASSWORD"] = password
    env.update(extra_env or {})

    # Stale logs from an interrupted run would be mixed in.
    for path in glob.glob(glob.escape(log_prefix) + ".*"):
        os.unlink(path)

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        proc = subprocess.run(
            cmd,
            env=env,
            capture_output=True,
            text=True,
            timeout=duration + 120 + clients * 0.1,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        read_latencies_us(log_prefix)
        return PgbenchResult(ok=False, command=cmd, error=f"pgbench timed out after {exc.timeout:.0f}s")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)

    out = proc.stdout + proc.stderr
    tail = out.strip().splitlines()[-15:]
    res = PgbenchResult(ok=False, command=cmd, output_tail=tail)
    m = _RE_TPS.search(out) or _RE_TPS_ANY.search(out)
    if m:
        res.tps = float(m.group(1))
    if m := _RE_TX.search(out):
        res.transactions = int(m.group(1))
    if m := _RE_FAILED.search(out):
        res.failed = int(m.group(1))
    if m := _RE_LAT.search(out):
        res.latency_avg_ms = float(m.group(1))

    lat = read_latencies_us(log_prefix)
    lat.sort()
    res.samples = len(lat)
    if lat:
        res.p50_ms = percentile(lat, 0.50) / 1000
        res.p90_ms = percentile(lat, 0.90) / 1000
        res.p99_ms = percentile(lat, 0.99) / 1000
        res.p999_ms = percentile(lat, 0.999) / 1000
        res.max_ms = lat[-1] / 1000
    if res.transactions:
        res.pgbench_user_us = (after.ru_utime - before.ru_utime) * 1e6 / res.transactions
        res.pgbench_sys_us = (after.ru_stime - before.ru_stime) * 1e6 / res.transactions

    if proc.returncode != 0:
        # The server's error text says most ("prepared statement ... does not exist"); pgbench's own last
        # line ("Run was aborted") least.
        server_errors = [ln.split("ERROR:", 1)[1].strip() for ln in tail if "ERROR:" in ln]
        detail = server_errors[-1] if server_errors else " | ".join(tail[-3:])
        res.error = f"pgbench exited with {proc.returncode}: {detail}"
    elif res.tps is None or not res.transactions:
        res.error = "pgbench reported no transactions: " + " | ".join(tail[-4:])
    else:
        res.ok = True
    return res


def initialize(*, host: str, port: int, user: str, database: str, password: str | None, scale: int) -> None:
    env = dict(os.environ, PGSSLMODE="disable", LC_ALL="C")
    if password is not None:
        env["PGPASSWORD"] = password
    cmd = [PGBENCH, "-i", "-q", "-s", str(scale), "-h", host, "-p", str(port), "-U", user, database]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"pgbench -i failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")


def version() -> str:
    try:
        return subprocess.run([PGBENCH, "--version"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError as exc:
        return f"unknown ({exc})"
