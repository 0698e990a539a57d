"""The analysis package: similarity formulas against direct slow computations, and the toy-model analysis."""

import math
import warnings

import pytest
import torch

from reference import N, T, V, markov_tokens, fro_cos
from tl_leadterm import LeadTermError, compute_basis, windows_from_tokens
from tl_leadterm.basis import leading_coefficient
from tl_leadterm.analysis import (
    COLUMNS, Target, analyze_toy, causal_check, cka_dense, cka_lowrank, cov_cosine_dense, cov_cosine_lowrank,
    frob_cosine_lowrank, project, quick_measures, row_normalise,
)
from tl_leadterm.toy import ToyConfig, ToyTransformer, train_toy
from tl_leadterm.tokenization import build_word_tokenizer


pytestmark = pytest.mark.usefixtures("one_thread")


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------
# formulas
# ---------------------------------------------------------------------------
def slow_cov_cosine(X, Tm):
    """Straight from THEORY.md §5 with explicit loops: row-normalise T, centre rows, covariance of rows."""
    X, Tm = X.double(), Tm.double()
    k = X.shape[0]
    Tn = torch.stack([r / r.norm() if r.norm() > 0 else r for r in Tm])

    def cov(A):
        C = torch.zeros(k, k, dtype=torch.float64)
        for i in range(k):
            for j in range(k):
                a, b = A[i] - A[i].mean(), A[j] - A[j].mean()
                C[i, j] = (a * b).sum() / (A.shape[1] - 1)
        return C

    return fro_cos(cov(X), cov(Tn))


def slow_cka(X, Y):
    """Linear CKA in feature space (Kornblith et al. 2019, eq. 5): ‖YᵀX‖² / (‖XᵀX‖ ‖YᵀY‖), columns centred."""
    X = X.double() - X.double().mean(0)
    Y = Y.double() - Y.double().mean(0)
    return float((Y.T @ X).norm() ** 2 / ((X.T @ X).norm() * (Y.T @ Y).norm()))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cov_cosine_dense_and_lowrank_equal_slow_definition(seed):
    g = gen(seed)
    k, r = 17, 3
    L, R = torch.randn(k, r, generator=g, dtype=torch.float64), torch.randn(k, r, generator=g, dtype=torch.float64)
    Tm = torch.randn(k, k, generator=g, dtype=torch.float64) + 0.5
    X = L @ R.T
    slow = slow_cov_cosine(X, Tm)
    assert abs(cov_cosine_dense(X, Tm) - slow) < 1e-12
    assert abs(cov_cosine_lowrank(L, R, Target.build(Tm)) - slow) < 1e-12
    # torch.cov treats rows as variables: the same definition once more
    assert abs(fro_cos(torch.cov(X), torch.cov(row_normalise(Tm))) - slow) < 1e-12
    # representations (k x d, R=None)
    H = torch.randn(k, 5, generator=g, dtype=torch.float64)
    assert abs(cov_cosine_lowrank(H, None, Target.build(Tm)) - slow_cov_cosine(H, Tm)) < 1e-12


@pytest.mark.parametrize("seed", [0, 1])
def test_cka_dense_and_lowrank_equal_feature_space_formula(seed):
    g = gen(seed)
    k, r = 15, 4
    L, R = torch.randn(k, r, generator=g, dtype=torch.float64), torch.randn(k, r, generator=g, dtype=torch.float64)
    Tm = torch.randn(k, k, generator=g, dtype=torch.float64)
    X = L @ R.T
    slow = slow_cka(X, row_normalise(Tm))
    assert abs(cka_dense(X, Tm) - slow) < 1e-12
    assert abs(cka_lowrank(L, R, Target.build(Tm)) - slow) < 1e-12
    H = torch.randn(k, 6, generator=g, dtype=torch.float64)
    assert abs(cka_lowrank(H, None, Target.build(Tm)) - slow_cka(H, row_normalise(Tm))) < 1e-12
    # CKA is invariant to orthogonal transforms and isotropic scaling of the features, cov cosine is a different measure
    Qo, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    assert abs(cka_dense(3 * H @ Qo, Tm) - cka_dense(H, Tm)) < 1e-12
    assert abs(cka_dense(X, Tm) - cov_cosine_dense(X, Tm)) > 1e-3


