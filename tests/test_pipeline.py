"""The one basis pipeline: its reductions, the one corpus fingerprint accumulator, the corpus package's
validation helper, and the deprecated module paths that still import."""

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from tl_leadterm import LeadTermError
from tl_leadterm.basis import LocalReduction, Reduction, compute_basis, compute_basis_sharded, run_pipeline
from tl_leadterm.cli import main
from tl_leadterm.corpus import (
    SOURCE_KINDS, FingerprintAccumulator, Windows, open_stream, validate_source, windows_from_tokens, write_indexed,
)
from tl_leadterm.corpus.fingerprint import combine

V, T = 12, 6
NAMES = ("bigram", "context", "interchange", "value", "value_output", "key_query", "position")


def cut_windows(n=40, seed=0) -> Windows:
    """Windows of varied lengths (padding), so that the lengths matter to every digest."""
    g = np.random.default_rng(seed)
    lengths = g.integers(2, T + 2, size=n)
    return windows_from_tokens(g.integers(0, V, size=(n, T + 1)), V, lengths=lengths, source="cut")


def same_basis(a, b) -> None:
    for n in NAMES:
        assert torch.equal(getattr(a, n), getattr(b, n)), n
    assert (a.n_positions, a.mode, a.corpus_fingerprint, a.corpus_source) == (b.n_positions, b.mode, b.corpus_fingerprint,
                                                                              b.corpus_source)


# ---------------------------------------------------------------------------
# the fingerprint accumulator
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("cuts", [[40], [1, 39], [13, 13, 14], [5] * 8])
def test_fingerprint_is_the_windows_fingerprint_however_the_parts_are_cut(cuts):
    w = cut_windows()
    acc, a = FingerprintAccumulator(digest=True), 0
    for c in cuts:
        acc.add(w[a:a + c])
        a += c
    assert acc.fingerprint() == w.fingerprint
    assert (acc.n_windows, acc.n_positions) == (w.n_windows, w.n_positions)


def test_fingerprint_depends_on_tokens_lengths_and_vocabulary():
    w = cut_windows()
    other_len = windows_from_tokens(w.tokens, V, lengths=torch.full((w.n_windows,), T + 1), source="cut")
    other_tok = windows_from_tokens(torch.roll(w.tokens, 1, 0), V, lengths=w.lengths)
    other_v = windows_from_tokens(w.tokens, V + 1, lengths=w.lengths)
    assert len({w.fingerprint, other_len.fingerprint, other_tok.fingerprint, other_v.fingerprint}) == 4


def test_shard_digest_is_per_part_and_combines_in_order():
    import hashlib

    w = cut_windows()
    a, b = w[:20], w[20:]
    acc = FingerprintAccumulator(fingerprint=False, digest=True).add(a).add(b)
    want = hashlib.sha256()
    for part in (a, b):
        want.update(part.tokens.numpy().astype(np.int64).tobytes())
        want.update(part.lengths.numpy().astype(np.int64).tobytes())
    assert acc.digest() == want.hexdigest()
    da, db = (FingerprintAccumulator(fingerprint=False, digest=True).add(p).digest() for p in (a, b))
    assert combine([da, db]) == hashlib.sha256((da + db).encode()).hexdigest()[:16] != combine([db, da])
    with pytest.raises(LeadTermError, match="fingerprint=False"):
        acc.fingerprint()


def test_fingerprint_of_long_runs_of_whole_windows_is_replayed_in_blocks():
    import hashlib

    from tl_leadterm.corpus import fingerprint

    w = windows_from_tokens(torch.arange(50 * (T + 1)).reshape(50, T + 1) % V, V)
    want = hashlib.sha256(w.tokens.numpy().astype(np.int64).tobytes() + np.full(50, T + 1, np.int64).tobytes()
                          + str(V).encode()).hexdigest()[:16]
    old, fingerprint._BLOCK = fingerprint._BLOCK, 7      # a run of 50 equal lengths hashed 7 at a time
    try:
        assert FingerprintAccumulator().add(w[:30]).add(w[30:]).fingerprint() == want
    finally:
        fingerprint._BLOCK = old
    assert w.fingerprint == want


# ---------------------------------------------------------------------------
# the pipeline and its reductions
# ---------------------------------------------------------------------------
class Recording(LocalReduction):
    """One process, recording the steps the pipeline asks for."""

    def __init__(self):
        self.steps = []

    def frequencies(self, freq):
        self.steps.append("frequencies")
        return freq

    def mode(self, resolve):
        self.steps.append("mode")
        return resolve()

    def first(self, stats, *a):
        self.steps.append("first")
        return super().first(stats, *a)

    def compose(self, stats):
        self.steps.append("compose")
        return super().compose(stats)

    def second(self, stats, *a):
        self.steps.append("second")
        return super().second(stats, *a)

    def identity(self, *a):
        self.steps.append("identity")
        return super().identity(*a)


