"""Comparison stage: model weights and representations against the basis.

Stable API (every function returns a tidy :class:`pandas.DataFrame`)
--------------------------------------------------------------------
``analyze_toy(model, basis, dictionary=False, checkpoint="") -> DataFrame``
``analyze_model(adapter_or_model, basis, checkpoint="", *, circuits=True) -> DataFrame``
``sweep(model, checkpoints, basis, *, backend="auto", device="cpu", circuits=True, dictionary=False) -> DataFrame``
``causal_check(adapter_or_model, basis, tokens, *, seeds=5, sites=None, layers=None, heads=None) -> DataFrame``
``quick_measures(adapter_or_model, basis) -> dict[str, float]``  (cheap; for training monitors)

Columns (always, in this order): ``checkpoint, layer, head, site, measure, value,
target, detail, extension``.  ``layer``/``head`` are NaN for rows that are not
per layer / per head (``head`` NaN = the whole layer, e.g. averaged over heads);
``site`` names what was measured, ``target`` the basis tensor it is compared
with (THEORY.md names: bigram, value, value_output, key_query, position);
``detail`` is text (decoded tokens); ``extension`` is True for measures that go
beyond the paper.

Toy-model analysis (:func:`analyze_toy`)
----------------------------------------
The toy weights are full-vocabulary ``|V| x |V|`` matrices (``P`` has length
``n_ctx``), the basis is a ``k x k`` sub-block: every comparison is on the basis'
``k`` tokens, i.e. on ``W[token_ids][:, token_ids]`` (``P`` on its first
``min(n_ctx, T)`` entries).  For each weight (site ``W_O``, ``V``, ``W``, ``P``) the
sub-block is projected by least squares onto the span of a set of atoms: by default
its own leading term (W_O→bigram, V→value, W→key_query, P→position); with
``dictionary=True`` all six basis matrices, their transposes, the identity and the
all-ones matrix (``P``: p̄ and the constant vector).  Coefficients are the
minimum-norm least-squares solution (the dictionary is rank-deficient: ΣB̄ is
symmetric).  Measures: ``coef`` (target = atom), ``cosine`` (cos(W, proj)),
``explained`` (‖proj‖²/‖W‖²), ``cosine_leading`` (cos with its own leading term),
``weight_norm``, ``residual_norm`` and ``residual_rel_norm`` of the part
"beyond the leading term" ``R = W - proj``, ``residual_pair`` (the largest |R|
entries; detail ``'row' -> 'col'``) and ``residual_sv`` (top singular values of R;
detail = top tokens of the left/right singular vectors).

Real-model analysis (:func:`analyze_model`, THEORY.md §5)
---------------------------------------------------------
Every basis token is run alone (length-1 sequence, no BOS) and per layer ``l`` the
representations ``H`` (``k x d_model``) are read at ``resid_pre``, ``resid_mid``
(for parallel attention/MLP blocks, e.g. Pythia: ``resid_pre + attn_out``) and
``resid_post``; they are compared with ``M`` (target ``value``).  Key-query:
``S_h = (A W_Q^h)(A W_K^h)ᵀ`` per head and ``S̄ = mean_h S_h`` (site ``key_query``,
head NaN) with ``A`` the attention input (``ln1.hook_normalized`` after LayerNorm
folding = what W_Q multiplies); compared with Q̄ (target ``key_query``).  Site
``key_query_resid`` is THEORY.md §5 to the letter, ``S_h = (H W_Q^h)(H W_K^h)ᵀ`` with
``H = resid_pre`` and the weights as the adapter holds them (LayerNorm folded); it is
what :class:`~tl_leadterm.monitor.TrainingMonitor` logs as ``qk.l`` / ``qk.l.h``.

Two similarities of a model matrix ``X`` (``k x m``) with a theory matrix ``T`` (``k x k``).
``T`` is first row-normalised (each row divided by its norm; zero rows stay 0),
because its rows scale with token frequency:

* ``cov_cosine`` (the paper's): centre each row of ``X`` and of ``T`` (subtract the
  row mean), take the ``k x k`` covariances of rows ``C = X_c X_cᵀ``, report the
  Frobenius cosine ``<C_X, C_T>/(‖C_X‖ ‖C_T‖)``;
* ``cka`` (linear CKA, Kornblith et al. 2019): centre each column over the ``k``
  tokens, Gram matrices ``K = X_c X_cᵀ``, same Frobenius cosine.

Low rank: a model matrix is kept as factors ``X = L Rᵀ`` (``L, R``: ``k x r`` with
``r = d_head`` per head, ``r = d_model`` for representations and head averages).
Then ``C_X = L G Lᵀ`` with ``G`` ``r x r`` and ``<C_X, C_T> = sum(G * (YᵀY))`` with
``Y = T_xᵀ L``; ``‖C_X‖² = tr((G LᵀL)²)``.  The cost per head is ``O(k² r)``; the only
``O(k³)`` work is ``‖C_T‖`` once per basis tensor (cached); no ``k x k x k`` product.
A zero-norm matrix gives NaN with a warning.

Extension beyond the paper (``extension=True`` rows): token-space circuits on the
basis tokens, with ``E = W_E[token_ids]`` and ``U = W_U[:, token_ids]``:
``circuit_qk`` = ``E W_Q W_Kᵀ Eᵀ`` (full QK circuit, query x key) vs Q̄;
``circuit_ov`` = ``E W_V W_O U`` (full OV circuit, source x output logit) vs Ḡ
(context x next); ``circuit_ov_embed`` = ``E W_V W_O Eᵀ`` vs M (context x current);
``direct_path`` = ``E U`` vs B̄ (current x next).  Measures ``cosine`` (plain
Frobenius cosine, meaningful because rows and columns index the same tokens in
the same roles), ``cov_cosine`` and ``cka``.

Causal check (:func:`causal_check`)
-----------------------------------
Toy model: for each weight, ``D`` = its leading-term direction (basis tensor placed
in the basis-token sub-block, zero elsewhere); remove its component
``c D`` (``c = <W, D>/‖D‖²``) and measure the held-out loss change, against removing
a random direction of equal norm on the same sub-block (mean ± sd over seeds).
Real model, per head: the token-space basis direction ``T`` (Q̄ for QK, Ḡ for OV) is
pulled back to model space through the layer's attention inputs ``A`` of the basis
tokens: ``D = Aᵀ T A`` (QK; ``d_model x d_model``) and ``D = Aᵀ T U_kᵀ`` (OV, with
``U_k = W_U[:, token_ids]``).  Only the part of ``D`` that the head can represent is
removed: for QK ``D_h = D Π_K`` (``Π_K`` = projector on the column space of ``W_K``),
implemented as ``W_Q ← W_Q - c D W_K (W_KᵀW_K)⁺``; for OV ``D_h = D Π_O`` (row space
of ``W_O``), implemented as ``W_V ← W_V - c D W_Oᵀ (W_O W_Oᵀ)⁺``, with
``c = <X, D_h>/‖D_h‖²`` and ``X = W_Q W_Kᵀ`` or ``W_V W_O``.  The edit is applied
through hooks (``hook_q``/``hook_v`` plus ``δ = attn_in @ Δ``), so it works
identically on HookedTransformer and TransformerBridge.  The random control uses
``R Π`` for a Gaussian ``R``, scaled to remove the same Frobenius norm from ``X``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from .basis import Basis, MATRIX_NAMES
from .errors import LeadTermError, require
from .models import ModelAdapter, PYTHIA_REVISIONS, adapt, load_model, validate_revision

COLUMNS = ["checkpoint", "layer", "head", "site", "measure", "value", "target", "detail", "extension"]
LEADING = {"W_O": "bigram", "V": "value", "W": "key_query", "P": "position"}
NAN = float("nan")


def _row(checkpoint, layer, head, site, measure, value, target="", detail="", extension=False) -> dict:
    return {"checkpoint": checkpoint, "layer": NAN if layer is None else layer, "head": NAN if head is None else head,
            "site": site, "measure": measure, "value": float(value), "target": target, "detail": detail,
            "extension": bool(extension)}


def _frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=COLUMNS)
    df["layer"] = df["layer"].astype("float64")
    df["head"] = df["head"].astype("float64")
    df["value"] = df["value"].astype("float64")
    return df


# ---------------------------------------------------------------------------
# similarity measures
# ---------------------------------------------------------------------------
def _ratio(num: Tensor | float, den: Tensor | float, what: str) -> float:
    num, den = float(num), float(den)
    if not (math.isfinite(den) and den > 0.0):
        warnings.warn(f"{what}: a matrix has zero norm, so the similarity is undefined (reported as NaN)", stacklevel=3)
        return NAN
    return num / den


def row_normalise(T: Float[Tensor, "k m"]) -> Float[Tensor, "k m"]:
    """Each row divided by its Euclidean norm (zero rows stay zero)."""
    n = T.norm(dim=1, keepdim=True)
    return T / torch.where(n > 0, n, torch.ones_like(n))


def centre_rows(X: Tensor) -> Tensor:
    return X - X.mean(dim=1, keepdim=True)


def centre_cols(X: Tensor) -> Tensor:
    return X - X.mean(dim=0, keepdim=True)


def _fro_cos(A: Tensor, B: Tensor, what: str) -> float:
    return _ratio((A * B).sum(), A.norm() * B.norm(), what)


def cov_cosine_dense(X: Float[Tensor, "k m"], T: Float[Tensor, "k n"], normalise_target: bool = True) -> float:
    """The paper's similarity, directly: cos_F(X_c X_cᵀ, T_c T_cᵀ) with rows centred (dense reference)."""
    X, T = X.double(), T.double()
    T = row_normalise(T) if normalise_target else T
    Xc, Tc = centre_rows(X), centre_rows(T)
    return _fro_cos(Xc @ Xc.T, Tc @ Tc.T, "cov_cosine")


