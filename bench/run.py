#!/usr/bin/env python3
"""pgbench against PostgreSQL direct, PgBouncer and pg_doorman in one run.

    .venv/bin/python bench/run.py [--targets direct,pgbouncer,pg_doorman] [--modes simple,extended,prepared]
                                  [--clients 1,10,100,500] [--duration 10] [--rounds 2] [--pool-size 20]
                                  [--idle-clients 2000] [--tls]

See bench/README.md for what is measured and how to read the tables.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import pwd
import resource
import shutil
import signal
import statistics
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

import pgbench_run  # noqa: E402
import pgwire  # noqa: E402
import procstat  # noqa: E402
from targets import Credentials, Direct, PgBouncer, PgDoorman, Target, TargetError  # noqa: E402

ALL_TARGETS = ("direct", "pgbouncer", "pg_doorman", "pg_doorman_baseline")
ALL_MODES = ("simple", "extended", "prepared")
USER = "bench"
PASSWORD = "bench_pw"
DATABASE = "bench"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def csv_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip() and v.strip() != "none"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="pgbench -S against PostgreSQL direct, PgBouncer and pg_doorman (interleaved runs).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--targets", default=",".join(ALL_TARGETS[:3]), help="comma list of " + ",".join(ALL_TARGETS))
    p.add_argument(
        "--modes",
        default=",".join(ALL_MODES),
        help="pgbench -M protocols (comma list; 'none' to only measure idle clients). PgBouncer 1.18 has no "
        "protocol-level prepared statements in transaction mode: in 'prepared' it runs -M extended",
    )
    p.add_argument("--clients", default="1,10,100,500", help="comma list of pgbench client counts")
    p.add_argument(
        "--baseline-src",
        type=Path,
        help="the src/ of another checkout (built in place) to run as target pg_doorman_baseline, so a change is "
        "measured against the code before it in the same run",
    )
    p.add_argument(
        "--tls",
        action="store_true",
        help="clients connect to the poolers over TLS (pgbench with PGSSLMODE=require; PgBouncer client_tls_*, "
        "pg_doorman tls_*, both 'allow' with the same test certificate); the poolers talk to PostgreSQL in plain",
    )
    p.add_argument(
        "--server-tls",
        action="store_true",
        help="the poolers talk to PostgreSQL over TLS (PostgreSQL with ssl = on; PgBouncer server_tls_sslmode, "
        "pg_doorman server_tls_mode, both 'require'); pgbench and direct stay plain",
    )
    p.add_argument("--duration", type=int, default=10, help="seconds per pgbench run")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds per (mode, clients)")
    p.add_argument("--pool-size", type=int, default=20, help="server connections per pooler")
    p.add_argument("--threads", type=int, default=2, help="pgbench -j = min(clients, THREADS), all targets")
    p.add_argument("--scale", type=int, default=10, help="pgbench -i scale factor")
    p.add_argument("--sampling-rate", type=float, default=0.1, help="fraction of transactions logged for p50/p99")
    p.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured pgbench per target first")
    p.add_argument("--auth", default="md5", choices=["trust", "md5", "scram-sha-256"])
    p.add_argument(
        "--stored-password",
        default="plain",
        choices=["plain", "hash"],
        help="what both poolers are given as the password (PgBouncer auth_file, pg_doorman "
        "users[].password): the plain password or PostgreSQL's stored verifier (md5... or SCRAM-SHA-256$...)",
    )
    p.add_argument(
        "--idle-clients",
        type=int,
        default=0,
        help="also measure each pooler's RSS with N idle logged-in clients (0 = skip)",
    )
    p.add_argument("--pgbouncer", default="/usr/sbin/pgbouncer", help="PgBouncer binary")
    p.add_argument(
        "--doorman-cmd",
        default=None,
        help="command line that starts pg_doorman, with {python} and {config} placeholders "
        "(default: '{python} -m pg_doorman {config}', run with src/ on PYTHONPATH)",
    )
    p.add_argument("--start-timeout", type=float, default=20.0, help="seconds for a pooler to accept logins")
    p.add_argument("--results-dir", default=str(BENCH_DIR / "results"), help="where <timestamp>.json is written")
    args = p.parse_args(argv)
    args.targets = csv_list(args.targets)
    args.modes = csv_list(args.modes)
    args.clients = [int(c) for c in csv_list(args.clients)]
    for t in args.targets:
        if t not in ALL_TARGETS:
            p.error(f"unknown target {t!r} (choose from {', '.join(ALL_TARGETS)})")
    for m in args.modes:
        if m not in ALL_MODES:
            p.error(f"unknown mode {m!r} (choose from {', '.join(ALL_MODES)})")
    if not args.targets:
        p.error("no targets")
    if args.rounds < 1 or args.duration < 1 or any(c < 1 for c in args.clients):
        p.error("--rounds, --duration and --clients must be positive")
    return args


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _terminate(signum: int, _frame: object) -> None:
    log(f"signal {signum}: stopping everything started ...")
    raise SystemExit(128 + signum)


# --------------------------------------------------------------------------------------------- runs


def protocol_for(target: str, mode: str) -> str:
    if mode == "prepared" and target == "pgbouncer":
        return "extended"  # PgBouncer 1.18: no protocol-level prepared statements in transaction mode
    return mode


def run_one(target: Target, mode: str, clients: int, args: argparse.Namespace, logdir: Path) -> dict[str, Any]:
    protocol = protocol_for(target.name, mode)
    pid = target.pid()
    cpu_before = procstat.tree_cpu(pid) if pid else None
    machine_before = procstat.machine_ticks()
    started = time.time()
    res = pgbench_run.run(
        host=target.host,
        port=target.port,
        user=USER,
        database=DATABASE,
        password=PASSWORD,
        protocol=protocol,
        clients=clients,
        threads=min(clients, args.threads),
        duration=args.duration,
        sampling_rate=args.sampling_rate,
        log_prefix=str(logdir / f"{target.name}"),
        extra_env=sslmode_env(target, args),
    )
    out: dict[str, Any] = {
        "target": target.name,
        "mode": mode,
        "protocol": protocol,
        "clients": clients,
        "threads": min(clients, args.threads),
        "started": started,
        **res.to_json(),
    }
    busy, total = (a - b for a, b in zip(procstat.machine_ticks(), machine_before, strict=True))
    out["machine_busy_pct"] = 100.0 * busy / total if total else None
    if pid and cpu_before is not None:
        used = procstat.tree_cpu(pid) - cpu_before
        out["pooler_cpu_user_s"] = used.user
        out["pooler_cpu_sys_s"] = used.system
        if res.transactions:
            out["cpu_user_us_per_tx"] = used.user * 1e6 / res.transactions
            out["cpu_sys_us_per_tx"] = used.system * 1e6 / res.transactions
    if not target.alive():
        out["ok"] = False
        out["error"] = f"{target.name} process died during the run"
    return out


def sslmode_env(target: Target, args: argparse.Namespace) -> dict[str, str]:
    """--tls: pgbench insists on TLS to the poolers (PostgreSQL itself is plain here)."""
    if not args.tls:
        return {}
    return {"PGSSLMODE": "disable" if target.name == "direct" else "require"}


def tls_files(work: Path) -> dict[str, str]:
    """A test CA and server certificate (devcluster.generate_certificates) readable by PgBouncer's user."""
    from pg_doorman.devcluster import generate_certificates

    directory = work / "tls"
    files = generate_certificates(str(directory))
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        for path in (directory, Path(files.server_cert), Path(files.server_key)):
            os.chown(path, pw.pw_uid, pw.pw_gid)
    directory.chmod(0o755)
    return {"cert": files.server_cert, "key": files.server_key}


