"""Chance levels and lenses on a real-model-shaped network, measured in one run: the ratios the issues set.

    nice python benchmarks/bench_lenses.py                       # Pythia-160m shape: 12 x 12 heads, d_model 768, k=4096
    python benchmarks/bench_lenses.py --layers 2 --k 1024         # a quick run
    python benchmarks/bench_lenses.py --k 50304 --layers 24 --heads 16 --d-model 2048 --device cuda   # Pythia-1.4B, GPU

Prints, on the same randomly initialised GPT-NeoX (vocabulary 50,304, Pythia tokenizer) and the shared TinyStories
excerpt's basis (merge-other over the top k tokens):

* nulls: every head site of every layer with ``null_draws=200`` against the same analysis with nulls off
  (goal: within 3x);
* update lens: ``lens=("update",)`` (the change since a second random model of the same shape) against the
  weights lens, both with nulls (goal: at most 2.5x);
* gradient lens: ``lens=("gradient",)`` on 256 windows of T = 128 against one forward and backward pass of the
  model on the same windows plus the weights-lens fits (goal: at most 2x).
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
from tl_leadterm.analysis import analyze_model
from tl_leadterm.models import load_model, save_random_pythia

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def main(argv=None, sections: str = "null,update,gradient") -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sections", default=sections, help="comma list of null, update, gradient (default all)")
    ap.add_argument("--k", type=int, default=4096)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--d-model", type=int, default=768)
    ap.add_argument("--windows", type=int, default=256)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--data", type=Path, default=DATA)
    a = ap.parse_args(argv)
    want = set(a.sections.split(","))
    dev = torch.device(a.device)
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    tok = a.data / "gpt-neox-20b-tokenizer.json"
    print(f"device {dev}, torch threads {torch.get_num_threads()}, k={a.k}, model {a.layers} x {a.heads} heads, "
          f"d_model {a.d_model}, vocabulary 50,304, {a.draws} null draws")
    w = load_corpus(str(a.data / "tinystories-train-head.txt"), seq_len=a.seq_len, tokenizer=str(tok), vocab_size=50304)
    mode = "exact" if a.k >= 50304 else "merge-other"
    basis = compute_basis(w, top_k=a.k, mode=mode, dtype=torch.float32, device=dev, progress=False)
    g = torch.Generator().manual_seed(0)
    win = w.tokens[torch.randperm(len(w.tokens), generator=g)[:a.windows]]
    with tempfile.TemporaryDirectory() as d:
        kw = dict(n_layers=a.layers, d_model=a.d_model, n_heads=a.heads)
        ad = load_model(str(save_random_pythia(Path(d) / "a", tok, **kw)), device=dev)
        ref = load_model(str(save_random_pythia(Path(d) / "b", tok, seed=1, **kw)), device=dev)
        common = dict(progress=False, n_singular=3, device=dev)

        def timed(**opts):
            sync()
            t = time.perf_counter()
            df = analyze_model(ad, basis, "bench", **common, **opts)
            sync()
            return time.perf_counter() - t, df

        t1, _ = timed(null_draws=a.draws)
        if "null" in want:
            t0, _ = timed(null_draws=0)
            print(f"weights lens, nulls off: {t0:.1f}s; with {a.draws} draws per fit group: {t1:.1f}s -> ratio "
                  f"{t1 / t0:.2f} (goal <= 3)")
        if "update" in want:
            t2, _ = timed(null_draws=a.draws, lens="update", reference=ref, reference_label="b")
            print(f"update lens: {t2:.1f}s -> {t2 / t1:.2f}x the weights lens (goal <= 2.5)")
        if "gradient" not in want:
            return
        sync()
        t = time.perf_counter()
        for i in range(0, len(win), 32):          # one forward and backward pass over the same windows
            with torch.enable_grad():
                loss = ad.model(win[i:i + 32].to(dev), return_type="loss")
                torch.autograd.grad(loss, [p for p in ad.model.parameters() if p.requires_grad], allow_unused=True)
        sync()
        t_fb = time.perf_counter() - t
        t3, _ = timed(null_draws=a.draws, lens="gradient", gradient=win)
        print(f"gradient lens on {len(win)} windows of T={a.seq_len}: {t3:.1f}s; one forward+backward {t_fb:.1f}s + weights "
              f"fits {t1:.1f}s = {t_fb + t1:.1f}s -> ratio {t3 / (t_fb + t1):.2f} (goal <= 2)")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB"
          + (f", peak CUDA {torch.cuda.max_memory_allocated() / 2**30:.2f} GB" if dev.type == "cuda" else ""))


if __name__ == "__main__":
    main()
