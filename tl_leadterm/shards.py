"""Shards run as separate jobs (SLURM arrays, machines without torchrun), merged in two rounds.

Pass 2 needs Ḡ of the whole corpus, so a sharded basis takes two rounds:

1. every shard ``I/N`` computes its pass-1 statistics (``basis ... --shard I/N --stats-out s1_I.safetensors``);
   ``merge --stats s1_* --out g.safetensors`` adds them and computes the compositions once,
   writing what pass 2 needs (the centred Ḡ, the k x k blocks, a checksum);
2. every shard computes its pass-2 sums with that file (``basis ... --shard I/N --pass2 g.safetensors
   --stats-out s2_I.safetensors``); ``merge --pass2 g.safetensors --stats s2_* --out basis.safetensors`` adds
   them and writes the basis.

Every shard file records its spec (tokens, |V|, T, mode), the corpus (source, total windows) and
which shard it is; a merge refuses files of different specs or corpora, a missing or repeated
shard, and round-2 files made with another Ḡ, each in one line.  A sharded basis records the
tokenizer and a corpus fingerprint made of the shards' own (the hash of their window hashes, in
order), which depends on N.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from ._version import __version__
from .basis import Basis, BasisSpec, Compositions, FirstPassStats, SecondPassStats, assemble
from .basis.compute import _int64_bytes, validate_token_ids
from .basis.passes import compositions, first_pass, second_pass
from .errors import LeadTermError, require
from .io import load_safetensors, save_safetensors_atomic
from .streams import shard_of

SHARD_FORMAT = "tl_leadterm.shard/1"
PASS2_FORMAT = "tl_leadterm.pass2-input/1"


def parse_shard(text: str) -> tuple[int, int]:
    parts = str(text).split("/")
    ok = len(parts) == 2 and all(p.strip().isdigit() for p in parts) and 0 <= int(parts[0]) < int(parts[1])
    require(ok, f"{{shard}} must be I/N with 0 <= I < N (0-based shard I of N), got {text!r}")
    return int(parts[0]), int(parts[1])


def _meta(stream, spec: BasisSpec, shard: tuple[int, int], rnd: int, n: int, digest: str) -> dict:
    tok = stream.tokenizer
    return {"format": SHARD_FORMAT, "round": str(rnd), "shard": f"{shard[0]}/{shard[1]}", "vocab_size": str(spec.vocab_size),
            "seq_len": str(stream.seq_len), "mode": spec.mode, "n": str(n), "digest": digest,
            "corpus_source": stream.source, "corpus_windows": str(stream.n_windows),
            "tokenizer": tok.to_json() if tok is not None else "", "package_version": __version__}


def _shard_passes(stream, shard, fn):
    local = shard_of(stream, *shard)
    digest = hashlib.sha256()
    out = None
    for w in local:
        digest.update(_int64_bytes(w.tokens))
        s = fn(w)
        out = s if out is None else out + s
    require(out is not None, f"shard {shard[0]}/{shard[1]} has no windows: use fewer shards")
    return out, digest.hexdigest()


def shard_pass1(stream, token_ids, shard: tuple[int, int], out: str | os.PathLike, *, mode: str = "merge-other",
                dtype=torch.float64) -> Path:
    """Round 1 for one shard: its pass-1 statistics, written to ``out``."""
    require(mode in ("exact", "merge-other"), f"a sharded run needs an explicit {{mode}} (exact or merge-other), got {mode!r}")
    spec = BasisSpec(stream.vocab_size, validate_token_ids(token_ids, stream.vocab_size), mode)
    stats, digest = _shard_passes(stream, shard, lambda w: first_pass(w, spec, dtype=dtype, progress=False))
    save_safetensors_atomic(out, {"counts": stats.counts, "context": stats.context, "token_ids": spec.token_ids},
                            _meta(stream, spec, shard, 1, stats.n, digest))
    return Path(out)


def shard_pass2(stream, pass2_input: str | os.PathLike, shard: tuple[int, int], out: str | os.PathLike) -> Path:
    """Round 2 for one shard: its pass-2 sums with the merged Ḡ of ``pass2_input``."""
    comp, meta = load_pass2_input(pass2_input)
    require(int(meta["seq_len"]) == stream.seq_len and int(meta["vocab_size"]) == stream.vocab_size,
            f"{pass2_input} was made for T={meta['seq_len']}, |V|={meta['vocab_size']}, not this corpus' "
            f"T={stream.seq_len}, |V|={stream.vocab_size}; run both rounds with the same {{seq_len}} and {{vocab_size}}")
    s2, digest = _shard_passes(stream, shard, lambda w: second_pass(w, comp, progress=False))
    m = _meta(stream, comp.spec, shard, 2, s2.n, digest)
    m["checksum"] = json.dumps(list(comp.checksum))
    save_safetensors_atomic(out, {"key_query": s2.key_query, "position": s2.position, "token_ids": comp.spec.token_ids}, m)
    return Path(out)


def _load_shards(files, rnd: int) -> list[tuple[dict, dict, str]]:
    """``(tensors, metadata, file)`` of every shard, in shard order (whatever the order given)."""
    require(len(files) >= 1, "no shard files given; list every shard's --stats-out file")
    loaded = []
    for f in files:
        tensors, meta = load_safetensors(f, "shard statistics file")
        require(meta.get("format") == SHARD_FORMAT, f"{f} is not a tl_leadterm shard file; write it with 'basis --shard I/N --stats-out'")
        require(meta.get("round") == str(rnd), f"{f} is a round-{meta.get('round')} shard file, but this merge needs round {rnd} "
                                               f"({'pass-1 statistics' if rnd == 1 else 'pass-2 sums made with --pass2'})")
        loaded.append((tensors, meta))
    keys = ("vocab_size", "seq_len", "mode", "corpus_source", "corpus_windows")
    ref_t, ref = loaded[0]
    for (t, m), f in zip(loaded, files):
        for k in keys:
            require(m.get(k) == ref.get(k), f"{f} has {k}={m.get(k)!r} but {files[0]} has {ref.get(k)!r}: the shards come from "
                                            "different corpora or specs; merge shards of one run only")
        require(torch.equal(t["token_ids"], ref_t["token_ids"]), f"{f} was computed over other tokens than {files[0]}; "
                                                                 "give every shard the same --token-ids")
    seen = {}
    for (t, m), f in zip(loaded, files):
        i, n = parse_shard(m["shard"])
        require(n == parse_shard(ref["shard"])[1], f"{f} is shard {m['shard']} but {files[0]} is {ref['shard']}: shards of one "
                                                  "split all have the same N")
        require(i not in seen, f"shard {i}/{n} is given twice ({seen.get(i)} and {f}); give each shard once")
        seen[i] = f
    n = parse_shard(ref["shard"])[1]
    missing = [i for i in range(n) if i not in seen]
    if missing:
        raise LeadTermError(f"shard {missing[0]}/{n} is missing ({len(missing)} of {n} missing); give every shard's file")
    return [(*loaded[files.index(seen[i])], seen[i]) for i in range(n)]


def merge_pass1(files: list, out: str | os.PathLike) -> Path:
    """Round 1's merge: add the pass-1 statistics and write what pass 2 needs (module docstring)."""
    shards = _load_shards([str(f) for f in files], 1)
    t0, m0, _ = shards[0]
    spec = BasisSpec(int(m0["vocab_size"]), t0["token_ids"], m0["mode"])
    T = int(m0["seq_len"])
    stats = None
    for t, m, _ in shards:
        s = FirstPassStats(spec, T, t["counts"], t["context"], int(m["n"]))
        stats = s if stats is None else stats + s
    comp = compositions(stats, consume=True)
    tensors = {f"block.{k}": v for k, v in comp.blocks.items()}
    tensors.update({"centred_value_output": comp.centred_value_output, "token_ids": spec.token_ids})
    meta = {k: m0[k] for k in ("vocab_size", "seq_len", "mode", "corpus_source", "corpus_windows", "tokenizer")}
    meta.update({"format": PASS2_FORMAT, "n": str(comp.n), "checksum": json.dumps(list(comp.checksum)),
                 "shards": str(len(shards)), "digests": json.dumps([m["digest"] for _, m, _ in shards])})
    save_safetensors_atomic(out, tensors, meta)
    return Path(out)


