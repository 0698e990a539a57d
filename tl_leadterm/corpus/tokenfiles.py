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

import hashlib
import numbers
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import LeadTermError, require

MAGIC = b"MMIDIDX\x00\x00"
DTYPE_CODES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float32, 7: np.float64, 8: np.uint16}
TOKEN_DTYPES = {"uint16": np.uint16, "uint32": np.uint32, "int32": np.int32, "int64": np.int64}
PYTHIA_BATCH = 1024          # sequences per Pythia training step
PYTHIA_SEQ = 2049            # tokens per Pythia training sequence
_DIGITS = re.compile(r"[0-9]+")
_CHECK_BLOCK = 1 << 22       # index entries checked at a time (bounded memory for Pile-sized indexes)


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
        ok = len(parts) == 2 and all(_DIGITS.fullmatch(p.strip()) for p in parts)   # ASCII digits only ('²' is no number)
        require(ok, f"{{{what}}} must be A:B with integers 0 <= A < B (items A..B-1), got {text!r}")
        text = tuple(int(p) for p in parts)
    try:
        a, b = text
    except (TypeError, ValueError):
        raise LeadTermError(f"{{{what}}} must be A:B or a pair (A, B) with 0 <= A < B, got {text!r}") from None
    ok = all(isinstance(x, numbers.Integral) and not isinstance(x, bool) for x in (a, b))
    require(ok and 0 <= a < b <= 2**62, f"{{{what}}} must be A:B with integers 0 <= A < B, got {a}:{b} "
                                        "(a reversed or empty range selects nothing)")
    return int(a), int(b)


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


    def digest(self, T: int, vocab_size: int, samples: int = 256) -> str:
        """A corpus digest that any shard can compute cheaply: the layout of every segment (starts and sizes,
        hashed a block at a time), the number of windows and ``samples`` windows spread evenly over the file.
        Two token files with the same digest have the same shape everywhere and the same sampled windows."""
        h = hashlib.sha256(f"tl_leadterm.corpus-sample/1:{T}:{vocab_size}:{self.stride}:".encode())
        for arr in (self.starts, self.sizes):
            for a in range(0, len(arr), _CHECK_BLOCK):
                h.update(np.ascontiguousarray(arr[a:a + _CHECK_BLOCK], dtype=np.int64).tobytes())
        ends = np.cumsum(self.per_segment(T))
        total = int(ends[-1]) if len(ends) else 0
        if total:
            picks = np.unique(np.linspace(0, total - 1, min(samples, total)).round().astype(np.int64))
            seg = np.searchsorted(ends, picks, side="right")
            local = picks - np.where(seg > 0, ends[np.maximum(seg - 1, 0)], 0)
            h.update(self.gather(self.starts[seg] + local * (self.stride or T), T, vocab_size).tobytes())
        return h.hexdigest()


def locate_token_file(path: str | os.PathLike, *, token_dtype: str = "uint16", items=None, pythia_steps=None) -> tuple:
    """What :func:`open_token_file` checks before reading anything: the files exist and the options fit them.

    ``("indexed", PREFIX, (A, B) or None, "items" | "pythia_steps")`` for an indexed dataset (its ``.bin``
    beside the ``.idx``; Pythia steps turned into items), ``("raw", path, None, None)`` for a raw ``.bin``
    stream (with a known ``token_dtype``); a one-line error otherwise."""
    from ..io import input_path

    p = input_path(path, "token file", "give a .bin token stream or an indexed dataset", missing_ok=True)
    prefix = p.with_suffix("") if p.suffix in (".idx", ".bin") else p
    idx = input_path(f"{prefix}.idx", "index file", "an indexed dataset is PREFIX.idx + PREFIX.bin", missing_ok=True)
    items = parse_range(items, "items")
    steps = parse_range(pythia_steps, "pythia_steps")
    require(items is None or steps is None, "give {items} or {pythia_steps}, not both")
    if idx.is_file():
        require(Path(f"{prefix}.bin").exists(),
                f"{idx} has no {Path(f'{prefix}.bin')} beside it; an indexed dataset is PREFIX.idx + PREFIX.bin")
        input_path(f"{prefix}.bin", "token file", "an indexed dataset is PREFIX.idx + PREFIX.bin")
        require(token_dtype == "uint16", f"{{token_dtype}} is the dtype of a raw .bin stream, but {idx} records its own; "
                                         "leave {token_dtype} out")
        return ("indexed", prefix, items if steps is None else (steps[0] * PYTHIA_BATCH, steps[1] * PYTHIA_BATCH),
                "pythia_steps" if steps is not None else "items")
    require(items is None and steps is None, f"{{items}} and {{pythia_steps}} select items of an indexed dataset, but "
                                             f"{idx} does not exist; give PREFIX.idx + PREFIX.bin")
    require(p.suffix == ".bin", f"token file {p} not found; give a .bin token stream or an indexed dataset")
    input_path(p, "token file", "give a .bin token stream or an indexed dataset")
    require(token_dtype in TOKEN_DTYPES, f"{{token_dtype}} must be one of {', '.join(TOKEN_DTYPES)}, got {token_dtype!r}")
    return ("raw", p, None, None)


