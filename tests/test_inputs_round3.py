"""Round 3 of bad input (issue 18): shard rounds that check their corpus, merges that validate every file, basis
files that check their content, one checked range per numeric parameter, inconsistent inputs refused up front,
text read as text (BOM, NFC, codec aliases), temporary token files of killed runs, and one-line errors that name
the right thing.  Table-driven: each class is a table of (id, call, message fragment), for the CLI and the API."""

import contextlib
import errno
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from tl_leadterm import LeadTermError, compute_basis, load_corpus, windows_from_tokens
from tl_leadterm.basis import Basis
from tl_leadterm.cli import main
from tl_leadterm.basis.shards import load_pass2_input, merge_pass1, merge_pass2, shard_pass1, shard_pass2
from tl_leadterm.corpus.streams import open_stream
from tl_leadterm.tensorfiles import SEAL, load_safetensors, metadata_digest, save_safetensors_atomic, tensor_digests
from tl_leadterm.corpus.tokenfiles import write_indexed

V, T, N = 60, 8, 3
IDS = list(range(0, V, 3))
NAMES = ("bigram", "context", "interchange", "value", "value_output", "key_query", "position")


def run(argv, env=None) -> tuple[int, str]:
    err = io.StringIO()
    old = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = main([str(a) for a in argv])
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return rc, err.getvalue()


def one_line_error(argv, fragment, env=None) -> str:
    rc, err = run(argv, env)
    lines = [l for l in err.splitlines() if l.strip() and not l.startswith("warning:")]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def no_basis_shard_flag(msg: str) -> bool:
    """Does a merge message name --shard as if merge had it (not as part of a 'basis ...' command)?"""
    import re
    return re.search(r"(?<!basis )--shard\b", msg) is not None


def api_error(call, fragment) -> str:
    with pytest.raises(LeadTermError) as e:
        call()
    msg = str(e.value)
    assert fragment in msg and "\n" not in msg, (fragment, msg)
    return msg


@contextlib.contextmanager
def deadline(seconds=60):
    """Fail instead of hanging (a chunk size of 0 used to loop forever)."""
    def boom(*_):
        raise TimeoutError("did not return")
    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def rewrite(src, dst, *, tensors=None, meta=None, drop=(), redigest=True):
    """A copy of safetensors file ``src`` with tensors / metadata replaced (tensor digests and the seal over the
    metadata recomputed unless told: the deeper checks must catch what a re-sealing tamperer does)."""
    t, m = load_safetensors(src, "file")
    t.update(tensors or {})
    for k in drop:
        t.pop(k, None)
    if redigest:
        m["tensor_digests"] = tensor_digests(t)
    m.update(meta or {})
    if redigest:
        m[SEAL] = metadata_digest(m)
    save_safetensors_atomic(dst, t, m)
    return dst


# ---------------------------------------------------------------------------
# workspace: a token corpus, both rounds of a 3-shard run, a basis
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    d = tmp_path_factory.mktemp("r3")
    g = np.random.default_rng(0)
    items = [g.integers(0, V, size=int(g.integers(9, 60))) for _ in range(40)]
    write_indexed(d / "data", items)
    other = [np.array(x)[::-1].copy() for x in items]            # same layout, other tokens
    write_indexed(d / "other", other)
    (d / "ids.json").write_text(json.dumps(IDS))
    stream = open_stream(d / "data.idx", seq_len=T, vocab_size=V)
    for i in range(N):
        shard_pass1(stream, IDS, (i, N), d / f"s1_{i}.safetensors", mode="merge-other")
    merge_pass1([d / f"s1_{i}.safetensors" for i in range(N)], d / "g.safetensors")
    for i in range(N):
        shard_pass2(stream, d / "g.safetensors", (i, N), d / f"s2_{i}.safetensors")
    merge_pass2(d / "g.safetensors", [d / f"s2_{i}.safetensors" for i in range(N)]).save(d / "merged.safetensors")
    (d / "c.txt").write_text("the bird flew up. the fish swam down. a bird sang.\n<|endoftext|>\nthe car drove by.\n" * 20)
    assert run(["basis", "--corpus", d / "c.txt", "--seq-len", 8, "--top-k", 10, "--out", d / "b.safetensors"])[0] == 0
    return d


S1 = [f"s1_{i}.safetensors" for i in range(N)]
S2 = [f"s2_{i}.safetensors" for i in range(N)]


def test_the_sharded_basis_equals_one_process(ws):
    one = compute_basis(open_stream(ws / "data.idx", seq_len=T, vocab_size=V), token_ids=IDS, mode="merge-other", progress=False)
    merged = Basis.load(ws / "merged.safetensors")
    for n in NAMES:
        assert torch.allclose(getattr(merged, n), getattr(one, n), rtol=1e-12, atol=1e-15), n
    assert merged.n_positions == one.n_positions


# ---------------------------------------------------------------------------
# class 1: shard rounds check their corpus (across files and rounds)
# ---------------------------------------------------------------------------
def test_round_two_on_a_rewritten_corpus_is_refused(ws, tmp_path):
    """The issue's case: round 1, then the corpus is rewritten, then round 2: refused before anything is written
    (by the shard), and a round-2 file that claims other windows is refused by the merge."""
    shutil.copy(ws / "data.idx", tmp_path / "c.idx")
    shutil.copy(ws / "data.bin", tmp_path / "c.bin")
    common = ["--corpus", tmp_path / "c.idx", "--seq-len", T, "--vocab-size", V, "--token-ids", ws / "ids.json",
              "--mode", "merge-other"]
    for i in range(N):
        assert run(["basis", *common, "--shard", f"{i}/{N}", "--stats-out", tmp_path / f"r1_{i}.safetensors"])[0] == 0
    assert run(["merge", "--stats", *[tmp_path / f"r1_{i}.safetensors" for i in range(N)], "--out", tmp_path / "g.safetensors"])[0] == 0
    raw = bytearray((tmp_path / "c.bin").read_bytes())           # rewrite the corpus in place: one token, shard 1's part
    idx = (tmp_path / "c.idx").read_bytes()
    n = struct.unpack("<Q", idx[18:26])[0]
    mid = int(np.frombuffer(idx[34 + 4 * n:34 + 12 * n], dtype=np.int64)[20])   # item 20's first token: in a window
    raw[mid:mid + 2] = struct.pack("<H", (struct.unpack("<H", raw[mid:mid + 2])[0] + 1) % V)
    (tmp_path / "c.bin").write_bytes(bytes(raw))
    results = [run(["basis", *common, "--shard", f"{i}/{N}", "--pass2", tmp_path / "g.safetensors",
                    "--stats-out", tmp_path / f"r2_{i}.safetensors"]) for i in range(N)]
    refused = [i for i, (rc, err) in enumerate(results) if rc == 2 and ("rewritten after round 1" in err or "changed or replaced" in err)]
    assert refused and all(err.count("\n") == 1 for rc, err in results if rc == 2), results   # the changed shard refuses
    assert all(not (tmp_path / f"r2_{i}.safetensors").exists() for i in refused)


