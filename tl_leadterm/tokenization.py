"""Tokenizers: any Hugging Face tokenizer, a TransformerLens model's own, and the
paper's word-level tokenizer.

Every tokenizer is wrapped in a :class:`Tokenizer` with one small interface
(``encode``, ``decode``, ``token_str``, ``eos_id``, ``vocab_size`` and an
``identity`` used to check that a basis and a model speak the same vocabulary).

The word-level tokenizer (``"words"``)
--------------------------------------
Text is lower-cased and normalised to Unicode NFC (so a word typed with combining accents, NFD, is the same
token as its precomposed form), and the zero-width joiners U+FEFF (a byte-order mark inside a text, where
Unicode reads it as a zero-width no-break space) and U+2060 (word joiner, its modern spelling) are removed:
they are invisible and join, so ``bird\ufeff`` is the word ``bird`` (a mark at the start of a file is
dropped when the file is read, for every tokenizer); every maximal run of letters (Unicode letters: ``naïve``, ``straße`` and ``книга`` are one token each) is one token and every
other non-space character (digits, punctuation) is a token of its own.  The
vocabulary is built from the corpus: ids 0 and 1 are ``<|endoftext|>`` and
``<unk>``; then every token seen at least ``min_count`` times, most frequent
first (ties broken alphabetically), until ``max_size`` entries in total.  A token
that is not in the vocabulary (rarer, or unseen) encodes as ``<unk>``; the
unknown token is data like any other and is counted in the statistics.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Sequence

from .errors import LeadTermError
from .params import check

EOS_TEXT = "<|endoftext|>"
UNK_TEXT = "<unk>"
_WORD_RE = re.compile(r"[^\W\d_]+|\S")   # a run of (Unicode) letters, or any other non-space character
#: invisible joiners the word tokenizer removes (module docstring)
_JOINERS = "[\ufeff\u2060]"


def words_of(text: str) -> list[str]:
    """The word tokenizer's tokens of ``text``: lower-cased, NFC-normalised, split as the module docstring says."""
    return _WORD_RE.findall(unicodedata.normalize("NFC", re.sub(_JOINERS, "", text.lower())))


