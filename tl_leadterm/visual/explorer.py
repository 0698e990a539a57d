"""Association explorer (the paper's qualitative analysis).

For a chosen token, its row of each basis matrix in THEORY.md orientation
(:data:`tl_leadterm.theory.TERMS`), the largest entries over the basis tokens: B̄ (token as
current → next tokens), Φ̄ (token as next → context tokens), ΣB̄ (interchangeable
tokens), M (token in context → current token written), Ḡ (token in context →
next tokens promoted), Q̄ (token as query → keys).  For a toy model also the
learned weights' rows on the basis tokens (``W_O``, ``V.l``, ``W.l``, and the OV
product ``V.l·W_O``) and the *residual* of each weight beyond its leading term,
``R = A - c* B`` with ``c* = <A, B>/|B|²`` (largest ``|R|`` entries).
"""

from __future__ import annotations

import numbers
import unicodedata
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ..analysis.measures import centre_rows, projection
from ..basis import Basis
from ..errors import LeadTermError, require
from ..params import check
from ..theory import MATRIX_NAMES, TERMS, leading
from .views import CVView


def resolve_token(basis: Basis, token) -> int:
    """The basis index of ``token``: a string (exact, then NFC-normalised, stripped and lower-cased matches, so
    a word typed in NFD or NFC finds the same token, as the word tokenizer normalises text to NFC) or a token id
    (an integer, numpy's too); a one-line error names close matches."""
    strs = basis.token_strs()
    if _is_id(token):
        i = int(basis.index_of([int(token)])[0])
        require(i >= 0, f"token id {token} is not one of the basis' {basis.k} tokens; choose a more frequent token")
        return i
    require(isinstance(token, str), f"{{tokens}} must hold token strings or token ids, got {token!r}")
    if token in strs:
        return strs.index(token)
    nfc = [unicodedata.normalize("NFC", s) for s in strs]
    t = unicodedata.normalize("NFC", token).strip()
    for cand in (t, " " + t, t.lower(), " " + t.lower()):
        if cand in nfc:
            return nfc.index(cand)
    near = [s for s, n in zip(strs, nfc) if t.lower() in n.lower()][:5]
    raise LeadTermError(f"token {token!r} is not one of the basis' {basis.k} tokens"
                        + (f" (close: {', '.join(map(repr, near))})" if near else "") + "; choose a token from the basis")


def _is_id(token) -> bool:
    return isinstance(token, numbers.Integral) and not isinstance(token, (bool, np.bool_))


def _residual(A: Tensor, B: Tensor) -> Tensor:
    """``A`` minus its best multiple of ``B`` (:func:`~tl_leadterm.analysis.measures.projection`)."""
    return projection(A, {"term": B}).residual


def association_sources(basis: Basis, model=None) -> dict[str, tuple]:
    """``{source name: (rows, description)}`` for the explorer (module docstring); ``rows`` is a ``k x k``
    matrix over the basis tokens or a function of a basis index giving that row (real models)."""
    out: dict[str, tuple] = {}
    for name in MATRIX_NAMES:
        t = TERMS[name]
        note = (" (pairs never seen, which tie at the centring constant −P(token)/|V|, are left out)"
                if name == "bigram" else "")
        out[t.symbol] = (getattr(basis, name).double().cpu(), f"{name}: token as {t.rows} → {t.columns} tokens{note}")
    if model is None:
        return out
    from ..analysis.compat import check_compatible
    from ..models import adapt
    ad = adapt(model)
    check_compatible(ad, basis)
    out.update(_toy_sources(ad, basis) if ad.token_space else _circuit_sources(ad, basis))
    return out


