"""Seeing it: attention views next to the leading term's prediction, and the association explorer.

Predicted attention pattern (THEORY.md §3)
------------------------------------------
For a sequence of tokens ``x_0 .. x_{n-1}`` the leading term of the toy model's
attention score of query ``t`` at key ``k <= t`` is

    L[t, k] = Q̄[x_t, x_k] + p̄[t - k]

(Q̄ is query x key, the key-query leading term; p̄ the position leading term; both
up to the common constant η⁴ Σ k²(k-1)/2, which is absorbed by the scale below).
A token outside the basis' ``k`` tokens has no row/column of Q̄: its Q̄ term is 0
(only p̄ remains) and it is *marked* in the views with :data:`OUTSIDE_MARK`, never
dropped.  An offset ``t - k`` beyond the basis' sequence length has p̄ term 0.

One scale ``c`` per layer and head is fitted to the model's own attention scores
``S`` (``hook_attn_scores``; ``log(pattern)`` when the model has no score hook)
by least squares with a free offset per query row, because softmax ignores a
per-row shift::

    c = argmin_c min_b Σ_t Σ_{k<=t} (S[t,k] - c L[t,k] - b_t)²
      = Σ S̃ L̃ / Σ L̃²,    S̃[t,k] = S[t,k] - mean_{j<=t} S[t,j]  (L̃ likewise)

(0 when L̃ is identically 0).  The predicted pattern is
``softmax_k(c L[t, k])`` over the causal keys.  ``c`` may be negative: then the
model's scores run against the leading term.

Association explorer (the paper's qualitative analysis)
-------------------------------------------------------
For a chosen token, its row of each matrix in THEORY.md orientation (see
:data:`ROW_ROLES`), the largest entries over the basis tokens: B̄ (token as
current → next tokens), Φ̄ (token as next → context tokens), ΣB̄ (interchangeable
tokens), M (token in context → current token written), Ḡ (token in context →
next tokens promoted), Q̄ (token as query → keys).  For a toy model also the
learned weights' rows on the basis tokens (``W_O``, ``V.l``, ``W.l``, and the OV
product ``V.l W_O``) and the *residual* of each weight beyond its leading term,
``R = A - c* B`` with ``c* = <A, B>/|B|²`` (largest ``|R|`` entries).
"""

from __future__ import annotations

import html
import json
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from .basis import Basis
from .errors import LeadTermError, require

OUTSIDE_MARK = "†"
"""Appended to a token label that is outside the basis vocabulary (its Q̄ term is 0)."""

# which role the row and the columns of each explorer source play
ROW_ROLES = {
    "bigram": ("current", "next"), "context": ("next", "context"), "interchange": ("next", "interchangeable next"),
    "value": ("context", "current"), "value_output": ("context", "next"), "key_query": ("query", "key"),
}
SYMBOLS = {"bigram": "B̄", "context": "Φ̄", "interchange": "ΣB̄", "value": "M", "value_output": "Ḡ", "key_query": "Q̄"}
LEADING = {"W_O": "bigram", "V": "value", "W": "key_query", "VW_O": "value_output"}


# ---------------------------------------------------------------------------
# circuitsvis views that can share one bundle
# ---------------------------------------------------------------------------
def circuitsvis_bundle() -> str:
    """The installed circuitsvis package's own ``dist/cdn/iife.js`` (defines the global ``CircuitsVis``).

    Prepared for inlining in a ``<script>``: ``</script`` sequences are escaped and the
    source-map comment (a relative URL) is removed.
    """
    import circuitsvis

    path = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
    require(path.is_file(), f"the circuitsvis bundle {path} is missing; reinstall circuitsvis")
    js = path.read_text(encoding="utf-8")
    js = "\n".join(line for line in js.splitlines() if not line.startswith("//# sourceMappingURL="))
    return js.replace("</script", "<\\/script")


def _props_json(props: dict) -> str:
    from circuitsvis.utils.convert_props import convert_props

    s = convert_props(props)
    # safe inside <script>: no closing tags, no HTML comments
    return s.replace("</", "<\\/").replace("<!--", "<\\!--")


