"""The one-call entry points: choose the tokens, run both passes, assemble the :class:`Basis`."""

from __future__ import annotations

import hashlib
from typing import Iterable, Sequence

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from ..corpus import Windows
from ..streams import WindowStream
from ..errors import LeadTermError, require
from ..io import resolve_device
from .memory import Mode, choose_mode
from .passes import (
    BasisSpec, Compositions, SecondPassStats, check_pass_memory, compositions, first_pass, second_pass,
)
from .value import Basis


def token_frequencies(windows: Windows) -> Int[Tensor, "V"]:
    """How often each token occurs as an input at a data position."""
    return torch.bincount(windows.inputs[windows.valid].cpu(), minlength=windows.vocab_size)[: windows.vocab_size]


def top_k_tokens(windows: Windows, k: int) -> Int[Tensor, "k"]:
    """The ``k`` most frequent tokens (ties broken by smaller id)."""
    return top_k_of(token_frequencies(windows), windows.vocab_size, k)


def top_k_of(freq: Tensor, V: int, k: int) -> Int[Tensor, "k"]:
    """The ``k`` most frequent of ``V`` tokens given their frequencies (ties broken by smaller id)."""
    require(isinstance(k, int) and not isinstance(k, bool) and k >= 1, f"{{top_k}} must be a positive integer, got {k!r}")
    require(k <= V, f"{{top_k}} {k} is larger than the vocabulary ({V} tokens); use {{top_k}} {V} or less")
    # a stable sort of -frequency keeps ties in ascending id order
    order = torch.sort(-freq, stable=True).indices
    return order[:k].clone()


def validate_token_ids(ids, vocab_size: int, what: str = "{token_ids}") -> Int[Tensor, "k"]:
    """Check an explicit token list: integers, in range, no duplicates, not empty."""
    if isinstance(ids, Tensor):
        ids = ids.tolist()
    require(isinstance(ids, (list, tuple)) and len(ids) > 0, f"{what} must be a non-empty list of token ids")
    bad = [i for i in ids if isinstance(i, bool) or not isinstance(i, int)]
    if bad:
        raise LeadTermError(f"{what} holds a non-integer entry {bad[0]!r}; give integer token ids")
    out = [i for i in ids if i < 0 or i >= vocab_size]
    if out:
        raise LeadTermError(f"{what} holds token id {out[0]} outside [0, {vocab_size}); give ids below the vocabulary size")
    seen, dups = set(), []
    for i in ids:
        (dups.append(i) if i in seen else seen.add(i))
    if dups:
        raise LeadTermError(f"{what} lists token id {dups[0]} more than once; give each id once")
    return torch.tensor(ids, dtype=torch.long)


def compute_basis(windows: Windows, *, top_k: int | None = None, token_ids=None, mode: Mode = "auto",
                  dtype: torch.dtype = torch.float64, device=None, progress: bool = True,
                  chunk_size: int | None = None) -> Basis:
    """The basis of ``windows`` over ``top_k`` most frequent tokens or explicit ``token_ids``.

    Two passes (see module docstring).  ``mode`` is ``"auto"`` (exact when it fits,
    else merge-other with a warning), ``"exact"`` or ``"merge-other"``.  ``windows`` may be a
    :class:`~tl_leadterm.streams.WindowStream` (a corpus too large to hold): it is then read a
    chunk at a time, with one more pass for the token frequencies when ``top_k`` is given.
    """
    require((top_k is None) != (token_ids is None), "give exactly one of {top_k} or {token_ids}")
    if isinstance(windows, WindowStream):
        ids = top_k_of(windows.token_frequencies(), windows.vocab_size, top_k) if top_k is not None else token_ids
        return compute_basis_sharded(windows, ids, mode=mode, dtype=dtype, device=device, progress=progress)
    _check_run(windows, dtype, device)
    V = windows.vocab_size
    ids = top_k_tokens(windows, top_k) if top_k is not None else validate_token_ids(token_ids, V)
    resolved = choose_mode(V, ids.numel(), mode, dtype, device)
    spec = BasisSpec(V, ids, resolved)
    s1 = first_pass(windows, spec, dtype=dtype, device=device, progress=progress, chunk_size=chunk_size)
    comp = compositions(s1, consume=True)
    del s1
    s2 = second_pass(windows, comp, progress=progress, chunk_size=chunk_size)
    comp.centred_value_output = None  # W x W, no longer needed
    return assemble(comp, s2, windows)


