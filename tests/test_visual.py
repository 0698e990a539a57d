"""Attention views, the leading-term predicted pattern, the association explorer, plots."""

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from tl_leadterm import LeadTermError, compute_basis, leading_coefficient, load_corpus
from tl_leadterm.basis import Basis
from tl_leadterm.toy import ToyConfig, ToyTransformer, train_toy
from tl_leadterm import visual
from tl_leadterm import plots


def _tiny_basis(k=3, V=6, T=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    mats = {n: torch.randn(k, k, generator=g, dtype=torch.float64)
            for n in ("bigram", "context", "interchange", "value", "value_output", "key_query")}
    return Basis(**mats, position=torch.randn(T, generator=g, dtype=torch.float64),
                 token_ids=torch.tensor([4, 1, 2][:k]), vocab_size=V, seq_len=T, n_positions=10, mode="exact")


@pytest.fixture(scope="module")
def stories():
    return load_corpus("builtin:stories", seq_len=8)[:400]


@pytest.fixture(scope="module")
def stories_basis(stories):
    return compute_basis(stories, top_k=stories.vocab_size, progress=False)


@pytest.fixture(scope="module")
def trained_toy(stories):
    """Full-batch GD from zero, small lr: the leading-term regime (THEORY.md §3)."""
    m = ToyTransformer(ToyConfig(stories.vocab_size, 8, 2), tokenizer=stories.tokenizer)
    train_toy(m, stories, lr=0.05, steps=5, progress=False)
    return m


# ---------------------------------------------------------------------------
# the predicted pattern, exactly
# ---------------------------------------------------------------------------
def test_leading_term_scores_direct():
    b = _tiny_basis()
    ids = [4, 3, 2, 4, 1, 0]  # 3 and 0 are outside the basis; offsets up to 5 > len(p̄) = 4
    L = visual.leading_term_scores(b, ids)
    pos = {4: 0, 1: 1, 2: 2}
    for t in range(6):
        for k in range(6):
            if k > t:
                assert L[t, k] == float("-inf")
                continue
            q = b.key_query[pos[ids[t]], pos[ids[k]]].item() if ids[t] in pos and ids[k] in pos else 0.0
            p = b.position[t - k].item() if t - k < 4 else 0.0
            assert L[t, k].item() == pytest.approx(q + p, abs=1e-15)


def test_fit_scale_matches_closed_form_and_lstsq():
    b = _tiny_basis()
    ids = [4, 1, 2, 2, 4]
    L = visual.leading_term_scores(b, ids)
    n = len(ids)
    # scores = 3.7 L + arbitrary per-row offsets: recovered exactly
    offsets = torch.arange(n, dtype=torch.float64)[:, None] * 11.0
    S = (3.7 * L + offsets).masked_fill(torch.isinf(L), float("-inf"))
    assert visual.fit_scale(S, L) == pytest.approx(3.7, rel=1e-12)
    # with noise: equals least squares over (c, b_0..b_{n-1}) solved by numpy
    g = torch.Generator().manual_seed(1)
    S2 = (S + torch.randn(n, n, generator=g, dtype=torch.float64)).masked_fill(torch.isinf(L), float("-inf"))
    rows, rhs = [], []
    for t in range(n):
        for k in range(t + 1):
            x = np.zeros(n + 1)
            x[0], x[1 + t] = L[t, k].item(), 1.0
            rows.append(x)
            rhs.append(S2[t, k].item())
    sol = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)[0]
    assert visual.fit_scale(S2, L) == pytest.approx(sol[0], rel=1e-10)
    assert visual.fit_scale(S2, torch.zeros(n, n).masked_fill(torch.isinf(L), float("-inf"))) == 0.0
    # the relative residual, directly
    c = sol[0]
    num = den = 0.0
    for t in range(n):
        srow = [S2[t, k].item() for k in range(t + 1)]
        lrow = [L[t, k].item() for k in range(t + 1)]
        sm, lm = sum(srow) / len(srow), sum(lrow) / len(lrow)
        num += sum((a - sm - c * (b - lm)) ** 2 for a, b in zip(srow, lrow))
        den += sum((a - sm) ** 2 for a in srow)
    assert visual.fit_residual(S2, L) == pytest.approx(math.sqrt(num / den), rel=1e-10)
    assert visual.fit_residual(S, L) < 1e-12


def test_predicted_pattern_is_causal_softmax():
    b = _tiny_basis()
    ids = [4, 1, 2, 3]
    L = visual.leading_term_scores(b, ids)
    P = visual.predicted_pattern(L, 2.5)
    for t in range(4):
        z = [math.exp(2.5 * L[t, k].item()) for k in range(t + 1)]
        for k in range(4):
            want = z[k] / sum(z) if k <= t else 0.0
            assert P[t, k].item() == pytest.approx(want, abs=1e-14)