def cka_dense(X: Float[Tensor, "k m"], T: Float[Tensor, "k n"], normalise_target: bool = True) -> float:
    """Linear CKA, directly: cos_F(H X Xᵀ H, H T Tᵀ H) with H the centring over the k rows (dense reference)."""
    X, T = X.double(), T.double()
    T = row_normalise(T) if normalise_target else T
    Xc, Tc = centre_cols(X), centre_cols(T)
    return _fro_cos(Xc @ Xc.T, Tc @ Tc.T, "cka")


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
    return _ratio(num, normC * norm_t, what)


def similarities(L: Float[Tensor, "k r"], R: Float[Tensor, "k r"] | None, target: Target,
                 Z: Float[Tensor, "k r"] | None = None) -> dict[str, float]:
    """``cov_cosine`` and ``cka`` of ``X = L Rᵀ`` (``R=None``: ``X = L``) with a prepared target, in O(k² r).

    ``Z = Tnᵀ L`` may be given (e.g. ``(Tnᵀ A) W_Q^h`` for every head of a layer).
    With ``Y = Txᵀ L``: cov uses ``Y = (I - 11ᵀ/k) Z`` and ``G = R_cᵀ R_c`` (R centred over its
    rows = X's rows centred); CKA uses ``Y = Z - (Tnᵀ1) l̄ᵀ`` and ``G = RᵀR`` with ``L`` centred
    over tokens.  ``<C_X, C_T> = sum(G * YᵀY)``, ``‖C_X‖² = tr((G LᵀL)²)``.
    """
    L = L.double()
    if R is None:
        R = torch.eye(L.shape[1], dtype=L.dtype, device=L.device)
    R = R.double()
    Z = target.z(L) if Z is None else Z.double()
    Rc = centre_cols(R)
    Yc = Z - Z.mean(0, keepdim=True)
    out = {"cov_cosine": _gram_cos(((Rc.T @ Rc) * (Yc.T @ Yc)).sum(), Rc.T @ Rc, L.T @ L, target.norm_cov, "cov_cosine")}
    lbar = L.mean(0)
    Lc = L - lbar
    Yk = Z - torch.outer(target.t1, lbar)
    G = R.T @ R
    out["cka"] = _gram_cos((G * (Yk.T @ Yk)).sum(), G, Lc.T @ Lc, target.norm_cka, "cka")
    return out


