"""Data-parallel runs with ``torch.distributed`` (``torchrun``): the basis engine's passes and sweeps.

Under ``torchrun`` (``WORLD_SIZE``/``RANK`` in the environment) ``tl-leadterm basis`` splits the
windows into one contiguous block per rank, all-reduces the token frequencies (for ``top_k``) and
the pass-1 statistics, rank 0 computes the compositions once and broadcasts the centred Ḡ that
pass 2 needs, the pass-2 sums are all-reduced, and rank 0 writes the file (with the same corpus
fingerprint and metadata as one process).  ``tl-leadterm sweep`` spreads the checkpoints over the
ranks and rank 0 writes the one table.  gloo on CPU, NCCL on CUDA (rank ``r`` on GPU ``r``).

A rank that fails or is killed makes the others fail with a one-line error after
``TL_LEADTERM_DIST_TIMEOUT`` seconds (default 120) at the latest; nothing is written.
(``TL_LEADTERM_FAIL_RANK=r`` makes rank ``r`` die after pass 1: fault injection for the tests.)
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import timedelta

import torch

from .basis import Basis, BasisSpec, Compositions, FirstPassStats, SecondPassStats, assemble, choose_mode
from .basis.compute import _check_run, _int64_bytes, top_k_of, validate_token_ids
from .basis.passes import compositions, first_pass, second_pass
from .corpus import Windows
from .errors import LeadTermError, require
from .io import resolve_device
from .streams import shard_of


def world() -> tuple[int, int] | None:
    """``(rank, world_size)`` under torchrun with more than one process, else None."""
    try:
        size, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    except ValueError:
        raise LeadTermError("WORLD_SIZE and RANK must be integers (set by torchrun)") from None
    return (rank, size) if size > 1 else None


@contextmanager
def process_group(device=None):
    """Join the torchrun process group (gloo on CPU, NCCL on CUDA) for the duration of the block."""
    import torch.distributed as dist

    rank, size = world()
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        torch.cuda.set_device(dev)
    timeout = timedelta(seconds=float(os.environ.get("TL_LEADTERM_DIST_TIMEOUT", "120")))
    try:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=size, timeout=timeout)
    except Exception as e:
        raise LeadTermError(f"rank {rank}: cannot join the torchrun process group ({type(e).__name__}); "
                            "start every rank with torchrun") from None
    try:
        yield rank, size, dev
    except RuntimeError as e:
        if not _is_lost_rank(e):
            raise
        raise LeadTermError(f"rank {rank}: lost the other ranks ({type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}); "
                            "a rank failed or was killed, and nothing was written") from None
    finally:
        try:
            dist.destroy_process_group()
        except Exception:
            pass


def compute_basis_distributed(windows, *, top_k: int | None = None, token_ids=None, mode: str = "auto",
                              dtype: torch.dtype = torch.float64, device=None, progress: bool = False) -> Basis | None:
    """The basis over all ranks' windows (module docstring); rank 0 gets the :class:`Basis`, the others None.

    Must run inside :func:`process_group`.  The result equals ``compute_basis`` in one process
    (to rounding: sums are added in another order).
    """
    import torch.distributed as dist

    require((top_k is None) != (token_ids is None), "give exactly one of {top_k} or {token_ids}")
    rank, size = dist.get_rank(), dist.get_world_size()
    dev = resolve_device(device)
    local = shard_of(windows, rank, size)
    V, T = windows.vocab_size, windows.seq_len
    for w in local:
        _check_run(w, dtype, dev)
    if top_k is not None:
        freq = torch.zeros(V, dtype=torch.long, device=dev)
        for w in local:
            freq += torch.bincount(w.inputs[w.valid].reshape(-1).to(dev), minlength=V)[:V]
        dist.all_reduce(freq)
        ids = top_k_of(freq.cpu(), V, top_k)
    else:
        ids = validate_token_ids(token_ids, V)
    resolved = torch.tensor([0 if choose_mode(V, ids.numel(), mode, dtype, dev) == "exact" else 1], device=dev)
    dist.broadcast(resolved, 0)                      # rank 0's memory decides, so that every rank agrees
    spec = BasisSpec(V, ids, "exact" if int(resolved) == 0 else "merge-other")
    W = spec.W
    first = FirstPassStats(spec, T, torch.zeros(W, W, dtype=dtype, device=dev), torch.zeros(W, W, dtype=dtype, device=dev), 0)
    for w in local:
        first = first + first_pass(w, spec, dtype=dtype, device=dev, progress=progress and rank == 0)
    if os.environ.get("TL_LEADTERM_FAIL_RANK") == str(rank):   # fault injection for the tests: this rank dies here
        os._exit(3)
    n = torch.tensor([first.n], dtype=torch.long, device=dev)
    for t in (first.counts, first.context, n):
        dist.all_reduce(t)
    first.n = int(n)
    check = torch.tensor(first.checksum(), dtype=torch.float64, device=dev)
    if rank == 0:
        comp = compositions(first, consume=True)
        Gc = comp.centred_value_output
    else:
        Gc = torch.empty(W, W, dtype=dtype, device=dev)
    dist.broadcast(Gc, 0)
    dist.broadcast(check, 0)
    checksum = (int(check[0]), float(check[1]), float(check[2]))
    if rank != 0:
        comp = Compositions(spec, T, first.n, {}, Gc, checksum)
    comp.checksum = checksum
    second = SecondPassStats(spec, T, torch.zeros(spec.k, spec.k, dtype=dtype, device=dev),
                             torch.zeros(T, dtype=dtype, device=dev), 0, checksum)
    for w in local:
        second = second + second_pass(w, comp, progress=progress and rank == 0)
    n2 = torch.tensor([second.n], dtype=torch.long, device=dev)
    for t in (second.key_query, second.position, n2):
        dist.all_reduce(t)
    second.n = int(n2)
    if rank != 0:
        return None
    comp.centred_value_output = None
    tok, fingerprint, source = _corpus_identity(windows)
    return assemble(comp, second, tokenizer_json=tok.to_json() if tok is not None else None,
                    corpus_fingerprint=fingerprint, corpus_source=source)


def _is_lost_rank(e: BaseException) -> bool:
    """An error of the collective itself (a peer gone, a timeout), not of this rank's own work."""
    import torch.distributed as dist

    kinds = tuple(k for k in (getattr(dist, "DistBackendError", None), getattr(dist, "DistNetworkError", None)) if k)
    text = str(e).lower()
    return isinstance(e, kinds) or any(w in text for w in ("connection closed", "connection reset", "timed out", "gloo",
                                                             "broken pipe", "peer"))


