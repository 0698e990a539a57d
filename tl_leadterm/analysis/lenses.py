"""Lenses: which d x d matrix of a head a site reads (the registry of lenses, one entry each).

The paper's leading terms describe weights grown from zero.  A model grown from random weights mixes
the random start with what it learned, so the head's product ``P`` (``W_Q W_Kᵀ`` for a QK site,
``W_V W_O`` for an OV site; :data:`tl_leadterm.theory.CIRCUIT_WEIGHTS`) is read through one of

* ``weights``: ``P_t`` as it is;
* ``update``: ``P_t - P_ref``, the change since a reference checkpoint (``reference``), kept factored
  (``[W_V,t | W_V,ref]`` and ``[W_O,t ; -W_O,ref]``: inner size ``2 d_head``), read through the
  geometry of the checkpoint analysed;
* ``gradient``: ``-∂L/∂P`` of the model's next-token loss on a sample of windows, with ``P`` treated as a
  free ``d x d`` matrix (the chain rule through the head's own output and scores, :func:`head_gradients`).

Each lens gives, per layer and circuit, head stacks ``M`` ``[H, d, r]`` and ``N`` ``[H, r, d]`` with
``P_h = M_h N_h``, and says how its null is drawn (:mod:`.chance`: ``"product"`` of Gaussian factors of
the same inner size, or a ``"dense"`` Gaussian for the gradient).
"""

from __future__ import annotations


import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..errors import LeadTermError, require
from ..models import adapt
from ..params import check
from ..theory import CIRCUIT_WEIGHTS, LENSES, Lens  # noqa: F401  (the registry lives with the theory)


def parse_lenses(lenses) -> tuple[str, ...]:
    """A comma list or sequence of lens names, checked (registry order kept)."""
    if isinstance(lenses, str):
        lenses = [x.strip() for x in lenses.split(",") if x.strip()]
    names = list(lenses)
    for x in names:
        if x not in LENSES:
            raise LeadTermError(f"unknown lens {x!r}; choose from {', '.join(LENSES)} (a comma list)")
    require(len(names) > 0, "{lens} is empty; give weights, update or gradient (a comma list)")
    return tuple(n for n in LENSES if n in names)


def _f64(x: Tensor, dev) -> Tensor:
    return x.detach().to(dev, torch.float64)


def weight_factors(ad, layer: int, circuit: str, dev) -> tuple[Tensor, Tensor]:
    """``(M, N)`` with ``M_h N_h`` the head's product of weights (``W_Q W_Kᵀ`` or ``W_V W_O``)."""
    a, b = CIRCUIT_WEIGHTS[circuit]
    M = _f64(getattr(ad, a)(layer), dev)
    B = _f64(getattr(ad, b)(layer), dev)
    return M, (B.transpose(1, 2) if circuit == "qk" else B)


def lens_factors(lens: str, ad, layer: int, circuit: str, dev, *, reference=None, gradients=None
                 ) -> tuple[Tensor, Tensor]:
    """``(M [H, d, r], N [H, r, d])`` of one layer and circuit under ``lens`` (module docstring)."""
    if lens == "weights":
        return weight_factors(ad, layer, circuit, dev)
    if lens == "update":
        require(reference is not None, "the update lens needs a {reference} checkpoint")
        M1, N1 = weight_factors(ad, layer, circuit, dev)
        M0, N0 = weight_factors(reference, layer, circuit, dev)
        return torch.cat([M1, M0], dim=2), torch.cat([N1, -N0], dim=1)
    if lens == "gradient":
        require(gradients is not None, "the gradient lens needs windows of tokens ({gradient})")
        G = gradients[(layer, circuit)].to(dev, torch.float64)
        eye = torch.eye(G.shape[-1], dtype=torch.float64, device=dev).expand(G.shape[0], -1, -1)
        return -G, eye
    raise LeadTermError(f"unknown lens {lens!r}; choose from {', '.join(LENSES)}")


def check_reference(ad, ref) -> None:
    """A reference checkpoint must have the analysed model's shapes."""
    for attr in ("n_layers", "n_heads", "d_model", "d_head", "d_vocab"):
        require(getattr(ad, attr) == getattr(ref, attr),
                f"the reference checkpoint has {attr}={getattr(ref, attr)} but the model has {getattr(ad, attr)}; "
                "give a {reference} checkpoint of the same model")


