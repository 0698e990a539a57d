"""Per-head key-query comparison (THEORY.md §5): low-rank algebra vs the dense computation.

    python benchmarks/bench_analysis.py                    # k=5000, Pythia-70m head shape (d_model 512, 8 heads)
    python benchmarks/bench_analysis.py --k 2000 --threads 2

For one layer with ``H`` heads, the model matrices are ``S_h = (A W_Q^h)(A W_K^h)ᵀ``
(``k x k``, rank ``d_head``) and the theory matrix a dense ``k x k`` Q̄.  Both
similarities (the paper's covariance cosine and linear CKA) are computed

* densely: form ``S_h``, centre it, form the ``k x k`` covariance / Gram matrix
  (``O(k³)`` per head) and take its Frobenius cosine with the theory's;
* low-rank (:class:`tl_leadterm.analysis.Family`): ``Tnᵀ A`` once per layer
  (``O(k² d_model)``), then ``O(k d_model d_head)`` per head; no ``k x k`` model matrix.

The theory side (``O(k³)`` once per basis tensor: ``Target.build`` for low-rank, the two
``k x k`` covariance/Gram matrices for dense) is timed separately and excluded from
the per-head figures, since a basis is prepared once for all heads, layers and
checkpoints.  The dense path is timed on ``--dense-heads`` heads (it is slow) and
both paths must agree to 1e-8.  CPU only (no GPU was lent for this task).
"""

from __future__ import annotations

import argparse
import time

import torch

from tl_leadterm.analysis import Factored, Family, Target
from tl_leadterm.analysis.measures import centre_cols, centre_rows, row_normalise


def dense_both(S: torch.Tensor, CT: torch.Tensor, KT: torch.Tensor) -> tuple[float, float]:
    Sc = centre_rows(S)
    C = Sc @ Sc.T
    cov = float((C * CT).sum() / (C.norm() * CT.norm()))
    Sk = centre_cols(S)
    K = Sk @ Sk.T
    cka = float((K * KT).sum() / (K.norm() * KT.norm()))
    return cov, cka


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=5000)
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--n-heads", type=int, default=8)
    ap.add_argument("--dense-heads", type=int, default=1, help="heads timed with the dense computation (default 1)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for both paths (default 1)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    k, d, H = args.k, args.d_model, args.n_heads
    dh = d // H
    g = torch.Generator().manual_seed(args.seed)
    A = torch.randn(k, d, generator=g, dtype=torch.float64)
    WQ = torch.randn(H, d, dh, generator=g, dtype=torch.float64) / d ** 0.5
    WK = torch.randn(H, d, dh, generator=g, dtype=torch.float64) / d ** 0.5
    T = torch.randn(k, k, generator=g, dtype=torch.float64) + 0.1

    t = time.perf_counter()
    tgt = Target.build(T, "key_query")
    t_prep_low = time.perf_counter() - t
    t = time.perf_counter()
    Tn = row_normalise(T)
    a, b = centre_rows(Tn), centre_cols(Tn)
    CT, KT = a @ a.T, b @ b.T
    del a, b
    t_prep_dense = time.perf_counter() - t

    t = time.perf_counter()
    fam = Family(A, None, tgt, plain=False)
    low = [fam.measure(X) for X in Factored.heads(WQ, WK.transpose(1, 2))]
    t_low = time.perf_counter() - t

    nd = max(1, min(args.dense_heads, H))
    t = time.perf_counter()
    dense = []
    for h in range(nd):
        S = (A @ WQ[h]) @ (A @ WK[h]).T
        dense.append(dense_both(S, CT, KT))
    t_dense = time.perf_counter() - t

    for h in range(nd):
        assert abs(dense[h][0] - low[h]["cov_cosine"]) < 1e-8, (dense[h][0], low[h]["cov_cosine"])
        assert abs(dense[h][1] - low[h]["cka"]) < 1e-8, (dense[h][1], low[h]["cka"])
    per_low, per_dense = t_low / H, t_dense / nd
    print(f"k={k}, d_model={d}, heads={H}, d_head={dh}, float64, {args.threads} thread(s), CPU")
    print(f"one-time theory preparation: low-rank {t_prep_low:.2f}s, dense {t_prep_dense:.2f}s")
    print(f"per head (cov_cosine + cka): dense {per_dense:.3f}s ({nd} head(s) timed), low-rank {per_low * 1e3:.2f}ms ({H} heads)")
    print(f"results agree to 1e-8 on {nd} head(s); speed-up per head: {per_dense / per_low:.0f}x")


if __name__ == "__main__":
    main()
