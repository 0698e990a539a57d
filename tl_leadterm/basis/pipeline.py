"""The one basis pipeline: token frequencies → pass 1 → compositions → pass 2 → :class:`Basis`.

A corpus is read in parts (:class:`~tl_leadterm.corpus.Windows`: the windows themselves, a stream's chunks,
or a list of shards).  :func:`run_pipeline` runs every step over the parts this process reads, and a
:class:`Reduction` turns this process' sums into those of the whole corpus at each step:

:class:`LocalReduction`
    one process reads every part: the identity (:func:`~tl_leadterm.basis.compute_basis`,
    :func:`~tl_leadterm.basis.compute_basis_sharded`);
:class:`~tl_leadterm.basis.distributed.DistributedReduction`
    torchrun ranks, each a contiguous block of windows: the sums are all-reduced, rank 0 composes once and
    broadcasts the centred Ḡ that pass 2 needs, rank 0 assembles;
:class:`~tl_leadterm.basis.shards.ShardRound`
    shards run as separate jobs: a round's sums are written to a file, and ``merge`` adds the files
    (:func:`~tl_leadterm.basis.shards.merge_pass1` composes, :func:`~tl_leadterm.basis.shards.merge_pass2`
    assembles, both with the functions here).

The pass-1 and pass-2 statistics add up with ``+``, so every reduction gives the basis of the whole
corpus; the sums are added part after part in reading order, so one process gives the same bytes however
the corpus is held.  The corpus is described by one :class:`~tl_leadterm.corpus.FingerprintAccumulator`,
fed each part once, during the first pass this process makes over it.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..corpus import FingerprintAccumulator, Windows
from ..errors import require
from ..io import resolve_device
from ..params import check
from .memory import choose_mode
from .passes import BasisSpec, Compositions, FirstPassStats, SecondPassStats, check_pass_memory, compositions, first_pass, second_pass
from .tokens import part_frequencies, top_k_of, validate_token_ids
from .value import Basis

#: the accumulation dtypes of the passes
DTYPES = {"float64": torch.float64, "float32": torch.float32}


class Reduction:
    """How this process' sums become the whole corpus' (module docstring).  This base is one process reading
    every part; each method is one step of :func:`run_pipeline`."""

    #: does this process assemble the result (the others return None)
    assembles = True

    def parts(self, corpus):
        """The parts this process reads: a :class:`Windows` is one part, a stream or a list is its parts."""
        return [corpus] if isinstance(corpus, Windows) else corpus

    def accumulator(self, corpus) -> FingerprintAccumulator | None:
        """The accumulator of this process' parts (None: :meth:`identity` needs none)."""
        return None if isinstance(corpus, Windows) else FingerprintAccumulator()

    def resume(self) -> Compositions | None:
        """Compositions made by an earlier round (pass 1 is then skipped); None: start from pass 1."""
        return None

    def frequencies(self, freq: torch.Tensor) -> torch.Tensor:
        """Token frequencies of the whole corpus from this process' (CPU, int64)."""
        return freq

    def mode(self, resolve) -> str:
        """The mode every process uses; ``resolve()`` chooses one from this process' memory."""
        return resolve()

    def first(self, stats: FirstPassStats | None, spec: BasisSpec, seq_len: int, dtype, device) -> FirstPassStats | None:
        """Pass-1 statistics of the whole corpus (None: this process' work ends here)."""
        require(stats is not None, "no shards given; give at least one shard of windows")
        return stats

    def compose(self, stats: FirstPassStats) -> Compositions:
        """The compositions (every process needs the centred Ḡ for pass 2)."""
        return compositions(stats, consume=True)

    def second(self, stats: SecondPassStats | None, comp: Compositions, dtype, device) -> SecondPassStats | None:
        """Pass-2 sums of the whole corpus (None: this process' work ends here)."""
        require(stats is not None, "the corpus gave no windows on its second reading; give windows, a list of them or a "
                                   "stream (something that can be read twice)")
        return stats

    def identity(self, corpus, acc: FingerprintAccumulator | None, seen: "Seen") -> dict:
        """``tokenizer_json``, ``corpus_fingerprint`` and ``corpus_source`` of the basis."""
        if isinstance(corpus, Windows):
            return corpus_identity(corpus)
        tok = seen.tokenizer
        return {"tokenizer_json": tok.to_json() if tok is not None else None, "corpus_fingerprint": acc.fingerprint(),
                "corpus_source": "+".join(dict.fromkeys(seen.sources))}