def fmt_run(r: dict[str, Any]) -> str:
    if not r["ok"]:
        return f"FAILED: {r.get('error')}"
    s = f"{r['tps']:>9.0f} tps  p50 {r['p50_ms']:.3f} ms  p99 {r['p99_ms']:.3f} ms"
    if "cpu_user_us_per_tx" in r:
        s += f"  cpu {r['cpu_user_us_per_tx']:.1f}+{r['cpu_sys_us_per_tx']:.1f} µs/tx"
    if r.get("machine_busy_pct") is not None:
        s += f"  (box {r['machine_busy_pct']:.0f}% busy)"
    return s


def warmup(targets: list[Target], args: argparse.Namespace, logdir: Path) -> None:
    if args.warmup <= 0:
        return
    for t in targets:
        res = pgbench_run.run(
            host=t.host,
            port=t.port,
            user=USER,
            database=DATABASE,
            password=PASSWORD,
            protocol="simple",
            clients=args.pool_size,
            threads=min(args.pool_size, args.threads),
            duration=args.warmup,
            sampling_rate=0.01,
            log_prefix=str(logdir / "warmup"),
            extra_env=sslmode_env(t, args),
        )
        log(f"  warm-up {t.name:<10} {res.tps or 0:>9.0f} tps" + ("" if res.ok else f"  ({res.error})"))


