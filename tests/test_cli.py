"""The CLI contract: ``tl-leadterm basis`` and ``tl-leadterm toy-train``, and the autograd check through files."""

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from reference import N, T, V, markov_tokens, fro_cos as cos
from tl_leadterm import Basis, compute_basis, load_corpus
from tl_leadterm.cli import main
from tl_leadterm.toy import ToyTransformer



def run(argv, capsys=None) -> str:
    rc = main([str(a) for a in argv])
    out = capsys.readouterr() if capsys is not None else None
    assert rc == 0, out.err if out else rc
    return out.out if out else ""


@pytest.fixture(scope="module")
def markov_npy(tmp_path_factory):
    path = tmp_path_factory.mktemp("markov") / "markov.npy"
    np.save(path, markov_tokens(V, T, N, seed=3).numpy())
    return path


def test_basis_command_top_k_builtin(tmp_path, capsys):
    out = tmp_path / "sub" / "basis.safetensors"
    printed = run(["basis", "--corpus", "builtin:stories", "--seq-len", 16, "--top-k", 20, "--out", out], capsys)
    assert "k=20" in printed and str(out) in printed
    b = Basis.load(out)
    w = load_corpus("builtin:stories", seq_len=16)
    direct = compute_basis(w, top_k=20, progress=False)
    for name in ("bigram", "context", "interchange", "value", "value_output", "key_query", "position", "token_ids"):
        assert torch.equal(getattr(b, name), getattr(direct, name)), name
    assert b.mode == "exact" and b.tokenizer_identity["kind"] == "words" and b.corpus_fingerprint == w.fingerprint
    assert [p.name for p in out.parent.iterdir()] == ["basis.safetensors"]


def test_basis_command_token_ids_is_the_sub_block(tmp_path, markov_npy):
    ids = [7, 2, 9, 0]
    (tmp_path / "ids.json").write_text(json.dumps(ids))
    common = ["--corpus", markov_npy, "--seq-len", T, "--vocab-size", V]
    run(["basis", *common, "--token-ids", tmp_path / "ids.json", "--out", tmp_path / "sub.safetensors"])
    run(["basis", *common, "--top-k", V, "--out", tmp_path / "full.safetensors"])
    sub, full = Basis.load(tmp_path / "sub.safetensors"), Basis.load(tmp_path / "full.safetensors")
    assert sub.token_ids.tolist() == ids and sorted(full.token_ids.tolist()) == list(range(V))
    ref = full.restrict(ids)
    for name in ("bigram", "context", "interchange", "value", "value_output", "key_query"):
        torch.testing.assert_close(getattr(sub, name), getattr(ref, name), rtol=1e-12, atol=1e-20)
    torch.testing.assert_close(sub.position, full.position)
    assert sub.tokenizer_identity == {} and sub.vocab_size == V and sub.n_positions == N * T


def test_basis_command_hf_tokenizer_large_vocab_merge_other(tmp_path, shared_data, capsys):
    (tmp_path / "c.txt").write_text("Once upon a time, a bird flew in the sky. The fish swam in the pond.\n" * 20)
    out = tmp_path / "b.safetensors"
    run(["basis", "--corpus", tmp_path / "c.txt", "--tokenizer", shared_data / "gpt-neox-20b-tokenizer.json",
         "--vocab-size", 50304, "--seq-len", 16, "--top-k", 8, "--dtype", "float32", "--mode", "merge-other",
         "--out", out], capsys)
    b = Basis.load(out)
    assert b.vocab_size == 50304 and b.k == 8 and b.bigram.dtype == torch.float32
    # the mode is recorded in the file (auto's choice depends on the machine: see test_choose_mode_*)
    assert b.mode == "merge-other"
    assert b.tokenizer_identity["kind"] == "hf" and " the" in b.token_strs()
    # B̄ stays exact on the chosen block: B̄[a, b] = P(x=a, y=b) - P(x=a)/|V| with |V| = 50,304
    w = load_corpus(tmp_path / "c.txt", tokenizer=str(shared_data / "gpt-neox-20b-tokenizer.json"),
                    vocab_size=50304, seq_len=16)
    x, y = w.inputs.reshape(-1), w.targets.reshape(-1)
    ids = b.token_ids.tolist()
    expect = torch.tensor([[float(((x == a) & (y == c)).sum()) - float((x == a).sum()) / 50304 for c in ids]
                           for a in ids]) / w.n_positions
    torch.testing.assert_close(b.bigram.double(), expect.double(), rtol=1e-5, atol=1e-8)


def test_toy_train_full_batch_matches_basis_file(tmp_path, markov_npy, capsys):
    """The autograd check through the two commands' files: every weight vs its leading term."""
    eta, steps = 0.01, 6
    common = ["--corpus", markov_npy, "--seq-len", T, "--vocab-size", V]
    run(["toy-train", *common, "--layers", 2, "--lr", eta, "--steps", steps, "--full-batch", "--dtype", "float64",
         "--seed", 0, "--out", tmp_path / "toy"], capsys)
    run(["basis", *common, "--top-k", V, "--out", tmp_path / "basis.safetensors"], capsys)
    with safe_open(str(tmp_path / "toy" / "toy.safetensors"), framework="pt") as f:
        weights = {k: f.get_tensor(k) for k in f.keys()}
    assert set(weights) == {"W_O", "W.0", "V.0", "P.0", "W.1", "V.1", "P.1"}
    full = Basis.load(tmp_path / "basis.safetensors")
    b = full.restrict(list(range(V)))  # top-k order -> token-id order, the toy model's full-vocabulary order
    for name, w in weights.items():
        lead = b.leading_term(name, steps, eta)
        assert cos(w, lead) >= 0.9999, name
        assert float((w - lead).norm() / lead.norm()) <= 1e-2, name
    # W is query x key: the transposed key-query term is clearly worse
    assert cos(weights["W.0"], b.key_query.T) < 0.99
    train = json.loads((tmp_path / "toy" / "train.json").read_text())
    assert len(train["losses"]) == steps and train["losses"][-1] < train["losses"][0]


