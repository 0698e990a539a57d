"""The package's logging: one logger, and a context that quiets other libraries for a while.

``logger`` is ``logging.getLogger("tl_leadterm")`` (with a ``NullHandler``, as a library should:
the application decides where records go; ``logging.basicConfig(level=logging.INFO)`` shows
them).  Modules log through children of it (:func:`get_logger`).

The package never changes the root logger or another library's logging for good.  Where a
third-party library is noisy (model loading in ``transformers`` / TransformerLens, hub retries,
``datasets``), :func:`quiet` raises the named loggers to ERROR only inside a ``with`` block
and restores every level (and handler) it touched afterwards.  Like the ``logging`` module's
own configuration calls, it is not meant to run concurrently from several threads.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

#: the package logger; everything the package logs goes through it or its children
logger = logging.getLogger("tl_leadterm")
logger.addHandler(logging.NullHandler())

#: the libraries whose chatter :func:`quiet` hides by default
NOISY = ("transformers", "huggingface_hub", "datasets", "transformer_lens")


def get_logger(name: str) -> logging.Logger:
    """The package logger's child for module ``name`` (e.g. ``tl_leadterm.models.loading``)."""
    return logging.getLogger(name) if name == "tl_leadterm" or name.startswith("tl_leadterm.") else logger.getChild(name)


def _configure_transformers() -> None:
    """Let ``transformers`` configure its library logger now (it does so once, lazily, and would
    otherwise overwrite the level set inside :func:`quiet` and be 'restored' to the wrong one)."""
    try:
        from transformers.utils import logging as hf_logging
        hf_logging.get_verbosity()
    except Exception:  # pragma: no cover - transformers comes with transformer-lens
        pass


@contextlib.contextmanager
def quiet(*names: str, root: bool = False, level: int = logging.ERROR) -> Iterator[None]:
    """Inside the block: the loggers ``names`` (default :data:`NOISY`), and the root logger when
    ``root`` (libraries that log through ``logging.warning(...)`` directly), drop records below
    ``level``.  Afterwards every level is what it was.  A root logger without handlers gets a
    ``NullHandler`` for the duration, so a library's ``logging.warning`` cannot call
    ``basicConfig`` and install a handler for good."""
    names = names or NOISY
    if "transformers" in names:
        _configure_transformers()
    loggers = [logging.getLogger(n) for n in names] + ([logging.getLogger()] if root else [])
    saved = [(lg, lg.level) for lg in loggers]
    guard = None
    if root and not logging.getLogger().handlers:
        guard = logging.NullHandler()
        logging.getLogger().addHandler(guard)
    try:
        for lg in loggers:
            if lg.getEffectiveLevel() < level:
                lg.setLevel(level)
        yield
    finally:
        for lg, lv in saved:
            lg.setLevel(lv)
        if guard is not None:
            logging.getLogger().removeHandler(guard)