@dataclass
class CVView:
    """A circuitsvis element (``element`` is a CircuitsVis React component name) and its props.

    :meth:`fragment` renders against a page that already loaded the bundle once
    (the report); :meth:`to_html` / ``_repr_html_`` give a standalone page with the
    bundle inlined (notebooks, single files).
    """

    element: str
    props: dict
    title: str = ""
    caption: str = ""
    id: str = field(default_factory=lambda: "cv-" + uuid.uuid4().hex[:12])

    def fragment(self) -> str:
        return (f'<div class="cv-view" id="{self.id}" data-element="{html.escape(self.element)}"></div>\n'
                f'<script>CircuitsVis.render("{self.id}", CircuitsVis.{self.element}, {_props_json(self.props)});</script>')

    def to_html(self) -> str:
        """Standalone HTML: the bundle, then this view."""
        return f"<script>{circuitsvis_bundle()}</script>\n{self.fragment()}"

    def _repr_html_(self) -> str:
        return self.to_html()

    def to_json(self) -> dict:
        return {"element": self.element, "props": json.loads(_plain_json(self.props)), "title": self.title, "caption": self.caption}

    @classmethod
    def from_json(cls, d: dict) -> "CVView":
        require(isinstance(d, dict) and isinstance(d.get("element"), str) and isinstance(d.get("props"), dict),
                "a saved view must be an object with 'element' and 'props'; rebuild views.json with 'tl-leadterm demo'")
        return cls(d["element"], d["props"], d.get("title", ""), d.get("caption", ""))


def _plain_json(props: dict) -> str:
    from circuitsvis.utils.convert_props import convert_props
    return convert_props(props)


# ---------------------------------------------------------------------------
# leading-term attention
# ---------------------------------------------------------------------------
def leading_term_scores(basis: Basis, token_ids: Sequence[int] | Tensor) -> Float[Tensor, "q k"]:
    """``L[t, k] = Q̄[x_t, x_k] + p̄[t-k]`` for ``k <= t`` and ``-inf`` above the diagonal (module docstring).

    Tokens outside the basis contribute no Q̄ term; offsets ``>= len(p̄)`` no p̄ term.  float64.
    """
    ids = torch.as_tensor(token_ids, dtype=torch.long).reshape(-1).cpu()
    n = ids.numel()
    require(n >= 1, "no tokens to compare; give a non-empty text")
    idx = basis.index_of(ids)
    Q = basis.key_query.double().cpu()
    p = basis.position.double().cpu()
    inside = idx >= 0
    safe = idx.clamp(min=0)
    q_term = Q[safe][:, safe] * (inside[:, None] & inside[None, :])
    t = torch.arange(n)
    delta = t[:, None] - t[None, :]
    p_pad = torch.zeros(max(n, p.numel()), dtype=torch.float64)
    p_pad[: p.numel()] = p
    p_term = p_pad[delta.clamp(min=0)]
    L = q_term + p_term
    return L.masked_fill(delta < 0, float("-inf"))


def _row_centre(X: Tensor, mask: Tensor) -> Tensor:
    Xz = torch.where(mask, X, torch.zeros((), dtype=X.dtype))
    mean = Xz.sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1)
    return torch.where(mask, Xz - mean, torch.zeros((), dtype=X.dtype))


def fit_scale(model_scores: Float[Tensor, "q k"], lead_scores: Float[Tensor, "q k"]) -> float:
    """Least-squares scale with a free offset per query row: ``Σ S̃ L̃ / Σ L̃²`` over causal entries (0 if ``L̃ = 0``)."""
    S, L = model_scores.double(), lead_scores.double()
    require(S.shape == L.shape and S.dim() == 2, f"scores of shapes {tuple(S.shape)} and {tuple(L.shape)} do not match")
    mask = torch.isfinite(L) & torch.isfinite(S)
    St, Lt = _row_centre(S, mask), _row_centre(L, mask)
    den = float((Lt * Lt).sum())
    return float((St * Lt).sum()) / den if den > 0 else 0.0