def load_pass2_input(path) -> tuple[Compositions, dict]:
    tensors, meta = load_safetensors(path, "pass-2 input file")
    require(meta.get("format") == PASS2_FORMAT, f"{path} is not a pass-2 input file; make it with 'merge --stats' of round-1 shards")
    spec = BasisSpec(int(meta["vocab_size"]), tensors["token_ids"], meta["mode"])
    blocks = {k[len("block."):]: v for k, v in tensors.items() if k.startswith("block.")}
    comp = Compositions(spec, int(meta["seq_len"]), int(meta["n"]), blocks, tensors["centred_value_output"],
                        tuple(json.loads(meta["checksum"])))
    return comp, meta


def merge_pass2(pass2_input, files: list) -> Basis:
    """Round 2's merge: add the pass-2 sums and assemble the basis (module docstring)."""
    comp, meta = load_pass2_input(pass2_input)
    shards = _load_shards([str(f) for f in files], 2)
    require(all(m["corpus_source"] == meta["corpus_source"] and m["corpus_windows"] == meta["corpus_windows"] for _, m, _ in shards),
            f"the round-2 shards come from another corpus than {pass2_input}; run round 2 on the corpus of round 1")
    s2 = None
    for t, m, f in shards:
        require(tuple(json.loads(m["checksum"])) == comp.checksum, f"{f} was made with another pass-2 input than {pass2_input}; "
                                                                   "run round 2 of every shard with the same --pass2 file")
        s = SecondPassStats(comp.spec, comp.seq_len, t["key_query"], t["position"], int(m["n"]), comp.checksum)
        s2 = s if s2 is None else s2 + s
    fingerprint = hashlib.sha256("".join(json.loads(meta["digests"])).encode()).hexdigest()[:16]
    comp.centred_value_output = None
    return assemble(comp, s2, tokenizer_json=meta.get("tokenizer") or None, corpus_fingerprint=fingerprint,
                    corpus_source=meta["corpus_source"])
