"""Projection and residual beyond the leading term for every head of a real-model-shaped network, against
the dense per-head computation on a subset of heads: time ratio and agreement, measured in one run.

    nice python benchmarks/bench_residual.py                   # Pythia-160m shape: 12 layers x 12 heads, d_model 768, k=4096
    python benchmarks/bench_residual.py --k 50304 --layers 24 --heads 16 --d-model 2048 --device cuda

Ours: :func:`tl_leadterm.analysis.analyze_model` with the nulls off (per head and site: coefficient modulo row
offsets, explained fraction, exact residual norm and top pairs from blocks of rows, top singular
directions by block Krylov), for the sites key_query, circuit_qk, circuit_ov and
circuit_ov_embed, every head and the head averages of every layer.  Dense: for ``--dense-heads``
heads, the k x k matrix formed, rows centred, least squares on the centred target, the residual
formed, its entries sorted and its full SVD.  The model is a randomly initialised GPT-NeoX of the
given shape (vocabulary 50,304, Pythia tokenizer) loaded through TransformerLens; the basis is the
shared TinyStories excerpt's, merge-other, over the top-k tokens.  Needs ``../shared/data`` (or ``--data``).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from tl_leadterm import compute_basis, load_corpus
from tl_leadterm.analysis import analyze_model
from tl_leadterm.analysis.geometry import Geometry
from tl_leadterm.analysis.heads import HEAD_SITES, head_factors
from tl_leadterm.models import load_model, save_random_pythia
from tl_leadterm.theory import SITES

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def dense_head(X: torch.Tensor, T: torch.Tensor, top: int = 5, n_singular: int = 3):
    Xc = X - X.mean(dim=1, keepdim=True)
    Tc = T - T.mean(dim=1, keepdim=True)
    c = float((Xc * Tc).sum() / (Tc * Tc).sum())
    R = Xc - c * Tc
    flat = R.reshape(-1)
    pairs = flat[flat.abs().topk(top).indices]
    S = torch.linalg.svdvals(R)[:n_singular]
    return {"coef": c, "explained": float((c * Tc).norm() ** 2 / Xc.norm() ** 2), "residual_norm": float(R.norm()),
            "pairs": pairs.tolist(), "sv": S.tolist()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=4096)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--d-model", type=int, default=768)
    ap.add_argument("--dense-heads", type=int, default=2, help="heads (of layer 0, per site) recomputed densely")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--data", type=Path, default=DATA)
    a = ap.parse_args()
    dev = torch.device(a.device)
    dt = torch.float64  # the fits run in float64
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    tok = a.data / "gpt-neox-20b-tokenizer.json"
    print(f"device {dev}, float64, torch threads {torch.get_num_threads()}, k={a.k}, "
          f"model {a.layers} layers x {a.heads} heads, d_model {a.d_model}, vocabulary 50,304")
    t = time.perf_counter()
    w = load_corpus(str(a.data / "tinystories-train-head.txt"), seq_len=128, tokenizer=str(tok), vocab_size=50304)
    mode = "exact" if a.k >= 50304 else "merge-other"
    basis = compute_basis(w, top_k=a.k, mode=mode, dtype=torch.float32, device=dev, progress=False)
    print(f"basis ({mode}, float32): {time.perf_counter() - t:.1f}s")
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        ad = load_model(str(save_random_pythia(d, tok, n_layers=a.layers, d_model=a.d_model, n_heads=a.heads)), device=dev)
        print(f"model save + load: {time.perf_counter() - t:.1f}s")
        ids = basis.token_ids.to(dev)
        E = ad.W_E.detach().to(dev, dt)[ids]
        U = ad.W_U.detach().to(dev, dt)[:, ids]
        geom = Geometry(ad, basis, dev)
        sync()
        t = time.perf_counter()
        df = analyze_model(ad, basis, "", progress=False, null_draws=0, model_targets=False, sites=",".join(HEAD_SITES))
        rows = df[df["head"].notna() | df["measure"].isin(["residual_pair", "residual_sv"])].to_dict(orient="records")
        sync()
        t_ours = time.perf_counter() - t
        n_fits = len(HEAD_SITES) * ad.n_layers * (ad.n_heads + 1)
        print(f"ours (analyze_model, residual fits and similarities): {t_ours:.1f}s for {len(HEAD_SITES)} sites x "
              f"{ad.n_layers} layers x ({ad.n_heads} heads + average) = {n_fits} fits, {t_ours / n_fits * 1e3:.0f} ms per fit")
        # dense on a subset
        own = {s: SITES[s].target for s in HEAD_SITES}
        got = {(r["site"], int(r["layer"]), r["head"], r["measure"]): r["value"] for r in rows
               if r["measure"] in ("coef", "explained", "residual_norm") and r["head"] is not None
               and r["target"] in ("", own.get(r["site"]), own.get(r["site"], "") + "")}
        pairs = {}
        for r in rows:
            if r["measure"] in ("residual_pair", "residual_sv") and r["head"] is not pd.NA and r["layer"] is not pd.NA:
                pairs.setdefault((r["site"], int(r["layer"]), r["head"], r["measure"]), []).append(r["value"])
        worst, t_dense, n_dense = 0.0, 0.0, 0
        for site in HEAD_SITES:
            left, right = head_factors(ad, 0, site, geom)
            T = getattr(basis, SITES[site].target).to(dev, torch.float64)
            for h in range(min(a.dense_heads, ad.n_heads)):
                sync()
                t = time.perf_counter()
                ref = dense_head(left[h] @ right[h], T)
                sync()
                t_dense += time.perf_counter() - t
                n_dense += 1
                for m in ("coef", "explained", "residual_norm"):
                    v = got[(site, 0, h, m)]
                    worst = max(worst, abs(v - ref[m]) / max(abs(ref[m]), 1e-300))
                for m, key in (("residual_pair", "pairs"), ("residual_sv", "sv")):
                    for v, rv in zip(pairs[(site, 0, h, m)], ref[key]):
                        worst = max(worst, abs(v - rv) / max(abs(rv), 1e-300))
        per_dense = t_dense / n_dense
        print(f"dense: {per_dense:.2f}s per head ({n_dense} heads); ours {t_ours / n_fits:.3f}s per fit -> "
              f"{per_dense / (t_ours / n_fits):.1f}x faster; all {n_fits} fits densely would take about "
              f"{per_dense * n_fits:.0f}s")
        print(f"agreement on the subset (coef, explained, residual norm, top pairs, top singular values): "
              f"max relative difference {worst:.2e}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB"
          + (f", peak CUDA {torch.cuda.max_memory_allocated() / 2**30:.2f} GB" if dev.type == "cuda" else ""))


if __name__ == "__main__":
    main()
