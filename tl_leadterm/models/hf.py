"""A raw Hugging Face GPT-NeoX model (Pythia, as it is being trained) behind the adapter interface.

Used by the training monitor, which must not convert or fold the model it watches.  The
weights are read from the fused ``query_key_value`` projection per head in
TransformerLens' layout (``W_Q(l)``: ``[n_heads, d_model, d_head]``), nothing is folded
(``folded=False``), and the representations are the hidden states that the model returns:
only ``resid_pre`` is available (the last hidden state has the final LayerNorm applied).
There are no TransformerLens hooks; the gradient lens reaches the attention through
:meth:`HFNeoXAdapter.loss_with_head_terms` (forward hooks on each layer's attention while it runs,
:meth:`HFNeoXAdapter.head_terms`).
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from functools import partial
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from ..errors import LeadTermError, require
from ..toy import next_token_loss
from .adapter import ModelAdapter

#: ``scores(layer, x [b, T, d]) -> [b, H, T, T]`` and ``out(layer, x, pattern [b, H, T, T]) -> [b, T, d]``
ScoresTerm = Callable[[int, Tensor], Tensor]
OutTerm = Callable[[int, Tensor, Tensor], Tensor]


def is_hf_neox(model) -> bool:
    return hasattr(model, "gpt_neox") and hasattr(model, "config") and not hasattr(model, "run_with_cache")


class _Dims:
    def __init__(self, config):
        self.n_layers, self.n_heads = config.num_hidden_layers, config.num_attention_heads
        self.d_model, self.d_vocab = config.hidden_size, config.vocab_size
        self.d_head = self.d_model // self.n_heads
        self.parallel_attn_mlp = bool(getattr(config, "use_parallel_residual", True))


class HFNeoXAdapter(ModelAdapter):
    """The adapter interface over ``transformers.GPTNeoXForCausalLM`` (see module docstring)."""

    representations = ("resid_pre",)   # the hidden states the model returns

    def __init__(self, model, name: str = "", checkpoint: str = ""):
        self.cfg = _Dims(model.config)
        super().__init__(_WithCfg(model, self.cfg), "hf", name, checkpoint, tokenizer=None, folded=False)
        self.model = model

    def _by_head(self, t: Tensor) -> Tensor:
        """``[..., 3 d]`` in the fused ``query_key_value`` layout to ``[..., n_heads, 3 (q, k, v), d_head]``."""
        return t.unflatten(-1, (self.n_heads, 3, self.d_head))

    def _qkv(self, layer: int, which: int) -> Tensor:
        w = self.model.gpt_neox.layers[self._layer(layer)].attention.query_key_value.weight.detach()   # [3 d, d]
        return self._by_head(w.T)[:, :, which].permute(1, 0, 2)

    def W_Q(self, layer: int) -> Float[Tensor, "n_heads d_model d_head"]:
        return self._qkv(layer, 0)

    def W_K(self, layer: int) -> Float[Tensor, "n_heads d_model d_head"]:
        return self._qkv(layer, 1)

    def W_V(self, layer: int) -> Float[Tensor, "n_heads d_model d_head"]:
        return self._qkv(layer, 2)

    def W_O(self, layer: int) -> Float[Tensor, "n_heads d_head d_model"]:
        w = self.model.gpt_neox.layers[self._layer(layer)].attention.dense.weight.detach()  # [d, d]: out x (head, d_head)
        return w.T.reshape(self.n_heads, self.d_head, self.d_model)

    def _qkv_bias(self, layer: int, which: int) -> Tensor:
        b = self.model.gpt_neox.layers[self._layer(layer)].attention.query_key_value.bias
        if b is None:
            return torch.zeros(self.n_heads, self.d_head, dtype=self.dtype)
        return self._by_head(b.detach())[:, which]

    def b_Q(self, layer: int) -> Float[Tensor, "n_heads d_head"]:
        return self._qkv_bias(layer, 0)

    def b_K(self, layer: int) -> Float[Tensor, "n_heads d_head"]:
        return self._qkv_bias(layer, 1)

    def b_V(self, layer: int) -> Float[Tensor, "n_heads d_head"]:
        return self._qkv_bias(layer, 2)

    def b_O(self, layer: int) -> Float[Tensor, "d_model"]:
        b = self.model.gpt_neox.layers[self._layer(layer)].attention.dense.bias
        return torch.zeros(self.d_model, dtype=self.dtype) if b is None else b.detach()

    @property
    def W_E(self) -> Float[Tensor, "d_vocab d_model"]:
        return self.model.get_input_embeddings().weight.detach()

    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        return self.model.get_output_embeddings().weight.detach().T

    def run_with_cache(self, tokens, names_filter=None):
        raise LeadTermError("a raw Hugging Face model has no TransformerLens hooks; load it with tl_leadterm.load_model for this")

    def run_with_hooks(self, tokens, fwd_hooks, return_type: str = "loss"):
        raise LeadTermError("a raw Hugging Face model has no TransformerLens hooks; load it with tl_leadterm.load_model for this")

    def token_representations(self, token_ids: Sequence[int] | Tensor, batch_size: int = 1024
                              ) -> dict[str, list[Float[Tensor, "k d_model"]]]:
        """``{"resid_pre": [k x d_model per layer]}`` from the model's hidden states (each token run alone)."""
        from ..params import check

        batch_size = check("batch_size", batch_size)
        ids = self._check_ids(token_ids)
        per_layer = [[] for _ in range(self.n_layers)]
        with torch.no_grad():
            for a in range(0, ids.numel(), batch_size):
                chunk = ids[a:a + batch_size, None].to(self.device)
                hs = self.model(input_ids=chunk, output_hidden_states=True, use_cache=False).hidden_states
                for l in range(self.n_layers):
                    per_layer[l].append(hs[l][:, 0, :].detach())
        return {"resid_pre": [torch.cat(v) for v in per_layer]}

    def loss_with_head_terms(self, tokens: Tensor, scores: ScoresTerm, out: OutTerm) -> Tensor:
        """The mean next-token loss of ``tokens`` ``[b, T]`` over every position (TransformerLens'
        ``return_type="loss"``), differentiable, computed while :meth:`head_terms` holds."""
        with self.head_terms(scores, out):
            logits = self.model(input_ids=tokens, use_cache=False).logits
        return next_token_loss(logits[:, :-1], tokens[:, 1:])

    @contextmanager
    def head_terms(self, scores: ScoresTerm, out: OutTerm) -> Iterator[None]:
        """For the duration, every layer's attention output carries the derivative of two extra terms.

        With ``x`` the attention input ``[b, T, d]`` (the LayerNorm'd residual that ``query_key_value``
        multiplies) and ``pattern`` the heads' attention ``[b, H, T, T]``, layer ``l``'s attention output becomes
        ``a + (g - g.detach())``: ``a`` is the model's own output, so every value (the logits included) is the
        model's bit for bit, whatever its attention implementation; ``g`` is the attention recomputed from
        ``x.detach()`` with ``scores(l, x)`` added to ``q·kᵀ`` (scaled like it, before the causal mask and
        softmax) and ``out(l, x, pattern)`` added to the heads' output.  The derivative of anything the terms
        depend on is thus that of the terms added in place, at the point where they are zero (a zero leaf to
        differentiate at).  Full windows only (causal mask, no padding, no cache).  The recomputed attention
        is checked against ``a`` (a one-line error if this transformers version computes something else).
        The model runs in eval mode (no dropout); its modules' modes are restored and the hooks removed on
        exit, even on error.
        """
        model = self.model
        modes = [(m, m.training) for m in model.modules()]
        handles = []
        try:
            model.eval()
            for l, layer in enumerate(model.gpt_neox.layers):
                hook = partial(self._terms_hook, l, scores, out)
                handles.append(layer.attention.register_forward_hook(hook, with_kwargs=True))
            yield
        finally:
            for h in handles:
                h.remove()
            for m, mode in modes:
                m.training = mode

    def _terms_hook(self, layer: int, scores: ScoresTerm, out: OutTerm, att, args, kwargs, output):
        x = (args[0] if args else kwargs["hidden_states"]).detach()
        cos_sin = kwargs.get("position_embeddings")
        rope = getattr(sys.modules[type(att).__module__], "apply_rotary_pos_emb", None)
        require(cos_sin is not None and rope is not None,
                "the gradient lens follows the GPT-NeoX attention of recent transformers (rotary position_embeddings "
                "given to the attention); upgrade transformers or load the model with tl_leadterm.load_model")
        require(kwargs.get("layer_past") is None, "head_terms needs the model run on full windows without a cache: "
                                                  "call it with use_cache=False")
        b, T, _ = x.shape
        with torch.no_grad():
            q, k, v = (t.transpose(1, 2) for t in self._by_head(att.query_key_value(x)).unbind(-2))   # [b, H, T, d_head]
            q, k = rope(q, k, *cos_sin)
            qk = q @ k.transpose(-1, -2)
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        s = ((qk + scores(layer, x)) * att.scaling).masked_fill(~causal, float("-inf"))
        pattern = torch.softmax(s, dim=-1, dtype=torch.promote_types(s.dtype, torch.float32)).to(s.dtype)
        g = F.linear((pattern @ v).transpose(1, 2).reshape(b, T, -1), att.dense.weight.detach())
        a = output[0]
        mine = g.detach() if att.dense.bias is None else g.detach() + att.dense.bias.detach()
        tol = max(torch.finfo(x.dtype).eps, torch.finfo(torch.float32).eps) ** 0.5   # eager: a float32 softmax
        require(float((mine - a.detach()).norm()) <= tol * float(a.detach().norm()) + torch.finfo(x.dtype).tiny,
                f"the attention of layer {layer} recomputed for the gradient lens differs from the model's (this "
                "transformers version computes GPT-NeoX attention differently); load the model with tl_leadterm.load_model")
        g = g + out(layer, x, pattern.detach())
        return (a + (g - g.detach()), *output[1:])


class _WithCfg:
    """The model seen through TransformerLens-style ``cfg`` (only for the adapter's constructor)."""

    def __init__(self, model, cfg):
        self.model, self.cfg = model, cfg