def assemble(comp: Compositions, s2: SecondPassStats, windows: Windows | None = None, *,
             tokenizer_json: str | None = None, corpus_fingerprint: str = "", corpus_source: str = "") -> Basis:
    """Build the :class:`Basis` from pass-1 compositions and (merged) pass-2 sums."""
    require(s2.checksum == comp.checksum, "the second pass was computed with another first pass; recompute it with this one's Ḡ")
    require(s2.n == comp.n, f"pass 2 covered {s2.n} positions but pass 1 covered {comp.n}; run both passes over the same corpus")
    if windows is not None:
        tokenizer_json = windows.tokenizer.to_json() if windows.tokenizer is not None else tokenizer_json
        corpus_fingerprint = windows.fingerprint
        corpus_source = windows.source
    b = comp.blocks
    return Basis(
        bigram=b["bigram"], context=b["context"], interchange=b["interchange"], value=b["value"],
        value_output=b["value_output"], key_query=s2.key_query / s2.n, position=s2.position / s2.n,
        token_ids=comp.spec.token_ids.clone(), vocab_size=comp.spec.vocab_size, seq_len=comp.seq_len,
        n_positions=comp.n, mode=comp.spec.mode, tokenizer_json=tokenizer_json,
        corpus_fingerprint=corpus_fingerprint, corpus_source=corpus_source,
    )


def compute_basis_sharded(shards: Iterable[Windows] | Sequence[Windows], token_ids, *, mode: Mode = "auto",
                          dtype: torch.dtype = torch.float64, device=None, progress: bool = False) -> Basis:
    """The basis of a corpus given as shards (e.g. streamed): pass 1 per shard, merge, pass 2 per shard, merge.

    ``shards`` must be re-iterable (a list, or an object whose ``__iter__`` restarts the stream).
    Every shard must come from the same tokenizer.  The file records that tokenizer and the
    fingerprint of the shards' concatenation, the same as :func:`compute_basis` of the whole corpus.
    """
    spec, first, tok, sources = None, None, None, []
    digest = hashlib.sha256()  # Windows.fingerprint of the concatenation: tokens (pass 1), lengths (pass 2), |V|
    for w in _progress(shards, progress, "basis pass 1/2"):
        _check_run(w, dtype, device)
        if spec is None:
            ids = validate_token_ids(token_ids, w.vocab_size)
            spec = BasisSpec(w.vocab_size, ids, choose_mode(w.vocab_size, ids.numel(), mode, dtype, device))
            tok = w.tokenizer
        _check_same_tokenizer(tok, w.tokenizer)
        digest.update(_int64_bytes(w.tokens))
        sources.append(w.source)
        s = first_pass(w, spec, dtype=dtype, device=device, progress=False)
        first = s if first is None else first + s
    require(first is not None, "no shards given; give at least one shard of windows")
    comp = compositions(first, consume=True)
    second = None
    for w in _progress(shards, progress, "basis pass 2/2"):
        digest.update(_int64_bytes(w.lengths))
        s = second_pass(w, comp, progress=False)
        second = s if second is None else second + s
    digest.update(str(spec.vocab_size).encode())
    return assemble(comp, second, tokenizer_json=tok.to_json() if tok is not None else None,
                    corpus_fingerprint=digest.hexdigest()[:16], corpus_source="+".join(dict.fromkeys(sources)))


def _progress(shards, progress: bool, desc: str):
    """The shards, with a bar counting positions when there is more than one."""
    from tqdm.auto import tqdm

    total = getattr(shards, "n_positions", None)
    if not progress or (isinstance(shards, Sequence) and len(shards) < 2 and total is None):
        yield from shards
        return
    bar = tqdm(total=total, desc=desc, unit="tok", unit_scale=True, leave=False)
    try:
        for w in shards:
            yield w
            bar.update(w.n_positions)
    finally:
        bar.close()


def _check_run(windows, dtype, device) -> None:
    """The arguments every entry point shares: the right types, a usable device, memory for the passes."""
    require(isinstance(windows, Windows), f"expected token windows (load_corpus or windows_from_tokens), got {type(windows).__name__}")
    require(dtype in (torch.float64, torch.float32), f"{{dtype}} must be torch.float64 or torch.float32, got {dtype!r}")
    check_pass_memory(windows.seq_len, resolve_device(device))


def _int64_bytes(t: Tensor) -> bytes:
    return np.ascontiguousarray(t.cpu().numpy().astype(np.int64)).tobytes()


def _check_same_tokenizer(a, b) -> None:
    fa = a.identity["fingerprint"] if a is not None else None
    fb = b.identity["fingerprint"] if b is not None else None
    require(fa == fb, "the shards were tokenized with different tokenizers; tokenize every shard with the same one")
