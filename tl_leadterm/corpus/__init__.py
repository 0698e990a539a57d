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

Modules: :mod:`.windows` (the :class:`Windows` value; windows cut from documents or given as an
array), :mod:`.documents` (reading text sources a document at a time), :mod:`.tokenfiles` (token files
read memory-mapped), :mod:`.streams` (windows streamed a chunk at a time), :mod:`.fingerprint` (the one
accumulator of corpus digests), :mod:`.sources` (:func:`load_corpus`, and :func:`validate_source`, which
checks a source and its options without reading the corpus).  The old module paths
``tl_leadterm.documents``, ``tl_leadterm.tokenfiles`` and ``tl_leadterm.streams`` still import (deprecated).
"""

from ..params import MAX_VOCAB
from .documents import iter_documents, read_documents
from .fingerprint import FingerprintAccumulator
from .sources import SOURCE_KINDS, load_corpus, validate_source
from .streams import WindowStream, corpus_digest, is_token_file, open_stream, open_text_stream, shard_of
from .tokenfiles import TokenFile, open_token_file, write_indexed
from .windows import Windows, validate_token_array, windows_from_documents, windows_from_tokens

__all__ = [
    "MAX_VOCAB", "iter_documents", "read_documents", "FingerprintAccumulator", "SOURCE_KINDS", "load_corpus",
    "validate_source", "WindowStream", "corpus_digest", "is_token_file", "open_stream", "open_text_stream", "shard_of",
    "TokenFile", "open_token_file", "write_indexed", "Windows", "validate_token_array", "windows_from_documents",
    "windows_from_tokens",
]