def cov_cosine_lowrank(L: Float[Tensor, "k r"], R: Float[Tensor, "k r"] | None, target: Target) -> float:
    """The paper's covariance cosine of ``X = L Rᵀ`` (``R=None``: ``X = L``)."""
    return similarities(L, R, target)["cov_cosine"]


def cka_lowrank(L: Float[Tensor, "k r"], R: Float[Tensor, "k r"] | None, target: Target) -> float:
    """Linear CKA of ``X = L Rᵀ`` (``R=None``: ``X = L``)."""
    return similarities(L, R, target)["cka"]


def frob_cosine_lowrank(L: Float[Tensor, "k r"], R: Float[Tensor, "k r"], T: Float[Tensor, "k k"],
                        TR: Tensor | None = None) -> float:
    """cos_F(L Rᵀ, T) in O(k² r) (``TR = T R`` may be given)."""
    L, R, T = L.double(), R.double(), T.double()
    TR = T @ R if TR is None else TR.double()
    num = (L * TR).sum()
    n2 = ((L.T @ L) * (R.T @ R)).sum()
    return _ratio(num, torch.sqrt(torch.clamp(n2, min=0.0)) * T.norm(), "cosine")


class Targets:
    """Lazily prepared targets of one basis (cached per basis tensor), on ``device``."""

    def __init__(self, basis: Basis, device: torch.device | str | None = None):
        self.basis = basis
        self.device = torch.device(device or "cpu")
        self._cache: dict[str, Target] = {}

    def get(self, name: str) -> Target:
        if name not in self._cache:
            self._cache[name] = Target.build(getattr(self.basis, name).to(self.device), name)
        return self._cache[name]


class Family:
    """Comparisons of ``X_h = (B_L M_h)(B_R N_h)ᵀ`` that share the bases ``B_L``, ``B_R`` (``k x d``).

    Everything a comparison needs is a ``d x d`` Gram matrix of the bases, computed
    once: ``Z_B = Tnᵀ B_L`` (``O(k² d)``, the dominant cost), ``Z_Bᵀ Z_B``, ``B_Lᵀ B_L``,
    ``B_Rᵀ B_R`` (and their token-centred versions) and ``B_Lᵀ T B_R``.  Each member
    (head) then costs ``O(d² r)``, independent of ``k``: e.g. ``YᵀY = Mᵀ (Z_BᵀZ_B) M``.
    Used for all heads of a layer (``B = attn_in``) and the circuits (``B = W_E``, ``W_Uᵀ``).
    """

    def __init__(self, BL: Tensor, BR: Tensor, target: Target, plain: bool):
        BL, BR = BL.double(), BR.double()
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
        same = BR.data_ptr() == BL.data_ptr() and BR.shape == BL.shape and BR.stride() == BL.stride()
        self.RR = self.LL if same else BR.T @ BR
        rbar = self.lbar if same else BR.mean(0)
        self.RRc = self.LLc if same else self.RR - k * torch.outer(rbar, rbar)
        self.P = (BL.T @ target.T) @ BR if plain else None
        self.Tnorm = float(target.T.norm())

    def measure(self, ML: Float[Tensor, "d r"], MR: Float[Tensor, "d r"]) -> dict[str, float]:
        ML, MR = ML.double(), MR.double()
        tg = self.target
        LtL = ML.T @ self.LL @ ML
        # covariance cosine: G = R_cᵀR_c, Y = (I - 11ᵀ/k) Z
        G = MR.T @ self.RRc @ MR
        out = {"cov_cosine": _gram_cos((G * (ML.T @ self.ZZc @ ML)).sum(), G, LtL, tg.norm_cov, "cov_cosine")}
        # CKA: G = RᵀR, L centred over tokens, Y = Z - t1 l̄ᵀ
        G2 = MR.T @ self.RR @ MR
        lbar = self.lbar @ ML
        zt = ML.T @ self.Zt1
        YY = ML.T @ self.ZZ @ ML - torch.outer(zt, lbar) - torch.outer(lbar, zt) + self.t1t1 * torch.outer(lbar, lbar)
        out["cka"] = _gram_cos((G2 * YY).sum(), G2, ML.T @ self.LLc @ ML, tg.norm_cka, "cka")
        if self.plain:
            n2 = (LtL * G2).sum()
            out["cosine"] = _ratio((ML * (self.P @ MR)).sum(), torch.sqrt(torch.clamp(n2, min=0.0)) * self.Tnorm, "cosine")
        return out