CORPUS_CASES = [
    # (id, files (round, names or callables producing files), fragment)
    ("round-1 shards of two corpora of one layout", lambda ws, tmp: _mixed_round1(ws, tmp), "differ in their corpus"),
    ("round-2 file claiming other windows", lambda ws, tmp: _merge2(ws, tmp, {1: {"digest": "0" * 64}}), "other windows"),
    ("round-2 file with another n", lambda ws, tmp: _merge2(ws, tmp, {2: {"n": None}}), "other windows"),
    ("round-2 file of another corpus digest", lambda ws, tmp: _merge2(ws, tmp, {0: {"corpus_digest": "f" * 64}}), "corpus"),
    ("round-2 file of another dtype", lambda ws, tmp: _merge2(ws, tmp, {0: {"dtype": "float32"}}, cast=torch.float32), "dtype"),
    ("round-2 file of another pass-2 input", lambda ws, tmp: _merge2(ws, tmp, {1: {"pass2_digest": "a" * 64}}), "another pass-2 input"),
    ("round-2 files of another N", lambda ws, tmp: _other_n(ws, tmp), "N of round 1"),
]


def _mixed_round1(ws, tmp):
    shard_pass1(open_stream(ws / "other.idx", seq_len=T, vocab_size=V), IDS, (1, N), tmp / "o1.safetensors", mode="merge-other")
    merge_pass1([ws / S1[0], tmp / "o1.safetensors", ws / S1[2]], tmp / "x.safetensors")


def _merge2(ws, tmp, changes, cast=None):
    """Round 2's merge with the metadata of some files changed (``None`` for n: one position fewer)."""
    files = []
    for i in range(N):
        if i in changes:
            t, m = load_safetensors(ws / S2[i], "f")
            meta = {k: (str(int(m["n"]) - 1) if v is None else v) for k, v in changes[i].items()}
            tensors = {k: v.to(cast) for k, v in t.items() if k != "token_ids"} if cast else None
            files.append(rewrite(ws / S2[i], tmp / f"t{i}.safetensors", tensors=tensors, meta=meta))
        else:
            files.append(ws / S2[i])
    merge_pass2(ws / "g.safetensors", files)


def _other_n(ws, tmp):
    stream = open_stream(ws / "data.idx", seq_len=T, vocab_size=V)
    shard_pass2(stream, ws / "g.safetensors", (0, 2), tmp / "n2.safetensors")


@pytest.mark.parametrize("name,call,fragment", CORPUS_CASES, ids=[c[0] for c in CORPUS_CASES])
def test_shard_files_are_checked_across_files_and_rounds(ws, tmp_path, name, call, fragment):
    msg = api_error(lambda: call(ws, tmp_path), fragment)
    assert "--shard" not in msg and "{shard}" not in msg
    assert not (tmp_path / "x.safetensors").exists() and not (tmp_path / "n2.safetensors").exists()


def test_two_spellings_of_one_corpus_path_are_one_corpus(ws, tmp_path, monkeypatch):
    monkeypatch.chdir(ws)
    a = ["basis", "--corpus", "./data.idx", "--seq-len", T, "--vocab-size", V, "--token-ids", "ids.json", "--mode", "merge-other"]
    b = ["basis", "--corpus", "data.idx", "--seq-len", T, "--vocab-size", V, "--token-ids", "ids.json", "--mode", "merge-other"]
    for i, argv in enumerate((a, b, a)):
        assert run([*argv, "--shard", f"{i}/{N}", "--stats-out", tmp_path / f"p{i}.safetensors"])[0] == 0
    rc, err = run(["merge", "--stats", *[tmp_path / f"p{i}.safetensors" for i in range(N)], "--out", tmp_path / "g.safetensors"])
    assert rc == 0, err


# ---------------------------------------------------------------------------
# class 2: merge validates every file fully before adding anything
# ---------------------------------------------------------------------------
def _c(f, **kw):
    return lambda ws, tmp: rewrite(ws / f, tmp / "bad.safetensors", **kw)


def _tamper_counts(ws, tmp, redigest):
    t, _ = load_safetensors(ws / S1[1], "f")
    c = t["counts"].clone()
    c[0, 0] += 5
    return rewrite(ws / S1[1], tmp / "bad.safetensors", tensors={"counts": c}, redigest=redigest)


def _nan(ws, tmp):
    t, _ = load_safetensors(ws / S1[1], "f")
    c = t["context"].clone()
    c[1, 2] = float("nan")
    return rewrite(ws / S1[1], tmp / "bad.safetensors", tensors={"context": c})


def _context_moved(ws, tmp):
    t, _ = load_safetensors(ws / S1[1], "f")
    c = t["context"].clone()
    c[0, 0], c[1, 0] = c[0, 0] + 0.5, c[1, 0] + 0.25          # total kept? no: weights no longer add up per target
    return rewrite(ws / S1[1], tmp / "bad.safetensors", tensors={"context": c})


