"""The ``tl-leadterm`` command line.

Each group of subcommands lives in its own module under
:mod:`tl_leadterm.commands` and exposes ``register(subparsers)``; every
subcommand sets ``func(args) -> int``.  User errors (:class:`LeadTermError`)
print as one line ``error: ...`` and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

from . import __version__
from .errors import LeadTermError

# one module per pipeline stage that has commands
COMMAND_MODULES = ("build", "analyze", "visual", "monitor")


def _format_warning(message, category, filename, lineno, line=None):
    return f"warning: {message}\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tl-leadterm",
        description="Gradient leading terms (Im et al., ICLR 2026) for TransformerLens models: "
                    "build the basis of a corpus, train the paper's toy model, compare model weights with the basis, "
                    "and report what the leading terms explain.",
    )
    parser.add_argument("--version", action="version", version=f"tl-leadterm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f".commands.{name}", __package__)
        except ModuleNotFoundError as e:  # a command group not built yet
            if e.name == f"{__package__}.commands.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = _format_warning
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except LeadTermError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("error: out of memory; use a smaller --top-k, --dtype float32 or a smaller corpus", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
