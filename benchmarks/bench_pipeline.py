"""End to end on a Pythia-architecture model: basis, model loading, analysis, at a given k.

    python benchmarks/bench_pipeline.py                          # k=4096, CPU, Pythia-70m shape (6 layers, d 512, 8 heads)
    python benchmarks/bench_pipeline.py --k 50304 --device cuda  # the full Pythia vocabulary on a GPU

Builds the basis of the shared TinyStories excerpt with the Pythia tokenizer
(``merge-other`` float32 unless ``k`` is the whole vocabulary), saves a randomly
initialised Pythia-architecture model, loads it through TransformerLens
(:func:`tl_leadterm.models.load_model`) and runs :func:`tl_leadterm.analysis.analyze_model`
(THEORY.md §5 per layer and head, plus the token-space circuits), timing each stage.
Needs ``../shared/data`` (or ``--data``).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import torch

from tl_leadterm import compute_basis, load_corpus
from tl_leadterm.analysis import Targets, analyze_model
from tl_leadterm.models import load_model, save_random_pythia

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=4096)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--n-heads", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-circuits", action="store_true")
    ap.add_argument("--data", type=Path, default=DATA)
    args = ap.parse_args()
    dev = torch.device(args.device)
    tok = args.data / "gpt-neox-20b-tokenizer.json"
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    print(f"device {dev}, torch threads {torch.get_num_threads()}, k={args.k}, T={args.seq_len}, "
          f"model {args.layers} layers x d_model {args.d_model} x {args.n_heads} heads")

    t = time.perf_counter()
    w = load_corpus(str(args.data / "tinystories-train-head.txt"), seq_len=args.seq_len, tokenizer=str(tok), vocab_size=50304)
    t_corpus = time.perf_counter() - t
    t = time.perf_counter()
    mode = "exact" if args.k >= w.vocab_size else "merge-other"
    basis = compute_basis(w, top_k=args.k, mode=mode, dtype=torch.float32, device=dev, progress=False)
    sync()
    t_basis = time.perf_counter() - t
    print(f"corpus: {w.n_windows} windows, {w.n_positions} positions ({t_corpus:.1f}s); "
          f"basis {mode} float32: {t_basis:.1f}s")

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        save_random_pythia(tmp, tok, n_layers=args.layers, d_model=args.d_model, n_heads=args.n_heads)
        ad = load_model(tmp, device=dev)
        t_load = time.perf_counter() - t
        t = time.perf_counter()
        targets = Targets(basis, dev)
        for name in ("value", "key_query", "value_output", "bigram"):
            targets.get(name)
        sync()
        t_prep = time.perf_counter() - t
        t = time.perf_counter()
        df = analyze_model(ad, basis, circuits=not args.no_circuits, progress=False, targets=targets)
        sync()
        t_an = time.perf_counter() - t
    heads = ad.n_layers * ad.n_heads
    print(f"model save+load: {t_load:.1f}s; basis targets prepared once (O(k^3), shared by all checkpoints of a sweep): "
          f"{t_prep:.1f}s; analyze_model: {t_an:.1f}s for {ad.n_layers} layers, {heads} heads, "
          f"{len(df)} rows ({t_an / ad.n_layers:.1f}s per layer)")
    print(f"total {t_corpus + t_basis + t_load + t_prep + t_an:.1f}s, peak RSS {peak_rss_gb():.2f} GB"
          + (f", peak CUDA {torch.cuda.max_memory_allocated() / 2**30:.2f} GB" if dev.type == "cuda" else ""))
    kq = df[(df["site"] == "key_query") & (df["measure"] == "cov_cosine") & df["head"].isna()]
    print("head-averaged key_query cov_cosine per layer:", ", ".join(f"{v:.3f}" for v in kq["value"]))


if __name__ == "__main__":
    main()
