"""Corpora of real size: windows streamed a chunk at a time, so peak memory is a chunk, not the corpus.

A :class:`WindowStream` is re-iterable (every pass of the basis engine reads it again) and yields
:class:`~tl_leadterm.corpus.Windows` chunks of at most ``chunk_windows`` windows, gathered from a
memory-mapped token file (:mod:`tl_leadterm.corpus.tokenfiles`: a raw ``.bin`` stream, a Megatron /
GPT-NeoX indexed dataset, or a ``.npy`` of windows).  :meth:`WindowStream.shard` restricts it to
a contiguous block of windows, for data-parallel ranks and for shards run as separate jobs;
the concatenation of the shards, in order, is the whole stream.
"""

from __future__ import annotations

import numbers
import os
import re
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .windows import Windows, validate_token_array
from ..errors import LeadTermError, require
from ..params import check
from .tokenfiles import TokenFile, open_token_file


class WindowStream:
    """Windows of ``seq_len + 1`` tokens from a memory-mapped token file, streamed in chunks (module docstring)."""

    def __init__(self, file: TokenFile, seq_len: int, vocab_size: int, *, tokenizer=None, source: str = "",
                 chunk_windows: int = 4096, lo: int = 0, hi: int | None = None):
        self.file, self.seq_len, self.vocab_size = file, check("seq_len", seq_len), check("vocab_size", vocab_size)
        self.tokenizer, self.source, self.chunk_windows = tokenizer, source or str(file.path), check("chunk_windows", chunk_windows)
        total = file.n_windows(self.seq_len)
        lo, hi = int(lo), total if hi is None else int(hi)
        require(0 <= lo <= hi <= total, f"windows {lo}..{hi} are outside the stream's 0..{total}")
        self.lo, self.hi = lo, hi
        longest = int(file.sizes.max()) if len(file.sizes) else 0
        require(total > 0, f"{file.path} has no window of {self.seq_len + 1} tokens (seq_len+1)"
                + (f"; its longest segment has {longest} tokens: use a smaller {{seq_len}} ({longest - 1} or less)" if longest >= 3
                   else "; give a token file with tokens in it"))

    @property
    def n_windows(self) -> int:
        return self.hi - self.lo

    @property
    def n_positions(self) -> int:
        return self.n_windows * self.seq_len

    @property
    def dropped_tokens(self) -> int:
        return self.file.dropped_tokens(self.seq_len)

    def shard(self, index: int, count: int) -> "WindowStream":
        """The ``index``-th of ``count`` contiguous blocks of windows (0-based)."""
        index, count = check_shard(index, count)
        n = self.n_windows
        a, b = self.lo + index * n // count, self.lo + (index + 1) * n // count
        return WindowStream(self.file, self.seq_len, self.vocab_size, tokenizer=self.tokenizer, source=self.source,
                            chunk_windows=self.chunk_windows, lo=a, hi=b)

    def __iter__(self) -> Iterator[Windows]:
        T, buf, count = self.seq_len, [], 0
        for starts in self.file.window_starts(T, self.lo, self.hi):
            i = 0
            while i < len(starts):
                part = starts[i:i + self.chunk_windows - count]   # never more than chunk_windows per chunk
                buf.append(part)
                count += len(part)
                i += len(part)
                if count == self.chunk_windows:
                    yield self._chunk(np.concatenate(buf))
                    buf, count = [], 0
        if buf:
            yield self._chunk(np.concatenate(buf))

    def _chunk(self, starts: np.ndarray) -> Windows:
        t = torch.from_numpy(self.file.gather(starts, self.seq_len, self.vocab_size))
        return Windows(t, torch.full((t.shape[0],), t.shape[1], dtype=torch.long), self.vocab_size, self.tokenizer, self.source)

    def token_frequencies(self) -> torch.Tensor:
        """How often each token occurs as an input (one streaming pass)."""
        freq = torch.zeros(self.vocab_size, dtype=torch.long)
        for w in self:
            freq += torch.bincount(w.inputs.reshape(-1), minlength=self.vocab_size)[: self.vocab_size]
        return freq

    def corpus_digest(self) -> str:
        """A digest of the whole token file's windows that every shard computes alike, cheaply
        (:meth:`~tl_leadterm.corpus.tokenfiles.TokenFile.digest`: its layout and evenly spaced sample windows)."""
        return self.file.digest(self.seq_len, self.vocab_size)

    def to_windows(self) -> Windows:
        """All the stream's windows in memory (refused in one line when they do not fit)."""
        from ..io import available_bytes

        need, have = 2 * self.n_windows * (self.seq_len + 1) * 8, available_bytes()
        require(need <= have, f"the {self.n_windows:,} windows of {self.file.path} need about {need / 2**30:.1f} GB in memory but "
                              f"{have / 2**30:.1f} GB is available; select fewer with {{items}} or {{pythia_steps}}")
        parts = [w.tokens for w in self]
        t = torch.cat(parts) if parts else torch.zeros((0, self.seq_len + 1), dtype=torch.long)
        return Windows(t, torch.full((t.shape[0],), t.shape[1], dtype=torch.long), self.vocab_size, self.tokenizer, self.source)