def fit_residual(model_scores: Float[Tensor, "q k"], lead_scores: Float[Tensor, "q k"]) -> float:
    """Relative residual of the fit: ``sqrt(Σ (S̃ - c L̃)² / Σ S̃²)`` (0: the leading term explains the scores; NaN if ``S̃ = 0``)."""
    S, L = model_scores.double(), lead_scores.double()
    mask = torch.isfinite(L) & torch.isfinite(S)
    St, Lt = _row_centre(S, mask), _row_centre(L, mask)
    c = fit_scale(S, L)
    den = float((St * St).sum())
    return float(((St - c * Lt) ** 2).sum() / den) ** 0.5 if den > 0 else float("nan")


def predicted_pattern(lead_scores: Float[Tensor, "q k"], scale: float) -> Float[Tensor, "q k"]:
    """``softmax_k(scale · L[t, k])`` over the causal keys (zeros above the diagonal)."""
    L = lead_scores.double()
    mask = torch.isfinite(L)
    Z = torch.where(mask, scale * torch.where(mask, L, torch.zeros((), dtype=L.dtype)), torch.full_like(L, float("-inf")))
    return torch.softmax(Z, dim=-1)


@dataclass
class AttentionComparison:
    """A model's attention on one text next to the leading term's prediction.

    ``model_pattern``/``predicted_pattern``: ``[layer, head, query, key]``; ``scale``:
    ``[layer, head]``; ``fit_residual``: ``[layer, head]`` relative residual of the score
    fit (:func:`fit_residual`); ``in_basis[i]`` is False for tokens outside the basis (their
    labels in ``labels`` carry :data:`OUTSIDE_MARK`).
    """

    model_name: str
    token_ids: Int[Tensor, "n"]
    str_tokens: list[str]
    labels: list[str]
    in_basis: Bool[Tensor, "n"]
    lead_scores: Float[Tensor, "n n"]
    model_pattern: Float[Tensor, "layer head n n"]
    predicted_pattern: Float[Tensor, "layer head n n"]
    scale: Float[Tensor, "layer head"]
    fit_residual: Float[Tensor, "layer head"]
    truncated_from: int | None = None

    @property
    def n_layers(self) -> int:
        return self.model_pattern.shape[0]

    @property
    def n_heads(self) -> int:
        return self.model_pattern.shape[1]

    def view(self, layer: int) -> CVView:
        """circuitsvis ``AttentionHeads`` for one layer: each head's model pattern, then its prediction."""
        require(0 <= layer < self.n_layers, f"layer {layer} is out of range (the model has {self.n_layers} layers)")
        pats, names = [], []
        for h in range(self.n_heads):
            pats += [self.model_pattern[layer, h], self.predicted_pattern[layer, h]]
            names += [f"L{layer}H{h} model",
                      f"L{layer}H{h} leading term (c={float(self.scale[layer, h]):.3g}, r={float(self.fit_residual[layer, h]):.2f})"]
        outside = int((~self.in_basis).sum())
        cap = (f"{self.model_name}, layer {layer}: model attention next to softmax(c·(Q̄[query,key] + p̄[offset])), "
               f"c fitted per head by least squares to the model's scores; r = relative residual of that fit "
               f"(0: the leading term explains the scores, 1: nothing).")
        if outside:
            cap += f" {outside} token(s) marked {OUTSIDE_MARK} are outside the basis vocabulary (p̄ term only)."
        return CVView("AttentionHeads", {"attention": torch.stack(pats).float().numpy().round(5),
                                         "tokens": self.labels, "attentionHeadNames": names, "maskUpperTri": True},
                      title=f"{self.model_name} — layer {layer}", caption=cap)

    def views(self) -> list[CVView]:
        return [self.view(l) for l in range(self.n_layers)]

    def scale_table(self):
        """A DataFrame ``model, layer, head, scale, fit_residual, pattern_tv`` (mean total-variation distance model vs prediction)."""
        import pandas as pd
        tv = 0.5 * (self.model_pattern.double() - self.predicted_pattern.double()).abs().sum(-1).mean(-1)
        rows = [{"model": self.model_name, "layer": l, "head": h, "scale": float(self.scale[l, h]), "fit_residual": float(self.fit_residual[l, h]),
                 "pattern_tv": float(tv[l, h])}
                for l in range(self.n_layers) for h in range(self.n_heads)]
        return pd.DataFrame(rows)


