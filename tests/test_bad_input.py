"""Bad input: one-line ``error:`` naming the fix, exit status 2, no traceback, and no partial output."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tl_leadterm import Basis, LeadTermError
from tl_leadterm.cli import main

V, T = 7, 5


@pytest.fixture()
def ws(tmp_path):
    """A work folder with good and bad inputs; outputs go to ``out/`` which must never appear."""
    rng = np.random.default_rng(0)
    np.save(tmp_path / "ok.npy", rng.integers(0, V, size=(6, T + 1)))
    (tmp_path / "ok.txt").write_text("the bird flew up in the sky. the fish swam in the pond. " * 5)
    return tmp_path


def cli_error(capsys, argv, out_root: Path) -> str:
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert not out_root.exists(), f"partial output left in {out_root}: {list(out_root.rglob('*'))}"
    return lines[0]


def basis_cmd(ws, corpus, *extra, seq_len=T):
    return ["basis", "--corpus", ws / corpus if not str(corpus).startswith("builtin") else corpus,
            "--seq-len", seq_len, *extra, "--out", ws / "out" / "b.safetensors"]


# ---------------------------------------------------------------------------
# corpus
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["", "  \n\n", "<|endoftext|>\n  \n<|endoftext|>\n"])
def test_empty_corpus(ws, capsys, text):
    (ws / "empty.txt").write_text(text)
    msg = cli_error(capsys, basis_cmd(ws, "empty.txt", "--top-k", 3), ws / "out")
    assert "empty" in msg and "give a corpus with text" in msg


def test_no_window_of_seq_len_plus_one_tokens(ws, capsys):
    (ws / "short.txt").write_text("a bird flew")
    msg = cli_error(capsys, basis_cmd(ws, "short.txt", "--top-k", 2, seq_len=50), ws / "out")
    assert "no window of 51 tokens" in msg and "smaller --seq-len" in msg


def test_empty_npy(ws, capsys):
    np.save(ws / "none.npy", np.zeros((0, T + 1), dtype=np.int64))
    msg = cli_error(capsys, basis_cmd(ws, "none.npy", "--top-k", 2, "--vocab-size", V), ws / "out")
    assert "empty" in msg


def test_missing_corpus(ws, capsys):
    msg = cli_error(capsys, basis_cmd(ws, "nothere.txt", "--top-k", 2), ws / "out")
    assert "not found" in msg


@pytest.mark.parametrize("seq_len", [1, 0, -3])
@pytest.mark.parametrize("corpus", ["ok.txt", "ok.npy"])
def test_seq_len_below_two(ws, capsys, seq_len, corpus):
    msg = cli_error(capsys, basis_cmd(ws, corpus, "--top-k", 2, "--vocab-size", V, seq_len=seq_len), ws / "out")
    assert "--seq-len must be an integer >= 2" in msg


def test_seq_len_differs_from_npy_width(ws, capsys):
    msg = cli_error(capsys, basis_cmd(ws, "ok.npy", "--top-k", 2, "--vocab-size", V, seq_len=T + 2), ws / "out")
    assert f"pass --seq-len {T}" in msg


def test_npy_needs_vocab_size(ws, capsys):
    msg = cli_error(capsys, basis_cmd(ws, "ok.npy", "--top-k", 2), ws / "out")
    assert "--vocab-size" in msg


@pytest.mark.parametrize("kind,fix", [
    ("too_big", "larger --vocab-size"),
    ("negative", "negative"),
    ("fractional", "integers"),
    ("float_integral", "astype(numpy.int64)"),
    ("nan", "integers"),
    ("bool", "integers"),
    ("one_dim", "shape [n, T+1]"),
])
def test_bad_token_ids_in_npy(ws, capsys, kind, fix):
    good = np.load(ws / "ok.npy")
    arr = {
        "too_big": np.where(good == 3, V, good),
        "negative": np.where(good == 3, -1, good),
        "fractional": good + 0.5,
        "float_integral": good.astype(np.float32),
        "nan": np.where(good == 3, np.nan, good.astype(float)),
        "bool": good > 2,
        "one_dim": good.reshape(-1),
    }[kind]
    np.save(ws / "bad.npy", arr)
    msg = cli_error(capsys, basis_cmd(ws, "bad.npy", "--top-k", 2, "--vocab-size", V), ws / "out")
    assert fix in msg


def test_npy_that_is_not_an_array(ws, capsys):
    (ws / "junk.npy").write_text("not numpy")
    msg = cli_error(capsys, basis_cmd(ws, "junk.npy", "--top-k", 2, "--vocab-size", V), ws / "out")
    assert "numpy.save" in msg


# ---------------------------------------------------------------------------
# token selection
# ---------------------------------------------------------------------------
def test_top_k_larger_than_vocabulary(ws, capsys):
    msg = cli_error(capsys, basis_cmd(ws, "ok.npy", "--top-k", V + 1, "--vocab-size", V), ws / "out")
    assert f"use --top-k {V} or less" in msg
    msg = cli_error(capsys, basis_cmd(ws, "builtin:stories", "--top-k", 100_000), ws / "out")
    assert "larger than the vocabulary" in msg


def test_top_k_not_positive(ws, capsys):
    msg = cli_error(capsys, basis_cmd(ws, "ok.npy", "--top-k", 0, "--vocab-size", V), ws / "out")
    assert "positive" in msg


@pytest.mark.parametrize("ids,fix", [
    ([1, 2, 1], "more than once"),
    ([1, V], f"outside [0, {V})"),
    ([-1, 2], "outside"),
    ([1, 2.5], "integer"),
    ([], "non-empty"),
    ({"a": 1}, "list of integers"),
])
def test_bad_token_ids_file(ws, capsys, ids, fix):
    (ws / "ids.json").write_text(json.dumps(ids))
    msg = cli_error(capsys, basis_cmd(ws, "ok.npy", "--token-ids", ws / "ids.json", "--vocab-size", V), ws / "out")
    assert fix in msg


def test_token_ids_file_missing_or_not_json(ws, capsys):
    msg = cli_error(capsys, basis_cmd(ws, "ok.npy", "--token-ids", ws / "nope.json", "--vocab-size", V), ws / "out")
    assert "not found" in msg
    (ws / "ids.json").write_text("[1, 2,")
    msg = cli_error(capsys, basis_cmd(ws, "ok.npy", "--token-ids", ws / "ids.json", "--vocab-size", V), ws / "out")
    assert "not valid JSON" in msg


def test_exact_mode_that_cannot_fit_is_refused_up_front(ws, capsys):
    np.save(ws / "big.npy", np.array([[0, 50_000, 1, 50_000, 2, 7]]))
    msg = cli_error(capsys, basis_cmd(ws, "big.npy", "--top-k", 3, "--vocab-size", 50_304, "--mode", "exact"), ws / "out")
    assert "exact mode needs about" in msg and "merge-other" in msg


def test_choose_mode_refuses_a_k_that_will_not_fit():
    from tl_leadterm.basis import choose_mode

    budget = 20 * 2**30
    assert choose_mode(50_304, 16_384, "merge-other", torch.float32, budget=budget) == "merge-other"
    with pytest.raises(LeadTermError, match=r"use top_k 2\d{4} or less$"):
        choose_mode(50_304, 32_768, "merge-other", torch.float32, budget=budget)
    with pytest.warns(UserWarning, match="merge-other"):
        assert choose_mode(50_304, 1000, "auto", torch.float64, budget=budget) == "merge-other"
    assert choose_mode(2_000, 2_000, "auto", torch.float64, budget=budget) == "exact"


def test_auto_mode_avoids_hours_of_exact_products_but_exact_can_be_asked_for():
    from tl_leadterm.basis import AUTO_EXACT_MAX_VOCAB, choose_mode

    huge = 2**50  # memory is no object here: only the vocabulary size decides
    cap = AUTO_EXACT_MAX_VOCAB["cpu"]
    assert choose_mode(cap, 100, "auto", torch.float64, budget=huge) == "exact"
    with pytest.warns(UserWarning, match="too slow on cpu"):
        assert choose_mode(cap + 1, 100, "auto", torch.float64, budget=huge) == "merge-other"
    assert choose_mode(cap + 1, cap + 1, "auto", torch.float64, budget=huge) == "exact"  # k = |V|: same thing
    assert choose_mode(cap + 1, 100, "exact", torch.float64, budget=huge) == "exact"
    assert choose_mode(cap + 1, 100, "auto", torch.float64, device="cuda", budget=huge) == "exact"


# ---------------------------------------------------------------------------
# tokenizers
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("spec,said", [
    ("no-such-tokenizer-xyz", "Hugging Face hub name 'no-such-tokenizer-xyz'"),
    ("some-org/no-such-tokenizer", "Hugging Face hub name 'some-org/no-such-tokenizer'"),
    ("./missing/tokenizer.json", "not a hub name"),
])
def test_tokenizer_not_found_says_what_was_tried(ws, capsys, spec, said):
    msg = cli_error(capsys, basis_cmd(ws, "ok.txt", "--top-k", 2, "--tokenizer", spec), ws / "out")
    assert "not found" in msg and "tried:" in msg and "local path" in msg and said in msg


def test_tokenizer_file_that_is_not_a_tokenizer(ws, capsys):
    (ws / "tok.json").write_text('{"not": "a tokenizer"}')
    msg = cli_error(capsys, basis_cmd(ws, "ok.txt", "--top-k", 2, "--tokenizer", ws / "tok.json"), ws / "out")
    assert "tokenizer.json" in msg
    (ws / "tokdir").mkdir()
    msg = cli_error(capsys, basis_cmd(ws, "ok.txt", "--top-k", 2, "--tokenizer", ws / "tokdir"), ws / "out")
    assert "save_pretrained" in msg


def test_dataset_without_the_text_column(ws, capsys):
    (ws / "ds").mkdir()
    (ws / "ds" / "train.jsonl").write_text(json.dumps({"story": "a bird flew"}) + "\n")
    msg = cli_error(capsys, basis_cmd(ws, "ds", "--top-k", 2), ws / "out")
    assert "--text-column" in msg and "story" in msg


# ---------------------------------------------------------------------------
# output paths and toy-train arguments
# ---------------------------------------------------------------------------
def test_out_must_be_safetensors(ws, capsys):
    msg = cli_error(capsys, ["basis", "--corpus", ws / "ok.npy", "--seq-len", T, "--vocab-size", V, "--top-k", 2,
                             "--out", ws / "out" / "b.bin"], ws / "out")
    assert ".safetensors" in msg


def test_out_under_a_file(ws, capsys):
    (ws / "afile").write_text("x")
    msg = cli_error(capsys, ["basis", "--corpus", ws / "ok.npy", "--seq-len", T, "--vocab-size", V, "--top-k", 2,
                             "--out", ws / "afile" / "b.safetensors"], ws / "out")
    assert "not a folder" in msg


def toy_cmd(ws, corpus="ok.npy", **over):
    args = {"--seq-len": T, "--vocab-size": V, "--layers": 2, "--lr": 0.1, "--steps": 2, "--seed": 0}
    args.update(over)
    argv = ["toy-train", "--corpus", ws / corpus, "--full-batch", "--out", ws / "out" / "toy"]
    for k, v in args.items():
        if v is not None:
            argv += [k, v]
    return argv


@pytest.mark.parametrize("over,fix", [
    ({"--layers": 0}, "--layers"),
    ({"--lr": 0}, "--lr"),
    ({"--lr": "nan"}, "--lr"),
    ({"--steps": -1}, "--steps"),
    ({"--seq-len": T + 1}, f"pass --seq-len {T}"),
    ({"--vocab-size": None}, "--vocab-size"),
])
def test_toy_train_bad_arguments_leave_no_folder(ws, capsys, over, fix):
    msg = cli_error(capsys, toy_cmd(ws, **over), ws / "out")
    assert fix in msg


def test_toy_train_bad_batch_size(ws, capsys):
    argv = toy_cmd(ws)
    argv[argv.index("--full-batch")] = "--batch-size=0"
    msg = cli_error(capsys, argv, ws / "out")
    assert "--batch-size" in msg


def test_toy_train_empty_corpus_leaves_no_folder(ws, capsys):
    (ws / "empty.txt").write_text("")
    cli_error(capsys, toy_cmd(ws, "empty.txt", **{"--vocab-size": None}), ws / "out")


# ---------------------------------------------------------------------------
# basis files
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def good_basis_file(tmp_path_factory):
    from tl_leadterm import compute_basis, windows_from_tokens

    d = tmp_path_factory.mktemp("basis")
    toks = torch.from_numpy(np.random.default_rng(1).integers(0, V, size=(8, T + 1)))
    compute_basis(windows_from_tokens(toks, V), top_k=4, progress=False).save(d / "good.safetensors")
    Basis.load(d / "good.safetensors")  # the original is fine
    return d / "good.safetensors"


def load_error(path) -> str:
    with pytest.raises(LeadTermError) as e:
        Basis.load(path)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("keep", [0, 7, 100, 0.5, -1])
def test_truncated_basis_file(good_basis_file, tmp_path, keep):
    data = good_basis_file.read_bytes()
    n = {0.5: len(data) // 2, -1: len(data) - 1}.get(keep, keep)
    (tmp_path / "cut.safetensors").write_bytes(data[:n])
    msg = load_error(tmp_path / "cut.safetensors")
    assert "truncated" in msg and "rebuild" in msg


def test_foreign_and_text_basis_files(tmp_path):
    from safetensors.torch import save_file

    from tl_leadterm.tensorfiles import seal

    save_file({"weight": torch.zeros(3)}, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    assert "is not a tl_leadterm basis file" in load_error(tmp_path / "model.safetensors")
    save_file({"weight": torch.zeros(3)}, str(tmp_path / "nometa.safetensors"))
    assert "tl-leadterm basis" in load_error(tmp_path / "nometa.safetensors")
    (tmp_path / "notes.safetensors").write_text("these are my notes\n")
    assert "rebuild" in load_error(tmp_path / "notes.safetensors")
    assert "not found" in load_error(tmp_path / "missing.safetensors")
    (tmp_path / "dir.safetensors").mkdir()
    assert "folder" in load_error(tmp_path / "dir.safetensors")


def test_tampered_basis_file(good_basis_file, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from tl_leadterm.tensorfiles import seal

    with safe_open(str(good_basis_file), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = dict(f.metadata())

    def variant(name, tensors=tensors, **meta_over):
        path = tmp_path / f"{name}.safetensors"
        save_file(tensors, str(path), metadata=seal(tensors, {**meta, **meta_over}))   # re-sealed: the deeper checks
        return load_error(path)

    assert "lacks tensors key_query" in variant("nokq", {k: v for k, v in tensors.items() if k != "key_query"})
    assert "position has shape" in variant("pos", {**tensors, "position": torch.zeros(T + 1, dtype=torch.float64)})
    assert "non-finite" in variant("nan", {**tensors, "value": tensors["value"] * float("nan")})
    assert "token_ids" in variant("dup", {**tensors, "token_ids": torch.tensor([0, 0, 1, 2])})
    assert "dtype" in variant("dt", {**tensors, "value": tensors["value"].float()})
    assert "metadata" in variant("vs", vocab_size="seven")
    assert "inconsistent metadata" in variant("k", k="99")
    assert "mode" in variant("mode", mode="guess")
    assert "tokenizer record" in variant("tok", tokenizer="{not json")


def test_unreadable_basis_file(good_basis_file, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("tl_leadterm.tensorfiles.open", denied, raising=False)  # chmod does not stop root
    msg = load_error(good_basis_file)
    assert "cannot read" in msg and "Permission denied" in msg and "permissions" in msg