def _qk_term(x: Tensor, Z: Tensor) -> Tensor:
    """``x_q Z_h x_kᵀ`` per head ``[b, H, q, k]`` (unscaled): ``P_QK`` where ``q·kᵀ`` reads it."""
    return torch.einsum("bqd,hde,bke->bhqk", x, Z, x)


def _ov_term(pattern: Tensor, x: Tensor, Z: Tensor) -> Tensor:
    """``Σ_h (pattern_h @ x) Z_h`` ``[b, q, d]``: ``P_OV`` where the heads' output reads it."""
    return torch.einsum("bhqd,hde->bqe", torch.einsum("bhqk,bkd->bhqd", pattern, x), Z)


def head_gradients(ad, tokens: Tensor, *, batch_size: int = 32, progress: bool = False
                   ) -> dict[tuple[int, str], Tensor]:
    """``∂L/∂P`` per layer, circuit and head, with ``P`` a free ``d x d`` matrix per head (``[H, d, d]`` each).

    ``L`` is the model's mean next-token loss over ``tokens`` ``[n, T]`` (every position of every window;
    batches weighted by their size).  The head's output is ``(pattern_h @ x) P_OV`` and its scores carry
    ``x_q P_QK x_kᵀ / attn_scale``, with ``x`` the attention input (what ``W_Q``, ``W_K``, ``W_V`` multiply);
    a zero leaf ``Z`` is added in exactly these places, so ``∂L/∂Z`` at ``Z = 0`` is ``∂L/∂P`` by the chain
    rule while the forward pass is unchanged.  The adapter adds them (``loss_with_head_terms``): through
    TransformerLens hooks (``hook_attn_scores`` and ``hook_attn_out``, :meth:`ModelAdapter.loss_with_head_terms
    <tl_leadterm.models.ModelAdapter.loss_with_head_terms>`), or on a raw Hugging Face GPT-NeoX (what the training monitor watches) through
    :meth:`HFNeoXAdapter.loss_with_head_terms <tl_leadterm.models.HFNeoXAdapter.loss_with_head_terms>`
    (forward hooks on its attention: the logits stay the model's bit for bit; run in eval mode, modes and hooks
    restored).  Rotary models: the QK gradient is that of a position-free bilinear term added to the scores.
    The model's parameters get no ``.grad`` (``torch.autograd.grad``).  ``ad``: an adapter or any model
    :func:`~tl_leadterm.models.adapt` takes.
    """
    batch_size = check("batch_size", batch_size)
    ad = adapt(ad)
    L, H, d = ad.n_layers, ad.n_heads, ad.d_model
    tokens = torch.as_tensor(tokens, dtype=torch.long)
    require(tokens.dim() == 2 and tokens.shape[1] >= 2, "gradient windows must be a [n, T] token array with T >= 2")
    require(int(tokens.max()) < ad.d_vocab and int(tokens.min()) >= 0,
            f"a gradient window holds token id {int(tokens.max())}, outside the model's vocabulary of {ad.d_vocab}")
    dev, dtype = ad.device, ad.dtype
    total = {(l, c): torch.zeros(H, d, d, dtype=torch.float64) for l in range(L) for c in CIRCUIT_WEIGHTS}
    n = tokens.shape[0]
    for a in tqdm(range(0, n, batch_size), desc="gradient lens", disable=not progress, leave=False):
        batch = tokens[a:a + batch_size].to(dev)
        Z = {key: torch.zeros(H, d, d, dtype=dtype, device=dev, requires_grad=True) for key in total}
        with torch.enable_grad():
            loss = ad.loss_with_head_terms(batch, lambda l, x, Z=Z: _qk_term(x, Z[(l, "qk")]),
                                           lambda l, x, p, Z=Z: _ov_term(p, x, Z[(l, "ov")]))
            grads = torch.autograd.grad(loss * (batch.shape[0] / n), [Z[key] for key in total], allow_unused=True)
        for key, g in zip(total, grads):
            require(g is not None, f"the model did not run the attention hooks of layer {key[0]}; the gradient lens needs "
                                   "TransformerLens hook points (hook_attn_scores, hook_pattern, hook_attn_out)")
            total[key] += g.detach().double().cpu()
    return total
