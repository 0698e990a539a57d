"""Reading documents: text files (a block at a time), folders of ``.txt`` files, Hugging Face datasets
(streamed a row at a time) and the embedded corpus, one document at a time.

Text files are read in ``encoding`` (default utf-8); a binary file or bytes that are not valid in the
encoding are refused in one line.  Documents are separated by lines holding only ``<|endoftext|>``
and every file ends a document.  ``max_docs`` bounds the stream (no bound by default; a warning says
when it cut a dataset stream).
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Iterable, Iterator

from ..data.stories import DEFAULT_CORPUS_NAME, default_corpus_texts
from ..errors import LeadTermError, require
from ..logs import quiet
from ..params import check
from ..tokenization import EOS_TEXT


def _split_documents(lines: Iterable[str]) -> Iterator[str]:
    """Documents separated by lines holding only the end-of-text token, one at a time."""
    cur: list[str] = []
    for line in lines:
        if line.strip() == EOS_TEXT:
            doc = "\n".join(cur).strip()
            if doc:
                yield doc
            cur = []
        else:
            cur.append(line.rstrip("\r\n"))
    doc = "\n".join(cur).strip()
    if doc:
        yield doc


def _iter_text_path(p: Path, encoding: str = "utf-8") -> Iterator[str]:
    files = [p] if p.is_file() else sorted(q for q in p.rglob("*.txt") if q.is_file())
    require(bool(files), f"folder {p} has no .txt files; give a text file, a folder of .txt files, a .npy array or a dataset name")
    for f in files:
        yield from _split_documents(iter_lines(f, encoding))


def iter_lines(f: Path, encoding: str = "utf-8") -> Iterator[str]:
    """The lines of text file ``f``, read a block at a time; binary files or bytes that are not ``encoding``
    are refused in one line (the whole file is never held).

    ``encoding`` is any name Python's codecs accept for a text encoding (``utf_16``, ``UTF8``, ``latin1`` ...).
    A byte-order mark at the start of the file is dropped (never a token); a NUL character in the decoded text
    marks a binary file.
    """
    import codecs

    decoder = text_decoder(encoding)
    wide = codecs.lookup(encoding).name.startswith(("utf-16", "utf-32"))   # the only codecs whose text holds NUL bytes
    try:
        fh = open(f, "rb")
    except OSError as e:
        raise LeadTermError(f"cannot read {f}: {e.strerror}; check the path and its permissions") from None
    try:
        offset, rest, first = 0, "", True
        while True:
            try:
                block = fh.read(1 << 20)
            except OSError as e:
                raise LeadTermError(f"cannot read {f}: {e.strerror}; check the file and its permissions") from None
            nul = -1 if wide else block.find(b"\x00")
            if nul >= 0:
                raise LeadTermError(f"{f} is not text (a NUL byte at offset {offset + nul}: a binary file, an image or an "
                                    "archive?); give a text file")
            try:
                text = rest + decoder.decode(block, final=not block)
            except UnicodeDecodeError as e:
                raise LeadTermError(f"{f} is not valid {encoding} text (byte {offset + e.start}: {block[e.start:e.start + 4]!r}); "
                                    f"pass the file's {{encoding}} (e.g. latin-1) or convert it to UTF-8") from None
            if first and text:   # a byte-order mark is not text (utf-16/utf-8-sig decoders drop theirs already)
                text, first = text[1:] if text[0] == "\ufeff" else text, False
            nul = text.find("\x00")
            if nul >= 0:
                raise LeadTermError(f"{f} is not text (a NUL character near byte {offset}: a binary file, an image or an "
                                    "archive?); give a text file")
            offset += len(block)
            lines = text.splitlines(keepends=True)
            rest = lines.pop() if lines and not block == b"" and not lines[-1].endswith(("\n", "\r")) else ""
            yield from lines
            if not block:
                if rest:
                    yield rest
                return
    finally:
        fh.close()


def text_decoder(encoding: str):
    """An incremental decoder for ``encoding`` (any alias Python's codecs accept); a one-line error for a name that
    is not a text encoding."""
    import codecs

    try:
        info = codecs.lookup(str(encoding))
    except (LookupError, TypeError, ValueError):
        raise LeadTermError(f"unknown {{encoding}} {encoding!r}; give a Python codec name such as utf-8 or latin-1") from None
    if not getattr(info, "_is_text_encoding", True) or info.incrementaldecoder is None:
        raise LeadTermError(f"{{encoding}} {encoding!r} is not a text encoding; give one such as utf-8, utf-16 or latin-1")
    return info.incrementaldecoder()


def read_text(f: Path, encoding: str = "utf-8") -> str:
    """The whole text of ``f`` in ``encoding`` (refused in one line as :func:`iter_lines` does)."""
    return "".join(iter_lines(f, encoding))


def _iter_dataset(name: str, text_column: str, split: str, max_docs: int | None) -> Iterator[str]:
    try:
        import datasets
    except Exception as e:  # pragma: no cover
        raise LeadTermError(f"reading dataset {name!r} needs the 'datasets' package: {e}") from None
    local = Path(name)
    # a local file or folder fails for what is in it; only a hub name can fail for the network
    if local.is_file():
        kind = _DATASET_FILE_KINDS[local.suffix.lower()]
        fix = f"check that {name} is valid {kind} with a {text_column!r} field, and that {{split}} {split!r} is right"
    elif local.is_dir():
        fix = f"check the data files in folder {name} (json, csv, parquet or text) and that {{split}} {split!r} exists"
    else:
        fix = "check the name and the split, and that the Hugging Face hub is reachable, or give a local text file"
    try:
        with quiet("datasets", level=logging.CRITICAL):   # its chatter while opening (levels restored)
            if local.is_file():  # one json/jsonl/csv/parquet file
                ds = datasets.load_dataset(_DATASET_FILE_BUILDERS[local.suffix.lower()], data_files=str(local),
                                           split=split, streaming=True)
            elif local.is_dir():
                ds = datasets.load_dataset(str(local), split=split, streaming=True)
            else:
                ds = datasets.load_dataset(name, split=split, streaming=True)
    except Exception as e:
        raise LeadTermError(f"could not open dataset {name!r} split {split!r} ({_short(e)}); {fix}") from None
    n = 0
    from tqdm.auto import tqdm

    def rows():   # each row read with the library quiet (it logs its parse errors before raising them), levels
        it = iter(ds)   # restored while the caller has the document
        while True:
            with quiet("datasets", level=logging.CRITICAL):
                try:
                    row = next(it)
                except StopIteration:
                    return
            yield row

    try:
        for row in tqdm(rows(), desc=f"reading {name}", total=max_docs, unit="doc", leave=False):
            if max_docs is not None and n >= max_docs:   # one more document exists: say that the bound cut it
                warnings.warn(f"dataset {name!r}: read the first {max_docs:,} documents; more remain (max_docs, "
                              "--max-docs, bounds the stream)", stacklevel=3)
                break
            if text_column not in row:
                raise LeadTermError(f"dataset {name!r} has no column {text_column!r} (columns: {', '.join(row)}); pass {{text_column}}")
            text = row[text_column]
            if isinstance(text, str) and text.strip():
                n += 1
                yield text.strip()
    except LeadTermError:
        raise
    except GeneratorExit:
        raise
    except Exception as e:
        raise LeadTermError(f"reading dataset {name!r} failed ({_short(e)}); {fix}") from None


def _short(e: BaseException) -> str:
    """``Type: first line of the message`` (at most 160 characters), for one-line errors."""
    if isinstance(e, StopIteration):    # raised by the library when a file has no rows
        return "it holds no rows"
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text[:160]}" if text else type(e).__name__


def read_documents(source: str | os.PathLike, *, text_column: str = "text", split: str = "train",
                   max_docs: int | None = None, encoding: str = "utf-8") -> list[str]:
    """Read the documents of a text source (see the module docstring); text files must be ``encoding``."""
    return list(iter_documents(source, text_column=text_column, split=split, max_docs=max_docs, encoding=encoding))


def iter_documents(source: str | os.PathLike, *, text_column: str = "text", split: str = "train",
                   max_docs: int | None = None, encoding: str = "utf-8") -> Iterator[str]:
    """The documents of a text source one at a time (files and dataset streams are never held whole)."""
    max_docs = check("max_docs", max_docs, optional=True)
    s = str(source)
    reader = document_reader(s)
    if reader == "builtin":
        docs = iter(default_corpus_texts())
    elif reader == "dataset":
        docs = _iter_dataset(s[3:] if s.startswith("hf:") else s, text_column, split, max_docs)
    else:
        docs = _iter_text_path(Path(s), encoding)
    for i, d in enumerate(docs):
        if max_docs is not None and i >= max_docs:
            return
        yield d


def document_reader(source: str | os.PathLike) -> str:
    """Which reader a text source needs, without reading it: ``"builtin"`` (the embedded corpus), ``"dataset"``
    (``hf:NAME``, a hub name, a json/jsonl/csv/parquet file or a dataset folder, read with ``datasets``) or
    ``"text"`` (a text file or a folder of ``.txt`` files); a one-line error for a path that does not exist."""
    s = str(source)
    if s == DEFAULT_CORPUS_NAME or s == "builtin":
        return "builtin"
    if s.startswith("hf:"):
        return "dataset"
    from ..io import input_path

    p = input_path(s, "corpus", "give a text file, a folder of .txt files, a .npy array or a dataset name", folder=True,
                   missing_ok=True)
    if p.is_file():
        return "dataset" if p.suffix.lower() in _DATASET_FILE_BUILDERS else "text"
    if p.is_dir():
        return "dataset" if _looks_like_dataset_dir(p) else "text"
    if "/" in s and not s.startswith((".", "/", "~")) and p.suffix.lower() not in _FILE_SUFFIXES:
        return "dataset"
    raise LeadTermError(f"corpus {s!r} not found; give {DEFAULT_CORPUS_NAME}, a text file, a folder of .txt files, a .npy array, "
                        "or a dataset name like roneneldan/TinyStories")


_DATASET_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
_DATASET_FILE_KINDS = {".jsonl": "JSON lines", ".json": "JSON", ".csv": "CSV", ".parquet": "Parquet"}
_FILE_SUFFIXES = {".txt", ".npy", *_DATASET_FILE_BUILDERS}


def _looks_like_dataset_dir(p: Path) -> bool:
    return any(next(p.rglob(pat), None) is not None for pat in ("*.jsonl", "*.json", "*.parquet", "*.csv", "*.arrow"))

