"""The paper's toy model (THEORY.md §1) as a TransformerLens ``HookedRootModule``.

    h⁰ = X (one-hot)
    hˡ = hˡ⁻¹ + softmax(Mask(hˡ⁻¹ Wˡ (hˡ⁻¹)ᵀ + DM(Pˡ))) hˡ⁻¹ Vˡ      l = 1..L
    logits = hᴸ W_O

``Wˡ`` is query x key, ``Vˡ`` and ``W_O`` are current x next (rows = residual
token); ``DM(P)[t, k] = P[t-k]``.  All parameters start at zero.

TransformerLens-style weights make the toy model look like any other model to the
adapter (:mod:`tl_leadterm.models`): one head per layer with ``d_model = d_head =
d_vocab``, ``blocks[l].attn.W_Q = W(l)``, ``W_K = I``, ``W_V = V(l)``, ``W_O = I`` (so
``W_Q W_Kᵀ`` is the key-query matrix and ``W_V W_O`` the value matrix), ``W_E = I`` and
``W_U = W_O``.

Hook points use TransformerLens' names, so ``run_with_cache`` returns an
``ActivationCache`` and ``cache["pattern", l]`` is layer l's attention pattern
(shape ``[batch, 1, query, key]``: the toy model has one head per layer):

``hook_embed``, ``blocks.{l}.hook_resid_pre``, ``blocks.{l}.attn.hook_attn_scores``,
``blocks.{l}.attn.hook_pattern``, ``blocks.{l}.attn.hook_v``, ``blocks.{l}.attn.hook_z``,
``blocks.{l}.hook_attn_out``, ``blocks.{l}.hook_resid_post``, ``ln_final.hook_normalized``
is absent (no LayerNorm), ``hook_logits``.

Training (:func:`train_toy`) is plain gradient descent, ``p -= lr * grad``, on the
mean cross-entropy over all data positions: full batch, or minibatch SGD.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, replace
from typing import Callable

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn
from tqdm.auto import tqdm

try:  # TransformerLens 4.x exports it at top level (and warns on the old path)
    from transformer_lens import HookedRootModule
except ImportError:  # pragma: no cover - TransformerLens 3.x
    from transformer_lens.hook_points import HookedRootModule
from transformer_lens import ActivationCache
from transformer_lens.hook_points import HookPoint

from ._version import __version__
from .corpus import Windows
from .errors import LeadTermError, require
from .params import check, index
from .io import available_bytes, load_safetensors, save_safetensors_atomic

TOY_FORMAT = "tl_leadterm.toy/1"


@dataclass
class ToyConfig:
    """Size of a toy model.  ``d_model = d_head = d_vocab`` (the residual stream is one-hot space).

    Checked when made (and again by :class:`ToyTransformer`): ``d_vocab`` and ``n_ctx`` integers >= 2 (the
    ranges of ``vocab_size`` and ``seq_len``), ``n_layers`` >= 1, ``n_heads`` 1 (numpy integers become ``int``),
    ``dtype`` float64 or float32."""

    d_vocab: int
    n_ctx: int
    n_layers: int
    dtype: torch.dtype = torch.float64
    n_heads: int = 1
    model_name: str = "toy"

    def __post_init__(self):
        for name, key in (("d_vocab", "vocab_size"), ("n_ctx", "seq_len"), ("n_layers", "layers"), ("n_heads", "toy_heads")):
            setattr(self, name, check(name, getattr(self, name), key=key))
        require(self.dtype in (torch.float64, torch.float32), f"{{dtype}} must be torch.float64 or torch.float32, got {self.dtype!r}")

    @property
    def d_model(self) -> int:
        return self.d_vocab

    @property
    def d_head(self) -> int:
        return self.d_vocab

    @property
    def d_vocab_out(self) -> int:
        return self.d_vocab


class ToyAttention(nn.Module):
    """One single-head attention layer with key-query ``W``, value ``V`` and position bias ``P``."""

    def __init__(self, cfg: ToyConfig):
        super().__init__()
        V, T = cfg.d_vocab, cfg.n_ctx
        self.W = nn.Parameter(torch.zeros(V, V, dtype=cfg.dtype))
        self.V = nn.Parameter(torch.zeros(V, V, dtype=cfg.dtype))
        self.P = nn.Parameter(torch.zeros(T, dtype=cfg.dtype))
        self.hook_attn_scores = HookPoint()
        self.hook_pattern = HookPoint()
        self.hook_v = HookPoint()
        self.hook_z = HookPoint()

    # -- TransformerLens-style weights: one head, W_Q W_Kᵀ = W and W_V W_O = V ---------
    def _eye(self) -> Tensor:
        return torch.eye(self.W.shape[0], dtype=self.W.dtype, device=self.W.device)

    @property
    def W_Q(self) -> Float[Tensor, "1 d_vocab d_vocab"]:
        return self.W[None]

    @property
    def W_K(self) -> Float[Tensor, "1 d_vocab d_vocab"]:
        return self._eye()[None]

    @property
    def W_V(self) -> Float[Tensor, "1 d_vocab d_vocab"]:
        return self.V[None]

    @property
    def W_O(self) -> Float[Tensor, "1 d_vocab d_vocab"]:
        return self._eye()[None]

    def forward(self, h: Float[Tensor, "batch pos d_vocab"]) -> Float[Tensor, "batch pos d_vocab"]:
        T = h.shape[1]
        t = torch.arange(T, device=h.device)
        delta = t[:, None] - t[None, :]
        causal = delta >= 0
        pos_bias = self.P[delta.clamp(min=0)]                           # DM(P)[t, k] = P[t-k]
        scores = torch.einsum("bqd,de,bke->bqk", h, self.W, h) + pos_bias
        scores = scores.masked_fill(~causal, float("-inf"))
        scores = self.hook_attn_scores(scores[:, None])                 # [batch, head=1, q, k]
        pattern = self.hook_pattern(torch.softmax(scores, dim=-1))
        v = self.hook_v((h @ self.V)[:, :, None, :])                    # [batch, pos, head=1, d]
        z = self.hook_z(torch.einsum("bhqk,bkhd->bqhd", pattern, v))    # [batch, pos, head=1, d]
        return z[:, :, 0, :]


class ToyBlock(nn.Module):
    def __init__(self, cfg: ToyConfig):
        super().__init__()
        self.attn = ToyAttention(cfg)
        self.hook_resid_pre = HookPoint()
        self.hook_attn_out = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, h):
        h = self.hook_resid_pre(h)
        out = self.hook_attn_out(self.attn(h))
        return self.hook_resid_post(h + out)


class ToyTransformer(HookedRootModule):
    """The attention-only, one-hot, residual toy model of the paper (zero-initialised).

    ``model.W_O`` is the output matrix (current x next); ``model.W(l)``,
    ``model.V(l)``, ``model.P(l)`` are layer ``l``'s key-query matrix, value
    matrix and position bias.
    """

    def __init__(self, cfg: ToyConfig, tokenizer=None):
        super().__init__()
        require(isinstance(cfg, ToyConfig), f"a toy model needs a ToyConfig, got {type(cfg).__name__}")
        cfg = replace(cfg)           # checked again (fields may have changed since it was made); the caller's is kept
        need = (3 * cfg.n_layers + 1) * cfg.d_vocab ** 2 * torch.finfo(cfg.dtype).bits // 8
        require(need <= available_bytes(), f"a toy model with |V|={cfg.d_vocab:,} and {cfg.n_layers} layers needs about "
                                           f"{need / 2**30:.1f} GB for its weights alone; use a smaller vocabulary or fewer layers")
        self.cfg = cfg
        self.tokenizer = tokenizer  # a tl_leadterm Tokenizer, or None
        self.hook_embed = HookPoint()
        self.blocks = nn.ModuleList([ToyBlock(cfg) for _ in range(cfg.n_layers)])
        self.W_O = nn.Parameter(torch.zeros(cfg.d_vocab, cfg.d_vocab, dtype=cfg.dtype))
        self.hook_logits = HookPoint()
        self.setup()

    # -- weights in THEORY.md names ----------------------------------------
    def _attn(self, layer: int) -> ToyAttention:
        return self.blocks[index("layer", layer, self.cfg.n_layers, "layers")].attn

    def W(self, layer: int) -> Tensor:
        return self._attn(layer).W

    def V(self, layer: int) -> Tensor:
        return self._attn(layer).V

    def P(self, layer: int) -> Tensor:
        return self._attn(layer).P

    @property
    def W_U(self) -> Tensor:
        """TransformerLens' name for the output matrix (same tensor as ``W_O``)."""
        return self.W_O

    @property
    def W_E(self) -> Tensor:
        """The embedding: the identity (the residual stream is one-hot token space)."""
        return torch.eye(self.cfg.d_vocab, dtype=self.W_O.dtype, device=self.W_O.device)

    def weights(self) -> dict[str, Tensor]:
        """All weights under the file names ``W_O``, ``W.{l}``, ``V.{l}``, ``P.{l}``."""
        out = {"W_O": self.W_O}
        for l in range(self.cfg.n_layers):
            out[f"W.{l}"], out[f"V.{l}"], out[f"P.{l}"] = self.W(l), self.V(l), self.P(l)
        return out

    # -- forward -----------------------------------------------------------
    def forward(self, tokens: Int[Tensor, "batch pos"], return_type: str | None = "logits",
                valid: Tensor | None = None, targets: Tensor | None = None):
        """Logits ``[batch, pos, d_vocab]``; ``return_type="loss"`` gives the mean next-token loss.

        For the loss, ``tokens`` are the inputs and ``targets`` the next tokens; without
        ``targets`` the usual shift is used (``tokens[:, 1:]`` predicted from ``tokens[:, :-1]``).
        ``valid`` masks padded positions out of the loss.
        """
        tokens = torch.as_tensor(tokens)
        if tokens.dim() == 1:
            tokens = tokens[None]
        require(tokens.shape[1] <= self.cfg.n_ctx, f"sequence of {tokens.shape[1]} tokens is longer than the toy model's context ({self.cfg.n_ctx}); truncate it")
        require(int(tokens.min()) >= 0 and int(tokens.max()) < self.cfg.d_vocab,
                f"token ids must be in [0, {self.cfg.d_vocab}) for this toy model")
        h = self.hook_embed(F.one_hot(tokens.to(self.W_O.device), self.cfg.d_vocab).to(self.cfg.dtype))
        for block in self.blocks:
            h = block(h)
        logits = self.hook_logits(h @ self.W_O)
        if return_type in (None, "logits"):
            return logits if return_type == "logits" else None
        if targets is None:
            logits, targets = logits[:, :-1], tokens[:, 1:]
            valid = None if valid is None else valid[:, : targets.shape[1]]
        loss = next_token_loss(logits, targets.to(logits.device), valid)
        if return_type == "loss":
            return loss
        if return_type == "both":
            return logits, loss
        raise LeadTermError(f"return_type must be 'logits', 'loss', 'both' or None, got {return_type!r}")

    def run_with_cache(self, *args, **kwargs):
        """Like TransformerLens: returns ``(output, ActivationCache)``."""
        out, cache = super().run_with_cache(*args, **kwargs)
        return out, ActivationCache(cache, self, has_batch_dim=not kwargs.get("remove_batch_dim", False))

    def to_tokens(self, text: str, truncate: bool = True) -> Int[Tensor, "1 pos"]:
        """Tokenize with the model's tokenizer (the corpus tokenizer it was trained with)."""
        require(self.tokenizer is not None, "this toy model has no tokenizer; pass token ids instead of text")
        ids = self.tokenizer.encode(text)
        if truncate:
            ids = ids[: self.cfg.n_ctx]
        return torch.tensor([ids], dtype=torch.long)

    def to_str_tokens(self, tokens) -> list[str]:
        ids = torch.as_tensor(tokens).reshape(-1).tolist()
        if self.tokenizer is None:
            return [f"<id {i}>" for i in ids]
        return self.tokenizer.token_strs(ids)

    # -- files ---------------------------------------------------------------
    def save(self, path: str | os.PathLike, **extra_metadata) -> None:
        """Write ``toy.safetensors``: tensors ``W_O``, ``W.{l}``, ``V.{l}``, ``P.{l}`` (THEORY.md orientation)."""
        meta = {"format": TOY_FORMAT, "d_vocab": self.cfg.d_vocab, "n_ctx": self.cfg.n_ctx,
                "n_layers": self.cfg.n_layers, "package_version": __version__,
                "tokenizer": self.tokenizer.to_json() if self.tokenizer is not None else ""}
        meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in extra_metadata.items()})
        save_safetensors_atomic(path, {k: v.detach() for k, v in self.weights().items()}, meta)

    @classmethod
    def load(cls, path: str | os.PathLike, device=None) -> "ToyTransformer":
        tensors, meta = load_safetensors(path, "toy model file")
        require(meta.get("format") == TOY_FORMAT, f"{path} is not a tl_leadterm toy model (format {meta.get('format')!r}); train one with 'tl-leadterm toy-train'")
        try:
            V, T, L = int(meta["d_vocab"]), int(meta["n_ctx"]), int(meta["n_layers"])
        except (KeyError, ValueError):
            raise LeadTermError(f"toy model file {path} has malformed metadata; retrain it") from None
        names = ["W_O"] + [f"{n}.{l}" for l in range(L) for n in ("W", "V", "P")]
        missing = [n for n in names if n not in tensors]
        require(not missing, f"toy model file {path} lacks tensors {', '.join(missing)}; retrain it")
        tok = None
        if meta.get("tokenizer"):
            from .tokenization import tokenizer_from_json
            try:
                tok = tokenizer_from_json(meta["tokenizer"])
            except LeadTermError:
                tok = None
        model = cls(ToyConfig(V, T, L, dtype=tensors["W_O"].dtype), tokenizer=tok)
        with torch.no_grad():
            for name, p in model.weights().items():
                require(tuple(tensors[name].shape) == tuple(p.shape), f"toy model file {path}: {name} has shape {tuple(tensors[name].shape)}, expected {tuple(p.shape)}; retrain it")
                p.copy_(tensors[name])
        return model.to(device) if device is not None else model


