"""User-facing errors.

Every problem a user can fix (bad input, a file that does not fit, a model that
does not match its basis) is raised as :class:`LeadTermError` with a one-line
message that says what to do.  The CLI prints it as ``error: <message>`` and
exits with status 2; no traceback from deep inside torch reaches the user.

A message names the parameter it is about as ``{name}`` (the Python parameter,
e.g. ``{top_k}``).  ``str(error)`` shows the Python name (``top_k``); the CLI
shows the flag that sets it (``--top-k``), found from its own argument parser,
so library messages never hard-code command-line flags.
"""

from __future__ import annotations

import re
from typing import Callable, Mapping

_PARAM = re.compile(r"\{([a-z][a-z0-9_]*)\}")


class LeadTermError(ValueError):
    """A clear, one-line, user-fixable error."""

    def __init__(self, message: str):
        self.template = " ".join(str(message).split())
        super().__init__(self.render())

    def render(self, names: Mapping[str, str] | Callable[[str], str] | None = None) -> str:
        """The message with each ``{param}`` written as ``names[param]`` (default: the parameter itself)."""
        if names is None:
            return _PARAM.sub(lambda m: m.group(1), self.template)
        look = names if callable(names) else (lambda p: names.get(p, p))
        return _PARAM.sub(lambda m: look(m.group(1)), self.template)


def require(condition: bool, message: str) -> None:
    """Raise :class:`LeadTermError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise LeadTermError(message)
