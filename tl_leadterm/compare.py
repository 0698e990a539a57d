"""The stable analysis API (kept for ``from tl_leadterm.compare import ...``); the code lives in
:mod:`tl_leadterm.analysis`, one module per job, where every definition is documented.

``analyze_toy(model, basis, dictionary=False, checkpoint="") -> DataFrame``
``analyze_model(adapter_or_model, basis, checkpoint="", *, circuits=True) -> DataFrame``
``sweep(model, checkpoints, basis, *, backend="auto", device="cpu", circuits=True, dictionary=False) -> DataFrame``
``causal_check(adapter_or_model, basis, tokens, *, seeds=5, sites=None, layers=None, heads=None) -> DataFrame``
``quick_measures(adapter_or_model, basis) -> dict[str, float]``  (cheap; for training monitors)
"""

from .analysis import *  # noqa: F401,F403
from .analysis import __all__  # noqa: F401
