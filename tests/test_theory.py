"""The leading terms of THEORY.md against autograd, and the fast basis against the slow reference."""

import pytest
import torch

from reference import N, T, V, direct_basis, markov_tokens, fro_cos as cos
from tl_leadterm import LeadTermError, compute_basis, compute_basis_sharded, windows_from_tokens
from tl_leadterm.basis import leading_coefficient
from tl_leadterm.toy import ToyConfig, ToyTransformer, train_toy


@pytest.fixture(scope="module")
def reference(corpus):
    return direct_basis(corpus.tokens, corpus.lengths, V)


@pytest.mark.parametrize("name", ["bigram", "context", "interchange", "value", "value_output", "key_query", "position"])
def test_fast_basis_equals_direct_reference(full_basis, reference, name):
    got, ref = getattr(full_basis, name), reference[name]
    assert ref.abs().max() > 0
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-15 * float(ref.abs().max()) + 1e-30)


def test_padding_and_cut_windows_match_reference():
    tok = markov_tokens(V, T, 30, seed=5)
    lengths = torch.randint(2, T + 2, (30,), generator=torch.Generator().manual_seed(1))
    for i, L in enumerate(lengths):
        tok[i, L:] = 0  # padding value that is also a real token: must not count
    w = windows_from_tokens(tok, V, lengths=lengths)
    ref = direct_basis(tok, lengths, V)
    b = compute_basis(w, token_ids=list(range(V)), progress=False)
    for name in ref:
        torch.testing.assert_close(getattr(b, name), ref[name], rtol=1e-9, atol=1e-18)
    assert b.n_positions == int((lengths - 1).sum())


@pytest.fixture(scope="module")
def trained(corpus):
    torch.manual_seed(0)
    model = ToyTransformer(ToyConfig(V, T, n_layers=2, dtype=torch.float64))
    eta, steps = 0.01, 6
    train_toy(model, corpus, lr=eta, steps=steps, progress=False)
    return model, eta, steps


def test_every_weight_matches_its_leading_term(trained, full_basis):
    model, eta, steps = trained
    weights = model.weights()
    assert set(weights) == {"W_O", "W.0", "V.0", "P.0", "W.1", "V.1", "P.1"}
    for name, w in weights.items():
        lead = full_basis.leading_term(name, steps, eta)
        w = w.detach()
        assert cos(w, lead) >= 0.9999, name
        assert float((w - lead).norm() / lead.norm()) <= 1e-2, name


def test_leading_constants_are_the_right_ones(trained, full_basis):
    """Scaled by a wrong constant (e.g. s instead of s(s-1)/2) the relative error is large."""
    model, eta, steps = trained
    wrong = {"V.0": eta ** 2 * steps ** 2 / 2, "W.0": eta ** 4 * steps ** 4 / 8}
    base = {"V.0": full_basis.value, "W.0": full_basis.key_query}
    for name, c in wrong.items():
        w = model.weights()[name].detach()
        assert float((w - c * base[name]).norm() / w.norm()) > 0.1


def test_W_O_after_one_step_is_eta_bigram(corpus, full_basis):
    model = ToyTransformer(ToyConfig(V, T, n_layers=2))
    train_toy(model, corpus, lr=0.3, steps=1, progress=False)
    torch.testing.assert_close(model.W_O.detach(), 0.3 * full_basis.bigram, rtol=0, atol=1e-10)
    for l in range(2):  # nothing else moves in the first step
        assert float(model.V(l).detach().abs().max()) == 0 and float(model.W(l).detach().abs().max()) == 0


def test_key_query_orientation_is_distinguished_from_transpose(trained, full_basis):
    model, eta, steps = trained
    w = model.W(0).detach()
    right, wrong = cos(w, full_basis.key_query), cos(w, full_basis.key_query.T)
    assert right >= 0.9999 and wrong < 0.99
    assert right - wrong > 0.01


def test_coefficients():
    assert leading_coefficient("W_O", 3, 0.1) == pytest.approx(0.3)
    assert leading_coefficient("V", 3, 0.1) == pytest.approx(0.01 * 3)
    assert leading_coefficient("W", 4, 0.1) == pytest.approx(1e-4 * (0 + 0 + 4 * 1 / 2 + 9 * 2 / 2))
    assert leading_coefficient("P", 1, 0.5) == 0.0


def test_sub_block_property(corpus, full_basis):
    ids = [7, 2, 9, 0]
    sub = compute_basis(corpus, token_ids=ids, mode="exact", progress=False)
    for name in ("bigram", "context", "interchange", "value", "value_output", "key_query"):
        torch.testing.assert_close(getattr(sub, name), getattr(full_basis, name)[ids][:, ids], rtol=1e-12, atol=1e-20)
    torch.testing.assert_close(sub.position, full_basis.position)
    assert sub.token_ids.tolist() == ids


def test_sub_block_lines_weights_up_with_a_frequency_ordered_basis(trained, corpus):
    """top_k orders tokens by frequency: sub_block() puts a full-vocabulary weight in that order."""
    model, eta, steps = trained
    by_freq = compute_basis(corpus, top_k=V, progress=False)
    assert by_freq.token_ids.tolist() != list(range(V))  # the order differs from the ids here
    for name, w in model.weights().items():
        blk = by_freq.sub_block(w)
        assert cos(blk, by_freq.leading_term(name, steps, eta)) >= 0.9999, name
        if w.dim() == 2:
            ids = by_freq.token_ids
            assert torch.equal(blk, w.detach()[ids][:, ids])
            assert cos(w.detach(), by_freq.leading_term(name, steps, eta)) < 0.9  # raw weight: wrong order
    with pytest.raises(LeadTermError, match="sub_block"):
        by_freq.sub_block(torch.zeros(V + 1, V + 1))