def test_frob_cosine_lowrank_and_head_average():
    g = gen(4)
    k, r, H = 20, 3, 4
    Ls = torch.randn(H, k, r, generator=g, dtype=torch.float64)
    Rs = torch.randn(H, k, r, generator=g, dtype=torch.float64)
    Tm = torch.randn(k, k, generator=g, dtype=torch.float64)
    for h in range(H):
        assert abs(frob_cosine_lowrank(Ls[h], Rs[h], Tm) - fro_cos(Ls[h] @ Rs[h].T, Tm)) < 1e-12
    mean_S = sum(Ls[h] @ Rs[h].T for h in range(H)) / H
    Lcat, Rcat = torch.cat(list(Ls), 1) / H, torch.cat(list(Rs), 1)
    torch.testing.assert_close(Lcat @ Rcat.T, mean_S)
    assert abs(cov_cosine_lowrank(Lcat, Rcat, Target.build(Tm)) - cov_cosine_dense(mean_S, Tm)) < 1e-12


def test_similarity_can_fail_and_identity_is_one():
    g = gen(5)
    Tm = torch.randn(12, 12, generator=g, dtype=torch.float64)
    assert abs(cov_cosine_dense(row_normalise(Tm), Tm) - 1) < 1e-12
    assert cov_cosine_dense(Tm.T, Tm) < 0.9  # orientation matters
    assert abs(cka_dense(row_normalise(Tm), Tm) - 1) < 1e-12


def test_zero_norm_is_nan_with_warning():
    Tm = torch.randn(6, 6, generator=gen(0), dtype=torch.float64)
    with pytest.warns(UserWarning, match="zero norm"):
        assert math.isnan(cov_cosine_lowrank(torch.zeros(6, 2), torch.ones(6, 2), Target.build(Tm)))
    with pytest.warns(UserWarning, match="zero norm"):
        assert math.isnan(cka_dense(torch.ones(6, 3), Tm))  # constant rows: zero after centring
    with pytest.warns(UserWarning, match="zero norm"):
        assert math.isnan(frob_cosine_lowrank(torch.zeros(6, 2), torch.ones(6, 2), Tm))


def test_projection_is_least_squares():
    g = gen(6)
    atoms = {n: torch.randn(7, 7, generator=g, dtype=torch.float64) for n in "abc"}
    noise = torch.randn(7, 7, generator=g, dtype=torch.float64)
    W = 2 * atoms["a"] - 0.5 * atoms["b"] + 3 * atoms["c"]
    coef, proj = project(W, atoms)
    assert coef == pytest.approx({"a": 2, "b": -0.5, "c": 3}, abs=1e-10)
    torch.testing.assert_close(proj, W)
    # with noise: the normal equations hold (residual orthogonal to every atom)
    coef, proj = project(W + noise, atoms)
    for a in atoms.values():
        assert abs(float(((W + noise - proj) * a).sum())) < 1e-9
    A = torch.stack([a.reshape(-1) for a in atoms.values()], 1)
    ref = torch.linalg.lstsq(A, (W + noise).reshape(-1, 1)).solution.reshape(-1)
    assert list(coef.values()) == pytest.approx(ref.tolist(), abs=1e-10)


# ---------------------------------------------------------------------------
# toy model analysis
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy_setup():
    words = build_word_tokenizer([" ".join(f"w{chr(97 + i)}" for i in range(V - 2))] * 3)
    # a word vocabulary of exactly V entries to decode token pairs
    assert words.vocab_size == V
    toks = markov_tokens(V, T, N + 30, seed=3)  # one Markov chain: N training windows, 30 held out
    w = windows_from_tokens(toks[:N], V, tokenizer=words)
    basis = compute_basis(w, token_ids=list(range(V)), progress=False)
    model = ToyTransformer(ToyConfig(V, T, n_layers=2, dtype=torch.float64), tokenizer=words)
    eta, steps = 0.01, 6
    train_toy(model, w, lr=eta, steps=steps, progress=False)
    held = windows_from_tokens(toks[N:], V, tokenizer=words)
    return model, basis, w, held, eta, steps


