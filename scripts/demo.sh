#!/usr/bin/env bash
# Install tl_leadterm (if needed) and run the main job: the whole pipeline on the embedded corpus.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/tl-leadterm ]; then
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/python -m pip install -q torch==2.13.0
  .venv/bin/python -m pip install -q -e .
fi
exec .venv/bin/tl-leadterm demo --out "${1:-out/demo}"
