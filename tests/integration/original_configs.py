"""The original PgDoorman's configuration files (tests/data/original_configs) made ready for ``pg_doorman -t``.

The files are kept as the original ships them or embeds them in its BDD features, with its ``${NAME}``
placeholders; `materialize` fills those (ports, a TLS certificate and key, a pg_hba file, password hashes) the
way the original's test harness does, into a scratch directory.
"""

from __future__ import annotations

import re
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "data" / "original_configs"
FILES = DATA / "files"

# md5 and SCRAM-SHA-256 verifiers of some password (their content does not matter to -t).
MD5_HASH = "md5" + "0" * 32
SCRAM_HASH = (
    "SCRAM-SHA-256$4096:cGdfZG9vcm1hbl9zYWx0IQ==$5r9BH51vpnVOrZgEEJeNNWlLuJHAzaayuLGC9evqntA="
    ":sTGhVt58aAxg4jbDI0flvEOtb/vHUZ8MRnKMV3wzIyw="
)
# Paths the shipped examples point at, replaced by fixture files of the same kind.
SHIPPED_PATHS = {
    "/etc/pg_doorman/server.crt": FILES / "server.crt",
    "/etc/pg_doorman/server.key": FILES / "server.key",
    "/etc/pg_doorman/pg_hba.conf": FILES / "pg_hba.conf",
}


def all_configs() -> list[Path]:
    return sorted(p for p in DATA.glob("*/*") if p.suffix in (".toml", ".yaml", ".yml") and p.parent != FILES)


def materialize(path: Path, scratch: Path, pg_port: int = 5432, doorman_port: int = 6432) -> Path:
    """A copy of ``path`` in ``scratch`` with every placeholder filled in."""
    text = path.read_text(encoding="utf-8")
    values = {
        "DOORMAN_PORT": str(doorman_port),
        "PG_PORT": str(pg_port),
        "DOORMAN_SSL_CERT": str(FILES / "server.crt"),
        "DOORMAN_SSL_KEY": str(FILES / "server.key"),
        "DOORMAN_HBA_FILE": str(FILES / "pg_hba.conf"),
        "PG_SSL_CA_CERT": str(FILES / "ca.crt"),
        "PG_SSL_WRONG_CA_CERT": str(FILES / "ca.crt"),
        "PG_SSL_CLIENT_CERT": str(FILES / "server.crt"),
        "PG_SSL_CLIENT_KEY": str(FILES / "server.key"),
        "PG_TEMP_DIR": str(scratch),
        "MD5_HASH": MD5_HASH,
        "SCRAM_HASH": SCRAM_HASH,
        "DOORMAN_WORKERS": "12",
    }
    text = re.sub(r"\$\{(\w+)\}", lambda m: values.get(m.group(1), "12345"), text)
    for original, replacement in SHIPPED_PATHS.items():
        text = text.replace(original, str(replacement))
    out = scratch / f"{path.parent.name}__{path.name}"
    out.write_text(text, encoding="utf-8")
    return out
