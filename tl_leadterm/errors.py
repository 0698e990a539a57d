"""User-facing errors.

Every problem a user can fix (bad input, a file that does not fit, a model that
does not match its basis) is raised as :class:`LeadTermError` with a one-line
message that says what to do.  The CLI prints it as ``error: <message>`` and
exits with status 2; no traceback from deep inside torch reaches the user.
"""

from __future__ import annotations


class LeadTermError(ValueError):
    """A clear, one-line, user-fixable error."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def require(condition: bool, message: str) -> None:
    """Raise :class:`LeadTermError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise LeadTermError(message)