MERGE1_CASES = [
    ("tampered counts (digest kept)", lambda ws, tmp: _tamper_counts(ws, tmp, False), "does not match its recorded digest"),
    ("tampered counts (digest redone)", lambda ws, tmp: _tamper_counts(ws, tmp, True), "add up to"),
    ("doubled n", lambda ws, tmp: _doubled_n(ws, tmp), "n="),
    ("NaN", _nan, "non-finite"),
    ("context not adding up", _context_moved, "context weights"),
    ("other dtype", lambda ws, tmp: _other_dtype(ws, tmp), "dtype"),
    ("dtype not as recorded", _c(S1[1], meta={"dtype": "float32"}), "but the file records float32"),
    ("other vocab size", _c(S1[1], meta={"vocab_size": str(V + 4)}), "vocab_size"),
    ("missing key", _c(S1[1], drop=("context",)), "holds tensors"),
    ("extra key", lambda ws, tmp: rewrite(ws / S1[1], tmp / "bad.safetensors", tensors={"junk": torch.zeros(2)}), "holds tensors"),
    ("wrong shapes", lambda ws, tmp: _wrong_shape(ws, tmp), "must be"),
    ("junk n", _c(S1[1], meta={"n": "lots"}), "metadata 'n'"),
    ("junk shard", _c(S1[1], meta={"shard": "x/y"}), "metadata 'shard'"),
    ("junk shard digits", _c(S1[1], meta={"shard": "1/³"}), "metadata 'shard'"),
    ("junk mode", _c(S1[1], meta={"mode": "guess"}), "metadata 'mode'"),
    ("junk format", _c(S1[1], meta={"format": "something"}), "not a tl_leadterm shard file"),
    ("junk digests record", _c(S1[1], meta={"tensor_digests": "{not json"}, redigest=False), "content digest"),
    ("no digests", lambda ws, tmp: _no_digests(ws, tmp), "no content digest"),
    ("junk windows", _c(S1[1], meta={"windows": "999"}), "windows"),
    ("junk corpus windows", _c(S1[1], meta={"corpus_windows": "-4"}), "corpus_windows"),
    ("token ids duplicated", lambda ws, tmp: rewrite(ws / S1[1], tmp / "bad.safetensors",
                                                     tensors={"token_ids": torch.tensor([0] * len(IDS))}), "token_ids"),
    ("float token ids", lambda ws, tmp: rewrite(ws / S1[1], tmp / "bad.safetensors",
                                                tensors={"token_ids": torch.tensor(IDS, dtype=torch.float64)}), "token_ids"),
    ("a round-2 file in round 1", lambda ws, tmp: ws / S2[1], "round-2 shard file"),
    ("not a safetensors file", lambda ws, tmp: (tmp / "bad.safetensors").write_text("notes") and tmp / "bad.safetensors",
     "not a readable"),
]


def _wrong_shape(ws, tmp):
    t, _ = load_safetensors(ws / S1[1], "f")
    return rewrite(ws / S1[1], tmp / "bad.safetensors", tensors={"counts": t["counts"][:-1]})


def _no_digests(ws, tmp):
    t, m = load_safetensors(ws / S1[1], "f")
    m.pop("tensor_digests")
    save_safetensors_atomic(tmp / "bad.safetensors", t, m)
    return tmp / "bad.safetensors"


def _doubled_n(ws, tmp):
    _, m = load_safetensors(ws / S1[1], "f")
    return rewrite(ws / S1[1], tmp / "bad.safetensors", meta={"n": str(2 * int(m["n"]))})


def _other_dtype(ws, tmp):
    t, _ = load_safetensors(ws / S1[1], "f")
    return rewrite(ws / S1[1], tmp / "bad.safetensors", tensors={k: v.float() for k, v in t.items() if k != "token_ids"},
                   meta={"dtype": "float32"})


@pytest.mark.parametrize("name,make,fragment", MERGE1_CASES, ids=[c[0] for c in MERGE1_CASES])
def test_merge_validates_every_file_before_adding(ws, tmp_path, name, make, fragment):
    bad = make(ws, tmp_path)
    files = [ws / S1[0], bad, ws / S1[2]]
    msg = one_line_error(["merge", "--stats", *files, "--out", tmp_path / "g.safetensors"], fragment)
    assert str(bad) in msg or "differ" in msg, msg            # the message names the file
    assert not no_basis_shard_flag(msg), msg
    assert not (tmp_path / "g.safetensors").exists()
    api_error(lambda: merge_pass1(files, tmp_path / "g.safetensors"), fragment)


MERGE2_CASES = [
    ("tampered key_query", lambda ws, tmp: _kq(ws, tmp, False), "does not match its recorded digest"),
    ("NaN position", lambda ws, tmp: _pos_nan(ws, tmp), "non-finite"),
    ("wrong shape position", lambda ws, tmp: _pos_short(ws, tmp), "must be"),
    ("junk checksum", _c(S2[1], meta={"checksum": "[1, 2"}), "checksum"),
    ("missing position", _c(S2[1], drop=("position",)), "holds tensors"),
    ("a round-1 file in round 2", lambda ws, tmp: ws / S1[1], "round-1 shard file"),
]


def _kq(ws, tmp, redigest):
    t, _ = load_safetensors(ws / S2[1], "f")
    return rewrite(ws / S2[1], tmp / "bad.safetensors", tensors={"key_query": t["key_query"].T.contiguous()}, redigest=redigest)


def _pos_nan(ws, tmp):
    t, _ = load_safetensors(ws / S2[1], "f")
    p = t["position"].clone()
    p[0] = float("inf")
    return rewrite(ws / S2[1], tmp / "bad.safetensors", tensors={"position": p})


def _pos_short(ws, tmp):
    t, _ = load_safetensors(ws / S2[1], "f")
    return rewrite(ws / S2[1], tmp / "bad.safetensors", tensors={"position": t["position"][:-1].contiguous()})


@pytest.mark.parametrize("name,make,fragment", MERGE2_CASES, ids=[c[0] for c in MERGE2_CASES])
def test_round_two_merge_validates_every_file(ws, tmp_path, name, make, fragment):
    bad = make(ws, tmp_path)
    msg = one_line_error(["merge", "--pass2", ws / "g.safetensors", "--stats", ws / S2[0], bad, ws / S2[2],
                          "--out", tmp_path / "b.safetensors"], fragment)
    assert str(bad) in msg and not no_basis_shard_flag(msg)
    assert not (tmp_path / "b.safetensors").exists()


PASS2_INPUT_CASES = [
    ("tampered centred G", lambda ws, tmp: _g(ws, tmp, redigest=False), "does not match its recorded digest"),
    ("junk digests list", lambda ws, tmp: rewrite(ws / "g.safetensors", tmp / "g.safetensors", meta={"digests": "[1]"}), "digests"),
    ("ns not adding up", lambda ws, tmp: rewrite(ws / "g.safetensors", tmp / "g.safetensors", meta={"ns": "[1, 1, 1]"}), "add up"),
    ("missing block", lambda ws, tmp: rewrite(ws / "g.safetensors", tmp / "g.safetensors", drop=("block.value",)), "holds tensors"),
]


def _g(ws, tmp, redigest):
    t, _ = load_safetensors(ws / "g.safetensors", "f")
    return rewrite(ws / "g.safetensors", tmp / "g.safetensors",
                   tensors={"centred_value_output": t["centred_value_output"] * 2}, redigest=redigest)


