"""Corpora of real size: token files read memory-mapped against a direct reading, streaming equals in-memory,
shards merged and torchrun ranks equal one process, and their bad inputs refused in one line."""

import contextlib
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tl_leadterm import LeadTermError, compute_basis, windows_from_tokens
from tl_leadterm.basis import Basis
from tl_leadterm.cli import main
from tl_leadterm.corpus.streams import open_stream
from tl_leadterm.corpus import tokenfiles
from tl_leadterm.corpus.tokenfiles import write_indexed

V, T = 60, 8
NAMES = ("bigram", "context", "interchange", "value", "value_output", "key_query", "position")


def run(argv, env=None):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main([str(a) for a in argv])
    return rc, err.getvalue()


def direct_windows(segments, T):
    """The specification, written directly: each segment cut into windows of T+1 tokens with stride T."""
    out = []
    for seg in segments:
        for s in range(0, len(seg) - T, T):
            out.append(seg[s:s + T + 1])
    return np.array(out, dtype=np.int64)


def rel_err(a: Basis, b: Basis) -> float:
    return max(float((getattr(a, n) - getattr(b, n)).abs().max() / getattr(b, n).abs().max().clamp(min=1e-300)) for n in NAMES)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    g = np.random.default_rng(0)
    items = [g.integers(0, V, size=int(g.integers(3, 70))) for _ in range(40)]
    write_indexed(d / "data", items)
    stream = np.concatenate(items).astype(np.uint16)
    stream.tofile(d / "raw.bin")
    stream.astype(np.uint32).tofile(d / "raw32.bin")
    return d, items, stream


# ---------------------------------------------------------------------------
# readers against a direct reading
# ---------------------------------------------------------------------------
def test_raw_bin_windows_equal_a_direct_reading(files):
    d, _, stream = files
    for name, dt in (("raw.bin", "uint16"), ("raw32.bin", "uint32")):
        s = open_stream(d / name, seq_len=T, vocab_size=V, token_dtype=dt, chunk_windows=5)
        got = torch.cat([w.tokens for w in s]).numpy()
        assert np.array_equal(got, direct_windows([stream], T))
        assert s.n_windows == len(got) and s.n_positions == len(got) * T