def _toy_sources(ad, basis: Basis) -> dict[str, tuple]:
    """The toy model's learned weights on the basis tokens, and each one's residual beyond its leading term."""
    out = {}
    weights = {name: w.detach().double().cpu() for name, w in ad.model.weights().items()}
    learned = {"W_O": basis.sub_block(weights["W_O"])}
    for l in range(ad.n_layers):
        learned[f"V.{l}"] = basis.sub_block(weights[f"V.{l}"])
        learned[f"W.{l}"] = basis.sub_block(weights[f"W.{l}"])
        learned[f"V.{l}·W_O"] = basis.sub_block(weights[f"V.{l}"] @ weights["W_O"])
    for name, A in learned.items():
        t = TERMS[leading(name).term]
        out[f"learned {name}"] = (A, f"learned weight {name} (compare {t.symbol}): row = {t.rows}, columns = {t.columns}")
        out[f"residual {name}"] = (_residual(A, getattr(basis, t.name).double().cpu()),
                                   f"{name} minus its best multiple of {t.symbol}: beyond the leading term (largest |value|)")
    return out


def _circuit_sources(ad, basis: Basis) -> dict[str, tuple]:
    """A real model's head-averaged OV and QK circuits per layer, and each one's residual beyond its leading
    term modulo row offsets (:mod:`tl_leadterm.analysis.residual`); rows are computed one at a time."""
    from ..analysis.heads import AtomCache, head_matrix
    from ..analysis.residual import fit
    from ..theory import SITES

    out = {}
    for l in range(ad.n_layers):
        for site in ("circuit_ov", "circuit_qk"):
            X = head_matrix(ad, basis, l, None, site).double()
            target = SITES[site].target
            atoms = AtomCache(basis, X.A.device).get(target)
            c = fit(X, atoms, top=1, n_singular=0, what=f"layer {l} {site}").coef[target]
            T = getattr(basis, target).to(X.A.device, torch.float64)
            t = TERMS[target]
            A, B = X.A, centre_rows(X.B)
            out[f"learned {site} L{l}"] = (lambda i, A=A, B=X.B: (A[i] @ B).cpu(),
                                           f"{site} of layer {l}, head average (compare {t.symbol}): row = {t.rows}, columns = {t.columns}")
            out[f"residual {site} L{l}"] = (lambda i, A=A, B=B, c=c, T=T: (A[i] @ B - c * (T[i] - T[i].mean())).cpu(),
                                            f"{site} of layer {l} minus its best multiple of {t.symbol}, modulo row offsets: "
                                            "beyond the leading term (largest |value|)")
    return out


def associations(basis: Basis, tokens: Sequence[str | int], *, model=None, top: int = 8):
    """Long DataFrame ``token, source, rank, associate, value, description`` of the top associates.

    Sources: B̄, Φ̄, ΣB̄, M, Ḡ, Q̄ and, with a ``model``, what it learned and the residual beyond the
    leading term (ranked by ``|value|``; the others by value): for the toy model its weights, for any
    other model each layer's head-averaged OV and QK circuits on the basis tokens.  B̄'s pairs never seen
    tie at its centring constant −P(token)/|V|; they are dropped, not shown as negative associates.
    ``tokens``: strings or token ids (:func:`resolve_token`), each basis token once; ``top``: associates per
    source (>= 1).
    """
    import pandas as pd

    top = check("top", top, key="top_associates")
    require(not isinstance(tokens, (str, bytes)) and hasattr(tokens, "__iter__"),
            f"{{tokens}} must be a list of tokens, e.g. ['bird', 'fish'], got {tokens!r}")
    tokens = list(tokens)    # a generator is read once
    picked = [resolve_token(basis, tok) for tok in tokens]
    require(len(picked) > 0, "{tokens} is empty; give at least one token, e.g. ['bird']")
    strs = basis.token_strs()
    first: dict[int, object] = {}
    for tok, i in zip(tokens, picked):
        require(i not in first, f"{{tokens}} names basis token {strs[i]!r} twice ({first.get(i)!r} and {tok!r}); "
                                "give each token once")
        first[i] = tok
    srcs = association_sources(basis, model)
    rows = []
    for i in picked:
        for src, (A, desc) in srcs.items():
            row = A(i) if callable(A) else A[i]
            key = row.abs() if src.startswith("residual") else row
            order = torch.sort(-key, stable=True).indices
            if src == TERMS["bigram"].symbol:
                order = order[_seen(row)[order]]
            order = order[: min(top, order.numel())]
            for rank, j in enumerate(order.tolist(), 1):
                rows.append({"token": strs[i], "source": src, "rank": rank, "associate": strs[j],
                             "value": float(row[j]), "description": desc})
    return pd.DataFrame(rows, columns=["token", "source", "rank", "associate", "value", "description"])


