"""Causal check: the held-out loss change when a weight's leading-term component is removed,
against removing a random component of equal norm (mean ± sd over seeds).

Toy model: for each weight, ``D`` = its leading-term direction (the basis tensor placed
in the basis-token sub-block by :meth:`Basis.embed_block`, zero elsewhere); remove its
component ``c D`` (``c = <W, D>/‖D‖²``) and measure the held-out loss change, against
removing a random direction of equal norm on the same sub-block.
Real model, per head and per-head site of the registry (:data:`tl_leadterm.theory.SITES`; default
``key_query`` and ``attn_ov``): the site is ``X = L P R`` and its token-space basis direction ``T`` (the
site's target: Q̄ for ``key_query``, Ḡ for ``attn_ov``) is pulled back to model space through the
same geometry: ``D = Lᵀ T Rᵀ`` (``d_model x d_model``; ``key_query``: ``Aᵀ Q̄ A`` with ``A`` the layer's
attention inputs of the basis tokens; ``attn_ov``: ``Aᵀ Ḡ U_kᵀ`` with ``U_k = W_U[:, token_ids]``).
The circuit names of earlier releases, ``qk`` and ``ov``, name these two sites (deprecated).  Only the part of ``D`` that the head can represent is
removed: for QK ``D_h = D Π_K`` (``Π_K`` = projector on the column space of ``W_K``),
implemented as ``W_Q ← W_Q - c D W_K (W_KᵀW_K)⁺``; for OV ``D_h = D Π_O`` (row space
of ``W_O``), implemented as ``W_V ← W_V - c D W_Oᵀ (W_O W_Oᵀ)⁺``, with
``c = <X, D_h>/‖D_h‖²`` and ``X = W_Q W_Kᵀ`` or ``W_V W_O``.  The edit is applied
through hooks (``hook_q``/``hook_v`` plus ``δ = attn_in @ Δ``), so it works
identically on HookedTransformer and TransformerBridge; with grouped-query attention, where
``hook_v`` is shared by the query heads of a group, the OV edit goes to the head's own ``hook_z``
(:func:`_edit_hooks`).  The random control uses
``R Π`` for a Gaussian ``R``, scaled to remove the same Frobenius norm from ``X``.
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..basis import Basis
from ..corpus import Windows
from ..params import check, indices
from ..models import ModelAdapter, adapt
from ..errors import LeadTermError
from ..theory import SITES, Site, legacy_key, leading, parse_weight
from ..theory import site as registry_site
from .chance import basis_matrix
from .compat import check_compatible
from .geometry import Geometry
from .table import NAN, frame, row

#: the real-model causal check's default sites: the head's two circuits read from its attention input
CAUSAL_SITES = ("key_query", "attn_ov")


def causal_site(name: str, *, warn: bool = False) -> Site:
    """The per-head registry site a real-model causal check edits; ``"qk"``/``"ov"`` (the circuit names of
    earlier releases) name ``key_query``/``attn_ov`` (with a DeprecationWarning when ``warn``)."""
    name = str(name)
    if name in ("qk", "ov"):
        new = legacy_key(name)
        if warn:
            warnings.warn(f"causal-check site {name!r} is now {new!r} (the registry's site names)", DeprecationWarning,
                          stacklevel=3)
        name = new
    s = SITES.get(name)
    if s is None or not s.per_head:
        raise LeadTermError(f"unknown causal-check site {name!r} for a TransformerLens model; choose one of "
                            f"{', '.join(n for n, x in SITES.items() if x.per_head)}")
    return s


def _as_tokens(tokens) -> Tensor:
    if isinstance(tokens, Windows):
        return tokens.tokens
    t = torch.as_tensor(tokens, dtype=torch.long)
    return t[None] if t.dim() == 1 else t


def _toy_loss(model, tokens) -> float:
    from ..toy import windows_loss
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
    Toy sites: ``W_O``, ``V``, ``W``, ``P``; real-model sites: the registry's per-head sites (default
    ``key_query``, ``attn_ov``; module docstring).  ``seeds`` random directions (>= 1); ``layers`` and ``heads``
    (default: all) are indices into the model's, checked before anything runs.
    """
    seeds = check("seeds", seeds)
    ad = adapt(adapter_or_model)
    ad.check_finite()
    check_compatible(ad, basis)
    layers = None if layers is None else indices("layers", layers, ad.n_layers, "layers")
    heads = None if heads is None else indices("heads", heads, ad.n_heads, "heads")
    checkpoint = checkpoint or ad.checkpoint
    if ad.token_space:
        return _causal_toy(ad, basis, tokens, seeds, sites, layers, checkpoint, progress)
    return _causal_real(ad, basis, tokens, seeds, sites or CAUSAL_SITES, layers, heads, checkpoint, progress)


