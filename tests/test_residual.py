"""Projection modulo row offsets and the residual beyond the leading term, per head: every measure against a
dense recomputation from TransformerLens' own weights, and the toy model through the same code path."""

import math
import warnings

import pandas as pd
import pytest
import torch

from reference import N, T, V, markov_tokens
from tl_leadterm import LeadTermError, compute_basis, load_corpus, windows_from_tokens
from tl_leadterm.analysis import Factored, analyze_model, rank_heads
from tl_leadterm.analysis.heads import DICTIONARY, HEAD_SITES
from tl_leadterm.analysis.residual import Atoms, fit
from tl_leadterm.models import load_model
from tl_leadterm.theory import SITES
from tl_leadterm.toy import ToyConfig, ToyTransformer

pytestmark = pytest.mark.usefixtures("one_thread")


def centred(X):
    return X - X.mean(dim=1, keepdim=True)


def dense_fit(X, atoms: dict):
    """The direct computation: centre rows, least squares on the centred atoms, the residual in full."""
    Xc = centred(X.double())
    M = torch.stack([centred(a.double()).reshape(-1) for a in atoms.values()], dim=1)
    c = torch.linalg.pinv(M) @ Xc.reshape(-1)
    proj = (M @ c).reshape(Xc.shape)
    R = Xc - proj
    return {"coef": c, "explained": float(proj.norm() ** 2 / Xc.norm() ** 2), "residual_norm": float(R.norm()),
            "residual_rel_norm": float(R.norm() / Xc.norm()), "R": R}


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------
# the fit itself
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("k,r,dense_below", [(30, 4, 256), (300, 6, 0)])
def test_fit_equals_dense(k, r, dense_below):
    g = gen(k)
    A, B = torch.randn(k, r, generator=g, dtype=torch.float64), torch.randn(r, k, generator=g, dtype=torch.float64)
    Tm = torch.randn(k, k, generator=g, dtype=torch.float64)
    X = A @ B + 0.5 * Tm                       # a head with a real leading-term component
    Xf = Factored(torch.cat([A, Tm], 1), torch.cat([B, 0.5 * torch.eye(k, dtype=torch.float64)]))   # = X, factored
    f = fit(Xf, Atoms.build({"t": Tm}), top=4, n_singular=3, block=64, dense_below=dense_below, sv_iters=200)
    d = dense_fit(X, {"t": Tm})
    assert f.coef["t"] == pytest.approx(float(d["coef"][0]), rel=1e-8)
    for m in ("explained", "residual_norm", "residual_rel_norm"):
        assert getattr(f, m) == pytest.approx(d[m], rel=1e-8)
    flat = d["R"].reshape(-1)
    top = flat.abs().topk(4).indices
    assert [(a, b) for _, a, b in f.pairs] == [(int(i) // k, int(i) % k) for i in top]      # blocks find the dense argmax
    assert [v for v, _, _ in f.pairs] == pytest.approx(flat[top].tolist(), rel=1e-10)
    S = torch.linalg.svdvals(d["R"])[:3]
    assert [s for s, _, _ in f.singular] == pytest.approx(S.tolist(), rel=1e-8)
    for s, u, v in f.singular:
        assert float((d["R"] @ v - s * u).norm()) <= 1e-6 * s               # genuine singular pairs


def test_target_plus_row_offsets_is_explained_exactly():
    g = gen(5)
    k = 20
    Tm = torch.randn(k, k, generator=g, dtype=torch.float64)
    offsets = torch.randn(k, 1, generator=g, dtype=torch.float64)
    X = 2.5 * Tm + offsets                                       # softmax cannot tell it from 2.5 T
    f = fit(Factored(X, torch.eye(k, dtype=torch.float64)), Atoms.build({"t": Tm}))
    assert f.coef["t"] == pytest.approx(2.5, rel=1e-12)
    assert f.explained == pytest.approx(1.0, abs=1e-12) and f.residual_norm == pytest.approx(0.0, abs=1e-10)
    assert f.singular == []


def test_zero_head_is_nan_with_a_warning():
    k = 10
    Tm = torch.randn(k, k, generator=gen(1), dtype=torch.float64)
    with pytest.warns(UserWarning, match="zero norm"):
        f = fit(Factored(torch.zeros(k, 2, dtype=torch.float64), torch.zeros(2, k, dtype=torch.float64)), Atoms.build({"t": Tm}))
    assert math.isnan(f.explained) and math.isnan(f.residual_rel_norm) and f.coef["t"] == 0.0


# ---------------------------------------------------------------------------
# a real model, against its TransformerLens weights
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def adapter(tiny_pythia_dir):
    return load_model(tiny_pythia_dir, dtype=torch.float64)


@pytest.fixture(scope="module")
def basis(tiny_pythia_dir, shared_data):
    w = load_corpus(shared_data / "tinystories-valid-head.txt", seq_len=16, tokenizer=str(tiny_pythia_dir),
                    vocab_size=50304, max_docs=60)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return compute_basis(w, top_k=40, progress=False)


@pytest.fixture(scope="module")
def table(adapter, basis):
    return analyze_model(adapter, basis, progress=False)


def _mats(adapter, basis, l, h):
    """The matrices a site's dense formula reads (:attr:`Site.dense`), straight from TransformerLens' own weights
    and cache (not through the package's adapter geometry)."""
    m, ids = adapter.model, basis.token_ids
    attn = m.blocks[l].attn
    _, cache = m.run_with_cache(ids[:, None])
    out = {n: getattr(attn, n).detach().double()[h] for n in ("W_Q", "W_K", "W_V", "W_O")}
    out.update(E=m.W_E.detach().double()[ids], U=m.W_U.detach().double()[:, ids],
               A=cache[f"blocks.{l}.ln1.hook_normalized"][:, 0].double(), H=cache[f"blocks.{l}.hook_resid_pre"][:, 0].double())
    return out


def _dense_site(adapter, basis, l, h, site):
    s = SITES[site]
    return s.dense(_mats(adapter, basis, l, h)), getattr(basis, s.target)


def _val(df, site, measure, l, h, target=None):
    sel = (df.site == site) & (df.measure == measure) & (df.layer == l) & (df["head"] == h) & df.extension
    if target is not None:
        sel &= df.target == target
    return df[sel].value.to_numpy()


@pytest.mark.parametrize("site", HEAD_SITES)
def test_every_measure_equals_dense_from_transformer_lens_weights(adapter, basis, table, site):
    for l in range(adapter.n_layers):
        for h in range(adapter.n_heads):
            X, Tm = _dense_site(adapter, basis, l, h, site)
            d = dense_fit(X, {site: Tm})
            tgt = SITES[site].target
            assert _val(table, site, "coef", l, h, tgt)[0] == pytest.approx(float(d["coef"][0]), rel=1e-8)
            for m in ("explained", "residual_norm", "residual_rel_norm"):
                assert _val(table, site, m, l, h)[0] == pytest.approx(d[m], rel=1e-8), (site, l, h, m)
            flat = d["R"].reshape(-1)
            assert _val(table, site, "residual_pair", l, h) == pytest.approx(flat[flat.abs().topk(5).indices].tolist(), rel=1e-8)
            assert _val(table, site, "residual_sv", l, h) == pytest.approx(torch.linalg.svdvals(d["R"])[:3].tolist(), rel=1e-8)


def test_every_per_head_site_of_the_registry_equals_its_dense_formula(adapter, basis):
    """Adding a site is one registry entry (with its dense formula) and this test: every per-head site, default or
    not, analysed by name, equals its formula written out from TransformerLens' own weights."""
    from tl_leadterm.analysis import cka_dense, cov_cosine_dense

    names = [n for n, x in SITES.items() if x.per_head]
    assert "attn_ov" in names and all(SITES[n].dense is not None for n in SITES)
    df = analyze_model(adapter, basis, progress=False, sites=names, residuals=False, null_draws=0)
    assert set(df.site) == set(names)
    for site in names:
        for l in range(adapter.n_layers):
            for h in (0, adapter.n_heads - 1):
                X, Tm = _dense_site(adapter, basis, l, h, site)
                got = df[(df.site == site) & (df.layer == l) & (df["head"] == h) & (df.lens == "weights")]
                for m, ref in (("cov_cosine", cov_cosine_dense), ("cka", cka_dense)):
                    assert got[got.measure == m].value.item() == pytest.approx(ref(X, Tm), rel=1e-8, abs=1e-12), (site, l, h, m)


def test_head_average_and_direct_path(adapter, basis, table):
    m, ids = adapter.model, basis.token_ids
    E, U = m.W_E.detach().double()[ids], m.W_U.detach().double()[:, ids]
    for l in range(adapter.n_layers):
        attn = m.blocks[l].attn
        X = sum(E @ attn.W_V.detach().double()[h] @ attn.W_O.detach().double()[h] @ U for h in range(adapter.n_heads)) / adapter.n_heads
        d = dense_fit(X, {"v": basis.value_output})
        sel = ((table.site == "circuit_ov") & (table.measure == "explained") & (table.layer == l) & table["head"].isna()
               & (table.target == "value_output"))
        assert table[sel & table.extension].value.item() == pytest.approx(d["explained"], rel=1e-8)
    d = dense_fit(E @ U, {"b": basis.bigram})
    dp = table[(table.site == "direct_path") & (table.measure == "residual_norm")]
    assert dp.value.item() == pytest.approx(d["residual_norm"], rel=1e-8) and dp.layer.isna().all()


def test_pair_details_decode_tokens(table, basis):
    strs = basis.token_strs()
    det = table[(table.measure == "residual_pair") & (table.site == "circuit_ov")].detail.iloc[0]
    q, k = det.split(": ", 1)[1].split(" -> ")
    assert eval(q) in strs and eval(k) in strs  # noqa: S307 (repr of a token string)


def test_pairs_and_directions_have_join_columns(table, basis):
    """residual_pair / residual_sv rows carry rank, row_token and col_token beside the readable detail, and the
    table's integer columns join without fillna."""
    strs = basis.token_strs()
    cell = {(t if t.isprintable() else t.encode("unicode_escape").decode("ascii")): t for t in strs}  # '\n' escaped
    for m in ("residual_pair", "residual_sv"):
        rows = table[table.measure == m]
        assert len(rows) and rows["rank"].notna().all() and pd.api.types.is_integer_dtype(rows["rank"])
        for _, r in rows.head(12).iterrows():
            assert r.detail.startswith(f"#{int(r['rank'])}: ")
            a, b = cell[r.row_token], cell[r.col_token]
            if m == "residual_pair":
                assert r.detail == f"#{int(r['rank'])}: {a!r} -> {b!r}"
            else:
                rows_part, cols_part = r.detail.split(": ", 1)[1].split(" | ")
                assert rows_part.startswith(f"rows {a!r}") and cols_part.startswith(f"cols {b!r}")
    assert pd.api.types.is_integer_dtype(table["layer"]) and pd.api.types.is_integer_dtype(table["head"])
    per_head = table[table["head"].notna()]
    joined = per_head.merge(per_head, on=["checkpoint", "lens", "layer", "head", "site", "measure", "target", "rank"])
    assert len(joined) >= len(per_head)


def test_similarity_rows_stay(table):
    old = table[~table.extension & (table.site == "key_query")]
    assert set(old.measure) == {"cov_cosine", "cka"}


def test_dictionary_projection(adapter, basis):
    df = analyze_model(adapter, basis, progress=False, dictionary=True, n_singular=0)
    rows = df[(df.site == "circuit_ov") & (df.measure == "coef") & (df.layer == 0) & (df["head"] == 1)]
    assert list(rows.target) == list(DICTIONARY)
    assert rows[rows.target == "ones"].value.item() == pytest.approx(0.0, abs=1e-12)   # constant rows vanish modulo offsets
    X, _ = _dense_site(adapter, basis, 0, 1, "circuit_ov")
    eye = torch.eye(basis.k, dtype=torch.float64)
    atoms = dict(zip(DICTIONARY, (basis.key_query, basis.key_query.T, basis.interchange, basis.value,
                                  basis.value_output, basis.context.T, basis.bigram, eye, torch.ones_like(eye))))
    d = dense_fit(X, atoms)
    ex = df[(df.site == "circuit_ov") & (df.measure == "explained") & (df.layer == 0) & (df["head"] == 1)]
    # Φ̄ᵀ and Ḡ = Φ̄ᵀ ΣB̄ are nearly collinear on this corpus: the Gram-matrix solve squares the condition number
    assert ex.value.item() == pytest.approx(d["explained"], rel=1e-6)


def test_rank_heads(table, adapter):
    r = rank_heads(table)
    assert set(r.site) == set(HEAD_SITES) and len(r) == len(HEAD_SITES) * adapter.n_layers * adapter.n_heads
    for _, g in r.groupby(["site", "lens"]):
        assert list(g["rank"]) == list(range(1, len(g) + 1))
        # by percentile, then distance from the null (null_z), best first
        keys = list(zip(g.percentile, g.null_z))
        assert keys == sorted(keys, reverse=True)
        assert (g.explained == g.signed_cosine ** 2).all() or ((g.explained - g.signed_cosine ** 2).abs() < 1e-12).all()
        assert not (g.above_chance & (g.signed_cosine <= 0)).any()


def test_k_larger_than_the_model_vocabulary_is_refused(adapter):
    big = compute_basis(windows_from_tokens(torch.randint(0, 60000, (3, 9), generator=gen(0)), 60000),
                        top_k=3, mode="merge-other", progress=False)
    with pytest.raises(LeadTermError, match="vocabulary"):
        analyze_model(adapter, big, progress=False)


# ---------------------------------------------------------------------------
# the toy model through the same code path
# ---------------------------------------------------------------------------
def test_toy_head_equal_to_target_plus_offsets_is_fully_explained(corpus, full_basis):
    model = ToyTransformer(ToyConfig(V, T, n_layers=1, dtype=torch.float64))
    offsets = torch.randn(V, 1, generator=gen(3), dtype=torch.float64)
    with torch.no_grad():
        model.W(0).copy_(full_basis.embed_block(3.0 * full_basis.key_query, model.W(0)) + offsets)
        model.W_O.copy_(torch.randn(V, V, generator=gen(4), dtype=torch.float64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # V is still zero: its circuits are NaN
        df = analyze_model(model, full_basis, progress=False)
    kq = df[(df.site == "key_query") & df.extension & (df["head"] == 0) & df.target.isin(["key_query", ""])]
    assert kq[kq.measure == "explained"].value.item() == pytest.approx(1.0, abs=1e-10)
    assert kq[kq.measure == "coef"].value.item() == pytest.approx(3.0, rel=1e-10)
    assert kq[kq.measure == "residual_norm"].value.item() == pytest.approx(0.0, abs=1e-8)
    dp = dense_fit(model.W_O.detach()[full_basis.token_ids][:, full_basis.token_ids], {"b": full_basis.bigram})
    got = df[(df.site == "direct_path") & (df.measure == "explained") & df.extension & (df.target == "bigram")].value.item()
    assert got == pytest.approx(dp["explained"], rel=1e-8)
