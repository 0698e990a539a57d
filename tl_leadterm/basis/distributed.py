"""Data-parallel basis runs with ``torch.distributed`` (``torchrun``): the pipeline's all-reduce reduction.

Under ``torchrun`` (``WORLD_SIZE``/``RANK`` in the environment) ``tl-leadterm basis`` splits the
windows into one contiguous block per rank, all-reduces the token frequencies (for ``top_k``) and
the pass-1 statistics, rank 0 computes the compositions once and broadcasts the centred Ḡ that
pass 2 needs, the pass-2 sums are all-reduced, and rank 0 writes the file (with the same corpus
fingerprint and metadata as one process).  gloo on CPU, NCCL on CUDA (rank ``r`` on GPU ``r``).
The distributed sweep (checkpoints spread over the ranks) is
:func:`tl_leadterm.analysis.sweep.sweep_distributed`; it uses :func:`process_group` and
:func:`gather_frames` from here.

A rank that fails or is killed makes the others fail with a one-line error after
``TL_LEADTERM_DIST_TIMEOUT`` seconds (default 120) at the latest; nothing is written.
(``TL_LEADTERM_FAIL_RANK=r`` makes rank ``r`` die after pass 1: fault injection for the tests.)
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from datetime import timedelta

import torch

from ..corpus import shard_of
from ..errors import LeadTermError, require
from ..io import resolve_device
from ..params import check
from .passes import BasisSpec, Compositions, FirstPassStats, SecondPassStats
from .pipeline import Reduction, corpus_identity, run_pipeline
from .value import Basis


def world() -> tuple[int, int] | None:
    """``(rank, world_size)`` under torchrun with more than one process, else None.  ``WORLD_SIZE``, ``RANK`` and
    ``LOCAL_RANK`` must be integers with ``0 <= RANK < WORLD_SIZE`` (torchrun sets them so)."""
    size = _env_int("WORLD_SIZE", "1")
    rank = _env_int("RANK", "0")
    require(rank < size, f"RANK={rank} is not below WORLD_SIZE={size}; ranks are 0..WORLD_SIZE-1: start every rank with torchrun")
    _env_int("LOCAL_RANK", "0")     # read by torch.distributed too: a malformed one is named here, not deep inside it
    return (rank, size) if size > 1 else None


def _env_int(name: str, default: str) -> int:
    raw = os.environ.get(name, default).strip()
    require(re.fullmatch(r"[0-9]{1,9}", raw) is not None,
            f"{name}={raw!r} is not an integer (torchrun sets it); unset it, or start every rank with torchrun")
    return check(name, int(raw))


def dist_timeout() -> timedelta:
    """``TL_LEADTERM_DIST_TIMEOUT`` (seconds, default 120) as a timedelta; anything but a positive number is refused."""
    raw = os.environ.get("TL_LEADTERM_DIST_TIMEOUT", "120").strip()
    try:
        value = float(raw)
    except ValueError:
        raise LeadTermError(f"TL_LEADTERM_DIST_TIMEOUT={raw!r} is not a number; set it to a number of seconds such as 120") from None
    return timedelta(seconds=check("TL_LEADTERM_DIST_TIMEOUT", value))


@contextmanager
def process_group(device=None):
    """Join the torchrun process group (gloo on CPU, NCCL on CUDA) for the duration of the block."""
    import torch.distributed as dist

    w = world()
    require(w is not None, "a process group needs torchrun with more than one process (WORLD_SIZE > 1)")
    rank, size = w
    timeout = dist_timeout()
    dev = resolve_device(device)
    if dev.type == "cuda":
        local = _env_int("LOCAL_RANK", str(rank))
        require(local < torch.cuda.device_count(), f"LOCAL_RANK={local} but this machine has {torch.cuda.device_count()} GPU(s); "
                                                   "start at most one rank per GPU (torchrun --nproc_per_node)")
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    try:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=size, timeout=timeout)
    except Exception as e:
        why = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
        raise LeadTermError(f"rank {rank}: cannot join the torchrun process group ({type(e).__name__}{': ' + why if why else ''}); "
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


class DistributedReduction(Reduction):
    """The ranks of a process group: each reads one contiguous block of windows; sums are all-reduced, rank 0's
    memory chooses the mode, rank 0 composes and broadcasts the centred Ḡ, rank 0 assembles (module docstring)."""

    def __init__(self, device=None):
        import torch.distributed as dist

        self.dist = dist
        self.rank, self.size = dist.get_rank(), dist.get_world_size()
        self.device = resolve_device(device)
        self.assembles = self.rank == 0

    def parts(self, corpus):
        return shard_of(corpus, self.rank, self.size)

    def accumulator(self, corpus):
        return None                       # rank 0 reads the whole corpus once more for its fingerprint (identity)

    def frequencies(self, freq):
        freq = freq.to(self.device)
        self.dist.all_reduce(freq)
        return freq.cpu()

    def mode(self, resolve) -> str:
        resolved = torch.tensor([0 if resolve() == "exact" else 1], device=self.device)
        self.dist.broadcast(resolved, 0)  # rank 0's memory decides, so that every rank agrees
        return "exact" if int(resolved) == 0 else "merge-other"

    def first(self, stats, spec: BasisSpec, seq_len: int, dtype, device):
        if stats is None:                 # a rank without windows still takes part in every collective
            W = spec.W
            stats = FirstPassStats(spec, seq_len, torch.zeros(W, W, dtype=dtype, device=device),
                                   torch.zeros(W, W, dtype=dtype, device=device), 0)
        if os.environ.get("TL_LEADTERM_FAIL_RANK") == str(self.rank):   # fault injection for the tests: this rank dies here
            os._exit(3)
        n = torch.tensor([stats.n], dtype=torch.long, device=device)
        for t in (stats.counts, stats.context, n):
            self.dist.all_reduce(t)
        stats.n = int(n)
        return stats

    def compose(self, stats: FirstPassStats) -> Compositions:
        from .passes import compositions

        spec, T, W = stats.spec, stats.seq_len, stats.spec.W
        dev, dtype = stats.counts.device, stats.counts.dtype
        ck = torch.tensor(stats.checksum(), dtype=torch.float64, device=dev)
        if self.rank == 0:
            comp = compositions(stats, consume=True)
            Gc = comp.centred_value_output
        else:
            Gc = torch.empty(W, W, dtype=dtype, device=dev)
        self.dist.broadcast(Gc, 0)
        self.dist.broadcast(ck, 0)
        checksum = (int(ck[0]), float(ck[1]), float(ck[2]))
        if self.rank != 0:
            comp = Compositions(spec, T, stats.n, {}, Gc, checksum)
        comp.checksum = checksum
        return comp

    def second(self, stats, comp: Compositions, dtype, device):
        spec, T = comp.spec, comp.seq_len
        if stats is None:
            stats = SecondPassStats(spec, T, torch.zeros(spec.k, spec.k, dtype=dtype, device=device),
                                    torch.zeros(T, dtype=dtype, device=device), 0, comp.checksum)
        n = torch.tensor([stats.n], dtype=torch.long, device=device)
        for t in (stats.key_query, stats.position, n):
            self.dist.all_reduce(t)
        stats.n = int(n)
        return stats

    def identity(self, corpus, acc, seen) -> dict:
        return corpus_identity(corpus)    # the whole corpus, as one process records it


def compute_basis_distributed(windows, *, top_k: int | None = None, token_ids=None, mode: str = "auto",
                              dtype: torch.dtype = torch.float64, device=None, progress: bool = False) -> Basis | None:
    """The basis over all ranks' windows (module docstring); rank 0 gets the :class:`Basis`, the others None.

    Must run inside :func:`process_group`.  The result equals ``compute_basis`` in one process
    (to rounding: sums are added in another order).
    """
    reduction = DistributedReduction(device)
    return run_pipeline(windows, reduction, top_k=top_k, token_ids=token_ids, mode=mode, dtype=dtype,
                        device=reduction.device, progress=progress and reduction.rank == 0)


def _is_lost_rank(e: BaseException) -> bool:
    """An error of the collective itself (a peer gone, a timeout), not of this rank's own work."""
    import torch.distributed as dist

    kinds = tuple(k for k in (getattr(dist, "DistBackendError", None), getattr(dist, "DistNetworkError", None)) if k)
    text = str(e).lower()
    return isinstance(e, kinds) or any(w in text for w in ("connection closed", "connection reset", "timed out", "gloo",
                                                             "broken pipe", "peer"))


def gather_frames(frame):
    """Every rank's DataFrame, on rank 0 in rank order (None on the others)."""
    import torch.distributed as dist

    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, frame)
    return out if dist.get_rank() == 0 else None
