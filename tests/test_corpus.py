"""Corpus stage: sources, tokenizers, packing, the embedded corpus; and basis/toy storage round trips."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from reference import direct_basis
from tl_leadterm import Basis, LeadTermError, compute_basis, load_corpus, read_documents
from tl_leadterm.data.stories import INTERCHANGEABLE, KNOWN_ASSOCIATIONS, default_corpus_texts
from tl_leadterm.tokenization import EOS_TEXT, UNK_TEXT, build_word_tokenizer, resolve_tokenizer

TINY_DOCS = ["The Bird flew!", "A fish swam, then 42 fish swam.", "the dog barked"]


def write_text(path: Path, docs) -> Path:
    path.write_text(f"\n{EOS_TEXT}\n".join(docs) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------------------
# the word-level tokenizer
# ---------------------------------------------------------------------------
def test_words_tokenizer_lowercases_and_splits_punctuation():
    tok = build_word_tokenizer(["The Bird flew! The bird, 42 birds."])
    assert tok.kind == "words" and tok.eos_id == 0
    words = tok.words
    # specials first, then by count (bird, the: 2 each; ties alphabetical), then count-1 tokens alphabetically
    assert words == [EOS_TEXT, UNK_TEXT, "bird", "the", "!", ",", ".", "2", "4", "birds", "flew"]
    ids = tok.encode("THE bird flew!")
    assert [words[i] for i in ids] == ["the", "bird", "flew", "!"]
    # digits are single-character tokens; unseen words and characters become <unk>
    assert [words[i] for i in tok.encode("zebra 24 ?")] == [UNK_TEXT, "2", "4", UNK_TEXT]
    assert tok.decode(tok.encode("the bird")) == "the bird"


def test_words_tokenizer_min_count_and_max_size():
    texts = ["b a a c c c d"]
    assert build_word_tokenizer(texts).words == [EOS_TEXT, UNK_TEXT, "c", "a", "b", "d"]
    tok = build_word_tokenizer(texts, min_count=2)
    assert tok.words == [EOS_TEXT, UNK_TEXT, "c", "a"]
    assert tok.encode("b d a") == [1, 1, 3]
    tok = build_word_tokenizer(texts, max_size=4)
    assert tok.words == [EOS_TEXT, UNK_TEXT, "c", "a"] and tok.vocab_size == 4
    with pytest.raises(LeadTermError):
        build_word_tokenizer(texts, max_size=2)
    with pytest.raises(LeadTermError):
        build_word_tokenizer(texts, min_count=0)


def test_unknown_words_are_counted_as_data(tmp_path):
    f = write_text(tmp_path / "c.txt", ["a a a b a a c"])
    w = load_corpus(f, seq_len=3, word_min_count=2)
    assert w.tokenizer.words == [EOS_TEXT, UNK_TEXT, "a"]
    # stream a a a <unk> a a <unk> <eos>: two windows of 4
    assert w.tokens.tolist() == [[2, 2, 2, 1], [2, 2, 1, 0]]
    assert w.n_positions == 6


# ---------------------------------------------------------------------------
# sources
# ---------------------------------------------------------------------------
def test_text_file_documents_split_on_endoftext(tmp_path):
    f = write_text(tmp_path / "c.txt", ["one two\nthree", "  ", "four"])
    assert read_documents(f) == ["one two\nthree", "four"]


def test_folder_of_text_files_recursive_sorted(tmp_path):
    (tmp_path / "b").mkdir()
    write_text(tmp_path / "b" / "z.txt", ["third doc"])
    write_text(tmp_path / "a.txt", ["first doc", "second doc"])
    (tmp_path / "notes.md").write_text("not read")
    # every file ends a document, files in path order
    assert read_documents(tmp_path) == ["first doc", "second doc", "third doc"]
    w = load_corpus(tmp_path, seq_len=2)
    # stream: first doc <eos> second doc <eos> third doc <eos> -> 3 windows of 3
    words = w.tokenizer.words
    assert [[words[i] for i in row] for row in w.tokens.tolist()] == [
        ["first", "doc", EOS_TEXT], ["second", "doc", EOS_TEXT], ["third", "doc", EOS_TEXT]]


@pytest.fixture()
def dataset_dir(tmp_path):
    d = tmp_path / "ds"
    d.mkdir()
    with open(d / "train.jsonl", "w") as f:
        for i, doc in enumerate(TINY_DOCS * 3):
            f.write(json.dumps({"id": i, "story": doc}) + "\n")
    return d


def test_local_dataset_folder_streams_with_text_column(dataset_dir, tmp_path):
    docs = read_documents(dataset_dir, text_column="story")
    assert docs == TINY_DOCS * 3
    assert read_documents(f"hf:{dataset_dir}", text_column="story") == docs
    assert read_documents(dataset_dir / "train.jsonl", text_column="story") == docs
    assert read_documents(dataset_dir, text_column="story", max_docs=4) == docs[:4]
    with pytest.raises(LeadTermError, match="pass text_column"):
        read_documents(dataset_dir)  # default column 'text' is absent
    # the same documents from a text file give the same windows
    from_ds = load_corpus(dataset_dir, seq_len=4, text_column="story")
    from_txt = load_corpus(write_text(tmp_path / "same.txt", docs), seq_len=4)
    assert torch.equal(from_ds.tokens, from_txt.tokens) and from_ds.vocab_size == from_txt.vocab_size


def test_npy_windows_need_vocab_size(tmp_path):
    arr = np.random.default_rng(0).integers(0, 9, size=(7, 6))
    np.save(tmp_path / "w.npy", arr)
    w = load_corpus(tmp_path / "w.npy", seq_len=5, vocab_size=11)
    assert torch.equal(w.tokens, torch.from_numpy(arr)) and w.vocab_size == 11
    assert w.seq_len == 5 and w.n_positions == 7 * 5 and w.tokenizer is None
    np.save(tmp_path / "w32.npy", arr.astype(np.uint16))
    assert torch.equal(load_corpus(tmp_path / "w32.npy", seq_len=5, vocab_size=11).tokens, w.tokens)


# ---------------------------------------------------------------------------
# packing
# ---------------------------------------------------------------------------
def test_pack_join_and_cut(tmp_path):
    f = write_text(tmp_path / "c.txt", ["a b c", "a b c d e f g", "a"])
    join = load_corpus(f, seq_len=3, pack="join")
    # stream: 3+1, 7+1, 1+1 = 14 tokens -> 3 windows of 4, tail dropped
    assert join.n_windows == 3 and join.n_positions == 9 and bool((join.lengths == 4).all())
    cut = load_corpus(f, seq_len=3, pack="cut")
    # per document: [a b c] (len 3), [a b c d] (4) + [e f g] (3), [a] (too short: dropped)
    assert cut.lengths.tolist() == [3, 4, 3]
    assert cut.n_positions == 2 + 3 + 2
    words = cut.tokenizer.words
    assert [words[i] for i in cut.tokens[2, :3].tolist()] == ["e", "f", "g"]
    assert cut.tokens[0, 3] == cut.tokenizer.eos_id  # padding (never data)


def test_padding_is_never_counted(tmp_path):
    f = write_text(tmp_path / "c.txt", ["the bird flew up", "the fish swam", "a bird flew"])
    cut = load_corpus(f, seq_len=5, pack="cut")
    assert bool((cut.lengths < 6).all())          # every window is padded with <eos> ...
    b = compute_basis(cut, token_ids=list(range(cut.vocab_size)), progress=False)
    ref = direct_basis(cut.tokens, cut.lengths, cut.vocab_size)
    for name, r in ref.items():
        torch.testing.assert_close(getattr(b, name), r, rtol=1e-9, atol=1e-18)
    eos = cut.tokenizer.eos_id                    # ... which never occurs as data
    assert float(b.bigram[eos].abs().max()) == 0.0 and float(b.context[:, eos].abs().max()) == 0.0
    assert b.n_positions == 3 + 2 + 2


# ---------------------------------------------------------------------------
# Hugging Face tokenizers
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pythia_json(shared_data):
    return shared_data / "gpt-neox-20b-tokenizer.json"


@pytest.fixture(scope="module")
def pythia_tok(pythia_json):
    return resolve_tokenizer(str(pythia_json))


def test_hf_tokenizer_from_file(tmp_path, pythia_tok):
    tok = pythia_tok
    assert tok.kind == "hf" and tok.eos_id == 0 and tok.vocab_size == 50277 + 4
    f = write_text(tmp_path / "c.txt", ["Once upon a time, a bird flew.", "The end."])
    w = load_corpus(f, seq_len=3, tokenizer=tok, vocab_size=50304)
    stream = tok.encode("Once upon a time, a bird flew.") + [0] + tok.encode("The end.") + [0]
    n = len(stream) // 4
    assert w.tokens.reshape(-1).tolist() == stream[: 4 * n] and w.vocab_size == 50304
    assert tok.token_str(50300) == "<id 50300>"  # padded output rows of Pythia
    with pytest.raises(LeadTermError, match="larger vocab_size"):
        load_corpus(f, seq_len=3, tokenizer=tok, vocab_size=100)


def test_hf_tokenizer_from_directory_and_model(tmp_path, pythia_tok):
    d = tmp_path / "tok"
    pythia_tok._impl.save_pretrained(str(d))
    from_dir = resolve_tokenizer(str(d))
    assert from_dir.identity["fingerprint"] == pythia_tok.identity["fingerprint"]
    assert from_dir.encode("a bird flew") == pythia_tok.encode("a bird flew")

    class Cfg:
        tokenizer_name = "EleutherAI/pythia-70m"

    class TLLikeModel:  # what load_corpus needs of a HookedTransformer: .tokenizer and .cfg
        cfg = Cfg()
        tokenizer = pythia_tok._impl

    from_model = resolve_tokenizer(TLLikeModel())
    assert from_model.name == "EleutherAI/pythia-70m"
    assert from_model.identity["fingerprint"] == pythia_tok.identity["fingerprint"]


def test_hooked_transformer_tokenizer(pythia_tok):
    try:
        from transformer_lens import HookedTransformer, HookedTransformerConfig
    except ImportError:
        pytest.skip("TransformerLens 4.x has no HookedTransformer (test_hf_tokenizer_from_directory_and_model covers .tokenizer)")

    cfg = HookedTransformerConfig(n_layers=1, d_model=8, n_ctx=8, d_head=4, n_heads=2, d_vocab=50304, act_fn="relu",
                                  attn_only=True)
    model = HookedTransformer(cfg, tokenizer=pythia_tok._impl)
    tok = resolve_tokenizer(model)
    assert tok.kind == "hf" and tok.encode("a bird flew") == pythia_tok.encode("a bird flew")
    assert tok.identity["fingerprint"] == pythia_tok.identity["fingerprint"]


# ---------------------------------------------------------------------------
# the embedded corpus and the shared TinyStories excerpt
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def builtin():
    return load_corpus("builtin:stories", seq_len=32)


@pytest.fixture(scope="module")
def builtin_basis(builtin):
    return compute_basis(builtin, token_ids=list(range(builtin.vocab_size)), progress=False)


def test_builtin_corpus_is_deterministic(builtin):
    assert default_corpus_texts() == default_corpus_texts()
    code = "from tl_leadterm import load_corpus; print(load_corpus('builtin:stories', seq_len=32).fingerprint)"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == builtin.fingerprint
    assert builtin.tokenizer.kind == "words" and builtin.n_positions > 10_000


def test_builtin_corpus_known_associations(builtin, builtin_basis):
    words, b = builtin.tokenizer.words, builtin_basis
    for cur, nxt in KNOWN_ASSOCIATIONS.items():        # B̄: bird -> flew, ...
        assert words[int(b.bigram[words.index(cur)].argmax())] == nxt, cur
    S = b.interchange
    d = S.diag().sqrt()
    C = S / d[:, None] / d[None, :]
    C.fill_diagonal_(-2)
    for group in INTERCHANGEABLE:                       # ΣB̄: car ~ truck ~ bus (cosine-normalised)
        for a in group:
            assert words[int(C[words.index(a)].argmax())] in group, a
    for place, (animal, verb) in {"sky": ("bird", "flew"), "pond": ("fish", "swam")}.items():
        top = {words[i] for i in b.context[words.index(place)].argsort(descending=True)[:4].tolist()}
        assert {animal, verb} <= top, place          # Φ̄: next = sky, context holds bird, flew


def test_top_k_follows_frequency(builtin):
    b = compute_basis(builtin, top_k=5, progress=False)
    freq = torch.bincount(builtin.inputs.reshape(-1), minlength=builtin.vocab_size)
    assert b.token_ids.tolist() == torch.sort(-freq, stable=True).indices[:5].tolist()


@pytest.fixture(scope="module")
def tinystories_docs(shared_data):
    text = (shared_data / "tinystories-train-head.txt").read_text(encoding="utf-8")
    return text, read_documents(shared_data / "tinystories-train-head.txt")


def test_tinystories_excerpt_words(tmp_path, tinystories_docs):
    text, docs = tinystories_docs
    assert len(docs) == text.count(EOS_TEXT) + (0 if text.rstrip().endswith(EOS_TEXT) else 1)
    f = write_text(tmp_path / "ts.txt", docs[:200])
    w = load_corpus(f, seq_len=64, word_vocab_size=500)
    tok = w.tokenizer
    assert tok.vocab_size == 500
    stream = [i for d in docs[:200] for i in tok.encode(d) + [0]]
    n = len(stream) // 65
    assert w.tokens.reshape(-1).tolist() == stream[: 65 * n]
    b = compute_basis(w, token_ids=[tok.words.index(x) for x in ("once", "upon", "a", "time")], progress=False)
    assert b.bigram[0].argmax() == 1 and b.bigram[1].argmax() == 2  # once -> upon -> a


def test_tinystories_excerpt_pythia(tmp_path, tinystories_docs, pythia_tok):
    _, docs = tinystories_docs
    f = write_text(tmp_path / "ts.txt", docs[:50])
    w = load_corpus(f, seq_len=128, tokenizer=pythia_tok, vocab_size=50304)
    assert w.vocab_size == 50304 and w.n_windows >= 20
    assert pythia_tok.decode(w.tokens[0].tolist()).startswith(docs[0][:40])


# ---------------------------------------------------------------------------
# storage
# ---------------------------------------------------------------------------
def test_basis_file_round_trip(tmp_path, builtin, builtin_basis):
    from safetensors import safe_open

    path = tmp_path / "b.safetensors"
    ids = [builtin.tokenizer.words.index(x) for x in ("bird", "flew", "sky", "the")]
    b = builtin_basis.restrict(ids)
    b.save(path)
    with safe_open(str(path), framework="pt") as f:
        assert set(f.keys()) == {"bigram", "context", "interchange", "value", "value_output", "key_query",
                                 "position", "token_ids"}
        meta = f.metadata()
    assert meta["vocab_size"] == str(builtin.vocab_size) and meta["seq_len"] == "32" and meta["mode"] == "exact"
    loaded = Basis.load(path)
    for name in ("bigram", "context", "interchange", "value", "value_output", "key_query", "position", "token_ids"):
        assert torch.equal(getattr(loaded, name), getattr(b, name)), name
    assert loaded.token_ids.tolist() == ids and loaded.bigram.dtype == torch.float64
    assert (loaded.vocab_size, loaded.seq_len, loaded.n_positions) == (builtin.vocab_size, 32, builtin.n_positions)
    assert loaded.mode == "exact" and loaded.version == b.version and loaded.version
    assert loaded.corpus_fingerprint == builtin.fingerprint and loaded.corpus_source == "builtin:stories"
    assert loaded.tokenizer_identity == builtin.tokenizer.identity
    assert loaded.token_strs() == ["bird", "flew", "sky", "the"]
    assert [path.name] == [p.name for p in tmp_path.iterdir()]  # no temporary file left behind


def test_basis_file_round_trip_float32_merge_other_hf(tmp_path, pythia_tok):
    f = write_text(tmp_path / "c.txt", ["Once upon a time, a bird flew.", "The fish swam."] * 5)
    w = load_corpus(f, seq_len=8, tokenizer=pythia_tok, vocab_size=50304)
    b = compute_basis(w, top_k=6, mode="merge-other", dtype=torch.float32, progress=False)
    b.save(tmp_path / "b.safetensors")
    loaded = Basis.load(tmp_path / "b.safetensors")
    assert loaded.mode == "merge-other" and loaded.bigram.dtype == torch.float32 and loaded.vocab_size == 50304
    assert loaded.tokenizer_identity == pythia_tok.identity
    assert loaded.tokenizer.encode("a bird") == pythia_tok.encode("a bird")
    for name in ("key_query", "position", "token_ids"):
        assert torch.equal(getattr(loaded, name), getattr(b, name))


def test_toy_model_file_round_trip(tmp_path):
    from safetensors import safe_open
    from tl_leadterm.toy import ToyConfig, ToyTransformer, train_toy

    f = write_text(tmp_path / "c.txt", TINY_DOCS * 4)
    w = load_corpus(f, seq_len=5)
    model = ToyTransformer(ToyConfig(w.vocab_size, 5, n_layers=2), tokenizer=w.tokenizer)
    train_toy(model, w, lr=0.5, steps=3, progress=False)
    model.save(tmp_path / "toy.safetensors", lr=0.5)
    with safe_open(str(tmp_path / "toy.safetensors"), framework="pt") as fh:
        assert set(fh.keys()) == {"W_O", "W.0", "V.0", "P.0", "W.1", "V.1", "P.1"}
        assert fh.get_tensor("W.1").shape == (w.vocab_size, w.vocab_size) and fh.get_tensor("P.0").shape == (5,)
    loaded = ToyTransformer.load(tmp_path / "toy.safetensors")
    for name, p in model.weights().items():
        assert torch.equal(loaded.weights()[name], p.detach()), name
    assert float(loaded.W(1).detach().abs().max()) > 0 and float(loaded.P(0).detach().abs().max()) > 0
    assert loaded.tokenizer.words == w.tokenizer.words
    assert torch.equal(loaded(w.inputs), model(w.inputs))


def test_word_tokenizer_as_a_hugging_face_tokenizer(tmp_path):
    """The paper's word tokenizer saved as a Hugging Face fast tokenizer: same ids, same fingerprint, reloadable."""
    from transformers import AutoTokenizer

    from tl_leadterm.tokenization import wrap_hf_tokenizer
    docs = read_documents("builtin:stories")
    tok = build_word_tokenizer(docs + ["Hello, World!! 3.14 zebra-crossing"])
    hf = tok.to_hf()
    for d in docs[:300] + ["Hello, World!! 3.14 zebra-crossing", "  spaced\tout\nlines ", "UNKNOWN words here"]:
        assert hf.encode(d, add_special_tokens=False) == tok.encode(d), d
    hf.save_pretrained(str(tmp_path))
    back = wrap_hf_tokenizer(AutoTokenizer.from_pretrained(str(tmp_path)), str(tmp_path))
    assert back.identity["fingerprint"] == tok.identity["fingerprint"]
    assert back.eos_id == tok.eos_id == 0 and back.token_strs([2, 3]) == tok.token_strs([2, 3])