# ---------------------------------------------------------------------------------------- idle RSS


async def _idle_rss(target: Target, count: int) -> dict[str, Any]:
    pid = target.pid()
    assert pid is not None
    before = procstat.rss_kib(pid)
    t0 = time.monotonic()
    writers, errors = await pgwire.hold_idle(target.host, target.port, USER, DATABASE, PASSWORD, count)
    connect_s = time.monotonic() - t0
    await asyncio.sleep(1.0)
    after = procstat.rss_kib(pid)
    await pgwire.close_all(writers)
    await asyncio.sleep(0.5)
    released = procstat.rss_kib(pid)
    n = len(writers)
    return {
        "target": target.name,
        "requested": count,
        "connected": n,
        "errors": len(errors),
        "first_errors": errors[:3],
        "connect_seconds": connect_s,
        "rss_before_kib": before,
        "rss_with_clients_kib": after,
        "rss_after_close_kib": released,
        "kib_per_client": (after - before) / n if n else None,
    }


def measure_idle(targets: list[Target], count: int) -> list[dict[str, Any]]:
    out = []
    for t in targets:
        if t.pid() is None:
            continue
        log(f"idle clients: {count} logins to {t.name} ...")
        r = asyncio.run(_idle_rss(t, count))
        log(
            f"  {t.name}: {r['connected']}/{count} connected in {r['connect_seconds']:.1f}s, RSS "
            f"{r['rss_before_kib'] / 1024:.1f} -> {r['rss_with_clients_kib'] / 1024:.1f} MiB"
            + (f" ({r['kib_per_client']:.1f} KiB/client)" if r["kib_per_client"] is not None else "")
            + (f", {r['errors']} failed: {r['first_errors'][0]}" if r["errors"] else "")
        )
        out.append(r)
    return out


# ------------------------------------------------------------------------------------------ report


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[int, dict[str, dict[str, Any]]]]:
    """mode -> clients -> target -> aggregate over the rounds."""
    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["mode"], r["clients"], r["target"]), []).append(r)
    out: dict[str, dict[int, dict[str, dict[str, Any]]]] = {}
    for (mode, clients, target), rs in groups.items():
        ok = [r for r in rs if r["ok"]]
        agg: dict[str, Any] = {
            "protocol": rs[0]["protocol"],
            "runs": len(rs),
            "ok_runs": len(ok),
            "errors": [r["error"] for r in rs if not r["ok"]],
        }
        if ok:
            tps = [r["tps"] for r in ok]
            agg["tps_best"] = max(tps)
            agg["tps_median"] = statistics.median(tps)
            for key in ("p50_ms", "p99_ms", "cpu_user_us_per_tx", "cpu_sys_us_per_tx"):
                vals = [r[key] for r in ok if r.get(key) is not None]
                if vals:
                    agg[key] = statistics.median(vals)
        out.setdefault(mode, {}).setdefault(clients, {})[target] = agg
    return out


