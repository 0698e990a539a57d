"""Deprecated module path: this is :mod:`tl_leadterm.corpus.streams` (the same module object); import it from there."""

import sys
import warnings

from .corpus import streams as _module

warnings.warn("tl_leadterm.streams moved to tl_leadterm.corpus.streams; import it from there", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _module
