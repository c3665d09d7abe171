"""The things pgbench is pointed at: PostgreSQL itself, PgBouncer and pg_doorman."""

from __future__ import annotations

import contextlib
import os
import pwd
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pgwire
import procstat
import yaml

REPO = Path(__file__).resolve().parent.parent
PGBOUNCER = "/usr/sbin/pgbouncer"


class TargetError(Exception):
    pass


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str  # what clients send
    database: str
    auth: str  # trust | md5 | scram-sha-256
    stored: str  # what the poolers are configured with: the password or PostgreSQL's verifier (md5…/SCRAM…)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _output(argv: list[str], env: dict[str, str] | None = None) -> str:
    """A command's stripped stdout, or "" when it cannot run."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=False, env=env).stdout.strip()
    except OSError:
        return ""


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:]) or "(empty log)"


class Target:
    name = "?"
    host = "127.0.0.1"
    port = 0

    def pid(self) -> int | None:
        """The pooler's main process (CPU and RSS are read for its process tree); None for PostgreSQL."""
        return None

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def alive(self) -> bool:
        return True

    def version(self) -> str:
        return ""

    def log_tail(self) -> str:
        return ""


class Direct(Target):
    name = "direct"

    def __init__(self, host: str, port: int, server_version: str = "") -> None:
        self.host = host
        self.port = port
        self._version = server_version

    def version(self) -> str:
        return self._version


