"""Which tokens a basis covers: the ``k`` most frequent (ties broken by smaller id) or an explicit, checked list."""

from __future__ import annotations

import numbers

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from ..corpus import Windows
from ..errors import LeadTermError, require
from ..params import check


def part_frequencies(part: Windows) -> Int[Tensor, "V"]:
    """How often each token occurs as an input at a data position of one part (on CPU)."""
    V = part.vocab_size
    return torch.bincount(part.inputs[part.valid].reshape(-1).cpu(), minlength=V)[:V]


def token_frequencies(windows: Windows) -> Int[Tensor, "V"]:
    """How often each token occurs as an input at a data position."""
    return part_frequencies(windows)


def top_k_tokens(windows: Windows, k: int) -> Int[Tensor, "k"]:
    """The ``k`` most frequent tokens (ties broken by smaller id)."""
    return top_k_of(token_frequencies(windows), windows.vocab_size, k)


def top_k_of(freq: Tensor, V: int, k: int) -> Int[Tensor, "k"]:
    """The ``k`` most frequent of ``V`` tokens given their frequencies (ties broken by smaller id)."""
    k = check("top_k", k)
    require(k <= V, f"{{top_k}} {k} is larger than the vocabulary ({V} tokens); use {{top_k}} {V} or less")
    # a stable sort of -frequency keeps ties in ascending id order
    order = torch.sort(-freq, stable=True).indices
    return order[:k].clone()


def validate_token_ids(ids, vocab_size: int, what: str = "{token_ids}") -> Int[Tensor, "k"]:
    """Check an explicit token list: integers, in range, no duplicates, not empty."""
    if isinstance(ids, (Tensor, np.ndarray)):
        require(ids.ndim == 1 and (ids.dtype.is_floating_point is False if isinstance(ids, Tensor) else ids.dtype.kind in "iu"),
                f"{what} must be a 1-D list of integer token ids, got a {type(ids).__name__} of shape {list(ids.shape)}")
        ids = ids.tolist()
    require(isinstance(ids, (list, tuple)) and len(ids) > 0, f"{what} must be a non-empty list of token ids")
    bad = [i for i in ids if isinstance(i, (bool, np.bool_)) or not isinstance(i, numbers.Integral)]
    if bad:
        raise LeadTermError(f"{what} holds a non-integer entry {bad[0]!r}; give integer token ids")
    ids = [int(i) for i in ids]
    out = [i for i in ids if i < 0 or i >= vocab_size]
    if out:
        raise LeadTermError(f"{what} holds token id {out[0]} outside [0, {vocab_size}); give ids below the vocabulary size")
    seen, dups = set(), []
    for i in ids:
        (dups.append(i) if i in seen else seen.add(i))
    if dups:
        raise LeadTermError(f"{what} lists token id {dups[0]} more than once; give each id once")
    return torch.tensor(ids, dtype=torch.long)
