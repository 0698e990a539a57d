"""The one-call entry points of one process: choose the tokens, run both passes, assemble the :class:`Basis`
(all through :func:`~tl_leadterm.basis.pipeline.run_pipeline`)."""

from __future__ import annotations

from typing import Iterable, Sequence

import torch

from ..corpus import Windows, WindowStream
from ..errors import require
from .memory import Mode
from .pipeline import LocalReduction, assemble, check_part, run_pipeline
from .tokens import token_frequencies, top_k_of, top_k_tokens, validate_token_ids
from .value import Basis

__all__ = ["compute_basis", "compute_basis_sharded", "assemble", "token_frequencies", "top_k_of", "top_k_tokens",
           "validate_token_ids"]


def compute_basis(windows: Windows, *, top_k: int | None = None, token_ids=None, mode: Mode = "auto",
                  dtype: torch.dtype = torch.float64, device=None, progress: bool = True,
                  chunk_size: int | None = None) -> Basis:
    """The basis of ``windows`` over ``top_k`` most frequent tokens or explicit ``token_ids``.

    Two passes (see :mod:`~tl_leadterm.basis.passes`).  ``mode`` is ``"auto"`` (exact when it fits,
    else merge-other with a warning), ``"exact"`` or ``"merge-other"``.  ``windows`` may be a
    :class:`~tl_leadterm.corpus.WindowStream` (a corpus too large to hold): it is then read a
    chunk at a time, with one more pass for the token frequencies when ``top_k`` is given.
    """
    require((top_k is None) != (token_ids is None), "give exactly one of {top_k} or {token_ids}")
    if not isinstance(windows, WindowStream):
        check_part(windows)
    return run_pipeline(windows, LocalReduction(), top_k=top_k, token_ids=token_ids, mode=mode, dtype=dtype, device=device,
                        progress=progress, chunk_size=None if isinstance(windows, WindowStream) else chunk_size)


def compute_basis_sharded(shards: Iterable[Windows] | Sequence[Windows], token_ids, *, mode: Mode = "auto",
                          dtype: torch.dtype = torch.float64, device=None, progress: bool = False) -> Basis:
    """The basis of a corpus given as shards (e.g. streamed): pass 1 per shard, merge, pass 2 per shard, merge.

    ``shards`` must be re-iterable (a list, or an object whose ``__iter__`` restarts the stream).
    Every shard must come from the same tokenizer.  The file records that tokenizer and the
    fingerprint of the shards' concatenation, the same as :func:`compute_basis` of the whole corpus.
    """
    if isinstance(shards, Windows):
        shards = [shards]
    return run_pipeline(shards, LocalReduction(), token_ids=token_ids, mode=mode, dtype=dtype, device=device,
                        progress=progress)