def test_analyze_toy_recovers_leading_terms(toy_setup):
    model, basis, _, _, eta, steps = toy_setup
    df = analyze_toy(model, basis)
    assert list(df.columns) == COLUMNS
    for site, layer in [("W_O", None), ("V", 0), ("V", 1), ("W", 0), ("W", 1), ("P", 0), ("P", 1)]:
        sel = df[(df.site == site) & (df.layer.isna() if layer is None else df.layer == layer)]
        m = dict(zip(sel.measure + ":" + sel.target, sel.value))
        lead = {"W_O": "bigram", "V": "value", "W": "key_query", "P": "position"}[site]
        assert m[f"cosine:{lead}"] >= 0.9999, site
        assert m[f"explained:{lead}"] >= 0.9998, site
        # the least-squares coefficient is the theory's constant
        assert m[f"coef:{lead}"] == pytest.approx(leading_coefficient(site, steps, eta), rel=2e-2), site
        assert m[f"residual_rel_norm:{lead}"] < 1e-2
    pairs = df[(df.site == "W_O") & (df.measure == "residual_pair")]
    assert len(pairs) == 5 and pairs.detail.str.contains("->").all() and pairs.detail.str.contains("w").any()
    assert (df[df.measure == "residual_sv"].detail.str.contains("rows")).all()


def test_analyze_toy_dictionary_and_sub_block(toy_setup):
    model, basis, w, _, _, _ = toy_setup
    full = analyze_toy(model, basis)
    dic = analyze_toy(model, basis, dictionary=True)
    assert set(dic[dic.site == "V"].target[dic.measure == "coef"]) >= {"value", "value.T", "identity", "ones", "bigram"}
    e_lead = full[(full.site == "V") & (full.layer == 0) & (full.measure == "explained")].value.item()
    e_dic = dic[(dic.site == "V") & (dic.layer == 0) & (dic.measure == "explained")].value.item()
    assert e_dic >= e_lead - 1e-12
    # a k < |V| basis is compared on the k x k sub-block of the full weights
    sub = compute_basis(w, token_ids=[3, 0, 7, 5, 1], progress=False)
    df = analyze_toy(model, sub)
    ids = torch.tensor([3, 0, 7, 5, 1])
    Vs = model.V(0).detach()[ids][:, ids]
    c = df[(df.site == "V") & (df.layer == 0) & (df.measure == "cosine_leading")].value.item()
    assert c == pytest.approx(fro_cos(Vs, sub.value), abs=1e-12)
    coef = df[(df.site == "V") & (df.layer == 0) & (df.measure == "coef")].value.item()
    assert coef == pytest.approx(float((Vs * sub.value).sum() / (sub.value ** 2).sum()), rel=1e-10)


def test_zero_model_gives_nan_not_crash(toy_setup):
    _, basis, _, _, _, _ = toy_setup
    zero = ToyTransformer(ToyConfig(V, T, n_layers=1))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        df = analyze_toy(zero, basis)
    assert any("zero norm" in str(r.message) for r in rec)
    assert df[df.measure == "cosine"].value.isna().all()


def test_toy_nonfinite_weights_name_layer_and_head(toy_setup):
    model, basis, _, _, _, _ = toy_setup
    bad = ToyTransformer(ToyConfig(V, T, n_layers=2, dtype=torch.float64))
    with torch.no_grad():
        bad.V(1)[2, 3] = float("nan")
    with pytest.raises(LeadTermError, match=r"W_V of layer 1 head 0"):  # the toy's V.1 is its W_V of layer 1
        analyze_toy(bad, basis)


def test_toy_vocab_mismatch_and_k_too_large(toy_setup):
    _, basis, _, _, _, _ = toy_setup
    small = ToyTransformer(ToyConfig(8, T, n_layers=1))
    with pytest.raises(LeadTermError, match="k=12 tokens but the model's vocabulary has only 8"):
        analyze_toy(small, basis)
    bigger = ToyTransformer(ToyConfig(20, T, n_layers=1))
    with pytest.raises(LeadTermError, match="vocabulary of 12 tokens but the model has 20"):
        analyze_toy(bigger, basis)


