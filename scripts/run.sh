#!/usr/bin/env bash
# Run pg_doorman.  With a config: `scripts/run.sh CONFIG [pg_doorman options]`.
# Without one: a demo (throwaway PostgreSQL + pg_doorman on 127.0.0.1:6432, connection hints printed).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh >&2
if [ $# -ge 1 ]; then
    exec .venv/bin/pg_doorman "$@"
fi
exec .venv/bin/python -m pg_doorman.demo
