"""The two streaming passes of the basis engine and the compositions between them.

Modes
-----
``exact``
    Every product runs over the full vocabulary (dense ``|V| x |V|`` working
    matrices).  The sub-blocks are exactly those of the full-vocabulary matrices.
``merge-other``
    For vocabularies too large for memory (Pythia's 50,304): every token outside
    the chosen ``k`` is merged into one class OTHER whose ``|V|-k`` members are
    taken to share the class-average statistics (a block-constant, mean-field
    approximation).  B̄ and Φ̄ entries on the chosen tokens stay exact; the
    products ΣB̄, M, Ḡ and the Q̄/p̄ pass replace each out-of-set token's own row by
    the class average, with the class weighted by its size ``|V|-k`` in every sum
    over the vocabulary.  With ``k = |V|`` the class is empty and the two modes
    agree exactly.
``auto`` (default)
    ``exact`` when its working matrices fit in memory and the vocabulary is at
    most :data:`AUTO_EXACT_MAX_VOCAB` (8,192 on CPU, 65,536 on CUDA: beyond that
    the dense ``|V|³`` products take hours on a CPU), otherwise ``merge-other``
    with a warning that says why.  Ask for ``exact`` explicitly to lift the
    vocabulary limit (memory is still checked up front).

Algorithm
---------
Two streaming passes over the windows, each O(tokens x T) gathers and
scatter-adds (no dense one-hot, no T x T x T tensor):

1. counts ``C[x, y]`` and context weights ``S[y, x_k] += 1/(t+1)`` for every
   pair ``k <= t`` (:class:`FirstPassStats`; shards merge by ``+``);
2. with Ḡ of the whole corpus, ``m_t[j] = Ḡ[x_j, y_t] - (1/|V|) Σ_b Ḡ[x_j, b]``
   is a gather, the softmax Jacobian at uniform attention is a centring and a
   scaling, and Q̄/p̄ are scatter-adds (:class:`SecondPassStats`; shards merge by ``+``).

Accumulation is float64 by default, on CPU or CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from ..corpus import Windows
from ..errors import LeadTermError, require
from ..params import check


@dataclass
class BasisSpec:
    """Which tokens, in which working vocabulary.

    ``remap[v]`` is token v's index in the working vocabulary of size ``W``;
    ``mult[w]`` is how many real tokens working index ``w`` stands for; ``sel``
    are the working indices of the chosen ``token_ids`` (in order).
    """

    vocab_size: int
    token_ids: Int[Tensor, "k"]
    mode: str  # "exact" | "merge-other"

    def __post_init__(self) -> None:
        V, K = self.vocab_size, self.token_ids.long().cpu()
        self.token_ids = K
        k = K.numel()
        if self.mode == "exact":
            self.W = V
            self.remap = torch.arange(V)
            self.mult = torch.ones(V, dtype=torch.float64)
            self.sel = K.clone()
        elif self.mode == "merge-other":
            self.W = k + 1
            self.remap = torch.full((V,), k, dtype=torch.long)
            self.remap[K] = torch.arange(k)
            self.mult = torch.ones(k + 1, dtype=torch.float64)
            self.mult[k] = V - k
            self.sel = torch.arange(k)
        else:
            raise LeadTermError(f"mode must be 'auto', 'exact' or 'merge-other', got {self.mode!r}")
        self.kidx = torch.full((self.W,), -1, dtype=torch.long)
        self.kidx[self.sel] = torch.arange(k)

    @property
    def k(self) -> int:
        return self.token_ids.numel()



# ---------------------------------------------------------------------------
# pass 1
# ---------------------------------------------------------------------------
#: bytes per causal (t, j) pair held at once by a pass (indices, weights, gathered values, scatter indices)
_BYTES_PER_PAIR = 64


def pass_bytes(T: int) -> int:
    """Peak temporaries of a pass over windows of ``T`` positions (at least one window of T(T+1)/2 pairs)."""
    return max(1, _chunk_size(T)) * T * (T + 1) // 2 * _BYTES_PER_PAIR


def check_pass_memory(T: int, device=None) -> None:
    """Refuse up front a sequence length whose causal pairs will not fit, with the fix that applies."""
    from ..io import available_bytes

    need, have = pass_bytes(T), available_bytes(device)
    if need > have:
        fit = 2
        while pass_bytes(fit * 2) <= have:
            fit *= 2
        raise LeadTermError(f"windows of T={T:,} positions hold {T * (T + 1) // 2:,} causal pairs, about {need / 2**30:.1f} GB "
                            f"in the basis passes, but {have / 2**30:.1f} GB is available; use {{seq_len}} {fit} or less")


def _chunk_size(T: int, target: int = 1 << 22) -> int:
    return max(1, target // max(1, T * T))


def _iter_chunks(windows: Windows, chunk: int, desc: str, progress: bool):
    chunk = check("chunk_size", chunk)
    n = windows.n_windows
    bar = tqdm(total=windows.n_positions, desc=desc, unit="tok", unit_scale=True, disable=not progress, leave=False)
    for a in range(0, n, chunk):
        w = windows[a:a + chunk]
        yield w
        bar.update(w.n_positions)
    bar.close()


@dataclass
class FirstPassStats:
    """Sufficient statistics of pass 1 in the working vocabulary (mergeable by ``+``).

    ``counts[x, y]``: number of positions with input x and target y;
    ``context[y, x]``: Σ over positions with target y of the causal average weight of x.
    """

    spec: BasisSpec
    seq_len: int
    counts: Float[Tensor, "W W"]
    context: Float[Tensor, "W W"]
    n: int

    def __add__(self, other: "FirstPassStats") -> "FirstPassStats":
        _check_same_spec(self, other)
        return FirstPassStats(self.spec, self.seq_len, self.counts + other.counts, self.context + other.context, self.n + other.n)

    def checksum(self) -> tuple:
        """A cheap fingerprint used to refuse merging second passes made with another Ḡ."""
        w = torch.arange(1, self.counts.shape[0] + 1, dtype=self.counts.dtype, device=self.counts.device)
        return (self.n, round(float(self.counts.sum()), 6), round(float((self.context.sum(0) * w).sum()), 6))


def _check_same_spec(a, b) -> None:
    require(a.spec.vocab_size == b.spec.vocab_size and a.spec.mode == b.spec.mode
            and torch.equal(a.spec.token_ids, b.spec.token_ids) and a.seq_len == b.seq_len,
            "cannot merge statistics of different token sets, vocabularies, modes or sequence lengths; compute every shard with the same spec")


def _prepare(windows: Windows, spec: BasisSpec, device):
    x = spec.remap.to(device)[windows.inputs.to(device)]
    y = spec.remap.to(device)[windows.targets.to(device)]
    valid = windows.valid.to(device)
    return x, y, valid


def first_pass(windows: Windows, spec: BasisSpec, *, dtype: torch.dtype = torch.float64, device=None,
               progress: bool = True, chunk_size: int | None = None) -> FirstPassStats:
    """Pass 1: bigram counts and causal-context weights (see module docstring).

    Works on the T(T+1)/2 causal pairs of each window directly (no T x T masks);
    padded positions get weight 0, so they add nothing.
    """
    device = torch.device(device or "cpu")
    _check_windows(windows, spec)
    T, W = windows.seq_len, spec.W
    counts = torch.zeros(W * W, dtype=dtype, device=device)
    context = torch.zeros(W * W, dtype=dtype, device=device)
    ti, ji = torch.tril_indices(T, T, device=device)  # the causal pairs (t, j), j <= t
    inv = 1.0 / (ti + 1).to(dtype)                                    # 1/(t+1) per pair
    for w in _iter_chunks(windows, check("chunk_size", chunk_size, optional=True) or _chunk_size(T), "basis pass 1/2", progress):
        x, y, valid = _prepare(w, spec, device)
        vf = valid.to(dtype)
        counts.index_add_(0, (x * W + y).reshape(-1), vf.reshape(-1))
        context.index_add_(0, (y[:, ti] * W + x[:, ji]).reshape(-1), (vf[:, ti] * inv).reshape(-1))
    return FirstPassStats(spec, T, counts.view(W, W), context.view(W, W), windows.n_positions)


@dataclass
class Compositions:
    """The working-vocabulary products needed by pass 2, and the k x k outputs of pass 1."""

    spec: BasisSpec
    seq_len: int
    n: int
    blocks: dict[str, Tensor]         # bigram/context/interchange/value/value_output: k x k
    centred_value_output: Tensor      # W x W: Ḡ[a, b] - (1/|V|) Σ_b' Ḡ[a, b'] (class-weighted)
    checksum: tuple


def compositions(stats: FirstPassStats, *, consume: bool = False) -> Compositions:
    """B̄, Φ̄, ΣB̄, M, Ḡ from pass-1 statistics (k x k blocks) and the centred Ḡ for pass 2.

    Memory: the working matrices are updated in place wherever possible; with
    ``consume=True`` the pass-1 statistics themselves become B̄ and Φ̄ (and are
    dropped from ``stats``), which saves two ``W x W`` matrices.
    """
    spec, n, V = stats.spec, stats.n, stats.spec.vocab_size
    require(n > 0, "the corpus has no data positions; give a larger corpus")
    require(stats.counts is not None, "these pass-1 statistics were consumed by an earlier compositions() call; recompute them")
    checksum = stats.checksum()
    C, S = stats.counts, stats.context
    if consume:
        stats.counts = stats.context = None
    dt, dev = C.dtype, C.device
    mult = spec.mult.to(dev, dt)
    msafe = mult.clamp(min=1)
    cx = C.sum(1)
    s = S.sum(0)
    # B̄ and Φ̄ as per-member (class-average) values; exact for real tokens:
    # B̄ = (C - cx multᵀ/|V|) / (n msafe msafeᵀ),  Φ̄ = (S - mult sᵀ/|V|) / (n msafe msafeᵀ)
    B = C.addr_(cx, mult, alpha=-1.0 / V) if consume else torch.addr(C, cx, mult, alpha=-1.0 / V)
    B.div_(msafe[:, None] * n).div_(msafe[None, :])
    Phi = S.addr_(mult, s, alpha=-1.0 / V) if consume else torch.addr(S, mult, s, alpha=-1.0 / V)
    Phi.div_(msafe[:, None] * n).div_(msafe[None, :])
    del C, S
    k = spec.k
    sel = spec.sel.to(dev)
    leading = bool(torch.equal(spec.sel, torch.arange(k)))  # the chosen tokens are working indices 0..k-1

    def block(A):
        if leading:
            return A[:k, :k].clone()
        return A.index_select(0, sel).index_select(1, sel)

    out = {"bigram": block(B), "context": block(Phi)}
    # ΣB̄ = B̄ᵀ D B̄ is only needed on the chosen block: a W x k x k product
    Bsel = B[:, :k] if leading else B.index_select(1, sel)
    out["interchange"] = Bsel.T @ (Bsel * mult[:, None])
    del Bsel
    Phi.mul_(mult[:, None])
    M = Phi.T @ B.T                    # M = Φ̄ᵀ D B̄ᵀ: context x current
    del Phi
    out["value"] = block(M)
    M.mul_(mult[None, :])
    G = M @ B                          # Ḡ = M D B̄: context x next
    del M, B
    out["value_output"] = block(G)
    G -= (G @ mult)[:, None] / V
    return Compositions(spec, stats.seq_len, n, out, G, checksum)


# ---------------------------------------------------------------------------
# pass 2
# ---------------------------------------------------------------------------
@dataclass
class SecondPassStats:
    """Sums (not yet divided by n) of the key-query and position terms; mergeable by ``+``."""

    spec: BasisSpec
    seq_len: int
    key_query: Float[Tensor, "k k"]
    position: Float[Tensor, "T"]
    n: int
    checksum: tuple

    def __add__(self, other: "SecondPassStats") -> "SecondPassStats":
        _check_same_spec(self, other)
        require(self.checksum == other.checksum,
                "cannot merge second-pass statistics computed with different first-pass (Ḡ) statistics; run pass 2 on every shard with the Ḡ of the whole corpus")
        return SecondPassStats(self.spec, self.seq_len, self.key_query + other.key_query,
                               self.position + other.position, self.n + other.n, self.checksum)


def second_pass(windows: Windows, comp: Compositions, *, progress: bool = True, chunk_size: int | None = None) -> SecondPassStats:
    """Pass 2: Q̄ and p̄ sums given the whole corpus' Ḡ (see module docstring)."""
    spec = comp.spec
    _check_windows(windows, spec)
    require(windows.seq_len == comp.seq_len, f"pass 2 windows have T={windows.seq_len} but pass 1 had T={comp.seq_len}; use the same {{seq_len}}")
    Gc = comp.centred_value_output
    dev, dt = Gc.device, Gc.dtype
    T, W, k = windows.seq_len, spec.W, spec.k
    # pairs with a token outside the chosen k go to one dummy slot k*k, dropped at the end
    kidx = spec.kidx.to(dev).clone()
    outside = kidx < 0
    kidx[outside] = k * k  # any index * k + index >= k*k  ->  clamped to the dummy slot below
    Gflat = Gc.reshape(-1)
    Q = torch.zeros(k * k + 1, dtype=dt, device=dev)
    p = torch.zeros(T, dtype=dt, device=dev)
    ti, ji = torch.tril_indices(T, T, device=dev)
    cnt = (torch.arange(T, device=dev) + 1).to(dt)
    inv = 1.0 / cnt[ti]
    delta = ti - ji
    for w in _iter_chunks(windows, check("chunk_size", chunk_size, optional=True) or _chunk_size(T), "basis pass 2/2", progress):
        x, y, valid = _prepare(w, spec, dev)
        m = Gflat[x[:, ji] * W + y[:, ti]]                            # m[c, (t, j)] = Ḡc[x_j, y_t]
        mean = torch.zeros(x.shape[0], T, dtype=dt, device=dev).index_add_(1, ti, m) / cnt   # mean over j <= t
        g = (m - mean[:, ti]) * (valid[:, ti].to(dt) * inv)           # softmax Jacobian at uniform attention
        qi = kidx[x]
        Q.index_add_(0, (qi[:, ti] * k + qi[:, ji]).clamp_(max=k * k).reshape(-1), g.reshape(-1))
        p.index_add_(0, delta, g.sum(0))
    Q = Q[: k * k].view(k, k)
    return SecondPassStats(spec, T, Q, p, windows.n_positions, comp.checksum)


def _check_windows(windows: Windows, spec: BasisSpec) -> None:
    require(windows.n_windows > 0 and windows.n_positions > 0, "the corpus has no data positions; give a larger corpus")
    require(windows.vocab_size == spec.vocab_size,
            f"windows have vocab size {windows.vocab_size} but the basis spec has {spec.vocab_size}; use one {{vocab_size}}")