def _num(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def render_tables(summary: dict[str, dict[int, dict[str, dict[str, Any]]]], targets: list[str]) -> str:
    lines: list[str] = []
    for mode in ALL_MODES:
        if mode not in summary:
            continue
        lines.append(f"### pgbench -S -M {mode}")
        lines.append("")
        if mode == "prepared":
            lines.append(
                "_PgBouncer 1.18 has no protocol-level prepared statements in transaction mode: its rows "
                "run -M extended, and the ratios compare against that._"
            )
            lines.append("")
        lines.append(
            "| clients | target | tps best | tps median | p50 ms | p99 ms | CPU µs/tx (user+sys) "
            "| tps vs PgBouncer (best / median) |"
        )
        lines.append("|---:|---|---:|---:|---:|---:|---:|---:|")
        for clients in sorted(summary[mode]):
            row = summary[mode][clients]
            base = row.get("pgbouncer", {})
            for name in targets:
                if name not in row:
                    continue
                a = row[name]
                label = name if a["protocol"] == mode else f"{name} ({a['protocol']})"
                if not a["ok_runs"]:
                    err = (a["errors"][0] or "failed").replace("|", "/")[:100]
                    lines.append(f"| {clients} | {label} | FAILED | | | | | {err} |")
                    continue
                cpu = "-"
                if a.get("cpu_user_us_per_tx") is not None:
                    u, s = a["cpu_user_us_per_tx"], a["cpu_sys_us_per_tx"]
                    cpu = f"{u:.1f} + {s:.1f} = {u + s:.1f}"
                ratio = "-"
                if base.get("tps_best"):
                    best = a["tps_best"] / base["tps_best"]
                    ratio = f"{best:.2f} / {a['tps_median'] / base['tps_median']:.2f}"
                flag = "" if a["ok_runs"] == a["runs"] else f" ({a['runs'] - a['ok_runs']} failed)"
                lines.append(
                    f"| {clients} | {label}{flag} | {a['tps_best']:.0f} | {a['tps_median']:.0f} "
                    f"| {_num(a.get('p50_ms'), '.3f')} | {_num(a.get('p99_ms'), '.3f')} | {cpu} | {ratio} |"
                )
        lines.append("")
    return "\n".join(lines)


def render_idle(idle: list[dict[str, Any]]) -> str:
    if not idle:
        return ""
    lines = [
        f"### RSS with {idle[0]['requested']} idle clients",
        "",
        "| target | connected | RSS before MiB | RSS with clients MiB | KiB per client | RSS after close MiB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in idle:
        lines.append(
            f"| {r['target']} | {r['connected']} | {r['rss_before_kib'] / 1024:.1f} "
            f"| {r['rss_with_clients_kib'] / 1024:.1f} | {_num(r['kib_per_client'], '.1f')} "
            f"| {r['rss_after_close_kib'] / 1024:.1f} |"
        )
    return "\n".join(lines) + "\n"


def environment(targets: list[Target], server_version: str) -> dict[str, Any]:
    try:
        import uvloop  # type: ignore[import-not-found]

        uv = uvloop.__version__
    except ImportError:
        uv = None
    return {
        "host": platform.node(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
        "python": sys.version.split()[0],
        "uvloop": uv,
        "postgresql": server_version,
        "pgbench": pgbench_run.version(),
        "targets": {t.name: t.version() for t in targets},
    }


# -------------------------------------------------------------------------------------------- main


def start_postgres(args: argparse.Namespace, work: Path) -> Any:
    from pg_doorman.devcluster import TempPostgres, find_pg_bindir

    pgbench = Path(find_pg_bindir()) / "pgbench"
    if pgbench.exists():
        pgbench_run.PGBENCH = str(pgbench)

    max_conn = max(700, max(args.clients, default=0) + 2 * args.pool_size + 50)
    tls = None
    if args.server_tls:  # PostgreSQL's own certificate (TempPostgres copies it where postgres may read the key)
        from pg_doorman.devcluster import generate_certificates

        tls = generate_certificates(str(work / "pgtls"))
    pg = TempPostgres(
        auth=args.auth,
        settings={"max_connections": str(max_conn), "shared_buffers": "256MB"},
        users={USER: PASSWORD},
        tls=tls,
    )
    return pg


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_fd_limit()
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)

    runs: list[dict[str, Any]] = []
    idle: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        work = Path(tempfile.mkdtemp(prefix="pg_doorman_bench_"))
        work.chmod(0o755)  # PgBouncer runs as postgres and reads its files from a subdirectory
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        logdir = work / "pgbench"
        logdir.mkdir()

        log("starting PostgreSQL ...")
        pg = start_postgres(args, work)
        stack.callback(pg.cleanup)
        pg.start()
        pg_host = pg.host
        server_version = pg.psql("SHOW server_version").strip()
        pg.create_database(DATABASE, owner=USER)
        log(f"PostgreSQL {server_version} on port {pg.port}; pgbench -i -s {args.scale} ...")
        pgbench_run.initialize(
            host=pg_host, port=pg.port, user=USER, database=DATABASE, password=PASSWORD, scale=args.scale
        )

        stored = PASSWORD if args.stored_password == "plain" else pg.role_password_hash(USER)
        creds = Credentials(USER, PASSWORD, DATABASE, args.auth, stored)
        max_clients = max(args.clients, default=0)
        bouncer_tls: list[str] = []
        doorman_tls: dict[str, object] = {}
        if args.tls:
            tls = tls_files(work)
            bouncer_tls = ["client_tls_sslmode = allow", f"client_tls_key_file = {tls['key']}"]
            bouncer_tls.append(f"client_tls_cert_file = {tls['cert']}")
            doorman_tls = {"tls_mode": "allow", "tls_certificate": tls["cert"], "tls_private_key": tls["key"]}
        if args.server_tls:
            bouncer_tls.append("server_tls_sslmode = require")
            doorman_tls["server_tls_mode"] = "require"
        targets: list[Target] = []
        failed_targets: dict[str, str] = {}
        for name in args.targets:
            t: Target
            if name == "direct":
                t = Direct(pg_host, pg.port, server_version)
            elif name == "pgbouncer":
                d = work / "pgbouncer"
                d.mkdir()
                t = PgBouncer(
                    d,
                    creds,
                    server_host=pg_host,
                    server_port=pg.port,
                    pool_size=args.pool_size,
                    max_client_conn=max(2000, args.idle_clients + max_clients + 100),
                    binary=args.pgbouncer,
                    start_timeout=args.start_timeout,
                    extra_settings=bouncer_tls,
                )
            else:
                if name == "pg_doorman_baseline" and args.baseline_src is None:
                    raise SystemExit("target pg_doorman_baseline needs --baseline-src")
                d = work / name
                d.mkdir()
                t = PgDoorman(
                    d,
                    creds,
                    server_host=pg_host,
                    server_port=pg.port,
                    pool_size=args.pool_size,
                    start_timeout=args.start_timeout,
                    command=args.doorman_cmd,
                    src=args.baseline_src if name == "pg_doorman_baseline" else None,
                    name=name,
                    extra_general=dict(doorman_tls),
                )
            stack.callback(t.stop)
            log(f"starting {name} ...")
            try:
                t.start()
            except (TargetError, OSError) as exc:
                failed_targets[name] = str(exc)
                log(f"!! {name} is left out of this run: {exc}")
                t.stop()
                continue
            except ImportError as exc:  # e.g. the package itself cannot be imported yet
                failed_targets[name] = repr(exc)
                log(f"!! {name} is left out of this run: {exc!r}")
                t.stop()
                continue
            log(f"  {name} on 127.0.0.1:{t.port}" + (f" (pid {t.pid()})" if t.pid() else ""))
            targets.append(t)

        env = environment(targets, server_version)
        log(f"environment: {json.dumps(env)}")

        if args.idle_clients > 0:
            idle = measure_idle(targets, args.idle_clients)

        if args.modes:
            log("warm-up ...")
            warmup(targets, args, logdir)

        dead: set[str] = set()
        total = len(args.modes) * len(args.clients) * args.rounds * len(targets)
        done = 0
        for mode in args.modes:
            for clients in args.clients:
                for rnd in range(1, args.rounds + 1):
                    for t in targets:  # interleaved: A B C, A B C, ...
                        done += 1
                        if t.name in dead:
                            continue
                        r = run_one(t, mode, clients, args, logdir)
                        r["round"] = rnd
                        runs.append(r)
                        log(f"[{done}/{total}] {mode:<8} c={clients:<4} round {rnd} {t.name:<10} {fmt_run(r)}")
                        if not t.alive():
                            dead.add(t.name)
                            log(f"!! {t.name} died; its remaining runs are skipped\n{t.log_tail()}")

        summary = summarize(runs)
        sections = [render_tables(summary, [t.name for t in targets]), render_idle(idle)]
        report = "\n".join(s for s in sections if s)
        header = [f"{env['cpus']} CPUs, PostgreSQL {server_version}"]
        header += [v for k, v in env["targets"].items() if k != "direct"]
        header.append(f"auth {args.auth}, pool size {args.pool_size}")
        if args.modes:
            header.append(
                f"pgbench -S {args.duration}s x {args.rounds} interleaved rounds, "
                f"-j min(clients, {args.threads}), latency from {args.sampling_rate:g} of transactions"
            )
        print()
        print("; ".join(header))
        for name, why in failed_targets.items():
            lines = [ln for ln in why.splitlines() if ln.strip()]
            detail = lines[0] + (f" ... {lines[-1].strip()}" if len(lines) > 1 else "")
            print(f"\n**{name} not measured:** {detail}")
        print()
        print(report)

        results_dir = Path(args.results_dir)
        results_dir.mkdir(parents=True, exist_ok=True)
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        path = results_dir / f"{stamp}.json"
        payload = {
            "timestamp": stamp,
            "argv": sys.argv,
            "options": dict(vars(args)),
            "environment": env,
            "failed_targets": failed_targets,
            "summary": {m: {str(c): v for c, v in cs.items()} for m, cs in summary.items()},
            "idle_clients": idle,
            "runs": runs,
        }
        path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        print(f"results: {path}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted; everything started has been stopped")
        sys.exit(130)
    except subprocess.CalledProcessError as exc:
        log(f"error: {exc}")
        sys.exit(1)
