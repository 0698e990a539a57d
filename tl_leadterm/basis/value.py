"""The :class:`Basis` value: the basis tensors over k chosen tokens, and its safetensors file."""

from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass, field, replace
from typing import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .._version import __version__
from ..errors import LeadTermError, require
from ..io import resolve_device
from ..params import check
from ..tensorfiles import VERSION_RE, check_seal, check_tensor_digests, load_safetensors, save_safetensors_atomic, seal
from ..tokenization import TOKENIZER_KINDS, record_size
from ..theory import MATRIX_NAMES, TENSOR_NAMES, leading

BASIS_FORMAT = "tl_leadterm.basis/2"
#: files written before the content digest (:func:`~tl_leadterm.tensorfiles.seal`): they load with a warning
LEGACY_FORMAT = "tl_leadterm.basis/1"
_INT = re.compile(r"[0-9]{1,19}")
_HEX = re.compile(r"[0-9a-f]{0,64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass
class Basis:
    """The basis of a corpus over ``k`` chosen tokens (THEORY.md names and orientations).

    Matrices are ``k x k`` with rows/columns indexed by ``token_ids`` (in order);
    ``position`` has length ``seq_len``.  Use :meth:`save` / :meth:`load` for files.
    """

    bigram: Float[Tensor, "k k"]
    context: Float[Tensor, "k k"]
    interchange: Float[Tensor, "k k"]
    value: Float[Tensor, "k k"]
    value_output: Float[Tensor, "k k"]
    key_query: Float[Tensor, "k k"]
    position: Float[Tensor, "T"]
    token_ids: Int[Tensor, "k"]
    vocab_size: int
    seq_len: int
    n_positions: int
    mode: str
    tokenizer_json: str | None = None
    corpus_fingerprint: str = ""
    corpus_source: str = ""
    version: str = __version__
    _tokenizer: object = field(default=None, repr=False, compare=False)

    # -- basic access ------------------------------------------------------
    @property
    def k(self) -> int:
        return int(self.token_ids.numel())

    @property
    def matrices(self) -> dict[str, Tensor]:
        return {name: getattr(self, name) for name in MATRIX_NAMES}

    def __getitem__(self, name: str) -> Tensor:
        require(name in TENSOR_NAMES, f"unknown basis tensor {name!r}; choose one of {', '.join(TENSOR_NAMES)}")
        return getattr(self, name)

    @property
    def tokenizer(self):
        """The tokenizer recorded in the file (embedded: word lists, and Hugging Face tokenizers since 0.1), or None."""
        if self._tokenizer is None and self.tokenizer_json:
            from ..tokenization import tokenizer_from_json
            tok = tokenizer_from_json(self.tokenizer_json)
            require(tok.vocab_size <= self.vocab_size, f"the basis' tokenizer has {tok.vocab_size} tokens but its vocab_size "
                                                       f"is {self.vocab_size}; rebuild the basis")
            self._tokenizer = tok
        return self._tokenizer

    @property
    def tokenizer_identity(self) -> dict:
        if not self.tokenizer_json:
            return {}
        d = json.loads(self.tokenizer_json)
        return {k: d.get(k) for k in ("kind", "name", "fingerprint")}

    def token_strs(self) -> list[str]:
        """The chosen tokens as strings (``<id N>`` when no tokenizer is recorded; a recorded tokenizer that
        cannot be rebuilt is an error, never silently replaced by ids)."""
        ids = self.token_ids.tolist()
        tok = self.tokenizer
        return tok.token_strs(ids) if tok is not None else [f"<id {i}>" for i in ids]

    def index_of(self, token_ids: Sequence[int] | Tensor) -> Int[Tensor, "m"]:
        """Positions of ``token_ids`` among the basis tokens (-1 where absent)."""
        lookup = torch.full((self.vocab_size,), -1, dtype=torch.long)
        lookup[self.token_ids] = torch.arange(self.k)
        ids = torch.as_tensor(token_ids, dtype=torch.long)
        out = torch.full_like(ids, -1)
        ok = (ids >= 0) & (ids < self.vocab_size)
        out[ok] = lookup[ids[ok]]
        return out

    def to(self, device=None, dtype=None) -> "Basis":
        """This basis on ``device`` (cpu or an available cuda device, as :meth:`load` takes) and/or in ``dtype``."""
        device = resolve_device(device) if device is not None else None
        kw = {}
        for name in MATRIX_NAMES + ("position",):
            kw[name] = getattr(self, name).to(device=device, dtype=dtype)
        return replace(self, **kw, token_ids=self.token_ids.to(device))

    def restrict(self, token_ids: Sequence[int] | Tensor) -> "Basis":
        """The sub-block over a subset of this basis' tokens (in the given order)."""
        idx = self.index_of(token_ids)
        require(bool((idx >= 0).all()), "restrict() got token ids that are not in this basis; choose ids from basis.token_ids")
        kw = {name: getattr(self, name)[idx][:, idx] for name in MATRIX_NAMES}
        return replace(self, **kw, token_ids=self.token_ids[idx].clone())

    def sub_block(self, weight: Float[Tensor, "V V"] | Float[Tensor, "n_ctx"], *, truncate: bool = False) -> Tensor:
        """The part of a full-vocabulary toy weight that this basis describes, in basis order.

        A ``|V| x |V|`` matrix gives ``weight[token_ids][:, token_ids]`` (``k x k``, rows and
        columns in the order of ``token_ids``, which for ``top_k`` is by frequency, not by id);
        a position vector gives its first ``seq_len`` entries (``truncate=True``: fewer if the
        vector is shorter).  Compare it with :meth:`leading_term`; :meth:`embed_block` is the inverse.
        """
        w = weight.detach()
        if w.dim() == 1:
            require(truncate or w.shape[0] >= self.seq_len,
                    f"a position vector of length {w.shape[0]} is shorter than the basis' seq_len={self.seq_len}")
            return w[: self.seq_len]
        require(w.dim() == 2 and w.shape[0] == w.shape[1] == self.vocab_size,
                f"sub_block() needs a |V| x |V| weight with |V|={self.vocab_size} (or a position vector), got shape {tuple(w.shape)}")
        ids = self.token_ids.to(w.device)
        return w.index_select(0, ids).index_select(1, ids)

    def embed_block(self, block: Tensor, like: Tensor) -> Tensor:
        """The inverse of :meth:`sub_block`: ``block`` placed in a zero tensor shaped like the full weight ``like``."""
        out = torch.zeros_like(like)
        if like.dim() == 1:
            out[: block.shape[0]] = block.to(out)
        else:
            ids = self.token_ids.to(like.device)
            out[ids[:, None], ids[None, :]] = block.to(out)
        return out

    def toy_pair(self, name: str, weight: Tensor) -> tuple[Tensor, Tensor]:
        """``(sub_block(weight), its leading-term tensor)`` of toy weight ``name`` (``"W_O"``, ``"V.0"``, ``"P.1"`` ...),
        aligned and in float64 on the CPU; a position vector and p̄ are cut to the shorter of the two."""
        w = self.sub_block(weight, truncate=True).double().cpu()
        term = getattr(self, leading(name).term).double().cpu()
        return w, term[: w.shape[0]] if term.dim() == 1 else term

    # -- leading terms -----------------------------------------------------
    def leading_term(self, weight: str, steps: int = 1, lr: float = 1.0) -> Tensor:
        """The leading term of a toy-model weight after ``steps`` GD steps of size ``lr``.

        ``weight`` is ``"W_O"``, ``"V"``, ``"W"`` or ``"P"`` (layer suffixes such as
        ``"V.1"`` are accepted: every layer has the same leading term).  Matrices are in
        basis order (rows and columns follow ``token_ids``): compare them with
        ``sub_block(model.V(l))`` and the like, not with the raw weight.
        """
        term = leading(weight)
        return term.coefficient(check("steps", steps), check("lr", lr)) * getattr(self, term.term)

    # -- files ---------------------------------------------------------------
    #: the metadata keys of a basis file (besides its seal), what :meth:`metadata` writes
    _META_KEYS = ("format", "vocab_size", "seq_len", "n_positions", "k", "mode", "tokenizer", "corpus_fingerprint",
                  "corpus_source", "package_version", "dtype")

    def metadata(self) -> dict[str, str]:
        return {
            "format": BASIS_FORMAT,
            "vocab_size": str(self.vocab_size),
            "seq_len": str(self.seq_len),
            "n_positions": str(self.n_positions),
            "k": str(self.k),
            "mode": self.mode,
            "tokenizer": self.tokenizer_json or "",
            "corpus_fingerprint": self.corpus_fingerprint,
            "corpus_source": self.corpus_source,
            "package_version": self.version,
            "dtype": str(self.bigram.dtype).replace("torch.", ""),
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write a safetensors file atomically (tensor names = THEORY.md names)."""
        require(self.bigram.dtype in (torch.float64, torch.float32),
                f"a basis is saved in float64 or float32, not {self.bigram.dtype}; convert it with basis.to(dtype=torch.float32)")
        tensors = {name: getattr(self, name) for name in MATRIX_NAMES + ("position",)}
        tensors["token_ids"] = self.token_ids.long()
        # sealed: a digest of every tensor and one over all the metadata, checked on load
        save_safetensors_atomic(path, tensors, seal(tensors, self.metadata()))

    @classmethod
    def load(cls, path: str | os.PathLike, device=None) -> "Basis":
        """Read and validate a basis file; any problem is a one-line error.

        Every metadata field is validated (an allow-list of keys, each of its kind), and the file's seal is
        checked (:func:`~tl_leadterm.tensorfiles.check_seal`: a digest of every tensor and one over all the
        metadata), so tensors that were swapped, transposed or had their token ids permuted, and metadata that
        was edited (``vocab_size``, ``n_positions``, ``mode`` ...), added or removed are refused.  Only a file of
        the format written before digests (``tl_leadterm.basis/1``) loads without them, with a warning.
        ``device`` is cpu (default) or an available cuda device.
        """
        dev = resolve_device(device) if device is not None else None   # before reading: a bad device fails at once
        tensors, meta = load_safetensors(path, "basis file")
        p = str(path)
        fmt = meta.get("format")
        require(fmt in (BASIS_FORMAT, LEGACY_FORMAT),
                f"{p} is not a tl_leadterm basis file (format {fmt!r}); build one with 'tl-leadterm basis'")
        if fmt == BASIS_FORMAT:
            check_seal(tensors, meta, f"basis file {p}", allowed=cls._META_KEYS)
        missing = [n for n in TENSOR_NAMES if n not in tensors]
        require(not missing, f"basis file {p} lacks tensors {', '.join(missing)}; rebuild it with 'tl-leadterm basis'")
        require(all(isinstance(meta.get(key), str) and _INT.fullmatch(meta[key]) for key in ("vocab_size", "seq_len", "n_positions", "k")),
                f"basis file {p} has missing or malformed metadata (vocab_size, seq_len, n_positions, k must be whole "
                "numbers); rebuild it with 'tl-leadterm basis'")
        V, T, n, k = (int(meta[key]) for key in ("vocab_size", "seq_len", "n_positions", "k"))
        fp, src, ver = meta.get("corpus_fingerprint", ""), meta.get("corpus_source", ""), meta.get("package_version", "")
        require(_HEX.fullmatch(fp) is not None, f"basis file {p}: metadata 'corpus_fingerprint' is malformed; rebuild it")
        require(len(src) <= 4096 and not _CONTROL.search(src), f"basis file {p}: metadata 'corpus_source' is malformed; rebuild it")
        require(ver == "" and fmt == LEGACY_FORMAT or re.fullmatch(VERSION_RE, ver) is not None,
                f"basis file {p}: metadata 'package_version' is malformed; rebuild it")
        require(V >= 2 and T >= 2 and n >= 1 and 1 <= k <= V,
                f"basis file {p} has inconsistent metadata (vocab_size={V}, seq_len={T}, n_positions={n}, k={k}); rebuild it")
        tok_json = meta.get("tokenizer") or None
        if tok_json is not None:
            try:
                tok_meta = json.loads(tok_json)
                ok = isinstance(tok_meta, dict) and tok_meta.get("kind") in TOKENIZER_KINDS and bool(tok_meta.get("name"))
            except ValueError:
                ok = False
            require(ok, f"basis file {p} has a malformed tokenizer record; rebuild it with 'tl-leadterm basis'")
            try:  # an embedded word list is checked now: a tampered list must not load and label tokens wrongly
                size = record_size(tok_json)
            except (LeadTermError, KeyError, TypeError) as e:
                raise LeadTermError(f"basis file {p}: {e if isinstance(e, LeadTermError) else 'malformed tokenizer record'}; rebuild it") from None
            require(size is None or size <= V, f"basis file {p}: its tokenizer has {size} tokens but vocab_size is {V}; rebuild it")
        ids = tensors["token_ids"]
        require(ids.dim() == 1 and ids.numel() == k and ids.dtype == torch.int64,
                f"basis file {p}: token_ids do not match k={k}; rebuild it")
        require(bool(((ids >= 0) & (ids < V)).all()) and ids.unique().numel() == k,
                f"basis file {p}: token_ids out of range or duplicated; rebuild it")
        for name in MATRIX_NAMES:
            require(tuple(tensors[name].shape) == (k, k), f"basis file {p}: {name} has shape {tuple(tensors[name].shape)}, expected ({k}, {k}); rebuild it")
        require(tuple(tensors["position"].shape) == (T,), f"basis file {p}: position has shape {tuple(tensors['position'].shape)}, expected ({T},); rebuild it")
        require(meta.get("mode") in ("exact", "merge-other"), f"basis file {p}: unknown mode {meta.get('mode')!r}; rebuild it")
        dt = tensors["bigram"].dtype
        require(meta.get("dtype", str(dt).replace("torch.", "") if fmt == LEGACY_FORMAT else None) == str(dt).replace("torch.", ""),
                f"basis file {p}: metadata 'dtype' is {meta.get('dtype')!r} but its tensors are {str(dt).replace('torch.', '')}; rebuild it")
        for name in MATRIX_NAMES + ("position",):
            require(tensors[name].dtype == dt and dt in (torch.float64, torch.float32),
                    f"basis file {p}: {name} has dtype {tensors[name].dtype}, expected float64 or float32 like bigram; rebuild it")
            require(bool(torch.isfinite(tensors[name]).all()), f"basis file {p}: {name} holds non-finite values; rebuild it")
        if fmt == LEGACY_FORMAT:
            extra = sorted(set(meta) - set(cls._META_KEYS) - {"tensor_digests"})
            require(not extra, f"basis file {p} has unknown metadata {', '.join(map(repr, extra[:3]))}; rebuild it")
            if "tensor_digests" in meta:
                check_tensor_digests(tensors, meta["tensor_digests"], f"basis file {p}")
            warnings.warn(f"basis file {p} was written before content digests were recorded (format {LEGACY_FORMAT}): its "
                          "metadata" + ("" if "tensor_digests" in meta else " and tensors") + " cannot be checked against "
                          "editing, swapping or permutation; rebuild it to add them", stacklevel=2)
        b = cls(**{name: tensors[name] for name in MATRIX_NAMES + ("position", "token_ids")},
                vocab_size=V, seq_len=T, n_positions=n, mode=meta["mode"], tokenizer_json=tok_json,
                corpus_fingerprint=meta.get("corpus_fingerprint", ""), corpus_source=meta.get("corpus_source", ""),
                version=meta.get("package_version", ""))
        return b.to(dev) if dev is not None else b
