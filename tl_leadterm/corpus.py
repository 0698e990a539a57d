"""Corpus stage: text (or token ids) in, fixed-length token windows out.

Sources (``load_corpus(source, ...)`` / ``--corpus SRC``):

* ``builtin:stories`` — the embedded default corpus (see :mod:`tl_leadterm.data.stories`);
* a ``.txt`` file, or a folder of ``.txt`` files (recursively, sorted by path);
  documents are separated by lines holding only ``<|endoftext|>`` (TinyStories'
  layout) and every file ends a document;
* a ``.npy`` integer array of shape ``[n, T+1]``: already-tokenized windows
  (needs ``vocab_size``);
* a ``.jsonl``/``.json``/``.csv``/``.parquet`` file, read with ``datasets``;
* anything else is a Hugging Face dataset read with
  ``datasets.load_dataset(name, split=..., streaming=True)`` — a hub name such
  as ``roneneldan/TinyStories`` or a local dataset directory (json/csv/parquet/
  text files); prefix ``hf:`` to force this.  ``text_column`` picks the column,
  ``max_docs`` bounds the stream (no bound by default; a warning says when it cut one).

Windows hold ``T+1`` tokens: inputs are ``tokens[:, :T]``, targets
``tokens[:, 1:]``.  ``pack="join"`` (default) concatenates documents, each
followed by the end-of-text token, and cuts the stream into consecutive
windows (the incomplete tail is dropped).  ``pack="cut"`` cuts each document on
its own; a document's last piece is right-padded and its true length kept in
``Windows.lengths``.  Padding is never data: padded positions are excluded from
every statistic and every loss (causal attention means right padding never
changes the earlier positions).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from jaxtyping import Bool, Int
from torch import Tensor

from .documents import iter_documents, read_documents  # noqa: F401  (public here too)
from .errors import LeadTermError, require
from .io import available_bytes
from .tokenization import Tokenizer, WordTokenizer, resolve_tokenizer

#: more token ids than any tokenizer has (and than an index tensor over the vocabulary could hold)
MAX_VOCAB = 2**31 - 1


def _check_int(name: str, value, lo: int, hi: int | None = None) -> None:
    """``value`` is None or an int in ``[lo, hi]``; otherwise a one-line error naming the parameter."""
    if value is None:
        return
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= lo and (hi is None or value <= hi)
    require(ok, f"{{{name}}} must be an integer >= {lo}" + (f" and <= {hi:,}" if hi is not None else "") + f", got {value!r}")


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
        """sha256 (16 hex digits) of the windows and their lengths."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(np.ascontiguousarray(self.tokens.cpu().numpy().astype(np.int64)).tobytes())
            h.update(np.ascontiguousarray(self.lengths.cpu().numpy().astype(np.int64)).tobytes())
            h.update(str(self.vocab_size).encode())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def __getitem__(self, idx) -> "Windows":
        if isinstance(idx, int):
            idx = slice(idx, idx + 1)
        return replace(self, tokens=self.tokens[idx], lengths=self.lengths[idx], _fingerprint=None)

    def shards(self, n_shards: int) -> list["Windows"]:
        """Split into ``n_shards`` contiguous shards (for streaming / merging statistics)."""
        bounds = np.linspace(0, self.n_windows, n_shards + 1).round().astype(int)
        return [self[int(a):int(b)] for a, b in zip(bounds[:-1], bounds[1:])]

    def to(self, device) -> "Windows":
        return replace(self, tokens=self.tokens.to(device), lengths=self.lengths.to(device), _fingerprint=self._fingerprint)

    def split(self, fraction: float, seed: int = 0) -> tuple["Windows", "Windows"]:
        """Random split into (first, second) with ``fraction`` of the windows in the first."""
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
    require(seq_len >= 2, f"{{seq_len}} must be at least 2 (got {seq_len})")
    require(pack in ("join", "cut"), f"pack must be 'join' or 'cut', got {pack!r}")
    W = seq_len + 1
    n_tokens = sum(len(ids) for ids in docs_ids)
    rows = sum(-(-len(ids) // W) for ids in docs_ids) if pack == "cut" else n_tokens // W + 1
    need, have = 2 * rows * W * 8, available_bytes()
    require(need <= have, f"{rows:,} windows of {W:,} tokens need about {need / 2**30:.1f} GB but {have / 2**30:.1f} GB is "
                          f"available; use a smaller {{seq_len}}" + (" or pack 'join'" if pack == "cut" else " or a smaller corpus"))
    if pack == "join":
        pieces = []
        for ids in docs_ids:
            pieces.append(np.asarray(ids, dtype=np.int64))
            if eos_id is not None:
                pieces.append(np.asarray([eos_id], dtype=np.int64))
        stream = np.concatenate(pieces) if pieces else np.zeros(0, np.int64)
        n = len(stream) // W
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
    require(tokens.shape[0] > 0, f"the corpus has no window of {W} tokens (seq_len+1); use a larger corpus or a smaller {{seq_len}}")
    return tokens, lengths


def validate_token_array(arr: np.ndarray, vocab_size: int | None, seq_len: int | None, what: str = "the token array") -> np.ndarray:
    """Check a pre-tokenized ``[n, T+1]`` array and return it as int64."""
    require(vocab_size is not None, f"{what} is pre-tokenized: pass {{vocab_size}} (the number of token ids)")
    _check_int("vocab_size", vocab_size, 2, MAX_VOCAB)
    require(arr.ndim == 2, f"{what} must have shape [n, T+1], got shape {list(arr.shape)}")
    require(arr.shape[0] > 0, f"{what} is empty; give at least one window")
    require(arr.shape[1] >= 3, f"{what} has width {arr.shape[1]}: windows need T+1 >= 3 tokens")
    if seq_len is not None:
        require(seq_len >= 2, f"{{seq_len}} must be at least 2 (got {seq_len})")
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
    """Wrap an ``[n, T+1]`` integer array/tensor (validated) as :class:`Windows`."""
    arr = validate_token_array(np.asarray(torch.as_tensor(tokens).cpu()), vocab_size, None)
    t = torch.from_numpy(arr)
    if lengths is None:
        lengths = torch.full((t.shape[0],), t.shape[1], dtype=torch.long)
    return Windows(t, torch.as_tensor(lengths, dtype=torch.long), vocab_size, tokenizer, source)


def load_corpus(source: str | os.PathLike, *, seq_len: int, tokenizer=None, vocab_size: int | None = None,
                pack: str = "join", text_column: str = "text", split: str = "train", max_docs: int | None = None,
                word_vocab_size: int | None = None, word_min_count: int = 1, encoding: str = "utf-8") -> Windows:
    """Read a corpus source and return its token windows.

    ``tokenizer``: a :class:`~tl_leadterm.tokenization.Tokenizer`, ``"words"``
    (default for text), a tokenizer path or hub name, or a TransformerLens model.
    ``vocab_size`` defaults to the tokenizer's size; set it to a model's ``d_vocab``
    (e.g. 50,304 for Pythia) when the model's output is larger than the tokenizer.
    ``word_vocab_size``/``word_min_count`` bound the ``"words"`` vocabulary; text files are read
    as ``encoding`` (anything else, or a binary file, is refused).
    """
    _check_int("seq_len", seq_len, 2)
    _check_int("vocab_size", vocab_size, 2, MAX_VOCAB)
    _check_int("word_vocab_size", word_vocab_size, 3)
    _check_int("word_min_count", word_min_count, 1)
    require(pack in ("join", "cut"), f"{{pack}} must be 'join' or 'cut', got {pack!r}")
    s = str(source)
    if s.endswith(".npy"):
        p = Path(s)
        require(p.is_file(), f"token file {p} not found; check the path")
        try:
            arr = np.load(p, allow_pickle=False)
        except Exception as e:
            raise LeadTermError(f"cannot read {p} as a .npy array ({type(e).__name__}); save it with numpy.save") from None
        arr = validate_token_array(arr, vocab_size, seq_len, what=f"{p.name}")
        tok = resolve_tokenizer(tokenizer) if tokenizer not in (None, "words") else None
        t = torch.from_numpy(arr)
        return Windows(t, torch.full((t.shape[0],), t.shape[1], dtype=torch.long), int(vocab_size), tok, s)
    docs = read_documents(s, text_column=text_column, split=split, max_docs=max_docs, encoding=encoding)
    require(len(docs) > 0, f"corpus {s!r} is empty; give a corpus with text in it")
    tok = resolve_tokenizer("words" if tokenizer is None else tokenizer, docs, max_size=word_vocab_size, min_count=word_min_count)
    V = tok.vocab_size if vocab_size is None else int(vocab_size)
    require(V >= tok.vocab_size or not isinstance(tok, WordTokenizer),
            f"{{vocab_size}} {V} is smaller than the word vocabulary ({tok.vocab_size})")
    from tqdm.auto import tqdm
    ids = []
    batch = 1024
    with tqdm(total=len(docs), desc="tokenizing", unit="doc", leave=False, disable=len(docs) < 2000) as bar:
        for a in range(0, len(docs), batch):   # batched: a fast tokenizer encodes a batch on all cores (Rust)
            ids += tok.encode_batch(docs[a:a + batch])
            bar.update(min(batch, len(docs) - a))
    mx = max((max(x) for x in ids if len(x)), default=-1)
    require(mx < V, f"the tokenizer produced id {mx} >= vocab size {V}; pass a larger {{vocab_size}}")
    tokens, lengths = windows_from_documents(ids, int(seq_len), eos_id=tok.eos_id, pack=pack,
                                             pad_id=tok.eos_id if tok.eos_id is not None else 0)
    return Windows(tokens, lengths, V, tok, s)