def _seen(row: Tensor) -> Tensor:
    """B̄[a, b] = P(a, b) − P(a)/|V|: every pair never seen ties at the row's centring constant −P(a)/|V| (its
    minimum). Those ties are not associations: mask them (when two or more entries tie at the minimum)."""
    at_min = row == row.min()
    return ~at_min if int(at_min.sum()) >= 2 else torch.ones_like(at_min)


def association_table(df, token: str):
    """Wide view of :func:`associations` for one token: rows = rank, columns = source, cells ``'tok (value)'``."""
    sub = df[df["token"] == token]
    require(len(sub) > 0, f"no associations for token {token!r}")
    sub = sub.assign(cell=[f"{a!r} ({v:.3g})" for a, v in zip(sub["associate"], sub["value"])])
    tab = sub.pivot(index="rank", columns="source", values="cell")[list(dict.fromkeys(sub["source"]))]
    tab.columns.name = None
    return tab


def association_view(df, token: str) -> CVView:
    """circuitsvis ``ColoredTokensMulti``: the union of top associates, one value set per source (scaled to max |value| = 1)."""
    sub = df[df["token"] == token]
    require(len(sub) > 0, f"no associations for token {token!r}")
    sources = list(dict.fromkeys(sub["source"]))
    assoc = list(dict.fromkeys(sub["associate"]))
    vals = torch.zeros(len(assoc), len(sources), dtype=torch.float64)
    for j, src in enumerate(sources):
        s = sub[sub["source"] == src]
        m = max(float(s["value"].abs().max()), 1e-300)
        for a, v in zip(s["associate"], s["value"]):
            vals[assoc.index(a), j] = v / m
    return CVView("ColoredTokensMulti", {"tokens": [f" {a} " for a in assoc], "values": vals.float().numpy().round(4),
                                        "labels": sources},
                  title=f"associates of {token!r}",
                  caption="Top associates under each source (click a source to colour by it; values scaled to max |value| = 1).")


def residual_view(fit, strs: list[str], title: str, *, n_tokens: int = 10) -> CVView:
    """circuitsvis ``ColoredTokensMulti`` of a residual's top singular directions (:class:`~tl_leadterm.analysis.ResidualFit`):
    the tokens that weigh most in each left (row) and right (column) singular vector, one value set per vector
    (scaled to max |value| = 1).  ``n_tokens`` (>= 1) tokens per vector."""
    n_tokens = check("n_tokens", n_tokens)
    require(len(fit.singular) > 0, f"{title}: the residual has no singular directions (it is zero)")
    picks: list[int] = []
    sets = []
    for i, (s, u, v) in enumerate(fit.singular):
        for name, vec in ((f"σ{i + 1}={s:.3g} rows", u), (f"σ{i + 1} cols", v)):
            vec = vec.detach().double().cpu()
            picks += [j for j in vec.abs().argsort(descending=True)[:n_tokens].tolist() if j not in picks]
            sets.append((name, vec / max(float(vec.abs().max()), 1e-300)))
    vals = torch.stack([vec[picks] for _, vec in sets], dim=1)
    return CVView("ColoredTokensMulti", {"tokens": [f" {strs[j]} " for j in picks], "values": vals.float().numpy().round(4),
                                        "labels": [name for name, _ in sets]},
                  title=title,
                  caption="Beyond the leading term: the residual's top singular directions. Each value set colours the "
                          "tokens by one singular vector (rows: the matrix's row tokens, e.g. sources for OV; cols: its "
                          "column tokens, e.g. promoted outputs); click a set to colour by it.")
