"""Subcommands of ``tl-leadterm``; each module has ``register(subparsers)``."""