# ---------------------------------------------------------------------------
# attention views on the toy model
# ---------------------------------------------------------------------------
def test_toy_attention_matches_leading_term_in_the_leading_regime(trained_toy, stories_basis):
    text = "sue saw a bird . the bird flew"
    comp = visual.compare_attention(trained_toy, stories_basis, text)
    ids = trained_toy.to_tokens(text)
    _, cache = trained_toy.run_with_cache(ids)
    assert comp.model_pattern.shape == (2, 1, 8, 8)
    for l in range(2):
        assert torch.allclose(comp.model_pattern[l, 0], cache["pattern", l][0, 0].double())
        scores = cache["attn_scores", l][0, 0].double()
        assert float(comp.scale[l, 0]) == pytest.approx(visual.fit_scale(scores, comp.lead_scores), rel=1e-12)
    # layer 0 sees the one-hot input: its scores are W[x_t, x_k] + P[t-k] ≈ const · (Q̄ + p̄)
    const = leading_coefficient("W", 5, 0.05)
    assert float(comp.scale[0, 0]) == pytest.approx(const, rel=0.02)
    assert torch.allclose(comp.predicted_pattern[0, 0], comp.model_pattern[0, 0], atol=1e-9)
    assert float(comp.fit_residual[0, 0]) < 1e-3
    # control: with Q̄ transposed (the wrong orientation) or p̄ dropped the scores are not explained
    import dataclasses
    for wrong in (dataclasses.replace(stories_basis, key_query=stories_basis.key_query.T.contiguous()),
                  dataclasses.replace(stories_basis, position=torch.zeros_like(stories_basis.position))):
        assert float(visual.compare_attention(trained_toy, wrong, text).fit_residual[0, 0]) > 3e-3
    assert comp.labels == comp.str_tokens  # full-vocabulary basis: nothing marked
    v = comp.view(1)
    assert v.element == "AttentionHeads" and len(v.props["attention"]) == 2
    assert "CircuitsVis.render" in v.fragment() and "CircuitsVis.AttentionHeads" in v.fragment()
    st = comp.scale_table()
    assert list(st.columns) == ["model", "layer", "head", "scale", "aligned", "fit_residual", "pattern_tv",
                                "uniform_tv"] and len(st) == 2
    assert set(st.aligned) <= {"aligned", "anti-aligned", "none"}
    assert (st.aligned == "aligned").iloc[0] == (float(comp.scale[0, 0]) > 0)
    assert "anti-aligned" in comp.view(0).props["attentionHeadNames"][1] or float(comp.scale[0, 0]) >= 0


def test_tokens_outside_basis_are_marked_not_dropped(trained_toy, stories):
    small = compute_basis(stories, top_k=10, progress=False)
    text = "the bird flew up in the sky"
    comp = visual.compare_attention(trained_toy, small, text)
    strs = trained_toy.to_str_tokens(trained_toy.to_tokens(text))
    assert comp.str_tokens == strs and len(comp.labels) == len(strs)
    inside = set(small.token_strs())
    for s, lab, ok in zip(strs, comp.labels, comp.in_basis.tolist()):
        assert ok == (s in inside)
        assert lab == (s if ok else s + visual.OUTSIDE_MARK)
    assert not all(comp.in_basis.tolist())
    assert visual.OUTSIDE_MARK in comp.view(0).caption


def test_long_text_is_truncated_with_warning(trained_toy, stories_basis):
    text = " ".join(["the bird flew ."] * 10)
    with pytest.warns(UserWarning, match="truncated"):
        comp = visual.compare_attention(trained_toy, stories_basis, text)
    assert len(comp.labels) == 8 and comp.truncated_from == 40


def test_basis_of_another_vocabulary_is_refused(trained_toy):
    with pytest.raises(LeadTermError, match="vocabulary"):
        visual.compare_attention(trained_toy, _tiny_basis(), "the bird")


def test_pythia_architecture_attention(tiny_pythia_dir, shared_data):
    from tl_leadterm.models import load_model

    ad = load_model(str(tiny_pythia_dir))
    w = load_corpus("builtin:stories", seq_len=8, tokenizer=str(shared_data / "gpt-neox-20b-tokenizer.json"), vocab_size=50304)
    b = compute_basis(w[:300], top_k=30, mode="merge-other", progress=False)
    text = "the bird flew over the xylophone"
    comp = visual.compare_attention(ad, b, text)
    ids = ad.tokenizer.encode(text)
    assert comp.model_pattern.shape == (ad.n_layers, ad.n_heads, len(ids), len(ids))
    _, cache = ad.run_with_cache(torch.tensor([ids]))
    assert torch.allclose(comp.model_pattern[1], cache["pattern", 1][0].double(), atol=1e-6)
    assert not all(comp.in_basis.tolist()) and any(lab.endswith(visual.OUTSIDE_MARK) for lab in comp.labels)
    assert len(comp.views()) == ad.n_layers
    rows = comp.predicted_pattern.sum(-1)
    assert torch.allclose(rows, torch.ones_like(rows))