class _Process(Target):
    """A pooler run as a child process in its own session (so it is signalled as a group)."""

    def __init__(self, workdir: Path, creds: Credentials, start_timeout: float) -> None:
        self.workdir = workdir
        self.creds = creds
        self.start_timeout = start_timeout
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.stdout_path = workdir / "stdout.log"

    def _spawn(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        with open(self.stdout_path, "wb") as out:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=env,
                start_new_session=True,
            )

    def _wait_ready(self) -> None:
        try:
            pgwire.wait_ready(
                self.host,
                self.port,
                self.creds.user,
                self.creds.database,
                self.creds.password,
                timeout=self.start_timeout,
                still_running=self.alive,
            )
        except pgwire.LoginError as exc:
            raise TargetError(f"{self.name} did not come up: {exc}\n--- log tail ---\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        main = self.pid()
        if main is not None and main != proc.pid and procstat.alive(main):
            # Stop the pooler under its wrapper first, so that the wrapper reaps it and exits.
            with contextlib.suppress(ProcessLookupError):
                os.kill(main, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while procstat.alive(main) and time.monotonic() < deadline:
                time.sleep(0.05)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)  # the wrapper reaps the pooler and exits with it
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        # Anything left in the group (e.g. a pooler child that outlived the wrapper).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    def log_tail(self) -> str:
        return _tail(self.stdout_path)


class PgBouncer(_Process):
    name = "pgbouncer"

    def __init__(
        self,
        workdir: Path,
        creds: Credentials,
        *,
        server_host: str,
        server_port: int,
        pool_size: int,
        max_client_conn: int,
        binary: str = PGBOUNCER,
        run_as: str = "postgres",
        start_timeout: float = 20.0,
        extra_settings: list[str] | None = None,
    ) -> None:
        super().__init__(workdir, creds, start_timeout)
        self.extra_settings = extra_settings or []  # more [pgbouncer] lines, e.g. client_tls_* (bench/run.py --tls)
        self.binary = binary
        self.run_as = run_as
        self.server_host = server_host
        self.server_port = server_port
        self.pool_size = pool_size
        self.max_client_conn = max_client_conn
        self._pid: int | None = None

    def start(self) -> None:
        c = self.creds
        ini = self.workdir / "pgbouncer.ini"
        userlist = self.workdir / "userlist.txt"
        auth_type = c.auth
        userlist.write_text(f'"{c.user}" "{c.stored}"\n')
        ini.write_text(
            "\n".join(
                [
                    "[databases]",
                    f"{c.database} = host={self.server_host} port={self.server_port} dbname={c.database}",
                    "",
                    "[pgbouncer]",
                    "listen_addr = 127.0.0.1",
                    f"listen_port = {self.port}",
                    "unix_socket_dir =",
                    f"auth_type = {auth_type}",
                    f"auth_file = {userlist}",
                    "pool_mode = transaction",
                    f"default_pool_size = {self.pool_size}",
                    f"max_client_conn = {self.max_client_conn}",
                    "ignore_startup_parameters = extra_float_digits,options",
                    f"logfile = {self.workdir / 'pgbouncer.log'}",
                    f"pidfile = {self.workdir / 'pgbouncer.pid'}",
                    "log_connections = 0",
                    "log_disconnections = 0",
                    *self.extra_settings,
                    "",
                ]
            )
        )
        pw = pwd.getpwnam(self.run_as)
        for p in (self.workdir, ini, userlist):
            os.chown(p, pw.pw_uid, pw.pw_gid)
        # runuser goes through PAM, which leaves a soft fd limit of 1024: raise it (to the hard limit if
        # 65536 is above it) before exec'ing pgbouncer.
        script = (
            'ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"; '
            f"exec {shlex.quote(self.binary)} {shlex.quote(str(ini))}"
        )
        argv = ["sh", "-c", script]
        if os.geteuid() == 0:  # pgbouncer refuses to run as root
            argv = ["runuser", "-u", self.run_as, "--", *argv]
        self._spawn(argv)
        self._wait_ready()
        assert self.proc is not None
        self._pid = procstat.find_descendant(self.proc.pid, "pgbouncer")
        if self._pid is None:
            raise TargetError("pgbouncer accepts logins but its process was not found under the wrapper")

    def pid(self) -> int | None:
        return self._pid

    def alive(self) -> bool:
        if self._pid is not None:
            return procstat.alive(self._pid)
        return super().alive()

    def version(self) -> str:
        try:
            out = subprocess.run([self.binary, "--version"], capture_output=True, text=True, check=False)
        except OSError as exc:
            return f"unknown ({exc})"
        return out.stdout.strip().splitlines()[0] if out.stdout.strip() else "unknown"

    def log_tail(self) -> str:
        return _tail(self.workdir / "pgbouncer.log") + "\n" + _tail(self.stdout_path, 5)


class PgDoorman(_Process):
    name = "pg_doorman"

    def __init__(
        self,
        workdir: Path,
        creds: Credentials,
        *,
        server_host: str,
        server_port: int,
        pool_size: int,
        start_timeout: float = 20.0,
        extra_general: dict[str, object] | None = None,
        command: str | None = None,
        src: Path | None = None,
        name: str = "pg_doorman",
    ) -> None:
        super().__init__(workdir, creds, start_timeout)
        # Another checkout's src/ (with its own compiled build) runs as a second target, e.g. the last release.
        self.src = src or REPO / "src"
        self.name = name
        self.server_host = server_host
        self.server_port = server_port
        self.pool_size = pool_size
        self.extra_general = extra_general or {}
        self.command = command

    def config(self) -> dict[str, object]:
        c = self.creds
        general: dict[str, object] = {
            "host": "127.0.0.1",
            "port": self.port,
            "admin_username": "admin",
            "admin_password": "admin",
            "log_client_connections": False,
            "log_client_disconnections": False,
        }
        general.update(self.extra_general)
        return {
            "general": general,
            "pools": {
                c.database: {
                    "server_host": self.server_host,
                    "server_port": self.server_port,
                    "pool_mode": "transaction",
                    "users": [
                        {
                            "username": c.user,
                            "password": c.stored,
                            "pool_size": self.pool_size,
                        }
                    ],
                }
            },
        }

    def start(self) -> None:
        cfg = self.workdir / "pg_doorman.yaml"
        cfg.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        env = dict(os.environ)
        # Run from the work tree even when the package is not installed in the interpreter.
        src = str(self.src)
        env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.setdefault("PYTHONUNBUFFERED", "1")
        if self.command:
            argv = [a.format(python=sys.executable, config=cfg) for a in shlex.split(self.command)]
        else:
            argv = [sys.executable, "-m", "pg_doorman", str(cfg)]
        self._spawn(argv, env=env)
        time.sleep(0.1)
        self._wait_ready()

    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def version(self) -> str:
        rev = _output(["git", "-C", str(self.src), "describe", "--always", "--dirty"])
        hot_path = _output(
            [sys.executable, "-c", "import pg_doorman; print(pg_doorman.implementation())"],
            env=dict(os.environ, PYTHONPATH=str(self.src)),
        )
        return f"pg_doorman {rev or '(no git)'} on Python {sys.version.split()[0]}, hot path {hot_path or '?'}"