def open_token_file(path: str | os.PathLike, *, token_dtype: str = "uint16", items=None, pythia_steps=None) -> TokenFile:
    """A raw ``.bin`` stream, or an indexed dataset given as ``PREFIX.idx``, ``PREFIX.bin`` or ``PREFIX``."""
    layout, p, selection, what = locate_token_file(path, token_dtype=token_dtype, items=items, pythia_steps=pythia_steps)
    if layout == "indexed":
        return _open_indexed(p, selection, what)
    dt = np.dtype(TOKEN_DTYPES[token_dtype])
    size = p.stat().st_size
    require(size % dt.itemsize == 0, f"{p} has {size} bytes, not a whole number of {token_dtype} tokens; check {{token_dtype}}")
    require(size > 0, f"{p} is empty; give a token file with tokens in it")
    mm = np.memmap(p, dtype=dt, mode="r")
    return TokenFile(p, mm, np.zeros(1, np.int64), np.array([mm.shape[0]], np.int64))


def _check_index(idx: Path, binp: Path, sizes, pointers, itemsize: int, bin_size: int) -> None:
    """Every item of the index lies inside the ``.bin``: sizes >= 0, pointers >= 0 and whole tokens, and
    ``pointer + size * itemsize <= bin size`` for every item (not only the last); checked a block at a time."""
    for a in range(0, len(sizes), _CHECK_BLOCK):
        sz = np.asarray(sizes[a:a + _CHECK_BLOCK], dtype=np.int64)
        pt = np.asarray(pointers[a:a + _CHECK_BLOCK], dtype=np.int64)
        for bad, why in ((sz < 0, "a negative size"), (pt < 0, "a negative pointer"),
                         (pt % itemsize != 0, f"a pointer that is not a whole number of {itemsize}-byte tokens"),
                         ((pt > bin_size) | (sz * itemsize > bin_size - pt), f"data that runs past the end of {binp.name} ({bin_size} bytes)")):
            if bad.any():
                i = a + int(np.argmax(bad))
                raise LeadTermError(f"{idx} does not match {binp}: item {i} has {why} (size {int(sizes[i])}, pointer "
                                    f"{int(pointers[i])}); give the .idx written with this .bin")


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
    sizes = np.memmap(idx, dtype=np.int32, mode="r", offset=34, shape=(n,)) if n else np.zeros(0, np.int32)
    pointers = np.memmap(idx, dtype=np.int64, mode="r", offset=34 + n * 4, shape=(n,)) if n else np.zeros(0, np.int64)
    bin_size = binp.stat().st_size
    _check_index(idx, binp, sizes, pointers, dt.itemsize, bin_size)
    a, b = items if items is not None else (0, n)
    require(b <= n, f"{{{what}}} selects items up to {b - 1} but {idx} has {n} items (0..{n - 1})"
            + ((f", i.e. Pythia steps 0..{n // PYTHIA_BATCH - 1}" if n >= PYTHIA_BATCH else ", not one whole Pythia step")
               if what == "pythia_steps" else ""))
    tokens = np.memmap(binp, dtype=dt, mode="r") if bin_size else np.zeros(0, dt)
    starts = np.asarray(pointers[a:b], dtype=np.int64) // dt.itemsize
    return TokenFile(binp, tokens, starts, np.asarray(sizes[a:b], dtype=np.int64), first_item=a, indexed=True)
