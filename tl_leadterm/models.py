"""Model adapters: one interface over TransformerLens models and the toy model.

Stable API (used by the analysis, the report and the training monitor)
-----------------------------------------------------------------------
``load_model(spec, revision=None, *, device="cpu", dtype=torch.float32, backend="auto") -> ModelAdapter``
    ``spec`` is any of

    * an already-loaded model: a TL 3.x ``HookedTransformer``, a TL 4.x
      ``TransformerBridge`` (``enable_compatibility_mode()`` is called if it was not),
      a :class:`~tl_leadterm.toy.ToyTransformer`, or a :class:`ModelAdapter`;
    * ``"toy:PATH"``: a ``toy.safetensors`` file or a folder holding one;
    * a local Hugging Face model directory (``config.json`` + weights + tokenizer);
    * a hub name such as ``EleutherAI/pythia-70m`` with ``revision="stepN"`` for a
      Pythia training checkpoint (needs network; the tests use local directories).

    ``backend="auto"`` uses ``TransformerBridge`` when TransformerLens >= 4 is
    installed and ``HookedTransformer`` on 3.x (``"bridge"`` / ``"hooked"`` force
    one).  Both apply TransformerLens' default weight processing (LayerNorm folded
    into W_Q/W_K/W_V and W_U, writing weights and unembedding centred, value
    biases folded), so the two backends give the same numbers.

``ModelAdapter`` (same interface for every backend)
    ``kind`` ("hooked" | "bridge" | "toy"), ``model``, ``name``, ``checkpoint``,
    ``tokenizer`` (a :class:`~tl_leadterm.tokenization.Tokenizer` or None),
    ``n_layers``, ``n_heads``, ``d_model``, ``d_head``, ``d_vocab``, ``parallel_attn_mlp``;
    weights ``W_Q(l)``, ``W_K(l)``, ``W_V(l)`` ``[n_heads, d_model, d_head]``,
    ``W_O(l)`` ``[n_heads, d_head, d_model]``, ``b_Q(l)``, ``b_K(l)``, ``b_V(l)``
    ``[n_heads, d_head]``, ``b_O(l)`` ``[d_model]``, ``W_E`` ``[d_vocab, d_model]``,
    ``W_U`` ``[d_model, d_vocab]``;
    ``run_with_cache(tokens, names_filter=None)`` → ``(logits, ActivationCache)``
    with TransformerLens hook names; ``run_with_hooks(tokens, fwd_hooks, return_type)``;
    ``loss(tokens)`` (mean next-token loss); ``token_representations(token_ids)``
    (single-token runs, see below); ``check_finite()``.

Toy model as an adapter: one head per layer, ``d_model = d_head = d_vocab`` (one-hot
residual), ``W_Q(l) = W(l)``, ``W_K(l) = I``, ``W_V(l) = V(l)``, ``W_O(l) = I``,
``W_E = I``, ``W_U = W_O`` (toy), so ``W_Q W_Kᵀ`` is the toy key-query matrix and
``W_V W_O`` the toy value matrix.

Representations (THEORY.md §5)
    ``token_representations(ids)`` runs every token alone (sequences of length 1,
    no BOS) and returns per layer ``resid_pre``, ``resid_mid``, ``resid_post`` and
    ``attn_in`` (the input of W_Q/W_K/W_V: ``ln1.hook_normalized`` after folding,
    ``resid_pre`` for the toy model), each ``[k, d_model]``.  For parallel
    attention/MLP blocks (Pythia/GPT-NeoX) there is no ``resid_mid``: it is defined
    as ``resid_pre + attn_out`` (the residual after the attention half).

Test helper: :func:`save_random_pythia` writes a small random Pythia-architecture
model directory with the Pythia tokenizer (tests/conftest.py fixture ``tiny_pythia_dir``).
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from .errors import LeadTermError, require

try:  # TransformerLens 4.x
    from transformer_lens.model_bridge import TransformerBridge  # type: ignore
    HAS_BRIDGE = True
except Exception:  # pragma: no cover - TransformerLens 3.x
    TransformerBridge = None  # type: ignore
    HAS_BRIDGE = False
try:
    from transformer_lens import HookedTransformer  # type: ignore
except Exception:  # pragma: no cover
    HookedTransformer = None  # type: ignore


def tl_version() -> str:
    try:
        from importlib.metadata import version
        return version("transformer-lens")
    except Exception:  # pragma: no cover
        return "unknown"


def default_backend() -> str:
    """``"bridge"`` on TransformerLens >= 4 (TransformerBridge), ``"hooked"`` on 3.x (HookedTransformer)."""
    m = re.match(r"(\d+)", tl_version())
    return "bridge" if HAS_BRIDGE and m is not None and int(m.group(1)) >= 4 else "hooked"


# ---------------------------------------------------------------------------
# Pythia checkpoints
# ---------------------------------------------------------------------------
PYTHIA_STEPS = [0] + [2 ** i for i in range(10)] + list(range(1000, 143001, 1000))
PYTHIA_REVISIONS = [f"step{s}" for s in PYTHIA_STEPS]


def _revisions_hint() -> str:
    return "step0, step1, step2, step4, ..., step512, step1000, step2000, ..., step143000"


def validate_revision(revision: str) -> str:
    """Check a Pythia revision name (``stepN``); unknown names list the valid ones."""
    r = str(revision).strip()
    if r.isdigit():
        r = f"step{r}"
    require(r in PYTHIA_REVISIONS,
            f"unknown checkpoint {revision!r}; Pythia revisions are {_revisions_hint()} "
            f"({len(PYTHIA_REVISIONS)} in all), or give local model directories")
    return r


# ---------------------------------------------------------------------------
# adapter
# ---------------------------------------------------------------------------
class ModelAdapter:
    """One interface over HookedTransformer, TransformerBridge and the toy model (see module docstring)."""

    def __init__(self, model, kind: str, name: str = "", checkpoint: str = "", tokenizer=None):
        self.model, self.kind, self.name, self.checkpoint = model, kind, name, checkpoint
        self.tokenizer = tokenizer
        if kind == "toy":
            c = model.cfg
            self.n_layers, self.n_heads, self.d_model, self.d_head, self.d_vocab = c.n_layers, 1, c.d_vocab, c.d_vocab, c.d_vocab
            self.parallel_attn_mlp = False
        else:
            c = model.cfg
            self.n_layers, self.n_heads, self.d_model, self.d_head = c.n_layers, c.n_heads, c.d_model, c.d_head
            self.d_vocab = c.d_vocab
            self.parallel_attn_mlp = bool(getattr(c, "parallel_attn_mlp", False))
        require(self.n_layers >= 1 and self.n_heads >= 1,
                f"model {name or type(model).__name__} has no attention layers; give a transformer with attention (W_Q, W_K, W_V, W_O)")

    def __repr__(self) -> str:
        return (f"ModelAdapter({self.kind}, {self.name!r}, checkpoint={self.checkpoint!r}, L={self.n_layers}, "
                f"H={self.n_heads}, d_model={self.d_model}, d_head={self.d_head}, d_vocab={self.d_vocab})")

    # -- weights -----------------------------------------------------------
    def _attn(self, layer: int):
        require(0 <= layer < self.n_layers, f"layer {layer} out of range [0, {self.n_layers})")
        attn = getattr(self.model.blocks[layer], "attn", None)
        if attn is None or getattr(attn, "W_Q", None) is None:
            raise LeadTermError(f"block {layer} of {self.name or 'the model'} has no attention weights (W_Q); "
                                "give a model with standard attention (TransformerBridge needs enable_compatibility_mode)")
        return attn

    def _toy_eye(self, like: Tensor) -> Tensor:
        return torch.eye(self.d_vocab, dtype=like.dtype, device=like.device)

    def W_Q(self, layer: int) -> Float[Tensor, "n_heads d_model d_head"]:
        if self.kind == "toy":
            return self.model.W(layer).detach()[None]
        return self._attn(layer).W_Q.detach()

    def W_K(self, layer: int) -> Float[Tensor, "n_heads d_model d_head"]:
        if self.kind == "toy":
            return self._toy_eye(self.model.W(layer))[None]
        return self._attn(layer).W_K.detach()

    def W_V(self, layer: int) -> Float[Tensor, "n_heads d_model d_head"]:
        if self.kind == "toy":
            return self.model.V(layer).detach()[None]
        return self._attn(layer).W_V.detach()

    def W_O(self, layer: int) -> Float[Tensor, "n_heads d_head d_model"]:
        if self.kind == "toy":
            return self._toy_eye(self.model.V(layer))[None]
        return self._attn(layer).W_O.detach()

    def _bias(self, layer: int, name: str, shape) -> Tensor:
        if self.kind == "toy":
            return torch.zeros(shape, dtype=self.model.W_O.dtype)
        b = getattr(self._attn(layer), name, None)
        return torch.zeros(shape) if b is None else b.detach()

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
        if self.kind == "toy":
            return self._toy_eye(self.model.W_O)
        return self.model.W_E.detach()

    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        return self.model.W_O.detach() if self.kind == "toy" else self.model.W_U.detach()

    @property
    def dtype(self) -> torch.dtype:
        return self.W_U.dtype

    @property
    def device(self) -> torch.device:
        return self.W_U.device

    def check_finite(self) -> None:
        """Raise a one-line error naming the layer and head of the first non-finite weight."""
        if self.kind == "toy":
            for name, w in self.model.weights().items():
                if not bool(torch.isfinite(w).all()):
                    layer = name.split(".")[1] if "." in name else "output"
                    raise LeadTermError(f"toy model weight {name} (layer {layer}, head 0) holds NaN or Inf; "
                                        "retrain with a smaller learning rate or use an earlier checkpoint")
            return
        for l in range(self.n_layers):
            for wname in ("W_Q", "W_K", "W_V", "W_O"):
                w = getattr(self, wname)(l)
                ok = torch.isfinite(w.reshape(w.shape[0], -1)).all(-1)
                if not bool(ok.all()):
                    h = int((~ok).nonzero()[0])
                    raise LeadTermError(f"{wname} of layer {l} head {h} of {self.name or 'the model'} {self.checkpoint} "
                                        "holds NaN or Inf; load a healthy checkpoint (the weights are corrupt or diverged)")
        for what in ("W_E", "W_U"):
            w = getattr(self, what)
            require(bool(torch.isfinite(w).all()), f"{what} of {self.name or 'the model'} holds NaN or Inf; "
                                                  "load a healthy checkpoint (the weights are corrupt or diverged)")

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
            if self.kind == "toy":
                with self.model.hooks(fwd_hooks=list(fwd_hooks)):
                    return self.model(self._tokens(tokens), return_type=return_type)
            return self.model.run_with_hooks(self._tokens(tokens), fwd_hooks=list(fwd_hooks), return_type=return_type)

    def loss(self, tokens, fwd_hooks: Sequence[tuple[str, Callable]] = ()) -> float:
        """Mean next-token loss of ``tokens`` ``[batch, pos]`` (optionally with forward hooks)."""
        return float(self.run_with_hooks(tokens, fwd_hooks, return_type="loss"))

    def token_representations(self, token_ids: Sequence[int] | Tensor, batch_size: int = 1024
                              ) -> dict[str, list[Float[Tensor, "k d_model"]]]:
        """Per-layer representations of each token run alone (module docstring): lists of ``[k, d_model]``."""
        ids = torch.as_tensor(token_ids, dtype=torch.long).reshape(-1)
        require(ids.numel() >= 1, "no tokens to run")
        require(int(ids.max()) < self.d_vocab and int(ids.min()) >= 0,
                f"token id {int(ids.max())} is outside the model's vocabulary of {self.d_vocab}; rebuild the basis with the model's tokenizer")
        L = self.n_layers
        names = set()
        for l in range(L):
            names |= {f"blocks.{l}.hook_resid_pre", f"blocks.{l}.hook_resid_post", f"blocks.{l}.hook_attn_out",
                      f"blocks.{l}.hook_resid_mid", f"blocks.{l}.ln1.hook_normalized"}
        out = {key: [[] for _ in range(L)] for key in ("resid_pre", "resid_mid", "resid_post", "attn_in")}
        for a in range(0, ids.numel(), batch_size):
            chunk = ids[a:a + batch_size, None]
            _, cache = self.run_with_cache(chunk, names_filter=lambda n: n in names)
            for l in range(L):
                pre = cache[f"blocks.{l}.hook_resid_pre"][:, 0]
                post = cache[f"blocks.{l}.hook_resid_post"][:, 0]
                mid_name = f"blocks.{l}.hook_resid_mid"
                if not self.parallel_attn_mlp and mid_name in cache.cache_dict:
                    mid = cache[mid_name][:, 0]
                else:
                    mid = pre + cache[f"blocks.{l}.hook_attn_out"][:, 0]
                ln = f"blocks.{l}.ln1.hook_normalized"
                ain = cache[ln][:, 0] if ln in cache.cache_dict else pre
                for key, v in (("resid_pre", pre), ("resid_mid", mid), ("resid_post", post), ("attn_in", ain)):
                    out[key][l].append(v.detach())
        return {key: [torch.cat(v) for v in per_layer] for key, per_layer in out.items()}


# ---------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------
def _wrap_tokenizer(model, name: str):
    from .tokenization import Tokenizer, wrap_hf_tokenizer
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        return None
    if isinstance(tok, Tokenizer):
        return tok
    try:
        return wrap_hf_tokenizer(tok, name)
    except Exception:
        return None


def _is_toy(model) -> bool:
    from .toy import ToyTransformer
    return isinstance(model, ToyTransformer)


def adapt(model, name: str = "", checkpoint: str = "") -> ModelAdapter:
    """Wrap an already-loaded model (HookedTransformer, TransformerBridge, ToyTransformer).

    A TransformerBridge not yet in compatibility mode is switched to it in place
    (``enable_compatibility_mode()``: LayerNorm folded into the weights, classic hook
    names); do not pass a bridge that is being trained.
    """
    if isinstance(model, ModelAdapter):
        return model
    if _is_toy(model):
        return ModelAdapter(model, "toy", name or "toy", checkpoint, tokenizer=model.tokenizer)
    name = name or str(getattr(getattr(model, "cfg", None), "model_name", "") or type(model).__name__)
    if HAS_BRIDGE and isinstance(model, TransformerBridge):
        if not getattr(model, "compatibility_mode", False):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.enable_compatibility_mode(disable_warnings=True)
        return ModelAdapter(model, "bridge", name, checkpoint, tokenizer=_wrap_tokenizer(model, name))
    if HookedTransformer is not None and isinstance(model, HookedTransformer):
        return ModelAdapter(model, "hooked", name, checkpoint, tokenizer=_wrap_tokenizer(model, name))
    if hasattr(model, "cfg") and hasattr(model, "blocks") and hasattr(model, "run_with_cache"):
        return ModelAdapter(model, "hooked", name, checkpoint, tokenizer=_wrap_tokenizer(model, name))
    raise LeadTermError(f"cannot analyse a {type(model).__name__}; give a HookedTransformer, a TransformerBridge, "
                        "a ToyTransformer, a local model directory, a hub name or toy:PATH")


def _load_toy(path: str) -> ModelAdapter:
    from .toy import ToyTransformer
    p = Path(path)
    if p.is_dir():
        p = p / "toy.safetensors"
    require(p.is_file(), f"toy model {path} not found; give toy:PATH with PATH a toy.safetensors file or a folder holding one")
    model = ToyTransformer.load(p)
    return ModelAdapter(model, "toy", f"toy:{path}", "", tokenizer=model.tokenizer)


def _quiet():
    import logging
    for n in ("transformers", "transformer_lens", "root"):
        logging.getLogger(n).setLevel(logging.ERROR)


def _load_hooked(spec: str, revision: str | None, device, dtype) -> Any:
    """TL 3.x HookedTransformer from a local directory or a hub name."""
    import contextlib
    import io
    import transformer_lens.loading_from_pretrained as loading
    _quiet()
    p = Path(spec)
    if p.is_dir():
        from transformers import AutoModelForCausalLM, AutoTokenizer
        try:
            hf = AutoModelForCausalLM.from_pretrained(str(p), dtype=dtype)
            tok = AutoTokenizer.from_pretrained(str(p))
        except Exception as e:
            raise LeadTermError(f"{p} is not a loadable Hugging Face model directory ({type(e).__name__}); "
                                "give a folder written by save_pretrained (config.json, weights, tokenizer)") from None
        # HookedTransformer.from_pretrained only accepts official names; build the config from the local files
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            cfg = loading.get_pretrained_model_config(str(p.resolve()), fold_ln=True, device=device, dtype=dtype)
            state = loading.get_pretrained_state_dict(str(p.resolve()), cfg, hf, dtype=dtype)
            model = HookedTransformer(cfg, tok, move_to_device=False)
            model.load_and_process_state_dict(state, fold_ln=True, center_writing_weights=True,
                                              center_unembed=True, fold_value_biases=True)
            model = model.to(device)
        return model
    kw = {}
    if revision is not None:
        kw["checkpoint_value"] = int(validate_revision(revision)[4:])
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return HookedTransformer.from_pretrained(spec, device=device, dtype=dtype, **kw)
    except Exception as e:
        raise LeadTermError(f"could not load model {spec!r} ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}); "
                            "give a local model directory, toy:PATH, or a hub name reachable from this machine") from None


def _load_bridge(spec: str, revision: str | None, device, dtype) -> Any:
    """TL 4.x TransformerBridge from a local directory or a hub name, in compatibility mode."""
    _quiet()
    p = Path(spec)
    kw = {}
    if not p.is_dir() and revision is not None:
        kw["revision"] = validate_revision(revision)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = TransformerBridge.boot_transformers(str(p.resolve()) if p.is_dir() else spec, device=device, dtype=dtype, **kw)
            model.enable_compatibility_mode(disable_warnings=True)
    except Exception as e:
        where = "local directory" if p.is_dir() else "hub name"
        raise LeadTermError(f"could not load {where} {spec!r} with TransformerBridge ({type(e).__name__}); "
                            "give a folder written by save_pretrained, toy:PATH, or a hub name reachable from this machine") from None
    return model


def load_model(spec, revision: str | None = None, *, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32, backend: str = "auto") -> ModelAdapter:
    """Load or wrap a model (see module docstring) and return a :class:`ModelAdapter`."""
    if not isinstance(spec, (str, os.PathLike)):
        require(revision is None, "revision= applies to hub names only; load the checkpoint yourself or pass its name")
        return adapt(spec)
    s = str(spec)
    if s.startswith("toy:"):
        require(revision is None, "toy models have no revisions; give one toy:PATH per checkpoint")
        return _load_toy(s[4:])
    require(backend in ("auto", "bridge", "hooked"), f"backend must be auto, bridge or hooked, got {backend!r}")
    use_bridge = (backend == "bridge") or (backend == "auto" and default_backend() == "bridge")
    if backend == "bridge":
        require(HAS_BRIDGE, "backend='bridge' needs TransformerLens 4.x; install transformer-lens>=4 or use backend='hooked'")
    if not use_bridge:
        require(HookedTransformer is not None,
                f"backend='hooked' needs HookedTransformer, which TransformerLens {tl_version()} removed; use backend='bridge' (or auto)")
    p = Path(s)
    if p.exists() and not p.is_dir():
        raise LeadTermError(f"{s} is a file, not a model directory; give a Hugging Face model folder, a hub name, or toy:{s} for a toy model")
    if p.is_dir():
        require(revision is None, f"{s} is a local directory: it has no revisions; list checkpoint directories instead")
        require((p / "config.json").is_file(), f"{s} has no config.json; give a folder written by save_pretrained, or toy:{s} for a toy model")
    elif revision is not None:
        validate_revision(revision)
    model = _load_bridge(s, revision, device, dtype) if use_bridge else _load_hooked(s, revision, device, dtype)
    ckpt = "" if revision is None else validate_revision(revision)
    name = str(p.resolve()) if p.is_dir() else s
    ad = ModelAdapter(model, "bridge" if use_bridge else "hooked", name, ckpt, tokenizer=_wrap_tokenizer(model, name))
    return ad


# ---------------------------------------------------------------------------
# test helper
# ---------------------------------------------------------------------------
def save_random_pythia(out_dir: str | os.PathLike, tokenizer_file: str | os.PathLike, n_layers: int = 2,
                       d_model: int = 64, n_heads: int = 4, seed: int = 0, *, vocab_size: int = 50304,
                       d_mlp: int | None = None, n_ctx: int = 2048, parallel: bool = True) -> Path:
    """Save a randomly initialised Pythia-architecture ``GPTNeoXForCausalLM`` and the Pythia tokenizer.

    The result is a local Hugging Face model directory (``config.json``,
    ``model.safetensors``, tokenizer files) that :func:`load_model` (and
    TransformerLens) load offline.  Config: vocab 50,304, rotary on 25% of each
    head, parallel attention/MLP, untied unembedding, GELU MLP of ``4 d_model`` —
    Pythia-70m in miniature.  Deterministic in ``seed``.
    """
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast

    require(d_model % n_heads == 0, f"d_model={d_model} is not divisible by n_heads={n_heads}; choose sizes that divide")
    tf = Path(tokenizer_file)
    require(tf.is_file(), f"tokenizer file {tf} not found; give the Pythia tokenizer.json (e.g. ../shared/data/gpt-neox-20b-tokenizer.json)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = GPTNeoXConfig(
        vocab_size=vocab_size, hidden_size=d_model, num_hidden_layers=n_layers, num_attention_heads=n_heads,
        intermediate_size=d_mlp or 4 * d_model, max_position_embeddings=n_ctx, rotary_pct=0.25,
        rotary_emb_base=10000, use_parallel_residual=parallel, tie_word_embeddings=False,
        bos_token_id=0, eos_token_id=0, layer_norm_eps=1e-5, hidden_act="gelu", initializer_range=0.02,
    )
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = GPTNeoXForCausalLM(cfg).eval()
    finally:
        torch.random.set_rng_state(state)
    model.save_pretrained(str(out))
    tok = PreTrainedTokenizerFast(tokenizer_file=str(tf), eos_token="<|endoftext|>", pad_token="<|padding|>")
    tok.save_pretrained(str(out))
    return out