def corpus_digest(windows) -> str:
    """What a corpus is, for shard files: a stream's :meth:`WindowStream.corpus_digest`, in-memory windows' fingerprint."""
    return windows.corpus_digest() if isinstance(windows, WindowStream) else windows.fingerprint


def _npy_file(path: Path, seq_len: int | None, vocab_size: int | None) -> tuple[TokenFile, int]:
    """A ``.npy`` of windows ``[n, T+1]``, memory-mapped, as a token file of n segments."""
    arr = np.load(path, mmap_mode="r", allow_pickle=False)
    validate_token_array(arr[:1] if arr.ndim == 2 and arr.shape[0] else arr, vocab_size, seq_len, what=path.name)
    require(arr.dtype.kind in "iu", f"{path.name} has dtype {arr.dtype}; token ids must be integers: save it with .astype(numpy.int64)")
    n, width = arr.shape
    flat = arr.reshape(-1) if arr.flags.c_contiguous else np.ascontiguousarray(arr).reshape(-1)
    return TokenFile(path, flat, np.arange(n, dtype=np.int64) * width, np.full(n, width, np.int64)), width - 1


def open_stream(source: str | os.PathLike, *, seq_len: int | None, vocab_size: int | None, tokenizer=None,
                token_dtype: str = "uint16", items=None, pythia_steps=None, chunk_windows: int = 4096,
                max_docs: int | None = None) -> WindowStream:
    """A :class:`WindowStream` over a token file: ``.bin`` (raw or indexed), ``.idx``, an indexed prefix, or ``.npy``.

    ``max_docs`` bounds text documents and has no meaning here: it is refused (select items with ``items``).
    A ``tokenizer`` (for the basis' token labels) must fit in ``vocab_size``.
    """
    from ..tokenization import resolve_tokenizer

    vocab_size = check("vocab_size", vocab_size, optional=True)
    chunk_windows = check("chunk_windows", chunk_windows)
    require(vocab_size is not None, "a token file is pre-tokenized: pass {vocab_size} (the number of token ids, 50304 for Pythia)")
    require(max_docs is None, "{max_docs} bounds the documents of a text corpus; a token file is already tokenized: "
                              "select items with {items} or {pythia_steps} instead")
    p = Path(source)
    if p.suffix == ".npy":
        input_path(p, "token file")
        require(items is None and pythia_steps is None, "{items} and {pythia_steps} apply to indexed datasets, not .npy windows")
        file, T = _npy_file(p, check("seq_len", seq_len, optional=True), vocab_size)
    else:
        seq_len = check("seq_len", seq_len, optional=True)
        require(seq_len is not None, "{seq_len} is needed to cut a token file into windows")
        file, T = open_token_file(p, token_dtype=token_dtype, items=items, pythia_steps=pythia_steps), seq_len
    tok = resolve_tokenizer(tokenizer) if tokenizer not in (None, "words") else None
    require(tokenizer != "words", "the 'words' tokenizer is built from text, but a token file is already tokenized; "
                                  "give the {tokenizer} the file was tokenized with (or none)")
    require(tok is None or tok.vocab_size <= vocab_size,
            f"the tokenizer has {tok.vocab_size if tok is not None else 0:,} tokens but {{vocab_size}} is {vocab_size:,}; a basis "
            f"would record a tokenizer its vocabulary cannot hold: pass {{vocab_size}} {tok.vocab_size if tok is not None else 0} "
            "or more (the model's d_vocab, e.g. 50304 for Pythia), or the tokenizer the file was made with")
    return WindowStream(file, T, vocab_size, tokenizer=tok, source=str(source), chunk_windows=chunk_windows)