# ---------------------------------------------------------------------------
# compatibility checks
# ---------------------------------------------------------------------------
def check_compatible(ad: ModelAdapter, basis: Basis) -> None:
    """The basis must be built with the model's tokenizer and vocabulary (one-line errors otherwise)."""
    require(basis.k <= ad.d_vocab,
            f"the basis has k={basis.k} tokens but the model's vocabulary has only {ad.d_vocab}; "
            f"rebuild the basis with --top-k {ad.d_vocab} or less using the model's tokenizer")
    b_id = basis.tokenizer_identity.get("fingerprint") if basis.tokenizer_json else None
    m_id = ad.tokenizer.identity.get("fingerprint") if ad.tokenizer is not None else None
    if b_id and m_id and b_id != m_id:
        raise LeadTermError(
            f"the basis was built with tokenizer {basis.tokenizer_identity.get('name')!r} (fingerprint {b_id}) but the model "
            f"{ad.name!r} uses {ad.tokenizer.identity.get('name')!r} (fingerprint {m_id}); rebuild the basis with "
            f"--tokenizer set to the model's tokenizer")
    if basis.vocab_size != ad.d_vocab:
        same_tok = bool(b_id and m_id and b_id == m_id)
        require(same_tok and basis.vocab_size < ad.d_vocab,
                f"the basis was built for a vocabulary of {basis.vocab_size} tokens but the model has {ad.d_vocab}; "
                f"rebuild the basis with the model's tokenizer and --vocab-size {ad.d_vocab}")
    require(int(basis.token_ids.max()) < ad.d_vocab,
            f"basis token id {int(basis.token_ids.max())} is outside the model's vocabulary ({ad.d_vocab}); rebuild the basis with the model's tokenizer")


def _decode(basis: Basis, tokenizer=None) -> list[str]:
    if tokenizer is not None:
        return tokenizer.token_strs(basis.token_ids.tolist())
    return basis.token_strs()


# ---------------------------------------------------------------------------
# toy model
# ---------------------------------------------------------------------------
def toy_atoms(basis: Basis, site: str, dictionary: bool, length: int | None = None) -> dict[str, Tensor]:
    """The atoms a toy weight is projected on (see module docstring)."""
    if site == "P":
        p = basis.position.double()[:length]
        atoms = {"position": p}
        if dictionary:
            atoms["ones"] = torch.ones_like(p)
        return atoms
    lead = LEADING[site]
    if not dictionary:
        return {lead: getattr(basis, lead).double()}
    atoms = {name: getattr(basis, name).double() for name in MATRIX_NAMES}
    atoms.update({f"{name}.T": getattr(basis, name).double().T for name in MATRIX_NAMES})
    atoms["identity"] = torch.eye(basis.k, dtype=torch.float64)
    atoms["ones"] = torch.ones(basis.k, basis.k, dtype=torch.float64)
    return atoms


def project(W: Tensor, atoms: dict[str, Tensor]) -> tuple[dict[str, float], Tensor]:
    """Minimum-norm least-squares coefficients of ``W`` on the span of ``atoms``, and the projection."""
    W = W.double()
    A = torch.stack([a.reshape(-1) for a in atoms.values()], dim=1)   # n x m
    coef = torch.linalg.pinv(A) @ W.reshape(-1)
    proj = (A @ coef).reshape(W.shape)
    return dict(zip(atoms, coef.tolist())), proj


def _toy_sub(model, name: str, ids: Tensor, T: int) -> Tensor:
    w = model.weights()[name].detach().double().cpu()
    if name.startswith("P."):
        return w[:T]
    return w[ids][:, ids]