def _fingerprint_vocab(vocab: dict[str, int]) -> str:
    items = sorted(vocab.items(), key=lambda kv: (kv[1], kv[0]))
    blob = json.dumps(items, ensure_ascii=False, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class Tokenizer:
    """The small interface the pipeline needs; :class:`WordTokenizer` and :class:`HFTokenizer` implement it.

    ``identity`` is a dict ``{"kind", "name", "fingerprint"}``; two tokenizers
    with the same fingerprint map every token string to the same id.
    """

    kind: str = ""
    name: str
    vocab_size: int
    eos_id: int | None
    _fingerprint: str

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Many texts at once (a fast tokenizer's batch encode runs in parallel)."""
        return [self.encode(t) for t in texts]

    def token_str(self, token_id: int) -> str:
        """The string of one token (``<id N>`` for ids the tokenizer does not know)."""
        raise NotImplementedError

    def token_strs(self, ids: Iterable[int]) -> list[str]:
        return [self.token_str(i) for i in ids]

    @property
    def identity(self) -> dict[str, str]:
        return {"kind": self.kind, "name": self.name, "fingerprint": self._fingerprint}

    def to_json(self) -> str:
        """A JSON description from which :func:`tokenizer_from_json` rebuilds it."""
        return json.dumps(self._record(), ensure_ascii=False)

    def _record(self) -> dict[str, Any]:
        return dict(self.identity)

    def to_hf(self) -> Any:
        """The tokenizer as a ``transformers`` fast tokenizer (saved with models by ``save_pretrained``)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size}, eos_id={self.eos_id})"


class WordTokenizer(Tokenizer):
    """The paper's word-level tokenizer (module docstring) over a fixed word list."""

    kind = "words"

    def __init__(self, words: Sequence[str], name: str = "words"):
        words = list(words)
        if len(words) < 2 or words[0] != EOS_TEXT or words[1] != UNK_TEXT:
            raise LeadTermError(
                f"a word vocabulary must start with {EOS_TEXT!r} and {UNK_TEXT!r}; rebuild it with build_word_tokenizer")
        index = {w: i for i, w in enumerate(words)}
        if len(index) != len(words):
            raise LeadTermError("the word vocabulary has duplicate entries; rebuild it with build_word_tokenizer")
        self.name, self.words, self._index = name, words, index
        self.vocab_size, self.eos_id = len(words), 0
        self._fingerprint = _fingerprint_vocab(index)

    def encode(self, text: str) -> list[int]:
        unk = self._index[UNK_TEXT]
        return [self._index.get(w, unk) for w in words_of(text)]

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(self.token_str(i) for i in ids)

    def token_str(self, token_id: int) -> str:
        token_id = int(token_id)
        return self.words[token_id] if 0 <= token_id < len(self.words) else f"<id {token_id}>"

    def _record(self) -> dict[str, Any]:
        return {**self.identity, "words": self.words}  # the whole vocabulary travels with the basis

    def to_hf(self) -> Any:
        """The same tokenizer as a Hugging Face fast tokenizer: a ``tokenizers`` WordLevel model over this
        vocabulary, lower-casing and NFC-normalising, splitting runs of letters and single other characters (same ids, same
        fingerprint), so a model trained with it can be saved and loaded like any Hugging Face model."""
        from tokenizers import Regex, Tokenizer as HFCore, normalizers, pre_tokenizers
        from tokenizers.models import WordLevel
        from transformers import PreTrainedTokenizerFast

        core = HFCore(WordLevel(dict(self._index), unk_token=UNK_TEXT))
        core.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Replace(Regex(_JOINERS), ""),
                                                normalizers.NFC()])
        core.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(r"\s+"), behavior="removed"),
            pre_tokenizers.Split(Regex(_WORD_RE.pattern), behavior="isolated"),
        ])
        return PreTrainedTokenizerFast(tokenizer_object=core, unk_token=UNK_TEXT, eos_token=EOS_TEXT, pad_token=EOS_TEXT,
                                       name_or_path=self.name)


class HFTokenizer(Tokenizer):
    """A Hugging Face ``transformers`` tokenizer (recorded by name and fingerprint)."""

    kind = "hf"

    def __init__(self, tok: Any, name: str):
        self._impl, self.name = tok, str(name)
        self.vocab_size = len(tok)
        eos = tok.eos_token_id
        self.eos_id = None if eos is None else int(eos)
        self._fingerprint = _fingerprint_vocab(tok.get_vocab())

    @property
    def hf(self) -> Any:
        """The wrapped ``transformers`` tokenizer."""
        return self._impl

    def to_hf(self) -> Any:
        return self._impl

    def _record(self) -> dict[str, Any]:
        rec: dict[str, Any] = dict(self.identity)
        try:  # embed the tokenizer itself: a basis then decodes its tokens wherever it is moved
            rec["tokenizer_json"] = self._impl.backend_tokenizer.to_str()
            rec["special_tokens"] = {k: v for k, v in self._impl.special_tokens_map.items() if isinstance(v, str)}
        except Exception:  # a slow (Python) tokenizer has no backend: recorded by name only
            pass
        return rec

    def encode(self, text: str) -> list[int]:
        return list(self._impl.encode(text, add_special_tokens=False))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        try:
            return [list(x) for x in self._impl(list(texts), add_special_tokens=False)["input_ids"]]
        except Exception:  # a slow tokenizer without batch support
            return [self.encode(t) for t in texts]

    def decode(self, ids: Sequence[int]) -> str:
        return self._impl.decode(list(ids))

    def token_str(self, token_id: int) -> str:
        token_id = int(token_id)
        try:
            s = self._impl.decode([token_id])
        except Exception:  # ids past the tokenizer (e.g. Pythia's padded rows)
            return f"<id {token_id}>"
        return s if s != "" else f"<id {token_id}>"


