"""The similarity algebra: dense references, prepared targets, and the low-rank (factored) measures.

Two similarities of a model matrix ``X`` (``k x m``) with a theory matrix ``T`` (``k x k``).
``T`` is first row-normalised (each row divided by its norm; zero rows stay 0),
because its rows scale with token frequency:

* ``cov_cosine`` (the paper's): centre each row of ``X`` and of ``T`` (subtract the
  row mean), take the ``k x k`` covariances of rows ``C = X_c X_cᵀ``, report the
  Frobenius cosine ``<C_X, C_T>/(‖C_X‖ ‖C_T‖)``;
* ``cka`` (linear CKA, Kornblith et al. 2019): centre each column over the ``k``
  tokens, Gram matrices ``K = X_c X_cᵀ``, same Frobenius cosine.

Low rank: a model matrix is a :class:`~tl_leadterm.analysis.factored.Factored`
``X = L Rᵀ`` (``L, R``: ``k x r`` with ``r = d_head`` per head, ``r = d_model`` for
representations and head averages).  Then ``C_X = L G Lᵀ`` with ``G`` ``r x r`` and
``<C_X, C_T> = sum(G * (YᵀY))`` with ``Y = T_xᵀ L``; ``‖C_X‖² = tr((G LᵀL)²)``.  The cost
per head is ``O(k² r)``; the only ``O(k³)`` work is ``‖C_T‖`` once per basis tensor
(:class:`Targets` caches it); no ``k x k x k`` product.  A prepared target keeps ``T`` itself (no float64
``k x k`` copy) and reads it a block of rows at a time in float64 (:class:`Target`).  A zero-norm matrix gives NaN
with a warning.

Least-squares projection (:func:`projection`): the minimum-norm coefficients of a matrix
on the span of a set of atoms, the projection, and the residual "beyond" it; one atom
gives ``c = <W, B>/‖B‖²`` (the toy weights, fitted as they are).  Modulo row offsets
(softmax ignores a constant per row): :func:`centre_rows` is the one centring and
:func:`offset_projection` the dense one-atom fit (attention scales); head matrices use its
factored form :func:`tl_leadterm.analysis.residual.fit`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from ..errors import require
from .factored import Factored

NAN = float("nan")


def ratio(num: Tensor | float, den: Tensor | float, what: str) -> float:
    num, den = float(num), float(den)
    if not (math.isfinite(den) and den > 0.0):
        warnings.warn(f"{what}: a matrix has zero norm, so the similarity is undefined (reported as NaN)", stacklevel=3)
        return NAN
    return num / den


def row_normalise(T: Float[Tensor, "k m"]) -> Float[Tensor, "k m"]:
    """Each row divided by its Euclidean norm (zero rows stay zero)."""
    n = T.norm(dim=1, keepdim=True)
    return T / torch.where(n > 0, n, torch.ones_like(n))


def centre_rows(X: Tensor, mask: Tensor | None = None) -> Tensor:
    """Each row minus its mean (softmax ignores a constant per row): the one row centring of the package.

    ``mask``: only the entries where it is True count and are kept (e.g. the causal keys of a query); the
    others become 0."""
    if mask is None:
        return X - X.mean(dim=-1, keepdim=True)
    zero = torch.zeros((), dtype=X.dtype, device=X.device)
    Xz = torch.where(mask, X, zero)
    mean = Xz.sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1)
    return torch.where(mask, Xz - mean, zero)


@dataclass
class OffsetFit:
    """``X ≈ c T + b 1ᵀ`` by least squares with a free offset ``b`` per row (:func:`offset_projection`)."""

    coef: float
    explained: float
    residual_rel_norm: float


def offset_projection(X: Tensor, T: Tensor, mask: Tensor | None = None) -> OffsetFit:
    """The one-atom projection modulo row offsets, dense: ``c = <X̃, T̃>/‖T̃‖²`` with rows centred
    (:func:`centre_rows`, over ``mask`` when given), ``explained = <X̃, T̃>²/(‖X̃‖²‖T̃‖²)``, the relative residual
    ``‖X̃ - c T̃‖/‖X̃‖``.  ``c`` is 0 when ``T̃ = 0``; explained and residual are NaN when ``X̃ = 0``.
    The factored, blocked version for k x k head matrices is :func:`tl_leadterm.analysis.residual.fit`."""
    Xc, Tc = centre_rows(X.double(), mask), centre_rows(T.double(), mask)
    tt, xx, xt = float((Tc * Tc).sum()), float((Xc * Xc).sum()), float((Xc * Tc).sum())
    c = xt / tt if tt > 0 else 0.0
    if xx <= 0:
        return OffsetFit(c, NAN, NAN)
    return OffsetFit(c, (xt * xt / (tt * xx)) if tt > 0 else 0.0, float(((Xc - c * Tc) ** 2).sum() / xx) ** 0.5)


def centre_cols(X: Tensor) -> Tensor:
    return X - X.mean(dim=0, keepdim=True)


def fro_cos(A: Tensor, B: Tensor, what: str) -> float:
    return ratio((A * B).sum(), A.norm() * B.norm(), what)


def cov_cosine_dense(X: Float[Tensor, "k m"], T: Float[Tensor, "k n"], normalise_target: bool = True) -> float:
    """The paper's similarity, directly: cos_F(X_c X_cᵀ, T_c T_cᵀ) with rows centred (dense reference)."""
    X, T = X.double(), T.double()
    T = row_normalise(T) if normalise_target else T
    Xc, Tc = centre_rows(X), centre_rows(T)
    return fro_cos(Xc @ Xc.T, Tc @ Tc.T, "cov_cosine")


