"""The toy model's weights projected on their leading terms, and what lies beyond.

The toy weights are full-vocabulary ``|V| x |V|`` matrices (``P`` has length
``n_ctx``), the basis is a ``k x k`` sub-block: every comparison is on the basis'
``k`` tokens, i.e. on :meth:`Basis.sub_block` (``P`` on its first ``T`` entries).  For
each weight (site ``W_O``, ``V``, ``W``, ``P``) the sub-block is projected by least
squares onto the span of a set of atoms: by default its own leading term
(:data:`tl_leadterm.theory.LEADING`: W_O→bigram, V→value, W→key_query, P→position);
with ``dictionary=True`` all six basis matrices, their transposes, the identity and
the all-ones matrix (``P``: p̄ and the constant vector).  Everything is compared as the model's output sees
it (:func:`visible`): where a constant per row changes nothing (``W_O``: logits, ``W`` and ``P``: attention
scores, softmax follows) the weight and every atom have their rows centred, exactly as the real-model
analysis centres a head's rows, and the all-ones atom (invisible there) is left out; ``V`` is compared as
it is.  Coefficients are the
minimum-norm least-squares solution (the dictionary is rank-deficient: ΣB̄ is
symmetric).  Measures: ``coef`` (target = atom), ``cosine`` (cos(W, proj)),
``explained`` (‖proj‖²/‖W‖²), ``cosine_leading`` (cos with its own leading term),
``weight_norm``, ``residual_norm`` and ``residual_rel_norm`` of the part "beyond the
leading term" ``R = W - proj``, ``residual_pair`` (the largest |R| entries; detail
``'row' -> 'col'``) and ``residual_sv`` (top singular values of R; detail = top tokens
of the left/right singular vectors).
"""

from __future__ import annotations

import pandas as pd
import torch
from torch import Tensor

from ..basis import Basis
from ..errors import require
from ..models import adapt
from ..params import check
from ..theory import MATRIX_NAMES, leading, parse_weight
from .compat import check_compatible
from .measures import centre_rows, fro_cos, projection, ratio
from .residual import pair_detail, sv_detail
from .table import frame, row


def visible(name: str, X: Tensor) -> Tensor:
    """``X`` as toy weight ``name``'s output sees it: rows centred where a constant per row is invisible
    (:attr:`tl_leadterm.theory.Leading.centred`: ``W_O``, ``W``, ``P``, ``V·W_O``), else as it is (``V``).
    The analysis of real heads compares row-centred matrices for the same reason, so ``explained`` means one
    thing for every model."""
    return centre_rows(X.double()) if leading(name).centred else X.double()


def toy_visible_pair(basis: Basis, name: str, weight: Tensor) -> tuple[Tensor, Tensor]:
    """``(sub-block, leading term)`` of toy weight ``name`` on the basis tokens (:meth:`Basis.toy_pair`), both
    through :func:`visible`: what the toy analysis, the monitor and the quick measures compare."""
    W, lead = basis.toy_pair(name, weight)
    return visible(name, W), visible(name, lead)


def toy_atoms(basis: Basis, name: str, dictionary: bool, length: int | None = None) -> dict[str, Tensor]:
    """The atoms toy weight ``name`` (``"W_O"``, ``"V"``, ``"V.0"`` ...) is projected on (module docstring),
    through :func:`visible` (where rows are centred, the all-ones atom is invisible and left out)."""
    lead = leading(name).term
    centred = leading(name).centred
    length = check("length", length, optional=True)
    if lead == "position":
        p = basis.position.double()[:length]
        atoms = {"position": p}
        if dictionary and not centred:
            atoms["ones"] = torch.ones_like(p)
    elif not dictionary:
        atoms = {lead: getattr(basis, lead).double()}
    else:
        atoms = {name: getattr(basis, name).double() for name in MATRIX_NAMES}
        atoms.update({f"{name}.T": getattr(basis, name).double().T for name in MATRIX_NAMES})
        atoms["identity"] = torch.eye(basis.k, dtype=torch.float64)
        if not centred:
            atoms["ones"] = torch.ones(basis.k, basis.k, dtype=torch.float64)
    return {a: visible(name, t) for a, t in atoms.items()}


def decode(basis: Basis, tokenizer=None) -> list[str]:
    """The basis tokens as strings, with ``tokenizer`` when given (else the basis' own)."""
    if tokenizer is not None:
        return tokenizer.token_strs(basis.token_ids.tolist())
    return basis.token_strs()


def analyze_toy(model, basis: Basis, dictionary: bool = False, checkpoint: str = "", *, top: int = 5,
                n_singular: int = 3) -> pd.DataFrame:
    """Project every toy weight onto basis compositions (module docstring); one tidy table.  ``top`` residual
    pairs and ``n_singular`` singular directions per weight (integers >= 0)."""
    top, n_singular = check("top", top), check("n_singular", n_singular)
    ad = adapt(model)
    require(ad.token_space, "analyze_toy needs a ToyTransformer (use analyze_model for TransformerLens models)")
    ad.check_finite()
    check_compatible(ad, basis)
    strs = decode(basis, ad.tokenizer)
    rows = []
    for name, weight in ad.model.weights().items():
        site, layer = parse_weight(name)
        W, lead_t = toy_visible_pair(basis, name, weight)
        atoms = toy_atoms(basis, name, dictionary, W.shape[0] if W.dim() == 1 else None)
        fit = projection(W, atoms)
        R = fit.residual
        add = lambda m, v, target="", detail="": rows.append(row(checkpoint, layer, None, site, m, v, target, detail))  # noqa: E731
        for atom, c in fit.coef.items():
            add("coef", c, atom)
        span = "+".join(atoms)
        add("cosine", fit.cosine(f"{name} cosine"), span)
        add("explained", fit.explained(f"{name} explained"), span)
        add("cosine_leading", fro_cos(W, lead_t, f"{name} cosine_leading"), leading(name).term)
        add("weight_norm", float(W.norm()))
        add("residual_norm", float(R.norm()), span)
        add("residual_rel_norm", ratio(R.norm(), W.norm(), f"{name} residual"), span)
        if R.dim() == 1:
            order = R.abs().argsort(descending=True)[:top]
            for i, d in enumerate(order.tolist()):
                add("residual_pair", float(R[d]), "", f"#{i + 1}: delta={d}")
            continue
        k = R.shape[0]
        flat = R.reshape(-1).abs().argsort(descending=True)[:top]
        for i, f in enumerate(flat.tolist()):
            a, b = divmod(f, k)
            add("residual_pair", float(R[a, b]), "", pair_detail(i + 1, a, b, strs))
        if float(R.norm()) > 0:
            U, S, Vh = torch.linalg.svd(R)
            for i in range(min(n_singular, k)):
                add("residual_sv", float(S[i]), "", sv_detail(i + 1, U[:, i], Vh[i], strs, top))
    return frame(rows)