def next_token_loss(logits: Float[Tensor, "batch pos vocab"], targets: Int[Tensor, "batch pos"],
                    valid: Tensor | None = None) -> Tensor:
    """Mean cross-entropy over the data positions (``valid``), padding excluded."""
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    if valid is None:
        return ce.mean()
    v = valid.reshape(-1).to(ce.device)
    return ce[v].sum() / v.sum().clamp(min=1)


def windows_loss(model, windows: Windows, batch_size: int = 256) -> float:
    """Mean next-token loss of a toy model over all data positions of ``windows``."""
    batch_size = check("batch_size", batch_size)
    total, count = 0.0, 0
    with torch.no_grad():
        for a in range(0, windows.n_windows, batch_size):
            w = windows[a:a + batch_size]
            dev = model.W_O.device
            logits = model(w.inputs.to(dev))
            ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), w.targets.to(dev).reshape(-1), reduction="none")
            v = w.valid.reshape(-1).to(dev)
            total += float(ce[v].sum())
            count += int(v.sum())
    return total / max(count, 1)


@dataclass
class TrainResult:
    losses: list[float]
    steps: int
    lr: float


def train_toy(model: ToyTransformer, windows: Windows, *, lr: float, steps: int, batch_size: int | None = None,
              seed: int = 0, progress: bool = True,
              callback: Callable[[int, ToyTransformer, float], None] | None = None) -> TrainResult:
    """Plain gradient descent from the model's current weights.

    ``batch_size=None`` is full-batch GD (the gradient of the mean loss over every
    data position); otherwise minibatch SGD over windows drawn without replacement
    (reshuffled each epoch with ``seed``).  ``callback(step, model, loss)`` runs after
    each step (``step`` counts from 1).
    """
    require(isinstance(model, ToyTransformer), f"train_toy trains a ToyTransformer, got {type(model).__name__}")
    require(isinstance(windows, Windows), f"expected token windows (load_corpus), got {type(windows).__name__}")
    steps, lr, seed = check("steps", steps), check("lr", lr), check("seed", seed)   # seed: in [0, 2**64 - 1], as torch's
    batch_size = check("batch_size", batch_size, optional=True)
    require(windows.vocab_size == model.cfg.d_vocab, f"corpus vocab size {windows.vocab_size} differs from the model's {model.cfg.d_vocab}")
    require(windows.seq_len <= model.cfg.n_ctx, f"corpus windows (T={windows.seq_len}) are longer than the model's context ({model.cfg.n_ctx})")
    dev = model.W_O.device
    params = list(model.parameters())
    g = torch.Generator().manual_seed(seed)
    order, cursor = torch.randperm(windows.n_windows, generator=g), 0
    losses = []
    full_chunk = 512
    for step in tqdm(range(1, steps + 1), desc="toy training", disable=not progress, leave=False):
        for p in params:
            p.grad = None
        if batch_size is None:
            # full batch: accumulate the gradient of the *global* mean loss chunk by chunk
            n = windows.n_positions
            total = 0.0
            for a in range(0, windows.n_windows, full_chunk):
                w = windows[a:a + full_chunk]
                logits = model(w.inputs.to(dev))
                ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), w.targets.to(dev).reshape(-1), reduction="none")
                part = ce[w.valid.reshape(-1).to(dev)].sum() / n
                part.backward()
                total += part.item()
            loss = total
        else:
            if cursor + batch_size > windows.n_windows:
                order, cursor = torch.randperm(windows.n_windows, generator=g), 0
            idx = order[cursor:cursor + batch_size]
            cursor += batch_size
            w = windows[idx]
            l = model(w.inputs.to(dev), return_type="loss", valid=w.valid.to(dev), targets=w.targets.to(dev))
            l.backward()
            loss = l.item()
        with torch.no_grad():
            for p in params:
                if p.grad is not None:
                    p -= lr * p.grad
        losses.append(loss)
        if not math.isfinite(loss):
            raise LeadTermError(f"training diverged at step {step} (loss {loss}); use a smaller {{lr}}")
        if callback is not None:
            callback(step, model, loss)
    return TrainResult(losses, steps, lr)
