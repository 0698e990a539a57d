"""Reading a corpus source into token windows (:func:`load_corpus`), and checking one first (:func:`validate_source`)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..errors import LeadTermError, require
from ..io import input_path
from ..params import check
from ..tokenization import WordTokenizer, resolve_tokenizer
from .documents import document_reader, read_documents, text_decoder
from .windows import Windows, validate_token_array, windows_from_documents

#: what :func:`validate_source` calls a source
SOURCE_KINDS = ("builtin", "text", "dataset", "windows", "token-file")


def validate_source(source: str | os.PathLike, *, seq_len: int, tokenizer=None, vocab_size: int | None = None,
                    pack: str = "join", max_docs: int | None = None, word_vocab_size: int | None = None,
                    word_min_count: int = 1, encoding: str = "utf-8", token_dtype: str = "uint16", items=None,
                    pythia_steps=None, text_column: str = "text", split: str = "train") -> str:
    """Check a corpus source and the options given for it without reading the corpus; its kind, one of
    :data:`SOURCE_KINDS` (``"windows"``: a ``.npy`` array of windows; ``"token-file"``: a raw ``.bin`` stream or
    an indexed dataset).

    Refused in one line, as :func:`load_corpus` refuses them (it calls this first): parameters out of range, a
    source that does not exist, options that do not apply to the source (``max_docs``, ``pack="cut"`` or the
    ``"words"`` tokenizer, its bounds or a text ``encoding`` for pre-tokenized data, ``items``/``pythia_steps`` for
    anything but an indexed dataset, word-tokenizer bounds with another tokenizer, ``text_column``/``split`` for
    anything but a dataset, an ``encoding`` for anything but text files), an unknown text ``encoding`` or ``token_dtype``, a missing
    ``vocab_size`` for pre-tokenized data.  Cheap: at most a directory listing and the index header are looked
    at; what only the data can tell (token ids in range, the text's encoding) is checked while reading it.
    """
    return _checked_source(source, seq_len=seq_len, tokenizer=tokenizer, vocab_size=vocab_size, pack=pack,
                           max_docs=max_docs, word_vocab_size=word_vocab_size, word_min_count=word_min_count,
                           encoding=encoding, token_dtype=token_dtype, items=items, pythia_steps=pythia_steps,
                           text_column=text_column, split=split)[0]


def _checked_source(source, *, seq_len, tokenizer, vocab_size, pack, max_docs, word_vocab_size, word_min_count, encoding,
                    token_dtype, items, pythia_steps, text_column="text", split="train") -> tuple[str, dict]:
    """:func:`validate_source`'s kind, and the numeric options as checked (plain ints)."""
    from .streams import is_token_file
    from .tokenfiles import locate_token_file

    seq_len = check("seq_len", seq_len)
    vocab_size = check("vocab_size", vocab_size, optional=True)
    word_vocab_size = check("word_vocab_size", word_vocab_size, optional=True)
    word_min_count = check("word_min_count", word_min_count)
    max_docs = check("max_docs", max_docs, optional=True)
    require(pack in ("join", "cut"), f"{{pack}} must be 'join' or 'cut', got {pack!r}")
    s = str(source)
    require(tokenizer in (None, "words") or (word_vocab_size is None and word_min_count == 1),
            "{word_vocab_size} and {word_min_count} bound the 'words' tokenizer's vocabulary; another {tokenizer} has its "
            "own, so leave them out")
    pretokenized = s.endswith(".npy") or is_token_file(s)
    if pretokenized:
        require(max_docs is None, "{max_docs} bounds the documents of a text corpus, but " + s + " is already tokenized; "
                                  "select items of an indexed dataset with {items} or {pythia_steps} instead")
        require(pack == "join", "{pack} cut cuts text documents, but " + s + " is already tokenized (its windows, or its "
                                "items cut on their own); leave {pack} at join")
        require(tokenizer != "words", "the 'words' tokenizer is built from text, but " + s + " is already tokenized; give "
                                      "the {tokenizer} it was tokenized with (or none)")
        require(word_vocab_size is None and word_min_count == 1, "{word_vocab_size} and {word_min_count} bound the "
                "'words' vocabulary built from text, but " + s + " is already tokenized; leave them out")
        require(_is_utf8(encoding), "{encoding} is how text files are decoded, but " + s + " is already tokenized; "
                                    "leave {encoding} out")
    else:
        require(items is None and pythia_steps is None, "{items} and {pythia_steps} select items of an indexed dataset "
                                                        "(PREFIX.idx + PREFIX.bin); give one as the corpus")
    if s.endswith(".npy"):
        p = input_path(s, "token file")
        require(vocab_size is not None, f"{p.name} is pre-tokenized: pass {{vocab_size}} (the number of token ids)")
        require(items is None and pythia_steps is None, "{items} and {pythia_steps} apply to indexed datasets, not .npy windows")
        form = "windows"
    elif pretokenized:
        locate_token_file(s, token_dtype=token_dtype, items=items, pythia_steps=pythia_steps)
        require(vocab_size is not None, "a token file is pre-tokenized: pass {vocab_size} (the number of token ids, 50304 for Pythia)")
        form = "token-file"
    else:
        form = document_reader(s)
    if form != "dataset":
        require(text_column == "text" and split == "train", "{text_column} and {split} pick a column and a split of a "
                f"dataset (hf:NAME, .jsonl/.json/.csv/.parquet), but {s} is {_FORM_NAMES.get(form, form)}; leave them out")
    if form in ("builtin", "dataset"):
        require(_is_utf8(encoding), "{encoding} is how text files (.txt) are decoded, but " + s + " is "
                f"{_FORM_NAMES[form]}, read as UTF-8; leave {{encoding}} out")
    if form == "text":
        text_decoder(encoding)
        p = Path(s)
        require(p.is_file() or any(q.is_file() for q in p.rglob("*.txt")),
                f"folder {p} has no .txt files; give a text file, a folder of .txt files, a .npy array or a dataset name")
    return form, {"seq_len": seq_len, "vocab_size": vocab_size, "word_vocab_size": word_vocab_size,
                  "word_min_count": word_min_count, "max_docs": max_docs}


_FORM_NAMES = {"builtin": "the embedded corpus", "dataset": "a dataset", "text": "text", "windows": "a .npy array of "
               "windows", "token-file": "a token file"}


def _is_utf8(encoding) -> bool:
    """Is ``encoding`` a spelling of UTF-8 (the default, which needs no saying)?"""
    import codecs
    try:
        return codecs.lookup(str(encoding)).name == "utf-8"
    except LookupError:
        return False


def load_corpus(source: str | os.PathLike, *, seq_len: int, tokenizer=None, vocab_size: int | None = None,
                pack: str = "join", text_column: str = "text", split: str = "train", max_docs: int | None = None,
                word_vocab_size: int | None = None, word_min_count: int = 1, encoding: str = "utf-8",
                token_dtype: str = "uint16", items=None, pythia_steps=None) -> Windows:
    """Read a corpus source and return its token windows.

    ``tokenizer``: a :class:`~tl_leadterm.tokenization.Tokenizer`, ``"words"``
    (default for text), a tokenizer path or hub name, or a TransformerLens model.
    ``vocab_size`` defaults to the tokenizer's size; set it to a model's ``d_vocab``
    (e.g. 50,304 for Pythia) when the model's output is larger than the tokenizer.
    ``word_vocab_size``/``word_min_count`` bound the ``"words"`` vocabulary; text files are read
    as ``encoding`` (anything else, or a binary file, is refused).  A token file (``.bin``, ``.idx`` or
    an indexed prefix; ``token_dtype``, ``items``, ``pythia_steps`` as in :func:`~tl_leadterm.corpus.streams.open_stream`)
    is read whole into memory.  Options that do not apply to the source (``max_docs`` or ``pack="cut"`` for
    pre-tokenized windows, word-tokenizer bounds for another tokenizer) are refused, never ignored, by
    :func:`validate_source` before anything is read.
    """
    from .streams import open_stream

    form, checked = _checked_source(source, seq_len=seq_len, tokenizer=tokenizer, vocab_size=vocab_size, pack=pack,
                                    max_docs=max_docs, word_vocab_size=word_vocab_size, word_min_count=word_min_count,
                                    encoding=encoding, token_dtype=token_dtype, items=items, pythia_steps=pythia_steps,
                                    text_column=text_column, split=split)
    seq_len, vocab_size, max_docs = checked["seq_len"], checked["vocab_size"], checked["max_docs"]
    word_vocab_size, word_min_count = checked["word_vocab_size"], checked["word_min_count"]
    s = str(source)
    if form == "token-file":
        return open_stream(s, seq_len=seq_len, vocab_size=vocab_size, tokenizer=tokenizer, token_dtype=token_dtype,
                           items=items, pythia_steps=pythia_steps).to_windows()
    if form == "windows":
        p = Path(s)
        try:
            arr = np.load(p, allow_pickle=False)
        except Exception as e:
            raise LeadTermError(f"cannot read {p} as a .npy array ({type(e).__name__}); save it with numpy.save") from None
        arr = validate_token_array(arr, vocab_size, seq_len, what=f"{p.name}")
        tok = resolve_tokenizer(tokenizer) if tokenizer not in (None, "words") else None
        require(tok is None or tok.vocab_size <= vocab_size, f"the tokenizer has {tok.vocab_size if tok else 0:,} tokens but "
                f"{{vocab_size}} is {vocab_size:,}; pass {{vocab_size}} {tok.vocab_size if tok else 0} or more, or the tokenizer "
                "the windows were made with")
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