def test_indexed_items_and_pythia_steps(files, monkeypatch):
    d, items, _ = files
    for prefix in (d / "data.idx", d / "data.bin", d / "data"):
        got = torch.cat([w.tokens for w in open_stream(prefix, seq_len=T, vocab_size=V, chunk_windows=7)]).numpy()
        assert np.array_equal(got, direct_windows(items, T))
    got = torch.cat([w.tokens for w in open_stream(d / "data.idx", seq_len=T, vocab_size=V, items="5:17")]).numpy()
    assert np.array_equal(got, direct_windows(items[5:17], T))
    s = open_stream(d / "data.idx", seq_len=T, vocab_size=V, items="5:17")
    assert s.dropped_tokens == sum(len(x) - (((len(x) - 1) // T) * T + 1 if len(x) > T else 0) for x in items[5:17])
    monkeypatch.setattr(tokenfiles, "PYTHIA_BATCH", 4)                 # step s = items 4s .. 4s+3 here
    got = torch.cat([w.tokens for w in open_stream(d / "data.idx", seq_len=T, vocab_size=V, pythia_steps="2:5")]).numpy()
    assert np.array_equal(got, direct_windows(items[8:20], T))


def test_index_fields_are_what_the_format_says(files):
    d, items, _ = files
    raw = (d / "data.idx").read_bytes()
    assert raw[:9] == b"MMIDIDX\x00\x00" and raw[17] == 8                     # uint16 is code 8
    n = int.from_bytes(raw[18:26], "little")
    sizes = np.frombuffer(raw[34:34 + 4 * n], dtype=np.int32)
    pointers = np.frombuffer(raw[34 + 4 * n:34 + 12 * n], dtype=np.int64)
    assert n == len(items) and list(sizes) == [len(x) for x in items]
    assert list(pointers) == list(np.concatenate([[0], np.cumsum([2 * len(x) for x in items[:-1]])]))


def test_streamed_basis_equals_the_in_memory_one(files):
    d, items, _ = files
    whole = compute_basis(windows_from_tokens(torch.from_numpy(direct_windows(items, T)), V), top_k=25, progress=False)
    streamed = compute_basis(open_stream(d / "data.idx", seq_len=T, vocab_size=V, chunk_windows=6), top_k=25, progress=False)
    assert torch.equal(whole.token_ids, streamed.token_ids) and rel_err(streamed, whole) <= 1e-12
    assert streamed.corpus_fingerprint == whole.corpus_fingerprint


# ---------------------------------------------------------------------------
# shards as separate jobs, merged in two rounds
# ---------------------------------------------------------------------------
def test_shards_merged_equal_one_process(files, tmp_path):
    d, _, _ = files
    ids = tmp_path / "ids.json"
    ids.write_text(str(list(range(0, V, 3))))
    common = ["--corpus", d / "data.idx", "--seq-len", T, "--vocab-size", V, "--token-ids", ids, "--mode", "merge-other"]
    assert run(["basis", *common, "--out", tmp_path / "one.safetensors"])[0] == 0
    for i in range(3):
        assert run(["basis", *common, "--shard", f"{i}/3", "--stats-out", tmp_path / f"s1_{i}.safetensors"])[0] == 0
    assert run(["merge", "--stats", *[tmp_path / f"s1_{i}.safetensors" for i in range(3)], "--out", tmp_path / "g.safetensors"])[0] == 0
    for i in range(3):
        assert run(["basis", *common, "--shard", f"{i}/3", "--pass2", tmp_path / "g.safetensors",
                    "--stats-out", tmp_path / f"s2_{i}.safetensors"])[0] == 0
    rc, err = run(["merge", "--pass2", tmp_path / "g.safetensors", "--stats", *[tmp_path / f"s2_{i}.safetensors" for i in (2, 0, 1)],
                   "--out", tmp_path / "merged.safetensors"])
    assert rc == 0, err
    one, merged = Basis.load(tmp_path / "one.safetensors"), Basis.load(tmp_path / "merged.safetensors")
    assert rel_err(merged, one) <= 1e-12 and merged.n_positions == one.n_positions and merged.mode == one.mode
    # bad merges: a missing shard, a shard given twice, another round, shards of another corpus
    s1 = [tmp_path / f"s1_{i}.safetensors" for i in range(3)]
    for argv, frag in ((["merge", "--stats", s1[0], s1[2], "--out", tmp_path / "x.safetensors"], "shard 1/3 is missing"),
                       (["merge", "--stats", s1[0], s1[0], s1[1], "--out", tmp_path / "x.safetensors"], "given twice"),
                       (["merge", "--pass2", tmp_path / "g.safetensors", "--stats", *s1, "--out", tmp_path / "x.safetensors"],
                        "round-1 shard file")):
        rc, err = run(argv)
        assert rc == 2 and frag in err and err.count("\n") == 1, err
    other = ["--corpus", d / "raw.bin", "--seq-len", T, "--vocab-size", V, "--token-ids", ids, "--mode", "merge-other"]
    assert run(["basis", *other, "--shard", "1/3", "--stats-out", tmp_path / "o1.safetensors"])[0] == 0
    rc, err = run(["merge", "--stats", s1[0], tmp_path / "o1.safetensors", s1[2], "--out", tmp_path / "x.safetensors"])
    assert rc == 2 and "different corpora" in err
    assert not (tmp_path / "x.safetensors").exists()


# ---------------------------------------------------------------------------
# torchrun
# ---------------------------------------------------------------------------
def _torchrun(args, tmp_path, env_extra=None):
    exe = Path(sys.executable).with_name("torchrun")
    cli = Path(sys.executable).with_name("tl-leadterm")
    if not exe.is_file() or not cli.is_file():
        pytest.skip("torchrun / tl-leadterm are not installed beside this Python")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "TL_LEADTERM_DIST_TIMEOUT": "30", **(env_extra or {})}
    return subprocess.run([str(exe), "--nproc_per_node", "2", "--no-python", str(cli), *map(str, args)], cwd=str(tmp_path),
                          capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process(files, tmp_path):
    d, _, _ = files
    common = ["basis", "--corpus", d / "data.idx", "--seq-len", T, "--vocab-size", V, "--top-k", 30]
    assert run([*common, "--out", tmp_path / "one.safetensors"])[0] == 0
    r = _torchrun([*common, "--out", tmp_path / "two.safetensors"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    one, two = Basis.load(tmp_path / "one.safetensors"), Basis.load(tmp_path / "two.safetensors")
    assert torch.equal(one.token_ids, two.token_ids) and rel_err(two, one) <= 1e-12
    assert one.metadata() == two.metadata()


@pytest.mark.slow
def test_a_killed_rank_fails_and_writes_nothing(files, tmp_path):
    d, _, _ = files
    r = _torchrun(["basis", "--corpus", d / "data.idx", "--seq-len", T, "--vocab-size", V, "--top-k", 30,
                   "--out", tmp_path / "x.safetensors"], tmp_path, {"TL_LEADTERM_FAIL_RANK": "1"})
    assert r.returncode != 0
    assert not (tmp_path / "x.safetensors").exists() and not list(tmp_path.glob(".x.safetensors.*"))
    ours = [l for l in r.stderr.splitlines() if l.startswith("error:")]
    assert ours and all("Traceback" not in l for l in ours)


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------
def _bad_files(tmp_path, files):
    d, items, _ = files
    b = tmp_path / "bad"
    b.mkdir()
    for name in ("short", "magic", "code"):
        shutil.copy(d / "data.idx", b / f"{name}.idx")
        shutil.copy(d / "data.bin", b / f"{name}.bin")
    (b / "short.bin").write_bytes((d / "data.bin").read_bytes()[:-10])
    (b / "magic.idx").write_bytes(b"NOTANIDX\x00" + (d / "data.idx").read_bytes()[9:])
    raw = bytearray((d / "data.idx").read_bytes())
    raw[17] = 9
    (b / "code.idx").write_bytes(bytes(raw))
    write_indexed(b / "big", [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [1, 2, 3, 99, 5, 6, 7, 8, 9, 10, 11]])
    return b


def test_token_file_bad_inputs(files, tmp_path):
    d, _, _ = files
    b = _bad_files(tmp_path, files)
    cases = [
        (b / "short.idx", {}, "does not match"),
        (b / "magic.idx", {}, "is not a Megatron/GPT-NeoX index"),
        (b / "code.idx", {}, "dtype code 9"),
        (d / "data.idx", {"items": "5:400"}, "has 40 items"),
        (d / "data.idx", {"items": "9:3"}, "0 <= A < B"),
        (d / "data.idx", {"items": "x"}, "must be A:B"),
        (d / "data.idx", {"pythia_steps": "0:1"}, "not one whole Pythia step"),
        (d / "raw.bin", {"items": "0:2"}, "does not exist"),
        (b / "big.idx", {}, "item 1, offset 3"),
    ]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    for path, kw, frag in cases:
        with pytest.raises(LeadTermError) as e:
            s = open_stream(path, seq_len=T, vocab_size=V if "big" not in str(path) else 50, **kw)
            for _ in s:
                pass
        assert frag in str(e.value), (path, kw, str(e.value))
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize("shard,frag", [("3/2", "0 <= I < N"), ("x", "I/N"), ("1/0", "I/N"), ("-1/2", "0 <= I < N")])
def test_malformed_shard_is_one_line(files, tmp_path, shard, frag):
    """A malformed --shard is refused in one line that names the flag and the form it needs; the same command
    with a well-formed shard runs (so the error comes from the shard, not from another argument)."""
    d, _, _ = files
    ids = tmp_path / "ids.json"
    ids.write_text(str(list(range(0, V, 3))))
    args = ["basis", "--corpus", d / "data.idx", "--seq-len", T, "--vocab-size", V, "--token-ids", ids, "--mode", "exact"]
    rc, err = run([*args, f"--shard={shard}", "--stats-out", tmp_path / "s.safetensors"])
    assert rc == 2 and err.count("\n") == 1
    assert err.startswith("error: --shard must be I/N") and frag in err and repr(shard) in err, err
    assert not (tmp_path / "s.safetensors").exists()
    assert run([*args, "--shard", "1/2", "--stats-out", tmp_path / "s.safetensors"]) == (0, "")
    assert (tmp_path / "s.safetensors").is_file()


def test_cli_vocab_and_tail_report(files, tmp_path, capsys):
    d, _, _ = files
    rc = main(["basis", "--corpus", str(d / "data.idx"), "--seq-len", str(T), "--vocab-size", "50", "--top-k", "5",
               "--out", str(tmp_path / "b.safetensors")])
    err = capsys.readouterr().err
    assert rc == 2 and "outside [0, 50)" in err and "item " in err and not (tmp_path / "b.safetensors").exists()
    assert main(["basis", "--corpus", str(d / "data.idx"), "--seq-len", str(T), "--vocab-size", str(V), "--top-k", "5",
                 "--out", str(tmp_path / "b.safetensors")]) == 0
    assert "tokens in item tails" in capsys.readouterr().out


@pytest.mark.slow
def test_sweep_under_torchrun_equals_one_process(tmp_path):
    import pandas as pd
    txt = tmp_path / "c.txt"
    txt.write_text("the bird flew up. the fish swam down. a bird sang.\n" * 30)
    for i, steps in enumerate((1, 3, 5)):
        assert run(["toy-train", "--corpus", txt, "--seq-len", 8, "--layers", 1, "--lr", 0.5, "--steps", steps,
                    "--full-batch", "--seed", 0, "--out", tmp_path / f"t{i}"])[0] == 0
    assert run(["basis", "--corpus", txt, "--seq-len", 8, "--top-k", 10, "--out", tmp_path / "b.safetensors"])[0] == 0
    ckpts = ",".join(f"toy:{tmp_path / f't{i}'}" for i in (0, 1, 2, 0))   # a checkpoint listed twice stays twice
    assert run(["sweep", "--checkpoints", ckpts, "--basis", tmp_path / "b.safetensors", "--out", tmp_path / "one"])[0] == 0
    r = _torchrun(["sweep", "--checkpoints", ckpts, "--basis", tmp_path / "b.safetensors", "--out", tmp_path / "two"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = pd.read_csv(tmp_path / "one" / "analysis.csv"), pd.read_csv(tmp_path / "two" / "analysis.csv")
    pd.testing.assert_frame_equal(a, b)


def test_text_streamed_through_a_token_file_equals_load_corpus(tmp_path):
    """Text is read a document at a time, tokenized in batches into a temporary token file and streamed: the same
    windows, basis and fingerprint as the in-memory corpus, and the temporary file is gone with the stream."""
    from tl_leadterm import load_corpus
    from tl_leadterm.corpus.streams import open_text_stream
    txt = tmp_path / "c.txt"
    txt.write_text("\n<|endoftext|>\n".join(f"story {i}: the bird flew. naïve fish swam {i % 7} times." for i in range(400)))
    mem = load_corpus(txt, seq_len=12)
    s = open_text_stream(txt, seq_len=12, chunk_windows=37, workdir=tmp_path)
    assert torch.equal(torch.cat([w.tokens for w in s]), mem.tokens)
    a, b = compute_basis(mem, top_k=20, progress=False), compute_basis(s, top_k=20, progress=False)
    assert rel_err(b, a) <= 1e-12 and a.corpus_fingerprint == b.corpus_fingerprint
    tmpdir = Path(s._tmp.name)
    assert tmpdir.is_dir()
    del s
    import gc
    gc.collect()
    assert not tmpdir.exists()


def test_stream_chunks_never_exceed_chunk_windows(files):
    d, items, _ = files
    s = open_stream(d / "data.idx", seq_len=T, vocab_size=V, chunk_windows=4)
    sizes = [w.n_windows for w in s]
    assert max(sizes) == 4 and sum(sizes) == s.n_windows and all(n == 4 for n in sizes[:-1])