# ---------------------------------------------------------------------------
# word-level tokenizer
# ---------------------------------------------------------------------------
def word_tokenizer_from_vocab(words: Sequence[str], name: str = "words") -> WordTokenizer:
    return WordTokenizer(words, name)


def build_word_tokenizer(texts: Iterable[str], max_size: int | None = None, min_count: int = 1) -> Tokenizer:
    """Build the paper's word-level tokenizer from documents (see module docstring)."""
    min_count = check("min_count", min_count, key="word_min_count")
    max_size = check("max_size", max_size, key="word_vocab_size", optional=True)   # room for a word besides the 2 specials
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(words_of(text))
    ranked = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    words = [EOS_TEXT, UNK_TEXT] + ranked
    if max_size is not None:
        words = words[:max_size]
    return word_tokenizer_from_vocab(words)


# ---------------------------------------------------------------------------
# Hugging Face tokenizers
# ---------------------------------------------------------------------------
def wrap_hf_tokenizer(tok: Any, name: str) -> HFTokenizer:
    """Wrap an already-loaded ``transformers`` tokenizer (e.g. ``model.tokenizer``)."""
    return HFTokenizer(tok, name)


def load_hf_tokenizer(spec: str) -> Tokenizer:
    """Load a Hugging Face tokenizer from a hub name, a local directory or a ``tokenizer.json`` file."""
    from .logs import quiet
    with quiet("transformers", "huggingface_hub"):   # no retry chatter before our one-line error (levels restored)
        return _load_hf_tokenizer(spec)


def _load_hf_tokenizer(spec: str) -> Tokenizer:
    from .io import input_path

    tried = []
    p = input_path(spec, "tokenizer", "give 'words', a tokenizer.json file, a local tokenizer directory, or a hub name",
                   folder=True, missing_ok=True)
    try:
        from transformers import AutoTokenizer, PreTrainedTokenizerFast
    except Exception as e:  # pragma: no cover - transformers comes with transformer-lens
        raise LeadTermError(f"cannot import transformers to load tokenizer {spec!r}: {e}") from None
    if p.is_file():
        tried.append(f"tokenizer.json file {p}")
        try:
            tok = PreTrainedTokenizerFast(tokenizer_file=str(p))
            vocab = tok.get_vocab()
            if EOS_TEXT in vocab:
                tok.eos_token = EOS_TEXT
            if "<|padding|>" in vocab:
                tok.pad_token = "<|padding|>"
            return wrap_hf_tokenizer(tok, str(p.resolve()))
        except Exception as e:
            raise LeadTermError(f"could not read {p} as a Hugging Face tokenizer.json ({type(e).__name__}); give a tokenizer.json, a tokenizer directory or a hub name") from None
    if p.is_dir():
        tried.append(f"local directory {p}")
        try:
            return wrap_hf_tokenizer(AutoTokenizer.from_pretrained(str(p)), str(p.resolve()))
        except Exception:
            raise LeadTermError(f"directory {p} holds no loadable tokenizer (tried AutoTokenizer.from_pretrained); save one there with tokenizer.save_pretrained") from None
    tried.append(f"local path {spec} (not found)")
    if spec.endswith(".json") or spec.startswith((".", "/", "~")) or spec.count("/") > 1 or not spec.strip():
        raise LeadTermError(
            f"tokenizer {spec!r} not found (tried: {'; '.join(tried)}; it is not a hub name); "
            "check the path, or give 'words', a tokenizer.json file, a local tokenizer directory, or a hub name"
        )
    tried.append(f"Hugging Face hub name {spec!r}")
    try:
        return wrap_hf_tokenizer(AutoTokenizer.from_pretrained(spec), spec)
    except Exception as e:
        offline = any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
        reason = "offline (HF_HUB_OFFLINE) and not in the local cache" if offline else type(e).__name__
        raise LeadTermError(
            f"tokenizer {spec!r} not found (tried: {'; '.join(tried)}; hub: {reason}); "
            "give 'words', a tokenizer.json file, a local tokenizer directory, or a reachable hub name"
        ) from None


