"""Attention views: a model's attention next to the leading term's prediction.

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
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from ..analysis.measures import offset_projection
from ..basis import Basis
from ..errors import require
from ..params import check
from .views import CVView

OUTSIDE_MARK = "†"
"""Appended to a token label that is outside the basis vocabulary (its Q̄ term is 0)."""


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


def fit_scale(model_scores: Float[Tensor, "q k"], lead_scores: Float[Tensor, "q k"]) -> float:
    """Least-squares scale with a free offset per query row: ``Σ S̃ L̃ / Σ L̃²`` over causal entries (0 if ``L̃ = 0``)
    (:func:`~tl_leadterm.analysis.measures.offset_projection`)."""
    S, L = model_scores.double(), lead_scores.double()
    require(S.shape == L.shape and S.dim() == 2, f"scores of shapes {tuple(S.shape)} and {tuple(L.shape)} do not match")
    return offset_projection(S, L, torch.isfinite(L) & torch.isfinite(S)).coef


def fit_residual(model_scores: Float[Tensor, "q k"], lead_scores: Float[Tensor, "q k"]) -> float:
    """Relative residual of the fit: ``sqrt(Σ (S̃ - c L̃)² / Σ S̃²)`` (0: the leading term explains the scores; NaN if ``S̃ = 0``)."""
    S, L = model_scores.double(), lead_scores.double()
    return offset_projection(S, L, torch.isfinite(L) & torch.isfinite(S)).residual_rel_norm


def predicted_pattern(lead_scores: Float[Tensor, "q k"], scale: float) -> Float[Tensor, "q k"]:
    """``softmax_k(scale · L[t, k])`` over the causal keys (zeros above the diagonal); ``scale`` a finite number."""
    scale = check("scale", scale)
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
            c = float(self.scale[layer, h])
            what = "leading term" if c > 0 else ("anti-aligned with the leading term" if c < 0 else "no leading-term signal")
            names += [f"L{layer}H{h} model (TV to uniform {float(self.uniform_tv[layer, h]):.3f})",
                      f"L{layer}H{h} {what} (c={c:.3g}, r={float(self.fit_residual[layer, h]):.2f}, "
                      f"TV to model {float(self.pattern_tv[layer, h]):.3f})"]
        outside = int((~self.in_basis).sum())
        cap = (f"{self.model_name}, layer {layer}: model attention next to softmax(c·(Q̄[query,key] + p̄[offset])), "
               f"c fitted per head by least squares to the model's scores; r = relative residual of that fit "
               f"(0: the leading term explains the scores, 1: nothing). c < 0 means the model's scores run against the "
               f"leading term (anti-aligned), never that it explains them. TV: mean total-variation distance between "
               f"patterns; the model's distance to uniform attention says how much any prediction could differ.")
        if outside:
            cap += f" {outside} token(s) marked {OUTSIDE_MARK} are outside the basis vocabulary (p̄ term only)."
        return CVView("AttentionHeads", {"attention": torch.stack(pats).float().numpy().round(5),
                                         "tokens": self.labels, "attentionHeadNames": names, "maskUpperTri": True},
                      title=f"{self.model_name} — layer {layer}", caption=cap)

    def views(self) -> list[CVView]:
        return [self.view(l) for l in range(self.n_layers)]

    @property
    def pattern_tv(self) -> Tensor:
        """``[layer, head]`` mean total-variation distance between the model's and the predicted pattern."""
        return 0.5 * (self.model_pattern.double() - self.predicted_pattern.double()).abs().sum(-1).mean(-1)

    @property
    def uniform_tv(self) -> Tensor:
        """``[layer, head]`` mean total-variation distance between the model's pattern and uniform causal attention
        (a small value: the attention is near uniform, so no prediction can differ much from it)."""
        n = self.model_pattern.shape[-1]
        mask = torch.ones(n, n, dtype=torch.bool).tril()
        uni = mask.double() / mask.sum(-1, keepdim=True)
        return 0.5 * (self.model_pattern.double() - uni).abs().sum(-1).mean(-1)

    def scale_table(self):
        """A DataFrame ``model, layer, head, scale, aligned, fit_residual, pattern_tv, uniform_tv``: ``aligned`` is
        ``aligned`` (c > 0), ``anti-aligned`` (c < 0) or ``none``; ``pattern_tv`` the mean total-variation distance
        model vs prediction, ``uniform_tv`` model vs uniform attention (read ``pattern_tv`` against it)."""
        import pandas as pd
        tv, utv = self.pattern_tv, self.uniform_tv
        rows = [{"model": self.model_name, "layer": l, "head": h, "scale": float(self.scale[l, h]),
                 "aligned": "aligned" if self.scale[l, h] > 0 else ("anti-aligned" if self.scale[l, h] < 0 else "none"),
                 "fit_residual": float(self.fit_residual[l, h]), "pattern_tv": float(tv[l, h]), "uniform_tv": float(utv[l, h])}
                for l in range(self.n_layers) for h in range(self.n_heads)]
        return pd.DataFrame(rows)


def _tokenize(tokenizer, text) -> list[int]:
    if not isinstance(text, str):
        try:
            ids = torch.as_tensor(text).reshape(-1)
        except (TypeError, ValueError, RuntimeError):
            ids = None
        require(ids is not None and (ids.numel() == 0 or not (ids.is_floating_point() or ids.is_complex()
                                                              or ids.dtype == torch.bool)),
                f"token ids must be integers, got {type(text).__name__} {str(text)[:40]}; give a text or a list of token ids")
        return ids.long().tolist()
    require(tokenizer is not None, "the model has no tokenizer; pass token ids instead of text")
    return list(tokenizer.encode(text))


def compare_attention(model, basis: Basis, text: str | Sequence[int] | Tensor, *, name: str = "") -> AttentionComparison:
    """Run ``model`` on ``text`` and pair every layer/head's pattern with the leading term's prediction.

    ``model``: a ToyTransformer, a :class:`~tl_leadterm.models.ModelAdapter`, a
    HookedTransformer or a TransformerBridge.  ``text`` is tokenized with the
    model's tokenizer (or given as token ids); text longer than the model's context
    is truncated with a warning.
    """
    from ..analysis.compat import check_compatible
    from ..models import adapt

    ad = adapt(model)
    check_compatible(ad, basis)
    ids = _tokenize(ad.tokenizer, text)
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
    names = {ad.act_name(w, l) for l in range(L) for w in ("pattern", "attn_scores")}
    _, cache = ad.run_with_cache(tokens, names_filter=lambda n: n in names)
    lead = leading_term_scores(basis, ids)
    pats, preds, scales = [], [], torch.zeros(L, H, dtype=torch.float64)
    resid = torch.zeros(L, H, dtype=torch.float64)
    for l in range(L):
        pat = cache[ad.act_name("pattern", l)][0].detach().double().cpu()      # [head, q, k]
        key = ad.act_name("attn_scores", l)
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

