"""Deprecated module path: this is :mod:`tl_leadterm.corpus.documents` (the same module object); import it from there."""

import sys
import warnings

from .corpus import documents as _module

warnings.warn("tl_leadterm.documents moved to tl_leadterm.corpus.documents; import it from there", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _module
