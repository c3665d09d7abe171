"""A throwaway PostgreSQL cluster for tests, the benchmark and the no-config demo.

``TempPostgres`` runs ``initdb`` into a fresh directory under ``/tmp``, writes a pg_hba.conf that trusts the
superuser on the Unix socket (and on 127.0.0.1 for helpers) while every other role authenticates with the
chosen method over TCP, and starts the server with ``pg_ctl -w``.  Durability is switched off: the data is
disposable and start-up speed matters more than crash safety.

PostgreSQL refuses to run as root, so when we are root every server binary runs as the ``postgres`` OS user
(``runuser -u postgres --``) and the directories are handed to that user.  Client tools (``psql``) run as the
current user: the socket directory is world-traversable and the socket itself is world-writable.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Self

__all__ = [
    "AUTH_METHODS",
    "PostgresError",
    "TempPostgres",
    "TlsFiles",
    "find_free_port",
    "find_pg_bindir",
    "generate_certificates",
    "issue_client_certificate",
    "quote_ident",
    "quote_literal",
]

AUTH_METHODS = ("trust", "md5", "scram-sha-256", "password")
_PASSWORD_ENCRYPTIONS = ("md5", "scram-sha-256")
_SUPERUSER = "postgres"
_OS_USER_WHEN_ROOT = "postgres"
_INCLUDE_FILE = "pg_doorman_devcluster.conf"
_START_TIMEOUT_S = 60
# Explicitly /tmp, not $TMPDIR: postgres must be able to traverse the path, and the socket path must stay
# short (sun_path holds 107 bytes).
_TMP_ROOT = "/tmp" if os.path.isdir("/tmp") else None


class PostgresError(RuntimeError):
    """A PostgreSQL tool failed; the message carries the command and its stderr (or the server log)."""


def find_pg_bindir() -> str:
    """Directory holding ``initdb``/``pg_ctl``/``psql``/``pgbench``.

    ``$PG_BINDIR`` wins; then the newest Debian-style ``/usr/lib/postgresql/<ver>/bin``; then ``$PATH``.
    Debian keeps the server binaries out of ``$PATH``, which is why the versioned directory comes first.
    """
    explicit = os.environ.get("PG_BINDIR")
    if explicit:
        return explicit
    candidates = [d for d in glob.glob("/usr/lib/postgresql/*/bin") if os.path.exists(os.path.join(d, "initdb"))]

    def version_key(path: str) -> tuple[int, ...]:
        version = path.split("/")[-2]
        return tuple(int(p) for p in version.split(".") if p.isdigit())

    if candidates:
        return max(candidates, key=version_key)
    initdb = shutil.which("initdb")
    if initdb:
        return os.path.dirname(initdb)
    raise PostgresError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found: install postgresql-15 "
        "(scripts/setup.sh does) or set PG_BINDIR"
    )


def find_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port the kernel considers free right now (bind to port 0 and read it back)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def quote_ident(name: str) -> str:
    """SQL identifier quoting (``"`` doubled), so role names never need to be trusted."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """SQL string literal quoting; relies on standard_conforming_strings=on (the default since 9.1)."""
    return "'" + value.replace("'", "''") + "'"


def _conninfo_value(value: str) -> str:
    """Quote a libpq key=value value when it is empty or holds spaces, quotes or backslashes."""
    if value and not any(c in value for c in " '\\\t\n"):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _clean_env() -> dict[str, str]:
    """Environment without PG* variables, so a developer's PGHOST/PGPORT cannot redirect our tools."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.setdefault("LC_ALL", "C")
    return env


def _process_alive(pid: int) -> bool:
    """True if ``pid`` runs and is not a zombie (PID 1 in a container may never reap a killed postmaster)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X")


def _child_pids(parent: int) -> list[int]:
    """PIDs whose parent is ``parent`` (the postmaster's backends and auxiliary processes)."""
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                fields = f.read().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if len(fields) > 1 and int(fields[1]) == parent:
            children.append(int(entry))
    return children


# Strong references on purpose: a cluster dropped without cleanup() must still be stopped at exit.
_live_clusters: set[TempPostgres] = set()
_template_dirs: dict[str, str] = {}  # bindir -> template data directory
_template_lock = threading.Lock()


@atexit.register
def _stop_leftover_clusters() -> None:
    """Backstop: never leave a postmaster running after the Python process that started it exits."""
    for cluster in list(_live_clusters):
        with contextlib.suppress(Exception):
            cluster.cleanup()
    for data in _template_dirs.values():
        shutil.rmtree(os.path.dirname(data), ignore_errors=True)


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """A throwaway certificate authority and a server certificate it signed (PEM files in ``directory``)."""

    directory: str
    ca_cert: str
    ca_key: str
    server_cert: str
    server_key: str


def _openssl(*args: str, cwd: str) -> None:
    proc = subprocess.run(["openssl", *args], capture_output=True, text=True, cwd=cwd, check=False)
    if proc.returncode != 0:
        raise PostgresError(f"openssl {' '.join(args)} failed:\n{proc.stderr.strip()}")


def _issue(directory: str, ca: tuple[str, str] | None, name: str, subject: str, extensions: str) -> tuple[str, str]:
    """A new RSA key and certificate ``name``.crt/.key, signed by ``ca`` (cert, key) or self-signed."""
    key = os.path.join(directory, f"{name}.key")
    crt = os.path.join(directory, f"{name}.crt")
    ext = os.path.join(directory, f"{name}.ext")
    with open(ext, "w", encoding="utf-8") as f:
        f.write(extensions)
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", key, cwd=directory)
    os.chmod(key, 0o600)
    if ca is None:
        _openssl("req", "-x509", "-new", "-key", key, "-subj", subject, "-days", "3650", "-out", crt,
                 "-extensions", "v3", "-config", _req_config(directory, extensions), cwd=directory)  # fmt: skip
        return crt, key
    csr = os.path.join(directory, f"{name}.csr")
    _openssl("req", "-new", "-key", key, "-subj", subject, "-out", csr, cwd=directory)
    _openssl("x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial", "-days", "3650",
             "-out", crt, "-extfile", ext, cwd=directory)  # fmt: skip
    return crt, key


def _req_config(directory: str, extensions: str) -> str:
    path = os.path.join(directory, "req.cnf")
    with open(path, "w", encoding="utf-8") as f:
        f.write("[req]\ndistinguished_name = dn\n[dn]\n[v3]\n" + extensions)
    return path


def generate_certificates(directory: str) -> TlsFiles:
    """A CA and a server certificate for 127.0.0.1 / localhost signed by it, made with the ``openssl`` CLI (for
    tests and demos: TLS toward a TempPostgres, or pg_doorman's own listener)."""
    os.makedirs(directory, exist_ok=True)
    ca = _issue(directory, None, "ca", "/CN=pg_doorman test CA", "basicConstraints=critical,CA:TRUE\n"
                "keyUsage=critical,keyCertSign,cRLSign\n")  # fmt: skip
    server = _issue(directory, ca, "server", "/CN=localhost", "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                    "extendedKeyUsage=serverAuth\n")  # fmt: skip
    return TlsFiles(directory, ca[0], ca[1], server[0], server[1])


def issue_client_certificate(files: TlsFiles, common_name: str) -> tuple[str, str]:
    """A client certificate (cert, key) with ``common_name``, signed by ``files``' CA."""
    return _issue(files.directory, (files.ca_cert, files.ca_key), f"client-{common_name}", f"/CN={common_name}",
                  "extendedKeyUsage=clientAuth\n")  # fmt: skip


class TempPostgres:
    """A disposable PostgreSQL cluster listening on 127.0.0.1 and on a private Unix socket directory.

    ``auth`` is the pg_hba method for every role except the superuser ``postgres`` (which is trusted, so the
    helpers need no password).  ``users`` maps role name to plaintext password; those roles are created at the
    first start, hashed with ``password_encryption`` (md5 when ``auth == "md5"``, else scram-sha-256).
    ``settings`` go into postgresql.conf after our defaults and may override them.  Mutating ``settings`` and
    calling ``restart()`` applies the change.

    ``tls``: serve TLS with these files (``ssl = on``); ``tls_only``: pg_hba admits TCP clients only over TLS
    (``hostssl``; plain TCP finds no rule and is refused), except the superuser the helpers use;
    ``tls_client_cert``: those ``hostssl`` rules also demand a client certificate from the CA
    (``clientcert=verify-ca``).
    """

    host: str
    port: int
    base_dir: str
    data_dir: str
    socket_dir: str
    log_path: str

    def __init__(
        self,
        *,
        auth: str = "trust",
        port: int | None = None,
        settings: dict[str, str] | None = None,
        users: dict[str, str] | None = None,
        base_dir: str | None = None,
        password_encryption: str | None = None,
        tls: TlsFiles | None = None,
        tls_only: bool = False,
        tls_client_cert: bool = False,
    ) -> None:
        if auth not in AUTH_METHODS:
            raise ValueError(f"auth must be one of {', '.join(AUTH_METHODS)}, got {auth!r}")
        encryption = password_encryption or ("md5" if auth == "md5" else "scram-sha-256")
        if encryption not in _PASSWORD_ENCRYPTIONS:
            raise ValueError(f"password_encryption must be md5 or scram-sha-256, got {encryption!r}")
        self.auth = auth
        self.tls = tls
        self.tls_only = tls_only
        self.tls_client_cert = tls_client_cert
        self.password_encryption = encryption
        self.settings: dict[str, str] = dict(settings or {})
        self.users: dict[str, str] = dict(users or {})
        self.host = "127.0.0.1"
        self._port_is_ours = port is None
        self.port = port if port is not None else find_free_port(self.host)
        self.bindir = find_pg_bindir()
        self._as_root = os.geteuid() == 0
        self._owns_base_dir = base_dir is None
        if base_dir is None:
            base_dir = tempfile.mkdtemp(prefix="pg_doorman_pg_", dir=_TMP_ROOT)
        else:
            os.makedirs(base_dir, exist_ok=True)
        self.base_dir = os.path.abspath(base_dir)
        self.data_dir = os.path.join(self.base_dir, "data")
        self.socket_dir = os.path.join(self.base_dir, "sock")
        self.log_path = os.path.join(self.base_dir, "postgresql.log")
        self._ever_started = False
        self._removed = False
        _live_clusters.add(self)

    # ---------------------------------------- commands

    def _server_cmd(self, argv: list[str]) -> list[str]:
        """Wrap a server-side command so it runs as ``postgres`` when we are root."""
        if self._as_root:
            return ["runuser", "-u", _OS_USER_WHEN_ROOT, "--", *argv]
        return argv

    def _bin(self, name: str) -> str:
        return os.path.join(self.bindir, name)

    def _run(
        self,
        argv: list[str],
        *,
        input_text: str | None = None,
        server: bool = True,
        env: dict[str, str] | None = None,
    ) -> str:
        """Run a PostgreSQL tool, raising PostgresError with its stderr when it fails."""
        cmd = self._server_cmd(argv) if server else argv
        proc = subprocess.run(
            cmd,
            input=input_text,
            capture_output=True,
            text=True,
            env={**_clean_env(), **(env or {})},
            cwd=self.base_dir,  # postgres may not be able to read the caller's working directory
            check=False,
        )
        if proc.returncode != 0:
            raise PostgresError(f"{' '.join(argv)} failed with exit code {proc.returncode}:\n{proc.stderr.strip()}")
        return proc.stdout

    def _give_to_postgres(self, path: str) -> None:
        if self._as_root:
            pw = pwd.getpwnam(_OS_USER_WHEN_ROOT)
            os.chown(path, pw.pw_uid, pw.pw_gid)

    # ---------------------------------------- set-up

    def _initdb(self) -> None:
        """Create the data directory: a copy of a per-process initdb template (initdb costs ~1 s, cp ~0.1 s)."""
        self._give_to_postgres(self.base_dir)
        os.chmod(self.base_dir, 0o755)
        self._run(["cp", "-a", self._template_data_dir(), self.data_dir])
        with open(os.path.join(self.data_dir, "postgresql.conf"), "a", encoding="utf-8") as f:
            f.write(f"\ninclude '{_INCLUDE_FILE}'\n")
        self._write_hba()

    def _template_data_dir(self) -> str:
        """A pristine initdb output for this PostgreSQL version, made once per process and removed at exit."""
        with _template_lock:
            cached = _template_dirs.get(self.bindir)
            if cached and os.path.exists(os.path.join(cached, "PG_VERSION")):
                return cached
            root = tempfile.mkdtemp(prefix="pg_doorman_pg_template_", dir=_TMP_ROOT)
            os.chmod(root, 0o755)
            self._give_to_postgres(root)
            data = os.path.join(root, "data")
            self._run(
                [
                    self._bin("initdb"),
                    "-D",
                    data,
                    "-U",
                    _SUPERUSER,
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                    "--no-instructions",
                ]
            )
            _template_dirs[self.bindir] = data
            return data

    def _write_hba(self) -> None:
        lines = [
            "# written by pg_doorman.devcluster",
            "local all all trust",
            f"host all {_SUPERUSER} 127.0.0.1/32 trust",
        ]
        kind = "hostssl" if self.tls_only else "host"
        option = " clientcert=verify-ca" if self.tls_client_cert else ""
        lines.append(f"{kind} all all 127.0.0.1/32 {self.auth}{option}")
        lines.append(f"{kind} all all ::1/128 {self.auth}{option}")
        self._write_data_file("pg_hba.conf", "\n".join(lines) + "\n")

    def _install_tls_files(self) -> dict[str, str]:
        """Copy the TLS files into the data directory (postgres must own its key, mode 0600)."""
        tls = self.tls
        if tls is None:
            return {}
        for source, name in ((tls.server_cert, "server.crt"), (tls.server_key, "server.key"), (tls.ca_cert, "ca.crt")):
            with open(source, encoding="utf-8") as f:
                self._write_data_file(name, f.read())
        return {"ssl": "on", "ssl_cert_file": "server.crt", "ssl_key_file": "server.key", "ssl_ca_file": "ca.crt"}

    def _write_settings(self) -> None:
        """(Re)write our include file; it is read at every start, so ``settings`` changes apply on restart."""
        values: dict[str, str] = {
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": self.socket_dir,
            "max_connections": "300",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "shared_buffers": "128MB",
            "password_encryption": self.password_encryption,
        }
        values.update(self._install_tls_files())
        values.update(self.settings)
        text = "".join(f"{key} = {quote_literal(str(value))}\n" for key, value in values.items())
        self._write_data_file(_INCLUDE_FILE, text)

    def _write_data_file(self, name: str, text: str) -> None:
        path = os.path.join(self.data_dir, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(path, 0o600)
        self._give_to_postgres(path)

    def _prepare_socket_dir(self) -> None:
        os.makedirs(self.socket_dir, exist_ok=True)
        os.chmod(self.socket_dir, 0o755)
        self._give_to_postgres(self.socket_dir)

    # ---------------------------------------- lifecycle

    def is_running(self) -> bool:
        """True if the postmaster recorded in postmaster.pid is alive."""
        pid = self.postmaster_pid()
        return pid is not None and _process_alive(pid)

    def postmaster_pid(self) -> int | None:
        """PID from postmaster.pid, or None when the file is absent."""
        try:
            with open(os.path.join(self.data_dir, "postmaster.pid"), encoding="utf-8") as f:
                first = f.readline().strip()
        except FileNotFoundError:
            return None
        return int(first) if first.isdigit() else None

    def start(self) -> None:
        """initdb on first use, then start and wait until connections are accepted.  No-op if running."""
        if self._removed:
            raise PostgresError(f"cluster in {self.base_dir} was cleaned up; create a new TempPostgres")
        if self.is_running():
            return
        fresh = not os.path.exists(os.path.join(self.data_dir, "PG_VERSION"))
        if fresh:
            self._initdb()
        self._prepare_socket_dir()
        attempts = 3 if (self._port_is_ours and not self._ever_started) else 1
        for attempt in range(attempts):
            self._write_settings()
            try:
                self._pg_ctl_start()
                break
            except PostgresError:
                # Another process may have taken the port we picked between probing and binding; a port we
                # chose ourselves and never advertised can simply be replaced.
                if attempt + 1 < attempts and "could not bind" in self.log_text():
                    self.port = find_free_port(self.host)
                    continue
                raise
        self._ever_started = True
        if fresh:
            for name, password in self.users.items():
                self.create_user(name, password, encryption=self.password_encryption)

    def _pg_ctl_start(self) -> None:
        if not os.path.exists(self.log_path):
            with open(self.log_path, "a", encoding="utf-8"):
                pass
            self._give_to_postgres(self.log_path)
        try:
            self._run(
                [
                    self._bin("pg_ctl"),
                    "-D",
                    self.data_dir,
                    "-l",
                    self.log_path,
                    "-w",
                    "-t",
                    str(_START_TIMEOUT_S),
                    "start",
                ]
            )
        except PostgresError as exc:
            raise PostgresError(f"{exc}\n--- server log tail ---\n{self.log_tail()}") from None

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``smart``/``fast``/``immediate``) and keep the data directory."""
        if not self.is_running():
            return
        self._run([self._bin("pg_ctl"), "-D", self.data_dir, "-m", mode, "-w", "-t", "60", "stop"])

    def restart(self) -> None:
        """Stop (fast) and start again; picks up changed ``settings``."""
        self.stop()
        self.start()

    def kill(self) -> None:
        """SIGKILL the postmaster and its children, as a crash would, then clear what blocks the next start.

        The backends are killed too: a backend that outlives its postmaster keeps serving its client and keeps
        the shared memory segment attached, and PostgreSQL will not start while that segment is in use.
        """
        pid = self.postmaster_pid()
        if pid is None or not _process_alive(pid):
            self._remove_stale_runtime_files()
            return
        shm_id = self._shared_memory_id()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)  # freeze the postmaster so it cannot fork while we collect children
        children = _child_pids(pid)
        for victim in [*children, pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        self._wait_dead([*children, pid])
        if shm_id is not None:
            subprocess.run(["ipcrm", "-m", str(shm_id)], capture_output=True, check=False)
        self._remove_stale_runtime_files()

    def _shared_memory_id(self) -> int | None:
        """The SysV segment id from line 7 of postmaster.pid ("key id"), if any."""
        try:
            with open(os.path.join(self.data_dir, "postmaster.pid"), encoding="utf-8") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return None
        if len(lines) < 7:
            return None
        parts = lines[6].split()
        return int(parts[1]) if len(parts) == 2 and parts[1].lstrip("-").isdigit() else None

    @staticmethod
    def _wait_dead(pids: list[int], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while any(_process_alive(p) for p in pids):
            if time.monotonic() > deadline:
                raise PostgresError(f"processes {pids} still alive {timeout}s after SIGKILL")
            time.sleep(0.01)

    def _remove_stale_runtime_files(self) -> None:
        for path in (
            os.path.join(self.data_dir, "postmaster.pid"),
            os.path.join(self.socket_dir, f".s.PGSQL.{self.port}"),
            os.path.join(self.socket_dir, f".s.PGSQL.{self.port}.lock"),
        ):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def cleanup(self) -> None:
        """Stop the server (killing it if a clean stop fails) and remove everything we created."""
        if self._removed:
            return
        try:
            self.stop("immediate")
        except PostgresError:
            self.kill()
        if self._owns_base_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)
        else:
            for path in (self.data_dir, self.socket_dir):
                shutil.rmtree(path, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.log_path)
        self._removed = True
        _live_clusters.discard(self)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    # ---------------------------------------- helpers

    def psql(self, sql: str, *, db: str = "postgres", user: str = "postgres") -> str:
        """Run SQL over the Unix socket (trusted) and return stdout without the final newline.

        The SQL is fed on stdin, so several statements run one by one (CREATE DATABASE works) and the first
        error stops the script and raises PostgresError.  Its commits are synchronous, so what the helper
        created survives ``kill()`` (commits of other sessions may be lost: synchronous_commit is off).
        """
        argv = [
            self._bin("psql"),
            "-X",
            "-A",
            "-t",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            self.socket_dir,
            "-p",
            str(self.port),
            "-U",
            user,
            "-d",
            db,
            "-f",
            "-",
        ]
        # The cluster runs with synchronous_commit=off; a commit made here must still survive kill(), so the
        # helper's own session commits synchronously (WAL reaches the kernel before psql returns).
        env = {"PGOPTIONS": "-c synchronous_commit=on"}
        return self._run(argv, input_text=sql, server=False, env=env).removesuffix("\n")

    def dsn(self, *, user: str = "postgres", password: str | None = None, db: str = "postgres") -> str:
        """libpq key=value string for a TCP connection to 127.0.0.1 (where ``auth`` applies)."""
        parts = {"host": self.host, "port": str(self.port), "user": user, "dbname": db}
        if password is not None:
            parts["password"] = password
        return " ".join(f"{k}={_conninfo_value(v)}" for k, v in parts.items())

    def create_user(
        self,
        name: str,
        password: str | None,
        *,
        encryption: str = "scram-sha-256",
        superuser: bool = False,
    ) -> None:
        """Create (or update) a login role whose password is stored as an md5 or SCRAM verifier."""
        if encryption not in _PASSWORD_ENCRYPTIONS:
            raise ValueError(f"encryption must be md5 or scram-sha-256, got {encryption!r}")
        exists = self.psql(f"SELECT 1 FROM pg_roles WHERE rolname = {quote_literal(name)}") == "1"
        options = ["LOGIN", "SUPERUSER" if superuser else "NOSUPERUSER"]
        options.append("PASSWORD NULL" if password is None else f"PASSWORD {quote_literal(password)}")
        verb = "ALTER" if exists else "CREATE"
        self.psql(
            f"SET password_encryption = {quote_literal(encryption)};\n"
            f"{verb} ROLE {quote_ident(name)} {' '.join(options)};\n"
        )

    def create_database(self, name: str, *, owner: str | None = None) -> None:
        """CREATE DATABASE, optionally owned by ``owner``."""
        owner_clause = f" OWNER {quote_ident(owner)}" if owner else ""
        self.psql(f"CREATE DATABASE {quote_ident(name)}{owner_clause};")

    def role_password_hash(self, name: str) -> str:
        """The stored verifier (``md5…`` or ``SCRAM-SHA-256$…``), as pg_doorman's config wants it."""
        value = self.psql(f"SELECT rolpassword FROM pg_authid WHERE rolname = {quote_literal(name)}")
        if not value:
            raise PostgresError(f"role {name!r} does not exist or has no password")
        return value

    def log_text(self) -> str:
        """The whole server log ("" if nothing was written yet)."""
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        """Last ``lines`` lines of the server log, for error messages."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    def backend_pids(self, *, user: str | None = None, db: str | None = None) -> list[int]:
        """PIDs of client backends, optionally filtered by role and database (to see what a pooler holds)."""
        where = ["backend_type = 'client backend'", "pid <> pg_backend_pid()"]
        if user is not None:
            where.append(f"usename = {quote_literal(user)}")
        if db is not None:
            where.append(f"datname = {quote_literal(db)}")
        out = self.psql(f"SELECT pid FROM pg_stat_activity WHERE {' AND '.join(where)} ORDER BY pid")
        return [int(line) for line in out.splitlines() if line]

    def __repr__(self) -> str:
        return f"TempPostgres(auth={self.auth!r}, port={self.port}, base_dir={self.base_dir!r})"
