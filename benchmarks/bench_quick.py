"""How cheap ``quick_measures`` (the monitor's per-layer measures) is, next to the full ``analyze_model``.

Moved here from a timed unit test: timings belong in benchmarks, which print the figures
and a ratio measured in one run.  Model: a random Pythia-architecture GPT-NeoX (vocabulary
50,304, Pythia tokenizer), basis over the top-k tokens of the embedded corpus.

    python benchmarks/bench_quick.py [--k 256] [--layers 2] [--d-model 64] [--n-heads 4] [--repeat 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from tl_leadterm import compute_basis, load_corpus
from tl_leadterm.analysis import Targets, analyze_model, quick_measures
from tl_leadterm.models import load_model, save_random_pythia

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=256)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--n-heads", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--data", type=Path, default=DATA)
    a = ap.parse_args()
    tok = a.data / "gpt-neox-20b-tokenizer.json"
    w = load_corpus("builtin:stories", seq_len=32, tokenizer=str(tok), vocab_size=50304)
    basis = compute_basis(w, top_k=a.k, mode="merge-other", progress=False)
    with tempfile.TemporaryDirectory() as d:
        ad = load_model(str(save_random_pythia(d, tok, n_layers=a.layers, d_model=a.d_model, n_heads=a.n_heads)))
        targets = Targets(basis)
        quick_measures(ad, basis, targets)  # prepares the targets once, as the monitor does
        t0 = time.perf_counter()
        for _ in range(a.repeat):
            quick_measures(ad, basis, targets)
        t_quick = (time.perf_counter() - t0) / a.repeat
        t0 = time.perf_counter()
        analyze_model(ad, basis, progress=False, targets=targets)
        t_full = time.perf_counter() - t0
    print(f"k={a.k}, {a.layers} layers x {a.n_heads} heads, d_model {a.d_model}, torch threads {torch.get_num_threads()}")
    print(f"quick_measures: {t_quick * 1e3:.1f} ms per call (mean of {a.repeat}); analyze_model: {t_full * 1e3:.0f} ms; "
          f"ratio {t_full / t_quick:.1f}x")


if __name__ == "__main__":
    main()
