"""Benchmark of the basis engine (not a test).  Prints figures measured in this run.

(a) direct vs ours: the same windows (T=128, |V| = k = 2000, the shared TinyStories
    excerpt with the word tokenizer capped at 2000 entries) through the direct
    formulation (dense one-hot per sequence, explicit T x T x T softmax Jacobian,
    batched dense matmuls) and through ``compute_basis`` (exact mode).  The direct
    passes run on a subset of windows and are extrapolated linearly per window;
    the dense compositions (B̄ᵀB̄, M, Ḡ) are timed once.  Both are float64.
(b) tokens/s on CUDA when available.
(c) the largest k on this machine in float32: merge-other mode at k (default
    16,384) on the excerpt tokenized with the Pythia tokenizer (|V| = 50,304),
    in a child process: wall time, peak RSS vs ``estimate_bytes``; and a k that
    will not fit (32,768) refused up front.

    nice .venv/bin/python benchmarks/bench_basis.py            # (a) (b) and (c) at k=16384
    nice .venv/bin/python benchmarks/bench_basis.py --skip-big  # (a) (b) only
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
TEXT = DATA / "tinystories-train-head.txt"
PYTHIA_TOKENIZER = DATA / "gpt-neox-20b-tokenizer.json"


def gb(b: float) -> str:
    return f"{b / 2**30:.2f} GB"


def rss_peak_bytes(who=resource.RUSAGE_SELF) -> int:
    return resource.getrusage(who).ru_maxrss * 1024  # Linux: KiB


def rss_now_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# ---------------------------------------------------------------------------
# the direct formulation (dense one-hot, explicit softmax Jacobian), batched
# ---------------------------------------------------------------------------
def direct_pass1(tokens: torch.Tensor, V: int, batch: int, dtype=torch.float64):
    """Σ Xᵀ R and Σ Rᵀ (A X) over full windows with dense one-hot X (sums, not yet / n)."""
    N, T1 = tokens.shape
    T = T1 - 1
    A = torch.tril(torch.ones(T, T, dtype=dtype)) / torch.arange(1, T + 1, dtype=dtype)[:, None]
    Bs = torch.zeros(V, V, dtype=dtype)
    Ps = torch.zeros(V, V, dtype=dtype)
    for a in range(0, N, batch):
        tok = tokens[a:a + batch]
        X = torch.nn.functional.one_hot(tok[:, :-1], V).to(dtype)          # [b, T, V]
        R = torch.nn.functional.one_hot(tok[:, 1:], V).to(dtype) - 1.0 / V
        Bs += X.reshape(-1, V).T @ R.reshape(-1, V)
        Cc = A @ X                                                      # causal averages c_t
        Ps += R.reshape(-1, V).T @ Cc.reshape(-1, V)
    return Bs, Ps


def direct_compositions(B: torch.Tensor, Phi: torch.Tensor):
    Sigma = B.T @ B
    M = (B @ Phi).T
    G = M @ B
    return Sigma, M, G


def jacobian_tensor(T: int, dtype=torch.float64) -> torch.Tensor:
    """J[t, k, j] = a_t[k] δ_kj − a_t[k] a_t[j], a_t uniform on 0..t (the T x T x T softmax Jacobian)."""
    t = torch.arange(T)
    a = (t[None, :] <= t[:, None]).to(dtype) / (t[:, None] + 1).to(dtype)   # a[t, k]
    return torch.diag_embed(a) - a[:, :, None] * a[:, None, :]


def direct_pass2(tokens: torch.Tensor, V: int, G: torch.Tensor, batch: int, dtype=torch.float64):
    """Σ Q̄ and Σ p̄ terms with dense X Ḡ products and the explicit Jacobian (sums, not yet / n)."""
    N, T1 = tokens.shape
    T = T1 - 1
    J = jacobian_tensor(T, dtype)
    t = torch.arange(T)
    delta = (t[:, None] - t[None, :]).clamp(min=0)
    causal = t[:, None] >= t[None, :]
    Qs = torch.zeros(V, V, dtype=dtype)
    ps = torch.zeros(T, dtype=dtype)
    for a in range(0, N, batch):
        tok = tokens[a:a + batch]
        X = torch.nn.functional.one_hot(tok[:, :-1], V).to(dtype)
        R = torch.nn.functional.one_hot(tok[:, 1:], V).to(dtype) - 1.0 / V
        XG = X @ G                                                      # [b, T(j), V]
        m = R @ XG.transpose(1, 2)                                      # m[b, t, j] = x_j Ḡ r_tᵀ
        g = torch.einsum("tkj,btj->btk", J, m)                          # g_t = J_t m_t
        Qs += X.reshape(-1, V).T @ (g @ X).reshape(-1, V)               # Σ_t Σ_k x_tᵀ g_t[k] x_k
        ps += torch.zeros(T, dtype=dtype).index_add_(0, delta[causal], g.sum(0)[causal])
    return Qs, ps


def part_a(n_direct: int, batch: int) -> None:
    from tl_leadterm import compute_basis, load_corpus

    print("== (a) direct formulation vs compute_basis, T=128, |V| = k = 2000, float64, CPU")
    w = load_corpus(TEXT, seq_len=128, word_vocab_size=2000)
    V, N = w.vocab_size, w.n_windows
    assert bool((w.lengths == 129).all())
    print(f"corpus: {TEXT.name} (word tokenizer, {V} entries), {N} windows of 129 tokens, {w.n_positions:,} positions; "
          f"torch threads: {torch.get_num_threads()}")

    t0 = time.perf_counter()
    ours = compute_basis(w, top_k=V, mode="exact", progress=False)
    t_ours = time.perf_counter() - t0
    print(f"ours (compute_basis, exact, all {N} windows): {t_ours:.1f} s  ({w.n_positions / t_ours:,.0f} positions/s)")

    # the direct formulation on a subset, checked against ours on that subset
    sub = w[:n_direct]
    tok = sub.tokens
    t0 = time.perf_counter()
    Bs, Ps = direct_pass1(tok, V, batch)
    t_p1 = time.perf_counter() - t0
    n = sub.n_positions
    B, Phi = Bs / n, Ps / n
    t0 = time.perf_counter()
    Sigma, M, G = direct_compositions(B, Phi)
    t_comp = time.perf_counter() - t0
    t0 = time.perf_counter()
    Qs, ps = direct_pass2(tok, V, G, batch)
    t_p2 = time.perf_counter() - t0
    check = compute_basis(sub, token_ids=list(range(V)), mode="exact", progress=False)
    err = max(float((check.key_query - Qs / n).abs().max() / (Qs / n).abs().max()),
              float((check.bigram - B).abs().max() / B.abs().max()),
              float((check.position - ps / n).abs().max() / (ps / n).abs().max()))
    per_window = (t_p1 + t_p2) / n_direct
    t_direct = per_window * N + t_comp
    print(f"direct on {n_direct} windows (batches of {batch}): pass 1 {t_p1:.1f} s, pass 2 {t_p2:.1f} s "
          f"({per_window * 1000:.0f} ms/window), dense compositions {t_comp:.1f} s; "
          f"max relative difference from ours on the subset: {err:.1e}")
    print(f"direct, extrapolated linearly per window to all {N} windows: {per_window:.3f} s x {N} + {t_comp:.1f} s "
          f"= {t_direct:.0f} s")
    print(f"speed-up (direct / ours): {t_direct / t_ours:.0f}x")


def part_b() -> None:
    print("== (b) CUDA")
    if not torch.cuda.is_available():
        print("CUDA not available")
        return
    from tl_leadterm import compute_basis, load_corpus

    w = load_corpus(TEXT, seq_len=128, word_vocab_size=2000)
    compute_basis(w[:64], top_k=2000, device="cuda", progress=False)  # warm-up
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    compute_basis(w, top_k=2000, device="cuda", progress=False)
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    print(f"CUDA ({torch.cuda.get_device_name()}): {w.n_positions / dt:,.0f} tokens/s (exact, |V| = k = 2000, float64)")


# ---------------------------------------------------------------------------
# (c) the largest k, in a child process so that its peak RSS is its own
# ---------------------------------------------------------------------------
def child_big_k(k: int, out: str) -> None:
    from tl_leadterm import compute_basis, load_corpus
    from tl_leadterm.basis import estimate_bytes

    w = load_corpus(TEXT, seq_len=128, tokenizer=str(PYTHIA_TOKENIZER), vocab_size=50304)
    base = rss_now_bytes()
    t0 = time.perf_counter()
    b = compute_basis(w, top_k=k, mode="merge-other", dtype=torch.float32, progress=False)
    t_compute = time.perf_counter() - t0
    b.save(out)
    wall = time.perf_counter() - t0
    peak = rss_peak_bytes()
    print(json.dumps({"k": k, "vocab_size": w.vocab_size, "windows": w.n_windows, "positions": w.n_positions,
                      "compute_s": t_compute, "wall_s": wall, "baseline_rss": base, "peak_rss": peak,
                      "estimate": estimate_bytes(k + 1, torch.float32, k), "file_bytes": os.path.getsize(out),
                      "mode": b.mode}))


def part_c(k: int, refuse_k: int) -> None:
    from tl_leadterm.basis import available_bytes, choose_mode, estimate_bytes
    from tl_leadterm.errors import LeadTermError

    print(f"== (c) largest k in float32 (merge-other, |V| = 50,304), this machine: {gb(available_bytes())} available now")
    try:
        choose_mode(50304, refuse_k, "merge-other", torch.float32)
        print(f"k={refuse_k}: NOT refused (estimate {gb(estimate_bytes(refuse_k + 1, torch.float32, refuse_k))})")
    except LeadTermError as e:
        print(f"k={refuse_k} refused up front: error: {e}")
    need = estimate_bytes(k + 1, torch.float32, k)
    if need > available_bytes():
        print(f"k={k}: skipped, estimate {gb(need)} > available {gb(available_bytes())} (machine busy?)")
        return
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "basis.safetensors")
        r = subprocess.run([sys.executable, __file__, "--child-k", str(k), "--child-out", out],
                           capture_output=True, text=True)
        if r.returncode != 0:
            print(f"k={k}: child failed ({r.returncode}): {r.stderr.strip().splitlines()[-1:]}")
            return
        res = json.loads(r.stdout.strip().splitlines()[-1])
    used = res["peak_rss"] - res["baseline_rss"]
    print(f"k={res['k']}: {res['windows']} windows, {res['positions']:,} positions; compute {res['compute_s']:.0f} s, "
          f"with save {res['wall_s']:.0f} s; file {gb(res['file_bytes'])}")
    print(f"peak RSS {gb(res['peak_rss'])} (corpus + imports before the basis: {gb(res['baseline_rss'])}; "
          f"basis computation: {gb(used)}); choose_mode's estimate {gb(res['estimate'])} "
          f"(= {res['estimate'] / max(used, 1):.2f}x the measured)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--direct-windows", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--k", type=int, default=16384)
    ap.add_argument("--refuse-k", type=int, default=32768)
    ap.add_argument("--skip-big", action="store_true")
    ap.add_argument("--only-big", action="store_true")
    ap.add_argument("--child-k", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_k is not None:
        child_big_k(args.child_k, args.child_out)
        return
    if not args.only_big:
        part_a(args.direct_windows, args.batch)
        part_b()
    if not args.skip_big:
        part_c(args.k, args.refuse_k)


if __name__ == "__main__":
    main()
