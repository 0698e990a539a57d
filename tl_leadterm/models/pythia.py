"""Pythia-architecture models offline: a random one saved as a Hugging Face folder, and a small one trained
from random initialisation with its checkpoints on Pythia's log-spaced schedule.

Config (:func:`pythia_config`): GPT-NeoX with rotary on 25% of each head, parallel
attention/MLP, untied unembedding, GELU MLP of ``4 d_model`` (Pythia-70m in miniature).
The tokenizer saved with the model is the Pythia tokenizer (a ``tokenizer.json`` file) or
any :class:`~tl_leadterm.tokenization.Tokenizer`; the paper's word-level tokenizer is saved as
a Hugging Face fast tokenizer (:meth:`~tl_leadterm.tokenization.WordTokenizer.to_hf`), so the
whole pipeline runs with no hub and no shared files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..corpus import Windows
from ..errors import require
from .loading import pythia_steps


def pythia_config(vocab_size: int = 50304, n_layers: int = 2, d_model: int = 64, n_heads: int = 4, *,
                  d_mlp: int | None = None, n_ctx: int = 2048, parallel: bool = True, eos_id: int = 0):
    from transformers import GPTNeoXConfig

    require(d_model % n_heads == 0, f"d_model={d_model} is not divisible by n_heads={n_heads}; choose sizes that divide")
    return GPTNeoXConfig(
        vocab_size=vocab_size, hidden_size=d_model, num_hidden_layers=n_layers, num_attention_heads=n_heads,
        intermediate_size=d_mlp or 4 * d_model, max_position_embeddings=n_ctx, rotary_pct=0.25,
        rotary_emb_base=10000, use_parallel_residual=parallel, tie_word_embeddings=False,
        bos_token_id=eos_id, eos_token_id=eos_id, layer_norm_eps=1e-5, hidden_act="gelu", initializer_range=0.02,
    )


def _hf_tokenizer(tokenizer):
    """A ``transformers`` fast tokenizer from a tokenizer.json path or a tl_leadterm Tokenizer."""
    from transformers import PreTrainedTokenizerFast

    from ..tokenization import Tokenizer

    if isinstance(tokenizer, Tokenizer):
        return tokenizer.to_hf()
    from ..io import input_path

    tf = input_path(tokenizer, "tokenizer file", "give the Pythia tokenizer.json (e.g. ../shared/data/gpt-neox-20b-tokenizer.json)")
    return PreTrainedTokenizerFast(tokenizer_file=str(tf), eos_token="<|endoftext|>", pad_token="<|padding|>")


def _check_shape(n_layers, d_model, n_heads, seed, **more) -> tuple:
    """The numbers of a Pythia-architecture model as plain ints (numpy integers welcome), in one line each when
    wrong (``d_model`` a multiple of ``n_heads``): ``(n_layers, d_model, n_heads, seed, *more values)``."""
    from ..params import check

    n_layers, d_model = check("n_layers", n_layers, key="layers"), check("d_model", d_model, key="length")
    n_heads, seed = check("n_heads", n_heads, key="length"), check("seed", seed)
    require(d_model % n_heads == 0, f"d_model ({d_model}) must be a multiple of n_heads ({n_heads})")
    keys = {"vocab_size": "vocab_size", "n_ctx": "length", "d_mlp": "length"}
    return (n_layers, d_model, n_heads, seed, *(check(k, v, key=keys[k], optional=k == "d_mlp") for k, v in more.items()))


def save_random_pythia(out_dir: str | os.PathLike, tokenizer_file, n_layers: int = 2,
                       d_model: int = 64, n_heads: int = 4, seed: int = 0, *, vocab_size: int = 50304,
                       d_mlp: int | None = None, n_ctx: int = 2048, parallel: bool = True) -> Path:
    """Save a randomly initialised Pythia-architecture ``GPTNeoXForCausalLM`` and its tokenizer.

    The result is a local Hugging Face model directory (``config.json``, ``model.safetensors``,
    tokenizer files) that :func:`~tl_leadterm.models.load_model` (and TransformerLens) load
    offline.  ``tokenizer_file``: the Pythia ``tokenizer.json``, or a tl_leadterm Tokenizer
    (then pass its ``vocab_size``).  Deterministic in ``seed``.
    """
    from transformers import GPTNeoXForCausalLM

    n_layers, d_model, n_heads, seed, vocab_size, n_ctx, d_mlp = _check_shape(
        n_layers, d_model, n_heads, seed, vocab_size=vocab_size, n_ctx=n_ctx, d_mlp=d_mlp)
    tok = _hf_tokenizer(tokenizer_file)
    cfg = pythia_config(vocab_size, n_layers, d_model, n_heads, d_mlp=d_mlp, n_ctx=n_ctx, parallel=parallel,
                        eos_id=tok.eos_token_id or 0)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = GPTNeoXForCausalLM(cfg).eval()
    finally:
        torch.random.set_rng_state(state)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def train_pythia(windows: Windows, out_dir: str | os.PathLike, *, steps: int, n_layers: int = 2, d_model: int = 64,
                 n_heads: int = 4, lr: float = 3e-3, batch_size: int = 16, warmup: int = 4, seed: int = 0,
                 tokenizer=None, progress: bool = True, device: str | torch.device = "cpu",
                 callback: Callable[[int, object, float], None] | None = None) -> dict[int, Path]:
    """Train a Pythia-architecture model from random initialisation on ``windows`` (AdamW, as Pythia).

    Saves ``out_dir/step{N}`` (model and tokenizer) at Pythia's schedule up to ``steps``
    (:func:`~tl_leadterm.models.loading.pythia_steps`) and returns ``{step: folder}``.
    ``tokenizer`` defaults to the windows' own; ``callback(step, model, loss)`` runs after
    each optimiser step (e.g. a training monitor).  ``device``: where the model trains (``"cuda"``); the
    checkpoints are saved from there (the same files a CPU run of the same seed writes up to float rounding).
    """
    from transformers import GPTNeoXForCausalLM

    from ..io import resolve_device

    from ..params import check

    steps, lr = check("steps", steps), check("lr", lr)
    require(steps >= 1, f"{{steps}} must be >= 1 (got {steps})")
    batch_size, warmup = check("batch_size", batch_size), check("warmup", warmup, key="step")
    n_layers, d_model, n_heads, seed = _check_shape(n_layers, d_model, n_heads, seed)
    tokenizer = tokenizer if tokenizer is not None else windows.tokenizer
    require(tokenizer is not None, "the windows carry no tokenizer; pass tokenizer= (saved with every checkpoint)")
    out = Path(out_dir)
    init = save_random_pythia(out / "step0", tokenizer, n_layers=n_layers, d_model=d_model, n_heads=n_heads, seed=seed,
                              vocab_size=windows.vocab_size, n_ctx=max(2048, windows.seq_len + 1))
    saved = {0: init}
    dev = resolve_device(device)
    model = GPTNeoXForCausalLM.from_pretrained(str(init)).to(dev)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    save_at = set(pythia_steps(steps))
    g = torch.Generator().manual_seed(seed)
    order, cursor = torch.randperm(windows.n_windows, generator=g), 0
    for step in tqdm(range(1, steps + 1), desc="GPT-NeoX training", disable=not progress, leave=False):
        if cursor + batch_size > windows.n_windows:
            order, cursor = torch.randperm(windows.n_windows, generator=g), 0
        w = windows[order[cursor:cursor + batch_size]]
        cursor += batch_size
        labels = w.tokens.masked_fill(_padding(w), -100)
        loss = model(input_ids=w.tokens.to(dev), labels=labels.to(dev)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if callback is not None:
            callback(step, model, loss.item())
        if step in save_at:
            d = out / f"step{step}"
            model.save_pretrained(str(d))
            for f in init.iterdir():
                if f.name.startswith(("tokenizer", "special_tokens")):
                    (d / f.name).write_bytes(f.read_bytes())
            saved[step] = d
    model.eval()
    return saved


def _padding(w: Windows) -> torch.Tensor:
    t = torch.arange(w.tokens.shape[1])
    return t[None, :] >= w.lengths[:, None]
