"""Token files as researchers have them, read memory-mapped and streamed as windows of T+1 tokens.

* a raw token stream ``.bin`` of ``uint16`` (or ``uint32``, ``token_dtype``): one segment;
* the Megatron / GPT-NeoX indexed dataset (``PREFIX.bin`` + ``PREFIX.idx``, header ``MMIDIDX``), the
  format of Pythia's pre-tokenized, pre-shuffled Pile: one segment per item.  ``items=(A, B)`` selects
  items ``A..B-1``; ``pythia_steps=(A, B)`` the training sequences of Pythia's steps ``A..B-1``
  (step ``s`` = items ``s·1024 … s·1024+1023``, each 2049 tokens).

Each segment is cut into windows of ``T+1`` tokens with stride ``T`` (every position is a target
once); a tail shorter than ``T+1`` is dropped and counted (:meth:`TokenFile.dropped_tokens`).

``.idx`` layout (little endian): magic ``b"MMIDIDX\\x00\\x00"``, version ``<Q`` (1), dtype code ``<B``
(1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 6 float32, 7 float64, 8 uint16), number of items
``<Q``, number of documents + 1 ``<Q``, then ``sizes`` (int32, tokens per item), ``pointers`` (int64,
byte offset of each item in the ``.bin``) and the document index (int64).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import LeadTermError, require

MAGIC = b"MMIDIDX\x00\x00"
DTYPE_CODES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float32, 7: np.float64, 8: np.uint16}
TOKEN_DTYPES = {"uint16": np.uint16, "uint32": np.uint32, "int32": np.int32, "int64": np.int64}
PYTHIA_BATCH = 1024          # sequences per Pythia training step
PYTHIA_SEQ = 2049            # tokens per Pythia training sequence


def write_indexed(prefix: str | os.PathLike, items: list, dtype=np.uint16) -> tuple[Path, Path]:
    """Write ``items`` (lists of token ids) as ``PREFIX.bin`` + ``PREFIX.idx`` (one document per item)."""
    prefix = Path(prefix)
    code = {v: k for k, v in DTYPE_CODES.items()}[np.dtype(dtype).type]
    arrays = [np.asarray(x, dtype=dtype) for x in items]
    sizes = np.array([len(a) for a in arrays], dtype=np.int32)
    pointers = np.concatenate([[0], np.cumsum(sizes[:-1].astype(np.int64) * np.dtype(dtype).itemsize)]).astype(np.int64) \
        if len(arrays) else np.zeros(0, np.int64)
    with open(f"{prefix}.bin", "wb") as fh:
        for a in arrays:
            fh.write(a.tobytes())
    with open(f"{prefix}.idx", "wb") as fh:
        fh.write(MAGIC + struct.pack("<Q", 1) + struct.pack("<B", code))
        fh.write(struct.pack("<Q", len(arrays)) + struct.pack("<Q", len(arrays) + 1))
        fh.write(sizes.tobytes() + pointers.tobytes() + np.arange(len(arrays) + 1, dtype=np.int64).tobytes())
    return Path(f"{prefix}.bin"), Path(f"{prefix}.idx")


def parse_range(text: str | tuple | None, what: str) -> tuple[int, int] | None:
    """``"A:B"`` (or a pair) as ``(A, B)`` with ``0 <= A < B``; a one-line error otherwise."""
    if text is None:
        return None
    if isinstance(text, str):
        parts = text.split(":")
        ok = len(parts) == 2 and all(p.strip().isdigit() for p in parts)
        require(ok, f"{{{what}}} must be A:B with integers 0 <= A < B (items A..B-1), got {text!r}")
        text = tuple(int(p) for p in parts)
    a, b = text
    require(isinstance(a, int) and isinstance(b, int) and 0 <= a < b,
            f"{{{what}}} must be A:B with 0 <= A < B, got {a}:{b} (a reversed or empty range selects nothing)")
    return a, b


@dataclass
class TokenFile:
    """A memory-mapped token file and the segments (start token, length) that windows are cut from."""

    path: Path
    tokens: np.ndarray                      # memory-mapped, 1-D
    starts: np.ndarray                      # int64 token offset of each segment
    sizes: np.ndarray                       # int64 tokens per segment
    first_item: int = 0                     # index of the first selected item (for error messages)
    indexed: bool = False                   # segments are items of an indexed dataset
    stride: int | None = None               # window stride (default T: every position is a target once)

    @property
    def n_tokens(self) -> int:
        return int(self.sizes.sum())

    def per_segment(self, T: int) -> np.ndarray:
        """Windows of T+1 tokens in each segment (stride ``self.stride`` or T)."""
        S = self.stride or T
        return np.maximum((self.sizes - (T + 1)) // S + 1, 0)

    def n_windows(self, T: int) -> int:
        return int(self.per_segment(T).sum())

    def window_starts(self, T: int, lo: int = 0, hi: int | None = None) -> Iterator[np.ndarray]:
        """Token offsets of windows ``lo..hi-1`` (in file order), a segment at a time."""
        per = self.per_segment(T)
        S = self.stride or T
        ends = np.cumsum(per)
        hi = int(ends[-1]) if hi is None else hi
        first = int(np.searchsorted(ends, lo, side="right"))
        done = int(ends[first - 1]) if first > 0 else 0
        for s in range(first, len(per)):
            if done >= hi:
                break
            a, b = max(lo - done, 0), min(int(per[s]), hi - done)
            if b > a:
                yield self.starts[s] + np.arange(a, b, dtype=np.int64) * S
            done += int(per[s])

    def dropped_tokens(self, T: int) -> int:
        """Tokens at segment ends that no window covers (a tail shorter than T+1)."""
        per, S = self.per_segment(T), self.stride or T
        return int((self.sizes - np.where(per > 0, (per - 1) * S + T + 1, 0)).sum())

    def gather(self, starts: np.ndarray, T: int, vocab_size: int) -> np.ndarray:
        """Windows ``[n, T+1]`` as int64; a token id outside ``[0, vocab_size)`` is a one-line error naming where."""
        idx = starts[:, None] + np.arange(T + 1, dtype=np.int64)[None, :]
        w = np.asarray(self.tokens[idx]).astype(np.int64)
        bad = (w < 0) | (w >= vocab_size)
        if bad.any():
            r, c = map(int, np.argwhere(bad)[0])
            pos = int(starts[r]) + c
            seg = int(np.searchsorted(self.starts, pos, side="right")) - 1
            where = (f"item {self.first_item + seg}, offset {pos - int(self.starts[seg])}" if self.indexed
                     else f"token offset {pos}")
            raise LeadTermError(f"{self.path} holds token id {int(w[r, c])} at {where}, outside [0, {vocab_size}); "
                                f"pass the right {{vocab_size}} (or {{token_dtype}})")
        return w


def open_token_file(path: str | os.PathLike, *, token_dtype: str = "uint16", items=None, pythia_steps=None) -> TokenFile:
    """A raw ``.bin`` stream, or an indexed dataset given as ``PREFIX.idx``, ``PREFIX.bin`` or ``PREFIX``."""
    p = Path(path)
    prefix = p.with_suffix("") if p.suffix in (".idx", ".bin") else p
    idx = Path(f"{prefix}.idx")
    items = parse_range(items, "items")
    steps = parse_range(pythia_steps, "pythia_steps")
    require(items is None or steps is None, "give {items} or {pythia_steps}, not both")
    if idx.is_file():
        return _open_indexed(prefix, items if steps is None else (steps[0] * PYTHIA_BATCH, steps[1] * PYTHIA_BATCH),
                             "pythia_steps" if steps is not None else "items")
    require(items is None and steps is None, f"{{items}} and {{pythia_steps}} select items of an indexed dataset, but "
                                             f"{idx} does not exist; give PREFIX.idx + PREFIX.bin")
    require(p.suffix == ".bin" and p.is_file(), f"token file {p} not found; give a .bin token stream or an indexed dataset")
    require(token_dtype in TOKEN_DTYPES, f"{{token_dtype}} must be one of {', '.join(TOKEN_DTYPES)}, got {token_dtype!r}")
    dt = np.dtype(TOKEN_DTYPES[token_dtype])
    size = p.stat().st_size
    require(size % dt.itemsize == 0, f"{p} has {size} bytes, not a whole number of {token_dtype} tokens; check {{token_dtype}}")
    require(size > 0, f"{p} is empty; give a token file with tokens in it")
    mm = np.memmap(p, dtype=dt, mode="r")
    return TokenFile(p, mm, np.zeros(1, np.int64), np.array([mm.shape[0]], np.int64))


def _open_indexed(prefix: Path, items: tuple[int, int] | None, what: str) -> TokenFile:
    idx, binp = Path(f"{prefix}.idx"), Path(f"{prefix}.bin")
    require(binp.is_file(), f"{idx} has no {binp} beside it; an indexed dataset is PREFIX.idx + PREFIX.bin")
    try:
        with open(idx, "rb") as fh:
            head = fh.read(9 + 8 + 1 + 8 + 8)
    except OSError as e:
        raise LeadTermError(f"cannot read {idx} ({e.strerror})") from None
    require(len(head) == 34 and head[:9] == MAGIC, f"{idx} is not a Megatron/GPT-NeoX index (magic {head[:9]!r}, expected {MAGIC!r})")
    version, = struct.unpack("<Q", head[9:17])
    require(version == 1, f"{idx} has index version {version}; only version 1 is known")
    code = head[17]
    require(code in DTYPE_CODES, f"{idx} has dtype code {code}, not one of {sorted(DTYPE_CODES)}; the index is damaged")
    dt = np.dtype(DTYPE_CODES[code])
    require(dt.kind in "iu", f"{idx} stores {dt} values; token ids must be integers")
    n, n_docs = struct.unpack("<QQ", head[18:34])
    need = 34 + n * 4 + n * 8 + n_docs * 8
    require(idx.stat().st_size >= need, f"{idx} is truncated: {n} items need {need} bytes but it has {idx.stat().st_size}")
    sizes = np.memmap(idx, dtype=np.int32, mode="r", offset=34, shape=(n,))
    pointers = np.memmap(idx, dtype=np.int64, mode="r", offset=34 + n * 4, shape=(n,))
    bin_size = binp.stat().st_size
    if n:
        end = int(pointers[-1]) + int(sizes[-1]) * dt.itemsize
        ok = end <= bin_size and bool((sizes >= 0).all()) and bool((np.diff(pointers) >= 0).all()) and int(pointers[0]) >= 0
        require(ok, f"{idx} does not match {binp}: its items end at byte {end} but the .bin has {bin_size} bytes; "
                    "give the .idx written with this .bin")
    a, b = items if items is not None else (0, n)
    require(b <= n, f"{{{what}}} selects items up to {b - 1} but {idx} has {n} items (0..{n - 1})"
            + ((f", i.e. Pythia steps 0..{n // PYTHIA_BATCH - 1}" if n >= PYTHIA_BATCH else ", not one whole Pythia step")
               if what == "pythia_steps" else ""))
    tokens = np.memmap(binp, dtype=dt, mode="r") if bin_size else np.zeros(0, dt)
    starts = np.asarray(pointers[a:b], dtype=np.int64) // dt.itemsize
    return TokenFile(binp, tokens, starts, np.asarray(sizes[a:b], dtype=np.int64), first_item=a, indexed=True)