def analyze_toy(model, basis: Basis, dictionary: bool = False, checkpoint: str = "", *, top: int = 5,
                n_singular: int = 3) -> pd.DataFrame:
    """Project every toy weight onto basis compositions (module docstring); one tidy table."""
    ad = adapt(model)
    require(ad.kind == "toy", "analyze_toy needs a ToyTransformer (use analyze_model for TransformerLens models)")
    ad.check_finite()
    toy = ad.model
    check_compatible(ad, basis)
    require(basis.vocab_size == toy.cfg.d_vocab,
            f"the basis was built for a vocabulary of {basis.vocab_size} tokens but the toy model has {toy.cfg.d_vocab}; "
            "use the basis of the corpus the toy model was trained on")
    ids = basis.token_ids.cpu()
    T = min(toy.cfg.n_ctx, basis.seq_len)
    strs = _decode(basis, ad.tokenizer)
    rows = []
    for name in toy.weights():
        site, layer = (name, None) if name == "W_O" else (name.split(".")[0], int(name.split(".")[1]))
        W = _toy_sub(toy, name, ids, T)
        atoms = toy_atoms(basis, site, dictionary, T)
        coef, proj = project(W, atoms)
        R = W - proj
        wn = float(W.norm())
        add = lambda m, v, target="", detail="": rows.append(_row(checkpoint, layer, None, site, m, v, target, detail))  # noqa: E731
        for atom, c in coef.items():
            add("coef", c, atom)
        lead = LEADING[site]
        lead_t = getattr(basis, lead).double()[:T] if site == "P" else getattr(basis, lead).double()
        add("cosine", _fro_cos(W, proj, f"{name} cosine"), "+".join(atoms))
        add("explained", _ratio(proj.norm() ** 2, W.norm() ** 2, f"{name} explained"), "+".join(atoms))
        add("cosine_leading", _fro_cos(W, lead_t, f"{name} cosine_leading"), lead)
        add("weight_norm", wn)
        add("residual_norm", float(R.norm()), "+".join(atoms))
        add("residual_rel_norm", _ratio(R.norm(), W.norm(), f"{name} residual"), "+".join(atoms))
        if site == "P":
            order = R.abs().argsort(descending=True)[:top]
            for i, d in enumerate(order.tolist()):
                add("residual_pair", float(R[d]), "", f"#{i + 1}: delta={d}")
            continue
        k = R.shape[0]
        flat = R.reshape(-1).abs().argsort(descending=True)[:top]
        for i, f in enumerate(flat.tolist()):
            a, b = divmod(f, k)
            add("residual_pair", float(R[a, b]), "", f"#{i + 1}: {strs[a]!r} -> {strs[b]!r}")
        if float(R.norm()) > 0:
            U, S, Vh = torch.linalg.svd(R)
            for i in range(min(n_singular, k)):
                ut = [strs[j] for j in U[:, i].abs().argsort(descending=True)[:top].tolist()]
                vt = [strs[j] for j in Vh[i].abs().argsort(descending=True)[:top].tolist()]
                add("residual_sv", float(S[i]), "", f"#{i + 1}: rows {', '.join(map(repr, ut))} | cols {', '.join(map(repr, vt))}")
    return _frame(rows)


# ---------------------------------------------------------------------------
# real models
# ---------------------------------------------------------------------------
def analyze_model(adapter_or_model, basis: Basis, checkpoint: str = "", *, circuits: bool = True,
                  progress: bool = True, batch_size: int = 1024, device: str | torch.device | None = None,
                  targets: "Targets | None" = None) -> pd.DataFrame:
    """THEORY.md §5 per layer and head, plus the token-space circuits extension (module docstring).

    The algebra runs in float64 on ``device`` (default: the model's device, so a model
    on CUDA is analysed on CUDA).  ``targets`` (``Targets(basis, device)``) may be shared
    between calls: its O(k³) preparation is then done once (``sweep`` does this).
    """
    ad = adapt(adapter_or_model)
    ad.check_finite()
    check_compatible(ad, basis)
    checkpoint = checkpoint or ad.checkpoint
    dev = torch.device(device) if device is not None else torch.device(ad.device)
    tg = targets if targets is not None and targets.basis is basis and targets.device == dev else Targets(basis, dev)
    reps = ad.token_representations(basis.token_ids, batch_size=batch_size)
    rows: list[dict] = []
    ids = basis.token_ids.to(dev)
    f64 = lambda x: x.detach().to(dev, torch.float64)  # noqa: E731
    if circuits:
        E = f64(ad.W_E)[ids]
        Ut = f64(ad.W_U)[:, ids].T
        fam = {"circuit_qk": Family(E, E, tg.get("key_query"), True),
               "circuit_ov": Family(E, Ut, tg.get("value_output"), True),
               "circuit_ov_embed": Family(E, E, tg.get("value"), True)}
    bar = tqdm(total=ad.n_layers, desc=f"analyse {checkpoint or ad.name}", disable=not progress, leave=False)
    for l in range(ad.n_layers):
        for site in ("resid_pre", "resid_mid", "resid_post"):
            _emit_sims(rows, checkpoint, l, None, site, similarities(f64(reps[site][l]), None, tg.get("value")), "value")
        WQ, WK = f64(ad.W_Q(l)), f64(ad.W_K(l))
        A = f64(reps["attn_in"][l])
        _heads(rows, checkpoint, l, "key_query", Family(A, A, tg.get("key_query"), False), WQ, WK, "key_query")
        H = f64(reps["resid_pre"][l])
        _heads(rows, checkpoint, l, "key_query_resid", Family(H, H, tg.get("key_query"), False), WQ, WK, "key_query")
        if circuits:
            WV, WO = f64(ad.W_V(l)), f64(ad.W_O(l))
            WOt = WO.transpose(1, 2)
            _heads(rows, checkpoint, l, "circuit_qk", fam["circuit_qk"], WQ, WK, "key_query", True)
            _heads(rows, checkpoint, l, "circuit_ov", fam["circuit_ov"], WV, WOt, "value_output", True)
            _heads(rows, checkpoint, l, "circuit_ov_embed", fam["circuit_ov_embed"], WV, WOt, "value", True)
        bar.update(1)
    bar.close()
    if circuits:
        eye = torch.eye(ad.d_model, dtype=torch.float64, device=dev)
        dp = Family(E, Ut, tg.get("bigram"), True).measure(eye, eye)
        _emit_sims(rows, checkpoint, None, None, "direct_path", dp, "bigram", True)
    return _frame(rows)