def _emit(rows, checkpoint, layer, head, site, target, base, lead_loss, rand_losses, removed, coef, extension=False):
    dm, sd = _stats([x - base for x in rand_losses])
    for m, v in (("loss_base", base), ("loss_leading", lead_loss), ("delta_leading", lead_loss - base),
                 ("delta_random_mean", dm), ("delta_random_sd", sd), ("removed_norm", removed), ("coefficient", coef)):
        rows.append(row(checkpoint, layer, head, site, m, v, target, f"{len(rand_losses)} random seeds", extension))


def _causal_toy(ad, basis, tokens, seeds, sites, layers, checkpoint, progress) -> pd.DataFrame:
    toy = ad.model
    base = _toy_loss(toy, tokens)
    rows = []
    names = [n for n in toy.weights() if (sites is None or parse_weight(n)[0] in sites)
             and (layers is None or parse_weight(n)[1] is None or parse_weight(n)[1] in layers)]
    for name in tqdm(names, desc="causal check (toy)", disable=not progress, leave=False):
        site, layer = parse_weight(name)
        target = leading(name).term
        p = toy.weights()[name]
        src = getattr(basis, target).to(p.device, p.dtype)
        D = basis.embed_block(src, p)                                  # the leading-term direction, zero elsewhere
        mask = basis.embed_block(torch.ones_like(src), p) != 0         # the sub-block it lives on
        dn2 = float((D * D).sum())
        if dn2 == 0:
            warnings.warn(f"{name}: the leading-term direction is zero; causal check undefined (NaN)")
            _emit(rows, checkpoint, layer, None, site, target, base, NAN, [NAN], NAN, NAN)
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
        _emit(rows, checkpoint, layer, None, site, target, base, lead_loss, rl, removed, c)
    return frame(rows)


def head_edit_directions(ad: ModelAdapter, basis: Basis, layer: int, A: Tensor | Geometry, site: str
                         ) -> tuple[Tensor, Tensor, Tensor]:
    """``(X, Π, D)`` for one layer, all heads: ``X`` (h, d, d) the head matrices, ``Π`` (h, d, d) the
    projectors of the removable subspace and ``D = Lᵀ T Rᵀ`` (d, d) the pulled-back basis direction of
    ``site`` (module docstring).  ``A``: the layer's attention inputs of the basis tokens (``k x d``), or a
    :class:`~tl_leadterm.analysis.geometry.Geometry` (needed for sites read through ``resid_pre``)."""
    s = causal_site(site)
    if not isinstance(A, Geometry):
        if not s.representations <= {"attn_in"}:
            raise LeadTermError(f"site {s.name!r} is read through resid_pre: give head_edit_directions a Geometry")
        A = Geometry(ad, basis, "cpu", reps={"attn_in": {layer: A}})
    L, R = (M.double().cpu() for M in A.outer(s, layer))
    D = L.T @ basis_matrix(basis, s.target).double().cpu() @ R.T
    if s.circuit == "qk":
        WQ, WK = ad.W_Q(layer).double().cpu(), ad.W_K(layer).double().cpu()
        X = WQ @ WK.transpose(1, 2)
        P = WK @ torch.linalg.pinv(WK)                       # Π_K (h, d, d), right-multiplied
    else:
        WV, WO = ad.W_V(layer).double().cpu(), ad.W_O(layer).double().cpu()
        X = WV @ WO
        P = torch.linalg.pinv(WO) @ WO                       # Π_O (h, d, d), right-multiplied
    return X, P, D


