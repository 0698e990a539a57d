"""Arguments and helpers shared by several subcommands."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..config import DTYPE_NAMES, CorpusConfig, add_arguments, from_args
from ..errors import LeadTermError, require

DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}


def add_corpus_args(p: argparse.ArgumentParser) -> None:
    """The options of :class:`~tl_leadterm.config.CorpusConfig` (``--corpus`` and ``--seq-len`` required)."""
    add_arguments(p.add_argument_group("corpus"), CorpusConfig, required=("source", "seq_len"))


def corpus_from_args(args, stream: bool = False):
    """The corpus the flags name: in-memory windows, or (``stream=True`` and a token file) a memory-mapped stream.
    The options (:class:`~tl_leadterm.config.CorpusConfig`) and the source
    (:func:`~tl_leadterm.corpus.validate_source`) are checked before anything is read."""
    from ..corpus import is_token_file, load_corpus, open_stream, open_text_stream, validate_source

    c = from_args(CorpusConfig, args)
    require(c.items is None and c.pythia_steps is None or is_token_file(c.source),
            "{items} and {pythia_steps} select items of an indexed dataset (PREFIX.idx + PREFIX.bin); give one as {source}")
    validate_source(c.source, **c.kwargs("seq_len", "tokenizer", "vocab_size", "pack", "max_docs", "word_vocab_size",
                                         "word_min_count", "encoding", "token_dtype", "items", "pythia_steps",
                                         "text_column", "split"))
    if stream and is_token_file(c.source) and not str(c.source).endswith(".npy"):
        return open_stream(c.source, **c.kwargs("seq_len", "vocab_size", "tokenizer", "token_dtype", "items",
                                                "pythia_steps", "max_docs"))
    if stream and c.pack == "join" and not str(c.source).endswith(".npy"):  # text, with bounded memory
        return open_text_stream(c.source, **c.kwargs("seq_len", "tokenizer", "vocab_size", "text_column", "split",
                                                     "max_docs", "word_vocab_size", "word_min_count", "encoding"))
    return load_corpus(c.source, **{k: v for k, v in c.kwargs().items() if k != "source"})


def read_token_ids_file(path: str) -> list:
    from ..io import input_path

    p = input_path(path, "--token-ids file", "give a JSON file holding a list of token ids")
    try:
        ids = json.loads(p.read_text())
    except (OSError, ValueError):
        raise LeadTermError(f"--token-ids file {p} is not valid JSON; give a JSON list of integers like [12, 7, 3]") from None
    if isinstance(ids, dict) and "token_ids" in ids:
        ids = ids["token_ids"]
    require(isinstance(ids, list), f"--token-ids file {p} must hold a JSON list of integers")
    return ids


def dtype_arg(name: str) -> torch.dtype:
    """The torch dtype of a checked ``dtype`` field (:data:`~tl_leadterm.config.DTYPE_NAMES`)."""
    return DTYPES[name]


def device_arg(name: str | None):
    from ..io import resolve_device
    return resolve_device(name)
