"""Signed fits of a site's head matrices against their targets, and their chance level, from d x d Gram matrices.

A per-head site is ``X = L P R`` (:data:`tl_leadterm.theory.SITES`): ``L`` (``k x d``) and ``R``
(``d x k``) read through the model's geometry, ``P`` (``d x d``) the head's product of weights under a
lens (:mod:`.lenses`).  Softmax ignores a constant per row, so ``X`` and a target ``T`` are compared
after centring each row: ``X̃ = L P R̃`` with ``R̃ = R (I - 11ᵀ/k)``, ``T̃ = T (I - 11ᵀ/k)``.  Then

* ``signed_cosine`` ``<X̃, T̃> / (‖X̃‖ ‖T̃‖)``: the row-centred cosine, with the sign of the
  least-squares coefficient; its square is ``explained``;
* ``coef`` ``<X̃, T̃> / ‖T̃‖²`` and ``explained`` ``<X̃, T̃>² / (‖X̃‖² ‖T̃‖²)`` (one atom: the same
  numbers :mod:`.residual` computes from the k x k entries).

Everything is a d x d computation: ``<X̃, T̃> = <P, C>`` with ``C = Lᵀ T̃ R̃ᵀ`` (``O(k² d)`` once per
site, layer and target) and ``‖X̃‖² = Σ_ij λ_i μ_j P''_ij²`` with ``LᵀL = V diag(λ) Vᵀ``,
``R̃R̃ᵀ = W diag(μ) Wᵀ`` and ``P'' = Vᵀ P W``.  A target read through the model's geometry,
``model:T = (L Lᵀ) T (Rᵀ R)``, is itself ``L C₀ R`` with ``C₀ = Lᵀ T Rᵀ``: its ``C`` and norm
come from ``C₀`` in ``O(d³)``.

The null (chance level)
-----------------------
For each fit, ``null_draws`` random matrices with **the same factor shapes** as the real head are drawn
isotropically in the model's weight space and read through **the same geometry** (the same ``L``,
``R``, centring and target): ``P' = M' N'`` with ``M'`` (``d x r``) and ``N'`` (``r x d``) of i.i.d.
standard normal entries (``r = d_head`` for a head's weights, ``2 d_head`` for an update since a
reference — the difference of two rank-``d_head`` products; a dense ``d x d`` Gaussian for a gradient).
A head average ``(1/H) Σ_h P_h`` is compared with averages of ``H`` distinct draws of the per-head pool
(chosen by the seeded generator; for a dense Gaussian the average is again a dense Gaussian, so the per-head
null serves).  The draws are made on the analysis device (same seed, same draws on that device).  Because an isotropic Gaussian matrix is invariant under rotations,
the draws are made directly in the rotated coordinates ``P''``, so each draw costs ``O(d² r)`` and no
k x k work: N draws cost a small multiple of one fit.  Reported per fit: ``null_mean``, ``null_q05``,
``null_q95`` of the null's signed cosines and ``percentile``, the fraction of null draws with a
smaller signed cosine.

Why this control: the real head and the random ones share everything but the head's own weights, so
whatever the embeddings, the unembedding and the attention inputs contribute by themselves (how
frequent tokens cluster, how the geometry of ``E`` already resembles a corpus statistic) is in the
null as well; only what the head adds beyond a random matrix of the same shape shows as a high
percentile (the control-task idea of Hewitt & Liang, 2019).  The draws are seeded (``seed`` and the
fit group's name): the same inputs give the same bytes.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import require
from ..theory import target_matrix_name
from .measures import Family, centre_rows

#: default number of null draws per fit group
NULL_DRAWS = 200
#: bytes a null pool may hold before it is drawn in chunks (the head-average subsets then use fewer members)
POOL_BYTES = 2 * 1024 ** 3


def group_seed(seed: int, *parts) -> int:
    """A stable 63-bit seed for one fit group (same inputs, same draws, on any machine)."""
    return (int(seed) * 1_000_003 + zlib.crc32("|".join(map(str, parts)).encode())) % (2 ** 63 - 1)


def basis_matrix(basis, target: str) -> Tensor:
    """The basis matrix a target names (``"bigram"``, ``"context.T"``; ``model:`` stripped)."""
    base, transposed, _ = target_matrix_name(target)
    T = getattr(basis, base)
    return T.T if transposed else T


@dataclass
class Null:
    """The null distribution of the signed cosine of one fit group (``draws``: the values, sorted)."""

    draws: Tensor

    def place(self, value: float) -> dict[str, float]:
        d = self.draws
        if d.numel() == 0 or not math.isfinite(value):
            return {}
        return {"null_mean": float(d.mean()), "null_q05": float(torch.quantile(d, 0.05)),
                "null_q95": float(torch.quantile(d, 0.95)), "percentile": float((d < value).double().mean())}


class SiteFit:
    """The d x d form of one site at one layer (module docstring): targets prepared once, heads and nulls in O(d² r)."""

    def __init__(self, L: Tensor, R: Tensor, targets: dict[str, Tensor]):
        """``L`` ``k x d``, ``R`` ``d x k``; ``targets`` name → ``k x k`` basis matrix (``model:`` names read through L, R)."""
        L, R = L.double(), R.double()
        require(L.shape[0] == R.shape[1], f"site factors of shapes {tuple(L.shape)} and {tuple(R.shape)} do not fit")
        Rc = centre_rows(R)
        GL, GR = L.T @ L, Rc @ Rc.T
        lam, self.V = torch.linalg.eigh(GL)
        mu, self.W = torch.linalg.eigh(GR)
        # numerical rank: eigenvalues at rounding level are zero (R̃ loses the direction of 1 exactly)
        lam = torch.where(lam > 1e-12 * lam.abs().max().clamp(min=1e-300), lam, torch.zeros_like(lam))
        mu = torch.where(mu > 1e-12 * mu.abs().max().clamp(min=1e-300), mu, torch.zeros_like(mu))
        self.weight = torch.outer(lam, mu)                                   # λ_i μ_j
        self.GL, self.Rc = GL, Rc
        self.d_left, self.d_right = L.shape[1], R.shape[0]
        self.C: dict[str, Tensor] = {}
        self.LT: dict[str, Tensor] = {}      # Lᵀ T̃ (d x k): exact numerators for real heads
        self.tnorm: dict[str, float] = {}
        for name, T in targets.items():
            T = T.to(L)
            if name.startswith("model:"):
                C0 = L.T @ (T @ R.T)                                       # (L Lᵀ) T (Rᵀ R) = L C0 R
                C = GL @ C0 @ GR
                n2 = float(((C0.T @ GL @ C0) * GR).sum())
                self.LT[name] = GL @ C0 @ Rc
            else:
                Tc = centre_rows(T)
                self.LT[name] = L.T @ Tc
                C = self.LT[name] @ Rc.T
                n2 = float((Tc * Tc).sum())
                del Tc
            self.C[name] = self.V.T @ C @ self.W                          # rotated
            self.tnorm[name] = math.sqrt(max(n2, 0.0))

    def rotate(self, M: Tensor, N: Tensor) -> Tensor:
        """``P'' = Vᵀ M N W`` for stacks ``M`` ``[..., d, r]``, ``N`` ``[..., r, d]``."""
        return (self.V.T @ M.double()) @ (N.double() @ self.W)

    def norms(self, M: Tensor, N: Tensor) -> Tensor:
        """``‖L M_h N_h R̃‖`` per head, from the centred factor ``N_h R̃`` itself (no cancellation when row offsets
        dominate a head: ``Σ (M_hᵀ LᵀL M_h) ∘ (N_h R̃)(N_h R̃)ᵀ``)."""
        M, N = M.double(), N.double()
        B = N @ self.Rc
        return torch.sqrt(((M.transpose(-2, -1) @ self.GL @ M) * (B @ B.transpose(-2, -1))).sum((-2, -1)).clamp(min=0.0))

    def stats(self, Prot: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
        """Per target ``(signed_cosine, coef)`` of rotated matrices ``Prot`` ``[n, d, d]`` (NaN where undefined)."""
        norm = torch.sqrt((Prot * Prot * self.weight).sum((-2, -1)).clamp(min=0.0))
        out = {}
        for name, C in self.C.items():
            num = (Prot * C).sum((-2, -1))
            t = self.tnorm[name]
            den = norm * t
            cos = torch.where(den > 0, num / torch.where(den > 0, den, 1.0), torch.full_like(num, float("nan")))
            coef = num / (t * t) if t > 0 else torch.full_like(num, float("nan"))
            out[name] = (cos, coef)
        return out

    def measure(self, M: Tensor, N: Tensor) -> dict[str, dict[str, Tensor]]:
        """``signed_cosine``, ``coef`` and ``explained`` per target for heads ``M`` ``[H, d, r]``, ``N`` ``[H, r, d]``
        (the norm from :meth:`norms`, exact when row offsets dominate a head)."""
        M, N = M.double(), N.double()
        norm = self.norms(M, N)
        B = N @ self.Rc
        out = {}
        for name in self.C:
            num = ((M.transpose(-2, -1) @ self.LT[name]) * B).sum((-2, -1))   # <L M N R̃, T̃> entrywise in r x k
            t = self.tnorm[name]
            den = norm * t
            cos = torch.where(den > 0, num / torch.where(den > 0, den, 1.0), torch.full_like(num, float("nan")))
            coef = num / (t * t) if t > 0 else torch.full_like(num, float("nan"))
            out[name] = {"signed_cosine": cos, "coef": coef, "explained": cos * cos}
        return out

    def null(self, draw: str, rank: int, n: int, seed: int, heads: int = 1) -> tuple[dict[str, Null], dict[str, Null]]:
        """Null distributions per target: ``(per head, head average of `heads`)`` (module docstring).

        ``draw`` ``"product"``: ``M' N'`` with Gaussian factors of inner size ``rank``; ``"dense"``: a Gaussian
        ``d x d`` matrix.  ``n`` draws; the head-average null averages ``heads`` distinct pool members per draw.
        """
        empty = {name: Null(torch.empty(0, dtype=torch.float64)) for name in self.C}
        if n <= 0:
            return empty, dict(empty)
        dev = self.weight.device
        g = torch.Generator(device=dev).manual_seed(int(seed))   # drawn where the analysis runs (no host copies)
        dl, dr = self.d_left, self.d_right

        def gauss(*shape):
            return torch.randn(*shape, generator=g, dtype=torch.float64, device=dev)

        if draw == "dense":
            factors = None
        else:
            factors = (gauss(n, dl, rank), gauss(n, rank, dr))

        def pool(i0: int, i1: int) -> Tensor:
            return gauss(i1 - i0, dl, dr) if factors is None else factors[0][i0:i1] @ factors[1][i0:i1]

        chunk = max(1, min(n, int(POOL_BYTES // (8 * dl * dr))))
        keep = n * dl * dr * 8 <= POOL_BYTES                     # the whole pool fits: head averages reuse it
        parts, stats = [], {name: [] for name in self.C}
        for a in range(0, n, chunk):
            P = pool(a, min(n, a + chunk))
            for name, (cos, _) in self.stats(P).items():
                stats[name].append(cos)
            if keep:
                parts.append(P)
        per_head = {name: Null(_sorted(torch.cat(v))) for name, v in stats.items()}
        if heads <= 1 or draw == "dense":      # a mean of dense Gaussians is a dense Gaussian: the same null
            return per_head, per_head
        H = min(heads, n)
        idx = torch.stack([torch.randperm(n, generator=g, device=dev)[:H] for _ in range(n)])   # H distinct draws each
        stats = {name: [] for name in self.C}
        full = torch.cat(parts) if keep else None
        for a in range(0, n, chunk):
            sel = idx[a:a + chunk]
            if full is not None:            # summed member by member: chunk x d x d memory, never chunk x H x d x d
                avg = full[sel[:, 0]].clone()
                for j in range(1, H):
                    avg += full[sel[:, j]]
                avg /= H
            else:                                # factors only: (1/H) Σ M_j N_j = [M_S] [N_S] / H
                M = factors[0][sel].permute(0, 2, 1, 3).reshape(len(sel), dl, H * rank)
                N = factors[1][sel].reshape(len(sel), H * rank, dr)
                avg = (M @ N) / H
            for name, (cos, _) in self.stats(avg).items():
                stats[name].append(cos)
        return per_head, {name: Null(_sorted(torch.cat(v))) for name, v in stats.items()}


def _sorted(x: Tensor) -> Tensor:
    return torch.sort(x[torch.isfinite(x)].double().cpu()).values


# ---------------------------------------------------------------------------
# nulls of the similarity measures (cov_cosine, cka, cosine) and of representations
# ---------------------------------------------------------------------------
#: floating-point work a head-average similarity null may take before it uses fewer draws (with a warning); a draw
#: of rank H·r costs about 20·d²·H·r (five d x d Gram products on both sides), so d = 768 with 12 heads of 64 gets 20
AVERAGE_FLOPS = 2e11


def _gauss(g, *shape) -> Tensor:
    return torch.randn(*shape, generator=g, dtype=torch.float64, device=g.device)


def family_null(fam, d: int, draw: str, rank: int, n: int, seed: int, heads: int = 1, chunk: int = 50
                ) -> tuple[dict[str, Null], dict[str, Null]]:
    """Nulls of ``cov_cosine``, ``cka`` (and ``cosine``) of a :class:`~tl_leadterm.analysis.measures.Family`:
    per head ``M' N'`` with Gaussian factors of inner size ``rank`` (``draw="dense"``: a Gaussian ``d x d``), and
    per head average the mean of ``heads`` independent draws (factors concatenated), read through the same bases.
    The head-average null uses fewer draws when ``n`` of them would cost more than :data:`AVERAGE_FLOPS`
    (a warning says how many)."""
    import warnings

    names = ["cov_cosine", "cka"] + (["cosine"] if fam.plain else [])
    if n <= 0:
        e = {m: Null(torch.empty(0, dtype=torch.float64)) for m in names}
        return e, dict(e)
    dev = fam.LL.device
    g = torch.Generator(device=dev).manual_seed(int(seed))
    r = d if draw == "dense" else rank

    def draws(m: int, width: int, scale: float = 1.0):
        if draw == "dense" and width == d:
            return _gauss(g, m, d, d), None                        # N = I
        return _gauss(g, m, d, width) * scale, _gauss(g, m, width, d)

    def collect(m_total: int, width: int, scale: float) -> dict[str, Null]:
        vals = {m: [] for m in names}
        for a in range(0, m_total, chunk):
            M, N = draws(min(chunk, m_total - a), width, scale)
            for m, v in fam.measure_batch(M, N).items():
                vals[m].append(v.cpu())
        return {m: Null(torch.sort(torch.cat(v)[torch.isfinite(torch.cat(v))]).values) for m, v in vals.items()}

    per = collect(n, r, 1.0)
    if heads <= 1 or draw == "dense":   # a mean of dense Gaussians is a dense Gaussian: the same null
        return per, per
    width = r * heads
    cost = 20.0 * d * d * width
    n_avg = n if n * cost <= AVERAGE_FLOPS else max(20, int(AVERAGE_FLOPS // cost))
    if n_avg < n:
        warnings.warn(f"head-average similarity nulls use {n_avg} draws instead of {n} (d={d}, {heads} heads: each draw "
                      f"costs O(d² · heads · rank)); the per-head nulls use all {n}", stacklevel=3)
    return per, collect(n_avg, width, 1.0 / heads)


def representation_null(E: Tensor, target, n: int, seed: int, chunk: int = 25) -> dict[str, Null]:
    """Null of ``cov_cosine`` and ``cka`` of a per-layer representation ``H`` (``k x d``): ``E G`` with ``G`` a Gaussian
    ``d x d`` matrix, a random linear read-out of the same embeddings (every representation of a token run alone is a
    function of its embedding), compared with the same prepared target: a :class:`~.measures.Family` with
    ``B_L = E``, ``B_R = I``.  O(d³) per draw after one O(k² d) product."""
    if n <= 0:
        return {m: Null(torch.empty(0, dtype=torch.float64)) for m in ("cov_cosine", "cka")}
    d = E.shape[1]
    fam = Family(E, torch.eye(d, dtype=torch.float64, device=E.device), target, plain=False)
    g = torch.Generator(device=E.device).manual_seed(int(seed))
    vals = {"cov_cosine": [], "cka": []}
    for a in range(0, n, chunk):
        for k, v in fam.measure_batch(_gauss(g, min(chunk, n - a), d, d), None).items():
            vals[k].append(v.cpu())
    return {k: Null(torch.sort(torch.cat(v)[torch.isfinite(torch.cat(v))]).values) for k, v in vals.items()}