@pytest.mark.parametrize("select", [{"top_k": 5}, {"token_ids": [3, 1, 4]}])
def test_the_pipeline_runs_its_steps_in_order_and_equals_compute_basis(select):
    w = cut_windows()
    r = Recording()
    got = run_pipeline(w, r, progress=False, **select)
    assert r.steps == (["frequencies"] if "top_k" in select else []) + ["mode", "first", "compose", "second", "identity"]
    same_basis(got, compute_basis(w, progress=False, **select))


def test_parts_streams_and_shards_give_the_same_bytes(tmp_path):
    g = np.random.default_rng(1)
    items = [g.integers(0, V, size=int(g.integers(3, 40))) for _ in range(30)]
    write_indexed(tmp_path / "d", items)
    s = open_stream(tmp_path / "d.idx", seq_len=T, vocab_size=V, chunk_windows=4)
    whole = s.to_windows()
    ids = list(range(V))
    ref = compute_basis(whole, token_ids=ids, mode="exact", progress=False)
    for got in (compute_basis(s, token_ids=ids, mode="exact", progress=False),
                compute_basis_sharded(list(s), ids, mode="exact"),
                run_pipeline(s, LocalReduction(), token_ids=ids, mode="exact", progress=False)):
        assert got.corpus_fingerprint == whole.fingerprint
        for n in NAMES:      # sums added in another grouping: equal to rounding
            torch.testing.assert_close(getattr(got, n), getattr(ref, n), rtol=1e-12, atol=1e-15)


def test_a_reduction_that_stops_returns_none():
    class Stop(Reduction):
        def first(self, stats, *a):
            return None

    assert run_pipeline(cut_windows(), Stop(), top_k=3, progress=False) is None


@pytest.mark.parametrize("name, call, fragment", [
    ("no selection", lambda w: run_pipeline(w, top_k=None), "exactly one of top_k or token_ids"),
    ("both selections", lambda w: run_pipeline(w, top_k=2, token_ids=[1]), "exactly one of top_k or token_ids"),
    ("no shards", lambda w: compute_basis_sharded([], [1, 2]), "no shards given"),
    ("not windows", lambda w: compute_basis_sharded([w.tokens], [1, 2]), "expected token windows"),
    ("bad dtype", lambda w: run_pipeline(w, top_k=2, dtype=torch.int64), "dtype must be torch.float64"),
    ("top_k zero", lambda w: run_pipeline(w, top_k=0), "top_k must be"),
    ("one-shot iterator", lambda w: compute_basis_sharded(iter([w]), [1, 2]), "can be read only once"),
    ("generator", lambda w: compute_basis_sharded((x for x in [w]), [1, 2]), "can be read only once"),
])
def test_bad_pipeline_arguments_are_one_line(name, call, fragment):
    with pytest.raises(LeadTermError) as e:
        call(cut_windows())
    assert fragment in str(e.value) and "\n" not in str(e.value)


# ---------------------------------------------------------------------------
# validate_source: a corpus spec checked without reading the corpus
# ---------------------------------------------------------------------------
@pytest.fixture()
def ws(tmp_path):
    np.save(tmp_path / "w.npy", np.zeros((3, T + 1), dtype=np.int64))
    write_indexed(tmp_path / "d", [[1, 2, 3, 4, 5, 6, 7, 8]])
    np.arange(20, dtype=np.uint16).tofile(tmp_path / "raw.bin")
    (tmp_path / "c.txt").write_bytes(b"\xff\xfe not utf-8 at all")    # only reading can tell
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("some text")
    (tmp_path / "empty").mkdir()
    (tmp_path / "lonely.idx").write_bytes(b"MMIDIDX\x00\x00")
    return tmp_path


@pytest.mark.parametrize("source, opts, kind", [
    ("builtin:stories", {}, "builtin"),
    ("c.txt", {}, "text"),
    ("docs", {"pack": "cut"}, "text"),
    ("w.npy", {"vocab_size": V}, "windows"),
    ("d.idx", {"vocab_size": V, "items": "0:1"}, "token-file"),
    ("d", {"vocab_size": V}, "token-file"),
    ("raw.bin", {"vocab_size": V, "token_dtype": "uint32"}, "token-file"),
    ("hf:some/dataset", {"max_docs": 3}, "dataset"),
    ("roneneldan/TinyStories", {}, "dataset"),
])
def test_validate_source_names_the_kind(ws, source, opts, kind):
    src = source if source.startswith(("builtin", "hf:", "roneneldan")) else ws / source
    assert validate_source(src, seq_len=T, **opts) == kind
    assert kind in SOURCE_KINDS


