"""The ``tl-leadterm`` command line.

Each group of subcommands lives in its own module under
:mod:`tl_leadterm.commands` and exposes ``register(subparsers)``; every
subcommand sets ``func(args) -> int`` and stays thin: the work is done by the
library.  User errors (:class:`LeadTermError`) print as one line ``error: ...``
and exit with status 2; a library message names parameters (``{top_k}``) and
the CLI writes them as the flags that set them (``--top-k``).
"""

from __future__ import annotations

import argparse
import signal
import sys
import warnings

from ._version import __version__
from .commands import analyze, build, visual
from .config import FLAG_NAMES
from .errors import LeadTermError

# one module per pipeline stage that has commands
COMMAND_MODULES = (build, analyze, visual)
# library parameters whose flag is not named after them (the config's table, named once)
PARAM_FLAGS = FLAG_NAMES


def _format_warning(message, category, filename, lineno, line=None):
    return f"warning: {message}\n"


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, ``error: ...`` saying where the options are listed (no usage
    block: the user asked for nothing but the fix), exit status 2 like every other user error."""

    def error(self, message: str):
        message = " ".join(str(message).split())
        self.exit(2, f"error: {message}; run '{self.prog} --help' for the options\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="tl-leadterm",
        description="Gradient leading terms (Im et al., ICLR 2026) for TransformerLens models: "
                    "build the basis of a corpus, train the paper's toy model, compare model weights with the basis, "
                    "and report what the leading terms explain.",
    )
    parser.add_argument("--version", action="version", version=f"tl-leadterm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    for command in sub.choices.values():
        command.set_defaults(_flags=_flag_names(command))
    return parser


def _flag_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """``{parameter: flag}`` for one subcommand: each option's dest and its long option string, over the
    parameters whose flag is not named after them (:data:`tl_leadterm.config.FLAG_NAMES`)."""
    names = dict(PARAM_FLAGS)
    for action in parser._actions:
        longs = [o for o in action.option_strings if o.startswith("--")]
        if longs:
            names[action.dest] = longs[0]
    return names


class Terminated(BaseException):
    """SIGTERM, raised like Ctrl-C so that every staging folder and temporary file is cleaned up."""


def _on_sigterm(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = _format_warning
    try:
        signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread (e.g. called from a worker): leave signals alone
        pass
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        print(f"error: give a command ({', '.join(parser._subparsers._group_actions[0].choices)}); run 'tl-leadterm "
              "--help' for what each does", file=sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except LeadTermError as e:
        print(f"error: {e.render(getattr(args, '_flags', None))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("error: terminated (SIGTERM); nothing was written", file=sys.stderr)
        return 143
    except OSError as e:
        import errno
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"error: no space left on the device{f' writing {e.filename}' if e.filename else ''}; free some space or "
              "write to another disk", file=sys.stderr)
        return 2
    except MemoryError:
        print("error: out of memory (an allocation the up-front estimates did not foresee); nothing was written; "
              "try a smaller problem (fewer tokens, a shorter --seq-len, a smaller model) or a machine with more memory",
              file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
