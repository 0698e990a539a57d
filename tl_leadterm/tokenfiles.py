"""Deprecated module path: this is :mod:`tl_leadterm.corpus.tokenfiles` (the same module object); import it from there."""

import sys
import warnings

from .corpus import tokenfiles as _module

warnings.warn("tl_leadterm.tokenfiles moved to tl_leadterm.corpus.tokenfiles; import it from there", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _module
