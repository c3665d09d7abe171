#!/usr/bin/env bash
# Idempotent setup for a fresh Debian 12 machine (run as root, or as a user with sudo).
#
# Installs what the tests and the benchmark need, only when it is missing:
#   postgresql-15, postgresql-client-15 (TempPostgres, psql, pgbench), pgbouncer (benchmark peer),
#   nodejs/npm if `node`/`npm` is missing, default-jdk-headless if `javac` is missing and
#   libpostgresql-jdbc-java if no pgJDBC jar is found (driver tests), prometheus (promtool) and curl (web tests),
#   chromium and chromium-driver (headless browser test of the web console),
#   python3-venv if `python3 -m venv` cannot work,
# gcc and the Python headers (compiled hot path),
# then creates .venv and installs the package with its test extras (editable), compiles the hot path (Cython,
# in place), and runs `npm ci` in
# tests/drivers/node when its node_modules is missing or its package-lock.json changed since the last run.
# A second run does nothing and takes well under a second.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO_ROOT=$(pwd)
VENV="$REPO_ROOT/.venv"
STAMP="$VENV/.pg_doorman-setup-stamp"
did=()

say() { echo "setup: $*"; }

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    SUDO=()
fi

# ---------------------------------------------------------------- system packages

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

PYTHON=""
for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 \
        && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        PYTHON=$(command -v "$candidate")
        break
    fi
done

venv_works() {
    # Debian's python3 imports ensurepip fine but lacks the wheels until python3-venv is installed, so try
    # the real thing in a scratch directory.
    local scratch
    scratch=$(mktemp -d)
    if "$1" -m venv "$scratch/v" >/dev/null 2>&1; then rm -rf "$scratch"; return 0; fi
    rm -rf "$scratch"
    return 1
}

missing=()
for pkg in postgresql-15 postgresql-client-15 pgbouncer; do
    installed "$pkg" || missing+=("$pkg")
done
if ! command -v node >/dev/null 2>&1; then
    missing+=(nodejs npm)
elif ! command -v npm >/dev/null 2>&1; then
    missing+=(npm)
fi
# javac compiles tests/drivers/java at test time; the JDK brings java too.
command -v javac >/dev/null 2>&1 || missing+=(default-jdk-headless)
# pgJDBC for the Java driver test: a Maven-cached 42.7.13 if there is one, else Debian's jar.
PGJDBC_M2="$HOME/.m2/repository/org/postgresql/postgresql/42.7.13/postgresql-42.7.13.jar"
if [ ! -f "$PGJDBC_M2" ] && [ ! -f /usr/share/java/postgresql.jar ]; then
    missing+=(libpostgresql-jdbc-java)
fi
# The compiled hot path (setup.py, Cython) needs a C compiler and the headers of the Python that runs it.
command -v gcc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
# promtool (Debian's prometheus package) checks deploy/prometheus/alerts.yaml; curl talks to the web listener.
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v curl >/dev/null 2>&1 || missing+=(curl)
# Headless Chromium and its WebDriver: tests/integration/test_web_console.py opens the web console in them.
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
if [ -n "$PYTHON" ] && ! "$PYTHON" -c 'import os, sysconfig; inc = sysconfig.get_paths()["include"]; raise SystemExit(not os.path.exists(os.path.join(inc, "Python.h")))' 2>/dev/null; then
    missing+=(python3-dev)
fi
if [ -z "$PYTHON" ]; then
    missing+=(python3 python3-venv python3-dev)
elif [ ! -x "$VENV/bin/python" ] && ! venv_works "$PYTHON"; then
    missing+=(python3-venv)
fi

apt_lists_fresh() {
    # Lists exist and were refreshed within the last day.
    [ -n "$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mmin -1440 -print -quit 2>/dev/null)" ]
}

