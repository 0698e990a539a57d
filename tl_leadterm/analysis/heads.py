"""Per-head token-space matrices of any model, projected on their leading terms modulo row offsets
(:mod:`.residual`), and the ranking of heads by what the leading term explains.

With the basis' k tokens, ``E = W_E[token_ids]``, ``U = W_U[:, token_ids]`` and ``A_l`` the
attention input of layer ``l`` for each basis token run alone, the sites are
(:data:`tl_leadterm.theory.SITES`):

* ``key_query`` ``A W_Q^h (A W_K^h)ᵀ`` and ``circuit_qk`` ``E W_Q^h W_K^hᵀ Eᵀ`` (query x key) against Q̄;
* ``circuit_ov`` ``E W_V^h W_O^h U`` (source x output logit) against Ḡ;
* ``circuit_ov_embed`` ``E W_V^h W_O^h Eᵀ`` against M;
* ``direct_path`` ``E U`` against B̄ (once per model).

Each head, and the head average ``(1/H) Σ_h`` (``head`` empty), gives per target the rows ``signed_cosine``
(with its chance level, :mod:`.chance`), ``coef`` and ``explained``, and for the site's own target
``residual_norm``, ``residual_rel_norm``, ``residual_pair`` and ``residual_sv``
(``extension=True``: the paper compares real models only by representational similarity).
With ``dictionary=True`` the atoms are Q̄, Q̄ᵀ, ΣB̄, M, Ḡ, Φ̄ᵀ, B̄, the identity and the all-ones
matrix instead of the site's own target (the all-ones matrix is constant along rows, so
modulo row offsets it is zero and gets coefficient 0).
"""

from __future__ import annotations

from statistics import NormalDist

import pandas as pd
import torch
from torch import Tensor

from ..basis import Basis
from ..errors import require
from ..params import check, index
from ..theory import SITES
from ..theory import site as theory_site
from .factored import Factored
from .residual import Atoms, ResidualFit, fit, pair_detail, sv_detail
from .table import row

#: the sites fitted per head (``direct_path`` is fitted once per model): the registry's ``fit`` sites
HEAD_SITES = tuple(n for n, s in SITES.items() if s.fit)
DICTIONARY = ("key_query", "key_query.T", "interchange", "value", "value_output", "context.T", "bigram", "identity", "ones")


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
                                             b.context.T, b.bigram, eye, torch.ones_like(eye))))
            else:
                from .chance import basis_matrix
                mats = {target: basis_matrix(b, target)}
            self._cache[key] = Atoms.build({n: m.to(self.device, torch.float64) for n, m in mats.items()})
        return self._cache[key]


def head_factors(ad, layer: int, site: str, geom, lens: str = "weights", **lens_kw) -> tuple[Tensor, Tensor]:
    """``(left, right)`` stacks ``[heads, k, r]``, ``[heads, r, k]`` whose products are the site's head matrices
    ``L M_h N_h R`` (:data:`~tl_leadterm.theory.SITES`, :mod:`.lenses`)."""
    from .lenses import lens_factors

    s = theory_site(site)
    require(s.per_head, f"site {site!r} has no per-head matrix; choose one of {', '.join(HEAD_SITES)}")
    L, R = geom.outer(s, layer)
    M, N = lens_factors(lens, ad, layer, s.circuit, geom.device, **lens_kw)
    return L @ M, N @ R


def fit_heads(left: Tensor, right: Tensor, atoms: Atoms, **kw) -> tuple[list[ResidualFit], ResidualFit]:
    """One :class:`ResidualFit` per head and one for the head average."""
    per_head = [fit(X, atoms, what=f"head {h}", **kw) for h, X in enumerate(Factored.heads(left, right))]
    return per_head, fit(Factored.head_mean(left, right), atoms, what="head average", **kw)


def emit_fit(rows: list[dict], checkpoint, layer, head, site: str, f: ResidualFit, strs: list[str], top: int,
             *, own: bool = True, **extra) -> None:
    """The rows of one fit (module docstring), in the tidy table's schema.

    ``own=False`` (a fit on the site's own target whose ``coef``/``explained``/``signed_cosine`` come from
    :mod:`.chance`): only the residual rows."""
    span = "+".join(f.coef)

    def add(m, v, target="", detail="", **kw):
        rows.append(row(checkpoint, layer, head, site, m, v, target, detail, True, **extra, **kw))

    if own:
        for atom, c in f.coef.items():
            add("coef", c, atom)
        add("explained", f.explained, span)
    add("residual_norm", f.residual_norm, span)
    add("residual_rel_norm", f.residual_rel_norm, span)
    for i, (v, a, b) in enumerate(f.pairs):
        add("residual_pair", v, "", pair_detail(i + 1, a, b, strs), rank=i + 1, row_token=_tok(strs[a]), col_token=_tok(strs[b]))
    for i, (sv, u, vv) in enumerate(f.singular):
        add("residual_sv", sv, "", sv_detail(i + 1, u, vv, strs, top), rank=i + 1,
            row_token=_tok(strs[int(u.abs().argmax())]), col_token=_tok(strs[int(vv.abs().argmax())]))


def _tok(s: str) -> str:
    """A decoded token for a table cell: printable as it is, else escaped (``\\n``)."""
    return s if s.isprintable() else s.encode("unicode_escape").decode("ascii")


