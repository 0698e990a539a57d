"""Per-head token-space matrices of any model, projected on their leading terms modulo row offsets
(:mod:`.residual`), and the ranking of heads by what the leading term explains.

With the basis' k tokens, ``E = W_E[token_ids]``, ``U = W_U[:, token_ids]`` and ``A_l`` the
attention input of layer ``l`` for each basis token run alone, the sites are
(:data:`tl_leadterm.theory.SITES`):

* ``key_query`` ``A W_Q^h (A W_K^h)ᵀ`` and ``circuit_qk`` ``E W_Q^h W_K^hᵀ Eᵀ`` (query x key) against Q̄;
* ``circuit_ov`` ``E W_V^h W_O^h U`` (source x output logit) against Ḡ;
* ``circuit_ov_embed`` ``E W_V^h W_O^h Eᵀ`` against M;
* ``direct_path`` ``E U`` against B̄ (once per model).

Each head, and the head average ``(1/H) Σ_h`` (``head`` NaN), gives the rows ``coef``,
``explained``, ``residual_norm``, ``residual_rel_norm``, ``residual_pair`` and ``residual_sv``
(``extension=True``: the paper compares real models only by representational similarity).
With ``dictionary=True`` the atoms are Q̄, Q̄ᵀ, ΣB̄, M, Ḡ, the identity and the all-ones
matrix instead of the site's own target (the all-ones matrix is constant along rows, so
modulo row offsets it is zero and gets coefficient 0).
"""

from __future__ import annotations

import pandas as pd
import torch
from torch import Tensor

from ..basis import Basis
from ..errors import require
from ..theory import SITES
from .factored import Factored
from .residual import Atoms, ResidualFit, fit, pair_detail, sv_detail
from .table import row

#: the sites fitted per head (``direct_path`` is fitted once per model)
HEAD_SITES = ("key_query", "circuit_qk", "circuit_ov", "circuit_ov_embed")
DICTIONARY = ("key_query", "key_query.T", "interchange", "value", "value_output", "identity", "ones")


class AtomCache:
    """Row-centred atoms per target (or the dictionary), prepared once per basis and device."""

    def __init__(self, basis: Basis, device, dictionary: bool = False):
        self.basis, self.device, self.dictionary = basis, device, dictionary
        self._cache: dict[str, Atoms] = {}

    def get(self, target: str) -> Atoms:
        key = "dictionary" if self.dictionary else target
        if key not in self._cache:
            b = self.basis
            if self.dictionary:
                eye = torch.eye(b.k, dtype=torch.float64)
                mats = dict(zip(DICTIONARY, (b.key_query, b.key_query.T, b.interchange, b.value, b.value_output,
                                             eye, torch.ones_like(eye))))
            else:
                mats = {target: getattr(b, target)}
            self._cache[key] = Atoms.build({n: m.to(self.device, torch.float64) for n, m in mats.items()})
        return self._cache[key]


def head_factors(ad, layer: int, site: str, A: Tensor, E: Tensor, U: Tensor) -> tuple[Tensor, Tensor]:
    """``(left, right)`` stacks ``[heads, k, r]``, ``[heads, r, k]`` whose products are the site's head matrices."""
    f64 = lambda x: x.detach().to(E.device, torch.float64)  # noqa: E731
    if site in ("key_query", "circuit_qk"):
        X = A if site == "key_query" else E
        return X @ f64(ad.W_Q(layer)), (X @ f64(ad.W_K(layer))).transpose(1, 2)
    WO = f64(ad.W_O(layer))
    return E @ f64(ad.W_V(layer)), WO @ (U if site == "circuit_ov" else E.T)


def fit_heads(left: Tensor, right: Tensor, atoms: Atoms, **kw) -> tuple[list[ResidualFit], ResidualFit]:
    """One :class:`ResidualFit` per head and one for the head average."""
    per_head = [fit(X, atoms, what=f"head {h}", **kw) for h, X in enumerate(Factored.heads(left, right))]
    return per_head, fit(Factored.head_mean(left, right), atoms, what="head average", **kw)


def emit_fit(rows: list[dict], checkpoint, layer, head, site: str, f: ResidualFit, strs: list[str], top: int) -> None:
    """The rows of one fit (module docstring), in the tidy table's schema."""
    span = "+".join(f.coef)
    add = lambda m, v, target="", detail="": rows.append(row(checkpoint, layer, head, site, m, v, target, detail, True))  # noqa: E731
    for atom, c in f.coef.items():
        add("coef", c, atom)
    add("explained", f.explained, span)
    add("residual_norm", f.residual_norm, span)
    add("residual_rel_norm", f.residual_rel_norm, span)
    for i, (v, a, b) in enumerate(f.pairs):
        add("residual_pair", v, "", pair_detail(i + 1, a, b, strs))
    for i, (s, u, vv) in enumerate(f.singular):
        add("residual_sv", s, "", sv_detail(i + 1, u, vv, strs, top))