def test_toy_train_text_corpus_full_batch(tmp_path, capsys):
    """Same check on text (the embedded corpus, word tokenizer, |V| = 86)."""
    eta, steps = 0.02, 4
    common = ["--corpus", "builtin:stories", "--seq-len", 8, "--max-docs", 80]
    run(["toy-train", *common, "--layers", 2, "--lr", eta, "--steps", steps, "--full-batch", "--seed", 0,
         "--out", tmp_path / "toy"], capsys)
    model = ToyTransformer.load(tmp_path / "toy" / "toy.safetensors")
    Vw = model.cfg.d_vocab
    run(["basis", *common, "--top-k", Vw, "--out", tmp_path / "b.safetensors"], capsys)
    b = Basis.load(tmp_path / "b.safetensors").restrict(list(range(Vw)))
    for name, w in model.weights().items():
        assert cos(w.detach(), b.leading_term(name, steps, eta)) >= 0.9999, name
    assert model.tokenizer.words[:2] == ["<|endoftext|>", "<unk>"]


def test_toy_train_minibatch_seeded(tmp_path, markov_npy, capsys):
    common = ["--corpus", markov_npy, "--seq-len", T, "--vocab-size", V, "--layers", 1, "--lr", 0.5,
              "--steps", 5, "--batch-size", 8]

    def weights(seed, name):
        run(["toy-train", *common, "--seed", seed, "--dtype", "float32", "--out", tmp_path / name], capsys)
        with safe_open(str(tmp_path / name / "toy.safetensors"), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}

    a, a2, c = weights(1, "a"), weights(1, "a2"), weights(2, "c")
    assert set(a) == {"W_O", "W.0", "V.0", "P.0"} and a["W_O"].dtype == torch.float32
    assert all(torch.equal(a[k], a2[k]) for k in a)          # same seed, same run
    assert not torch.equal(a["W_O"], c["W_O"])              # another seed, another minibatch order
    train = json.loads((tmp_path / "a" / "train.json").read_text())
    assert train["batch_size"] == 8 and train["seed"] == 1 and len(train["losses"]) == 5


def test_help_lists_the_contract(capsys):
    with pytest.raises(SystemExit):
        main(["basis", "--help"])
    text = capsys.readouterr().out
    for flag in ("--corpus", "--tokenizer", "--seq-len", "--top-k", "--token-ids", "--vocab-size", "--out"):
        assert flag in text
    with pytest.raises(SystemExit):
        main(["toy-train", "--help"])
    text = capsys.readouterr().out
    for flag in ("--layers", "--lr", "--steps", "--full-batch", "--batch-size", "--dtype", "--seed", "--out"):
        assert flag in text


def test_top_level_api_is_lazy_and_complete():
    """``import tl_leadterm`` stays light (no TransformerLens); every later stage is reachable from it."""
    import subprocess
    import sys

    code = ("import sys, tl_leadterm as t; assert 'transformer_lens' not in sys.modules, 'eager import'; "
            "names = [n for n in t.__all__ if n not in vars(t)]; [getattr(t, n) for n in names]; "
            "assert 'transformer_lens' in sys.modules; print(len(names))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.strip()) >= 15
    import tl_leadterm
    from tl_leadterm.monitor import TrainingMonitor
    assert tl_leadterm.TrainingMonitor is TrainingMonitor
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        tl_leadterm.nope


def test_readme_python_example_runs_and_is_true(tmp_path):
    """The README's first Python example runs as written, and its leading-term comparison holds."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## Using it from Python\n\n```python\n(.*?)```", readme, re.S).group(1)
    check = ("\nc = float((V0 * lead).sum() / (V0.norm() * lead.norm()))\n"
             "assert c >= 0.9999, c\nassert tuple(cache['pattern', 0].shape) == (1, 1, 32, 32)\nprint('ok')\n")
    out = subprocess.run([sys.executable, "-c", block + check], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                         env={**__import__("os").environ, "TQDM_DISABLE": "1"})
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def test_library_errors_name_parameters_and_the_cli_names_flags(tmp_path, capsys):
    """One message, two spellings: the Python API names the parameter, the CLI the flag that sets it."""
    from tl_leadterm import LeadTermError, windows_from_tokens
    w = windows_from_tokens(torch.tensor([[0, 1, 2, 1, 0]]), 3)
    with pytest.raises(LeadTermError) as e:
        compute_basis(w, top_k=9, progress=False)
    assert "top_k 9 is larger than the vocabulary" in str(e.value) and "--" not in str(e.value)
    txt = tmp_path / "c.txt"
    txt.write_text("a b a b a b a b\n")
    rc = main(["basis", "--corpus", str(txt), "--seq-len", "2", "--top-k", "9", "--out", str(tmp_path / "b.safetensors")])
    err = capsys.readouterr().err
    assert rc == 2 and "error: --top-k 9 is larger than the vocabulary" in err and "top_k" not in err
