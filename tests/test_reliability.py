"""Nothing lost, nothing silently wrong: a table of bad inputs for every command and the Python API (one line,
exit 2, nothing written, inputs unchanged), failed runs that leave their folder as it was, identical bytes from
identical runs, SIGTERM and stale temporary files."""

import contextlib
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tl_leadterm import LeadTermError
from tl_leadterm.cli import main

ROOT = Path(__file__).resolve().parents[1]
TEXT = "the bird flew up. the fish swam down. a bird sang.\n<|endoftext|>\nthe car drove by. the bus drove on.\n" * 20


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` with its bytes' hash (hidden ones included): what 'unchanged' means."""
    out = {}
    for p in sorted(folder.rglob("*")):
        out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def run(argv) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main([str(a) for a in argv])
    return rc, err.getvalue()


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A workspace of inputs: good and bad corpora, a basis, a trained toy run, results folders."""
    d = tmp_path_factory.mktemp("ws")
    (d / "c.txt").write_text(TEXT)
    (d / "img.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    (d / "latin1.txt").write_bytes("caf\xe9 na\xefve bird flew\n".encode("latin-1") * 30)
    (d / "emptydir").mkdir()
    (d / "nontext").mkdir()
    (d / "nontext" / "a.md").write_text("not a txt file")
    (d / "dirout.safetensors").mkdir()
    np.save(d / "ok.npy", np.arange(40).reshape(4, 10) % 7)
    assert run(["basis", "--corpus", d / "c.txt", "--seq-len", 8, "--top-k", 10, "--out", d / "b.safetensors"])[0] == 0
    assert run(["toy-train", "--corpus", d / "c.txt", "--seq-len", 8, "--layers", 1, "--lr", 0.5, "--steps", 3,
                "--batch-size", 4, "--seed", 0, "--log-every", 1, "--out", d / "run"])[0] == 0
    (d / "other.txt").write_text("completely different words here now.\n" * 40)
    assert run(["basis", "--corpus", d / "other.txt", "--seq-len", 8, "--top-k", 5, "--out", d / "other.safetensors"])[0] == 0
    res = d / "badres"
    res.mkdir()
    (res / "analysis.csv").write_text("checkpoint,layer,head,site,measure,value,target,detail,extension\n"
                                      "s,0,,W,explained,lots,,,False\n")
    mres = d / "badmon"
    mres.mkdir()
    (mres / "monitor.jsonl").write_text(json.dumps({"step": "two", "similarity": {}}) + "\n")
    return d


S = ["--seq-len", 8, "--top-k", 5]
CASES = [
    # (id, argv (w = workspace), message fragment)
    ("max-docs negative", lambda w: ["basis", "--corpus", w / "c.txt", *S, "--max-docs", -5, "--out", w / "o.safetensors"],
     "--max-docs must be a positive integer"),
    ("max-docs zero", lambda w: ["basis", "--corpus", w / "c.txt", *S, "--max-docs", 0, "--out", w / "o.safetensors"],
     "--max-docs must be a positive integer"),
    ("top-k zero", lambda w: ["basis", "--corpus", w / "c.txt", "--seq-len", 8, "--top-k", 0, "--out", w / "o.safetensors"],
     "--top-k must be a positive integer"),
    ("word-min-count zero", lambda w: ["basis", "--corpus", w / "c.txt", *S, "--word-min-count", 0, "--out", w / "o.safetensors"],
     "--word-min-count must be an integer >= 1"),
    ("word-vocab-size 2", lambda w: ["basis", "--corpus", w / "c.txt", *S, "--word-vocab-size", 2, "--out", w / "o.safetensors"],
     "--word-vocab-size must be an integer >= 3"),
    ("vocab-size 10**12", lambda w: ["basis", "--corpus", w / "ok.npy", "--seq-len", 9, "--top-k", 3, "--vocab-size", 10**12,
                                     "--out", w / "o.safetensors"], "--vocab-size must be an integer >= 2 and <= 2,147,483,647"),
    ("seq-len too long for memory", lambda w: ["basis", "--corpus", "builtin:stories", "--seq-len", 50000, "--top-k", 5,
                                               "--out", w / "o.safetensors"], "or less"),
    ("pack cut seq-len 10**7", lambda w: ["basis", "--corpus", w / "c.txt", "--pack", "cut", "--seq-len", 10**7, "--top-k", 5,
                                          "--out", w / "o.safetensors"], "--seq-len"),
    ("toy-train seq-len too long", lambda w: ["toy-train", "--corpus", "builtin:stories", "--pack", "cut", "--seq-len", 10**7,
                                              "--layers", 1, "--lr", 0.1, "--steps", 1, "--full-batch", "--seed", 0,
                                              "--out", w / "t"], "--seq-len"),
    ("out is the input", lambda w: ["basis", "--corpus", w / "b.safetensors", *S, "--out", w / "b.safetensors"],
     "is the input"),
    ("out is a folder", lambda w: ["basis", "--corpus", w / "c.txt", *S, "--out", w / "dirout.safetensors"], "it is a folder"),
    ("binary corpus", lambda w: ["basis", "--corpus", w / "img.png", *S, "--out", w / "o.safetensors"], "is not text"),
    ("not utf-8", lambda w: ["basis", "--corpus", w / "latin1.txt", *S, "--out", w / "o.safetensors"], "is not valid utf-8 text"),
    ("unknown encoding", lambda w: ["basis", "--corpus", w / "c.txt", *S, "--encoding", "klingon", "--out", w / "o.safetensors"],
     "unknown --encoding"),
    ("empty folder", lambda w: ["basis", "--corpus", w / "emptydir", *S, "--out", w / "o.safetensors"], "has no .txt files"),
    ("folder without txt", lambda w: ["basis", "--corpus", w / "nontext", *S, "--out", w / "o.safetensors"], "has no .txt files"),
    ("cuda without cuda", lambda w: ["basis", "--corpus", w / "c.txt", *S, "--device", "cuda", "--out", w / "o.safetensors"],
     "CUDA is not available") if not torch.cuda.is_available() else None,
    ("toy-train steps -1", lambda w: ["toy-train", "--corpus", w / "c.txt", "--seq-len", 8, "--layers", 1, "--lr", 0.1,
                                      "--steps", -1, "--full-batch", "--seed", 0, "--out", w / "t"], "--steps must be >= 0"),
    ("toy-train out is the input", lambda w: ["toy-train", "--corpus", w / "run" / "train.json", "--seq-len", 8, "--layers", 1,
                                              "--lr", 0.1, "--steps", 1, "--full-batch", "--seed", 0, "--out", w / "run"],
     "is the input"),
    ("toy-train diverges into a good run", lambda w: ["toy-train", "--corpus", w / "c.txt", "--seq-len", 8, "--layers", 1,
                                                      "--lr", 1e50, "--steps", 5, "--batch-size", 4, "--seed", 0,
                                                      "--log-every", 1, "--out", w / "run"], "use a smaller --lr"),
    ("analyze missing heldout", lambda w: ["analyze", "--model", f"toy:{w / 'run'}", "--basis", w / "b.safetensors",
                                           "--heldout", w / "missing.txt", "--out", w / "an"], "not found"),
    ("analyze basis of another corpus", lambda w: ["analyze", "--model", f"toy:{w / 'run'}", "--basis", w / "other.safetensors",
                                                   "--out", w / "an"], "tokenizer"),
    ("analyze into its own basis folder", lambda w: ["analyze", "--model", f"toy:{w / 'run'}", "--basis", w / "run" / "train.json",
                                                     "--out", w / "an"], "not a readable basis file"),
    ("sweep unknown revision", lambda w: ["sweep", "--model", "EleutherAI/pythia-70m", "--checkpoints", "step3",
                                          "--basis", w / "b.safetensors", "--out", w / "sw"], "unknown checkpoint"),
    ("sweep a folder that is no model", lambda w: ["sweep", "--checkpoints", f"toy:{w / 'run'},{w / 'emptydir'}",
                                                   "--basis", w / "b.safetensors", "--out", w / "sw"], "config.json"),
    ("demo explicit broken pythia tokenizer", lambda w: ["demo", "--out", w / "dm", "--steps", 2, "--seq-len", 8, "--neox-steps", 1,
                                                         "--pythia-tokenizer", w / "img.png"], "tokenizer"),
    ("demo unknown explorer token", lambda w: ["demo", "--out", w / "dm", "--steps", 2, "--tokens", "zebra", "--no-pythia",
                                               "--neox-steps", 0], "'zebra' is not one of the basis"),
    ("demo neox-steps negative", lambda w: ["demo", "--out", w / "dm", "--neox-steps", -1], "--neox-steps must be >= 0"),
    ("report bad column type", lambda w: ["report", "--results", w / "badres", "--out", w / "r.html"],
     "column 'value' holds a non-number"),
    ("report bad monitor record", lambda w: ["report", "--results", w / "badmon", "--out", w / "r.html"], "no integer 'step'"),
    ("report tokens without basis", lambda w: ["report", "--results", w / "run", "--out", w / "run" / "r.html",
                                               "--tokens", "bird"], "--tokens needs --basis"),
    ("report model of another tokenizer", lambda w: ["report", "--results", w / "run", "--out", w / "run" / "r.html",
                                                     "--model", f"toy:{w / 'run'}", "--basis", w / "other.safetensors",
                                                     "--text", "the bird"], "tokenizer"),
]
CASES = [c for c in CASES if c is not None]


@pytest.mark.parametrize("name,argv,fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_cli_input(ws, name, argv, fragment):
    before = snapshot(ws)
    rc, err = run(argv(ws))
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: ") and fragment in lines[-1], err
    assert all(not l.startswith("error:") for l in lines[:-1])
    assert "Traceback" not in err
    assert snapshot(ws) == before                                  # nothing written, nothing moved, inputs unchanged


def _api_cases(ws):
    from tl_leadterm import compute_basis, load_corpus, windows_from_tokens
    from tl_leadterm.analysis import analyze_model, causal_check
    from tl_leadterm.basis import Basis
    from tl_leadterm.models import load_model
    from tl_leadterm.monitor import TrainingMonitor
    from tl_leadterm.toy import ToyConfig, ToyTransformer, train_toy

    w = load_corpus(ws / "c.txt", seq_len=8)
    toy = ToyTransformer(ToyConfig(w.vocab_size, 8, 1), tokenizer=w.tokenizer)
    return [
        ("float16 basis", lambda: compute_basis(w, top_k=5, dtype=torch.float16), "dtype must be torch.float64"),
        ("basis of a string", lambda: compute_basis("windows", top_k=5), "expected token windows"),
        ("top_k bool", lambda: compute_basis(w, top_k=True), "top_k must be a positive integer"),
        ("max_docs negative", lambda: load_corpus(ws / "c.txt", seq_len=8, max_docs=-5), "max_docs must be a positive integer"),
        ("seq_len a string", lambda: load_corpus(ws / "c.txt", seq_len="8"), "seq_len must be an integer"),
        ("float16 toy", lambda: ToyTransformer(ToyConfig(10, 8, 1, dtype=torch.float16)), "dtype must be"),
        ("infinite lr", lambda: train_toy(toy, w, lr=float("inf"), steps=1, progress=False), "lr must be a positive number"),
        ("steps a float", lambda: train_toy(toy, w, lr=0.1, steps=1.5, progress=False), "steps must be an integer"),
        ("monitor with another corpus' basis", lambda: TrainingMonitor(toy, Basis.load(ws / "other.safetensors")), "tokenizer"),
        ("analysis top negative", lambda: analyze_model(toy, Basis.load(ws / "b.safetensors"), top=-1), "top must be an integer >= 0"),
        ("causal seeds 0", lambda: causal_check(toy, Basis.load(ws / "b.safetensors"), w, seeds=0), "seeds must be >= 1"),
        ("save a float16 basis", lambda: Basis.load(ws / "b.safetensors").to(dtype=torch.float16).save(ws / "h.safetensors"),
         "float64 or float32"),
        ("windows over 2**31 ids", lambda: windows_from_tokens(torch.zeros(2, 5, dtype=torch.long), 2**40), "vocab_size must be"),
    ] + ([("load_model on cuda", lambda: load_model(f"toy:{ws / 'run'}", device="cuda"), "CUDA is not available")]
         if not torch.cuda.is_available() else [])


def test_bad_python_api_input(ws):
    before = snapshot(ws)
    for name, call, fragment in _api_cases(ws):
        with pytest.raises(LeadTermError) as e:
            call()
        msg = str(e.value)
        assert fragment in msg and "\n" not in msg and "--" not in msg.split(";")[0], (name, msg)
    assert snapshot(ws) == before


def test_tampered_word_list_is_refused(ws, tmp_path):
    from safetensors import safe_open

    from tl_leadterm.basis import Basis
    from tl_leadterm.tensorfiles import save_safetensors_atomic, seal
    with safe_open(str(ws / "b.safetensors"), "pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    rec = json.loads(meta["tokenizer"])
    rec["words"][2], rec["words"][3] = rec["words"][3], rec["words"][2]        # swap two labels
    meta["tokenizer"] = json.dumps(rec)
    save_safetensors_atomic(tmp_path / "t.safetensors", tensors, seal(tensors, meta))   # re-sealed: the word list's own check
    with pytest.raises(LeadTermError, match="does not match its recorded fingerprint"):
        Basis.load(tmp_path / "t.safetensors")


def test_hf_basis_embeds_its_tokenizer(shared_data, tmp_path):
    """A basis built with a tokenizer file still decodes its tokens after that file has moved."""
    import shutil

    from tl_leadterm import compute_basis, load_corpus
    from tl_leadterm.basis import Basis
    tok = tmp_path / "tok.json"
    shutil.copy(shared_data / "gpt-neox-20b-tokenizer.json", tok)
    w = load_corpus("builtin:stories", seq_len=8, tokenizer=str(tok), vocab_size=50304)
    b = compute_basis(w, top_k=20, mode="merge-other", progress=False)
    b.save(tmp_path / "b.safetensors")
    strs = b.token_strs()
    tok.unlink()
    assert Basis.load(tmp_path / "b.safetensors").token_strs() == strs and " the" in strs


# ---------------------------------------------------------------------------
# failed runs leave their folder as it was
# ---------------------------------------------------------------------------
def test_failed_toy_train_keeps_the_earlier_run(ws):
    before = snapshot(ws / "run")
    rc, _ = run(["toy-train", "--corpus", ws / "c.txt", "--seq-len", 8, "--layers", 1, "--lr", 1e50, "--steps", 5,
                 "--batch-size", 4, "--seed", 0, "--log-every", 1, "--out", ws / "run"])
    assert rc == 2 and snapshot(ws / "run") == before
    assert not [p for p in ws.iterdir() if p.name.startswith(".run.")]           # no staging folder left


def test_failed_analyze_and_sweep_leave_nothing(ws):
    for argv in (["analyze", "--model", f"toy:{ws / 'run'}", "--basis", ws / "b.safetensors", "--heldout", ws / "nope.txt",
                  "--out", ws / "newan"],
                 ["sweep", "--checkpoints", f"toy:{ws / 'run'},toy:{ws / 'emptydir'}", "--basis", ws / "b.safetensors",
                  "--out", ws / "newsw"]):
        rc, _ = run(argv)
        assert rc == 2
    assert not (ws / "newan").exists() and not (ws / "newsw").exists()           # no empty output folders either


def test_failed_demo_keeps_the_earlier_demo(tmp_path):
    out = tmp_path / "demo"
    assert run(["demo", "--out", out, "--steps", 2, "--seq-len", 8, "--neox-steps", 1, "--no-pythia"])[0] == 0
    before = snapshot(out)
    rc, err = run(["demo", "--out", out, "--steps", 3, "--seq-len", 8, "--neox-steps", 1, "--tokens", "zebra", "--no-pythia"])
    assert rc == 2 and snapshot(out) == before


def test_a_new_run_replaces_every_file_of_the_old_one(ws, tmp_path):
    """analyze with --heldout writes causal.csv; the next analyze without it must not leave that old file behind."""
    out = tmp_path / "an"
    held = ws / "c.txt"
    assert run(["analyze", "--model", f"toy:{ws / 'run'}", "--basis", ws / "b.safetensors", "--heldout", held,
                "--seeds", 1, "--out", out])[0] == 0
    assert (out / "causal.csv").is_file()
    (out / "my_notes.txt").write_text("mine")
    assert run(["analyze", "--model", f"toy:{ws / 'run'}", "--basis", ws / "b.safetensors", "--out", out])[0] == 0
    assert not (out / "causal.csv").exists() and (out / "analysis.csv").is_file()
    assert (out / "my_notes.txt").read_text() == "mine"                          # files that are not ours stay


# ---------------------------------------------------------------------------
# same inputs, same bytes
# ---------------------------------------------------------------------------
def test_identical_runs_write_identical_bytes(ws, tmp_path):
    for i in (1, 2):
        assert run(["basis", "--corpus", ws / "c.txt", *S, "--out", tmp_path / f"b{i}.safetensors"])[0] == 0
        assert run(["toy-train", "--corpus", ws / "c.txt", "--seq-len", 8, "--layers", 2, "--lr", 0.5, "--steps", 4,
                    "--batch-size", 4, "--seed", 0, "--log-every", 1, "--out", tmp_path / f"t{i}"])[0] == 0
        assert run(["analyze", "--model", f"toy:{tmp_path / f't{i}'}", "--basis", tmp_path / f"b{i}.safetensors",
                    "--out", tmp_path / f"a{i}"])[0] == 0
        assert run(["demo", "--out", tmp_path / f"d{i}", "--steps", 2, "--seq-len", 8, "--neox-steps", 2, "--no-pythia"])[0] == 0
    assert (tmp_path / "b1.safetensors").read_bytes() == (tmp_path / "b2.safetensors").read_bytes()
    for a, b in (("t1", "t2"), ("a1", "a2"), ("d1", "d2")):
        sa, sb = snapshot(tmp_path / a), snapshot(tmp_path / b)
        assert sa == sb, sorted(k for k in sa if sa.get(k) != sb.get(k))
    assert len(snapshot(tmp_path / "d1")) > 15


# ---------------------------------------------------------------------------
# signals and stale temporary files
# ---------------------------------------------------------------------------
def test_sigterm_cleans_up_and_leaves_no_output(tmp_path):
    out = tmp_path / "demo"
    env = {**os.environ, "TQDM_DISABLE": "1"}
    cmd = [sys.executable, "-m", "tl_leadterm.cli", "demo", "--out", str(out), "--steps", "400", "--seq-len", "8",
           "--neox-steps", "0", "--no-pythia"]
    p = subprocess.Popen(cmd, cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 60
    while time.time() < deadline and not any(q.name.startswith(".demo.") for q in tmp_path.iterdir()):
        time.sleep(0.05)
    assert any(q.name.startswith(".demo.") for q in tmp_path.iterdir()), "the demo never started staging"
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 143 and err.strip().splitlines()[-1].startswith("error: terminated")
    assert not out.exists() and not [q for q in tmp_path.iterdir() if q.name.startswith(".demo.")]


def test_stale_temporary_files_of_dead_processes_are_removed(ws, tmp_path):
    stale = tmp_path / ".b.safetensors.999999999.deadbeef.tmp"
    stale.write_bytes(b"half a file")
    stage = tmp_path / ".t.999999999.cafebabe.staging"
    stage.mkdir()
    assert run(["basis", "--corpus", ws / "c.txt", *S, "--out", tmp_path / "b.safetensors"])[0] == 0
    assert run(["toy-train", "--corpus", ws / "c.txt", "--seq-len", 8, "--layers", 1, "--lr", 0.5, "--steps", 1,
                "--full-batch", "--seed", 0, "--out", tmp_path / "t"])[0] == 0
    assert not stale.exists() and not stage.exists()


def test_a_commit_that_fails_midway_puts_the_old_folder_back(tmp_path, monkeypatch):
    """If moving the new files in fails halfway, the old files come back: the folder is exactly as it was."""
    from tl_leadterm import io as tio
    out = tmp_path / "res"
    out.mkdir()
    for name in ("analysis.csv", "analysis.json", "head_ranking.csv"):
        (out / name).write_text(f"old {name}")
    before = snapshot(out)
    real = os.replace

    def flaky(src, dst):
        if Path(dst).name == "head_ranking.csv" and ".staging" in str(src):
            raise PermissionError(13, "Permission denied")
        return real(src, dst)

    monkeypatch.setattr(tio.os, "replace", flaky)
    with pytest.raises(LeadTermError, match="nothing was changed"):
        with tio.staged_dir(out, tio.OWNS["sweep"]) as stage:
            for name in ("analysis.csv", "analysis.json", "head_ranking.csv"):
                (stage / name).write_text(f"new {name}")
    monkeypatch.undo()
    assert snapshot(out) == before and not [p for p in tmp_path.iterdir() if p.name.startswith(".res.")]