@pytest.mark.parametrize("name,make,fragment", PASS2_INPUT_CASES, ids=[c[0] for c in PASS2_INPUT_CASES])
def test_the_pass2_input_is_validated(ws, tmp_path, name, make, fragment):
    g = make(ws, tmp_path)
    msg = api_error(lambda: load_pass2_input(g), fragment)
    assert str(g) in msg
    one_line_error(["basis", "--corpus", ws / "data.idx", "--seq-len", T, "--vocab-size", V, "--mode", "merge-other",
                    "--token-ids", ws / "ids.json", "--shard", f"0/{N}", "--pass2", g, "--stats-out", tmp_path / "s.safetensors"],
                   fragment)


# ---------------------------------------------------------------------------
# class 3: basis files check their content
# ---------------------------------------------------------------------------
def _basis_variant(ws, tmp, change):
    t, m = load_safetensors(ws / "b.safetensors", "f")
    t = change(dict(t))
    save_safetensors_atomic(tmp / "v.safetensors", t, m)       # the recorded digests are the original's
    return tmp / "v.safetensors"


def _perm(t):
    p = torch.arange(t["token_ids"].numel()).roll(1)
    out = {k: (v[p][:, p].contiguous() if v.dim() == 2 else v) for k, v in t.items()}
    out["token_ids"] = t["token_ids"][p].contiguous()
    return out


BASIS_CASES = [
    ("bigram and context swapped", lambda t: {**t, "bigram": t["context"], "context": t["bigram"]}),
    ("value transposed", lambda t: {**t, "value": t["value"].T.contiguous()}),
    ("token ids permuted with their rows", _perm),
    ("token ids permuted alone", lambda t: {**t, "token_ids": t["token_ids"].flip(0).contiguous()}),
    ("one entry edited", lambda t: {**t, "key_query": t["key_query"] + torch.eye(t["key_query"].shape[0], dtype=t["key_query"].dtype) * 1e-3}),
    ("position reversed", lambda t: {**t, "position": t["position"].flip(0).contiguous()}),
]


@pytest.mark.parametrize("name,change", BASIS_CASES, ids=[c[0] for c in BASIS_CASES])
def test_basis_load_refuses_altered_tensors(ws, tmp_path, name, change):
    f = _basis_variant(ws, tmp_path, change)
    api_error(lambda: Basis.load(f), "does not match its recorded digest")