def cka_dense(X: Float[Tensor, "k m"], T: Float[Tensor, "k n"], normalise_target: bool = True) -> float:
    """Linear CKA, directly: cos_F(H X Xᵀ H, H T Tᵀ H) with H the centring over the k rows (dense reference)."""
    X, T = X.double(), T.double()
    T = row_normalise(T) if normalise_target else T
    Xc, Tc = centre_cols(X), centre_cols(T)
    return fro_cos(Xc @ Xc.T, Tc @ Tc.T, "cka")


#: bytes of one float64 block of rows of a target matrix: :class:`Target` reads ``T`` this many bytes of rows at a
#: time (256 MiB: 667 rows at k = 50,304; one block, the dense computation, up to k = 5,792)
BLOCK_BYTES = 256 * 2**20


@dataclass
class Target:
    """A theory matrix prepared once for repeated comparisons, without a float64 ``k x k`` copy.

    ``T`` (``k x k``) is kept as given: one copy, in its own dtype (float32 for a float32 basis).  The row-normalised
    ``Tn`` is never stored: every product reads ``T`` a block of ``block`` rows at a time, converts the block to
    float64 (exact) and normalises its rows (:meth:`rows`), so a target costs ``T`` itself plus ``O(block · k)``
    (:data:`BLOCK_BYTES`).  ``t1 = Tnᵀ 1``; ``norm`` is ``‖T‖_F``; ``norm_cov`` and ``norm_cka`` are
    ``‖Tx Txᵀ‖_F`` for the row-centred (cov) and column-centred (CKA) versions of ``Tn`` (the only ``O(k³)``
    steps, done once per basis tensor, a pair of row blocks at a time).
    """

    name: str
    T: Tensor
    t1: Tensor
    norm: float
    norm_cov: float
    norm_cka: float
    block: int

    @classmethod
    def build(cls, T: Float[Tensor, "k k"], name: str = "", block: int | None = None) -> "Target":
        """``block``: rows per block (default: :data:`BLOCK_BYTES` of float64 rows)."""
        block = max(1, int(block or BLOCK_BYTES // (8 * max(1, T.shape[1]))))
        tg = cls(name, T, torch.zeros(T.shape[1], dtype=torch.float64, device=T.device), NAN, NAN, NAN, block)
        sq = torch.zeros((), dtype=torch.float64, device=T.device)
        for _, Tb in tg.rows(normalised=False):
            sq += (Tb * Tb).sum()
            tg.t1 += row_normalise(Tb).sum(0)
        tg.norm = float(sq.sqrt())
        tg.norm_cov, tg.norm_cka = tg._centred_norms()
        return tg

    def rows(self, start: int = 0, normalised: bool = True):
        """``(i, rows)``: float64 rows ``i : i + block`` of ``Tn`` (``normalised=False``: of ``T``), ``i >= start``."""
        for i in range(start, self.T.shape[0], self.block):
            Tb = self.T[i:i + self.block].double()
            if normalised:
                Tb = row_normalise(Tb)                            # rebound: one block held, not two
            yield i, Tb

    @property
    def Tn(self) -> Tensor:
        """The row-normalised ``k x k`` matrix in float64, formed on demand (the package never forms it)."""
        return row_normalise(self.T.double())

    def _centred_norms(self) -> tuple[float, float]:
        """``‖c cᵀ‖_F`` for ``c`` = ``Tn`` with rows centred and with columns centred: ``‖c cᵀ‖² = Σ_ab ‖c_a c_bᵀ‖²``
        over pairs of row blocks (``a < b`` counted twice), never a ``k x k`` float64 matrix: at most five blocks of
        rows at a time (``A``'s two centrings, ``B``, one centring of ``B``, ``S``)."""
        mean = self.t1 / self.T.shape[0]                          # Tn's column means
        centre = (centre_rows, lambda X: X - mean)
        sq = torch.zeros(2, dtype=torch.float64, device=self.T.device)
        for a, A in self.rows():
            Ac = [c(A) for c in centre]
            del A
            for b, B in self.rows(start=a):
                for j, c in enumerate(centre):
                    S = Ac[j] @ c(B).T
                    sq[j] += (1.0 if b == a else 2.0) * (S * S).sum()
                    del S
        n_cov, n_cka = sq.sqrt().tolist()
        return n_cov, n_cka

    def z(self, L: Float[Tensor, "k r"]) -> Float[Tensor, "k r"]:
        """``Tnᵀ L``, the one ``O(k² r)`` product a comparison needs (shareable across heads), in float64."""
        L = L.to(self.T.device, torch.float64)
        out = None
        for i, Nb in self.rows():
            part = (Nb.T, L[i:i + len(Nb)])
            out = torch.mm(*part) if out is None else out.addmm_(*part)
        return out

    def between(self, BL: Float[Tensor, "k d"], BR: Float[Tensor, "k e"]) -> Float[Tensor, "d e"]:
        """``B_Lᵀ T B_R`` in float64 (``O(k² e)``)."""
        BL, BR = BL.to(self.T.device, torch.float64), BR.to(self.T.device, torch.float64)
        out = None
        for i, Tb in self.rows(normalised=False):
            part = (BL[i:i + len(Tb)].T, Tb @ BR)
            out = torch.mm(*part) if out is None else out.addmm_(*part)
        return out


def _gram_norm(G: Tensor, A: Tensor) -> Tensor:
    """``‖C‖_F = sqrt(tr((G A)²))`` for ``C = L G Lᵀ`` with ``A = LᵀL`` (stacks ``[..., r, r]``)."""
    GA = G @ A
    return torch.sqrt(torch.clamp((GA * GA.transpose(-2, -1)).sum((-2, -1)), min=0.0))


def similarities(X: Factored | Tensor, target: Target) -> dict[str, float]:
    """``cov_cosine`` and ``cka`` of ``X`` (``Factored(L, Rᵀ)``, or a dense ``k x m`` matrix) with a prepared target, in O(k² r).

    With ``X = L Rᵀ`` and ``Z = Tnᵀ L``: cov uses ``Y = (I - 11ᵀ/k) Z`` and ``G = R_cᵀ R_c`` (R centred
    over its rows = X's rows centred); CKA uses ``Y = Z - (Tnᵀ1) l̄ᵀ`` and ``G = RᵀR`` with ``L`` centred
    over tokens.  ``<C_X, C_T> = sum(G * YᵀY)``, ``‖C_X‖² = tr((G LᵀL)²)``.
    """
    if isinstance(X, Factored):
        L, R = X.A.double(), X.B.T.double()
    else:
        L = X.double()
        R = torch.eye(L.shape[1], dtype=L.dtype, device=L.device)
    Z = target.z(L)
    Rc = centre_cols(R)
    Yc = Z - Z.mean(0, keepdim=True)
    G = Rc.T @ Rc
    out = {"cov_cosine": ratio((G * (Yc.T @ Yc)).sum(), _gram_norm(G, L.T @ L) * target.norm_cov, "cov_cosine")}
    lbar = L.mean(0)
    Lc = L - lbar
    Yk = Z - torch.outer(target.t1, lbar)
    G = R.T @ R
    out["cka"] = ratio((G * (Yk.T @ Yk)).sum(), _gram_norm(G, Lc.T @ Lc) * target.norm_cka, "cka")
    return out


def _factored(L: Tensor, R: Tensor | None) -> Factored | Tensor:
    return L if R is None else Factored(L, R.T)


def cov_cosine_lowrank(L: Float[Tensor, "k r"], R: Float[Tensor, "k r"] | None, target: Target) -> float:
    """The paper's covariance cosine of ``X = L Rᵀ`` (``R=None``: ``X = L``)."""
    return similarities(_factored(L, R), target)["cov_cosine"]


def cka_lowrank(L: Float[Tensor, "k r"], R: Float[Tensor, "k r"] | None, target: Target) -> float:
    """Linear CKA of ``X = L Rᵀ`` (``R=None``: ``X = L``)."""
    return similarities(_factored(L, R), target)["cka"]


def frob_cosine_lowrank(L: Float[Tensor, "k r"], R: Float[Tensor, "k r"], T: Float[Tensor, "k k"],
                        TR: Tensor | None = None) -> float:
    """cos_F(L Rᵀ, T) in O(k² r) (``TR = T R`` may be given)."""
    L, R, T = L.double(), R.double(), T.double()
    TR = T @ R if TR is None else TR.double()
    num = (L * TR).sum()
    n2 = ((L.T @ L) * (R.T @ R)).sum()
    return ratio(num, torch.sqrt(torch.clamp(n2, min=0.0)) * T.norm(), "cosine")


class Targets:
    """Lazily prepared targets of one basis (cached per basis tensor), on ``device``: each keeps the basis tensor
    itself (a copy in the basis dtype only when the basis lives on another device) plus ``O(k)`` numbers."""

    def __init__(self, basis, device: torch.device | str | None = None):
        self.basis = basis
        self.device = torch.device(device or "cpu")
        self._cache: dict[str, Target] = {}

    def get(self, name: str) -> Target:
        if name not in self._cache:
            self._cache[name] = Target.build(getattr(self.basis, name).to(self.device), name)
        return self._cache[name]


class Family:
    """Comparisons of ``X_h = B_L (M_h N_hᵀ) B_Rᵀ`` that share the bases ``B_L`` (``k x d``) and ``B_R`` (``k' x e``).

    A member is given by its coordinates, the factored ``d x e`` matrix ``Factored(M_h, N_hᵀ)``
    (for a head: ``Factored(W_Q[h], W_K[h].T)`` or ``Factored(W_V[h], W_O[h])``).  ``X_h``'s rows are the ``k``
    tokens of the target; its columns are the ``k'`` rows of ``B_R``: tokens again (``k' = k``) for heads and
    circuits, or ``B_R = I`` for a representation ``X = E G`` (``k x d``, ``N = I``: see :meth:`measure_batch`).

    Everything a comparison needs is a ``d x d`` Gram matrix of the bases, computed
    once: ``Z_B = Tnᵀ B_L`` (``O(k² d)``, the dominant cost), ``Z_Bᵀ Z_B``, ``B_Lᵀ B_L``,
    ``B_Rᵀ B_R`` (and their centred versions) and ``B_Lᵀ T B_R``.  Each member
    (head) then costs ``O(d² r)``, independent of ``k``: e.g. ``YᵀY = Mᵀ (Z_BᵀZ_B) M``.
    Used for all heads of a layer (``B = attn_in``), the circuits (``B = W_E``, ``W_Uᵀ``) and the chance level of
    representations (``B_L = E``, ``B_R = I``: :func:`~tl_leadterm.analysis.chance.representation_null`).
    """

    def __init__(self, BL: Tensor, BR: Tensor | None, target: Target, plain: bool):
        """``BR=None``: the same basis on both sides (``X_h = B M_h N_hᵀ Bᵀ``).  ``plain`` (the Frobenius cosine with
        ``T`` itself) needs ``X_h`` to be ``k x k`` (``B_R`` with ``k`` rows)."""
        same = BR is None
        BL = BL.double()
        BR = BL if same else BR.double()
        self.target, self.plain, self.k = target, plain, BL.shape[0]
        require(not plain or BR.shape[0] == self.k,
                f"the plain cosine compares k x k matrices: B_R has {BR.shape[0]} rows, expected k = {self.k}")
        ZB = target.z(BL)
        self.ZZ = ZB.T @ ZB
        self.zbar = ZB.mean(0)                                    # centred Grams: rank-one corrections (_parts)
        self.Zt1 = ZB.T @ target.t1
        self.t1t1 = float(target.t1 @ target.t1)
        self.LL = BL.T @ BL
        self.lbar = BL.mean(0)
        self.RR = self.LL if same else BR.T @ BR
        rbar = self.lbar if same else BR.mean(0)                  # centring over X's columns (B_R's k' rows)
        self.RRc = self.RR - BR.shape[0] * torch.outer(rbar, rbar)
        self.P = target.between(BL, BR) if plain else None
        self.Tnorm = target.norm

    def measure(self, X: Factored) -> dict[str, float]:
        """``cov_cosine``, ``cka`` (and ``cosine`` when ``plain``) of ``B_L X B_Rᵀ``, in O(d² r)."""
        ML, MR = X.A.double(), X.B.T.double()
        num, den = self._parts(ML[None], MR[None])
        return {m: ratio(num[m][0], den[m][0], m) for m in num}

    def measure_batch(self, M: Tensor, N: Tensor | None) -> dict[str, Tensor]:
        """:meth:`measure` of ``n`` members at once: ``M`` ``[n, d, r]``, ``N`` ``[n, r, e]`` (NaN where undefined).
        ``N=None``: the identity (``X_h = B_L M_h B_Rᵀ``, ``M`` ``[n, d, e]``), e.g. a representation ``E G_h``."""
        num, den = self._parts(M.double(), None if N is None else N.double().transpose(-2, -1))
        return {m: torch.where(den[m] > 0, num[m] / torch.where(den[m] > 0, den[m], 1.0),
                               torch.full_like(num[m], float("nan"))) for m in num}

    def _parts(self, ML: Tensor, MR: Tensor | None) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Numerators and denominators of the measures for stacks ``ML`` ``[n, d, r]``, ``MR`` ``[n, e, r]``
        (``None``: the identity)."""
        tg = self.target
        MLt = ML.transpose(-2, -1)
        right = (lambda A: A) if MR is None else (lambda A: MR.transpose(-2, -1) @ A @ MR)   # noqa: E731
        outer = lambda a, b: a[..., :, None] * b[..., None, :]  # noqa: E731
        k = self.k
        LtL = MLt @ self.LL @ ML
        MZZ = MLt @ self.ZZ @ ML
        lbar = self.lbar @ ML                                   # [n, r]
        zbar = self.zbar @ ML                                   # [n, r]
        # covariance cosine: G = R_cᵀR_c, Y = (I - 11ᵀ/k) Z; Mᵀ ZZc M = Mᵀ ZZ M - k (Mᵀz̄)(z̄ᵀM) (rank one: no d³)
        G = right(self.RRc)
        num = {"cov_cosine": (G * (MZZ - k * outer(zbar, zbar))).sum((-2, -1))}
        den = {"cov_cosine": _gram_norm(G, LtL) * tg.norm_cov}
        # CKA: G = RᵀR, L centred over tokens, Y = Z - t1 l̄ᵀ
        G2 = right(self.RR)
        zt = MLt @ self.Zt1                                     # [n, r]
        YY = MZZ - outer(zt, lbar) - outer(lbar, zt) + self.t1t1 * outer(lbar, lbar)
        num["cka"] = (G2 * YY).sum((-2, -1))
        den["cka"] = _gram_norm(G2, LtL - k * outer(lbar, lbar)) * tg.norm_cka
        if self.plain:
            n2 = (LtL * G2).sum((-2, -1))
            num["cosine"] = (ML * (self.P if MR is None else self.P @ MR)).sum((-2, -1))
            den["cosine"] = torch.sqrt(torch.clamp(n2, min=0.0)) * self.Tnorm
        return num, den


# ---------------------------------------------------------------------------
# least-squares projection on atoms
# ---------------------------------------------------------------------------
@dataclass
class Projection:
    """``weight`` projected by least squares on the span of ``atoms``: coefficients, projection, residual."""

    weight: Tensor
    coef: dict[str, float]
    proj: Tensor

    @property
    def residual(self) -> Tensor:
        """What lies beyond the atoms: ``weight - proj``."""
        return self.weight - self.proj

    def cosine(self, what: str = "cosine") -> float:
        return fro_cos(self.weight, self.proj, what)

    def explained(self, what: str = "explained") -> float:
        """``‖proj‖² / ‖weight‖²``."""
        return ratio(self.proj.norm() ** 2, self.weight.norm() ** 2, what)


def projection(W: Tensor, atoms: dict[str, Tensor]) -> Projection:
    """Minimum-norm least-squares coefficients of ``W`` on the span of ``atoms`` (one atom: ``<W, B>/‖B‖²``)."""
    W = W.double()
    A = torch.stack([a.double().reshape(-1) for a in atoms.values()], dim=1)   # n x m
    coef = torch.linalg.pinv(A) @ W.reshape(-1)
    return Projection(W, dict(zip(atoms, coef.tolist())), (A @ coef).reshape(W.shape))


def project(W: Tensor, atoms: dict[str, Tensor]) -> tuple[dict[str, float], Tensor]:
    """``(coefficients, projection)`` of :func:`projection`."""
    p = projection(W, atoms)
    return p.coef, p.proj
