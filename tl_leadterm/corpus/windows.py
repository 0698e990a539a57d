"""Token windows: the :class:`Windows` value, and windows cut from tokenized documents or given as an array."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np
import torch
from jaxtyping import Bool, Int
from torch import Tensor

from ..errors import LeadTermError, require
from ..io import available_bytes
from ..params import check
from ..tokenization import Tokenizer
from .fingerprint import FingerprintAccumulator


@dataclass
class Windows:
    """Token windows of ``T+1`` tokens, with per-window valid lengths.

    ``tokens[i, :lengths[i]]`` is data; the rest (only in ``pack="cut"``) is padding.
    """

    tokens: Int[Tensor, "n_windows T_plus_1"]
    lengths: Int[Tensor, "n_windows"]
    vocab_size: int
    tokenizer: Tokenizer | None = None
    source: str = ""
    _fingerprint: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.tokens = torch.as_tensor(self.tokens, dtype=torch.long)
        self.lengths = torch.as_tensor(self.lengths, dtype=torch.long)

    @property
    def seq_len(self) -> int:
        """T: the number of (input, target) positions per window."""
        return self.tokens.shape[1] - 1

    @property
    def n_windows(self) -> int:
        return self.tokens.shape[0]

    def __len__(self) -> int:
        return self.n_windows

    @property
    def inputs(self) -> Int[Tensor, "n_windows T"]:
        return self.tokens[:, :-1]

    @property
    def targets(self) -> Int[Tensor, "n_windows T"]:
        return self.tokens[:, 1:]

    @property
    def valid(self) -> Bool[Tensor, "n_windows T"]:
        """``valid[i, t]``: position t of window i has a real target."""
        t = torch.arange(self.seq_len, device=self.tokens.device)
        return t[None, :] < (self.lengths[:, None] - 1)

    @property
    def n_positions(self) -> int:
        """n: the number of (input, target) positions that are data."""
        return int((self.lengths - 1).sum())

    @property
    def fingerprint(self) -> str:
        """sha256 (16 hex digits) of the windows, their lengths and |V| (:mod:`~tl_leadterm.corpus.fingerprint`)."""
        if self._fingerprint is None:
            self._fingerprint = FingerprintAccumulator().add(self).fingerprint()
        return self._fingerprint

    def __getitem__(self, idx) -> "Windows":
        if isinstance(idx, int):
            idx = slice(idx, idx + 1)
        return replace(self, tokens=self.tokens[idx], lengths=self.lengths[idx], _fingerprint=None)

    def shards(self, n_shards: int) -> list["Windows"]:
        """Split into ``n_shards`` contiguous shards (for streaming / merging statistics)."""
        n_shards = check("n_shards", n_shards)
        bounds = np.linspace(0, self.n_windows, n_shards + 1).round().astype(int)
        return [self[int(a):int(b)] for a, b in zip(bounds[:-1], bounds[1:])]

    def to(self, device) -> "Windows":
        return replace(self, tokens=self.tokens.to(device), lengths=self.lengths.to(device), _fingerprint=self._fingerprint)

    def split(self, fraction: float, seed: int = 0) -> tuple["Windows", "Windows"]:
        """Random split into (first, second) with ``fraction`` of the windows in the first."""
        fraction, seed = check("fraction", fraction), check("seed", seed)
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(self.n_windows, generator=g)
        k = int(round(fraction * self.n_windows))
        return self[perm[:k].sort().values], self[perm[k:].sort().values]


# ---------------------------------------------------------------------------
# windows
# ---------------------------------------------------------------------------
def windows_from_documents(docs_ids: Sequence[Sequence[int]], seq_len: int, *, eos_id: int | None,
                           pack: str = "join", pad_id: int = 0) -> tuple[Tensor, Tensor]:
    """Cut tokenized documents into ``[n, seq_len+1]`` windows (see module docstring)."""
    seq_len, pad_id = check("seq_len", seq_len), check("pad_id", pad_id)
    require(pack in ("join", "cut"), f"{{pack}} must be 'join' or 'cut', got {pack!r}")
    W = seq_len + 1
    n_tokens = sum(len(ids) for ids in docs_ids)

    def need(W):   # bytes of the windows and their copy
        rows = sum(-(-len(ids) // W) for ids in docs_ids) if pack == "cut" else n_tokens // W + 1
        return 2 * rows * W * 8, rows

    (nb, rows), have = need(W), available_bytes()
    if nb > have:   # name a smaller seq_len only where one would fit
        fit = next((t for t in (2 ** i for i in range(seq_len.bit_length() - 1, 0, -1)) if t < seq_len and need(t + 1)[0] <= have), None)
        raise LeadTermError(f"{rows:,} windows of {W:,} tokens need about {nb / 2**30:.1f} GB but {have / 2**30:.1f} GB is available; "
                            + (f"use a smaller {{seq_len}} ({fit} or less)" + (" or pack 'join'" if pack == "cut" else "")
                               if fit is not None else
                               f"the corpus' {n_tokens:,} tokens do not fit at any sequence length: use a smaller corpus "
                               "({max_docs}) or stream it ('tl-leadterm basis' streams text with pack 'join')"))
    if pack == "join":
        pieces = []
        for ids in docs_ids:
            pieces.append(np.asarray(ids, dtype=np.int64))
            if eos_id is not None:
                pieces.append(np.asarray([eos_id], dtype=np.int64))
        stream = np.concatenate(pieces) if pieces else np.zeros(0, np.int64)
        n = len(stream) // W
        require(n > 0, f"the corpus has {len(stream):,} tokens, so no window of {W} tokens (seq_len+1); use a larger corpus"
                + (f" or a smaller {{seq_len}} ({len(stream) - 1} or less)" if len(stream) >= 3 else ""))
        tokens = torch.from_numpy(stream[: n * W].reshape(n, W).copy())
        lengths = torch.full((n,), W, dtype=torch.long)
    else:
        rows, lens = [], []
        for ids in docs_ids:
            ids = np.asarray(ids, dtype=np.int64)
            for start in range(0, len(ids), W):
                piece = ids[start:start + W]
                if len(piece) < 2:
                    continue
                row = np.full(W, pad_id, dtype=np.int64)
                row[: len(piece)] = piece
                rows.append(row)
                lens.append(len(piece))
        tokens = torch.from_numpy(np.stack(rows)) if rows else torch.zeros((0, W), dtype=torch.long)
        lengths = torch.tensor(lens, dtype=torch.long)
    require(tokens.shape[0] > 0, "no document has 2 tokens or more, so there is no window at any sequence length; "
                                 "use a larger corpus")
    return tokens, lengths


def validate_token_array(arr: np.ndarray, vocab_size: int | None, seq_len: int | None, what: str = "the token array") -> np.ndarray:
    """Check a pre-tokenized ``[n, T+1]`` array and return it as int64."""
    require(vocab_size is not None, f"{what} is pre-tokenized: pass {{vocab_size}} (the number of token ids)")
    vocab_size = check("vocab_size", vocab_size)
    require(arr.ndim == 2, f"{what} must have shape [n, T+1], got shape {list(arr.shape)}")
    require(arr.shape[0] > 0, f"{what} is empty; give at least one window")
    require(arr.shape[1] >= 3, f"{what} has width {arr.shape[1]}: windows need T+1 >= 3 tokens")
    if seq_len is not None:
        seq_len = check("seq_len", seq_len)
        require(arr.shape[1] == seq_len + 1, f"{{seq_len}} {seq_len} does not match {what} width {arr.shape[1]} (= T+1, so T = {arr.shape[1] - 1}); pass {{seq_len}} {arr.shape[1] - 1}")
    if arr.dtype.kind == "f" and not (bool(np.all(np.isfinite(arr))) and bool(np.all(arr == np.round(arr)))):
        raise LeadTermError(f"{what} holds non-integer values (dtype {arr.dtype}); token ids must be integers: save an integer array (e.g. int64)")
    if arr.dtype.kind not in "iu":
        raise LeadTermError(f"{what} has dtype {arr.dtype}; token ids must be integers: save it with .astype(numpy.int64)")
    lo, hi = int(arr.min()), int(arr.max())
    require(lo >= 0, f"{what} holds a negative token id ({lo}); token ids must be in [0, vocab_size)")
    require(hi < vocab_size, f"{what} holds token id {hi} >= {{vocab_size}} {vocab_size}; pass a larger {{vocab_size}}")
    return arr.astype(np.int64)


def windows_from_tokens(tokens, vocab_size: int, lengths=None, tokenizer: Tokenizer | None = None, source: str = "tensor") -> Windows:
    """Wrap an ``[n, T+1]`` integer array/tensor (validated) as :class:`Windows`.

    ``lengths`` (default: every window whole) gives each window's data length, from 2 to T+1 tokens; the rest of
    a window is padding, never data."""
    arr = validate_token_array(np.asarray(torch.as_tensor(tokens).cpu()), vocab_size, None)
    t = torch.from_numpy(arr)
    if lengths is None:
        lengths = torch.full((t.shape[0],), t.shape[1], dtype=torch.long)
    else:
        ln = np.asarray(torch.as_tensor(lengths).cpu())
        require(ln.ndim == 1 and ln.shape[0] == t.shape[0],
                f"lengths must hold one length per window ({t.shape[0]}), got shape {list(ln.shape)}")
        require(ln.dtype.kind in "iu", f"lengths must be integers, got dtype {ln.dtype}")
        require(bool(((ln >= 2) & (ln <= t.shape[1])).all()),
                f"lengths must be between 2 and the window width {t.shape[1]} (T+1), got {int(ln.min())}..{int(ln.max())}; "
                "a length counts the tokens of a window that are data")
        lengths = torch.from_numpy(ln.astype(np.int64))
    return Windows(t, lengths, check("vocab_size", vocab_size), tokenizer, source)