def test_basis_written_before_digests_loads_with_a_warning(ws, tmp_path):
    """Only a file of the format written before digests (basis/1) loads without them, with a warning; a file of
    the current format with its digests removed is refused."""
    from tl_leadterm.basis.value import LEGACY_FORMAT

    t, m = load_safetensors(ws / "b.safetensors", "f")
    m.pop("tensor_digests"), m.pop(SEAL)
    save_safetensors_atomic(tmp_path / "stripped.safetensors", t, m)
    api_error(lambda: Basis.load(tmp_path / "stripped.safetensors"), "records no content digest")
    m["format"] = LEGACY_FORMAT
    save_safetensors_atomic(tmp_path / "old.safetensors", t, m)
    with pytest.warns(UserWarning, match="before content digests were recorded"):
        b = Basis.load(tmp_path / "old.safetensors")
    assert torch.equal(b.bigram, t["bigram"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Basis.load(ws / "b.safetensors")                        # a new file: no warning


def test_saving_twice_gives_identical_bytes_and_streams_tensors(ws, tmp_path):
    b = Basis.load(ws / "b.safetensors")
    b.save(tmp_path / "1.safetensors")
    b.save(tmp_path / "2.safetensors")
    assert (tmp_path / "1.safetensors").read_bytes() == (tmp_path / "2.safetensors").read_bytes()
    from safetensors.torch import load_file
    got = load_file(str(tmp_path / "1.safetensors"))          # upstream reads what we write
    assert all(torch.equal(got[n], getattr(b, n)) for n in NAMES)


DEVICE_CASES = [("meta", "must be cpu or cuda"), ("tpu", "device"), ("cuda:7", "cuda")]
if not torch.cuda.is_available():
    DEVICE_CASES.append(("cuda", "CUDA is not available"))


@pytest.mark.parametrize("device,fragment", DEVICE_CASES, ids=[c[0] for c in DEVICE_CASES])
def test_basis_load_device(ws, device, fragment):
    api_error(lambda: Basis.load(ws / "b.safetensors", device=device), fragment)


# ---------------------------------------------------------------------------
# class 4: one checked range per numeric parameter; numpy scalars accepted
# ---------------------------------------------------------------------------
def _windows():
    g = torch.Generator().manual_seed(0)
    return windows_from_tokens(torch.randint(0, 7, (6, 6), generator=g), 7)


RANGE_CASES = [
    ("stream chunk_windows 0", lambda ws: open_stream(ws / "data.idx", seq_len=T, vocab_size=V, chunk_windows=0), "chunk_windows"),
    ("stream chunk_windows -1", lambda ws: open_stream(ws / "data.idx", seq_len=T, vocab_size=V, chunk_windows=-1), "chunk_windows"),
    ("stream chunk_windows 1.5", lambda ws: open_stream(ws / "data.idx", seq_len=T, vocab_size=V, chunk_windows=1.5), "chunk_windows"),
    ("WindowStream chunk 0", lambda ws: type(open_stream(ws / "data.idx", seq_len=T, vocab_size=V))(
        open_stream(ws / "data.idx", seq_len=T, vocab_size=V).file, T, V, chunk_windows=0), "chunk_windows"),
    ("compute_basis chunk_size 0", lambda ws: compute_basis(_windows(), top_k=3, chunk_size=0, progress=False), "chunk_size"),
    ("first_pass chunk_size 0", lambda ws: _first_pass(0), "chunk_size"),
    ("seq_len bool", lambda ws: load_corpus(ws / "c.txt", seq_len=True), "seq_len must be an integer"),
    ("seq_len nan", lambda ws: load_corpus(ws / "c.txt", seq_len=float("nan")), "seq_len must be an integer"),
    ("vocab_size 1", lambda ws: windows_from_tokens(torch.zeros(2, 4, dtype=torch.long), 1), "vocab_size must be"),
    ("top_k numpy bool", lambda ws: compute_basis(_windows(), top_k=np.bool_(True), progress=False), "top_k must be"),
    ("top_k 1.0", lambda ws: compute_basis(_windows(), top_k=1.0, progress=False), "top_k must be"),
    ("max_docs 0 numpy", lambda ws: load_corpus(ws / "c.txt", seq_len=8, max_docs=np.int64(0)), "max_docs must be"),
    ("split fraction 2", lambda ws: _windows().split(2.0), "fraction must be"),
    ("split fraction nan", lambda ws: _windows().split(float("nan")), "fraction must be"),
    ("split seed 2**64", lambda ws: _windows().split(0.5, seed=2**64), "seed must be"),
    ("split seed -1", lambda ws: _windows().split(0.5, seed=-1), "seed must be"),
    ("shards 0", lambda ws: _windows().shards(0), "n_shards must be"),
    ("train_toy seed 2**70", lambda ws: _train(seed=2**70), "seed must be"),
    ("leading_term steps -1", lambda ws: Basis.load(ws / "b.safetensors").leading_term("V", steps=-1), "steps must be >= 0"),
    ("leading_term lr inf", lambda ws: Basis.load(ws / "b.safetensors").leading_term("V", steps=2, lr=float("inf")), "lr must be"),
    ("estimate_bytes k 0", lambda ws: __import__("tl_leadterm.basis", fromlist=["x"]).estimate_bytes(10, k=0), "k must be"),
    ("word tokenizer min_count 0", lambda ws: __import__("tl_leadterm.tokenization", fromlist=["x"]).build_word_tokenizer(["a"], min_count=0),
     "min_count must be"),
    ("pad_id negative", lambda ws: __import__("tl_leadterm.corpus", fromlist=["x"]).windows_from_documents([[1, 2, 3]], 2, eos_id=0, pack="cut", pad_id=-1),
     "pad_id must be"),
]


def _first_pass(chunk):
    from tl_leadterm.basis import BasisSpec, first_pass
    w = _windows()
    return first_pass(w, BasisSpec(7, torch.arange(3), "exact"), chunk_size=chunk, progress=False)


def _train(**kw):
    from tl_leadterm.toy import ToyConfig, ToyTransformer, train_toy
    w = _windows()
    return train_toy(ToyTransformer(ToyConfig(7, w.seq_len, 1)), w, lr=0.1, steps=1, progress=False, **kw)


@pytest.mark.parametrize("name,call,fragment", RANGE_CASES, ids=[c[0] for c in RANGE_CASES])
def test_numeric_parameters_have_a_checked_range(ws, name, call, fragment):
    with deadline():
        api_error(lambda: call(ws), fragment)


def test_numpy_scalars_are_accepted_wherever_python_numbers_are(ws):
    a = load_corpus(ws / "c.txt", seq_len=8, max_docs=3)
    b = load_corpus(ws / "c.txt", seq_len=np.int64(8), max_docs=np.int32(3), word_min_count=np.uint8(1))
    assert torch.equal(a.tokens, b.tokens)
    w = _windows()
    assert torch.equal(compute_basis(w, top_k=3, progress=False).bigram,
                       compute_basis(w, top_k=np.int64(3), chunk_size=np.int16(2), progress=False).bigram)
    assert torch.equal(compute_basis(w, token_ids=[0, 2], progress=False).bigram,
                       compute_basis(w, token_ids=np.array([0, 2]), progress=False).bigram)
    assert torch.equal(compute_basis(w, token_ids=[np.int64(0), np.int32(2)], progress=False).bigram,
                       compute_basis(w, token_ids=[0, 2], progress=False).bigram)
    assert torch.equal(windows_from_tokens(w.tokens, np.int64(7)).tokens, w.tokens)
    assert [x.tokens.tolist() for x in w.split(np.float32(0.5), seed=np.uint64(3))] == [x.tokens.tolist() for x in w.split(0.5, 3)]
    s = open_stream(ws / "data.idx", seq_len=np.int64(T), vocab_size=np.int32(V), chunk_windows=np.int64(5))
    assert s.seq_len == T and type(s.seq_len) is int and s.chunk_windows == 5
    assert len(_windows().shards(np.int8(2))) == 2


CLI_RANGE_CASES = [
    ("toy-train seed 2**70", ["toy-train", "--corpus", "{c}", "--seq-len", 8, "--layers", 1, "--lr", 0.1, "--steps", 1,
                              "--full-batch", "--seed", 2**70, "--out", "{o}"], "--seed must be an integer >= 0"),
    ("toy-train seed -1", ["toy-train", "--corpus", "{c}", "--seq-len", 8, "--layers", 1, "--lr", 0.1, "--steps", 1,
                           "--full-batch", "--seed", -1, "--out", "{o}"], "--seed must be"),
    ("toy-train lr nan", ["toy-train", "--corpus", "{c}", "--seq-len", 8, "--layers", 1, "--lr", "nan", "--steps", 1,
                          "--full-batch", "--seed", 0, "--out", "{o}"], "--lr must be a positive number"),
    ("toy-train log-every 0", ["toy-train", "--corpus", "{c}", "--seq-len", 8, "--layers", 1, "--lr", 0.1, "--steps", 1,
                               "--full-batch", "--seed", 0, "--log-every", 0, "--out", "{o}"], "--log-every must be"),
    ("toy-train layers 0", ["toy-train", "--corpus", "{c}", "--seq-len", 8, "--layers", 0, "--lr", 0.1, "--steps", 1,
                            "--full-batch", "--seed", 0, "--out", "{o}"], "--layers must be"),
    ("demo seed 2**64", ["demo", "--out", "{o}", "--seed", 2**64, "--no-pythia", "--neox-steps", 0], "--seed must be"),
    ("basis shard digits", ["basis", "--corpus", "{c}", "--seq-len", 8, "--token-ids", "{ids}", "--mode", "exact",
                            "--shard", "1/²", "--stats-out", "{o}.safetensors"], "--shard must be I/N"),
    ("basis items digits", ["basis", "--corpus", "{idx}", "--seq-len", 8, "--vocab-size", V, "--top-k", 3, "--items", "0:²",
                            "--out", "{o}.safetensors"], "--items must be A:B"),
    ("basis pythia-steps digits", ["basis", "--corpus", "{idx}", "--seq-len", 8, "--vocab-size", V, "--top-k", 3,
                                   "--pythia-steps", "¹:2", "--out", "{o}.safetensors"], "--pythia-steps must be A:B"),
]


@pytest.mark.parametrize("name,argv,fragment", CLI_RANGE_CASES, ids=[c[0] for c in CLI_RANGE_CASES])
def test_cli_numeric_options(ws, tmp_path, name, argv, fragment):
    sub = {"{c}": ws / "c.txt", "{o}": tmp_path / "out", "{ids}": ws / "ids.json", "{idx}": ws / "data.idx"}
    argv = [str(a) for a in argv]
    argv = [next((a.replace(k, str(v)) for k, v in sub.items() if k in a), a) for a in argv]
    one_line_error(argv, fragment)
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------
# class 5: inconsistent inputs refused up front (or honoured)
# ---------------------------------------------------------------------------
def _bad_index(ws, tmp, mutate):
    shutil.copy(ws / "data.bin", tmp / "x.bin")
    raw = bytearray((ws / "data.idx").read_bytes())
    n = struct.unpack("<Q", raw[18:26])[0]
    sizes = np.frombuffer(bytes(raw[34:34 + 4 * n]), dtype=np.int32).copy()
    ptrs = np.frombuffer(bytes(raw[34 + 4 * n:34 + 12 * n]), dtype=np.int64).copy()
    mutate(sizes, ptrs)
    raw[34:34 + 4 * n] = sizes.tobytes()
    raw[34 + 4 * n:34 + 12 * n] = ptrs.tobytes()
    (tmp / "x.idx").write_bytes(bytes(raw))
    return tmp / "x.idx"


def _grow(i, by):
    def m(sizes, ptrs):
        sizes[i] += by
    return m


def _set_ptr(i, v):
    def m(sizes, ptrs):
        ptrs[i] = v
    return m


INDEX_CASES = [
    ("an item in the middle runs past the end", lambda s, p: (s.__setitem__(5, 10**6)), "item 5 has data that runs past"),
    ("a negative size", _grow(3, -10**4), "item 3 has a negative size"),
    ("an odd pointer in a uint16 index", _set_ptr(7, 11), "item 7 has a pointer that is not a whole number"),
    ("a negative pointer", _set_ptr(2, -8), "item 2 has a negative pointer"),
    ("a pointer past the end", _set_ptr(4, 2**62), "item 4 has data that runs past"),
]


@pytest.mark.parametrize("name,mutate,fragment", INDEX_CASES, ids=[c[0] for c in INDEX_CASES])
def test_index_items_are_checked_everywhere(ws, tmp_path, name, mutate, fragment):
    idx = _bad_index(ws, tmp_path, mutate)
    api_error(lambda: open_stream(idx, seq_len=T, vocab_size=V), fragment)
    one_line_error(["basis", "--corpus", idx, "--seq-len", T, "--vocab-size", V, "--top-k", 3,
                    "--out", tmp_path / "o.safetensors"], fragment)


def test_windows_from_tokens_checks_lengths():
    t = torch.zeros(3, 5, dtype=torch.long)
    for lengths, frag in (([6, 5, 5], "between 2 and the window width 5"), ([1, 5, 5], "between 2"), ([5, 5], "one length per window"),
                          ([[5, 5, 5]], "one length per window"), ([2.5, 5, 5], "must be integers")):
        api_error(lambda: windows_from_tokens(t, 4, lengths=torch.tensor(lengths)), frag)
    w = windows_from_tokens(t, 4, lengths=np.array([2, 5, 3]))
    assert w.n_positions == 1 + 4 + 2


def test_inconsistent_options_are_refused(ws, shared_data, tmp_path):
    tok = shared_data / "gpt-neox-20b-tokenizer.json"
    idx, npy = ws / "data.idx", tmp_path / "w.npy"
    np.save(npy, np.arange(40).reshape(4, 10) % 7)
    o = tmp_path / "o.safetensors"
    cli = [
        (["basis", "--corpus", idx, "--seq-len", T, "--vocab-size", V, "--tokenizer", tok, "--top-k", 3, "--out", o],
         "tokenizer has"),
        (["basis", "--corpus", idx, "--seq-len", T, "--vocab-size", V, "--max-docs", 5, "--top-k", 3, "--out", o],
         "--max-docs bounds the documents of a text corpus"),
        (["toy-train", "--corpus", idx, "--seq-len", T, "--vocab-size", V, "--max-docs", 5, "--layers", 1, "--lr", 0.1,
          "--steps", 1, "--full-batch", "--seed", 0, "--out", tmp_path / "t"], "--max-docs bounds"),
        (["basis", "--corpus", npy, "--seq-len", 9, "--vocab-size", 7, "--max-docs", 2, "--top-k", 3, "--out", o], "--max-docs"),
        (["basis", "--corpus", npy, "--seq-len", 9, "--vocab-size", 7, "--pack", "cut", "--top-k", 3, "--out", o], "--pack cut"),
        (["basis", "--corpus", npy, "--seq-len", 9, "--vocab-size", 7, "--tokenizer", tok, "--top-k", 3, "--out", o], "tokenizer has"),
        (["basis", "--corpus", idx, "--seq-len", T, "--vocab-size", V, "--tokenizer", "words", "--top-k", 3, "--out", o],
         "'words' tokenizer is built from text"),
        (["basis", "--corpus", npy, "--seq-len", 9, "--vocab-size", 7, "--tokenizer", "words", "--top-k", 3, "--out", o],
         "'words' tokenizer is built from text"),
        (["basis", "--corpus", ws / "c.txt", "--seq-len", T, "--tokenizer", tok, "--word-vocab-size", 5, "--top-k", 3,
          "--out", o], "--word-vocab-size and --word-min-count"),
    ]
    for argv, frag in cli:
        one_line_error(argv, frag)
    assert not o.exists() and not (tmp_path / "t").exists()


def test_token_files_are_read_by_toy_train_and_load_corpus(ws, tmp_path):
    """toy-train's help lists token files: it reads them (it used to call them 'not text')."""
    w = load_corpus(ws / "data.idx", seq_len=T, vocab_size=V)
    s = open_stream(ws / "data.idx", seq_len=T, vocab_size=V)
    assert torch.equal(w.tokens, torch.cat([x.tokens for x in s]))
    assert torch.equal(load_corpus(ws / "data.bin", seq_len=T, vocab_size=V, items="3:9").tokens,
                       torch.cat([x.tokens for x in open_stream(ws / "data.idx", seq_len=T, vocab_size=V, items="3:9")]))
    rc, err = run(["toy-train", "--corpus", ws / "data.idx", "--seq-len", T, "--vocab-size", V, "--items", "0:10",
                   "--layers", 1, "--lr", 0.1, "--steps", 2, "--full-batch", "--seed", 0, "--out", tmp_path / "t"])
    assert rc == 0, err
    assert (tmp_path / "t" / "toy.safetensors").is_file()


# ---------------------------------------------------------------------------
# class 6: text is read as text
# ---------------------------------------------------------------------------
BODY = "the naïve bird flew.\n<|endoftext|>\nthe fish swam.\n"


def test_a_byte_order_mark_is_no_token_and_hides_no_separator(tmp_path):
    (tmp_path / "plain.txt").write_text(BODY, encoding="utf-8")
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbf" + ("<|endoftext|>\n" + BODY).encode())
    (tmp_path / "bom16le.txt").write_bytes(b"\xff\xfe" + BODY.encode("utf-16-le"))
    from tl_leadterm import read_documents
    assert read_documents(tmp_path / "bom.txt") == read_documents(tmp_path / "plain.txt") == ["the naïve bird flew.", "the fish swam."]
    assert read_documents(tmp_path / "bom16le.txt", encoding="utf_16_le") == read_documents(tmp_path / "plain.txt")
    a = load_corpus(tmp_path / "plain.txt", seq_len=4)
    b = load_corpus(tmp_path / "bom.txt", seq_len=4)
    assert a.tokenizer.words == b.tokenizer.words and "\ufeff" not in "".join(b.tokenizer.words)


def test_nfd_and_nfc_spellings_are_one_token(tmp_path):
    import unicodedata
    nfc = "the naïve café. straße. the naïve café.\n"
    (tmp_path / "nfc.txt").write_text(nfc)
    (tmp_path / "nfd.txt").write_text(unicodedata.normalize("NFD", nfc))
    (tmp_path / "mixed.txt").write_text(nfc + unicodedata.normalize("NFD", nfc))
    a, b = load_corpus(tmp_path / "nfc.txt", seq_len=4), load_corpus(tmp_path / "nfd.txt", seq_len=4)
    assert a.tokenizer.words == b.tokenizer.words and torch.equal(a.tokens, b.tokens)
    m = load_corpus(tmp_path / "mixed.txt", seq_len=4)
    assert m.tokenizer.words == a.tokenizer.words                 # one token per word, whatever the normal form
    hf = a.tokenizer.to_hf()
    text = unicodedata.normalize("NFD", "The naïve café")
    assert hf(text, add_special_tokens=False)["input_ids"] == a.tokenizer.encode(text)


ENCODINGS = [("utf_16", "utf-16"), ("utf-32", "utf-32"), ("UTF8", "utf-8"), ("latin1", "latin-1"), ("utf-8-sig", "utf-8-sig"),
             ("U16", "utf-16"), ("cp1252", "cp1252")]


@pytest.mark.parametrize("alias,codec", ENCODINGS, ids=[e[0] for e in ENCODINGS])
def test_codec_aliases_are_accepted(tmp_path, alias, codec):
    text = "the cafe bird flew.\n<|endoftext|>\nthe fish swam.\n" * 5
    (tmp_path / "t.txt").write_bytes(text.encode(codec))
    (tmp_path / "u.txt").write_text(text, encoding="utf-8")
    from tl_leadterm import read_documents
    assert read_documents(tmp_path / "t.txt", encoding=alias) == read_documents(tmp_path / "u.txt")
    rc, err = run(["basis", "--corpus", tmp_path / "t.txt", "--encoding", alias, "--seq-len", 4, "--top-k", 3,
                   "--out", tmp_path / "b.safetensors"])
    assert rc == 0, err


@pytest.mark.parametrize("encoding,fragment", [("rot13", "not a text encoding"), ("hex", "not a text encoding"),
                                               ("klingon", "unknown --encoding")])
def test_codecs_that_are_not_text_encodings(ws, tmp_path, encoding, fragment):
    one_line_error(["basis", "--corpus", ws / "c.txt", "--encoding", encoding, "--seq-len", 4, "--top-k", 3,
                    "--out", tmp_path / "b.safetensors"], fragment)
    api_error(lambda: load_corpus(ws / "c.txt", seq_len=4, encoding=encoding), fragment.replace("--", ""))


# ---------------------------------------------------------------------------
# class 7: temporary token files of killed runs are removed; a full disk is one line
# ---------------------------------------------------------------------------
def test_temporary_token_files_of_killed_runs_are_removed(ws, tmp_path):
    from tl_leadterm.corpus.streams import open_text_stream
    code = ("import os, sys; from tl_leadterm.corpus.streams import open_text_stream; "
            f"s = open_text_stream({str(ws / 'c.txt')!r}, seq_len=8, workdir={str(tmp_path)!r}); os._exit(9)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 9, r.stderr
    stale = [p for p in tmp_path.iterdir() if p.name.startswith("tl_leadterm_tokens_")]
    assert len(stale) == 1 and (stale[0] / "tokens.bin").is_file()          # a killed run leaves its folder ...
    live = tmp_path / f"tl_leadterm_tokens_{os.getppid()}_keep"              # ... and a live process' folder stays
    live.mkdir()
    s = open_text_stream(ws / "c.txt", seq_len=8, workdir=tmp_path)          # ... which the next run removes
    names = {p.name for p in tmp_path.iterdir()}
    assert stale[0].name not in names and live.name in names and Path(s._tmp.name).name in names
    assert Path(s._tmp.name).name.startswith(f"tl_leadterm_tokens_{os.getpid()}_")


def test_a_full_disk_while_tokenizing_is_one_line(ws, tmp_path, monkeypatch):
    import builtins

    import tl_leadterm.corpus.streams as streams

    class Full(io.RawIOBase):
        def __init__(self, path, mode):
            self.f = builtins.open(path, mode)

        def write(self, b):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

    monkeypatch.setattr(streams, "open", lambda p, m="r", *a, **k: Full(p, m) if "w" in m else builtins.open(p, m, *a, **k),
                        raising=False)
    msg = api_error(lambda: streams.open_text_stream(ws / "c.txt", seq_len=8, workdir=tmp_path), "No space left on device")
    assert "TMPDIR" in msg
    assert not list(tmp_path.iterdir())                                       # the temporary folder is gone
    one_line_error(["basis", "--corpus", ws / "c.txt", "--seq-len", 8, "--top-k", 3, "--out", tmp_path / "b.safetensors"],
                   "No space left")


def test_a_full_disk_while_writing_a_safetensors_file_is_one_line(ws, tmp_path, monkeypatch):
    import tl_leadterm.tensorfiles as tf

    real = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(tf.os, "fsync", full)
    msg = api_error(lambda: Basis.load(ws / "b.safetensors").save(tmp_path / "x.safetensors"), "no space left")
    assert "nothing was written" in msg
    monkeypatch.setattr(tf.os, "fsync", real)
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------
# class 8: tracebacks that are now one line (environment, duplicates)
# ---------------------------------------------------------------------------
ENV_CASES = [
    ("RANK >= WORLD_SIZE", {"WORLD_SIZE": "2", "RANK": "2"}, "RANK=2 is not below WORLD_SIZE=2"),
    ("RANK not a number", {"WORLD_SIZE": "2", "RANK": "zero"}, "RANK='zero' is not an integer"),
    ("RANK superscript digit", {"WORLD_SIZE": "2", "RANK": "¹"}, "is not an integer"),
    ("WORLD_SIZE 0", {"WORLD_SIZE": "0", "RANK": "0"}, "WORLD_SIZE must be an integer >= 1"),
    ("timeout not a number", {"WORLD_SIZE": "2", "RANK": "0", "TL_LEADTERM_DIST_TIMEOUT": "soon"}, "is not a number"),
    ("timeout nan", {"WORLD_SIZE": "2", "RANK": "0", "TL_LEADTERM_DIST_TIMEOUT": "nan"}, "positive number of seconds"),
    ("timeout negative", {"WORLD_SIZE": "2", "RANK": "0", "TL_LEADTERM_DIST_TIMEOUT": "-5"}, "positive number of seconds"),
    ("timeout inf", {"WORLD_SIZE": "2", "RANK": "0", "TL_LEADTERM_DIST_TIMEOUT": "inf"}, "positive number of seconds"),
]


@pytest.mark.parametrize("name,env,fragment", ENV_CASES, ids=[c[0] for c in ENV_CASES])
def test_torchrun_environment_is_checked(ws, tmp_path, name, env, fragment):
    one_line_error(["basis", "--corpus", ws / "data.idx", "--seq-len", T, "--vocab-size", V, "--top-k", 3,
                    "--out", tmp_path / "b.safetensors"], fragment, env=env)
    assert not (tmp_path / "b.safetensors").exists()


def test_duplicate_tokens_are_refused(tmp_path):
    one_line_error(["demo", "--out", tmp_path / "d", "--tokens", "bird,fish,bird", "--no-pythia", "--neox-steps", 0],
                   "--tokens lists 'bird' more than once")
    assert not (tmp_path / "d").exists()


# ---------------------------------------------------------------------------
# class 9: messages that name the right thing
# ---------------------------------------------------------------------------
def test_merge_errors_name_the_file_never_a_flag_merge_lacks(ws, tmp_path):
    cases = [
        (["merge", "--stats", ws / S1[0], ws / S1[2], "--out", tmp_path / "g.safetensors"], f"shard 1/{N} is missing"),
        (["merge", "--stats", ws / S1[0], ws / S1[0], ws / S1[1], "--out", tmp_path / "g.safetensors"], "given twice"),
        (["merge", "--stats", ws / S1[0], ws / "b.safetensors", "--out", tmp_path / "g.safetensors"], "not a tl_leadterm shard file"),
    ]
    for argv, frag in cases:
        msg = one_line_error(argv, frag)
        assert not no_basis_shard_flag(msg) and ("s1_" in msg or "b.safetensors" in msg), msg


def test_a_checkpoint_folder_with_a_comma_is_not_split(tmp_path):
    from tl_leadterm.analysis.sweep import parse_checkpoints
    d = tmp_path / "run,v2"
    d.mkdir()
    assert parse_checkpoints(f"{d}") == [str(d)]
    assert parse_checkpoints(f"toy:{d},step1") == [f"toy:{d}", "step1"]
    assert parse_checkpoints(f"step0,{d},step2") == ["step0", str(d), "step2"]
    api_error(lambda: parse_checkpoints(f"{tmp_path / 'nothere'},v2"), "unknown checkpoint")


LOCAL_DATASET_CASES = [
    ("bad.jsonl", b'{"text": "a"}\n{not json\n', "JSON lines"),
    ("bad.parquet", b"PAR1 this is not parquet", "Parquet"),
    ("bad.csv", b'text\n"unclosed\n', None),
]


@pytest.mark.parametrize("name,data,kind", LOCAL_DATASET_CASES, ids=[c[0] for c in LOCAL_DATASET_CASES])
def test_local_dataset_files_are_not_blamed_on_the_network(tmp_path, name, data, kind):
    (tmp_path / name).write_bytes(data)
    from tl_leadterm import read_documents
    try:
        read_documents(tmp_path / name)
    except LeadTermError as e:
        msg = str(e)
        assert "network" not in msg and "hub" not in msg and "\n" not in msg, msg
        if kind:
            assert kind in msg and name in msg, msg
    else:
        assert kind is None                                       # a forgiving CSV reader may read it


def test_no_sequence_length_advice_where_none_can_help(tmp_path, monkeypatch):
    import tl_leadterm.corpus.windows as corpus     # where windows_from_documents checks memory
    (tmp_path / "c.txt").write_text("the bird flew up. " * 200)
    monkeypatch.setattr(corpus, "available_bytes", lambda *a: 1000)   # too little for the corpus at any length
    msg = api_error(lambda: load_corpus(tmp_path / "c.txt", seq_len=8), "do not fit at any sequence length")
    assert "smaller seq_len" not in msg
    monkeypatch.setattr(corpus, "available_bytes", lambda *a: 10**6)  # pack cut: padding is what does not fit
    (tmp_path / "d.txt").write_text("\n<|endoftext|>\n".join(["the bird flew up."] * 50))
    api_error(lambda: load_corpus(tmp_path / "d.txt", seq_len=4000, pack="cut"), "smaller seq_len")
    (tmp_path / "one.txt").write_text("a")
    msg = api_error(lambda: load_corpus(tmp_path / "one.txt", seq_len=8), "no window")
    assert "smaller seq_len" not in msg
    msg = api_error(lambda: load_corpus(tmp_path / "one.txt", seq_len=8, pack="cut"), "no window at any sequence length")


def test_toy_train_memory_advice_names_only_what_helps(ws, tmp_path, monkeypatch):
    import tl_leadterm.basis as basis
    monkeypatch.setattr(basis, "available_bytes", lambda *a: 10**4)   # nothing one change could fix
    msg = one_line_error(["toy-train", "--corpus", ws / "c.txt", "--seq-len", 8, "--layers", 1, "--lr", 0.1, "--steps", 1,
                          "--full-batch", "--seed", 0, "--out", tmp_path / "t"], "to train")
    assert "smaller --seq-len" not in msg and "--seq-len 2 or less" not in msg
