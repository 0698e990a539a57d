"""Deprecated module path: shards run as separate jobs are :mod:`tl_leadterm.basis.shards`.  Names read from
here still work, with a DeprecationWarning that says where they live now."""

import warnings

_MOVED = ("SHARD_FORMAT", "PASS2_FORMAT", "DTYPES", "TENSORS", "BLOCKS", "SHARED", "ShardRound", "parse_shard",
          "shard_pass1", "shard_pass2", "merge_pass1", "merge_pass2", "load_pass2_input")


def __getattr__(name: str):
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from .basis import shards

    warnings.warn(f"tl_leadterm.shards.{name} moved to tl_leadterm.basis.shards.{name}; import it from there",
                  DeprecationWarning, stacklevel=2)
    return getattr(shards, name)


def __dir__():
    return sorted(_MOVED)
