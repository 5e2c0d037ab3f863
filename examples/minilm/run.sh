#!/usr/bin/env bash
# README command 1: set up intformer with the example's dependencies, then compile all-MiniLM-L6-v2 for this
# machine and print accuracy against fp32 on real text and latency against onnxruntime.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-python3}"
"$PY" -m pip install --disable-pip-version-check -q -e '.[examples]'
exec "$PY" examples/minilm/main.py "$@"