def _emit_sims(rows, checkpoint, layer, head, site, sims: dict, target: str, extension: bool = False) -> None:
    for measure, v in sims.items():
        rows.append(_row(checkpoint, layer, head, site, measure, v, target, "", extension))


def _heads(rows, checkpoint, l, site, fam: Family, ML: Tensor, MR: Tensor, target: str, extension: bool = False) -> None:
    """Per head ``X_h = (B_L ML[h])(B_R MR[h])ᵀ`` and the head average ``(1/H) [ML_1..ML_H][MR_1..MR_H]ᵀ``."""
    H = ML.shape[0]
    for h in range(H):
        _emit_sims(rows, checkpoint, l, h, site, fam.measure(ML[h], MR[h]), target, extension)
    cat = lambda M: torch.cat(list(M), dim=1)  # noqa: E731  (d_model, H * r)
    _emit_sims(rows, checkpoint, l, None, site, fam.measure(cat(ML) / H, cat(MR)), target, extension)


# ---------------------------------------------------------------------------
# sweeps
# ---------------------------------------------------------------------------
def parse_checkpoints(items: Sequence[str] | str) -> list[str]:
    """Split a comma list; check each entry is a Pythia revision, a local directory or toy:PATH."""
    if isinstance(items, str):
        items = [s for s in (x.strip() for x in items.split(",")) if s]
    items = list(items)
    require(len(items) > 0, "no checkpoints given; list Pythia revisions (step0,step1,...) or local model directories")
    out = []
    for it in items:
        s = str(it)
        if s.startswith("toy:") or Path(s).is_dir():
            out.append(s)
        else:
            out.append(validate_revision(s))
    return out


def sweep(model: str | None, checkpoints: Sequence[str] | str, basis: Basis, *, backend: str = "auto",
          device="cpu", circuits: bool = True, dictionary: bool = False, progress: bool = True) -> pd.DataFrame:
    """Analyse several checkpoints in one call and concatenate the tables.

    ``checkpoints`` are Pythia revisions (``stepN``, loaded as ``model`` at that
    revision), local model directories, or ``toy:PATH`` (each loaded on its own;
    ``model`` may then be None).  Every name is checked before anything is loaded.
    """
    ckpts = parse_checkpoints(checkpoints)
    for c in ckpts:
        if c in PYTHIA_REVISIONS:
            require(model, f"checkpoint {c} is a hub revision: give --model (a hub name such as EleutherAI/pythia-70m)")
    frames = []
    targets = None  # prepared once for all checkpoints (O(k³) per basis tensor)
    for c in tqdm(ckpts, desc="checkpoints", disable=not progress):
        if c in PYTHIA_REVISIONS:
            ad = load_model(model, revision=c, backend=backend, device=device)
        else:
            ad = load_model(c, backend=backend, device=device)
        label = c
        if ad.kind == "toy":
            frames.append(analyze_toy(ad, basis, dictionary=dictionary, checkpoint=label))
        else:
            if targets is None or targets.device != torch.device(ad.device):
                targets = Targets(basis, ad.device)
            frames.append(analyze_model(ad, basis, checkpoint=label, circuits=circuits, progress=progress, targets=targets))
        del ad
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------------------
# cheap measures for monitors
# ---------------------------------------------------------------------------
_TARGET_CACHE: dict[int, tuple[Basis, Targets]] = {}


def _targets_for(basis: Basis) -> Targets:
    """Prepared CPU targets of ``basis``, cached for repeated monitor calls (small bases)."""
    hit = _TARGET_CACHE.get(id(basis))
    if hit is not None and hit[0] is basis:
        return hit[1]
    if len(_TARGET_CACHE) > 8:
        _TARGET_CACHE.clear()
    tg = Targets(basis)
    _TARGET_CACHE[id(basis)] = (basis, tg)
    return tg


def quick_measures(adapter_or_model, basis: Basis) -> dict[str, float]:
    """Cheap per-layer similarities (cached basis preparation), keys ``"L{l}/{site}/{measure}"``.

    Toy model: ``cosine`` of every weight's basis sub-block with its leading term
    (keys ``"W_O/cosine"``, ``"L{l}/V/cosine"`` ...).  TransformerLens models:
    ``key_query`` cov cosine of the head average and ``resid_post`` cov cosine per
    layer (one batched run of the basis tokens).  No checks beyond what is needed.
    Runs single-threaded (restoring the thread count): its matrices are small.
    """
    ad = adapt(adapter_or_model)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: thread start-up dominates on a busy CPU
    try:
        return _quick_measures(ad, basis)
    finally:
        torch.set_num_threads(threads)


def _quick_measures(ad: ModelAdapter, basis: Basis) -> dict[str, float]:
    out: dict[str, float] = {}
    if ad.kind == "toy":
        toy = ad.model
        ids = basis.token_ids.cpu()
        T = min(toy.cfg.n_ctx, basis.seq_len)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name in toy.weights():
                site = name.split(".")[0]
                W = _toy_sub(toy, name, ids, T)
                lead = getattr(basis, LEADING[site]).double()
                lead = lead[:T] if site == "P" else lead
                key = "W_O/cosine" if name == "W_O" else f"L{name.split('.')[1]}/{site}/cosine"
                out[key] = _fro_cos(W, lead, key)
        return out
    tg = _targets_for(basis)
    reps = ad.token_representations(basis.token_ids)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for l in range(ad.n_layers):
            A = reps["attn_in"][l].double().cpu()
            Q = A @ ad.W_Q(l).double().cpu().permute(1, 0, 2).reshape(ad.d_model, -1)
            K = A @ ad.W_K(l).double().cpu().permute(1, 0, 2).reshape(ad.d_model, -1)
            out[f"L{l}/key_query/cov_cosine"] = cov_cosine_lowrank(Q / ad.n_heads, K, tg.get("key_query"))
            out[f"L{l}/resid_post/cov_cosine"] = cov_cosine_lowrank(reps["resid_post"][l].double().cpu(), None, tg.get("value"))
    return out