def _tokenize(model, tokenizer, text) -> list[int]:
    if not isinstance(text, str):
        return torch.as_tensor(text, dtype=torch.long).reshape(-1).tolist()
    require(tokenizer is not None, "the model has no tokenizer; pass token ids instead of text")
    return list(tokenizer.encode(text))


def compare_attention(model, basis: Basis, text: str | Sequence[int] | Tensor, *, name: str = "") -> AttentionComparison:
    """Run ``model`` on ``text`` and pair every layer/head's pattern with the leading term's prediction.

    ``model``: a ToyTransformer, a :class:`~tl_leadterm.models.ModelAdapter`, a
    HookedTransformer or a TransformerBridge.  ``text`` is tokenized with the
    model's tokenizer (or given as token ids); text longer than the model's context
    is truncated with a warning.
    """
    from .models import adapt

    ad = adapt(model)
    require(basis.vocab_size == ad.d_vocab,
            f"the basis was built for a vocabulary of {basis.vocab_size} tokens but the model has {ad.d_vocab}; "
            "build the basis with the model's tokenizer")
    ids = _tokenize(ad.model, ad.tokenizer, text)
    require(len(ids) >= 1, "the text has no tokens; give a non-empty text")
    n_ctx = int(ad.model.cfg.n_ctx)
    truncated = None
    if len(ids) > n_ctx:
        warnings.warn(f"the text has {len(ids)} tokens but the model's context is {n_ctx}: truncated to the first {n_ctx}",
                      stacklevel=2)
        truncated, ids = len(ids), ids[:n_ctx]
    require(max(ids) < ad.d_vocab and min(ids) >= 0, f"token ids must be in [0, {ad.d_vocab})")
    tokens = torch.tensor([ids], dtype=torch.long)
    L, H = ad.n_layers, ad.n_heads
    names = {f"blocks.{l}.attn.hook_{w}" for l in range(L) for w in ("pattern", "attn_scores")}
    _, cache = ad.run_with_cache(tokens, names_filter=lambda n: n in names)
    lead = leading_term_scores(basis, ids)
    pats, preds, scales = [], [], torch.zeros(L, H, dtype=torch.float64)
    resid = torch.zeros(L, H, dtype=torch.float64)
    for l in range(L):
        pat = cache[f"blocks.{l}.attn.hook_pattern"][0].detach().double().cpu()      # [head, q, k]
        key = f"blocks.{l}.attn.hook_attn_scores"
        scores = cache[key][0].detach().double().cpu() if key in cache.cache_dict else None
        if scores is None or not bool(torch.isfinite(scores.diagonal(dim1=-2, dim2=-1)).all()):
            scores = pat.clamp(min=1e-300).log()
        pl = []
        for h in range(H):
            c = fit_scale(scores[h], lead)
            scales[l, h] = c
            resid[l, h] = fit_residual(scores[h], lead)
            pl.append(predicted_pattern(lead, c))
        pats.append(pat)
        preds.append(torch.stack(pl))
    strs = ad.tokenizer.token_strs(ids) if ad.tokenizer is not None else [f"<id {i}>" for i in ids]
    inside = basis.index_of(ids) >= 0
    labels = [s if ok else s + OUTSIDE_MARK for s, ok in zip(strs, inside.tolist())]
    return AttentionComparison(name or ad.name, torch.tensor(ids), strs, labels, inside, lead,
                               torch.stack(pats), torch.stack(preds), scales, resid, truncated)


