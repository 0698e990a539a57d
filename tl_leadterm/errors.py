"""User-facing errors.

Every problem a user can fix (bad input, a file that does not fit, a model that
does not match its basis) is raised as :class:`LeadTermError` with a one-line
message that says what to do.  The CLI prints it as ``error: <message>`` and
exits with status 2; no traceback from deep inside torch reaches the user.

A message names the parameter it is about as ``{name}`` (the Python parameter,
e.g. ``{top_k}``; ``PARAMS`` lists them: the fields of :mod:`tl_leadterm.config`,
the ranges of :mod:`tl_leadterm.params` and :data:`LIBRARY_PARAMS`).  ``str(error)`` shows the Python
name (``top_k``); the CLI shows the flag that sets it (``--top-k``), found from its
own argument parser, so a message about a parameter does not hard-code its flag.
Some library messages do name command-line flags or commands literally: those that
describe a workflow only the CLI has (the rounds of a sharded basis: ``basis --shard
I/N --stats-out``, then ``merge --stats``), or that offer
the CLI spelling beside the Python one (``{gradient} (or --gradient-corpus)``, a
warning's ``max_docs, --max-docs``), or that name another tool's flag
(``torchrun --nproc_per_node``); the demo's report notes name its own flags.
"""

from __future__ import annotations

import re
from typing import Callable, Mapping

_PARAM = re.compile(r"\{([a-z][a-z0-9_]*)\}")
#: parameters of library functions that are neither a configuration field nor a key of params.RANGES
LIBRARY_PARAMS = frozenset({"model", "labels", "shard", "gradient"})
_PARAMS: frozenset = LIBRARY_PARAMS


def register_params(names) -> None:
    """Add parameter names messages may use as ``{name}``; :mod:`tl_leadterm.config` registers its fields and
    the ranges of :mod:`tl_leadterm.params` when it is imported (the package imports it first)."""
    global _PARAMS
    _PARAMS = _PARAMS | frozenset(names)


def __getattr__(name: str):
    """``errors.PARAMS``: the frozenset of registered parameters (config fields, params.RANGES, LIBRARY_PARAMS);
    anything else in braces (a path, a value) is left alone."""
    if name == "PARAMS":
        return _PARAMS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class LeadTermError(ValueError):
    """A clear, one-line, user-fixable error."""

    def __init__(self, message: str):
        self.template = re.sub(r"\s*[\r\n]+\s*", " ", str(message)).strip()   # one line; other spacing kept
        super().__init__(self.render())

    def render(self, names: Mapping[str, str] | Callable[[str], str] | None = None) -> str:
        """The message with each ``{param}`` (:data:`PARAMS`) written as ``names[param]`` (default: the parameter)."""
        look = (lambda p: p) if names is None else names if callable(names) else (lambda p: names.get(p, p))
        return _PARAM.sub(lambda m: look(m.group(1)) if m.group(1) in _PARAMS else m.group(0), self.template)


def require(condition: bool, message: str) -> None:
    """Raise :class:`LeadTermError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise LeadTermError(message)
