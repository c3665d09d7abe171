"""A throwaway OpenLDAP ``slapd`` (Debian's slapd package) on a free loopback port, for LDAP authentication tests.

The server gets a temporary slapd.conf (core, cosine, inetorgperson and nis schemas, one mdb database for
``dc=example,dc=org`` with ``cn=admin,dc=example,dc=org`` as root DN), listens on ``ldap://127.0.0.1:<port>/``
with StartTLS offered (a CA and a server certificate made for the run), and is filled with `ENTRIES` by ldapadd.
Passwords are readable only by binding (``by anonymous auth``); everything else is readable anonymously, so both
anonymous and bound search+bind work.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pg_doorman.devcluster import find_free_port

SLAPD = "/usr/sbin/slapd"
BASE_DN = "dc=example,dc=org"
PEOPLE_DN = f"ou=people,{BASE_DN}"
ADMIN_DN = f"cn=admin,{BASE_DN}"
ADMIN_PASSWORD = "admin-secret"
READER_DN = f"cn=reader,{BASE_DN}"
READER_PASSWORD = "reader-secret"

# uid -> password; "twin" exists twice (under two ou's) so that a search for it is not unique.
USERS = {"alice": "alice-pw", "bob": "bob-pw", "twin": "twin-pw"}

_SCHEMAS = ("core", "cosine", "inetorgperson", "nis")


def _person(uid: str, password: str, ou_dn: str) -> str:
    return (
        f"dn: uid={uid},{ou_dn}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\nsn: {uid}\n"
        f"mail: {uid}@example.org\nuserPassword: {password}\n"
    )


def _entries() -> str:
    blocks = [
        f"dn: {BASE_DN}\nobjectClass: dcObject\nobjectClass: organization\no: Example\ndc: example\n",
        f"dn: {PEOPLE_DN}\nobjectClass: organizationalUnit\nou: people\n",
        f"dn: ou=others,{BASE_DN}\nobjectClass: organizationalUnit\nou: others\n",
        f"dn: {READER_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\ncn: reader\n"
        f"userPassword: {READER_PASSWORD}\n",
        *(_person(uid, password, PEOPLE_DN) for uid, password in USERS.items()),
        _person("twin", "twin-pw", f"ou=others,{BASE_DN}"),
    ]
    return "\n".join(blocks)


def _write_tls(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 / localhost signed by it: (ca, cert, key) paths."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pg_doorman test LDAP CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    return ca_path, cert_path, key_path


@dataclass
class Slapd:
    directory: Path
    port: int
    ca_file: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}/"

    def start(self) -> None:
        db = self.directory / "db"
        db.mkdir(parents=True)
        self.ca_file, cert, key = _write_tls(self.directory)
        includes = "".join(f"include /etc/ldap/schema/{name}.schema\n" for name in _SCHEMAS)
        (self.directory / "slapd.conf").write_text(
            f"{includes}"
            f"pidfile {self.directory}/slapd.pid\n"
            "modulepath /usr/lib/ldap\nmoduleload back_mdb\n"
            f"TLSCACertificateFile {self.ca_file}\nTLSCertificateFile {cert}\nTLSCertificateKeyFile {key}\n"
            "database mdb\nmaxsize 10485760\n"
            f'suffix "{BASE_DN}"\nrootdn "{ADMIN_DN}"\nrootpw {ADMIN_PASSWORD}\ndirectory {db}\n'
            "access to attrs=userPassword by anonymous auth by * none\n"
            "access to * by * read\n"
        )
        log = open(self.directory / "slapd.log", "wb")  # noqa: SIM115 - kept open for the process's life
        self.process = subprocess.Popen(
            [SLAPD, "-f", str(self.directory / "slapd.conf"), "-h", self.url, "-d", "0"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self._wait_listening()
        (self.directory / "data.ldif").write_text(_entries())
        subprocess.run(
            [
                "ldapadd",
                "-x",
                "-H",
                self.url,
                "-D",
                ADMIN_DN,
                "-w",
                ADMIN_PASSWORD,
                "-f",
                str(self.directory / "data.ldif"),
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + 15
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                log = (self.directory / "slapd.log").read_text(errors="replace")
                raise RuntimeError(f"slapd exited with {self.process.returncode}:\n{log}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return
            if time.monotonic() > deadline:
                raise RuntimeError("slapd did not listen within 15s")
            time.sleep(0.05)

    def stop(self) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.process = None


def start_slapd(directory: Path) -> Slapd:
    """A running slapd in ``directory`` (which must not exist yet); stop() it when done."""
    if shutil.which(SLAPD) is None and not os.path.exists(SLAPD):
        raise RuntimeError("slapd is not installed (apt-get install slapd ldap-utils; see scripts/setup.sh)")
    server = Slapd(directory, find_free_port(), directory / "ca.pem")
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    return server
