#!/usr/bin/env bash
# Run the test suite (creating .venv from requirements.txt on first use).
#   ./test.sh                 # everything, the slow end-to-end tests included
#   ./test.sh -m "not slow"   # skip the slow end-to-end tests
#   ./test.sh tests/test_metrics.py -k auc
set -euo pipefail
cd "$(dirname "$0")"
source scripts/ensure_venv.sh
exec "$PYTHON" -m pytest -c tests/pytest.ini --rootdir=. "$@"
