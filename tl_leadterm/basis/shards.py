"""Shards run as separate jobs (SLURM arrays, machines without torchrun), merged in two rounds: the pipeline's
reduction by files (:class:`ShardRound`; :func:`merge_pass1` and :func:`merge_pass2` add the files).

Pass 2 needs Ḡ of the whole corpus, so a sharded basis takes two rounds:

1. every shard ``I/N`` computes its pass-1 statistics (``basis ... --shard I/N --stats-out s1_I.safetensors``);
   ``merge --stats s1_* --out g.safetensors`` adds them and computes the compositions once,
   writing what pass 2 needs (the centred Ḡ, the k x k blocks, a checksum);
2. every shard computes its pass-2 sums with that file (``basis ... --shard I/N --pass2 g.safetensors
   --stats-out s2_I.safetensors``); ``merge --pass2 g.safetensors --stats s2_* --out basis.safetensors`` adds
   them and writes the basis.

Every shard file records what it was computed from: the spec (token ids, |V|, T, mode), the accumulation
dtype, the round, which shard it is, the corpus (a digest of the whole corpus that every shard computes
alike, its number of windows, its tokenizer), the digest of the shard's own windows and the content digest
of each of its tensors.  A merge validates every file fully before adding anything (keys, shapes, dtypes,
finiteness, and consistency: counts are whole numbers that add up to the recorded ``n``, the context
weights add up to the counts per target, ``n`` fits the shard's windows) and checks all of the record
across the files and across rounds: a round-2 shard must have exactly the windows of round 1 (a corpus
rewritten between the rounds is refused, by the shard itself before it writes and again by the merge).
Every message names the file.  A sharded basis records the tokenizer and a corpus fingerprint made of the
shards' own (the hash of their window hashes, in order), which depends on N.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from .._version import __version__
from ..corpus import FingerprintAccumulator, corpus_digest, shard_of
from ..corpus.fingerprint import combine
from ..corpus.streams import check_shard
from ..errors import LeadTermError, require
from ..params import MAX_VOCAB
from ..tensorfiles import SEAL, VERSION_RE, check_seal, load_safetensors, save_safetensors_atomic, seal
from .passes import BasisSpec, Compositions, FirstPassStats, SecondPassStats, compositions
from .pipeline import DTYPES, Reduction, assemble, check_dtype, run_pipeline
from .value import Basis

SHARD_FORMAT = "tl_leadterm.shard/3"
PASS2_FORMAT = "tl_leadterm.pass2-input/3"
#: the metadata keys each kind of file holds besides its seal (anything else is refused)
META_KEYS = {1: ("format", "round", "shard", "vocab_size", "seq_len", "mode", "dtype", "n", "windows", "digest",
                 "corpus_digest", "corpus_windows", "corpus_source", "tokenizer", "package_version")}
META_KEYS[2] = (*META_KEYS[1], "checksum", "pass2_digest")
TENSORS = {1: ("context", "counts", "token_ids"), 2: ("key_query", "position", "token_ids")}
BLOCKS = ("bigram", "context", "interchange", "value", "value_output")
_HEX = re.compile(r"[0-9a-f]{64}")
_INT = re.compile(r"[0-9]{1,19}")


def parse_shard(text: str) -> tuple[int, int]:
    parts = str(text).split("/")
    ok = len(parts) == 2 and all(_INT.fullmatch(p.strip()) for p in parts) and 0 <= int(parts[0]) < int(parts[1])
    require(ok, f"{{shard}} must be I/N with 0 <= I < N (0-based shard I of N), got {text!r}")
    return int(parts[0]), int(parts[1])


def _meta(stream, spec: BasisSpec, shard, rnd: int, n: int, windows: int, digest: str, dtype: str) -> dict:
    tok = stream.tokenizer
    return {"format": SHARD_FORMAT, "round": str(rnd), "shard": f"{shard[0]}/{shard[1]}", "vocab_size": str(spec.vocab_size),
            "seq_len": str(stream.seq_len), "mode": spec.mode, "dtype": dtype, "n": str(n), "windows": str(windows),
            "digest": digest, "corpus_digest": corpus_digest(stream), "corpus_windows": str(stream.n_windows),
            "corpus_source": os.path.normpath(str(stream.source)), "tokenizer": tok.to_json() if tok is not None else "",
            "package_version": __version__}


class ShardRound(Reduction):
    """One round of one shard ``I/N`` of a sharded run (module docstring): this process reads the shard's block
    of windows and writes its round's sums to ``out`` (round 1: the pass-1 statistics; round 2, with the merged
    round-1 file ``pass2``: the pass-2 sums), then stops; ``merge`` adds the files of every shard.  The shard
    file records the digest of the windows read (:meth:`~tl_leadterm.corpus.FingerprintAccumulator.digest`)."""

    def __init__(self, stream, shard: tuple[int, int], out, *, mode: str | None = None, dtype=torch.float64, pass2=None):
        self.stream, self.shard, self.out = stream, check_shard(*shard), out
        self.comp, self.meta, self.acc = None, None, None
        if pass2 is None:
            require(mode in ("exact", "merge-other"), f"a sharded run needs an explicit {{mode}} (exact or merge-other), got {mode!r}")
            self.mode_name, self.dtype_name = mode, check_dtype(dtype)
        else:
            self.comp, self.meta = load_pass2_input(pass2)
            self._check_round1(str(pass2))
            self._check_options(str(pass2), mode, dtype)

    def _check_options(self, p: str, mode, dtype) -> None:
        """Round 2's options, where given, must be round 1's (``None``: take round 1's)."""
        meta = self.meta
        require(mode is None or mode == meta["mode"], f"{p} was made with {{mode}} {meta['mode']}, but round 2 was given "
                                                      f"{{mode}} {mode}; run round 2 with the {{mode}} of round 1")
        given = None if dtype is None else check_dtype(dtype)
        require(given is None or given == meta["dtype"], f"{p} was made with {{dtype}} {meta['dtype']}, but round 2 was "
                                                         f"given {{dtype}} {given}; run round 2 with the {{dtype}} of round 1")

    def _check_round1(self, p: str) -> None:
        stream, shard, meta = self.stream, self.shard, self.meta
        require(int(meta["seq_len"]) == stream.seq_len and int(meta["vocab_size"]) == stream.vocab_size,
                f"{p} was made for T={meta['seq_len']}, |V|={meta['vocab_size']}, not this corpus' "
                f"T={stream.seq_len}, |V|={stream.vocab_size}; run both rounds with the same {{seq_len}} and {{vocab_size}}")
        require(shard[1] == int(meta["shards"]), f"{p} was merged from {meta['shards']} shards but this is shard {shard[0]}/{shard[1]}; "
                                                 f"run round 2 with the N of round 1 ({{shard}} I/{meta['shards']})")
        require(corpus_digest(stream) == meta["corpus_digest"] and stream.n_windows == int(meta["corpus_windows"]),
                f"this corpus is not the one round 1 read ({p} records another corpus digest or number of windows): the corpus "
                "was changed or replaced after round 1; run both rounds on the same corpus")
        self.pass2 = p

    def parts(self, corpus):
        return shard_of(corpus, *self.shard)

    def accumulator(self, corpus):
        self.acc = FingerprintAccumulator(fingerprint=False, digest=True)
        return self.acc

    def resume(self):
        return self.comp

    def mode(self, resolve) -> str:
        return self.mode_name             # explicit: every shard must agree without talking to the others

    def _require_windows(self, stats) -> None:
        require(stats is not None, f"shard {self.shard[0]}/{self.shard[1]} has no windows: use fewer shards")

    def first(self, stats, spec, seq_len, dtype, device):
        self._require_windows(stats)
        tensors = {"counts": stats.counts, "context": stats.context, "token_ids": spec.token_ids}
        save_safetensors_atomic(self.out, tensors, seal(tensors, _meta(self.stream, spec, self.shard, 1, stats.n,
                                                                       self.acc.n_windows, self.acc.digest(), self.dtype_name)))
        return None

    def second(self, stats, comp, dtype, device):
        self._require_windows(stats)
        i, N, meta, digest = self.shard[0], self.shard[1], self.meta, self.acc.digest()
        require(digest == json.loads(meta["digests"])[i] and stats.n == json.loads(meta["ns"])[i],
                f"shard {i}/{N} of this corpus is not what round 1 read (its windows' digest differs from the one in {self.pass2}): "
                "the corpus was rewritten after round 1; run both rounds on the same corpus")
        tensors = {"key_query": stats.key_query, "position": stats.position, "token_ids": comp.spec.token_ids}
        m = _meta(self.stream, comp.spec, self.shard, 2, stats.n, self.acc.n_windows, digest, meta["dtype"])
        m.update(checksum=json.dumps(list(comp.checksum)), pass2_digest=meta[SEAL])
        save_safetensors_atomic(self.out, tensors, seal(tensors, m))
        return None


def shard_pass1(stream, token_ids, shard: tuple[int, int], out: str | os.PathLike, *, mode: str = "merge-other",
                dtype=torch.float64) -> Path:
    """Round 1 for one shard: its pass-1 statistics, written to ``out``."""
    round1 = ShardRound(stream, shard, out, mode=mode, dtype=dtype)
    run_pipeline(stream, round1, token_ids=[] if token_ids is None else token_ids, dtype=dtype, progress=False)
    return Path(out)


def shard_pass2(stream, pass2_input: str | os.PathLike, shard: tuple[int, int], out: str | os.PathLike, *,
                token_ids=None, mode: str | None = None, dtype=None) -> Path:
    """Round 2 for one shard: its pass-2 sums with the merged Ḡ of ``pass2_input``.  The shard's windows must be
    exactly those of round 1 (checked before anything is written); ``token_ids``, ``mode`` and ``dtype`` need not
    be given (round 1's are used), but where they are they must be round 1's (the same ids in the same order)."""
    round2 = ShardRound(stream, shard, out, mode=mode, dtype=dtype, pass2=pass2_input)
    if token_ids is not None:
        given = token_ids.tolist() if isinstance(token_ids, torch.Tensor) else list(token_ids)
        require([int(x) if isinstance(x, int) or hasattr(x, "__index__") else x for x in given]
                == round2.comp.spec.token_ids.tolist(),
                f"{pass2_input} was made over other {{token_ids}} (or the same ones in another order) than round 2 was "
                "given; run round 2 with round 1's {token_ids} file, or without it")
    run_pipeline(stream, round2, dtype=DTYPES[round2.meta["dtype"]], progress=False)
    return Path(out)


# ---------------------------------------------------------------------------
# validation: every file fully, before anything is added
# ---------------------------------------------------------------------------
def _int(meta: dict, key: str, f: str, lo: int = 0, hi: int = 2**62) -> int:
    v = meta.get(key)
    require(isinstance(v, str) and _INT.fullmatch(v) is not None and lo <= int(v) <= hi,
            f"{f}: metadata {key!r} is {v!r}, not an integer in [{lo}, {hi}]; the file is damaged or altered: recompute it")
    return int(v)


def _json(meta: dict, key: str, f: str, check) -> object:
    try:
        v = json.loads(meta.get(key, ""))
        ok = check(v)
    except (ValueError, TypeError):
        ok = False
    require(ok, f"{f}: metadata {key!r} is malformed; the file is damaged or altered: recompute it")
    return v


def _common(tensors: dict, meta: dict, f: str, expected_tensors, keys) -> tuple:
    """Checks shared by every file of a sharded run: the seal (every tensor and every metadata field, only ``keys``
    allowed), spec, dtype, token ids, tensor names, version, source and tokenizer fields."""
    check_seal(tensors, meta, f, allowed=keys)
    require(re.fullmatch(VERSION_RE, meta.get("package_version", "")) is not None,
            f"{f}: metadata 'package_version' is malformed; the file is damaged or altered: recompute it")
    src = meta.get("corpus_source", "")
    require(len(src) <= 4096 and not re.search(r"[\x00-\x1f\x7f]", src),
            f"{f}: metadata 'corpus_source' is malformed; the file is damaged or altered: recompute it")
    if meta.get("tokenizer"):
        from ..tokenization import TOKENIZER_KINDS, record_size
        try:
            rec = json.loads(meta["tokenizer"])
            record_size(meta["tokenizer"])
            ok = isinstance(rec, dict) and rec.get("kind") in TOKENIZER_KINDS and bool(rec.get("name"))
        except (ValueError, LeadTermError, KeyError, TypeError, AttributeError):
            ok = False
        require(ok, f"{f}: metadata 'tokenizer' is malformed; the file is damaged or altered: recompute it")
    V = _int(meta, "vocab_size", f, 2, MAX_VOCAB)
    T = _int(meta, "seq_len", f, 2)
    mode, dname = meta.get("mode"), meta.get("dtype")
    require(mode in ("exact", "merge-other"), f"{f}: metadata 'mode' is {mode!r}, not exact or merge-other; recompute it")
    require(dname in DTYPES, f"{f}: metadata 'dtype' is {dname!r}, not float64 or float32; recompute it")
    names = sorted(tensors)
    require(names == sorted(expected_tensors), f"{f} holds tensors {names}, expected {sorted(expected_tensors)}; "
                                               "the file is damaged or altered: recompute it")
    ids = tensors["token_ids"]
    require(ids.dtype == torch.int64 and ids.dim() == 1 and 1 <= ids.numel() <= V
            and bool(((ids >= 0) & (ids < V)).all()) and ids.unique().numel() == ids.numel(),
            f"{f}: token_ids are not {ids.numel()} distinct int64 ids below vocab_size {V}; recompute it")
    W = V if mode == "exact" else ids.numel() + 1
    dt = DTYPES[dname]
    for name, t in tensors.items():
        if name != "token_ids":
            require(t.dtype == dt, f"{f}: {name} has dtype {str(t.dtype).replace('torch.', '')} but the file records {dname}; recompute it")
            require(bool(torch.isfinite(t).all()), f"{f}: {name} holds non-finite values (NaN or inf); recompute it")
    return V, T, mode, dname, ids, W


def _check_shard_file(tensors: dict, meta: dict, f: str, rnd: int) -> dict:
    """Validate one shard file of round ``rnd`` on its own; the parsed record."""
    require(meta.get("format") == SHARD_FORMAT, f"{f} is not a tl_leadterm shard file of this version (format "
                                                f"{meta.get('format')!r}); write it with 'basis --shard I/N --stats-out'")
    require(meta.get("round") == str(rnd), f"{f} is a round-{meta.get('round')} shard file, but this merge needs round {rnd} "
                                           f"({'pass-1 statistics' if rnd == 1 else 'pass-2 sums made with --pass2'})")
    V, T, mode, dname, ids, W = _common(tensors, meta, f, TENSORS[rnd], META_KEYS[rnd])
    m = re.fullmatch(r"([0-9]{1,9})/([0-9]{1,9})", meta.get("shard", ""))
    require(m is not None and int(m.group(1)) < int(m.group(2)),
            f"{f}: metadata 'shard' is {meta.get('shard')!r}, not I/N with 0 <= I < N; recompute it")
    i, N = int(m.group(1)), int(m.group(2))
    n, windows, total = _int(meta, "n", f, 1), _int(meta, "windows", f, 1), _int(meta, "corpus_windows", f, 1)
    require(windows == (i + 1) * total // N - i * total // N,
            f"{f}: shard {i}/{N} of {total} windows has {(i + 1) * total // N - i * total // N} windows, but the file "
            f"records {windows}; recompute it")
    require(windows <= n <= windows * T, f"{f}: n={n} positions cannot come from {windows} windows of T={T}; recompute it")
    for key in ("digest", "corpus_digest"):
        require(_HEX.fullmatch(meta.get(key, "")) is not None or (key == "corpus_digest" and re.fullmatch(r"[0-9a-f]{16}", meta.get(key, ""))),
                f"{f}: metadata {key!r} is malformed; recompute it")
    tol = 1e-9 if dname == "float64" else 1e-4
    if rnd == 1:
        C, S = tensors["counts"], tensors["context"]
        require(tuple(C.shape) == (W, W) and tuple(S.shape) == (W, W),
                f"{f}: counts and context must be {W} x {W} for mode {mode}, got {tuple(C.shape)} and {tuple(S.shape)}; recompute it")
        exact = C.abs() < 2**24 if dname == "float32" else torch.ones_like(C, dtype=torch.bool)
        require(bool((C >= 0).all()) and bool((C[exact] == C[exact].round()).all()) and bool((S >= 0).all()),
                f"{f}: counts must be non-negative whole numbers and context non-negative; the file was altered: recompute it")
        csum, ssum = float(C.double().sum()), float(S.double().sum())
        require(abs(csum - n) <= tol * n + 0.5, f"{f}: its counts add up to {csum:.0f} positions but it records n={n} "
                                                "(tampered counts or n?); recompute it")
        require(abs(ssum - n) <= tol * n * 10 + 1e-6 and
                float((S.double().sum(1) - C.double().sum(0)).abs().max()) <= tol * n * 10 + 1e-6,
                f"{f}: its context weights do not add up to its counts per target (each position carries weight 1); "
                "the file was altered: recompute it")
    else:
        k = ids.numel()
        require(tuple(tensors["key_query"].shape) == (k, k) and tuple(tensors["position"].shape) == (T,),
                f"{f}: key_query must be {k} x {k} and position of length {T}, got {tuple(tensors['key_query'].shape)} and "
                f"{tuple(tensors['position'].shape)}; recompute it")
        _json(meta, "checksum", f, lambda v: isinstance(v, list) and len(v) == 3)
        require(_HEX.fullmatch(meta.get("pass2_digest", "")) is not None, f"{f}: metadata 'pass2_digest' is malformed; recompute it")
    return {"i": i, "N": N, "n": n, "windows": windows, "V": V, "T": T, "mode": mode, "dtype": dname, "ids": ids}


#: metadata that every file of one sharded run shares (a mismatch: files of another run, corpus or spec)
SHARED = ("vocab_size", "seq_len", "mode", "dtype", "corpus_digest", "corpus_windows", "tokenizer")


def _load_shards(files, rnd: int) -> list[tuple[dict, dict, str, dict]]:
    """``(tensors, metadata, file, record)`` of every shard, validated, in shard order (whatever the order given)."""
    require(len(files) >= 1, "no shard files given; list every shard's statistics file (written by 'basis --stats-out')")
    loaded = []
    for f in files:
        tensors, meta = load_safetensors(f, "shard statistics file")
        loaded.append((tensors, meta, f, _check_shard_file(tensors, meta, f, rnd)))
    t0, m0, f0, r0 = loaded[0]
    seen = {}
    for t, m, f, r in loaded:
        for k in SHARED:
            if m.get(k) != m0.get(k):
                what = "corpus" if k.startswith("corpus") else "tokenizer" if k == "tokenizer" else k
                raise LeadTermError(f"{f} and {f0} differ in their {what}" + ("" if k in ("corpus_digest", "tokenizer") else
                                    f" ({m.get(k)!r} and {m0.get(k)!r})") + ": they come from different corpora, "
                                    "tokenizers or specs; merge the shards of one run only")
        require(torch.equal(r["ids"], r0["ids"]), f"{f} was computed over other tokens than {f0}; give every shard the same token ids")
        require(r["N"] == r0["N"], f"{f} is shard {r['i']}/{r['N']} but {f0} is {r0['i']}/{r0['N']}: shards of one split all have "
                                   "the same N")
        require(r["i"] not in seen, f"shard {r['i']}/{r['N']} is given twice ({seen.get(r['i'])} and {f}); give each shard once")
        seen[r["i"]] = (t, m, f, r)
    N = r0["N"]
    missing = [i for i in range(N) if i not in seen]
    if missing:
        raise LeadTermError(f"shard {missing[0]}/{N} is missing ({len(missing)} of {N} missing; given: "
                            f"{', '.join(str(x[2]) for x in loaded)}); give every shard's file")
    return [seen[i] for i in range(N)]


def merge_pass1(files: list, out: str | os.PathLike) -> Path:
    """Round 1's merge: validate every file, add the pass-1 statistics and write what pass 2 needs (module docstring)."""
    shards = _load_shards([str(f) for f in files], 1)
    t0, m0, _, r0 = shards[0]
    spec = BasisSpec(r0["V"], r0["ids"], r0["mode"])
    stats = None
    for t, m, _, r in shards:
        s = FirstPassStats(spec, r0["T"], t["counts"], t["context"], r["n"])
        stats = s if stats is None else stats + s
    comp = compositions(stats, consume=True)
    tensors = {f"block.{k}": v for k, v in comp.blocks.items()}
    tensors.update({"centred_value_output": comp.centred_value_output, "token_ids": spec.token_ids})
    meta = {k: m0[k] for k in (*SHARED, "corpus_source")}
    meta.update({"format": PASS2_FORMAT, "n": str(comp.n), "checksum": json.dumps(list(comp.checksum)),
                 "shards": str(len(shards)), "digests": json.dumps([m["digest"] for _, m, _, _ in shards]),
                 "ns": json.dumps([r["n"] for *_, r in shards]), "windows": json.dumps([r["windows"] for *_, r in shards]),
                 "package_version": __version__})
    save_safetensors_atomic(out, tensors, seal(tensors, meta))
    return Path(out)


#: the metadata keys of the merged round-1 file besides its seal
PASS2_KEYS = (*SHARED, "corpus_source", "format", "n", "checksum", "shards", "digests", "ns", "windows", "package_version")


def load_pass2_input(path) -> tuple[Compositions, dict]:
    """The merged round-1 file, validated fully (a one-line error naming it otherwise)."""
    p = str(path)
    tensors, meta = load_safetensors(path, "pass-2 input file")
    require(meta.get("format") == PASS2_FORMAT, f"{p} is not a pass-2 input file of this version (format {meta.get('format')!r}); "
                                                "make it with 'merge --stats' of round-1 shards")
    names = ("centred_value_output", "token_ids", *(f"block.{b}" for b in BLOCKS))
    V, T, mode, dname, ids, W = _common(tensors, meta, p, names, PASS2_KEYS)
    k, n, N = ids.numel(), _int(meta, "n", p, 1), _int(meta, "shards", p, 1, 10**9)
    total = _int(meta, "corpus_windows", p, 1)
    require(tuple(tensors["centred_value_output"].shape) == (W, W) and all(tuple(tensors[f"block.{b}"].shape) == (k, k) for b in BLOCKS),
            f"{p}: centred_value_output must be {W} x {W} and the blocks {k} x {k}; recompute it")
    checksum = _json(meta, "checksum", p, lambda v: isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v))
    digests = _json(meta, "digests", p, lambda v: isinstance(v, list) and len(v) == N and all(isinstance(x, str) and _HEX.fullmatch(x) for x in v))
    ns = _json(meta, "ns", p, lambda v: isinstance(v, list) and len(v) == N and all(type(x) is int and x >= 1 for x in v))
    wins = _json(meta, "windows", p, lambda v: isinstance(v, list) and len(v) == N and all(type(x) is int and x >= 1 for x in v))
    require(sum(ns) == n == int(checksum[0]) and sum(wins) == total,
            f"{p}: its per-shard positions and windows do not add up to its n={n} and {total} windows; recompute it")
    spec = BasisSpec(V, ids, mode)
    comp = Compositions(spec, T, n, {b: tensors[f"block.{b}"] for b in BLOCKS}, tensors["centred_value_output"], tuple(checksum))
    return comp, dict(meta, digests=json.dumps(digests))


