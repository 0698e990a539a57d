"""Beyond the leading term for any model: a token-space matrix projected on its basis term modulo row
offsets, and the residual it leaves, from the matrix's factors.

Softmax ignores a constant added to a row (per query for QK, per source token for OV and
logits), so a model matrix ``X`` (``k x k`` over the basis tokens) and its target ``T`` are
compared after centring each row: ``X̃ = X (I - 11ᵀ/k)``, ``T̃ = T (I - 11ᵀ/k)``.  The
least-squares fit ``X̃ ≈ Σ_i c_i Ã_i`` on atoms ``Ã_i`` (the site's target, or a dictionary)
gives the measures

* ``coef`` ``c_i`` (minimum-norm least squares, ``c = <X̃, T̃>/‖T̃‖²`` for one atom);
* ``explained`` ``‖Σ c_i Ã_i‖² / ‖X̃‖²``;
* ``residual_norm`` ``‖Δ‖`` with ``Δ = X̃ - Σ c_i Ã_i`` and ``residual_rel_norm`` ``‖Δ‖/‖X̃‖``;
* ``residual_pair``: the largest ``|Δ|`` entries (row token → column token);
* ``residual_sv``: the top singular values of ``Δ``, with the top tokens of each singular vector pair.

Low rank: ``X = A B`` is :class:`~tl_leadterm.analysis.factored.Factored` with inner size ``r``
(``d_head`` for a head), so ``X̃ = A (B - B̄)``.  Two passes visit ``X̃`` one block of rows at a
time (``O(k² r)`` work, ``O(k · block)`` memory): the first for ``<X̃, Ã_i>`` and ``‖X̃‖²``, the
second for the residual ``Δ``'s exact norm and largest entries; its
singular directions come from a block Krylov method on the operator ``v ↦ A (B̃ v) - Σ c_i Ã_i v``
(``O(k² b)`` per iteration with blocks of ``b = n_singular + 5``, stopped when the top values agree to
1e-12; exact dense SVD when ``k <= dense_below``).
No ``k x k x k`` product is ever formed.  A zero matrix gives NaN with a warning.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..errors import require
from .factored import Factored
from .measures import centre_rows, ratio

DENSE_BELOW = 256   # k up to this: dense SVD of the residual (exact); above it, block Krylov (_top_singular)


@dataclass
class Atoms:
    """Row-centred atoms ``Ã_i`` (``k x k``) scaled to unit norm (basis matrices differ in scale by
    orders of magnitude; unit atoms keep the Gram matrix well conditioned), their norms ``scale`` and
    Gram matrix, prepared once per target (or dictionary).  A zero atom stays zero (coefficient 0)."""

    names: list[str]
    mats: list[Tensor]
    scale: Tensor
    gram: Tensor
    gram_pinv: Tensor

    @classmethod
    def build(cls, atoms: dict[str, Tensor]) -> "Atoms":
        mats = [centre_rows(a.double()) for a in atoms.values()]
        scale = torch.stack([m.norm() for m in mats])
        mats = [m / s if s > 0 else m for m, s in zip(mats, scale)]
        gram = torch.stack([torch.stack([(a * b).sum() for b in mats]) for a in mats])
        return cls(list(atoms), mats, scale, gram, torch.linalg.pinv(gram))

    @property
    def k(self) -> int:
        return self.mats[0].shape[0]


@dataclass
class ResidualFit:
    """The fit of one matrix (module docstring): ``pairs`` are ``(value, row, col)``; ``singular``
    ``(value, u, v)`` with ``u``, ``v`` the left and right singular vectors (length ``k``)."""

    coef: dict[str, float]
    norm: float
    explained: float
    residual_norm: float
    residual_rel_norm: float
    pairs: list[tuple[float, int, int]] = field(default_factory=list)
    singular: list[tuple[float, Tensor, Tensor]] = field(default_factory=list)


def fit(X: Factored, atoms: Atoms, *, top: int = 5, n_singular: int = 3, block: int = 1024,
        sv_iters: int = 15, dense_below: int = DENSE_BELOW, what: str = "matrix") -> ResidualFit:
    """Project ``X`` (``k x k``, factored) on ``atoms`` modulo row offsets; the residual's norm, pairs and SVs."""
    require(X.shape == (atoms.k, atoms.k), f"{what} has shape {X.shape}, expected ({atoms.k}, {atoms.k})")
    A = X.A.double()
    Bc = X.B.double()
    Bc = centre_rows(Bc)                                          # X̃ = A B̃: each row of X centred
    k = atoms.k
    # pass 1, a block of rows of X̃ at a time: <X̃, Ã_i> and ‖X̃‖² from the entries themselves (a Gram-matrix
    # shortcut would cancel catastrophically when row offsets dominate X)
    rhs = torch.zeros(len(atoms.mats), dtype=A.dtype, device=A.device)
    norm2 = 0.0
    for i0 in range(0, k, block):
        P = A[i0:i0 + block] @ Bc
        norm2 += float((P * P).sum())
        rhs += torch.stack([(P * M[i0:i0 + block]).sum() for M in atoms.mats])
    c = atoms.gram_pinv.to(rhs) @ rhs                                     # on the unit atoms
    proj2 = float(torch.clamp(c @ atoms.gram.to(c) @ c, min=0.0))        # ‖Σ c_i Ã_i‖²
    scale = atoms.scale.to(c)
    coef = dict(zip(atoms.names, torch.where(scale > 0, c / torch.where(scale > 0, scale, 1.0), 0.0).tolist()))

    def block_rows(i0: int, i1: int) -> Tensor:
        D = A[i0:i1] @ Bc
        for ci, M in zip(c.tolist(), atoms.mats):
            if ci != 0.0:
                D -= ci * M[i0:i1]
        return D

    res2, cand_v, cand_i = 0.0, [], []       # pass 2: the residual Δ, a block of rows at a time
    for i0 in range(0, k, block):
        D = block_rows(i0, min(k, i0 + block))
        res2 += float((D * D).sum())
        t = min(top, D.numel())
        v, idx = D.reshape(-1).abs().topk(t)
        cand_v.append(D.reshape(-1)[idx])
        cand_i.append(idx + i0 * k)
    vals, flat = torch.cat(cand_v), torch.cat(cand_i)
    order = vals.abs().topk(min(top, vals.numel())).indices
    pairs = [(float(vals[o]), int(flat[o]) // k, int(flat[o]) % k) for o in order.tolist()]
    norm = norm2 ** 0.5
    res = res2 ** 0.5
    out = ResidualFit(coef, norm, ratio(proj2, norm2, f"{what} explained"), res,
                      ratio(res, norm, f"{what} residual"), pairs)
    if n_singular > 0 and res > 1e-12 * norm:   # below that the residual is rounding: no directions
        out.singular = _top_singular(A, Bc, c, atoms, n_singular, block_rows, sv_iters, dense_below)
    return out


def _top_singular(A, Bc, c, atoms: Atoms, n: int, block_rows, iters: int, dense_below: int):
    k = atoms.k
    n = min(n, k)
    b = min(k, n + 5)
    if k <= dense_below or b * (iters + 1) >= k:   # a Krylov space as large as Rᵏ: the dense SVD is exact and cheaper
        U, S, Vh = torch.linalg.svd(block_rows(0, k))
        return [(float(S[i]), U[:, i], Vh[i]) for i in range(n)]
    cs = c.tolist()

    def mv(V: Tensor) -> Tensor:          # Δ V
        V = V.contiguous()                # QR returns column-major Q: BLAS is much faster on row-major
        out = A @ (Bc @ V)
        for ci, M in zip(cs, atoms.mats):
            if ci != 0.0:
                out -= ci * (M @ V)
        return out

    def rmv(U: Tensor) -> Tensor:         # Δᵀ U
        U = U.contiguous()
        out = Bc.T @ (A.T @ U)
        for ci, M in zip(cs, atoms.mats):
            if ci != 0.0:
                out -= ci * (M.T @ U)
        return out

    # block Krylov (Musco & Musco 2015): the span of Δ Ω, (ΔΔᵀ) Δ Ω, ..., then Rayleigh-Ritz on all of it;
    # it converges on the top singular triplets far faster than keeping only the last block
    g = torch.Generator(device="cpu").manual_seed(0)   # deterministic: same inputs, same directions
    blocks = [torch.linalg.qr(mv(torch.randn(k, b, generator=g, dtype=A.dtype).to(A.device))).Q]
    prev = None
    for it in range(iters):
        Y = mv(rmv(blocks[-1]))
        before = float(Y.norm())
        for Qb in blocks:                                 # block Gram-Schmidt, twice for stability
            Y -= Qb @ (Qb.T @ Y)
        for Qb in blocks:
            Y -= Qb @ (Qb.T @ Y)
        if float(Y.norm()) <= 1e-10 * before:
            break                                         # the Krylov space is exhausted (Δ has low rank)
        Qn = torch.linalg.qr(Y).Q
        blocks.append(Qn)
        if (it + 1) % 3 == 0 or it + 1 == iters:
            Q = torch.cat(blocks, dim=1)
            s = torch.linalg.svdvals(rmv(Q).T)[:n]
            if prev is not None and float((s - prev).abs().max()) <= 1e-12 * float(s[0]):
                break
            prev = s
    Q = torch.linalg.qr(torch.cat(blocks, dim=1)).Q                 # re-orthonormalised once more
    Ub, S, Vh = torch.linalg.svd(rmv(Q).T, full_matrices=False)   # Qᵀ Δ = Ub S Vh
    U = Q @ Ub
    return [(float(S[i]), U[:, i], Vh[i]) for i in range(n)]


# ---------------------------------------------------------------------------
# decoded details, shared by the toy and the real-model analyses
# ---------------------------------------------------------------------------
def pair_detail(rank: int, row: int, col: int, strs: list[str]) -> str:
    return f"#{rank}: {strs[row]!r} -> {strs[col]!r}"


def sv_detail(rank: int, u: Tensor, v: Tensor, strs: list[str], top: int) -> str:
    ut = [strs[j] for j in u.abs().argsort(descending=True)[:top].tolist()]
    vt = [strs[j] for j in v.abs().argsort(descending=True)[:top].tolist()]
    return f"#{rank}: rows {', '.join(map(repr, ut))} | cols {', '.join(map(repr, vt))}"