# ---------------------------------------------------------------------------
# association explorer
# ---------------------------------------------------------------------------
def _resolve_token(basis: Basis, token, tokenizer=None) -> int:
    """A basis index from a token string (exact, then stripped/lower-cased match) or an id."""
    strs = basis.token_strs()
    if isinstance(token, int):
        i = int(basis.index_of([token])[0])
        require(i >= 0, f"token id {token} is not one of the basis' {basis.k} tokens; choose a more frequent token")
        return i
    for cand in (token, token.strip(), " " + token.strip(), token.strip().lower(), " " + token.strip().lower()):
        if cand in strs:
            return strs.index(cand)
    near = [s for s in strs if token.strip().lower() in s.lower()][:5]
    raise LeadTermError(f"token {token!r} is not one of the basis' {basis.k} tokens"
                        + (f" (close: {', '.join(map(repr, near))})" if near else "") + "; choose a token from the basis")


def _toy_block(model, name: str, ids: Tensor) -> Tensor:
    w = model.weights()[name].detach().double().cpu()
    return w[ids][:, ids]


def _residual(A: Tensor, B: Tensor) -> Tensor:
    nb = float((B * B).sum())
    c = float((A * B).sum()) / nb if nb > 0 else 0.0
    return A - c * B


def association_sources(basis: Basis, model=None) -> dict[str, tuple[Tensor, str]]:
    """``{source name: (k x k matrix over the basis tokens, description)}`` for the explorer (module docstring)."""
    out: dict[str, tuple[Tensor, str]] = {}
    for name, sym in SYMBOLS.items():
        r, c = ROW_ROLES[name]
        out[sym] = (getattr(basis, name).double().cpu(), f"{name}: token as {r} → {c} tokens")
    if model is not None:
        from .models import adapt
        ad = adapt(model)
        require(ad.kind == "toy", "learned-weight associations need the toy model (its weights live in token space)")
        require(basis.vocab_size == ad.d_vocab, f"the basis has |V|={basis.vocab_size} but the toy model {ad.d_vocab}; use the basis of its corpus")
        toy, ids = ad.model, basis.token_ids.cpu()
        WO = _toy_block(toy, "W_O", ids)
        learned = {"W_O": WO}
        for l in range(toy.cfg.n_layers):
            learned[f"V.{l}"] = _toy_block(toy, f"V.{l}", ids)
            learned[f"W.{l}"] = _toy_block(toy, f"W.{l}", ids)
            full_V = toy.weights()[f"V.{l}"].detach().double().cpu()
            full_WO = toy.weights()["W_O"].detach().double().cpu()
            learned[f"V.{l}·W_O"] = (full_V @ full_WO)[ids][:, ids]
        for name, A in learned.items():
            base = name.split(".")[0] if "·" not in name else "VW_O"
            target = LEADING[base]
            r, c = ROW_ROLES[target]
            out[f"learned {name}"] = (A, f"learned weight {name} (compare {SYMBOLS[target]}): row = {r}, columns = {c}")
            out[f"residual {name}"] = (_residual(A, getattr(basis, target).double().cpu()),
                                       f"{name} minus its best multiple of {SYMBOLS[target]}: beyond the leading term (largest |value|)")
    return out


def associations(basis: Basis, tokens: Sequence[str | int], *, model=None, top: int = 8):
    """Long DataFrame ``token, source, rank, associate, value, description`` of the top associates.

    Sources: B̄, Φ̄, ΣB̄, M, Ḡ, Q̄ and, with a toy ``model``, its learned weights and their
    residuals beyond the leading term (ranked by ``|value|``; the others by value).
    """
    import pandas as pd

    require(top >= 1, f"top must be >= 1 (got {top})")
    strs = basis.token_strs()
    srcs = association_sources(basis, model)
    rows = []
    for tok in tokens:
        i = _resolve_token(basis, tok)
        for src, (A, desc) in srcs.items():
            row = A[i]
            key = row.abs() if src.startswith("residual") else row
            order = torch.sort(-key, stable=True).indices[: min(top, row.numel())]
            for rank, j in enumerate(order.tolist(), 1):
                rows.append({"token": strs[i], "source": src, "rank": rank, "associate": strs[j],
                             "value": float(row[j]), "description": desc})
    return pd.DataFrame(rows, columns=["token", "source", "rank", "associate", "value", "description"])


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