@pytest.mark.parametrize("source, opts, fragment", [
    ("c.txt", {"seq_len": 0}, "seq_len must be"),
    ("c.txt", {"pack": "zip"}, "pack must be 'join' or 'cut'"),
    ("missing.txt", {}, "not found"),
    ("missing.npy", {"vocab_size": V}, "not found"),
    ("empty", {}, "has no .txt files"),
    ("c.txt", {"encoding": "klingon"}, "unknown encoding"),
    ("c.txt", {"items": "0:2"}, "select items of an indexed dataset"),
    ("c.txt", {"tokenizer": "gpt2", "word_vocab_size": 10}, "bound the 'words' tokenizer"),
    ("w.npy", {}, "pass vocab_size"),
    ("w.npy", {"vocab_size": V, "max_docs": 2}, "bounds the documents of a text corpus"),
    ("w.npy", {"vocab_size": V, "pack": "cut"}, "already tokenized"),
    ("w.npy", {"vocab_size": V, "items": "0:1"}, "not .npy windows"),
    ("raw.bin", {}, "pass vocab_size"),
    ("raw.bin", {"vocab_size": V, "tokenizer": "words"}, "'words' tokenizer is built from text"),
    ("raw.bin", {"vocab_size": V, "token_dtype": "float"}, "token_dtype must be one of"),
    ("raw.bin", {"vocab_size": V, "items": "0:1"}, "does not exist"),
    ("d.idx", {"vocab_size": V, "items": "0:1", "pythia_steps": "0:1"}, "not both"),
    ("d.idx", {"vocab_size": V, "items": "2:1"}, "items must be A:B"),
    ("lonely.idx", {"vocab_size": V}, "beside it"),
])
def test_validate_source_refuses_in_one_line(ws, source, opts, fragment):
    opts = {"seq_len": T, **opts}
    with pytest.raises(LeadTermError) as e:
        validate_source(ws / source, **opts)
    assert fragment in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_the_cli_checks_the_source_before_reading(ws, capsys):
    """An option that does not apply to a token file is refused before anything is read (it was ignored)."""
    rc = main(["basis", "--corpus", str(ws / "raw.bin"), "--vocab-size", str(V), "--seq-len", str(T), "--top-k", "3",
               "--pack", "cut", "--out", str(ws / "out" / "b.safetensors")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: --pack cut cuts text documents") and not (ws / "out").exists(), err


# ---------------------------------------------------------------------------
# deprecated module paths
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("old, new", [("streams", "corpus.streams"), ("tokenfiles", "corpus.tokenfiles"),
                                      ("documents", "corpus.documents")])
def test_old_corpus_module_paths_are_the_new_modules(old, new):
    code = (f"import warnings; warnings.simplefilter('error')\n"
            f"import tl_leadterm.{new} as new\n"
            f"try:\n    import tl_leadterm.{old}\nexcept DeprecationWarning as e:\n    print('warned:', e)\n"
            f"warnings.simplefilter('ignore')\nimport tl_leadterm.{old} as old\nfrom tl_leadterm import {old} as old2\n"
            f"print(old is new is old2)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"warned: tl_leadterm.{old} moved to tl_leadterm.{new}" in r.stdout and r.stdout.strip().endswith("True"), r.stdout


@pytest.mark.parametrize("old, name, home", [
    ("shards", "merge_pass1", "tl_leadterm.basis.shards"),
    ("shards", "SHARD_FORMAT", "tl_leadterm.basis.shards"),
    ("distributed", "world", "tl_leadterm.basis.distributed"),
    ("distributed", "compute_basis_distributed", "tl_leadterm.basis.distributed"),
    ("distributed", "sweep_distributed", "tl_leadterm.analysis.sweep"),
])
def test_moved_names_still_read_with_a_deprecation_warning(old, name, home):
    import importlib

    module = importlib.import_module(f"tl_leadterm.{old}")
    with pytest.warns(DeprecationWarning, match=f"moved to {home}.{name}"):
        got = getattr(module, name)
    assert got is getattr(importlib.import_module(home), name)
    with pytest.raises(AttributeError):
        getattr(module, "no_such_name")


def test_corpus_package_keeps_its_public_names():
    import tl_leadterm.corpus as corpus

    for name in ("load_corpus", "Windows", "windows_from_tokens", "windows_from_documents", "validate_token_array",
                 "read_documents", "iter_documents", "MAX_VOCAB", "open_stream", "open_text_stream", "WindowStream",
                 "validate_source", "FingerprintAccumulator"):
        assert hasattr(corpus, name), name
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from tl_leadterm import Windows as W2, load_corpus as L2  # noqa: F401  (the package root, no warning)
    assert W2 is corpus.Windows
