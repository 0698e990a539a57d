"""The checked range of every numeric parameter, in one table.

:data:`RANGES` maps a parameter name to its :class:`Range` (type, bounds, how a message says it);
:func:`check` validates a value against it and returns it as a plain Python ``int`` or ``float``;
:func:`index` (and :func:`indices`) does the same for an index into a model's layers or heads, whose upper
bound is the model's.
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

    ``say`` is how a message states the range (default: "an integer >= lo and <= hi", "a number > lo" ...);
    a ``say`` of bounds only (``">= 0"``) is what a range error shows, and a value of the wrong type is told
    the type too (``"an integer >= 0"``).  Floats must be finite.
    """

    kind: type
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    say: str | None = None

    def phrase(self, kind: bool = False) -> str:
        """How a message states the range; ``kind``: for a value of the wrong type, so a ``say`` that gives only
        bounds (``">= 0"``) is preceded by the type (``"an integer >= 0"``)."""
        what = "an integer" if self.kind is int else "a finite number"
        if self.say:
            return f"{what} {self.say}" if kind and self.say.startswith((">", "<")) else self.say
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
    "steps": Range(int, 0, 10**9, say=">= 0 (at most 1,000,000,000)"),
    "lr": Range(float, 0, lo_open=True, say="a positive number"),
    "batch_size": Range(int, 1),
    "every": Range(int, 1),
    "demo_steps": Range(int, 1, 10**9, say=">= 1 (at most 1,000,000,000)"),
    "batch_size_or_full": Range(int, 0, say="an integer >= 0 (0: full batch)"),
    # analysis, causal check and monitor
    "null_draws": Range(int, 0, say=">= 0"),
    "gradient_windows": Range(int, 1, say=">= 1"),
    "heldout_windows": Range(int, 1, say=">= 1"),
    "seeds": Range(int, 1, say=">= 1"),
    "top": Range(int, 0),
    "n_singular": Range(int, 0),
    "max_tokens": Range(int, 1, MAX_VOCAB),
    "gradient_batch": Range(int, 1),
    "step": Range(int, 0),
    "length": Range(int, 1),
    # the explorer and the attention views
    "top_associates": Range(int, 1, say="a positive integer"),
    "n_tokens": Range(int, 1, say="a positive integer"),
    "scale": Range(float),
    # the toy model (ToyConfig: d_vocab, n_ctx and n_layers take vocab_size, seq_len and layers)
    "toy_heads": Range(int, 1, 1, say="1 (the toy model has one head per layer)"),
    # an index into a model's layers or heads (its upper bound is the model's: :func:`index`)
    "index": Range(int, 0),
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
    label = _label(name)
    if r.kind is int:
        typed = _is_int(value)
        v = int(value) if typed else None
    else:
        typed = _is_int(value) or (isinstance(value, numbers.Real) and not isinstance(value, bool)
                                   and type(value).__name__ != "bool_")
        v = _float(value) if typed else None
    ok = typed and (r.kind is int or math.isfinite(v))
    if ok and r.lo is not None:
        ok = v > r.lo if r.lo_open else v >= r.lo
    if ok and r.hi is not None:
        ok = v <= r.hi
    if not ok:
        raise LeadTermError(f"{label} must be {r.phrase(kind=not typed)}, got {_show(value)}")
    return v


def index(name: str, value, n: int, what: str):
    """``value`` as an index ``0 <= value < n`` into a model's ``n`` ``what`` (e.g. ``"layers"``): an integer
    (:func:`check`, range ``index``), then below ``n``, in one line naming ``{name}``."""
    v = check(name, value, key="index")
    label = _label(name)
    if v >= n:
        raise LeadTermError(f"{label} {v} is out of range: the model has {n} {what} (0 to {n - 1})")
    return v


def indices(name: str, values, n: int, what: str) -> list[int]:
    """Each of ``values`` (a sequence, not a string) through :func:`index`."""
    label = _label(name)
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise LeadTermError(f"{label} must be a list of {what} (integers 0 to {n - 1}), got {_show(values)}")
    return [index(name, v, n, what) for v in values]


def _label(name: str) -> str:
    """``{name}`` for a registered parameter (:data:`tl_leadterm.errors.PARAMS`; the CLI shows its flag), else the name."""
    return f"{{{name}}}" if name in errors.PARAMS else name


def _float(value) -> float:
    try:
        return float(value)
    except OverflowError:            # an integer beyond any float
        return math.inf if value > 0 else -math.inf


def _show(value) -> str:
    """``value`` for a message: numpy scalars as their Python value, large integers with thousands separators
    (beyond 30 digits, their length)."""
    if hasattr(value, "item") and type(value).__module__ == "numpy":
        value = value.item()
    if _is_int(value) and abs(value) > 10**30:
        return f"an integer of {len(str(abs(int(value))))} digits"
    return f"{value:,}" if _is_int(value) and abs(value) > 10**12 else repr(value)
