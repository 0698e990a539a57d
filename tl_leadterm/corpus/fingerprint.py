"""What a corpus is, as digests: the one accumulator every path that reads a corpus uses.

A corpus is read in parts (chunks of :class:`~tl_leadterm.corpus.Windows`), in order.  Every digest below is
made by feeding each part once to a :class:`FingerprintAccumulator`; how the parts were cut does not change
:meth:`~FingerprintAccumulator.fingerprint`:

``fingerprint()``
    :attr:`Windows.fingerprint` of the parts' concatenation: sha256 over every token (int64), then every
    window's length (int64), then ``str(|V|)``; 16 hex digits.  A basis records it as ``corpus_fingerprint``
    (in one process, under torchrun, streamed or in memory alike).
``digest()``
    sha256 over each part's tokens then its lengths, part after part (64 hex digits): what a shard file
    records of its own windows.  It depends on the parts (a stream's chunks), so compare it only between
    runs that read the same way.
:func:`combine`
    The fingerprint of a basis merged from shard files: sha256 of the shards' digests in order (16 hex
    digits); it depends on the number of shards.

Lengths are kept as runs (value, count) until :meth:`~FingerprintAccumulator.fingerprint` hashes them after
the tokens, so one pass suffices and a stream of whole windows costs O(1) memory.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import Tensor

from ..errors import require

#: length entries hashed at a time when a run of equal lengths is replayed
_BLOCK = 1 << 20


def int64_bytes(t: Tensor) -> bytes:
    """The bytes of ``t`` as contiguous little-endian int64 (what every corpus digest hashes)."""
    return np.ascontiguousarray(torch.as_tensor(t).cpu().numpy().astype(np.int64)).tobytes()


class FingerprintAccumulator:
    """Digests of a corpus read part by part (module docstring).  ``fingerprint=False`` / ``digest=False``
    skip the hash that is not wanted; ``n_windows`` and ``n_positions`` count what was added."""

    def __init__(self, *, fingerprint: bool = True, digest: bool = False):
        self._tokens = hashlib.sha256() if fingerprint else None
        self._digest = hashlib.sha256() if digest else None
        self._runs: list[list[int]] = []          # [length, count] of consecutive windows
        self.vocab_size: int | None = None
        self.n_windows = 0
        self.n_positions = 0

    def add(self, part) -> "FingerprintAccumulator":
        """Feed the next part (a :class:`~tl_leadterm.corpus.Windows`) of the corpus."""
        require(self.vocab_size in (None, part.vocab_size),
                f"a part with vocab size {part.vocab_size} follows parts with {self.vocab_size}; give one corpus")
        self.vocab_size = part.vocab_size
        tokens = int64_bytes(part.tokens)
        if self._tokens is not None:
            self._tokens.update(tokens)
            values, counts = torch.unique_consecutive(part.lengths.cpu(), return_counts=True)
            for v, c in zip(values.tolist(), counts.tolist()):
                if self._runs and self._runs[-1][0] == v:
                    self._runs[-1][1] += c
                else:
                    self._runs.append([v, c])
        if self._digest is not None:
            self._digest.update(tokens)
            self._digest.update(int64_bytes(part.lengths))
        self.n_windows += part.n_windows
        self.n_positions += part.n_positions
        return self

    def fingerprint(self) -> str:
        """:attr:`Windows.fingerprint` of everything added (16 hex digits)."""
        require(self._tokens is not None, "this accumulator was made with fingerprint=False")
        h = self._tokens.copy()
        for v, c in self._runs:
            for a in range(0, c, _BLOCK):
                h.update(np.full(min(_BLOCK, c - a), v, dtype=np.int64).tobytes())
        h.update(str(self.vocab_size).encode())
        return h.hexdigest()[:16]

    def digest(self) -> str:
        """sha256 of each part's tokens and lengths in turn (64 hex digits): a shard's digest of its windows."""
        require(self._digest is not None, "this accumulator was made with digest=False")
        return self._digest.hexdigest()


def combine(digests) -> str:
    """The fingerprint of a corpus merged from shards: sha256 of the shards' :meth:`~FingerprintAccumulator.digest`
    values in shard order (16 hex digits)."""
    return hashlib.sha256("".join(digests).encode()).hexdigest()[:16]