# ---------------------------------------------------------------------------
# causal check
# ---------------------------------------------------------------------------
def _as_tokens(tokens) -> Tensor:
    from .corpus import Windows
    if isinstance(tokens, Windows):
        return tokens.tokens
    t = torch.as_tensor(tokens, dtype=torch.long)
    return t[None] if t.dim() == 1 else t


def _toy_loss(model, tokens) -> float:
    from .corpus import Windows
    from .toy import windows_loss
    if isinstance(tokens, Windows):
        return windows_loss(model, tokens)
    with torch.no_grad():
        return float(model(_as_tokens(tokens).to(model.W_O.device), return_type="loss"))


def _stats(deltas: list[float]) -> tuple[float, float]:
    t = torch.tensor(deltas, dtype=torch.float64)
    return float(t.mean()), float(t.std()) if len(deltas) > 1 else 0.0


def causal_check(adapter_or_model, basis: Basis, tokens, *, seeds: int = 5, sites: Sequence[str] | None = None,
                 layers: Sequence[int] | None = None, heads: Sequence[int] | None = None, checkpoint: str = "",
                 progress: bool = True) -> pd.DataFrame:
    """Held-out loss change when the leading-term component is removed vs a random one of equal norm.

    ``tokens``: held-out text as a token tensor ``[batch, pos]`` or :class:`~tl_leadterm.corpus.Windows`.
    Rows (per weight or per head): ``loss_base``, ``loss_leading``, ``delta_leading``,
    ``delta_random_mean``, ``delta_random_sd``, ``removed_norm``, ``coefficient``.
    Toy sites: ``W_O``, ``V``, ``W``, ``P``; real-model sites: ``qk``, ``ov`` (see module docstring).
    """
    ad = adapt(adapter_or_model)
    ad.check_finite()
    check_compatible(ad, basis)
    require(seeds >= 1, f"seeds must be >= 1 (got {seeds})")
    checkpoint = checkpoint or ad.checkpoint
    if ad.kind == "toy":
        return _causal_toy(ad, basis, tokens, seeds, sites, layers, checkpoint, progress)
    return _causal_real(ad, basis, tokens, seeds, sites or ("qk", "ov"), layers, heads, checkpoint, progress)


def _emit(rows, checkpoint, layer, head, site, target, base, lead_loss, rand_losses, removed, coef, extension=False):
    dm, sd = _stats([x - base for x in rand_losses])
    for m, v in (("loss_base", base), ("loss_leading", lead_loss), ("delta_leading", lead_loss - base),
                 ("delta_random_mean", dm), ("delta_random_sd", sd), ("removed_norm", removed), ("coefficient", coef)):
        rows.append(_row(checkpoint, layer, head, site, m, v, target, f"{len(rand_losses)} random seeds", extension))


def _causal_toy(ad, basis, tokens, seeds, sites, layers, checkpoint, progress) -> pd.DataFrame:
    toy = ad.model
    require(basis.vocab_size == toy.cfg.d_vocab, f"the basis was built for a vocabulary of {basis.vocab_size} tokens but the toy model has {toy.cfg.d_vocab}; use the basis of the toy model's corpus")
    ids = basis.token_ids.to(toy.W_O.device)
    T = min(toy.cfg.n_ctx, basis.seq_len)
    base = _toy_loss(toy, tokens)
    rows = []
    names = [n for n in toy.weights() if (sites is None or n.split(".")[0] in sites)
             and (layers is None or n == "W_O" or int(n.split(".")[1]) in layers)]
    for name in tqdm(names, desc="causal check (toy)", disable=not progress, leave=False):
        site = name.split(".")[0]
        layer = None if name == "W_O" else int(name.split(".")[1])
        p = toy.weights()[name]
        D = torch.zeros_like(p)
        src = getattr(basis, LEADING[site]).to(p.device, p.dtype)
        if site == "P":
            D[:T] = src[:T]
            mask = torch.zeros_like(p, dtype=torch.bool); mask[:T] = True
        else:
            D[ids[:, None], ids[None, :]] = src
            mask = torch.zeros_like(p, dtype=torch.bool); mask[ids[:, None], ids[None, :]] = True
        dn2 = float((D * D).sum())
        if dn2 == 0:
            warnings.warn(f"{name}: the leading-term direction is zero; causal check undefined (NaN)")
            _emit(rows, checkpoint, layer, None, site, LEADING[site], base, NAN, [NAN], NAN, NAN)
            continue
        c = float((p.detach() * D).sum()) / dn2
        removed = abs(c) * math.sqrt(dn2)
        orig = p.detach().clone()
        try:
            with torch.no_grad():
                p.sub_(c * D)
            lead_loss = _toy_loss(toy, tokens)
            rl = []
            for s in range(seeds):
                g = torch.Generator().manual_seed(1000 + s)
                R = torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.device, p.dtype) * mask
                R = R / R.norm() * removed
                with torch.no_grad():
                    p.copy_(orig - R)
                rl.append(_toy_loss(toy, tokens))
        finally:
            with torch.no_grad():
                p.copy_(orig)
        _emit(rows, checkpoint, layer, None, site, LEADING[site], base, lead_loss, rl, removed, c)
    return _frame(rows)


