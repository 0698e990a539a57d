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
(:class:`Targets` caches it); no ``k x k x k`` product.  A zero-norm matrix gives NaN
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


@dataclass
class Target:
    """A theory matrix prepared once for repeated comparisons.

    ``Tn`` is the row-normalised ``k x k`` matrix, ``t1 = Tnᵀ 1``; ``norm_cov`` and
    ``norm_cka`` are ‖Tx Txᵀ‖_F for the row-centred (cov) and column-centred (CKA)
    versions of ``Tn`` (the only ``O(k³)`` steps, done once per basis tensor).
    """

    name: str
    T: Tensor
    Tn: Tensor
    t1: Tensor
    norm_cov: float
    norm_cka: float

    @classmethod
    def build(cls, T: Float[Tensor, "k k"], name: str = "") -> "Target":
        T = T.double()
        Tn = row_normalise(T)
        norms = []
        for centre in (centre_rows, centre_cols):  # one k x k temporary pair at a time (k can be 50,304)
            c = centre(Tn)
            norms.append(float((c.T @ c).norm()))
            del c
        return cls(name, T, Tn, Tn.sum(0), *norms)

    def z(self, L: Float[Tensor, "k r"]) -> Float[Tensor, "k r"]:
        """``Tnᵀ L``, the one ``O(k² r)`` product a comparison needs (shareable across heads)."""
        return self.Tn.T @ L.to(self.Tn)


def _gram_cos(num: Tensor, G: Tensor, LtL: Tensor, norm_t: float, what: str) -> float:
    GA = G @ LtL
    normC = torch.sqrt(torch.clamp((GA * GA.T).sum(), min=0.0))
    return ratio(num, normC * norm_t, what)


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
    out = {"cov_cosine": _gram_cos(((Rc.T @ Rc) * (Yc.T @ Yc)).sum(), Rc.T @ Rc, L.T @ L, target.norm_cov, "cov_cosine")}
    lbar = L.mean(0)
    Lc = L - lbar
    Yk = Z - torch.outer(target.t1, lbar)
    G = R.T @ R
    out["cka"] = _gram_cos((G * (Yk.T @ Yk)).sum(), G, Lc.T @ Lc, target.norm_cka, "cka")
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
    """Lazily prepared targets of one basis (cached per basis tensor), on ``device``."""

    def __init__(self, basis, device: torch.device | str | None = None):
        self.basis = basis
        self.device = torch.device(device or "cpu")
        self._cache: dict[str, Target] = {}

    def get(self, name: str) -> Target:
        if name not in self._cache:
            self._cache[name] = Target.build(getattr(self.basis, name).to(self.device), name)
        return self._cache[name]


class Family:
    """Comparisons of ``X_h = B_L (M_h N_hᵀ) B_Rᵀ`` that share the bases ``B_L``, ``B_R`` (``k x d``).

    A member is given by its coordinates, the factored ``d x d`` matrix ``Factored(M_h, N_hᵀ)``
    (for a head: ``Factored(W_Q[h], W_K[h].T)`` or ``Factored(W_V[h], W_O[h])``).

    Everything a comparison needs is a ``d x d`` Gram matrix of the bases, computed
    once: ``Z_B = Tnᵀ B_L`` (``O(k² d)``, the dominant cost), ``Z_Bᵀ Z_B``, ``B_Lᵀ B_L``,
    ``B_Rᵀ B_R`` (and their token-centred versions) and ``B_Lᵀ T B_R``.  Each member
    (head) then costs ``O(d² r)``, independent of ``k``: e.g. ``YᵀY = Mᵀ (Z_BᵀZ_B) M``.
    Used for all heads of a layer (``B = attn_in``) and the circuits (``B = W_E``, ``W_Uᵀ``).
    """

    def __init__(self, BL: Tensor, BR: Tensor | None, target: Target, plain: bool):
        """``BR=None``: the same basis on both sides (``X_h = B M_h N_hᵀ Bᵀ``)."""
        same = BR is None
        BL = BL.double()
        BR = BL if same else BR.double()
        self.target, self.plain, self.k = target, plain, BL.shape[0]
        k = self.k
        ZB = target.z(BL)
        self.ZZ = ZB.T @ ZB
        zbar = ZB.mean(0)
        self.ZZc = self.ZZ - k * torch.outer(zbar, zbar)          # (Z - 1 z̄ᵀ)ᵀ(Z - 1 z̄ᵀ)
        self.Zt1 = ZB.T @ target.t1
        self.t1t1 = float(target.t1 @ target.t1)
        self.LL = BL.T @ BL
        self.lbar = BL.mean(0)
        self.LLc = self.LL - k * torch.outer(self.lbar, self.lbar)
        self.RR = self.LL if same else BR.T @ BR
        rbar = self.lbar if same else BR.mean(0)
        self.RRc = self.LLc if same else self.RR - k * torch.outer(rbar, rbar)
        self.P = (BL.T @ target.T) @ BR if plain else None
        self.Tnorm = float(target.T.norm())

    def measure(self, X: Factored) -> dict[str, float]:
        """``cov_cosine``, ``cka`` (and ``cosine`` when ``plain``) of ``B_L X B_Rᵀ``, in O(d² r)."""
        ML, MR = X.A.double(), X.B.T.double()
        num, den = self._parts(ML[None], MR[None])
        return {m: ratio(num[m][0], den[m][0], m) for m in num}

    def measure_batch(self, M: Tensor, N: Tensor) -> dict[str, Tensor]:
        """:meth:`measure` of ``n`` members at once: ``M`` ``[n, d, r]``, ``N`` ``[n, r, d]`` (NaN where undefined)."""
        num, den = self._parts(M.double(), N.double().transpose(-2, -1))
        return {m: torch.where(den[m] > 0, num[m] / torch.where(den[m] > 0, den[m], 1.0),
                               torch.full_like(num[m], float("nan"))) for m in num}

    def _parts(self, ML: Tensor, MR: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Numerators and denominators of the measures for stacks ``ML``, ``MR`` ``[n, d, r]``."""
        tg = self.target
        MLt, MRt = ML.transpose(-2, -1), MR.transpose(-2, -1)
        LtL = MLt @ self.LL @ ML

        def gram_norm(G, A):
            GA = G @ A
            return torch.sqrt(torch.clamp((GA * GA.transpose(-2, -1)).sum((-2, -1)), min=0.0))

        # covariance cosine: G = R_cᵀR_c, Y = (I - 11ᵀ/k) Z
        G = MRt @ self.RRc @ MR
        num = {"cov_cosine": (G * (MLt @ self.ZZc @ ML)).sum((-2, -1))}
        den = {"cov_cosine": gram_norm(G, LtL) * tg.norm_cov}
        # CKA: G = RᵀR, L centred over tokens, Y = Z - t1 l̄ᵀ
        G2 = MRt @ self.RR @ MR
        lbar = self.lbar @ ML                                   # [n, r]
        zt = MLt @ self.Zt1                                     # [n, r]
        outer = lambda a, b: a[..., :, None] * b[..., None, :]  # noqa: E731
        YY = MLt @ self.ZZ @ ML - outer(zt, lbar) - outer(lbar, zt) + self.t1t1 * outer(lbar, lbar)
        num["cka"] = (G2 * YY).sum((-2, -1))
        den["cka"] = gram_norm(G2, MLt @ self.LLc @ ML) * tg.norm_cka
        if self.plain:
            n2 = (LtL * G2).sum((-2, -1))
            num["cosine"] = (ML * (self.P @ MR)).sum((-2, -1))
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