def _corpus_identity(windows) -> tuple:
    """Tokenizer, fingerprint (as :attr:`Windows.fingerprint` of all windows) and source, on rank 0."""
    import hashlib

    if isinstance(windows, Windows):
        return windows.tokenizer, windows.fingerprint, windows.source
    digest, counts = hashlib.sha256(), []
    for w in windows:                 # one sequential read: the fingerprint of the whole stream
        digest.update(_int64_bytes(w.tokens))
        counts.append(w.n_windows)
    for c in counts:                  # a stream's windows are all whole: every length is T+1
        digest.update(_int64_bytes(torch.full((c,), windows.seq_len + 1, dtype=torch.long)))
    digest.update(str(windows.vocab_size).encode())
    return windows.tokenizer, digest.hexdigest()[:16], windows.source


def gather_frames(frame):
    """Every rank's DataFrame, on rank 0 in rank order (None on the others)."""
    import torch.distributed as dist

    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, frame)
    return out if dist.get_rank() == 0 else None


def sweep_distributed(model, checkpoints, basis, *, labels=None, **kwargs):
    """:func:`tl_leadterm.analysis.sweep` with the checkpoints spread over the ranks (round robin); the one
    table, in checkpoint order, on rank 0 (None on the others).  Must run inside :func:`process_group`."""
    import pandas as pd
    import torch.distributed as dist

    from .analysis import parse_checkpoints, sweep

    ckpts = parse_checkpoints(checkpoints)
    rank, size = dist.get_rank(), dist.get_world_size()
    mine = list(range(rank, len(ckpts), size))
    # label rows by the checkpoint's position, so that a checkpoint listed twice stays two analyses
    frame = (sweep(model, [ckpts[i] for i in mine], basis, progress=False, labels=[f"#{i}" for i in mine], **kwargs)
             if mine else None)
    frames = gather_frames(frame)
    if frames is None:
        return None
    parts = {}
    for df in frames:
        if df is not None:
            for label, part in df.groupby("checkpoint", sort=False):
                i = int(label[1:])
                parts[i] = part.assign(checkpoint=labels[i] if labels is not None else ckpts[i])
    return pd.concat([parts[i] for i in range(len(ckpts))], ignore_index=True)