def _causal_real(ad, basis, tokens, seeds, sites, layers, heads, checkpoint, progress) -> pd.DataFrame:
    sites = [causal_site(s, warn=True).name for s in sites]
    toks = _as_tokens(tokens)
    base = ad.loss(toks)
    geom = Geometry(ad, basis, "cpu", reps=ad.token_representations(basis.token_ids))
    layers = list(range(ad.n_layers)) if layers is None else list(layers)
    heads = list(range(ad.n_heads)) if heads is None else list(heads)
    rows = []
    jobs = [(l, s) for l in layers for s in sites]
    for l, site in tqdm(jobs, desc="causal check", disable=not progress, leave=False):
        X, P, D = head_edit_directions(ad, basis, l, geom, site)
        circuit = SITES[site].circuit
        other = ad.W_K(l) if circuit == "qk" else ad.W_O(l)
        for h in heads:
            Dh = D @ P[h]
            dn2 = float((Dh * Dh).sum())
            target = SITES[site].target
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
    return frame(rows)


def _circuit(site: str) -> str:
    """``"qk"``/``"ov"`` as they are; a registry site → its circuit."""
    return site if site in ("qk", "ov") else registry_site(site).circuit


def weight_delta(site: str, Dfull: Tensor, other: Tensor) -> Tensor:
    """The change of W_Q (QK: ``Dfull W_K (W_KᵀW_K)⁺``) or W_V (OV: ``Dfull W_Oᵀ (W_O W_Oᵀ)⁺``) that removes
    ``Dfull Π``; ``site``: a per-head registry site or its circuit (``"qk"``, ``"ov"``)."""
    other = other.double().cpu()
    if _circuit(site) == "qk":
        return Dfull @ torch.linalg.pinv(other).T            # W_K⁺ᵀ = W_K (W_KᵀW_K)⁺
    return Dfull @ torch.linalg.pinv(other)                   # W_O⁺ = W_Oᵀ (W_O W_Oᵀ)⁺


def _edit_hooks(ad: ModelAdapter, layer: int, head: int, site: str, Dfull: Tensor, other: Tensor):
    """Forward hooks that subtract ``attn_in @ Δ`` from head ``head``'s q (qk) or v (ov).

    Grouped-query attention: ``hook_v`` holds one value per key/value head, shared by the
    ``n_heads // n_key_value_heads`` query heads of its group, so editing it would edit all of
    them.  There the edit goes to head ``head``'s own output ``z_h = Σ_k pattern[h, q, k] v[k]``
    instead: ``z_h -= Σ_k pattern[h, q, k] (attn_in[k] @ Δ)``, which is exactly what a private
    copy of ``W_V`` for that head, minus ``Δ``, gives (the pattern does not depend on ``W_V``).
    """
    delta = weight_delta(site, Dfull, other).to(ad.device, ad.dtype)   # d_model x d_head
    store = {}
    in_name = ad.act_name("normalized", layer, "ln1")

    def keep(name):
        def hook(x, hook):
            store[name] = x
            return x
        return hook

    if _circuit(site) == "qk":
        def edit_q(x, hook):
            x = x.clone()
            x[:, :, head, :] -= store["x"] @ delta
            return x
        return [(in_name, keep("x")), (ad.act_name("q", layer), edit_q)]

    def edit_v(v, hook):
        store["grouped"] = v.shape[2] != ad.n_heads          # one v per key/value head: edit z instead
        if store["grouped"]:
            return v
        v = v.clone()
        v[:, :, head, :] -= store["x"] @ delta
        return v

    def edit_z(z, hook):
        if not store.get("grouped"):
            return z
        z = z.clone()                                       # z [batch, q, head, d_head]; pattern [batch, head, q, k]
        z[:, :, head, :] -= torch.einsum("bqk,bke->bqe", store["pattern"][:, head].to(z.dtype), store["x"] @ delta)
        return z

    hooks = [(in_name, keep("x")), (ad.act_name("v", layer), edit_v)]
    if ad.n_key_value_heads < ad.n_heads:   # hook_v may be grouped (decided per run from its shape)
        hooks += [(ad.act_name("pattern", layer), keep("pattern")), (ad.act_name("z", layer), edit_z)]
    return hooks