class LocalReduction(Reduction):
    """One process reads the whole corpus: every step is the identity."""


def corpus_identity(corpus) -> dict:
    """What a basis records of the whole ``corpus`` (windows, or parts read once more here, in order)."""
    if isinstance(corpus, Windows):
        fingerprint = corpus.fingerprint
    else:
        acc = FingerprintAccumulator()
        for w in corpus:
            acc.add(w)
        fingerprint = acc.fingerprint()
    tok = corpus.tokenizer
    return {"tokenizer_json": tok.to_json() if tok is not None else None, "corpus_fingerprint": fingerprint,
            "corpus_source": corpus.source}


class Seen:
    """The tokenizer and sources of the parts read so far (every part must share the tokenizer)."""

    def __init__(self):
        self.tokenizer, self.sources, self.any = None, [], False

    def add(self, w) -> None:
        check_part(w)
        if not self.any:
            self.tokenizer, self.any = w.tokenizer, True
        fa = self.tokenizer.identity["fingerprint"] if self.tokenizer is not None else None
        fb = w.tokenizer.identity["fingerprint"] if w.tokenizer is not None else None
        require(fa == fb, "the shards were tokenized with different tokenizers; tokenize every shard with the same one")
        self.sources.append(w.source)


def check_part(w) -> None:
    require(isinstance(w, Windows), f"expected token windows (load_corpus or windows_from_tokens), got {type(w).__name__}")


def check_dtype(dtype) -> str:
    """The name of an accumulation dtype (float64 or float32); a one-line error for anything else."""
    names = {v: k for k, v in DTYPES.items()}
    require(dtype in names, f"{{dtype}} must be torch.float64 or torch.float32, got {dtype!r}")
    return names[dtype]


def _head(corpus):
    """The corpus if it knows its shape (windows, a stream), else its first part."""
    if isinstance(corpus, Windows) or (hasattr(corpus, "vocab_size") and hasattr(corpus, "seq_len")):
        return corpus
    it = iter(corpus)
    require(it is not corpus, f"the corpus is read more than once, but a {type(corpus).__name__} can be read only once; give "
                              "windows, a list of them or a stream")
    first = next(it, None)
    require(first is not None, "no shards given; give at least one shard of windows")
    check_part(first)
    return first


def _scan(parts, progress: bool, desc: str):
    """``(part, progress of its pass)``: one bar over the parts (counting positions) when there are several or
    their total is known, else the pass' own bar."""
    from tqdm.auto import tqdm

    total = getattr(parts, "n_positions", None)
    if not progress or (isinstance(parts, Sequence) and len(parts) < 2 and total is None):
        for w in parts:
            yield w, progress
        return
    bar = tqdm(total=total, desc=desc, unit="tok", unit_scale=True, leave=False)
    try:
        for w in parts:
            yield w, False
            bar.update(w.n_positions)
    finally:
        bar.close()


