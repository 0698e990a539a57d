"""Basis stage: the paper's basis functions and their compositions from a corpus.

Notation and orientation follow THEORY.md (§2-3).  With ``n`` data positions,
``r_t = y_t - 1/|V|`` and ``c_t`` the uniform causal average of the context:

=================  =======================  ===========================  ================
tensor name        symbol                   definition                   rows x cols
=================  =======================  ===========================  ================
``bigram``         B̄                        (1/n) Σ_t x_tᵀ r_t           current x next
``context``        Φ̄                        (1/n) Σ_t r_tᵀ c_t           next x context
``interchange``    ΣB̄                       B̄ᵀ B̄                         next x next
``value``          M                        (B̄ Φ̄)ᵀ = Φ̄ᵀ B̄ᵀ              context x current
``value_output``   Ḡ                        M B̄ = Φ̄ᵀ ΣB̄                 context x next
``key_query``      Q̄                        (1/n) Σ_t Σ_k x_tᵀ g_t[k] x_k  query x key
``position``       p̄                        (1/n) Σ_t g_t[t-δ]           δ = 0..T-1
=================  =======================  ===========================  ================

All definitions are over the full vocabulary ``V``; a basis keeps the ``k x k``
sub-block for ``k`` chosen tokens (top-k by frequency or an explicit list, in
that order) and the full ``p̄``.

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

import json
import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Iterable, Literal, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from . import __version__
from .corpus import Windows
from .errors import LeadTermError, require
from .io import load_safetensors, save_safetensors_atomic

Mode = Literal["auto", "exact", "merge-other"]
BASIS_FORMAT = "tl_leadterm.basis/1"
MATRIX_NAMES = ("bigram", "context", "interchange", "value", "value_output", "key_query")
TENSOR_NAMES = MATRIX_NAMES + ("position", "token_ids")
SYMBOLS = {
    "bigram": "B̄", "context": "Φ̄", "interchange": "ΣB̄", "value": "M",
    "value_output": "Ḡ", "key_query": "Q̄", "position": "p̄",
}
# rows/cols of each matrix (THEORY.md orientation)
ORIENTATION = {
    "bigram": ("current", "next"), "context": ("next", "context"), "interchange": ("next", "next"),
    "value": ("context", "current"), "value_output": ("context", "next"), "key_query": ("query", "key"),
}
# Peak memory, measured (benchmarks/bench_basis.py): compositions() holds at most 3 dense W x W
# working matrices (B̄, Φ̄ or Ḡ, M) while the output grows to 5 k x k blocks, plus the k x k
# Q̄ accumulator of pass 2; chunk temporaries stay under _FIXED_BYTES.
_WORKING_MATRICES = 3   # W x W
_OUTPUT_MATRICES = 5    # k x k
_FIXED_BYTES = 512 * 2**20


# ---------------------------------------------------------------------------
# the working vocabulary
# ---------------------------------------------------------------------------
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


def estimate_bytes(working_size: int, dtype: torch.dtype = torch.float64, k: int | None = None) -> int:
    """Peak memory of a basis computation of ``k`` tokens (default: all) with a ``working_size`` vocabulary.

    ``3 W² + 5 k²`` matrix entries plus 512 MB for chunk temporaries: with k = W that is
    8 W², e.g. about 9.1 GB for merge-other at k = 16,384 in float32 (measured peak 8.6 GB).
    """
    itemsize = torch.finfo(dtype).bits // 8
    k = working_size if k is None else k
    return (_WORKING_MATRICES * working_size * working_size + _OUTPUT_MATRICES * k * k) * itemsize + _FIXED_BYTES


def available_bytes(device: torch.device | str | None = None) -> int:
    """Memory available for a computation on ``device`` (RAM for CPU)."""
    device = torch.device(device or "cpu")
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        return info.get("MemAvailable", info.get("MemFree", 8 * 2**30))
    except OSError:  # pragma: no cover
        return 8 * 2**30


def _gb(b: float) -> str:
    return f"{b / 2**30:.1f} GB"


def _largest_k(budget: int, dtype: torch.dtype) -> int:
    """The largest k whose merge-other basis fits in ``budget`` bytes (0 if none)."""
    itemsize = torch.finfo(dtype).bits // 8
    entries = max(0, budget - _FIXED_BYTES) // itemsize
    k = int(math.isqrt(entries // (_WORKING_MATRICES + _OUTPUT_MATRICES)))
    while k > 0 and estimate_bytes(k + 1, dtype, k) > budget:
        k -= 1
    return k


#: ``auto`` uses exact mode only up to this vocabulary size (per device type), for time.
AUTO_EXACT_MAX_VOCAB = {"cpu": 8_192, "cuda": 65_536}


def choose_mode(vocab_size: int, k: int, mode: Mode, dtype: torch.dtype, device=None, budget: int | None = None) -> str:
    """Resolve ``auto``; refuse up front what was explicitly asked for and will not fit."""
    budget = available_bytes(device) if budget is None else budget
    exact_need, merge_need = estimate_bytes(vocab_size, dtype, k), estimate_bytes(k + 1, dtype, k)
    dname = str(dtype).replace("torch.", "")
    dev_type = torch.device(device).type if device is not None else "cpu"
    vocab_cap = AUTO_EXACT_MAX_VOCAB.get(dev_type, AUTO_EXACT_MAX_VOCAB["cpu"])
    too_slow = mode == "auto" and vocab_size > vocab_cap and k < vocab_size
    if mode == "exact":
        require(exact_need <= budget,
                f"exact mode needs about {_gb(exact_need)} for |V|={vocab_size} in {dname} but {_gb(budget)} is available; "
                "use --mode merge-other (or auto), --dtype float32, or a smaller vocabulary")
        return "exact"
    if mode == "merge-other" or (mode == "auto" and (exact_need > budget or too_slow)):
        if merge_need > budget:
            fit = _largest_k(budget, dtype)
            raise LeadTermError(
                f"a basis of k={k} tokens needs about {_gb(merge_need)} in {dname} but {_gb(budget)} is available; "
                + (f"use --top-k {fit} or less" if fit >= 1 else "free some memory")
                + (" or --dtype float32" if dtype == torch.float64 else ""))
        if mode == "auto":
            why = (f"needs about {_gb(exact_need)} ({_gb(budget)} available)" if exact_need > budget else
                   f"takes dense |V|^3 products, too slow on {dev_type} above |V|={vocab_cap:,} (ask for --mode exact to run it anyway)")
            warnings.warn(
                f"the exact basis over |V|={vocab_size} {why}: "
                f"using the merge-other approximation (tokens outside the {k} chosen share one class-average row); "
                "the file records mode=merge-other", stacklevel=3)
        return "merge-other"
    if mode != "auto":
        raise LeadTermError(f"mode must be 'auto', 'exact' or 'merge-other', got {mode!r}")
    return "exact"


# ---------------------------------------------------------------------------
# pass 1
# ---------------------------------------------------------------------------
def _chunk_size(T: int, target: int = 1 << 22) -> int:
    return max(1, target // max(1, T * T))


def _iter_chunks(windows: Windows, chunk: int, desc: str, progress: bool):
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


def _causal_pairs(T: int, device):
    """The T(T+1)/2 causal (t, j) pairs with j <= t, row-major, as index vectors ``ti``, ``ji``."""
    ti, ji = torch.tril_indices(T, T, device=device)
    return ti, ji


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
    ti, ji = _causal_pairs(T, device)
    inv = 1.0 / (ti + 1).to(dtype)                                    # 1/(t+1) per pair
    for w in _iter_chunks(windows, chunk_size or _chunk_size(T), "basis pass 1/2", progress):
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
    spec, n, V = stats.spec, stats.n, spec_vocab(stats)
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


def spec_vocab(stats) -> int:
    return stats.spec.vocab_size


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
    require(windows.seq_len == comp.seq_len, f"pass 2 windows have T={windows.seq_len} but pass 1 had T={comp.seq_len}; use the same --seq-len")
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
    ti, ji = _causal_pairs(T, dev)
    cnt = (torch.arange(T, device=dev) + 1).to(dt)
    inv = 1.0 / cnt[ti]
    delta = ti - ji
    for w in _iter_chunks(windows, chunk_size or _chunk_size(T), "basis pass 2/2", progress):
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
            f"windows have vocab size {windows.vocab_size} but the basis spec has {spec.vocab_size}; use one --vocab-size")


# ---------------------------------------------------------------------------
# the Basis value
# ---------------------------------------------------------------------------
@dataclass
class Basis:
    """The basis of a corpus over ``k`` chosen tokens (THEORY.md names and orientations).

    Matrices are ``k x k`` with rows/columns indexed by ``token_ids`` (in order);
    ``position`` has length ``seq_len``.  Use :meth:`save` / :meth:`load` for files.
    """

    bigram: Float[Tensor, "k k"]
    context: Float[Tensor, "k k"]
    interchange: Float[Tensor, "k k"]
    value: Float[Tensor, "k k"]
    value_output: Float[Tensor, "k k"]
    key_query: Float[Tensor, "k k"]
    position: Float[Tensor, "T"]
    token_ids: Int[Tensor, "k"]
    vocab_size: int
    seq_len: int
    n_positions: int
    mode: str
    tokenizer_json: str | None = None
    corpus_fingerprint: str = ""
    corpus_source: str = ""
    version: str = __version__
    _tokenizer: object = field(default=None, repr=False, compare=False)

    # -- basic access ------------------------------------------------------
    @property
    def k(self) -> int:
        return int(self.token_ids.numel())

    @property
    def matrices(self) -> dict[str, Tensor]:
        return {name: getattr(self, name) for name in MATRIX_NAMES}

    def __getitem__(self, name: str) -> Tensor:
        require(name in TENSOR_NAMES, f"unknown basis tensor {name!r}; choose one of {', '.join(TENSOR_NAMES)}")
        return getattr(self, name)

    @property
    def tokenizer(self):
        """The tokenizer recorded in the file (word vocabularies are embedded), or None."""
        if self._tokenizer is None and self.tokenizer_json:
            from .tokenization import tokenizer_from_json
            self._tokenizer = tokenizer_from_json(self.tokenizer_json)
        return self._tokenizer

    @property
    def tokenizer_identity(self) -> dict:
        if not self.tokenizer_json:
            return {}
        d = json.loads(self.tokenizer_json)
        return {k: d.get(k) for k in ("kind", "name", "fingerprint")}

    def token_strs(self) -> list[str]:
        """The chosen tokens as strings (ids as ``<id N>`` when no tokenizer is recorded)."""
        ids = self.token_ids.tolist()
        try:
            tok = self.tokenizer
        except LeadTermError:
            tok = None
        return tok.token_strs(ids) if tok is not None else [f"<id {i}>" for i in ids]

    def index_of(self, token_ids: Sequence[int] | Tensor) -> Int[Tensor, "m"]:
        """Positions of ``token_ids`` among the basis tokens (-1 where absent)."""
        lookup = torch.full((self.vocab_size,), -1, dtype=torch.long)
        lookup[self.token_ids] = torch.arange(self.k)
        ids = torch.as_tensor(token_ids, dtype=torch.long)
        out = torch.full_like(ids, -1)
        ok = (ids >= 0) & (ids < self.vocab_size)
        out[ok] = lookup[ids[ok]]
        return out

    def to(self, device=None, dtype=None) -> "Basis":
        kw = {}
        for name in MATRIX_NAMES + ("position",):
            kw[name] = getattr(self, name).to(device=device, dtype=dtype)
        return _replace(self, **kw, token_ids=self.token_ids.to(device))

    def restrict(self, token_ids: Sequence[int] | Tensor) -> "Basis":
        """The sub-block over a subset of this basis' tokens (in the given order)."""
        idx = self.index_of(token_ids)
        require(bool((idx >= 0).all()), "restrict() got token ids that are not in this basis; choose ids from basis.token_ids")
        kw = {name: getattr(self, name)[idx][:, idx] for name in MATRIX_NAMES}
        return _replace(self, **kw, token_ids=self.token_ids[idx].clone())

    def sub_block(self, weight: Float[Tensor, "V V"] | Float[Tensor, "n_ctx"]) -> Tensor:
        """The part of a full-vocabulary toy weight that this basis describes, in basis order.

        A ``|V| x |V|`` matrix gives ``weight[token_ids][:, token_ids]`` (``k x k``, rows and
        columns in the order of ``token_ids``, which for ``top_k`` is by frequency, not by id);
        a position vector gives its first ``seq_len`` entries.  Compare it with
        :meth:`leading_term`.
        """
        w = weight.detach()
        if w.dim() == 1:
            require(w.shape[0] >= self.seq_len, f"a position vector of length {w.shape[0]} is shorter than the basis' seq_len={self.seq_len}")
            return w[: self.seq_len]
        require(w.dim() == 2 and w.shape[0] == w.shape[1] == self.vocab_size,
                f"sub_block() needs a |V| x |V| weight with |V|={self.vocab_size} (or a position vector), got shape {tuple(w.shape)}")
        ids = self.token_ids.to(w.device)
        return w.index_select(0, ids).index_select(1, ids)

    # -- leading terms -----------------------------------------------------
    def leading_term(self, weight: str, steps: int = 1, lr: float = 1.0) -> Tensor:
        """The leading term of a toy-model weight after ``steps`` GD steps of size ``lr``.

        ``weight`` is ``"W_O"``, ``"V"``, ``"W"`` or ``"P"`` (layer suffixes such as
        ``"V.1"`` are accepted: every layer has the same leading term).  Matrices are in
        basis order (rows and columns follow ``token_ids``): compare them with
        ``sub_block(model.V(l))`` and the like, not with the raw weight.
        """
        base = weight.split(".")[0]
        mat = {"W_O": self.bigram, "V": self.value, "W": self.key_query, "P": self.position}
        require(base in mat, f"unknown toy weight {weight!r}; choose W_O, V.l, W.l or P.l")
        return leading_coefficient(base, steps, lr) * mat[base]

    # -- files ---------------------------------------------------------------
    def metadata(self) -> dict[str, str]:
        return {
            "format": BASIS_FORMAT,
            "vocab_size": str(self.vocab_size),
            "seq_len": str(self.seq_len),
            "n_positions": str(self.n_positions),
            "k": str(self.k),
            "mode": self.mode,
            "tokenizer": self.tokenizer_json or "",
            "corpus_fingerprint": self.corpus_fingerprint,
            "corpus_source": self.corpus_source,
            "package_version": self.version,
            "dtype": str(self.bigram.dtype).replace("torch.", ""),
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write a safetensors file atomically (tensor names = THEORY.md names)."""
        tensors = {name: getattr(self, name) for name in MATRIX_NAMES + ("position",)}
        tensors["token_ids"] = self.token_ids.long()
        save_safetensors_atomic(path, tensors, self.metadata())

    @classmethod
    def load(cls, path: str | os.PathLike, device=None) -> "Basis":
        """Read and validate a basis file; any problem is a one-line error."""
        tensors, meta = load_safetensors(path, "basis file")
        p = str(path)
        require(meta.get("format") == BASIS_FORMAT,
                f"{p} is not a tl_leadterm basis file (format {meta.get('format')!r}); build one with 'tl-leadterm basis'")
        missing = [n for n in TENSOR_NAMES if n not in tensors]
        require(not missing, f"basis file {p} lacks tensors {', '.join(missing)}; rebuild it with 'tl-leadterm basis'")
        try:
            V, T, n, k = (int(meta[key]) for key in ("vocab_size", "seq_len", "n_positions", "k"))
        except (KeyError, ValueError):
            raise LeadTermError(f"basis file {p} has missing or malformed metadata; rebuild it with 'tl-leadterm basis'") from None
        require(V >= 2 and T >= 2 and n >= 1 and 1 <= k <= V,
                f"basis file {p} has inconsistent metadata (vocab_size={V}, seq_len={T}, n_positions={n}, k={k}); rebuild it")
        tok_json = meta.get("tokenizer") or None
        if tok_json is not None:
            try:
                tok_meta = json.loads(tok_json)
                ok = isinstance(tok_meta, dict) and tok_meta.get("kind") in ("words", "hf") and bool(tok_meta.get("name"))
            except ValueError:
                ok = False
            require(ok, f"basis file {p} has a malformed tokenizer record; rebuild it with 'tl-leadterm basis'")
        ids = tensors["token_ids"]
        require(ids.dim() == 1 and ids.numel() == k and ids.dtype == torch.int64,
                f"basis file {p}: token_ids do not match k={k}; rebuild it")
        require(bool(((ids >= 0) & (ids < V)).all()) and ids.unique().numel() == k,
                f"basis file {p}: token_ids out of range or duplicated; rebuild it")
        for name in MATRIX_NAMES:
            require(tuple(tensors[name].shape) == (k, k), f"basis file {p}: {name} has shape {tuple(tensors[name].shape)}, expected ({k}, {k}); rebuild it")
        require(tuple(tensors["position"].shape) == (T,), f"basis file {p}: position has shape {tuple(tensors['position'].shape)}, expected ({T},); rebuild it")
        require(meta.get("mode") in ("exact", "merge-other"), f"basis file {p}: unknown mode {meta.get('mode')!r}; rebuild it")
        dt = tensors["bigram"].dtype
        for name in MATRIX_NAMES + ("position",):
            require(tensors[name].dtype == dt and dt in (torch.float64, torch.float32),
                    f"basis file {p}: {name} has dtype {tensors[name].dtype}, expected float64 or float32 like bigram; rebuild it")
            require(bool(torch.isfinite(tensors[name]).all()), f"basis file {p}: {name} holds non-finite values; rebuild it")
        b = cls(**{name: tensors[name] for name in MATRIX_NAMES + ("position", "token_ids")},
                vocab_size=V, seq_len=T, n_positions=n, mode=meta["mode"], tokenizer_json=tok_json,
                corpus_fingerprint=meta.get("corpus_fingerprint", ""), corpus_source=meta.get("corpus_source", ""),
                version=meta.get("package_version", ""))
        return b.to(device) if device is not None else b


def _replace(b: Basis, **kw) -> Basis:
    from dataclasses import replace
    return replace(b, **kw)


def leading_coefficient(weight: str, steps: int, lr: float) -> float:
    """The constant in front of a weight's leading term (THEORY.md §3).

    ``W_O``: η s;  ``V``: η² s(s-1)/2;  ``W`` and ``P``: η⁴ Σ_{k<s} k²(k-1)/2.
    """
    s, eta = int(steps), float(lr)
    if weight == "W_O":
        return eta * s
    if weight == "V":
        return eta ** 2 * s * (s - 1) / 2
    if weight in ("W", "P"):
        return eta ** 4 * sum(k * k * (k - 1) / 2 for k in range(s))
    raise LeadTermError(f"unknown toy weight {weight!r}; choose W_O, V, W or P")


# ---------------------------------------------------------------------------
# choosing tokens and the one-call entry point
# ---------------------------------------------------------------------------
def token_frequencies(windows: Windows) -> Int[Tensor, "V"]:
    """How often each token occurs as an input at a data position."""
    return torch.bincount(windows.inputs[windows.valid].cpu(), minlength=windows.vocab_size)[: windows.vocab_size]


def top_k_tokens(windows: Windows, k: int) -> Int[Tensor, "k"]:
    """The ``k`` most frequent tokens (ties broken by smaller id)."""
    V = windows.vocab_size
    require(isinstance(k, int) and k >= 1, f"--top-k must be a positive integer, got {k!r}")
    require(k <= V, f"--top-k {k} is larger than the vocabulary ({V} tokens); use --top-k {V} or less")
    freq = token_frequencies(windows)
    # a stable sort of -frequency keeps ties in ascending id order
    order = torch.sort(-freq, stable=True).indices
    return order[:k].clone()


def validate_token_ids(ids, vocab_size: int, what: str = "--token-ids") -> Int[Tensor, "k"]:
    """Check an explicit token list: integers, in range, no duplicates, not empty."""
    if isinstance(ids, Tensor):
        ids = ids.tolist()
    require(isinstance(ids, (list, tuple)) and len(ids) > 0, f"{what} must be a non-empty list of token ids")
    bad = [i for i in ids if isinstance(i, bool) or not isinstance(i, int)]
    if bad:
        raise LeadTermError(f"{what} holds a non-integer entry {bad[0]!r}; give integer token ids")
    out = [i for i in ids if i < 0 or i >= vocab_size]
    if out:
        raise LeadTermError(f"{what} holds token id {out[0]} outside [0, {vocab_size}); give ids below the vocabulary size")
    seen, dups = set(), []
    for i in ids:
        (dups.append(i) if i in seen else seen.add(i))
    if dups:
        raise LeadTermError(f"{what} lists token id {dups[0]} more than once; give each id once")
    return torch.tensor(ids, dtype=torch.long)


def compute_basis(windows: Windows, *, top_k: int | None = None, token_ids=None, mode: Mode = "auto",
                  dtype: torch.dtype = torch.float64, device=None, progress: bool = True,
                  chunk_size: int | None = None) -> Basis:
    """The basis of ``windows`` over ``top_k`` most frequent tokens or explicit ``token_ids``.

    Two passes (see module docstring).  ``mode`` is ``"auto"`` (exact when it fits,
    else merge-other with a warning), ``"exact"`` or ``"merge-other"``.
    """
    require((top_k is None) != (token_ids is None), "give exactly one of top_k (--top-k) or token_ids (--token-ids)")
    V = windows.vocab_size
    ids = top_k_tokens(windows, top_k) if top_k is not None else validate_token_ids(token_ids, V)
    resolved = choose_mode(V, ids.numel(), mode, dtype, device)
    spec = BasisSpec(V, ids, resolved)
    s1 = first_pass(windows, spec, dtype=dtype, device=device, progress=progress, chunk_size=chunk_size)
    comp = compositions(s1, consume=True)
    del s1
    s2 = second_pass(windows, comp, progress=progress, chunk_size=chunk_size)
    comp.centred_value_output = None  # W x W, no longer needed
    return assemble(comp, s2, windows)


def assemble(comp: Compositions, s2: SecondPassStats, windows: Windows | None = None, *,
             tokenizer_json: str | None = None, corpus_fingerprint: str = "", corpus_source: str = "") -> Basis:
    """Build the :class:`Basis` from pass-1 compositions and (merged) pass-2 sums."""
    require(s2.checksum == comp.checksum, "the second pass was computed with another first pass; recompute it with this one's Ḡ")
    require(s2.n == comp.n, f"pass 2 covered {s2.n} positions but pass 1 covered {comp.n}; run both passes over the same corpus")
    if windows is not None:
        tokenizer_json = windows.tokenizer.to_json() if windows.tokenizer is not None else tokenizer_json
        corpus_fingerprint = windows.fingerprint
        corpus_source = windows.source
    b = comp.blocks
    return Basis(
        bigram=b["bigram"], context=b["context"], interchange=b["interchange"], value=b["value"],
        value_output=b["value_output"], key_query=s2.key_query / s2.n, position=s2.position / s2.n,
        token_ids=comp.spec.token_ids.clone(), vocab_size=comp.spec.vocab_size, seq_len=comp.seq_len,
        n_positions=comp.n, mode=comp.spec.mode, tokenizer_json=tokenizer_json,
        corpus_fingerprint=corpus_fingerprint, corpus_source=corpus_source,
    )


def compute_basis_sharded(shards: Iterable[Windows] | Sequence[Windows], token_ids, *, mode: Mode = "auto",
                          dtype: torch.dtype = torch.float64, device=None, progress: bool = False) -> Basis:
    """The basis of a corpus given as shards (e.g. streamed): pass 1 per shard, merge, pass 2 per shard, merge.

    ``shards`` must be re-iterable (a list, or an object whose ``__iter__`` restarts the stream).
    """
    shards_list = shards if isinstance(shards, Sequence) else None
    it = shards_list if shards_list is not None else shards
    first = None
    spec = None
    for w in it:
        if spec is None:
            ids = validate_token_ids(token_ids, w.vocab_size)
            spec = BasisSpec(w.vocab_size, ids, choose_mode(w.vocab_size, ids.numel(), mode, dtype, device))
        s = first_pass(w, spec, dtype=dtype, device=device, progress=progress)
        first = s if first is None else first + s
    require(first is not None, "no shards given; give at least one shard of windows")
    comp = compositions(first, consume=True)
    second = None
    for w in (shards_list if shards_list is not None else shards):
        s = second_pass(w, comp, progress=progress)
        second = s if second is None else second + s
    return assemble(comp, second)
