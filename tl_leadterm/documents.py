"""Reading documents: text files (a block at a time), folders of ``.txt`` files, Hugging Face datasets
(streamed a row at a time) and the embedded corpus, one document at a time.

Text files are read in ``encoding`` (default utf-8); a binary file or bytes that are not valid in the
encoding are refused in one line.  Documents are separated by lines holding only ``<|endoftext|>``
and every file ends a document.  ``max_docs`` bounds the stream (no bound by default; a warning says
when it cut a dataset stream).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Iterable, Iterator

from .data.stories import DEFAULT_CORPUS_NAME, default_corpus_texts
from .errors import LeadTermError, require
from .tokenization import EOS_TEXT


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
    are refused in one line (the whole file is never held)."""
    try:
        fh = open(f, "rb")
    except OSError as e:
        raise LeadTermError(f"cannot read {f}: {e.strerror}; check the path and its permissions") from None
    try:
        import codecs
        try:
            decoder = codecs.getincrementaldecoder(encoding)()
        except LookupError:
            raise LeadTermError(f"unknown {{encoding}} {encoding!r}; give a Python codec name such as utf-8 or latin-1") from None
        utf16 = encoding.lower().replace("-", "").startswith("utf16")
        offset, rest = 0, ""
        while True:
            block = fh.read(1 << 20)
            nul = block.find(b"\x00") if not utf16 else -1
            if nul >= 0:
                raise LeadTermError(f"{f} is not text (a NUL byte at offset {offset + nul}: a binary file, an image or an "
                                    "archive?); give a text file")
            try:
                text = rest + decoder.decode(block, final=not block)
            except UnicodeDecodeError as e:
                raise LeadTermError(f"{f} is not valid {encoding} text (byte {offset + e.start}: {block[e.start:e.start + 4]!r}); "
                                    f"pass the file's {{encoding}} (e.g. latin-1) or convert it to UTF-8") from None
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


def read_text(f: Path, encoding: str = "utf-8") -> str:
    """The whole text of ``f`` in ``encoding`` (refused in one line as :func:`iter_lines` does)."""
    return "".join(iter_lines(f, encoding))


def _iter_dataset(name: str, text_column: str, split: str, max_docs: int | None) -> Iterator[str]:
    try:
        import datasets
    except Exception as e:  # pragma: no cover
        raise LeadTermError(f"reading dataset {name!r} needs the 'datasets' package: {e}") from None
    datasets.logging.set_verbosity_error()
    local = Path(name)
    try:
        if local.is_file():  # one json/jsonl/csv/parquet file
            ds = datasets.load_dataset(_DATASET_FILE_BUILDERS[local.suffix.lower()], data_files=str(local),
                                       split=split, streaming=True)
        elif local.is_dir():
            ds = datasets.load_dataset(str(local), split=split, streaming=True)
        else:
            ds = datasets.load_dataset(name, split=split, streaming=True)
    except Exception as e:
        raise LeadTermError(
            f"could not open dataset {name!r} split {split!r} with datasets.load_dataset(streaming=True) "
            f"({type(e).__name__}); check the name, the split, and that the hub is reachable, or give a local text file"
        ) from None
    n = 0
    from tqdm.auto import tqdm

    try:
        for row in tqdm(ds, desc=f"reading {name}", total=max_docs, unit="doc", leave=False):
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
        raise LeadTermError(f"reading dataset {name!r} failed ({type(e).__name__}: {e}); check the dataset name and network") from None


def read_documents(source: str | os.PathLike, *, text_column: str = "text", split: str = "train",
                   max_docs: int | None = None, encoding: str = "utf-8") -> list[str]:
    """Read the documents of a text source (see the module docstring); text files must be ``encoding``."""
    return list(iter_documents(source, text_column=text_column, split=split, max_docs=max_docs, encoding=encoding))


def iter_documents(source: str | os.PathLike, *, text_column: str = "text", split: str = "train",
                   max_docs: int | None = None, encoding: str = "utf-8") -> Iterator[str]:
    """The documents of a text source one at a time (files and dataset streams are never held whole)."""
    require(max_docs is None or (isinstance(max_docs, int) and not isinstance(max_docs, bool) and max_docs >= 1),
            f"{{max_docs}} must be a positive integer, got {max_docs!r}")
    s = str(source)
    if s == DEFAULT_CORPUS_NAME or s == "builtin":
        docs = iter(default_corpus_texts())
    elif s.startswith("hf:"):
        docs = _iter_dataset(s[3:], text_column, split, max_docs)
    else:
        p = Path(s)
        if p.is_file() and p.suffix.lower() in _DATASET_FILE_BUILDERS:
            docs = _iter_dataset(s, text_column, split, max_docs)
        elif p.is_file():
            docs = _iter_text_path(p, encoding)
        elif p.is_dir():
            docs = (_iter_dataset(s, text_column, split, max_docs) if _looks_like_dataset_dir(p)
                    else _iter_text_path(p, encoding))
        elif "/" in s and not s.startswith((".", "/", "~")) and p.suffix.lower() not in _FILE_SUFFIXES:
            docs = _iter_dataset(s, text_column, split, max_docs)
        else:
            raise LeadTermError(f"corpus {s!r} not found; give {DEFAULT_CORPUS_NAME}, a text file, a folder of .txt files, a .npy array, or a dataset name like roneneldan/TinyStories")
    for i, d in enumerate(docs):
        if max_docs is not None and i >= max_docs:
            return
        yield d


_DATASET_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
_FILE_SUFFIXES = {".txt", ".npy", *_DATASET_FILE_BUILDERS}


def _looks_like_dataset_dir(p: Path) -> bool:
    return any(next(p.rglob(pat), None) is not None for pat in ("*.jsonl", "*.json", "*.parquet", "*.csv", "*.arrow"))

