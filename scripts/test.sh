#!/usr/bin/env bash
# Install tl_leadterm and run the whole test suite, on TransformerLens 4.x (TransformerBridge)
# and on TransformerLens 3.9 (HookedTransformer). This is the README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

setup_env () {  # $1: venv folder, $2: transformer-lens requirement
  if [ ! -x "$1/bin/python" ]; then "$PY" -m venv "$1"; fi
  # torch is pinned: an unpinned torch pulls several GB of CUDA packages
  "$1/bin/python" -m pip install -q torch==2.13.0
  "$1/bin/python" -m pip install -q "$2" -e ".[test]"
}

# headless Chromium for the report's browser test (Debian package)
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "note: could not install chromium; the browser test will be skipped"
fi

setup_env .venv "transformer-lens>=4.3,<5"
setup_env .venv-tl3 "transformer-lens==3.9.0"

SHARED_DIR=${TL_LEADTERM_SHARED:-../shared}
[ -d "$SHARED_DIR/data" ] || echo "note: $SHARED_DIR/data not found; tests that need the Pythia tokenizer or TinyStories will be skipped"

echo "== TransformerLens 4.x (TransformerBridge)"
.venv/bin/python -m pytest -q "$@"
echo "== TransformerLens 3.9 (HookedTransformer)"
.venv-tl3/bin/python -m pytest -q -m "not browser" "$@"