def head_residual_rows(ad, basis: Basis, layer: int, A: Tensor, E: Tensor, U: Tensor, atoms: AtomCache,
                       checkpoint: str, strs: list[str], top: int = 5, n_singular: int = 3,
                       sites: tuple[str, ...] = HEAD_SITES) -> list[dict]:
    """Every head site of one layer (module docstring)."""
    rows: list[dict] = []
    for site in sites:
        left, right = head_factors(ad, layer, site, A, E, U)
        per_head, mean = fit_heads(left, right, atoms.get(SITES[site].target), top=top, n_singular=n_singular)
        for h, f in enumerate(per_head):
            emit_fit(rows, checkpoint, layer, h, site, f, strs, top)
        emit_fit(rows, checkpoint, layer, None, site, mean, strs, top)
    return rows


def direct_path_rows(E: Tensor, U: Tensor, atoms: AtomCache, checkpoint: str, strs: list[str], top: int = 5,
                     n_singular: int = 3) -> list[dict]:
    rows: list[dict] = []
    f = fit(Factored(E, U), atoms.get(SITES["direct_path"].target), top=top, n_singular=n_singular, what="direct path")
    emit_fit(rows, checkpoint, None, None, "direct_path", f, strs, top)
    return rows


def rank_heads(df: pd.DataFrame) -> pd.DataFrame:
    """Heads ranked by the explained fraction per site and checkpoint (most explained first).

    Columns ``checkpoint, site, rank, layer, head, explained, residual_rel_norm, coef`` (``coef``:
    the coefficient on the site's own target; NaN with a dictionary).
    """
    per_head = df[df["extension"].astype(bool) & df["head"].notna() & df["site"].isin(HEAD_SITES)]
    cols = ["checkpoint", "site", "rank", "layer", "head", "explained", "residual_rel_norm", "coef"]
    if len(per_head) == 0:
        return pd.DataFrame(columns=cols)
    wide = per_head[per_head["measure"].isin(["explained", "residual_rel_norm"])].pivot_table(
        index=["checkpoint", "site", "layer", "head"], columns="measure", values="value", aggfunc="first").reset_index()
    own = per_head[(per_head["measure"] == "coef") & (per_head["target"] == per_head["site"].map(lambda s: SITES[s].target))]
    coef = own.set_index(["checkpoint", "site", "layer", "head"])["value"].rename("coef")
    wide = wide.join(coef, on=["checkpoint", "site", "layer", "head"])
    wide = wide.sort_values(["checkpoint", "site", "explained", "layer", "head"], ascending=[True, True, False, True, True],
                            na_position="last", kind="stable")
    wide["rank"] = wide.groupby(["checkpoint", "site"]).cumcount() + 1
    wide.columns.name = None
    return wide[cols].reset_index(drop=True)


def head_matrix(ad, basis: Basis, layer: int, head: int | None, site: str) -> Factored:
    """One head's (``head=None``: the head average's) token-space matrix at ``site``, factored, in float64."""
    from ..models import adapt

    ad = adapt(ad)
    require(site in HEAD_SITES, f"unknown site {site!r}; choose one of {', '.join(HEAD_SITES)}")
    require(0 <= layer < ad.n_layers, f"layer {layer} out of range [0, {ad.n_layers})")
    require(head is None or 0 <= head < ad.n_heads, f"head {head} out of range [0, {ad.n_heads})")
    dev = torch.device(ad.device)
    ids = basis.token_ids.to(dev)
    E = ad.W_E.detach().to(dev, torch.float64)[ids]
    U = ad.W_U.detach().to(dev, torch.float64)[:, ids]
    A = ad.token_representations(basis.token_ids)["attn_in"][layer].to(dev, torch.float64) if site == "key_query" else None
    left, right = head_factors(ad, layer, site, A, E, U)
    return Factored.head_mean(left, right) if head is None else Factored(left[head], right[head])


def head_fit(ad, basis: Basis, layer: int, head: int | None, site: str, *, dictionary: bool = False,
             top: int = 5, n_singular: int = 3) -> ResidualFit:
    """The :class:`~tl_leadterm.analysis.residual.ResidualFit` of one head at one site, with its singular vectors."""
    X = head_matrix(ad, basis, layer, head, site)
    atoms = AtomCache(basis, X.A.device, dictionary).get(SITES[site].target)
    return fit(X, atoms, top=top, n_singular=n_singular, what=f"layer {layer} head {head} {site}")
