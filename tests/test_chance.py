"""Chance levels and signs: the d x d Gram path against dense computations, nulls equal to explicit draws and
reproducible, and planted signals (and their opposites) found in a random Pythia-architecture model."""

import warnings

import pytest
import torch

from tl_leadterm import compute_basis, load_corpus
from tl_leadterm.analysis import analyze_model, rank_heads
from tl_leadterm.analysis import Factored
from tl_leadterm.analysis.chance import SiteFit
from tl_leadterm.models import ModelAdapter, load_model, save_random_pythia

pytestmark = pytest.mark.usefixtures("one_thread")


def centred(X):
    return X - X.mean(dim=1, keepdim=True)


def dense_cos(X, T):
    Xc, Tc = centred(X), centred(T)
    return float((Xc * Tc).sum() / (Xc.norm() * Tc.norm()))


def rand(*shape, g):
    return torch.randn(*shape, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("k,d,r", [(40, 6, 2), (25, 8, 8)])
def test_gram_path_equals_dense(k, d, r):
    g = torch.Generator().manual_seed(k)
    L, R, T = rand(k, d, g=g), rand(d, k, g=g) + 3.0, rand(k, k, g=g)      # R with large row offsets
    M, N = rand(3, d, r, g=g), rand(3, r, d, g=g)
    sf = SiteFit(L, R, {"t": T, "model:t": T})
    got = sf.measure(M, N)
    Tm = (L @ L.T) @ T @ (R.T @ R)
    for h in range(3):
        X = L @ M[h] @ N[h] @ R
        for name, tgt in (("t", T), ("model:t", Tm)):
            c = dense_cos(X, tgt)
            assert float(got[name]["signed_cosine"][h]) == pytest.approx(c, rel=1e-9, abs=1e-12)
            assert float(got[name]["explained"][h]) == pytest.approx(c * c, rel=1e-9, abs=1e-12)
            Tc = centred(tgt)
            coef = float((centred(X) * Tc).sum() / (Tc * Tc).sum())
            assert float(got[name]["coef"][h]) == pytest.approx(coef, rel=1e-9)


def test_null_equals_explicit_draws_and_is_reproducible():
    k, d, r, n = 30, 5, 2, 40
    g = torch.Generator().manual_seed(0)
    L, R, T = rand(k, d, g=g), rand(d, k, g=g), rand(k, k, g=g)
    sf = SiteFit(L, R, {"t": T})
    per, avg = sf.null("product", r, n, seed=7, heads=3)
    # the same draws, made explicitly in the model's coordinates: P = V (M'' N'') Wᵀ, X = L P R, dense cosine
    g2 = torch.Generator().manual_seed(7)
    P2 = rand(n, d, r, g=g2) @ rand(n, r, d, g=g2)
    explicit = sorted(dense_cos(L @ (sf.V @ P2[i] @ sf.W.T) @ R, T) for i in range(n))
    assert per["t"].draws.tolist() == pytest.approx(explicit, rel=1e-9, abs=1e-12)
    idx = torch.stack([torch.randperm(n, generator=g2)[:3] for _ in range(n)])
    explicit_avg = sorted(dense_cos(L @ (sf.V @ P2[i].mean(0) @ sf.W.T) @ R, T) for i in idx)
    assert avg["t"].draws.tolist() == pytest.approx(explicit_avg, rel=1e-9, abs=1e-12)
    again = sf.null("product", r, n, seed=7, heads=3)
    assert torch.equal(again[0]["t"].draws, per["t"].draws) and torch.equal(again[1]["t"].draws, avg["t"].draws)
    other = sf.null("product", r, n, seed=8, heads=3)
    assert not torch.equal(other[0]["t"].draws, per["t"].draws)
    place = per["t"].place(float(per["t"].draws[10]) + 1e-12)
    assert place["percentile"] == pytest.approx(11 / n)
    assert place["null_q05"] <= place["null_mean"] <= place["null_q95"]


# ---------------------------------------------------------------------------
# planted signals in a random Pythia-architecture model
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def corpus():
    return load_corpus("builtin:stories", seq_len=16)


@pytest.fixture(scope="module")
def basis(corpus):
    return compute_basis(corpus, top_k=corpus.vocab_size, progress=False)


def _random_adapter(corpus, tmp_path_factory, seed):
    d = tmp_path_factory.mktemp(f"rand{seed}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = save_random_pythia(d / "m", corpus.tokenizer, n_layers=2, d_model=32, n_heads=4, vocab_size=corpus.vocab_size,
                               seed=seed)
        return load_model(str(p), dtype=torch.float64)


class Planted(ModelAdapter):
    """A random model with some heads' products replaced (the analysis reads weights through the adapter)."""

    def __init__(self, ad, plants):
        super().__init__(ad.model, ad.kind, ad.name, ad.checkpoint, ad.tokenizer, token_space=ad.token_space, folded=ad.folded)
        self.plants = plants     # {(layer, circuit, head): (W_V, W_O) or (W_Q, W_K)}

    def _planted(self, layer, circuit, which, base):
        W = base.clone()
        for (l, c, h), (M, N) in self.plants.items():
            if l == layer and c == circuit:
                W[h] = M if which == 0 else N
        return W

    def W_V(self, l):
        return self._planted(l, "ov", 0, super().W_V(l))

    def W_O(self, l):
        return self._planted(l, "ov", 1, super().W_O(l))

    def W_Q(self, l):
        return self._planted(l, "qk", 0, super().W_Q(l))

    def W_K(self, l):
        return self._planted(l, "qk", 1, super().W_K(l))


def best_rank_fit(L, R, T, r):
    """The rank-r P minimising ‖L P R̃ - T̃‖ (row-centred), as factors (d x r, r x d)."""
    Rc = R - R.mean(1, keepdim=True)
    Ul, Sl, Vlt = torch.linalg.svd(L, full_matrices=False)
    Ur, Sr, Vrt = torch.linalg.svd(Rc, full_matrices=False)
    Y = Ul.T @ centred(T) @ Vrt.T
    U, S, Vt = torch.linalg.svd(Y)
    Yr = U[:, :r] * S[:r] @ Vt[:r]
    P = Vlt.T @ torch.diag(1 / Sl) @ Yr @ torch.diag(1 / Sr) @ Ur.T
    U, S, Vt = torch.linalg.svd(P)
    return U[:, :r] * S[:r], Vt[:r]


def test_planted_heads_are_found_and_the_others_are_chance(corpus, basis, tmp_path_factory):
    ad = _random_adapter(corpus, tmp_path_factory, 0)
    ids = basis.token_ids
    E, U = ad.W_E.double()[ids], ad.W_U.double()[:, ids]
    r = ad.d_head
    Mp, Np = best_rank_fit(E, U, basis.value_output.double(), r)
    Mq, Nq = best_rank_fit(E, E.T, basis.key_query.double(), r)
    plants = {(1, "ov", 2): (Mp, Np), (0, "ov", 1): (-Mp, Np), (1, "qk", 0): (Mq, Nq.T), (0, "qk", 3): (-Mq, Nq.T)}
    pl = Planted(ad, plants)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = analyze_model(pl, basis, "planted", progress=False, null_draws=300, n_singular=0, top=1)
    sc = df[(df.measure == "signed_cosine") & df["head"].notna()]

    def pct(site, target, l, h):
        s = sc[(sc.site == site) & (sc.target == target) & (sc.layer == l) & (sc["head"] == h)]
        return float(s.percentile.iloc[0]), float(s.value.iloc[0])

    p, v = pct("circuit_ov", "value_output", 1, 2)
    assert p >= 0.99 and v > 0.2
    p, v = pct("circuit_ov", "value_output", 0, 1)
    assert p <= 0.01 and v < -0.2
    p, v = pct("circuit_qk", "key_query", 1, 0)
    assert p >= 0.99 and v > 0.2
    p, v = pct("circuit_qk", "key_query", 0, 3)
    assert p <= 0.01 and v < -0.2
    ranking = rank_heads(df)
    ov = ranking[ranking.site == "circuit_ov"]
    assert ov.above_chance.sum() == 1 and (ov[ov.above_chance][["layer", "head"]].values.tolist() == [[1, 2]])
    assert ov[ov.anti_aligned][["layer", "head"]].values.tolist() == [[0, 1]]
    qk = ranking[ranking.site == "circuit_qk"]
    assert qk[qk.above_chance][["layer", "head"]].values.tolist() == [[1, 0]]
    assert qk[qk.anti_aligned][["layer", "head"]].values.tolist() == [[0, 3]]
    # ranked by percentile (then distance from the null): the planted heads first and last
    assert ov.iloc[0][["layer", "head"]].tolist() == [1, 2] and ov.iloc[-1][["layer", "head"]].tolist() == [0, 1]
    assert ov.iloc[0].null_z > 5 and ov.iloc[-1].null_z < -5
    assert not ranking[(ranking.site == "circuit_ov") & ranking.above_chance].empty
    # a negative coefficient is never "explained" in the ranking's flags
    assert not ranking[(ranking.signed_cosine < 0) & ranking.above_chance].any().any()
    # the summary (and the report's findings) name the planted heads, and no other as the best
    from tl_leadterm.analysis import summary, write_results
    from tl_leadterm.report import build_report

    summ = summary(df).set_index(["lens", "site"])
    assert summ.loc[("weights", "circuit_ov"), "best"] == "L1H2" and summ.loc[("weights", "circuit_ov"), "above_chance"] == 1
    assert summ.loc[("weights", "circuit_qk"), "best"] == "L1H0"
    assert "anti-aligned" in summ.loc[("weights", "circuit_ov"), "sentence"]
    assert summ.loc[("weights", "circuit_ov"), "most_anti"] == "L0H1"
    assert summ.loc[("weights", "circuit_qk"), "most_anti"] == "L0H3"
    assert summ.loc[("weights", "circuit_ov"), "best_family_p"] < 0.05
    from tl_leadterm.analysis.findings import featured
    assert [(w, r.layer, r["head"]) for w, r in featured(df, "circuit_ov")] == [("best", 1, 2), ("most anti-aligned", 0, 1)]
    out = tmp_path_factory.mktemp("planted_report")
    write_results(df, out)
    html = build_report(out, out / "report.html").read_text(encoding="utf-8")
    assert "Findings: Analysis" in html and "best L1H2" in html and "best L1H0" in html
    for other in ("L0H0", "L0H2", "L0H3", "L1H1", "L1H3"):
        assert f"best {other} " not in html
    # the findings come first, before any per-table section; the featured residuals are the planted heads'
    assert html.index(">Findings: Analysis</h3>") < html.index(">Analysis (analysis.csv)</h2>")
    assert "the best OV head L1H2" in html and "the most anti-aligned OV head L0H1" in html
    for other in ("L0H0", "L0H2", "L0H3", "L1H0", "L1H1", "L1H3"):
        assert f"OV head {other}" not in html


def test_a_random_model_features_no_head(corpus, basis, tmp_path_factory):
    """Nothing planted: the summary calls every site chance (or at most a lean), names no head, and the report
    features none (ranking, summary and report agree)."""
    from tl_leadterm.analysis import summary, write_results
    from tl_leadterm.analysis.findings import featured
    from tl_leadterm.report import build_report

    ad = _random_adapter(corpus, tmp_path_factory, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = analyze_model(ad, basis, "init", progress=False, null_draws=200, n_singular=1, top=2,
                           sites="circuit_ov,circuit_qk,key_query")
    summ = summary(df)
    assert set(summ.best) <= {"none beyond chance", "none stands out"} and set(summ.most_anti) == {""}
    assert summ.expected_by_chance.tolist() == pytest.approx((0.05 * summ.tested).tolist()) and (summ.tested == 8).all()
    assert all("no head is featured" in t or "no single head stands out" in t for t in summ.sentence)
    assert featured(df, "circuit_ov") == []
    out = tmp_path_factory.mktemp("random_report")
    write_results(df, out)
    html = build_report(out, out / "report.html").read_text(encoding="utf-8")
    assert "No OV head stands out" in html and "OV head L" not in html


def test_family_statistics_against_direct_computations():
    import math
    from statistics import NormalDist

    from tl_leadterm.analysis.findings import binomial_tail, family_p
    from tl_leadterm.analysis.heads import null_z

    for n, m in ((8, 0), (8, 1), (8, 3), (40, 5), (64, 7), (3, 4)):
        direct = sum(math.comb(n, j) * 0.05 ** j * 0.95 ** (n - j) for j in range(m, n + 1))
        assert binomial_tail(n, m) == pytest.approx(min(1.0, direct), rel=1e-12, abs=1e-15)
    assert 0 < binomial_tail(5000, 300) < 1e-2          # large n: no overflow
    assert family_p(3.0, 8) == pytest.approx(8 * (1 - NormalDist().cdf(3.0)), rel=1e-12)
    assert family_p(0.1, 100) == 1.0 and math.isnan(family_p(float("nan"), 3))
    # the null's sd from its 5th and 95th percentiles: exact for a Gaussian
    assert null_z(1.0 + 2 * 0.3, 1.0, 1.0 - 1.6448536 * 0.3, 1.0 + 1.6448536 * 0.3) == pytest.approx(2.0, rel=1e-6)
    assert math.isnan(null_z(1.0, 0.0, 0.5, 0.5))


def test_the_signed_cosine_null_has_a_gaussian_tail():
    """What null_z assumes: over many draws of one null, the share beyond z = 2.33 (z from the null's own q05/q95)
    is close to a Gaussian's 1%, and beyond 3.09 close to 0.1%."""
    from tl_leadterm.analysis.heads import null_z

    k, d, r, n = 60, 16, 4, 20000
    g = torch.Generator().manual_seed(3)
    L, R, T = rand(k, d, g=g), rand(d, k, g=g), rand(k, k, g=g)
    per, _ = SiteFit(L, R, {"t": T}).null("product", r, n, seed=1, heads=1)
    x = per["t"].draws
    q05, q95 = float(torch.quantile(x, 0.05)), float(torch.quantile(x, 0.95))
    z = torch.tensor([null_z(float(v), float(x.mean()), q05, q95) for v in x])
    assert 0.006 <= float((z > 2.326).double().mean()) <= 0.016
    assert float((z > 3.09).double().mean()) <= 0.003


def test_random_heads_spread_as_chance_predicts(corpus, basis, tmp_path_factory):
    """Unplanted heads of random models: percentiles roughly uniform (about 5% at or above 0.95)."""
    pcts = []
    for seed in (1, 2, 3):
        ad = _random_adapter(corpus, tmp_path_factory, seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            df = analyze_model(ad, basis, "r", progress=False, null_draws=200, n_singular=0, top=1,
                               sites="circuit_ov,circuit_qk,circuit_ov_embed", model_targets=False)
        s = df[(df.measure == "signed_cosine") & df["head"].notna()]
        pcts += s.percentile.tolist()
    t = torch.tensor(pcts)
    assert len(pcts) == 3 * 2 * 4 * 5
    # about 5% in each tail, not fewer (a null too wide) and not more (too narrow); uniform overall
    assert 0.01 <= float((t >= 0.95).double().mean()) <= 0.12
    assert 0.01 <= float((t <= 0.05).double().mean()) <= 0.12
    assert 0.4 <= float(t.mean()) <= 0.6 and 0.22 <= float(t.std()) <= 0.36
    ecdf = torch.arange(1, len(t) + 1, dtype=torch.float64) / len(t)
    assert float((t.sort().values - ecdf).abs().max()) <= 0.15          # Kolmogorov-Smirnov distance to uniform


def test_similarity_nulls_equal_explicit_draws():
    """The batched similarity nulls are the measures of explicit Gaussian draws (same generator, same order)."""
    from tl_leadterm.analysis.chance import family_null, representation_null
    from tl_leadterm.analysis.measures import Family, Target, similarities

    k, d, r, n = 30, 6, 2, 12
    g = torch.Generator().manual_seed(1)
    BL, BR, T = rand(k, d, g=g), rand(k, d, g=g), rand(k, k, g=g)
    tg = Target.build(T)
    fam = Family(BL, BR, tg, plain=True)
    per, avg = family_null(fam, d, "product", r, n, seed=5, heads=3)
    g2 = torch.Generator().manual_seed(5)
    M, N = rand(n, d, r, g=g2), rand(n, r, d, g=g2)
    for m in ("cov_cosine", "cka", "cosine"):
        explicit = sorted(fam.measure(Factored(M[i], N[i]))[m] for i in range(n))
        assert per[m].draws.tolist() == pytest.approx(explicit, rel=1e-9, abs=1e-12)
    Ma, Na = rand(n, d, 3 * r, g=g2) / 3, rand(n, 3 * r, d, g=g2)
    explicit = sorted(fam.measure(Factored(Ma[i], Na[i]))["cov_cosine"] for i in range(n))
    assert avg["cov_cosine"].draws.tolist() == pytest.approx(explicit, rel=1e-9, abs=1e-12)
    rep = representation_null(BL, tg, n, seed=9)
    g3 = torch.Generator().manual_seed(9)
    G = rand(n, d, d, g=g3)
    for m in ("cov_cosine", "cka"):
        explicit = sorted(similarities(BL @ G[i], tg)[m] for i in range(n))
        assert rep[m].draws.tolist() == pytest.approx(explicit, rel=1e-9, abs=1e-12)


def test_fit_circuit_takes_a_transformer_lens_factored_matrix(corpus, basis, tmp_path_factory):
    """fit_circuit(E @ FactoredMatrix(W_V, W_O) @ U) per head equals analyze_model's circuit_ov rows."""
    from transformer_lens import FactoredMatrix

    from tl_leadterm import fit_circuit

    ad = _random_adapter(corpus, tmp_path_factory, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = analyze_model(ad, basis, "", progress=False, null_draws=0, sites="circuit_ov", top=3, n_singular=2)
    ids = basis.token_ids
    E, U = ad.W_E.double()[ids], ad.W_U.double()[:, ids]
    l = 1
    X = E @ FactoredMatrix(ad.W_V(l).double(), ad.W_O(l).double()) @ U          # [heads, k, k], factored
    got = fit_circuit(X, basis, "value_output", top=3, n_singular=2)
    for h in range(ad.n_heads):
        for m in ("signed_cosine", "coef", "explained", "residual_norm", "residual_rel_norm", "residual_pair", "residual_sv"):
            want = df[(df.layer == l) & (df["head"] == h) & (df.measure == m) & (df.lens == "weights")
                      & df.target.isin(["value_output", ""])].value.to_numpy()
            have = got[(got["head"] == h) & (got.measure == m)].value.to_numpy()
            assert have == pytest.approx(want, rel=1e-9, abs=1e-15), (h, m)
    dense = fit_circuit((E @ ad.W_V(l)[0].double() @ ad.W_O(l)[0].double() @ U), basis, "value_output", top=3, n_singular=2)
    assert dense[dense.measure == "explained"].value.item() == pytest.approx(
        got[(got["head"] == 0) & (got.measure == "explained")].value.item(), rel=1e-9)


def test_representations_from_an_activation_cache(corpus, basis, tmp_path_factory):
    """measure_representations on the user's own ActivationCache equals analyze_model's resid rows, with a null."""
    from tl_leadterm.analysis import measure_representations

    ad = _random_adapter(corpus, tmp_path_factory, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = analyze_model(ad, basis, "", progress=False, null_draws=50, sites="resid_pre,resid_post")
        _, cache = ad.run_with_cache(basis.token_ids[:, None])
    got = measure_representations(cache, basis, embeddings=ad.W_E, null_draws=50)
    for l in range(ad.n_layers):
        for site in ("resid_pre", "resid_post"):
            want = df[(df.site == site) & (df.layer == l) & (df.measure == "cov_cosine")]
            have = got[(got.site == f"blocks.{l}.hook_{site}") & (got.measure == "cov_cosine")]
            assert have.value.item() == pytest.approx(want.value.item(), rel=1e-9)
            assert have.percentile.item() == pytest.approx(want.percentile.item())


def test_retention_finds_when_a_layer_falls_below_the_threshold_and_to_chance():
    import pandas as pd

    from tl_leadterm.analysis import retention
    from tl_leadterm.analysis.table import frame, row

    rows = []
    for step, (v0, p0, v1, p1) in {0: (0.1, 0.5, 0.2, 0.6), 1: (0.9, 1.0, 0.3, 0.97), 4: (0.8, 1.0, 0.5, 0.99),
                                    16: (0.6, 0.99, 0.6, 1.0), 64: (0.2, 0.5, 0.65, 1.0)}.items():
        for layer, v, p in ((0, v0, p0), (1, v1, p1)):
            rows.append(row(f"step{step}", layer, None, "circuit_ov", "signed_cosine", v, "value_output", "", True,
                            percentile=p, null_q05=-0.1, null_q95=0.1, null_mean=0.0))
    r = retention(frame(rows), threshold=0.7).set_index("layer")
    assert r.loc[0, "peak_checkpoint"] == "step1" and r.loc[0, "below_threshold_at"] == "step16"
    assert r.loc[0, "at_chance_at"] == "step64"
    assert r.loc[1, "below_threshold_at"] == "never reached" and r.loc[1, "at_chance_at"] == "retained"
    assert isinstance(r, pd.DataFrame)