def head_edit_directions(ad: ModelAdapter, basis: Basis, layer: int, A: Tensor, site: str) -> tuple[Tensor, Tensor, Tensor]:
    """``(X, Π, D)`` for one layer, all heads: ``X`` (h, d, d) the head matrices, ``Π`` (h, d, d) the
    projectors of the removable subspace and ``D`` (d, d) the pulled-back basis direction (module docstring)."""
    A = A.double().cpu()
    if site == "qk":
        WQ, WK = ad.W_Q(layer).double().cpu(), ad.W_K(layer).double().cpu()
        X = WQ @ WK.transpose(1, 2)
        D = A.T @ basis.key_query.double().cpu() @ A
        P = WK @ torch.linalg.pinv(WK)                       # Π_K (h, d, d), right-multiplied
    else:
        WV, WO = ad.W_V(layer).double().cpu(), ad.W_O(layer).double().cpu()
        X = WV @ WO
        U = ad.W_U.double().cpu()[:, basis.token_ids]
        D = A.T @ basis.value_output.double().cpu() @ U.T
        P = torch.linalg.pinv(WO) @ WO                       # Π_O (h, d, d), right-multiplied
    return X, P, D


def _causal_real(ad, basis, tokens, seeds, sites, layers, heads, checkpoint, progress) -> pd.DataFrame:
    for s in sites:
        require(s in ("qk", "ov"), f"unknown causal-check site {s!r} for a TransformerLens model; choose qk or ov")
    toks = _as_tokens(tokens)
    base = ad.loss(toks)
    reps = ad.token_representations(basis.token_ids)
    layers = list(range(ad.n_layers)) if layers is None else list(layers)
    heads = list(range(ad.n_heads)) if heads is None else list(heads)
    rows = []
    jobs = [(l, s) for l in layers for s in sites]
    for l, site in tqdm(jobs, desc="causal check", disable=not progress, leave=False):
        require(0 <= l < ad.n_layers, f"layer {l} out of range [0, {ad.n_layers})")
        X, P, D = head_edit_directions(ad, basis, l, reps["attn_in"][l], site)
        other = ad.W_K(l) if site == "qk" else ad.W_O(l)
        for h in heads:
            require(0 <= h < ad.n_heads, f"head {h} out of range [0, {ad.n_heads})")
            Dh = D @ P[h]
            dn2 = float((Dh * Dh).sum())
            target = "key_query" if site == "qk" else "value_output"
            if dn2 == 0:
                warnings.warn(f"layer {l} head {h} {site}: the basis direction is zero in this head's subspace (NaN)")
                _emit(rows, checkpoint, l, h, site, target, base, NAN, [NAN], NAN, NAN)
                continue
            c = float((X[h] * Dh).sum()) / dn2
            removed = abs(c) * math.sqrt(dn2)
            lead_loss = ad.loss(toks, _edit_hooks(ad, l, h, site, c * D, other[h]))
            rl = []
            for s in range(seeds):
                g = torch.Generator().manual_seed(1000 + s)
                Rm = torch.randn(D.shape, generator=g, dtype=torch.float64)
                Rh = Rm @ P[h]
                scale = removed / float(Rh.norm())
                rl.append(ad.loss(toks, _edit_hooks(ad, l, h, site, scale * Rm, other[h])))
            _emit(rows, checkpoint, l, h, site, target, base, lead_loss, rl, removed, c)
    return _frame(rows)


def weight_delta(site: str, Dfull: Tensor, other: Tensor) -> Tensor:
    """The change of W_Q (``qk``: ``Dfull W_K (W_KᵀW_K)⁺``) or W_V (``ov``: ``Dfull W_Oᵀ (W_O W_Oᵀ)⁺``) that removes ``Dfull Π``."""
    other = other.double().cpu()
    if site == "qk":
        return Dfull @ torch.linalg.pinv(other).T            # W_K⁺ᵀ = W_K (W_KᵀW_K)⁺
    return Dfull @ torch.linalg.pinv(other)                   # W_O⁺ = W_Oᵀ (W_O W_Oᵀ)⁺


def _edit_hooks(ad: ModelAdapter, layer: int, head: int, site: str, Dfull: Tensor, other: Tensor):
    """Forward hooks that subtract ``attn_in @ Δ`` from head ``head``'s q (qk) or v (ov)."""
    delta = weight_delta(site, Dfull, other).to(ad.device, ad.dtype)   # d_model x d_head
    store = {}
    in_name = f"blocks.{layer}.ln1.hook_normalized"

    def keep(x, hook):
        store["x"] = x
        return x

    def edit(x, hook):
        x = x.clone()
        x[:, :, head, :] -= store["x"] @ delta
        return x

    out_name = f"blocks.{layer}.attn.hook_q" if site == "qk" else f"blocks.{layer}.attn.hook_v"
    return [(in_name, keep), (out_name, edit)]
