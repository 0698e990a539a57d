"""Deprecated module path: the basis under torchrun is :mod:`tl_leadterm.basis.distributed`, and the distributed
sweep is :func:`tl_leadterm.analysis.sweep.sweep_distributed`.  Names read from here still work, with a
DeprecationWarning that says where they live now."""

import warnings

_MOVED = {name: "tl_leadterm.basis.distributed" for name in (
    "world", "dist_timeout", "process_group", "compute_basis_distributed", "gather_frames", "DistributedReduction")}
_MOVED["sweep_distributed"] = "tl_leadterm.analysis.sweep"


def __getattr__(name: str):
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    warnings.warn(f"tl_leadterm.distributed.{name} moved to {_MOVED[name]}.{name}; import it from there",
                  DeprecationWarning, stacklevel=2)
    return getattr(importlib.import_module(_MOVED[name]), name)


def __dir__():
    return sorted(_MOVED)