def tokenizer_from_json(blob: str) -> Tokenizer:
    """Rebuild a tokenizer from :meth:`Tokenizer.to_json` (word vocabularies are embedded)."""
    d = json.loads(blob)
    return _FROM_RECORD[d.get("kind")](d)


def _hf_from_record(d: dict) -> HFTokenizer:
    """The embedded tokenizer when the record has one (new files), else the one at the recorded name."""
    if d.get("tokenizer_json"):
        from tokenizers import Tokenizer as HFCore
        from transformers import PreTrainedTokenizerFast
        try:
            hf = PreTrainedTokenizerFast(tokenizer_object=HFCore.from_str(d["tokenizer_json"]), **(d.get("special_tokens") or {}))
        except Exception:
            raise LeadTermError(f"the embedded tokenizer {d['name']!r} is damaged; rebuild the file") from None
        tok = HFTokenizer(hf, d["name"])
    else:
        try:
            tok = load_hf_tokenizer(d["name"])
        except LeadTermError:
            raise LeadTermError(f"the recorded tokenizer {d['name']!r} is not available here (moved or offline) and the file "
                                "does not embed it; rebuild the file with this version, which embeds its tokenizer") from None
    if d.get("fingerprint") and tok.identity["fingerprint"] != d["fingerprint"]:
        raise LeadTermError(f"tokenizer {d['name']!r} no longer matches the one recorded (fingerprint differs); rebuild the file")
    return tok


def _words_from_record(d: dict) -> WordTokenizer:
    tok = WordTokenizer(d["words"], name=d.get("name", "words"))
    if d.get("fingerprint") and tok.identity["fingerprint"] != d["fingerprint"]:
        raise LeadTermError("the embedded word list does not match its recorded fingerprint (the file was altered); rebuild it")
    return tok


#: how each tokenizer kind is rebuilt from its :meth:`Tokenizer.to_json` record
_FROM_RECORD = {
    WordTokenizer.kind: _words_from_record,
    HFTokenizer.kind: _hf_from_record,
}
TOKENIZER_KINDS = tuple(_FROM_RECORD)


def record_size(blob: str) -> int | None:
    """Validate a :meth:`Tokenizer.to_json` record where that is cheap (an embedded word list is checked
    against its fingerprint) and return the tokenizer's size; None where only rebuilding it would tell."""
    d = json.loads(blob)
    return _words_from_record(d).vocab_size if d.get("words") is not None else None


def resolve_tokenizer(spec: Any, texts: Iterable[str] | None = None, *, max_size: int | None = None, min_count: int = 1) -> Tokenizer:
    """Turn a tokenizer spec into a :class:`Tokenizer`.

    ``spec`` may be a :class:`Tokenizer`; ``"words"`` (built from ``texts``); a hub
    name, directory or ``tokenizer.json`` path; a ``transformers`` tokenizer object;
    or a TransformerLens model (its ``.tokenizer`` is used).
    """
    if isinstance(spec, Tokenizer):
        return spec
    if isinstance(spec, (str, os.PathLike)):
        s = str(spec)
        if s == "words":
            if texts is None:
                raise LeadTermError("the 'words' tokenizer is built from the corpus text; give a text corpus (not a .npy file)")
            return build_word_tokenizer(texts, max_size=max_size, min_count=min_count)
        return load_hf_tokenizer(s)
    inner = getattr(spec, "tokenizer", None)
    if inner is not None and hasattr(inner, "get_vocab"):
        name = getattr(getattr(spec, "cfg", None), "tokenizer_name", None) or getattr(inner, "name_or_path", "model")
        return wrap_hf_tokenizer(inner, name)
    if hasattr(spec, "get_vocab") and hasattr(spec, "encode"):
        return wrap_hf_tokenizer(spec, getattr(spec, "name_or_path", "tokenizer"))
    raise LeadTermError(f"cannot use {type(spec).__name__} as a tokenizer; give 'words', a tokenizer path or hub name, or a model with .tokenizer")
