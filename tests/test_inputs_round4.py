"""Round 4 of bad input (issue 18, the auditor's remaining failures): one rule for every input path (a device or
special file is named as such), basis and shard files sealed (every metadata field validated and covered by a
digest), round 2 of a sharded run checks its options against round 1, options that do not apply to a source are
refused, local dataset failures print one line, torchrun variables are named, argparse errors are one line, and
U+FEFF inside a text is no token.  Table-driven, CLI and Python API alike: exit 2, one ``error:`` line that is the
last line, no traceback, inputs untouched."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tl_leadterm import LeadTermError, load_corpus
from tl_leadterm.basis import Basis
from tl_leadterm.basis.shards import load_pass2_input, merge_pass1, shard_pass2
from tl_leadterm.corpus.documents import read_documents
from tl_leadterm.corpus.streams import open_stream
from tl_leadterm.models import load_model, save_random_pythia
from tl_leadterm.monitor import read_records
from tl_leadterm.tensorfiles import SEAL, load_safetensors, metadata_digest, save_safetensors_atomic, tensor_digests
from tl_leadterm.tokenization import resolve_tokenizer, words_of

from test_inputs_round3 import IDS, N, S1, T, V, api_error, one_line_error, run, ws  # noqa: F401  (the workspace)

NULL = "/dev/null"


def snapshot(d: Path) -> dict:
    return {str(p): p.read_bytes() if p.is_file() else None for p in sorted(Path(d).rglob("*"))}


# ---------------------------------------------------------------------------
# one rule for every input path: a device or special file is named as such
# ---------------------------------------------------------------------------
CLI_PATHS = [
    ("basis --corpus", lambda w, o: ["basis", "--corpus", NULL, "--seq-len", 8, "--top-k", 3, "--out", o / "b.safetensors"]),
    ("basis --token-ids", lambda w, o: ["basis", "--corpus", w / "c.txt", "--seq-len", 8, "--token-ids", NULL, "--out", o / "b.safetensors"]),
    ("basis --tokenizer", lambda w, o: ["basis", "--corpus", w / "c.txt", "--seq-len", 8, "--tokenizer", NULL, "--top-k", 3,
                                        "--out", o / "b.safetensors"]),
    ("basis --pass2", lambda w, o: ["basis", "--corpus", w / "data.idx", "--seq-len", T, "--vocab-size", V, "--token-ids",
                                    w / "ids.json", "--mode", "merge-other", "--shard", "0/3", "--pass2", NULL, "--stats-out",
                                    o / "s.safetensors"]),
    ("analyze --basis", lambda w, o: ["analyze", "--model", "toy:" + str(w / "run"), "--basis", NULL, "--out", o / "a"]),
    ("analyze --heldout", lambda w, o: ["analyze", "--model", "toy:" + str(w / "run"), "--basis", w / "b.safetensors",
                                        "--heldout", NULL, "--out", o / "a"]),
    ("merge --stats", lambda w, o: ["merge", "--stats", NULL, "--out", o / "g.safetensors"]),
    ("merge --pass2", lambda w, o: ["merge", "--pass2", NULL, "--stats", *(w / s for s in S1), "--out", o / "g.safetensors"]),
    ("toy-train --corpus", lambda w, o: ["toy-train", "--corpus", NULL, "--seq-len", 8, "--layers", 1, "--lr", 0.1, "--steps", 1,
                                         "--full-batch", "--seed", 0, "--out", o / "t"]),
    ("report --basis", lambda w, o: ["report", "--results", w, "--out", o / "r.html", "--basis", NULL, "--tokens", "bird"]),
    ("analyze --model toy:", lambda w, o: ["analyze", "--model", "toy:" + NULL, "--basis", w / "b.safetensors", "--out", o / "a"]),
    ("analyze --model", lambda w, o: ["analyze", "--model", NULL, "--basis", w / "b.safetensors", "--out", o / "a"]),
    ("demo --pythia-tokenizer", lambda w, o: ["demo", "--out", o / "d", "--pythia-tokenizer", NULL]),
]


@pytest.fixture(scope="module")
def toy_run(ws):
    if not (ws / "run" / "toy.safetensors").exists():
        assert run(["toy-train", "--corpus", ws / "c.txt", "--seq-len", 8, "--layers", 1, "--lr", 0.1, "--steps", 1,
                    "--full-batch", "--seed", 0, "--out", ws / "run"])[0] == 0
    return ws


@pytest.mark.parametrize("name,argv", CLI_PATHS, ids=[c[0] for c in CLI_PATHS])
def test_a_device_file_as_input_is_named_cli(toy_run, tmp_path, name, argv):
    before = snapshot(tmp_path)
    one_line_error(argv(toy_run, tmp_path), "device or special file")
    assert snapshot(tmp_path) == before


API_PATHS = [
    ("load_corpus", lambda w, p: load_corpus(p, seq_len=8)),
    ("read_documents", lambda w, p: read_documents(p)),
    ("open_stream", lambda w, p: open_stream(p, seq_len=8, vocab_size=V)),
    ("Basis.load", lambda w, p: Basis.load(p)),
    ("load_pass2_input", lambda w, p: load_pass2_input(p)),
    ("merge_pass1", lambda w, p: merge_pass1([p], w / "never.safetensors")),
    ("resolve_tokenizer", lambda w, p: resolve_tokenizer(p)),
    ("load_model toy:", lambda w, p: load_model(f"toy:{p}")),
    ("load_model", lambda w, p: load_model(str(p))),
    ("read_records", lambda w, p: read_records(p)),
    ("save_random_pythia tokenizer", lambda w, p: save_random_pythia(w / "never_model", p)),
]


@pytest.mark.parametrize("kind", ["device", "fifo"])
@pytest.mark.parametrize("name,call", API_PATHS, ids=[c[0] for c in API_PATHS])
def test_a_device_file_as_input_is_named_api(ws, tmp_path, name, call, kind):
    p = NULL
    if kind == "fifo":
        p = tmp_path / "pipe"
        os.mkfifo(p)
    api_error(lambda: call(ws, p), "device or special file")
    assert not (ws / "never.safetensors").exists()


def test_the_input_rule_names_folders_and_broken_links(ws, tmp_path):
    from tl_leadterm.io import input_path

    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    api_error(lambda: input_path(tmp_path, "basis file"), "is a folder, not a file")
    api_error(lambda: input_path(tmp_path / "gone", "basis file"), "broken symbolic link")
    api_error(lambda: input_path(tmp_path / "absent", "basis file"), "not found")
    assert input_path(tmp_path, "corpus", folder=True) == tmp_path
    api_error(lambda: Basis.load(tmp_path / "gone"), "broken symbolic link")


# ---------------------------------------------------------------------------
# sealed files: every metadata field validated and covered by the digest
# ---------------------------------------------------------------------------
def _edit(src, dst, meta=(), drop=(), reseal=False):
    t, m = load_safetensors(src, "f")
    m.update(dict(meta))
    for k in drop:
        m.pop(k, None)
    if reseal:
        m["tensor_digests"] = tensor_digests(t)
        m[SEAL] = metadata_digest(m)
    save_safetensors_atomic(dst, t, m)
    return dst


BASIS_META = [  # (id, metadata edits, reseal, fragment)
    ("vocab_size edited", {"vocab_size": "61"}, False, "content digest"),
    ("n_positions edited", {"n_positions": "7"}, False, "content digest"),
    ("mode edited", {"mode": "merge-other"}, False, "content digest"),
    ("package_version <script>", {"package_version": "<script>"}, False, "content digest"),
    ("field added", {"note": "x"}, False, "unknown metadata"),
    ("resealed package_version <script>", {"package_version": "<script>"}, True, "package_version"),
    ("resealed corpus_source with a newline", {"corpus_source": "a\nb"}, True, "corpus_source"),
    ("resealed fingerprint junk", {"corpus_fingerprint": "zz"}, True, "corpus_fingerprint"),
    ("resealed dtype lie", {"dtype": "float32"}, True, "metadata 'dtype'"),
    ("resealed vocab_size '+61'", {"vocab_size": "+61"}, True, "whole numbers"),
    ("resealed unknown key", {"note": "x"}, True, "unknown metadata"),
]


@pytest.mark.parametrize("name,meta,reseal,fragment", BASIS_META, ids=[c[0] for c in BASIS_META])
def test_basis_metadata_is_sealed_and_validated(ws, tmp_path, name, meta, reseal, fragment):
    f = _edit(ws / "b.safetensors", tmp_path / "b.safetensors", meta, reseal=reseal)
    api_error(lambda: Basis.load(f), fragment)
    one_line_error(["analyze", "--model", "toy:x", "--basis", f, "--out", tmp_path / "a"], fragment)


def test_digests_removed_from_a_current_file_and_tensors_swapped_is_refused(ws, tmp_path):
    t, m = load_safetensors(ws / "b.safetensors", "f")
    t["bigram"], t["context"] = t["context"], t["bigram"]
    m.pop("tensor_digests"), m.pop(SEAL)
    save_safetensors_atomic(tmp_path / "s.safetensors", t, m)
    api_error(lambda: Basis.load(tmp_path / "s.safetensors"), "records no content digest")


SHARD_META = [
    ("package_version <script>", {"package_version": "<script>"}, False, "content digest"),
    ("resealed package_version <script>", {"package_version": "<script>"}, True, "package_version"),
    ("resealed corpus_source control", {"corpus_source": "x\x1b[2J"}, True, "corpus_source"),
    ("resealed tokenizer junk", {"tokenizer": "{junk"}, True, "tokenizer"),
    ("resealed unknown key", {"extra": "1"}, True, "unknown metadata"),
    ("digests removed", {}, None, "no content digest"),
]


@pytest.mark.parametrize("name,meta,reseal,fragment", SHARD_META, ids=[c[0] for c in SHARD_META])
def test_shard_metadata_is_sealed_and_validated(ws, tmp_path, name, meta, reseal, fragment):
    files = [tmp_path / s for s in S1]
    for s in S1[1:]:
        (tmp_path / s).write_bytes((ws / s).read_bytes())
    _edit(ws / S1[0], files[0], meta, drop=(SEAL, "tensor_digests") if reseal is None else (), reseal=bool(reseal))
    api_error(lambda: merge_pass1(files, tmp_path / "g.safetensors"), fragment)
    one_line_error(["merge", "--stats", *files, "--out", tmp_path / "g.safetensors"], fragment)
    assert not (tmp_path / "g.safetensors").exists()


# ---------------------------------------------------------------------------
# round 2 checks its options against round 1; options that do not apply are refused
# ---------------------------------------------------------------------------
ROUND2 = [
    ("--mode exact", ["--mode", "exact", "--token-ids", "IDS"], {"mode": "exact"}, "mode"),
    ("--dtype float32", ["--mode", "merge-other", "--dtype", "float32", "--token-ids", "IDS"], {"mode": "merge-other", "dtype": torch.float32}, "dtype"),
    ("token ids reversed", ["--mode", "merge-other", "--token-ids", "REV"], {"token_ids": IDS[::-1]}, "token_ids"),
]


@pytest.mark.parametrize("name,flags,kw,fragment", ROUND2, ids=[c[0] for c in ROUND2])
def test_round_two_options_must_be_round_ones(ws, tmp_path, name, flags, kw, fragment):
    (tmp_path / "rev.json").write_text(json.dumps(IDS[::-1]))
    flags = [tmp_path / "rev.json" if f == "REV" else ws / "ids.json" if f == "IDS" else f for f in flags]
    stream = open_stream(ws / "data.idx", seq_len=T, vocab_size=V)
    api_error(lambda: shard_pass2(stream, ws / "g.safetensors", (0, N), tmp_path / "s.safetensors", **kw), fragment)
    one_line_error(["basis", "--corpus", ws / "data.idx", "--seq-len", T, "--vocab-size", V, "--shard", f"0/{N}",
                    "--pass2", ws / "g.safetensors", *flags, "--stats-out", tmp_path / "s.safetensors"], fragment.replace("_", "-"))
    assert not (tmp_path / "s.safetensors").exists()


NOT_APPLYING = [  # (id, source, CLI flags, load_corpus kwargs, fragment)
    ("token file --encoding", "data.idx", ["--vocab-size", V, "--encoding", "latin-1"], {"vocab_size": V, "encoding": "latin-1"}, "encoding"),
    ("token file --word-min-count", "data.idx", ["--vocab-size", V, "--word-min-count", 3], {"vocab_size": V, "word_min_count": 3}, "word-min-count"),
    ("token file --word-vocab-size", "data.idx", ["--vocab-size", V, "--word-vocab-size", 5], {"vocab_size": V, "word_vocab_size": 5}, "word-vocab-size"),
    ("indexed --token-dtype", "data.idx", ["--vocab-size", V, "--token-dtype", "uint32"], {"vocab_size": V, "token_dtype": "uint32"}, "token-dtype"),
    ("text --text-column", "c.txt", ["--text-column", "body"], {"text_column": "body"}, "text-column"),
    ("text --split", "c.txt", ["--split", "test"], {"split": "test"}, "split"),
    ("builtin --encoding", "builtin:stories", ["--encoding", "latin-1"], {"encoding": "latin-1"}, "encoding"),
]


@pytest.mark.parametrize("name,src,flags,kw,fragment", NOT_APPLYING, ids=[c[0] for c in NOT_APPLYING])
def test_options_that_do_not_apply_are_refused(ws, tmp_path, name, src, flags, kw, fragment):
    source = src if ":" in src else ws / src
    one_line_error(["basis", "--corpus", source, "--seq-len", T, *flags, "--top-k", 3, "--out", tmp_path / "o.safetensors"],
                   "--" + fragment)
    api_error(lambda: load_corpus(source, seq_len=T, **kw), fragment.replace("-", "_"))
    assert not (tmp_path / "o.safetensors").exists()


def test_utf8_spelled_otherwise_is_no_encoding_option(ws):
    load_corpus(ws / "data.idx", seq_len=T, vocab_size=V, encoding="UTF_8")     # the default, spelled otherwise


# ---------------------------------------------------------------------------
# local dataset files: exactly one stderr line (the library's own log is quiet)
# ---------------------------------------------------------------------------
DATASETS = [("bad.jsonl", b'{"text": "a"}\n{not json\n'), ("bad.parquet", b"PAR1 this is not parquet"), ("empty.jsonl", b"")]


@pytest.mark.parametrize("name,data", DATASETS, ids=[d[0] for d in DATASETS])
def test_a_bad_local_dataset_prints_one_line(tmp_path, name, data):
    (tmp_path / name).write_bytes(data)
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    p = subprocess.run([sys.executable, "-m", "tl_leadterm.cli", "basis", "--corpus", str(tmp_path / name), "--seq-len", "8",
                        "--top-k", "3", "--out", str(tmp_path / "o.safetensors")], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=300)
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and name in lines[0], p.stderr
    assert "StopIteration" not in lines[0] and "network" not in lines[0]
    assert sorted(x.name for x in tmp_path.iterdir()) == [name]


# ---------------------------------------------------------------------------
# devices, torchrun variables, argparse
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("device", ["meta", torch.device("meta"), "tpu"])
def test_basis_to_takes_the_devices_load_takes(ws, device):
    b = Basis.load(ws / "b.safetensors")
    api_error(lambda: b.to(device=device), "device")
    api_error(lambda: Basis.load(ws / "b.safetensors", device=device), "device")
    assert b.to(device="cpu").bigram.device.type == "cpu"


ENV = [("LOCAL_RANK=x", {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "x"}, "LOCAL_RANK"),
       ("LOCAL_RANK=-1", {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "-1"}, "LOCAL_RANK")]


@pytest.mark.parametrize("name,env,fragment", ENV, ids=[e[0] for e in ENV])
def test_torchrun_variables_are_named(ws, tmp_path, monkeypatch, name, env, fragment):
    one_line_error(["basis", "--corpus", ws / "c.txt", "--seq-len", 8, "--top-k", 3, "--out", tmp_path / "o.safetensors"],
                   fragment, env=env)
    from tl_leadterm.basis.distributed import world
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    api_error(world, fragment)


ARGPARSE = [("--seq-len ²", ["basis", "--corpus", "c.txt", "--seq-len", "²", "--top-k", 3, "--out", "o.safetensors"], "--seq-len"),
            ("unknown command", ["nope"], "invalid choice"),
            ("missing --out", ["merge", "--stats", "a"], "--out"),
            ("unknown flag", ["report", "--results", ".", "--out", "r.html", "--bogus"], "--bogus"),
            ("no command", [], "give a command")]


@pytest.mark.parametrize("name,argv,fragment", ARGPARSE, ids=[a[0] for a in ARGPARSE])
def test_argument_errors_are_one_line_without_usage(name, argv, fragment, capsys):
    from tl_leadterm.cli import main

    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "usage" not in err, err
    assert fragment in lines[0] and "--help" in lines[0]


# ---------------------------------------------------------------------------
# U+FEFF inside a text: an invisible joiner, no token (decided: removed by the word tokenizer, like U+2060)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("text,words", [("the bird\ufeff flew", ["the", "bird", "flew"]),
                                        ("fl\ufeffew", ["flew"]), ("fl\u2060ew", ["flew"]), ("\ufeff", [])])
def test_zero_width_joiners_are_no_tokens(tmp_path, text, words):
    assert words_of(text) == words
    (tmp_path / "z.txt").write_text((text + " x.\n") * 3)
    w = load_corpus(tmp_path / "z.txt", seq_len=2)
    assert not any("\ufeff" in t or "\u2060" in t for t in w.tokenizer.words)
    hf = w.tokenizer.to_hf()                                   # the Hugging Face twin agrees
    assert hf(text + " x.")["input_ids"] == w.tokenizer.encode(text + " x.")