# ---------------------------------------------------------------------------
# association explorer
# ---------------------------------------------------------------------------
def test_associations(stories_basis, trained_toy):
    df = visual.associations(stories_basis, ["bird", "fish"], model=trained_toy, top=5)
    strs = stories_basis.token_strs()
    i = strs.index("bird")
    b = df[(df.token == "bird") & (df.source == "B̄")]
    row = stories_basis.bigram[i]
    order = torch.sort(-row, stable=True).indices
    want = [j for j in order.tolist() if row[j] > row.min()][:5]     # pairs never seen tie at the minimum: dropped
    assert int((row == row.min()).sum()) >= 2                       # 'bird' has such a tie (the example)
    assert b["associate"].tolist() == [strs[j] for j in want]
    assert (b["value"] > float(row.min())).all()
    assert b["associate"].iloc[0] == "flew"  # the corpus grammar: "the bird flew"
    assert b["value"].iloc[0] == pytest.approx(stories_basis.bigram[i, want[0]].item())
    sources = set(df.source)
    assert {"B̄", "Φ̄", "ΣB̄", "M", "Ḡ", "Q̄", "learned W_O", "residual W_O", "learned V.1·W_O"} <= sources
    # the residual is what is left beyond the best multiple of the leading term: orthogonal to it
    srcs = visual.association_sources(stories_basis, trained_toy)
    R = srcs["residual V.0"][0]
    assert abs(float((R * stories_basis.value).sum())) < 1e-9 * float(R.norm() * stories_basis.value.norm()) + 1e-30
    tab = visual.association_table(df, "bird")
    assert tab.shape[1] == len(sources) and tab.iloc[0]["B̄"].startswith("'flew'")
    v = visual.association_view(df, "bird")
    assert v.element == "ColoredTokensMulti" and len(v.props["labels"]) == len(sources)
    assert np.abs(np.asarray(v.props["values"])).max() == pytest.approx(1.0)
    with pytest.raises(LeadTermError, match="not one of the basis"):
        visual.associations(stories_basis, ["zebra"])


# ---------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------
def _synthetic_table():
    rows = []
    for c, step in (("step1", 1), ("step4", 4), ("step16", 16)):
        for l in range(3):
            for site in ("V", "W"):
                for m, v in (("cosine_leading", 1 - 0.01 * step * (l + 1)), ("explained", 0.9 - 0.01 * l)):
                    rows.append(dict(checkpoint=c, layer=l, head=np.nan, site=site, measure=m, value=v))
            for h in range(4):
                rows.append(dict(checkpoint=c, layer=l, head=h, site="key_query", measure="cov_cosine", value=0.1 * h + 0.01 * step))
        rows.append(dict(checkpoint=c, layer=np.nan, head=np.nan, site="W_O", measure="cosine_leading", value=0.99))
        rows.append(dict(checkpoint=c, layer=np.nan, head=np.nan, site="W_O", measure="explained", value=0.98))
    return pd.DataFrame(rows)


def test_plots_write_png_and_svg(tmp_path):
    df = _synthetic_table()
    ser = plots.series_from_analysis(df, "cosine_leading")
    assert set(ser.series) == {"W_O", "V/L0", "V/L1", "V/L2", "W/L0", "W/L1", "W/L2"}   # the key scheme
    assert sorted(ser[ser.series == "V/L2"].step) == [1, 4, 16]
    outs = plots.save_both(plots.similarity_vs_step, ser, tmp_path / "sim", title="Similarity vs step")
    outs += plots.save_both(plots.checkpoint_heatmap, df, tmp_path / "layers", measure="cosine_leading", site="V", rows="layer")
    outs += plots.save_both(plots.checkpoint_heatmap, df, tmp_path / "heads", measure="cov_cosine", site="key_query", rows="head", layer=1)
    outs += plots.save_both(plots.explained_bars, df, tmp_path / "expl")
    for p in outs:
        data = p.read_bytes()
        assert len(data) > 5000
        if p.suffix == ".png":
            assert data[:8] == b"\x89PNG\r\n\x1a\n"
        else:
            assert b"<svg" in data[:2000]
    assert "Similarity vs step" in (tmp_path / "sim.svg").read_text()
    assert plots.order_checkpoints(["step16", "step1", "step4"]) == ["step1", "step4", "step16"]
    assert plots.order_checkpoints(["b", "a"]) == ["b", "a"]
    with pytest.raises(LeadTermError):
        plots.checkpoint_heatmap(df, tmp_path / "x.png", measure="nope", site="V")
    with pytest.raises(LeadTermError, match="png or .svg"):
        plots.explained_bars(df, tmp_path / "x.jpg")


