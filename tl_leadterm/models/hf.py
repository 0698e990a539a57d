"""A raw Hugging Face GPT-NeoX model (Pythia, as it is being trained) behind the adapter interface.

Used by the training monitor, which must not convert or fold the model it watches.  The
weights are read from the fused ``query_key_value`` projection per head in
TransformerLens' layout (``W_Q(l)``: ``[n_heads, d_model, d_head]``), nothing is folded
(``folded=False``), and the representations are the hidden states that the model returns:
only ``resid_pre`` is available (the last hidden state has the final LayerNorm applied).
"""

from __future__ import annotations

from typing import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from ..errors import LeadTermError
from .adapter import ModelAdapter


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

    def __init__(self, model, name: str = "", checkpoint: str = ""):
        self.cfg = _Dims(model.config)
        super().__init__(_WithCfg(model, self.cfg), "hf", name, checkpoint, tokenizer=None, folded=False)
        self.model = model

    def _qkv(self, layer: int, which: int) -> Tensor:
        w = self.model.gpt_neox.layers[layer].attention.query_key_value.weight.detach()   # [3 d, d], rows (head, q/k/v, d_head)
        return w.view(self.n_heads, 3, self.d_head, self.d_model)[:, which].transpose(1, 2)

    def W_Q(self, layer: int) -> Float[Tensor, "n_heads d_model d_head"]:
        return self._qkv(layer, 0)

    def W_K(self, layer: int) -> Float[Tensor, "n_heads d_model d_head"]:
        return self._qkv(layer, 1)

    def W_V(self, layer: int) -> Float[Tensor, "n_heads d_model d_head"]:
        return self._qkv(layer, 2)

    def W_O(self, layer: int) -> Float[Tensor, "n_heads d_head d_model"]:
        w = self.model.gpt_neox.layers[layer].attention.dense.weight.detach()              # [d, d]: out x (head, d_head)
        return w.T.reshape(self.n_heads, self.d_head, self.d_model)

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
        ids = self._check_ids(token_ids)
        per_layer = [[] for _ in range(self.n_layers)]
        with torch.no_grad():
            for a in range(0, ids.numel(), batch_size):
                chunk = ids[a:a + batch_size, None].to(self.device)
                hs = self.model(input_ids=chunk, output_hidden_states=True, use_cache=False).hidden_states
                for l in range(self.n_layers):
                    per_layer[l].append(hs[l][:, 0, :].detach())
        return {"resid_pre": [torch.cat(v) for v in per_layer]}


class _WithCfg:
    """The model seen through TransformerLens-style ``cfg`` (only for the adapter's constructor)."""

    def __init__(self, model, cfg):
        self.model, self.cfg = model, cfg
