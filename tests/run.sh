#!/usr/bin/env bash
# Set up intformer with its test dependencies and run the default (fast) test suite.
# Extra arguments go to pytest, e.g. `bash tests/run.sh -m slow` for the slow tier.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
"$PY" -m pip install --disable-pip-version-check -q -e '.[test]'
exec "$PY" -m pytest "$@"