def test_heatmap_values_are_the_table(tmp_path, monkeypatch):
    """The heatmap draws exactly the pivot of the table (rows = heads, columns = checkpoints in step order)."""
    import matplotlib.axes
    df = _synthetic_table()
    seen = {}
    orig = matplotlib.axes.Axes.imshow

    def spy(self, X, *a, **k):
        seen["X"] = np.array(X)
        return orig(self, X, *a, **k)
    monkeypatch.setattr(matplotlib.axes.Axes, "imshow", spy)
    plots.checkpoint_heatmap(df.iloc[::-1], tmp_path / "h.png", measure="cov_cosine", site="key_query", rows="head", layer=2)
    want = np.array([[0.1 * h + 0.01 * s for s in (1, 4, 16)] for h in range(4)])
    assert np.allclose(seen["X"], want)


def test_anti_aligned_heads_are_called_so(trained_toy, stories_basis):
    """Scores that run against the leading term (c < 0) are labelled anti-aligned, never 'leading term'."""
    import copy

    neg = copy.deepcopy(trained_toy)
    with torch.no_grad():
        for name, p in neg.weights().items():
            if name.startswith(("W.", "P.")):
                p.neg_()
    comp = visual.compare_attention(neg, stories_basis, "sue saw a bird . the bird flew")
    assert float(comp.scale[0, 0]) < 0
    names = comp.view(0).props["attentionHeadNames"]
    assert "anti-aligned with the leading term" in names[1] and "TV to uniform" in names[0]
    st = comp.scale_table()
    assert st.aligned.iloc[0] == "anti-aligned" and st.uniform_tv.between(0, 1).all()


def test_colour_scales_are_fixed_and_chance_cells_grey(tmp_path, monkeypatch):
    """Signed heatmaps: one symmetric diverging scale for the whole measure, chance cells (0.05 < percentile < 0.95)
    without colour and covered grey; bounded measures: the fixed scale, whatever the data's range."""
    import matplotlib.axes
    rows = []
    vals = {(0, 0): 0.30, (0, 1): -0.02, (1, 0): 0.035, (1, 1): -0.5}
    pcts = {(0, 0): 1.0, (0, 1): 0.40, (1, 0): 0.60, (1, 1): 0.0}
    for c in ("step1", "step4"):
        for (l, h), v in vals.items():
            rows.append(dict(checkpoint=c, lens="weights", layer=l, head=h, site="circuit_ov", measure="signed_cosine",
                             target="value_output", value=v if c == "step1" else v / 2, percentile=pcts[(l, h)]))
            rows.append(dict(checkpoint=c, lens="weights", layer=l, head=h, site="key_query", measure="cov_cosine",
                             target="key_query", value=0.035 + 0.003 * h, percentile=pcts[(l, h)]))
    df = pd.DataFrame(rows)
    calls = []
    orig = matplotlib.axes.Axes.imshow

    def spy(self, X, *a, **k):
        calls.append((np.ma.array(X), k.get("vmin"), k.get("vmax"), k.get("cmap")))
        return orig(self, X, *a, **k)
    monkeypatch.setattr(matplotlib.axes.Axes, "imshow", spy)
    plots.signed_heatmap(df, tmp_path / "s.png", site="circuit_ov")
    (X, lo, hi, cmap), (G, *_rest) = calls
    assert lo == -hi == -0.5 and cmap == "RdBu_r"                 # symmetric around 0, over every head and checkpoint
    chance = np.array([[False, False], [True, True], [True, True], [False, False]])    # rows L0H0, L0H1, L1H0, L1H1
    assert (np.ma.getmaskarray(X) == chance).all()                  # chance cells carry no colour ...
    assert (~np.ma.getmaskarray(G) == chance).all()                 # ... and are covered grey
    assert X[0, 0] == 0.30 and X[3, 1] == -0.25
    calls.clear()
    plots.checkpoint_heatmap(df, tmp_path / "c.png", measure="cov_cosine", site="key_query", rows="head", layer=1)
    (X, lo, hi, cmap), (G, *_rest) = calls
    assert (lo, hi) == (-1.0, 1.0)                                  # fixed, not the data's 0.035 .. 0.038
    assert (~np.ma.getmaskarray(G) == np.array([[True, True], [False, False]])).all()
