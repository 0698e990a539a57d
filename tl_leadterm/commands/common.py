"""Arguments and helpers shared by several subcommands."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..errors import LeadTermError, require

DTYPES = {"float64": torch.float64, "float32": torch.float32}


def add_corpus_args(p: argparse.ArgumentParser, *, required: bool = True, seq_len_required: bool = True) -> None:
    g = p.add_argument_group("corpus")
    g.add_argument("--corpus", required=required, metavar="SRC",
                   help="builtin:stories (embedded), a .txt file or folder of .txt files, a .npy [n, T+1] token array, "
                        "a token file read memory-mapped (a raw .bin stream, or a Megatron/GPT-NeoX indexed dataset "
                        "PREFIX.idx + PREFIX.bin, as Pythia's Pile), or a Hugging Face dataset name/local dataset folder "
                        "(read with datasets, streaming; prefix hf: to force)")
    g.add_argument("--tokenizer", default=None, metavar="TOK",
                   help="'words' (the paper's word-level tokenizer, default for text), a tokenizer.json file, "
                        "a local tokenizer directory, or a hub name such as EleutherAI/pythia-70m")
    g.add_argument("--vocab-size", type=int, default=None, metavar="V",
                   help="number of token ids |V| (required for .npy; default: the tokenizer's size; e.g. 50304 for Pythia)")
    g.add_argument("--seq-len", type=int, required=seq_len_required, metavar="T", help="positions per window (windows hold T+1 tokens)")
    g.add_argument("--pack", choices=("join", "cut"), default="join",
                   help="join: documents joined by end-of-text into consecutive windows (default); cut: each document cut on its own, padding never counted")
    g.add_argument("--text-column", default="text", help="dataset column holding the text (default: text)")
    g.add_argument("--split", default="train", help="dataset split (default: train)")
    g.add_argument("--max-docs", type=int, default=None, metavar="N",
                   help="read at most N documents, N >= 1 (default: all; a warning says when the bound cut a dataset stream)")
    g.add_argument("--word-vocab-size", type=int, default=None, metavar="N",
                   help="'words' tokenizer: keep at most N entries (2 specials + most frequent words)")
    g.add_argument("--token-dtype", default="uint16", choices=("uint16", "uint32", "int32", "int64"),
                   help="token type of a raw .bin stream (default uint16; an indexed dataset records its own)")
    g.add_argument("--items", default=None, metavar="A:B", help="indexed dataset: use items A..B-1")
    g.add_argument("--pythia-steps", default=None, metavar="A:B",
                   help="indexed dataset of Pythia's pre-shuffled Pile: the training sequences of steps A..B-1 "
                        "(step s = items s*1024 .. s*1024+1023, 2049 tokens each)")
    g.add_argument("--encoding", default="utf-8", metavar="CODEC",
                   help="encoding of text files (default utf-8); a file that is not valid text in it is refused")
    g.add_argument("--word-min-count", type=int, default=1, metavar="N",
                   help="'words' tokenizer: keep words seen at least N times (default 1); others become <unk>")


def corpus_from_args(args, stream: bool = False):
    """The corpus the flags name: in-memory windows, or (``stream=True`` and a token file) a memory-mapped stream."""
    from ..corpus import load_corpus
    from ..errors import require
    from ..streams import is_token_file, open_stream, open_text_stream

    if stream and is_token_file(args.corpus) and not str(args.corpus).endswith(".npy"):
        return open_stream(args.corpus, seq_len=args.seq_len, vocab_size=args.vocab_size, tokenizer=args.tokenizer,
                           token_dtype=args.token_dtype, items=args.items, pythia_steps=args.pythia_steps)
    require(args.items is None and args.pythia_steps is None,
            "--items and --pythia-steps select items of an indexed dataset (PREFIX.idx + PREFIX.bin); give one as --corpus")
    if stream and args.pack == "join" and not str(args.corpus).endswith(".npy"):  # text, with bounded memory
        return open_text_stream(args.corpus, seq_len=args.seq_len, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                                text_column=args.text_column, split=args.split, max_docs=args.max_docs,
                                word_vocab_size=args.word_vocab_size, word_min_count=args.word_min_count,
                                encoding=args.encoding)
    return load_corpus(args.corpus, seq_len=args.seq_len, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                       pack=args.pack, text_column=args.text_column, split=args.split, max_docs=args.max_docs,
                       word_vocab_size=args.word_vocab_size, word_min_count=args.word_min_count, encoding=args.encoding)


def read_token_ids_file(path: str) -> list:
    p = Path(path)
    require(p.is_file(), f"--token-ids file {p} not found; give a JSON file holding a list of token ids")
    try:
        ids = json.loads(p.read_text())
    except (OSError, ValueError):
        raise LeadTermError(f"--token-ids file {p} is not valid JSON; give a JSON list of integers like [12, 7, 3]") from None
    if isinstance(ids, dict) and "token_ids" in ids:
        ids = ids["token_ids"]
    require(isinstance(ids, list), f"--token-ids file {p} must hold a JSON list of integers")
    return ids


def dtype_arg(name: str) -> torch.dtype:
    require(name in DTYPES, f"--dtype must be one of {', '.join(DTYPES)}")
    return DTYPES[name]


def device_arg(name: str | None):
    from ..io import resolve_device
    return resolve_device(name)
