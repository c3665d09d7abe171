#!/usr/bin/env bash
# Set up, lint (ruff check, ruff format --check), type-check (mypy, src/) and run the whole pytest suite
# (unit + integration), once with the compiled hot path and once as pure Python.
# Extra arguments go to pytest.  The exit code is pytest's; "no tests collected" (5) counts as failure.
# Lint and type errors fail the run too (STRICT_LINT=0 only reports them, for quick local iterations).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh || exit 1

lint_failed=0
echo "== ruff check"
.venv/bin/ruff check src tests bench || lint_failed=1
echo "== ruff format --check"
.venv/bin/ruff format --check src tests bench || lint_failed=1
echo "== mypy (src)"
.venv/bin/mypy || lint_failed=1

run_pytest() {
    .venv/bin/pytest tests "$@"
    local code=$?
    if [ "$code" -eq 5 ]; then
        echo "test.sh: pytest collected no tests; treating that as a failure" >&2
        code=1
    fi
    return "$code"
}

# The hot path is compiled (Cython) by setup.sh; the same source files are also the pure-Python fallback.
# The whole suite runs against both (tests/unit/test_build.py checks each run got the one it expects).
echo "== pytest (compiled hot path)"
PG_DOORMAN_EXPECT_HOT_PATH=compiled run_pytest "$@"
rc=$?
echo "== pytest (pure Python: PG_DOORMAN_PURE_PYTHON=1)"
PG_DOORMAN_PURE_PYTHON=1 PG_DOORMAN_EXPECT_HOT_PATH="pure Python" run_pytest "$@"
pure_rc=$?
[ "$rc" -ne 0 ] || rc=$pure_rc
if [ "$lint_failed" -ne 0 ]; then
    echo "test.sh: ruff or mypy reported problems (see above)" >&2
    if [ "${STRICT_LINT:-1}" = 1 ] && [ "$rc" -eq 0 ]; then
        rc=1
    fi
fi
exit "$rc"
