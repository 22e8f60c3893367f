#!/usr/bin/env bash
# Lint (ruff), type-check (mypy) and run the test suite, stopping at the first
# stage that fails; creates .venv from requirements.txt and requirements-dev.txt
# on first use. Arguments go to pytest:
#   ./test.sh                 # everything, the slow end-to-end tests included
#   ./test.sh -m "not slow"   # skip the slow end-to-end tests
#   ./test.sh tests/test_metrics.py -k auc
set -euo pipefail
cd "$(dirname "$0")"
DLRM_REQUIREMENTS="requirements.txt requirements-dev.txt"
source scripts/ensure_venv.sh
echo "ruff: lint and import order (settings in pyproject.toml)" >&2
"$PYTHON" -m ruff check .
echo "mypy: reference/ and verification/ (settings in pyproject.toml)" >&2
"$PYTHON" -m mypy reference verification
exec "$PYTHON" -m pytest -c tests/pytest.ini --rootdir=. "$@"