def open_text_stream(source, *, seq_len: int, tokenizer=None, vocab_size: int | None = None, text_column: str = "text",
                     split: str = "train", max_docs: int | None = None, word_vocab_size: int | None = None,
                     word_min_count: int = 1, encoding: str = "utf-8", workdir=None, chunk_windows: int = 4096) -> WindowStream:
    """A text corpus packed as ``load_corpus(..., pack="join")`` packs it (documents joined by end-of-text, windows of
    T+1 tokens one after another), with bounded memory: documents are read one at a time, tokenized in batches
    into a temporary token file (deleted with the stream), and the windows are streamed from it.  The word
    tokenizer's vocabulary is counted in a first streaming pass.  Same windows, so same basis and fingerprint.

    The temporary folder (in ``workdir``, default the system's temporary folder) carries the process id: folders
    of processes that were killed are removed by the next call.  A full disk is a one-line error."""
    from .documents import iter_documents, text_decoder
    from ..tokenization import WordTokenizer, build_word_tokenizer, resolve_tokenizer

    seq_len = check("seq_len", seq_len)
    vocab_size = check("vocab_size", vocab_size, optional=True)
    require(tokenizer in (None, "words") or (word_vocab_size is None and word_min_count == 1),
            "{word_vocab_size} and {word_min_count} bound the 'words' tokenizer's vocabulary; another {tokenizer} has its "
            "own, so leave them out")
    word_vocab_size = check("word_vocab_size", word_vocab_size, optional=True)
    word_min_count = check("word_min_count", word_min_count)
    max_docs = check("max_docs", max_docs, optional=True)
    chunk_windows = check("chunk_windows", chunk_windows)
    text_decoder(encoding)                    # an unknown encoding fails before any reading
    docs = lambda: iter_documents(source, text_column=text_column, split=split, max_docs=max_docs, encoding=encoding)  # noqa: E731
    if tokenizer in (None, "words"):
        tok = build_word_tokenizer(docs(), max_size=word_vocab_size, min_count=word_min_count)
    else:
        tok = resolve_tokenizer(tokenizer)
    V = tok.vocab_size if vocab_size is None else vocab_size
    require(V >= tok.vocab_size or not isinstance(tok, WordTokenizer),
            f"{{vocab_size}} {V} is smaller than the word vocabulary ({tok.vocab_size})")
    dt = np.uint16 if V <= 1 << 16 else np.uint32
    tmp = _token_tempdir(workdir)
    path = Path(tmp.name) / "tokens.bin"
    n, batch, n_docs = 0, [], 0
    try:
        with open(path, "wb") as fh:
            def flush():
                nonlocal n
                for ids in tok.encode_batch(batch):
                    arr = np.asarray(ids + ([tok.eos_id] if tok.eos_id is not None else []), dtype=np.int64)
                    if arr.size and int(arr.max()) >= V:
                        raise LeadTermError(f"the tokenizer produced id {int(arr.max())} >= vocab size {V}; pass a larger {{vocab_size}}")
                    fh.write(arr.astype(dt).tobytes())
                    n += arr.size
                batch.clear()
            for d in docs():
                batch.append(d)
                n_docs += 1
                if len(batch) == 1024:
                    flush()
            flush()
    except OSError as e:
        tmp.cleanup()
        raise LeadTermError(f"cannot write the temporary token file in {Path(tmp.name).parent} ({e.strerror}; {n:,} tokens "
                            "written); free some space there or set TMPDIR to a folder on a disk with room") from None
    except BaseException:
        tmp.cleanup()
        raise
    require(n_docs > 0, f"corpus {str(source)!r} is empty; give a corpus with text in it")
    require(n >= seq_len + 1, f"the corpus has {n:,} tokens, so no window of {seq_len + 1} tokens (seq_len+1); use a larger "
                              f"corpus" + (f" or a smaller {{seq_len}} ({n - 1} or less)" if n >= 3 else ""))
    file = TokenFile(path, np.memmap(path, dtype=dt, mode="r"), np.zeros(1, np.int64), np.array([n], np.int64), stride=seq_len + 1)
    stream = WindowStream(file, seq_len, V, tokenizer=tok, source=str(source), chunk_windows=chunk_windows)
    stream._tmp = tmp            # the token file lives as long as the stream
    return stream


_TOKENS_PREFIX = "tl_leadterm_tokens_"
_TOKENS_DIR = re.compile(re.escape(_TOKENS_PREFIX) + r"(\d+)_")


def _token_tempdir(workdir=None):
    """A temporary folder named with this process' id; stale ones of dead processes in the same place are removed."""
    import shutil
    import tempfile

    from ..io import _alive

    where = Path(workdir) if workdir is not None else Path(tempfile.gettempdir())
    try:
        for q in where.iterdir():
            m = _TOKENS_DIR.match(q.name)
            if m and q.is_dir() and not q.is_symlink() and int(m.group(1)) != os.getpid() and not _alive(int(m.group(1))):
                shutil.rmtree(q, ignore_errors=True)
    except OSError:
        pass
    try:
        return tempfile.TemporaryDirectory(prefix=f"{_TOKENS_PREFIX}{os.getpid()}_", dir=workdir)
    except OSError as e:
        raise LeadTermError(f"cannot create a temporary folder in {where} for the token file ({e.strerror}); "
                            "set TMPDIR to a writable folder") from None


def is_token_file(source) -> bool:
    """Does ``source`` name a token file that :func:`open_stream` reads (rather than text)?"""
    s = str(source)
    p = Path(s)
    return p.suffix in (".bin", ".idx", ".npy") or (not p.suffix and Path(f"{s}.idx").is_file())


def shard_of(windows, index: int, count: int):
    """The ``index``-th of ``count`` contiguous blocks of windows, as an iterable of chunks (a stream's
    shard, or a one-chunk list for in-memory windows); the blocks in order make the whole corpus."""
    if isinstance(windows, WindowStream):
        return windows.shard(index, count)
    index, count = check_shard(index, count)
    n = windows.n_windows
    part = windows[index * n // count:(index + 1) * n // count]
    return [part] if part.n_windows else []


def check_shard(index, count) -> tuple[int, int]:
    """``(index, count)`` as ints, for shard ``index`` of ``count`` (0-based); a one-line error otherwise."""
    ok = all(isinstance(x, numbers.Integral) and not isinstance(x, bool) for x in (index, count))
    require(ok and count >= 1 and 0 <= index < count, f"{{shard}} must be I/N with integers 0 <= I < N, got {index}/{count}")
    return int(index), int(count)