def run_pipeline(corpus, reduction: Reduction | None = None, *, top_k: int | None = None, token_ids=None,
                 mode: str = "auto", dtype: torch.dtype = torch.float64, device=None, progress: bool = True,
                 chunk_size: int | None = None) -> Basis | None:
    """The basis of ``corpus`` (windows, a stream, or a re-iterable list of windows) over its ``top_k`` most
    frequent tokens or explicit ``token_ids``, reduced by ``reduction`` (default :class:`LocalReduction`).

    Steps (module docstring): check the arguments; the token frequencies of the whole corpus when ``top_k``
    is given (one more reading); the mode, agreed by every process; pass 1 over this process' parts and its
    reduction; the compositions; pass 2 and its reduction; the :class:`Basis`.  Returns None where the
    reduction ends this process' work (a shard's round, a rank other than 0).
    """
    reduction = reduction or LocalReduction()
    comp = reduction.resume()
    require(comp is not None or (top_k is None) != (token_ids is None), "give exactly one of {top_k} or {token_ids}")
    chunk_size = check("chunk_size", chunk_size, optional=True)
    head = _head(corpus)
    V, T = head.vocab_size, head.seq_len
    check_dtype(dtype)
    dev = resolve_device(device)
    check_pass_memory(T, dev)
    parts = reduction.parts(corpus)
    acc, seen = reduction.accumulator(corpus), Seen()
    if comp is None:
        if top_k is not None:
            top_k = check("top_k", top_k)
            freq = torch.zeros(V, dtype=torch.long)
            for w, _ in _scan(parts, progress, "token frequencies"):
                check_part(w)
                freq += part_frequencies(w)
            ids = top_k_of(reduction.frequencies(freq), V, top_k)
        else:
            ids = validate_token_ids(token_ids, V)
        spec = BasisSpec(V, ids, reduction.mode(lambda: choose_mode(V, ids.numel(), mode, dtype, dev)))
        first = None
        for w, bar in _scan(parts, progress, "basis pass 1/2"):
            seen.add(w)
            if acc is not None:
                acc.add(w)
            s = first_pass(w, spec, dtype=dtype, device=dev, progress=bar, chunk_size=chunk_size)
            first = s if first is None else first + s
        first = reduction.first(first, spec, T, dtype, dev)
        if first is None:
            return None
        comp = reduction.compose(first)
        del first
    fed = not seen.any
    second = None
    for w, bar in _scan(parts, progress, "basis pass 2/2"):
        if fed:
            seen.add(w)
            if acc is not None:
                acc.add(w)
        s = second_pass(w, comp, progress=bar, chunk_size=chunk_size)
        second = s if second is None else second + s
    second = reduction.second(second, comp, comp.centred_value_output.dtype, comp.centred_value_output.device)
    if second is None or not reduction.assembles:
        return None
    comp.centred_value_output = None  # W x W, no longer needed
    return assemble(comp, second, **reduction.identity(corpus, acc, seen))


def assemble(comp: Compositions, s2: SecondPassStats, windows: Windows | None = None, *,
             tokenizer_json: str | None = None, corpus_fingerprint: str = "", corpus_source: str = "") -> Basis:
    """Build the :class:`Basis` from pass-1 compositions and (merged) pass-2 sums."""
    require(s2.checksum == comp.checksum, "the second pass was computed with another first pass; recompute it with this one's Ḡ")
    require(s2.n == comp.n, f"pass 2 covered {s2.n} positions but pass 1 covered {comp.n}; run both passes over the same corpus")
    if windows is not None:
        tokenizer_json = windows.tokenizer.to_json() if windows.tokenizer is not None else tokenizer_json
        corpus_fingerprint = windows.fingerprint
        corpus_source = windows.source
    b = comp.blocks
    return Basis(
        bigram=b["bigram"], context=b["context"], interchange=b["interchange"], value=b["value"],
        value_output=b["value_output"], key_query=s2.key_query / s2.n, position=s2.position / s2.n,
        token_ids=comp.spec.token_ids.clone(), vocab_size=comp.spec.vocab_size, seq_len=comp.seq_len,
        n_positions=comp.n, mode=comp.spec.mode, tokenizer_json=tokenizer_json,
        corpus_fingerprint=corpus_fingerprint, corpus_source=corpus_source,
    )
