"""The adapter: one interface over every model kind (loading lives in :mod:`.loading`).

``ModelAdapter`` (same interface for every backend)
    ``kind`` ("hooked" | "bridge" | "toy" | "hf", informative only), ``token_space``, ``folded``, ``model``, ``name``, ``checkpoint``,
    ``tokenizer`` (a :class:`~tl_leadterm.tokenization.Tokenizer` or None),
    ``n_layers``, ``n_heads``, ``n_key_value_heads``, ``d_model``, ``d_head``, ``d_vocab``, ``parallel_attn_mlp``;
    weights ``W_Q(l)``, ``W_K(l)``, ``W_V(l)`` ``[n_heads, d_model, d_head]``,
    ``W_O(l)`` ``[n_heads, d_head, d_model]``, ``b_Q(l)``, ``b_K(l)``, ``b_V(l)``
    ``[n_heads, d_head]``, ``b_O(l)`` ``[d_model]``, ``W_E`` ``[d_vocab, d_model]``,
    ``W_U`` ``[d_model, d_vocab]``;
    ``run_with_cache(tokens, names_filter=None)`` → ``(logits, ActivationCache)``
    with TransformerLens hook names; ``run_with_hooks(tokens, fwd_hooks, return_type)``;
    ``loss(tokens)`` (mean next-token loss); ``token_representations(token_ids)``
    (single-token runs, see below); ``check_finite()``; ``act_name(name, layer, layer_type)``
    (TransformerLens' own ``get_act_name``: ``act_name("v", 3)`` is ``"blocks.3.attn.hook_v"``).

Grouped-query attention (``n_key_value_heads < n_heads``): TransformerLens keeps the key and
value weights (and the ``hook_k`` / ``hook_v`` activations) per key/value head; the adapter's
``W_K``, ``W_V``, ``b_K``, ``b_V`` are per query head (each key/value head repeated for the
``n_heads // n_key_value_heads`` query heads that read it, as TransformerLens' 3.x
``GroupedQueryAttention.W_K`` does), so every head's ``W_Q[h] W_K[h]ᵀ`` and ``W_V[h] W_O[h]``
is what that head computes.

The toy model carries TransformerLens-style weights itself (:mod:`tl_leadterm.toy`): one
head per layer, ``d_model = d_head = d_vocab``, ``W_Q W_Kᵀ`` the key-query matrix and
``W_V W_O`` the value matrix, so the adapter treats it like any other model.

Representations (THEORY.md §5)
    ``token_representations(ids)`` runs every token alone (sequences of length 1,
    no BOS) and returns per layer ``resid_pre``, ``resid_mid``, ``resid_post`` and
    ``attn_in`` (the input of W_Q/W_K/W_V: ``ln1.hook_normalized`` after folding,
    ``resid_pre`` for the toy model), each ``[k, d_model]``.  For parallel
    attention/MLP blocks (Pythia/GPT-NeoX) there is no ``resid_mid``: it is defined
    as ``resid_pre + attn_out`` (the residual after the attention half).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from ..errors import LeadTermError, require

from transformer_lens.utilities import get_act_name   # TransformerLens 3.9 and 4.x


class ModelAdapter:
    """One interface over HookedTransformer, TransformerBridge and the toy model (see module docstring).

    Every model it wraps has TransformerLens-style weights (``blocks[l].attn.W_Q`` ...,
    ``W_E``, ``W_U``) and hook names, so nothing here depends on the kind of model.
    ``token_space`` is True when the weights are ``|V| x |V|`` token-space matrices (the toy
    model); ``folded`` when ``ln1.hook_normalized`` is exactly what W_Q multiplies (LayerNorm
    folded into the weights, or no LayerNorm).
    """

    def __init__(self, model, kind: str, name: str = "", checkpoint: str = "", tokenizer=None, *,
                 token_space: bool = False, folded: bool = True):
        self.model, self.kind, self.name, self.checkpoint = model, kind, name, checkpoint
        self.tokenizer, self.token_space, self.folded = tokenizer, token_space, folded
        c = model.cfg
        self.n_layers, self.n_heads, self.d_model, self.d_head = c.n_layers, c.n_heads, c.d_model, c.d_head
        self.n_key_value_heads = int(getattr(c, "n_key_value_heads", None) or self.n_heads)
        self.d_vocab = c.d_vocab
        self.parallel_attn_mlp = bool(getattr(c, "parallel_attn_mlp", False))
        require(self.n_layers >= 1 and self.n_heads >= 1,
                f"model {name or type(model).__name__} has no attention layers; give a transformer with attention (W_Q, W_K, W_V, W_O)")

    def __repr__(self) -> str:
        return (f"ModelAdapter({self.kind}, {self.name!r}, checkpoint={self.checkpoint!r}, L={self.n_layers}, "
                f"H={self.n_heads}, d_model={self.d_model}, d_head={self.d_head}, d_vocab={self.d_vocab})")

    @staticmethod
    def act_name(name: str, layer: int | None = None, layer_type: str | None = None) -> str:
        """A TransformerLens hook name through TransformerLens' ``get_act_name`` (e.g. ``("normalized", 0, "ln1")``)."""
        return get_act_name(name, layer, layer_type)

    # -- weights -----------------------------------------------------------
    def _layer(self, layer) -> int:
        """``layer`` as an index into the model's layers (numpy integers welcome), else a one-line error."""
        from ..params import index

        return index("layer", layer, self.n_layers, "layers")

    def _attn(self, layer: int):
        layer = self._layer(layer)
        attn = getattr(self.model.blocks[layer], "attn", None)
        if attn is None or getattr(attn, "W_Q", None) is None:
            raise LeadTermError(f"block {layer} of {self.name or 'the model'} has no attention weights (W_Q); "
                                "give a model with standard attention (TransformerBridge needs enable_compatibility_mode)")
        return attn

    def W_Q(self, layer: int) -> Float[Tensor, "n_heads d_model d_head"]:
        return self._attn(layer).W_Q.detach()

    def W_K(self, layer: int) -> Float[Tensor, "n_heads d_model d_head"]:
        return self._per_head(self._attn(layer).W_K.detach())

    def W_V(self, layer: int) -> Float[Tensor, "n_heads d_model d_head"]:
        return self._per_head(self._attn(layer).W_V.detach())

    def _per_head(self, w: Tensor) -> Tensor:
        """Key/value weights or biases per query head (grouped-query attention: module docstring)."""
        if w.shape[0] == self.n_heads:
            return w
        require(self.n_heads % w.shape[0] == 0,
                f"{self.name or 'the model'} has {w.shape[0]} key/value heads for {self.n_heads} query heads, which does not "
                "divide; give a model with standard or grouped-query attention")
        return w.repeat_interleave(self.n_heads // w.shape[0], dim=0)

    def W_O(self, layer: int) -> Float[Tensor, "n_heads d_head d_model"]:
        return self._attn(layer).W_O.detach()

    def _bias(self, layer: int, name: str, shape) -> Tensor:
        b = getattr(self._attn(layer), name, None)
        if b is None:
            return torch.zeros(shape, dtype=self.dtype)
        return self._per_head(b.detach()) if name in ("b_K", "b_V") else b.detach()

    def b_Q(self, layer: int) -> Float[Tensor, "n_heads d_head"]:
        return self._bias(layer, "b_Q", (self.n_heads, self.d_head))

    def b_K(self, layer: int) -> Float[Tensor, "n_heads d_head"]:
        return self._bias(layer, "b_K", (self.n_heads, self.d_head))

    def b_V(self, layer: int) -> Float[Tensor, "n_heads d_head"]:
        return self._bias(layer, "b_V", (self.n_heads, self.d_head))

    def b_O(self, layer: int) -> Float[Tensor, "d_model"]:
        return self._bias(layer, "b_O", (self.d_model,))

    @property
    def W_E(self) -> Float[Tensor, "d_vocab d_model"]:
        return self.model.W_E.detach()

    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        return self.model.W_U.detach()

    @property
    def dtype(self) -> torch.dtype:
        return self.W_U.dtype

    @property
    def device(self) -> torch.device:
        return self.W_U.device

    def check_finite(self) -> None:
        """Raise a one-line error naming the layer and head of the first non-finite weight (then any other parameter)."""
        who = f"{self.name or 'the model'}{' ' + self.checkpoint if self.checkpoint else ''}"
        fix = "load a healthy checkpoint or retrain with a smaller learning rate (the weights are corrupt or diverged)"
        for l in range(self.n_layers):
            for wname in ("W_Q", "W_K", "W_V", "W_O"):
                w = getattr(self, wname)(l)
                ok = torch.isfinite(w.reshape(w.shape[0], -1)).all(-1)
                if not bool(ok.all()):
                    h = int((~ok).nonzero()[0])
                    raise LeadTermError(f"{wname} of layer {l} head {h} of {who} holds NaN or Inf; {fix}")
        for what in ("W_E", "W_U"):
            require(bool(torch.isfinite(getattr(self, what)).all()), f"{what} of {who} holds NaN or Inf; {fix}")
        for pname, p in self.model.named_parameters():
            require(bool(torch.isfinite(p.detach()).all()), f"parameter {pname} of {who} holds NaN or Inf; {fix}")

    # -- running -----------------------------------------------------------
    def _tokens(self, tokens) -> Tensor:
        t = torch.as_tensor(tokens, dtype=torch.long)
        if t.dim() == 1:
            t = t[None]
        return t.to(self.device)

    def run_with_cache(self, tokens, names_filter=None):
        """``(logits, ActivationCache)`` with TransformerLens hook names."""
        with torch.no_grad():
            return self.model.run_with_cache(self._tokens(tokens), names_filter=names_filter)

    def run_with_hooks(self, tokens, fwd_hooks: Sequence[tuple[str, Callable]], return_type: str = "loss"):
        with torch.no_grad():
            return self.model.run_with_hooks(self._tokens(tokens), fwd_hooks=list(fwd_hooks), return_type=return_type)

    def loss(self, tokens, fwd_hooks: Sequence[tuple[str, Callable]] = ()) -> float:
        """Mean next-token loss of ``tokens`` ``[batch, pos]`` (optionally with forward hooks)."""
        return float(self.run_with_hooks(tokens, fwd_hooks, return_type="loss"))

    def _attn_scale(self, layer: int) -> float:
        s = getattr(self.model.blocks[layer].attn, "attn_scale", None)
        try:
            return float(s) if s is not None else math.sqrt(self.d_head)
        except (TypeError, ValueError):
            return math.sqrt(self.d_head)

    def loss_with_head_terms(self, tokens: Tensor, scores: Callable, out: Callable) -> Tensor:
        """The mean next-token loss of ``tokens``, differentiable, with ``scores(l, x) / attn_scale`` added to layer
        ``l``'s attention scores and ``out(l, x, pattern)`` to its attention output (``x``: the attention input, what
        ``W_Q`` multiplies), through TransformerLens hooks (the gradient lens,
        :func:`tl_leadterm.analysis.lenses.head_gradients`; a raw Hugging Face GPT-NeoX has its own)."""
        model = self.model
        require(callable(getattr(model, "run_with_hooks", None)) and getattr(model, "hook_dict", None) is not None,
                f"the gradient lens needs TransformerLens hook points or a Hugging Face GPT-NeoX model, which "
                f"{self.name or type(model).__name__} is not: load it with tl_leadterm.load_model for this lens")
        x_in: dict[int, Tensor] = {}
        pat: dict[int, Tensor] = {}
        hooks = []
        for l in range(self.n_layers):
            scale = self._attn_scale(l)

            def save_x(t, hook, l=l):
                x_in[l] = t.detach()
                return t

            def save_pre(t, hook, l=l):
                x_in.setdefault(l, t.detach())   # no LayerNorm: W_Q reads the residual
                return t

            def add_scores(t, hook, l=l, scale=scale):
                return t + scores(l, x_in[l]) / scale

            def save_pattern(t, hook, l=l):
                pat[l] = t.detach()
                return t

            def add_out(t, hook, l=l):
                return t + out(l, x_in[l], pat[l])

            name = self.act_name
            hooks += [(name("normalized", l, "ln1"), save_x), (name("resid_pre", l), save_pre),
                      (name("attn_scores", l), add_scores), (name("pattern", l), save_pattern),
                      (name("attn_out", l), add_out)]
        have = set(getattr(model, "hook_dict", {}) or {})
        hooks = [(n, fn) for n, fn in hooks if not have or n in have]
        return model.run_with_hooks(tokens, fwd_hooks=hooks, return_type="loss")

    def _check_ids(self, token_ids) -> Tensor:
        ids = torch.as_tensor(token_ids, dtype=torch.long).reshape(-1)
        require(ids.numel() >= 1, "no tokens to run")
        require(int(ids.max()) < self.d_vocab and int(ids.min()) >= 0,
                f"token id {int(ids.max())} is outside the model's vocabulary of {self.d_vocab}; rebuild the basis with the model's tokenizer")
        return ids

    #: the per-layer representations :meth:`token_representations` returns (the sites that read others are not
    #: available for this model kind)
    representations: tuple[str, ...] = ("resid_pre", "resid_mid", "resid_post", "attn_in")

    def token_representations(self, token_ids: Sequence[int] | Tensor, batch_size: int = 1024
                              ) -> dict[str, list[Float[Tensor, "k d_model"]]]:
        """Per-layer representations of each token run alone (module docstring): lists of ``[k, d_model]``.

        ``attn_in`` is exactly what W_Q multiplies only when ``folded`` (else it is LayerNorm's
        normalised input before its weight and bias).
        """
        from ..params import check

        batch_size = check("batch_size", batch_size)
        ids = self._check_ids(token_ids)
        L = self.n_layers
        hook = [{w: self.act_name(w, l) for w in ("resid_pre", "resid_mid", "resid_post", "attn_out")}
                | {"ln1": self.act_name("normalized", l, "ln1")} for l in range(L)]
        names = {n for per_layer in hook for n in per_layer.values()}
        out = {key: [[] for _ in range(L)] for key in ("resid_pre", "resid_mid", "resid_post", "attn_in")}
        for a in range(0, ids.numel(), batch_size):
            chunk = ids[a:a + batch_size, None]
            _, cache = self.run_with_cache(chunk, names_filter=lambda n: n in names)
            for l in range(L):
                pre = cache[hook[l]["resid_pre"]][:, 0]
                post = cache[hook[l]["resid_post"]][:, 0]
                mid_name = hook[l]["resid_mid"]
                if not self.parallel_attn_mlp and mid_name in cache.cache_dict:
                    mid = cache[mid_name][:, 0]
                else:
                    mid = pre + cache[hook[l]["attn_out"]][:, 0]
                ln = hook[l]["ln1"]
                ain = cache[ln][:, 0] if ln in cache.cache_dict else pre  # no LayerNorm: W_Q reads the residual
                for key, v in (("resid_pre", pre), ("resid_mid", mid), ("resid_post", post), ("attn_in", ain)):
                    out[key][l].append(v.detach())
        return {key: [torch.cat(v) for v in per_layer] for key, per_layer in out.items()}
