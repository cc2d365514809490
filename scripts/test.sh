#!/bin/sh
# Install what the tests need into .venv and run every check CI runs:
# ruff, mypy, the import contracts and the whole pytest suite.
# Arguments are passed to pytest.
set -eu
cd "$(dirname "$0")/.."
LOCK=requirements/test.txt
. scripts/bootstrap.sh
VENV=${MTBBS_VENV:-.venv}
echo "== ruff"
"$VENV/bin/ruff" check .
echo "== mypy"
"$VENV/bin/mypy"
echo "== import contracts"
"$VENV/bin/lint-imports"
echo "== pytest"
"$VENV/bin/pytest" "$@"
