"""How much memory a basis computation needs, and which mode (exact / merge-other) it runs in."""

from __future__ import annotations

import math
import warnings
from typing import Literal

import torch

from ..errors import LeadTermError, require
from ..io import available_bytes
from ..params import check

Mode = Literal["auto", "exact", "merge-other"]
# Peak memory, measured (benchmarks/bench_basis.py): compositions() holds at most 3 dense W x W
# working matrices (B̄, Φ̄ or Ḡ, M) while the output grows to 5 k x k blocks, plus the k x k
# Q̄ accumulator of pass 2; chunk temporaries stay under _FIXED_BYTES.
_WORKING_MATRICES = 3   # W x W
_OUTPUT_MATRICES = 5    # k x k
_FIXED_BYTES = 512 * 2**20


def estimate_bytes(working_size: int, dtype: torch.dtype = torch.float64, k: int | None = None) -> int:
    """Peak memory of a basis computation of ``k`` tokens (default: all) with a ``working_size`` vocabulary.

    ``3 W² + 5 k²`` matrix entries plus 512 MB for chunk temporaries: with k = W that is
    8 W², e.g. about 9.1 GB for merge-other at k = 16,384 in float32 (measured peak 8.6 GB).
    """
    working_size = check("working_size", working_size)
    k = working_size if k is None else check("k", k)
    itemsize = torch.finfo(dtype).bits // 8
    return (_WORKING_MATRICES * working_size * working_size + _OUTPUT_MATRICES * k * k) * itemsize + _FIXED_BYTES


def _gb(b: float) -> str:
    return f"{b / 2**30:.1f} GB"


def _largest_k(budget: int, dtype: torch.dtype) -> int:
    """The largest k whose merge-other basis fits in ``budget`` bytes (0 if none)."""
    itemsize = torch.finfo(dtype).bits // 8
    entries = max(0, budget - _FIXED_BYTES) // itemsize
    k = int(math.isqrt(entries // (_WORKING_MATRICES + _OUTPUT_MATRICES)))
    while k > 0 and estimate_bytes(k + 1, dtype, k) > budget:
        k -= 1
    return k


#: ``auto`` uses exact mode only up to this vocabulary size (per device type), for time.
AUTO_EXACT_MAX_VOCAB = {"cpu": 8_192, "cuda": 65_536}


def choose_mode(vocab_size: int, k: int, mode: Mode, dtype: torch.dtype, device=None, budget: int | None = None) -> str:
    """Resolve ``auto``; refuse up front what was explicitly asked for and will not fit."""
    vocab_size, k = check("vocab_size", vocab_size), check("k", k)
    budget = available_bytes(device) if budget is None else check("budget", budget)
    exact_need, merge_need = estimate_bytes(vocab_size, dtype, k), estimate_bytes(k + 1, dtype, k)
    dname = str(dtype).replace("torch.", "")
    dev_type = torch.device(device).type if device is not None else "cpu"
    vocab_cap = AUTO_EXACT_MAX_VOCAB.get(dev_type, AUTO_EXACT_MAX_VOCAB["cpu"])
    too_slow = mode == "auto" and vocab_size > vocab_cap and k < vocab_size
    if mode == "exact":
        require(exact_need <= budget,
                f"exact mode needs about {_gb(exact_need)} for |V|={vocab_size} in {dname} but {_gb(budget)} is available; "
                "use {mode} merge-other (or auto), {dtype} float32, or a smaller vocabulary")
        return "exact"
    if mode == "merge-other" or (mode == "auto" and (exact_need > budget or too_slow)):
        if merge_need > budget:
            fit = _largest_k(budget, dtype)
            raise LeadTermError(
                f"a basis of k={k} tokens needs about {_gb(merge_need)} in {dname} but {_gb(budget)} is available; "
                + (f"use {{top_k}} {fit} or less" if fit >= 1 else "free some memory")
                + (" or {dtype} float32" if dtype == torch.float64 else ""))
        if mode == "auto":
            why = (f"needs about {_gb(exact_need)} ({_gb(budget)} available)" if exact_need > budget else
                   f"takes dense |V|^3 products, too slow on {dev_type} above |V|={vocab_cap:,} (ask for mode exact to run it anyway)")
            warnings.warn(
                f"the exact basis over |V|={vocab_size} {why}: "
                f"using the merge-other approximation (tokens outside the {k} chosen share one class-average row); "
                "the file records mode=merge-other", stacklevel=3)
        return "merge-other"
    if mode != "auto":
        raise LeadTermError(f"mode must be 'auto', 'exact' or 'merge-other', got {mode!r}")
    return "exact"