if [ ${#missing[@]} -gt 0 ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        say "missing packages (${missing[*]}) and no apt-get: install them by hand" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    # Keep package scripts from starting services we never use (PostgreSQL's default cluster on 5432,
    # pgbouncer on 6432, which is also the demo's port): policy-rc.d exit 101 = "action forbidden".
    policy=/usr/sbin/policy-rc.d
    own_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
        "${SUDO[@]}" chmod 755 "$policy"
        own_policy=1
        trap '[ "$own_policy" = 1 ] && "${SUDO[@]}" rm -f "$policy"' EXIT
    fi
    if ! apt_lists_fresh; then
        say "apt-get update"
        "${SUDO[@]}" apt-get update -q
        did+=("apt-get update")
    fi
    say "installing ${missing[*]}"
    if ! "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"; then
        say "install failed; refreshing package lists and retrying"
        "${SUDO[@]}" apt-get update -q
        "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
    did+=("installed ${missing[*]}")
    if [ "$own_policy" = 1 ]; then
        "${SUDO[@]}" rm -f "$policy"
        own_policy=0
    fi

    # We run our own throwaway clusters; the packaged services must not hold ports or start at boot.
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        for unit in postgresql pgbouncer; do
            if systemctl list-unit-files "$unit.service" >/dev/null 2>&1; then
                "${SUDO[@]}" systemctl disable --now "$unit.service" >/dev/null 2>&1 || true
            fi
        done
        did+=("disabled postgresql/pgbouncer services")
    fi
    if command -v pg_lsclusters >/dev/null 2>&1; then
        while read -r ver name _port status _rest; do
            if [ "$status" = "online" ]; then
                "${SUDO[@]}" pg_ctlcluster "$ver" "$name" stop || true
                did+=("stopped default cluster $ver/$name")
            fi
        done < <(pg_lsclusters --no-header 2>/dev/null || true)
    fi
    if pgrep -x pgbouncer >/dev/null 2>&1 && [ -x /etc/init.d/pgbouncer ]; then
        "${SUDO[@]}" /etc/init.d/pgbouncer stop >/dev/null 2>&1 || true
        did+=("stopped the pgbouncer service")
    fi
fi

if [ -z "$PYTHON" ]; then
    for candidate in python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 \
            && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            PYTHON=$(command -v "$candidate")
            break
        fi
    done
    [ -n "$PYTHON" ] || { say "Python >= 3.11 is required" >&2; exit 1; }
fi

# ---------------------------------------------------------------- virtualenv

if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV"
    "$PYTHON" -m venv "$VENV"
    did+=("created .venv")
fi

# Reinstall only when pyproject.toml changed or the editable install is gone/broken.
want_stamp=$(sha256sum pyproject.toml | cut -d' ' -f1)
have_stamp=$(cat "$STAMP" 2>/dev/null || true)
install_ok() {
    "$VENV/bin/python" - "$REPO_ROOT/src" <<'EOF' 2>/dev/null
import importlib.util, os, sys
spec = importlib.util.find_spec("pg_doorman")
ok = spec is not None and spec.origin is not None and os.path.realpath(spec.origin).startswith(os.path.realpath(sys.argv[1]))
for tool in ("pytest", "ruff", "mypy"):
    ok = ok and os.path.exists(os.path.join(os.path.dirname(sys.executable), tool))
sys.exit(0 if ok else 1)
EOF
}
if [ "$want_stamp" != "$have_stamp" ] || ! install_ok; then
    say "pip install -e '.[test]'"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$REPO_ROOT[test]"
    echo "$want_stamp" >"$STAMP"
    did+=("installed pg_doorman[test] into .venv")
fi

# ---------------------------------------------------------------- compiled hot path

# The hot path (pg_doorman.COMPILED_MODULES) compiled by Cython next to its sources (setup.py). Rebuilt when the
# sources no longer hash to what the extensions were built from (src/pg_doorman/buildstamp.py); pg_doorman itself
# never runs a stale extension (it falls back to the .py files). PG_DOORMAN_PURE_PYTHON=1 skips the build.
hot_path_built() {
    "$VENV/bin/python" - <<'EOF' 2>/dev/null
import glob, sys
sys.path.insert(0, "src")
import pg_doorman
built = glob.glob("src/pg_doorman/client.cpython-*.so")
sys.exit(1 if not built or pg_doorman.compiled_build_problem("src/pg_doorman") else 0)
EOF
}
if [ "${PG_DOORMAN_PURE_PYTHON:-0}" != 1 ] && ! hot_path_built; then
    say "compiling the hot path (Cython)"
    if "$VENV/bin/python" setup.py -q build_ext --inplace >"$VENV/.pg_doorman-build.log" 2>&1 && hot_path_built; then
        did+=("compiled the hot path with Cython")
    else
        say "compiling failed (see $VENV/.pg_doorman-build.log); pg_doorman runs as pure Python" >&2
    fi
fi

# ---------------------------------------------------------------- node driver programs

# npm ci when node_modules is missing or package-lock.json differs from the one last installed from.
NODE_DIR="$REPO_ROOT/tests/drivers/node"
NODE_STAMP="$NODE_DIR/node_modules/.pg-doorman-lock-sha256"
if [ -f "$NODE_DIR/package-lock.json" ]; then
    want_lock=$(sha256sum "$NODE_DIR/package-lock.json" | cut -d' ' -f1)
    have_lock=$(cat "$NODE_STAMP" 2>/dev/null || true)
    if [ "$want_lock" != "$have_lock" ] || [ ! -f "$NODE_DIR/node_modules/pg/package.json" ] \
        || [ ! -f "$NODE_DIR/node_modules/postgres/package.json" ]; then
        say "npm ci in tests/drivers/node"
        (cd "$NODE_DIR" && npm ci --no-audit --no-fund --loglevel=error)
        echo "$want_lock" >"$NODE_STAMP"
        did+=("installed tests/drivers/node dependencies (npm ci)")
    fi
fi

if [ ${#did[@]} -eq 0 ]; then
    say "everything already in place"
else
    for action in "${did[@]}"; do say "done: $action"; done
fi
