#!/usr/bin/env bash
# Set up, lint (ruff), type-check (mypy, src/) and run the whole pytest suite (unit + integration).
# Extra arguments go to pytest.  The exit code is pytest's; "no tests collected" (5) counts as failure.
# Lint and type errors fail the run too (STRICT_LINT=0 only reports them, for quick local iterations).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh || exit 1

lint_failed=0
echo "== ruff check"
.venv/bin/ruff check src tests bench || lint_failed=1
echo "== mypy (src)"
.venv/bin/mypy || lint_failed=1

echo "== pytest"
.venv/bin/pytest tests "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
    echo "test.sh: pytest collected no tests; treating that as a failure" >&2
    rc=1
fi
if [ "$lint_failed" -ne 0 ]; then
    echo "test.sh: ruff or mypy reported problems (see above)" >&2
    if [ "${STRICT_LINT:-1}" = 1 ] && [ "$rc" -eq 0 ]; then
        rc=1
    fi
fi
exit "$rc"
