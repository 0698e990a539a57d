"""The checked range of every numeric parameter, in one table.

:data:`RANGES` maps a parameter name to its :class:`Range` (type, bounds, how a message says it);
:func:`check` validates a value against it and returns it as a plain Python ``int`` or ``float``.
numpy integer and float scalars are accepted wherever Python ones are; ``bool`` is never a number
here.  The public functions and the configuration classes (:mod:`tl_leadterm.config`, whose fields
name their range here and from which the CLI's options are made) call :func:`check` with their
parameter's name, so one name has one range everywhere, and a message names the parameter as
``{name}`` (see :mod:`tl_leadterm.errors`).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from . import errors
from .errors import LeadTermError

#: more token ids than any tokenizer has (and than an index tensor over the vocabulary could hold)
MAX_VOCAB = 2**31 - 1
#: torch and numpy seeds are unsigned 64-bit integers
MAX_SEED = 2**64 - 1


@dataclass(frozen=True)
class Range:
    """``kind`` (int or float) with ``lo <= value <= hi`` (None: unbounded); ``lo_open`` excludes ``lo``.

    ``say`` is how a message states the range (default: "an integer >= lo and <= hi", "a number > lo" ...).
    Floats must be finite.
    """

    kind: type
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    say: str | None = None

    def phrase(self) -> str:
        if self.say:
            return self.say
        what = "an integer" if self.kind is int else "a finite number"
        parts = []
        if self.lo is not None:
            parts.append(f"{'>' if self.lo_open else '>='} {self.lo:,}" if self.kind is int else
                         f"{'>' if self.lo_open else '>='} {self.lo:g}")
        if self.hi is not None:
            parts.append(f"<= {self.hi:,}" if self.kind is int else f"<= {self.hi:g}")
        return what + (" " + " and ".join(parts) if parts else "")


RANGES: dict[str, Range] = {
    # corpus and windows
    "seq_len": Range(int, 2),
    "vocab_size": Range(int, 2, MAX_VOCAB),
    "max_docs": Range(int, 1, say="a positive integer"),
    "word_vocab_size": Range(int, 3),
    "word_min_count": Range(int, 1),
    "pad_id": Range(int, 0, MAX_VOCAB - 1),
    "n_shards": Range(int, 1),
    "fraction": Range(float, 0, 1),
    "chunk_windows": Range(int, 1),
    "chunk_size": Range(int, 1),
    # basis
    "top_k": Range(int, 1, MAX_VOCAB, say="a positive integer"),
    "k": Range(int, 1, MAX_VOCAB),
    "working_size": Range(int, 1, MAX_VOCAB),
    "budget": Range(int, 0),
    # training
    "seed": Range(int, 0, MAX_SEED),
    "layers": Range(int, 1),
    "steps": Range(int, 0, 10**9, say=">= 0 (an integer of at most 1,000,000,000)"),
    "lr": Range(float, 0, lo_open=True, say="a positive number"),
    "batch_size": Range(int, 1),
    "every": Range(int, 1),
    "demo_steps": Range(int, 1, 10**9, say=">= 1 (an integer of at most 1,000,000,000)"),
    "batch_size_or_full": Range(int, 0, say="an integer >= 0 (0: full batch)"),
    # analysis, causal check and monitor
    "null_draws": Range(int, 0, say=">= 0 (an integer)"),
    "gradient_windows": Range(int, 1, say=">= 1 (an integer)"),
    "heldout_windows": Range(int, 1, say=">= 1 (an integer)"),
    "seeds": Range(int, 1, say=">= 1 (an integer)"),
    "top": Range(int, 0),
    "n_singular": Range(int, 0),
    "max_tokens": Range(int, 1, MAX_VOCAB),
    # distributed runs (environment variables)
    "TL_LEADTERM_DIST_TIMEOUT": Range(float, 0, 10**7, lo_open=True, say="a positive number of seconds (at most 10,000,000)"),
    "WORLD_SIZE": Range(int, 1),
    "RANK": Range(int, 0),
    "LOCAL_RANK": Range(int, 0),
}


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and type(value).__name__ != "bool_"


def check(name: str, value, *, optional: bool = False, key: str | None = None):
    """``value`` as a plain ``int``/``float`` within the range of ``key`` (default ``name``) in :data:`RANGES`.

    ``optional``: None passes (and is returned).  Otherwise a one-line :class:`LeadTermError` names
    ``{name}`` and the range.
    """
    r = RANGES[key or name]
    if value is None and optional:
        return None
    label = f"{{{name}}}" if name in errors.PARAMS else name
    if r.kind is int:
        ok = _is_int(value)
        v = int(value) if ok else None
    else:
        ok = (_is_int(value) or isinstance(value, numbers.Real)) and not isinstance(value, bool) \
            and type(value).__name__ != "bool_"
        v = float(value) if ok else None
        ok = ok and math.isfinite(v)
    if ok and r.lo is not None:
        ok = v > r.lo if r.lo_open else v >= r.lo
    if ok and r.hi is not None:
        ok = v <= r.hi
    if not ok:
        raise LeadTermError(f"{label} must be {r.phrase()}, got {_show(value)}")
    return v


def _show(value) -> str:
    """``value`` for a message: numpy scalars as their Python value, huge integers with thousands separators."""
    if hasattr(value, "item") and type(value).__module__ == "numpy":
        value = value.item()
    return f"{value:,}" if _is_int(value) and abs(value) > 10**12 else repr(value)