#: a head is above chance when its signed cosine is positive and at or above this percentile of its null
ABOVE = 0.95
#: ... and anti-aligned at or below this one
BELOW = 0.05
#: the standard normal's 95th percentile: (q95 − q05) / (2 · Z95) is a Gaussian null's standard deviation
Z95 = NormalDist().inv_cdf(ABOVE)


def null_z(value, mean, q05, q95):
    """How many null standard deviations ``value`` lies above the null mean, the standard deviation read from the
    null's 5th and 95th percentiles as for a Gaussian, (q95 − q05) / 3.29 (NaN where the null has no spread).

    Works on numbers and on pandas Series.  It resolves what a percentile of N draws cannot (every value beyond all
    draws has percentile 1) and is what the family-wise statements of :func:`tl_leadterm.analysis.summary` use; the
    signed cosine of a random head is a sum over many token pairs, close to Gaussian (a test checks the tail)."""
    sd = (q95 - q05) / (2 * Z95)
    if isinstance(sd, pd.Series):
        return ((value - mean) / sd.where(sd > 0)).astype(float)
    return (value - mean) / sd if sd > 0 else float("nan")


def rank_heads(df: pd.DataFrame) -> pd.DataFrame:
    """Heads ranked per checkpoint, lens and site by their percentile, then their distance from the null
    (``null_z``), then their signed cosine with the site's own target (best first).

    Columns ``checkpoint, lens, site, rank, layer, head, signed_cosine, percentile, null_z, null_mean, null_q05,
    null_q95, above_chance, anti_aligned, explained, coef, residual_rel_norm``.  ``above_chance``: percentile >= 0.95
    and signed cosine > 0; ``anti_aligned``: percentile <= 0.05 (a negative coefficient is never "explained").
    Tables without nulls rank by the signed cosine alone (percentile and null_z empty, flags False).  Each flag is
    one test at the 5% level: over many heads about 5% of random heads get it, and
    :func:`tl_leadterm.analysis.summary` says whether a site has more than that.
    """
    cols = ["checkpoint", "lens", "site", "rank", "layer", "head", "signed_cosine", "percentile", "null_z", "null_mean",
            "null_q05", "null_q95", "above_chance", "anti_aligned", "explained", "coef", "residual_rel_norm"]
    from .table import normalise

    df = normalise(df)
    per_head = df[df["head"].notna() & df["site"].isin(HEAD_SITES)
                  & (df["target"] == df["site"].map(lambda s: SITES[s].target if s in SITES else ""))]
    keys = ["checkpoint", "lens", "site", "layer", "head"]
    sc = per_head[per_head["measure"] == "signed_cosine"]
    if len(sc) == 0:
        return pd.DataFrame(columns=cols)
    wide = sc[keys + ["value", "percentile", "null_mean", "null_q05", "null_q95"]].rename(columns={"value": "signed_cosine"})
    for m in ("explained", "coef"):
        v = per_head[per_head["measure"] == m][keys + ["value"]].rename(columns={"value": m})
        wide = wide.merge(v, on=keys, how="left")
    rr = df[df["head"].notna() & (df["measure"] == "residual_rel_norm") & df["site"].isin(HEAD_SITES)]
    wide = wide.merge(rr[keys + ["value"]].rename(columns={"value": "residual_rel_norm"}).drop_duplicates(keys),
                      on=keys, how="left")
    pct = wide["percentile"]
    wide["null_z"] = null_z(wide["signed_cosine"], wide["null_mean"], wide["null_q05"], wide["null_q95"])
    wide["above_chance"] = (pct >= ABOVE).fillna(False).astype(bool) & (wide["signed_cosine"] > 0)
    wide["anti_aligned"] = (pct <= BELOW).fillna(False).astype(bool)
    wide = wide.sort_values(["checkpoint", "lens", "site", "percentile", "null_z", "signed_cosine", "layer", "head"],
                            ascending=[True, True, True, False, False, False, True, True], na_position="last", kind="stable")
    wide["rank"] = wide.groupby(["checkpoint", "lens", "site"]).cumcount() + 1
    return wide[cols].reset_index(drop=True)


def head_matrix(ad, basis: Basis, layer: int, head: int | None, site: str, *, lens: str = "weights", **lens_kw) -> Factored:
    """One head's (``head=None``: the head average's) token-space matrix at ``site``, factored, in float64."""
    from ..models import adapt
    from .geometry import Geometry

    ad = adapt(ad)
    s = theory_site(site)
    require(s.per_head, f"site {site!r} has no per-head matrix; choose one of {', '.join(HEAD_SITES)}")
    layer = index("layer", layer, ad.n_layers, "layers")
    head = None if head is None else index("head", head, ad.n_heads, "heads")
    left, right = head_factors(ad, layer, site, Geometry(ad, basis, ad.device), lens, **lens_kw)
    return Factored.head_mean(left, right) if head is None else Factored(left[head], right[head])


def head_fit(ad, basis: Basis, layer: int, head: int | None, site: str, *, dictionary: bool = False,
             top: int = 5, n_singular: int = 3) -> ResidualFit:
    """The :class:`~tl_leadterm.analysis.residual.ResidualFit` of one head at one site, with its singular vectors."""
    top, n_singular = check("top", top), check("n_singular", n_singular)
    X = head_matrix(ad, basis, layer, head, site)
    atoms = AtomCache(basis, X.A.device, dictionary).get(SITES[site].target)
    return fit(X, atoms, top=top, n_singular=n_singular, what=f"layer {layer} head {head} {site}")