def merge_pass2(pass2_input, files: list) -> Basis:
    """Round 2's merge: validate every file against round 1, add the pass-2 sums and assemble the basis."""
    comp, meta = load_pass2_input(pass2_input)
    p = str(pass2_input)
    shards = _load_shards([str(f) for f in files], 2)
    digests, ns, wins = (json.loads(meta[k]) for k in ("digests", "ns", "windows"))
    s2 = None
    for t, m, f, r in shards:
        for k in SHARED:
            require(m.get(k) == meta.get(k), f"{f} differs from {p} in its {'corpus' if k.startswith('corpus') else k}: round 2 "
                                             "must run on the corpus, tokenizer and spec of round 1; run it again with them")
        require(r["N"] == len(digests), f"{f} is shard {r['i']}/{r['N']} but {p} was merged from {len(digests)} shards; "
                                        "run round 2 with the N of round 1")
        require(torch.equal(r["ids"], comp.spec.token_ids), f"{f} was computed over other tokens than {p}; recompute it with --pass2 {p}")
        require(m["pass2_digest"] == meta[SEAL] and tuple(json.loads(m["checksum"])) == comp.checksum,
                f"{f} was made with another pass-2 input than {p}; run round 2 of every shard with the same --pass2 file")
        require(m["digest"] == digests[r["i"]] and r["n"] == ns[r["i"]] and r["windows"] == wins[r["i"]],
                f"{f} (shard {r['i']}/{r['N']}) was computed from other windows than round 1's shard {r['i']}: the corpus "
                "was rewritten between the rounds; run both rounds on the same corpus")
        s = SecondPassStats(comp.spec, comp.seq_len, t["key_query"], t["position"], r["n"], comp.checksum)
        s2 = s if s2 is None else s2 + s
    comp.centred_value_output = None
    return assemble(comp, s2, tokenizer_json=meta.get("tokenizer") or None, corpus_fingerprint=combine(digests),
                    corpus_source=meta.get("corpus_source", ""))
