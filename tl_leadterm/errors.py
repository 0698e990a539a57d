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
#: the library parameters messages may name as ``{param}``; anything else in braces (a path, a value) is left alone
PARAMS = frozenset({
    "batch_size", "device", "dtype", "encoding", "every", "items", "labels", "layers", "lr", "max_docs", "mode", "model",
    "n_singular", "neox_steps", "no_pythia", "pack", "pythia_steps", "pythia_tokenizer", "seed", "seq_len", "shard",
    "source", "steps", "text", "text_column", "token_dtype", "token_ids", "tokenizer", "tokens", "top", "top_k",
    "vocab_size", "word_min_count", "word_vocab_size",
})


class LeadTermError(ValueError):
    """A clear, one-line, user-fixable error."""

    def __init__(self, message: str):
        self.template = re.sub(r"\s*[\r\n]+\s*", " ", str(message)).strip()   # one line; other spacing kept
        super().__init__(self.render())

    def render(self, names: Mapping[str, str] | Callable[[str], str] | None = None) -> str:
        """The message with each ``{param}`` (:data:`PARAMS`) written as ``names[param]`` (default: the parameter)."""
        look = (lambda p: p) if names is None else names if callable(names) else (lambda p: names.get(p, p))
        return _PARAM.sub(lambda m: look(m.group(1)) if m.group(1) in PARAMS else m.group(0), self.template)


def require(condition: bool, message: str) -> None:
    """Raise :class:`LeadTermError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise LeadTermError(message)