def test_merge_other_agrees_with_exact_at_full_k(corpus, full_basis):
    merged = compute_basis(corpus, token_ids=list(range(V)), mode="merge-other", progress=False)
    assert merged.mode == "merge-other" and full_basis.mode == "exact"
    for name in ("bigram", "context", "interchange", "value", "value_output", "key_query", "position"):
        torch.testing.assert_close(getattr(merged, name), getattr(full_basis, name), rtol=1e-10, atol=1e-20)


def test_merge_other_keeps_bigram_and_context_exact_on_the_block(corpus, full_basis):
    ids = [1, 4, 6]
    merged = compute_basis(corpus, token_ids=ids, mode="merge-other", progress=False)
    torch.testing.assert_close(merged.bigram, full_basis.bigram[ids][:, ids])
    torch.testing.assert_close(merged.context, full_basis.context[ids][:, ids])
    # the products are an approximation: close in direction, not equal
    assert cos(merged.key_query, full_basis.key_query[ids][:, ids]) > 0.5


def test_shards_merge_exactly(corpus, full_basis):
    shards = corpus.shards(3)
    assert sum(s.n_windows for s in shards) == corpus.n_windows
    merged = compute_basis_sharded(shards, list(range(V)))
    for name in ("bigram", "context", "interchange", "value", "value_output", "key_query", "position"):
        torch.testing.assert_close(getattr(merged, name), getattr(full_basis, name), rtol=1e-12, atol=1e-20)


def test_second_pass_refuses_a_foreign_first_pass(corpus):
    from tl_leadterm.basis import BasisSpec, compositions, first_pass, second_pass
    from tl_leadterm.errors import LeadTermError

    spec = BasisSpec(V, torch.arange(V), "exact")
    a, b = corpus.shards(2)
    ca, cb = compositions(first_pass(a, spec, progress=False)), compositions(first_pass(b, spec, progress=False))
    with pytest.raises(LeadTermError, match="different first-pass"):
        second_pass(a, ca, progress=False) + second_pass(b, cb, progress=False)


def test_position_term_sums_to_zero(full_basis):
    # the softmax Jacobian at uniform attention centres m_t, so Σ_δ p̄[δ] = 0
    assert abs(float(full_basis.position.sum())) < 1e-15
    assert float(full_basis.position.abs().max()) > 1e-8


def test_minibatch_sgd_runs_and_lowers_loss(corpus):
    from tl_leadterm.toy import windows_loss

    model = ToyTransformer(ToyConfig(V, T, n_layers=2))
    before = windows_loss(model, corpus)
    res = train_toy(model, corpus, lr=1.0, steps=30, batch_size=8, seed=1, progress=False)
    assert len(res.losses) == 30
    assert windows_loss(model, corpus) < before - 0.05


# ---------------------------------------------------------------------------
# the theory table itself (tl_leadterm.theory)
# ---------------------------------------------------------------------------
def test_theory_table_constants():
    from tl_leadterm import theory
    s, eta = 5, 0.1
    quartic = eta ** 4 * sum(k * k * (k - 1) / 2 for k in range(s))
    expected = {"W_O": eta * s, "V": eta ** 2 * s * (s - 1) / 2, "W": quartic, "P": quartic}
    for w, c in expected.items():
        assert theory.leading_coefficient(w, s, eta) == pytest.approx(c, rel=1e-15)
        assert theory.leading_coefficient(f"{w}.3" if w != "W_O" else w, s, eta) == pytest.approx(c, rel=1e-15)
    assert {w: t.term for w, t in theory.LEADING.items()} == {"W_O": "bigram", "V": "value", "W": "key_query", "P": "position"}
    assert {w: t.order for w, t in theory.LEADING.items()} == {"W_O": 1, "V": 2, "W": 4, "P": 4}
    ov = theory.leading("V.1·W_O")
    assert ov.term == "value_output" and ov.order == 3
    assert ov.coefficient(s, eta) == pytest.approx(expected["V"] * expected["W_O"], rel=1e-15)
    assert theory.TERMS["key_query"].orientation == ("query", "key")
    assert theory.TERMS["value_output"].orientation == ("context", "next")
    assert theory.MATRIX_NAMES == ("bigram", "context", "interchange", "value", "value_output", "key_query")


def test_weight_names_parse_and_refuse():
    from tl_leadterm import theory
    assert theory.parse_weight("W_O") == ("W_O", None) and theory.parse_weight("V.12") == ("V", 12)
    assert theory.weight_name("P", 2) == "P.2" and theory.weight_name("W_O", None) == "W_O"
    for bad in ("X.0", "V.a", "W_O.1", ""):
        with pytest.raises(LeadTermError, match="unknown toy weight"):
            theory.parse_weight(bad)


def test_sharded_basis_records_tokenizer_and_the_whole_corpus_fingerprint():
    from tl_leadterm import load_corpus
    w = load_corpus("builtin:stories", seq_len=8)[:300]
    ids = list(range(40))
    whole = compute_basis(w, token_ids=ids, progress=False)
    sharded = compute_basis_sharded(w.shards(3), ids)
    assert sharded.tokenizer_identity == whole.tokenizer_identity and sharded.tokenizer_identity["kind"] == "words"
    assert sharded.corpus_fingerprint == whole.corpus_fingerprint == w.fingerprint
    assert sharded.token_strs() == whole.token_strs()
    other = load_corpus("builtin:stories", seq_len=8, word_vocab_size=50)[:10]
    with pytest.raises(LeadTermError, match="different tokenizers"):
        compute_basis_sharded([w[:10], other], ids)
