"""Fit any token-space matrix a TransformerLens user holds: a tensor, a ``FactoredMatrix`` with head dimensions
(``E @ model.OV[l] @ U``) or a :class:`~tl_leadterm.analysis.factored.Factored`, against a basis target.

``fit_circuit(X, basis, "value_output")`` returns, per head (leading dimension of ``X``; one row group for a 2-D
matrix), the rows ``analyze_model`` writes for a head: ``signed_cosine``, ``coef``, ``explained``,
``residual_norm``, ``residual_rel_norm``, ``residual_pair`` and ``residual_sv`` — the same numbers, from the same
projection modulo row offsets (:mod:`.residual`).  The rows and columns of ``X`` must be the basis tokens in the
basis' order (``E = W_E[basis.token_ids]``, ``U = W_U[:, basis.token_ids]``).  There is no chance level here: a
null needs the geometry the matrix was read through; :func:`~tl_leadterm.analysis.analyze_model` has it.
"""

from __future__ import annotations

import math

import pandas as pd
import torch

from ..basis import Basis
from ..errors import require
from ..params import check
from .chance import basis_matrix
from .factored import Factored
from .heads import emit_fit
from .residual import Atoms, fit
from .table import frame, row


def fit_circuit(X, basis: Basis, target: str = "value_output", *, top: int = 5, n_singular: int = 3,
                site: str = "circuit", checkpoint: str = "") -> pd.DataFrame:
    """Project ``X`` (``[..., k, k]``; tensor, ``FactoredMatrix`` or ``Factored``) on ``target`` modulo row offsets,
    per head; rows in the analysis table's schema (module docstring).  ``top`` residual pairs and ``n_singular``
    singular directions are reported (integers >= 0)."""
    top, n_singular = check("top", top), check("n_singular", n_singular)
    F = Factored.from_any(X)
    k = basis.k
    require(F.shape == (k, k), f"the matrix is {F.shape[0]} x {F.shape[1]} but the basis has k={k} tokens; read it "
                               "through E = W_E[basis.token_ids] and U = W_U[:, basis.token_ids]")
    dev = F.A.device
    atoms = Atoms.build({target: basis_matrix(basis, target).to(dev, torch.float64)})
    strs = basis.token_strs()
    batch = F.batch_shape
    heads = [None] if not batch else list(range(int(torch.tensor(batch).prod())))
    A = F.A.reshape(-1, *F.A.shape[-2:]) if batch else F.A[None]
    B = F.B.reshape(-1, *F.B.shape[-2:]) if batch else F.B[None]
    rows: list[dict] = []
    for i, h in enumerate(heads):
        f = fit(Factored(A[i].double(), B[i].double()), atoms, top=top, n_singular=n_singular,
                what="matrix" if h is None else f"head {h}")
        c, ex = f.coef[target], f.explained
        cos = math.copysign(math.sqrt(ex), c) if math.isfinite(ex) and ex >= 0 else float("nan")
        rows.append(row(checkpoint, None, h, site, "signed_cosine", cos, target, "", True))
        rows.append(row(checkpoint, None, h, site, "coef", c, target, "", True))
        rows.append(row(checkpoint, None, h, site, "explained", ex, target, "", True))
        emit_fit(rows, checkpoint, None, h, site, f, strs, top, own=False)
    return frame(rows)


def measure_representations(reps, basis: Basis, *, target: str = "value", embeddings=None, null_draws: int = 200,
                            seed: int = 0, checkpoint: str = "") -> pd.DataFrame:
    """``cov_cosine`` and ``cka`` of representations of the basis tokens with ``target`` (THEORY.md §5).

    ``reps``: a tensor ``[k, d]`` (one site) or ``[L, k, d]``, a dict ``{site: tensor}``, or a TransformerLens
    ``ActivationCache`` of a run over the basis tokens (``[k, pos, d]``; every ``hook_resid_*`` is read at the last
    position).  With ``embeddings`` (``W_E``, ``[d_vocab, d]``) each row gets its chance level: random linear
    read-outs ``E G`` of the same embeddings (:func:`~tl_leadterm.analysis.chance.representation_null`).
    """
    from .chance import group_seed, representation_null
    from .measures import Target, similarities

    null_draws, seed = check("null_draws", null_draws), check("seed", seed)

    items: dict[str, torch.Tensor] = {}
    if hasattr(reps, "cache_dict"):                    # ActivationCache
        for name, v in reps.cache_dict.items():
            if "hook_resid" in name:
                items[name] = v[:, -1] if v.dim() == 3 else v
    elif isinstance(reps, dict):
        items = dict(reps)
    else:
        t = torch.as_tensor(reps)
        items = {f"layer{i}": t[i] for i in range(t.shape[0])} if t.dim() == 3 else {"representation": t}
    require(len(items) > 0, "no representations found: give a [k, d] tensor, a dict of them, or an ActivationCache of hook_resid_*")
    tg = Target.build(basis_matrix(basis, target).double())
    null = None
    if embeddings is not None and null_draws > 0:
        E = torch.as_tensor(embeddings).detach().double()[basis.token_ids]
        null = representation_null(E, tg, null_draws, group_seed(seed, "representation", target))
    rows = []
    for name, H in items.items():
        H = torch.as_tensor(H).detach().double().cpu()
        require(H.dim() == 2 and H.shape[0] == basis.k,
                f"representation {name} has shape {tuple(H.shape)}; expected [k={basis.k}, d] (one row per basis token)")
        for m, v in similarities(H, tg).items():
            place = null[m].place(v) if null is not None else {}
            rows.append(row(checkpoint, None, None, name, m, v, target, "", False, **place))
    return frame(rows)