def test_toy_causal_check_leading_matters_more_than_random(toy_setup):
    model, basis, _, held, _, _ = toy_setup
    before = {k: v.detach().clone() for k, v in model.weights().items()}
    df = causal_check(model, basis, held, seeds=4, progress=False)
    for k, v in model.weights().items():  # weights restored
        assert torch.equal(v.detach(), before[k])
    wo = df[df.site == "W_O"]
    m = dict(zip(wo.measure, wo.value))
    assert m["delta_leading"] > 0
    assert m["delta_leading"] > m["delta_random_mean"] + 3 * m["delta_random_sd"]
    # the removed component is c·B̄ with c = <W_O, B̄>/‖B̄‖² (here the basis covers the whole vocabulary)
    c = float((model.W_O.detach() * basis.bigram).sum() / (basis.bigram ** 2).sum())
    assert m["coefficient"] == pytest.approx(c, rel=1e-12)
    assert m["removed_norm"] == pytest.approx(abs(c) * float(basis.bigram.norm()), rel=1e-12)
    assert set(df.site) == {"W_O", "V", "W", "P"}


def test_quick_measures_toy(toy_setup):
    model, basis, _, _, _, _ = toy_setup
    q = quick_measures(model, basis)
    assert set(q) == {"W_O/cosine", "V/L0/cosine", "V/L1/cosine", "W/L0/cosine", "W/L1/cosine", "P/L0/cosine", "P/L1/cosine"}
    with pytest.warns(DeprecationWarning):      # the keys of earlier releases still read
        assert q["L1/W/cosine"] == q["W/L1/cosine"]
    assert min(q.values()) > 0.9999


def test_family_gram_algebra_equals_dense():
    """The per-head O(d² r) path (shared bases) equals the dense k x k computation."""
    from tl_leadterm.analysis import Factored, Family
    g = gen(9)
    k, d, r = 25, 8, 3
    BL, BR = torch.randn(k, d, generator=g, dtype=torch.float64), torch.randn(k, d, generator=g, dtype=torch.float64) + 0.3
    Tm = torch.randn(k, k, generator=g, dtype=torch.float64)
    fam = Family(BL, BR, Target.build(Tm), plain=True)
    for _ in range(3):
        ML, MR = torch.randn(d, r, generator=g, dtype=torch.float64), torch.randn(d, r, generator=g, dtype=torch.float64)
        X = BL @ ML @ MR.T @ BR.T
        m = fam.measure(Factored(ML, MR.T))
        assert m["cov_cosine"] == pytest.approx(slow_cov_cosine(X, Tm), abs=1e-10)
        assert m["cka"] == pytest.approx(slow_cka(X, row_normalise(Tm)), abs=1e-10)
        assert m["cosine"] == pytest.approx(fro_cos(X, Tm), abs=1e-10)


def test_factored_algebra_equals_dense():
    from tl_leadterm.analysis import Factored
    g = gen(11)
    A, B = torch.randn(7, 3, generator=g, dtype=torch.float64), torch.randn(3, 5, generator=g, dtype=torch.float64)
    E = torch.randn(4, 7, generator=g, dtype=torch.float64)
    X = Factored(A, B)
    assert X.shape == (7, 5) and X.rank == 3
    assert torch.allclose((E @ X @ B.T).dense(), E @ A @ B @ B.T, atol=1e-12)
    assert torch.allclose(X.T.dense(), (A @ B).T, atol=1e-12)
    assert float(X.norm()) == pytest.approx(float((A @ B).norm()), rel=1e-12)
    heads_l, heads_r = torch.randn(3, 7, 2, generator=g, dtype=torch.float64), torch.randn(3, 2, 5, generator=g, dtype=torch.float64)
    mean = sum(heads_l[h] @ heads_r[h] for h in range(3)) / 3
    assert torch.allclose(Factored.head_mean(heads_l, heads_r).dense(), mean, atol=1e-12)
    assert [tuple(x.shape) for x in Factored.heads(heads_l, heads_r)] == [(7, 5)] * 3
    with pytest.raises(LeadTermError, match="do not multiply"):
        Factored(A, A)


def test_projection_is_the_least_squares_fit():
    from tl_leadterm.analysis import projection
    g = gen(12)
    B = torch.randn(5, 5, generator=g, dtype=torch.float64)
    R = torch.randn(5, 5, generator=g, dtype=torch.float64)
    R -= (R * B).sum() / (B * B).sum() * B          # orthogonal to B
    fit = projection(3.0 * B + R, {"b": B})
    assert fit.coef["b"] == pytest.approx(3.0, rel=1e-12)
    assert torch.allclose(fit.residual, R, atol=1e-12)
    assert fit.explained() == pytest.approx(float((3 * B).norm() ** 2 / (3 * B + R).norm() ** 2), rel=1e-12)
