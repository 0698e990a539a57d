#!/usr/bin/env bash
# GPU readiness check: every CUDA path in one run (basis on a token stream, torchrun with NCCL, the per-head
# analysis with every lens on a Pythia-1.4B shape, the training monitor), each section timed and guarded, the
# figures printed; see benchmarks/gpu_check.py for the sections and options.
#
#   bash benchmarks/gpu_check.sh                  # on a GPU machine (about 8 minutes at most; --budget SECONDS)
#   bash benchmarks/gpu_check.sh --smoke          # the same code paths on the CPU at tiny shapes (< 1 minute)
#   bash benchmarks/gpu_check.sh --fetch-wheels   # here, with network: the Python packages a bare GPU image lacks,
#                                                 # as wheels in .whl/ (the check installs them from there)
#
# Python: $PYTHON, else the repository's .venv, else python3.  The repository is put on PYTHONPATH, so the
# package need not be installed.  When tl_leadterm's imports fail and .whl/ holds wheels, they are installed
# (no network, no dependencies) into a scratch folder that is put on PYTHONPATH.
set -u
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"

# the packages TransformerLens 4.3 and tl_leadterm import that the GPU image ('cuda', Python 3.12) does not have
WHEELS=(transformer-lens==4.3.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 httpx2==2.16.2 httpcore2==2.16.2
        truststore==0.10.5 googleapis-common-protos==1.76.0 beartype==0.23.1 fancy-einsum==0.0.3 typeguard==4.6.1)

pick_python() {
    if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"; return; fi
    if [ -x "$root/.venv/bin/python" ] && "$root/.venv/bin/python" -c "import torch" >/dev/null 2>&1; then
        echo "$root/.venv/bin/python"; return
    fi
    command -v python3 || command -v python
}
py="$(pick_python)"
if [ -z "$py" ]; then echo "error: no Python found; set PYTHON=/path/to/python" >&2; exit 2; fi

if [ "${1:-}" = "--fetch-wheels" ]; then
    mkdir -p "$root/.whl"
    "$py" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$root/.whl" "${WHEELS[@]}" || exit 1
    echo "wheels in $root/.whl ($(du -sh "$root/.whl" | cut -f1)); keep them out of git with"
    echo "  echo /.whl/ >> $root/.git/info/exclude"
    echo "and carry '.whl' to the GPU machine; there: bash benchmarks/gpu_check.sh"
    exit 0
fi

export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# find_spec only (no import: a second's check, not the ten of importing TransformerLens)
probe='import importlib.util as u, sys
need = ["torch", "numpy", "transformers", "tokenizers", "safetensors", "pandas", "einops", "jaxtyping", "tqdm",
        "transformer_lens", "datasets", "dill", "multiprocess", "beartype", "fancy_einsum", "typeguard", "tl_leadterm"]
miss = [m for m in need if u.find_spec(m) is None]
sys.exit("missing modules: " + ", ".join(miss) if miss else 0)'
if ! "$py" -c "$probe" >/dev/null 2>&1; then
    if ls "$root"/.whl/*.whl >/dev/null 2>&1; then
        site="${TMPDIR:-/tmp}/tl_leadterm_site"
        echo "installing $(ls "$root"/.whl/*.whl | wc -l) wheel(s) from .whl into $site"
        "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
            "$root"/.whl/*.whl || { echo "error: installing the wheels of .whl failed" >&2; exit 2; }
        export PYTHONPATH="$PYTHONPATH:$site"
    fi
    if ! err="$("$py" -c "$probe" 2>&1)"; then
        echo "error: $py cannot import tl_leadterm's dependencies: $(echo "$err" | tail -1)" >&2
        echo "  (on a bare GPU image: run 'bash benchmarks/gpu_check.sh --fetch-wheels' where there is network, and carry .whl)" >&2
        exit 2
    fi
fi
exec "$py" "$here/gpu_check.py" "$@"
