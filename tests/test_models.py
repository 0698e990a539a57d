"""Model adapters (TL 3.x HookedTransformer / TL 4.x TransformerBridge / toy) and the real-model analysis.

Uses a randomly initialised Pythia-architecture model saved locally (fixture
``tiny_pythia_dir``); nothing is downloaded.
"""

import contextlib
import json
import logging
import re
import warnings

import numpy as np
import pytest
import torch

from reference import markov_tokens, fro_cos
from tl_leadterm import LeadTermError, compute_basis, load_corpus, windows_from_tokens
from tl_leadterm.cli import main
from tl_leadterm.analysis import (
    COLUMNS, analyze_model, causal_check, cka_dense, cov_cosine_dense, parse_checkpoints, quick_measures, weight_delta,
    head_edit_directions,
)
from tl_leadterm.analysis.causal import _edit_hooks
from tl_leadterm.models import (
    PYTHIA_REVISIONS, adapt, default_backend, load_model, save_random_pythia, tl_version, validate_revision,
)
from tl_leadterm.toy import ToyConfig, ToyTransformer

TL_MAJOR = int(tl_version().split(".")[0])

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def adapter(tiny_pythia_dir):
    return load_model(tiny_pythia_dir)


@pytest.fixture(scope="module")
def pythia_basis(tiny_pythia_dir, shared_data):
    w = load_corpus(shared_data / "tinystories-valid-head.txt", seq_len=16, tokenizer=str(tiny_pythia_dir),
                    vocab_size=50304, max_docs=60)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # merge-other for |V| = 50,304
        return compute_basis(w, top_k=40, progress=False), w


def test_default_backend_matches_installed_transformerlens(adapter):
    assert adapter.kind == ("bridge" if TL_MAJOR >= 4 else "hooked") == default_backend()
    assert (adapter.n_layers, adapter.n_heads, adapter.d_model, adapter.d_head, adapter.d_vocab) == (2, 4, 64, 16, 50304)
    assert adapter.parallel_attn_mlp
    assert adapter.W_Q(1).shape == (4, 64, 16) and adapter.W_O(1).shape == (4, 16, 64)
    assert adapter.W_E.shape == (50304, 64) and adapter.W_U.shape == (64, 50304)
    assert adapter.tokenizer is not None and adapter.tokenizer.eos_id == 0


def test_weights_agree_with_hooks(adapter):
    """q, k, v, attention output and the residual bookkeeping from the extracted weights equal the hooked run."""
    ids = torch.tensor([5, 17, 300, 50000])
    _, cache = adapter.run_with_cache(ids[:, None])
    reps = adapter.token_representations(ids)
    for l in range(adapter.n_layers):
        A = reps["attn_in"][l]
        for name, W, b in (("q", adapter.W_Q(l), adapter.b_Q(l)), ("k", adapter.W_K(l), adapter.b_K(l)),
                           ("v", adapter.W_V(l), adapter.b_V(l))):
            pred = torch.einsum("kd,hde->khe", A, W) + b
            torch.testing.assert_close(pred, cache[f"blocks.{l}.attn.hook_{name}"][:, 0], atol=1e-5, rtol=1e-4)
        # one token: the pattern is 1, so attn_out = Σ_h v_h W_O[h] + b_O
        v = cache[f"blocks.{l}.attn.hook_v"][:, 0]
        out = torch.einsum("khe,hem->km", v, adapter.W_O(l)) + adapter.b_O(l)
        torch.testing.assert_close(out, cache[f"blocks.{l}.hook_attn_out"][:, 0], atol=1e-5, rtol=1e-4)
        pre, mid, post = (reps[s][l] for s in ("resid_pre", "resid_mid", "resid_post"))
        torch.testing.assert_close(mid, pre + cache[f"blocks.{l}.hook_attn_out"][:, 0])
        torch.testing.assert_close(post, mid + cache[f"blocks.{l}.hook_mlp_out"][:, 0], atol=1e-5, rtol=1e-4)


def test_analyze_model_equals_dense_computation(adapter, pythia_basis):
    basis, _ = pythia_basis
    df = analyze_model(adapter, basis, progress=False)
    assert list(df.columns) == COLUMNS
    ids = basis.token_ids
    reps = adapter.token_representations(ids)

    def val(site, measure, layer, head=None):
        sel = df[(df.site == site) & (df.measure == measure) & (df.layer == layer)]
        sel = sel[sel["head"].isna()] if head is None else sel[sel["head"] == head]
        return sel.value.item()

    for l in range(2):
        A = reps["attn_in"][l].double()
        WQ, WK = adapter.W_Q(l).double(), adapter.W_K(l).double()
        S = [A @ WQ[h] @ WK[h].T @ A.T for h in range(4)]
        assert val("key_query", "cov_cosine", l, 1) == pytest.approx(cov_cosine_dense(S[1], basis.key_query), abs=1e-10)
        assert val("key_query", "cka", l, 3) == pytest.approx(cka_dense(S[3], basis.key_query), abs=1e-10)
        assert val("key_query", "cov_cosine", l) == pytest.approx(cov_cosine_dense(sum(S) / 4, basis.key_query), abs=1e-10)
        H = reps["resid_post"][l].double()
        assert val("resid_post", "cov_cosine", l) == pytest.approx(cov_cosine_dense(H, basis.value), abs=1e-10)
        assert val("resid_mid", "cka", l) == pytest.approx(cka_dense(reps["resid_mid"][l], basis.value), abs=1e-10)
        E, U = adapter.W_E.double()[ids], adapter.W_U.double()[:, ids]
        assert val("circuit_qk", "cosine", l, 2) == pytest.approx(fro_cos(E @ WQ[2] @ WK[2].T @ E.T, basis.key_query), abs=1e-10)
        OV = E @ adapter.W_V(l).double()[0] @ adapter.W_O(l).double()[0]
        assert val("circuit_ov", "cosine", l, 0) == pytest.approx(fro_cos(OV @ U, basis.value_output), abs=1e-10)
        assert val("circuit_ov_embed", "cov_cosine", l, 0) == pytest.approx(cov_cosine_dense(OV @ E.T, basis.value), abs=1e-10)
    E, U = adapter.W_E.double()[ids], adapter.W_U.double()[:, ids]
    dp = df[df.site == "direct_path"]
    assert dp.layer.isna().all() and dp.extension.all()
    assert dp[dp.measure == "cosine"].value.item() == pytest.approx(fro_cos(E @ U, basis.bigram), abs=1e-10)
    assert not df[(df.site == "key_query") & df.measure.isin(["cov_cosine", "cka"])].extension.any()


def test_quick_measures_equal_the_analysis(adapter, pythia_basis):
    basis, _ = pythia_basis
    q = quick_measures(adapter, basis)  # its speed is measured in benchmarks/bench_monitor.py
    df = analyze_model(adapter, basis, circuits=False, progress=False)
    kq = df[(df.site == "key_query") & (df.measure == "cov_cosine") & (df.layer == 1) & df["head"].isna()].value.item()
    assert q["L1/key_query/cov_cosine"] == pytest.approx(kq, abs=1e-12)


def test_tokenizer_or_vocabulary_mismatch_is_refused(adapter, shared_data):
    w = load_corpus(shared_data / "tinystories-valid-head.txt", seq_len=16, tokenizer="words", vocab_size=50304, max_docs=20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        words_basis = compute_basis(w, top_k=10, progress=False)
    with pytest.raises(LeadTermError, match="rebuild the basis with tokenizer set to the model's tokenizer"):
        analyze_model(adapter, words_basis, progress=False)
    other = compute_basis(windows_from_tokens(markov_tokens(30, 6, 10), 30), top_k=5, progress=False)
    with pytest.raises(LeadTermError, match="vocabulary of 30 tokens but the model has 50304"):
        analyze_model(adapter, other, progress=False)


def test_nonfinite_weights_name_layer_and_head(adapter, monkeypatch):
    real = adapter.W_Q

    def bad(l):
        w = real(l).clone()
        if l == 1:
            w[2, 0, 0] = float("inf")
        return w

    monkeypatch.setattr(adapter, "W_Q", bad)
    with pytest.raises(LeadTermError, match="W_Q of layer 1 head 2"):
        adapter.check_finite()


def test_model_without_attention_is_refused():
    with pytest.raises(LeadTermError, match="not Linear"):
        adapt(torch.nn.Linear(2, 2))

    class Cfg:
        n_layers, n_heads, d_model, d_head, d_vocab = 1, 2, 4, 2, 10

    class NoAttn(torch.nn.Module):
        def __init__(self, n_layers=1):
            super().__init__()
            self.cfg = Cfg()
            self.cfg.n_layers = n_layers
            self.blocks = torch.nn.ModuleList([torch.nn.Module()])

        def run_with_cache(self, *a, **k):  # pragma: no cover
            raise AssertionError

    ad = adapt(NoAttn())
    with pytest.raises(LeadTermError, match="block 0 .* has no attention weights"):
        ad.W_Q(0)
    with pytest.raises(LeadTermError, match="block 0 .* has no attention weights"):
        ad.check_finite()
    with pytest.raises(LeadTermError, match="has no attention layers"):
        adapt(NoAttn(n_layers=0))


def test_checkpoint_names():
    assert PYTHIA_REVISIONS[:12] == ["step0", "step1", "step2", "step4", "step8", "step16", "step32", "step64",
                                     "step128", "step256", "step512", "step1000"]
    assert PYTHIA_REVISIONS[-1] == "step143000" and len(PYTHIA_REVISIONS) == 154
    assert validate_revision("143000") == "step143000"
    for bad in ("step3", "step1500", "main", "step143001"):
        with pytest.raises(LeadTermError, match=r"unknown checkpoint .*step0, step1, step2, step4, \.\.\., step512, step1000"):
            parse_checkpoints(f"step0,{bad}")
    with pytest.raises(LeadTermError, match="unknown checkpoint 'step7'"):
        load_model("/nonexistent-dir-xyz", revision="step7")


def test_toy_adapter(tmp_path):
    model = ToyTransformer(ToyConfig(7, 5, n_layers=2, dtype=torch.float64))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    model.save(tmp_path / "toy.safetensors")
    for spec in (f"toy:{tmp_path}", f"toy:{tmp_path / 'toy.safetensors'}", model):
        ad = load_model(spec)
        assert ad.kind == "toy" and (ad.n_layers, ad.n_heads, ad.d_model) == (2, 1, 7)
        for l in range(2):
            torch.testing.assert_close(ad.W_Q(l)[0] @ ad.W_K(l)[0].T, model.W(l).detach())
            torch.testing.assert_close(ad.W_V(l)[0] @ ad.W_O(l)[0], model.V(l).detach())
        reps = ad.token_representations([3, 1])
        torch.testing.assert_close(reps["resid_pre"][0], torch.eye(7, dtype=torch.float64)[[3, 1]])
    with pytest.raises(LeadTermError, match="toy model .* not found"):
        load_model(f"toy:{tmp_path / 'missing'}")


def test_causal_check_real_model(adapter, pythia_basis):
    basis, w = pythia_basis
    toks = w.tokens[:4]
    base = adapter.loss(toks)
    df = causal_check(adapter, basis, toks, seeds=2, layers=[1], heads=[0, 3], progress=False)
    assert set(df.site) == {"key_query", "attn_ov"} and set(df["head"]) == {0.0, 3.0}   # the registry's site names
    assert df.value.notna().all()
    assert adapter.loss(toks) == base  # nothing left behind
    with pytest.warns(DeprecationWarning, match="attn_ov"):   # the circuit names of earlier releases still work
        old = causal_check(adapter, basis, toks, seeds=2, layers=[1], heads=[0], sites=["ov"], progress=False)
    new = df[(df.site == "attn_ov") & (df["head"] == 0)]
    assert set(old.site) == {"attn_ov"} and old.value.tolist() == new.value.tolist()
    with pytest.raises(LeadTermError, match="unknown causal-check site 'resid_pre'"):
        causal_check(adapter, basis, toks, seeds=1, sites=["resid_pre"], progress=False)
    rn = df[(df.measure == "removed_norm")].value
    assert (rn > 0).all()


@contextlib.contextmanager
def edited_weight(attn, pname: str, h: int, delta):
    """Subtract ``delta`` (``d_model x d_head``) from head ``h`` of ``W_Q`` / ``W_V`` in the model's own parameters
    (HookedTransformer: the ``[n_heads, d_model, d_head]`` parameter; TransformerBridge: the rows of its q / v
    projection that ``W_Q`` / ``W_V`` view), checks that exactly that head changed by exactly ``delta``, and undoes it."""
    before = getattr(attn, pname).detach().clone()
    W = getattr(attn, pname)
    if isinstance(W, torch.nn.Parameter):
        param, idx, change = W, h, delta
    else:
        param = getattr(attn, pname[-1].lower()).weight          # [n_heads * d_head, d_model], head-major rows
        dh = before.shape[-1]
        idx, change = slice(h * dh, (h + 1) * dh), delta.T
    orig = param.detach().clone()
    with torch.no_grad():
        param[idx] -= change.to(param.dtype)
    try:
        after = getattr(attn, pname).detach()
        torch.testing.assert_close(before[h] - after[h], delta.to(after.dtype), atol=1e-6, rtol=1e-5)
        rest = [i for i in range(before.shape[0]) if i != h]
        assert torch.equal(before[rest], after[rest])
        yield
    finally:
        with torch.no_grad():
            param.copy_(orig)


def _edit_of_head(ad, basis, reps, site, h):
    """Layer 1 head ``h``'s matrix ``X[h]``, its edit direction ``D Π_h`` and the coefficient of the leading-term edit."""
    X, P, D = head_edit_directions(ad, basis, 1, reps["attn_in"][1], site)
    Dh = D @ P[h]
    return X, Dh, D, float((X[h] * Dh).sum() / (Dh * Dh).sum())


def test_hook_edit_equals_weight_edit(adapter, pythia_basis):
    """On the installed TransformerLens (HookedTransformer on 3.x, TransformerBridge on 4.x): the edit hooks give
    the loss of editing W_Q / W_V in the model's own weights, and they remove exactly c·D_h from the head matrix."""
    basis, w = pythia_basis
    toks = w.tokens[:3]
    reps = adapter.token_representations(basis.token_ids)
    base = adapter.loss(toks)
    for site, pname, other_fn in (("qk", "W_Q", adapter.W_K), ("ov", "W_V", adapter.W_O)):
        h = 2
        X, Dh, D, c = _edit_of_head(adapter, basis, reps, site, h)
        other = other_fn(1)[h]
        via_hooks = adapter.loss(toks, _edit_hooks(adapter, 1, h, site, c * D, other))
        delta = weight_delta(site, c * D, other)
        Xn = (getattr(adapter, pname)(1)[h].double() - delta) @ (other.double().T if site == "qk" else other.double())
        torch.testing.assert_close(Xn, X[h] - c * Dh, atol=1e-8, rtol=1e-6)
        with edited_weight(adapter.model.blocks[1].attn, pname, h, delta):
            via_weights = adapter.loss(toks)
        assert via_hooks == pytest.approx(via_weights, abs=2e-5)
        # a large edit moves the loss, and hooks and weights still agree
        big = c * D * float(10 * getattr(adapter, pname)(1)[h].norm() / delta.norm())   # 10x the weight
        big_delta = weight_delta(site, big, other)
        with edited_weight(adapter.model.blocks[1].attn, pname, h, big_delta):
            via_big_weights = adapter.loss(toks)
        via_big_hooks = adapter.loss(toks, _edit_hooks(adapter, 1, h, site, big, other))
        assert abs(via_big_hooks - base) > 1e-4                # 5x the agreement tolerance below
        assert via_big_hooks == pytest.approx(via_big_weights, abs=2e-5)
    assert adapter.loss(toks) == base  # nothing left behind


@pytest.mark.skipif(TL_MAJOR >= 4, reason="compares HookedTransformer with TransformerBridge; TransformerLens 4 has only the bridge")
def test_backends_agree(adapter, tiny_pythia_dir, pythia_basis):
    """On TL 3.x: the edit hooks on a TransformerBridge give the HookedTransformer's weight-edit loss; analyses agree."""
    basis, w = pythia_basis
    toks = w.tokens[:3]
    hooked = adapter
    assert hooked.kind == "hooked"
    reps = hooked.token_representations(basis.token_ids)
    bridge = load_model(tiny_pythia_dir, backend="bridge")
    for site, pname, other_fn in (("qk", "W_Q", hooked.W_K), ("ov", "W_V", hooked.W_O)):
        h = 2
        X, Dh, D, c = _edit_of_head(hooked, basis, reps, site, h)
        other = other_fn(1)[h]
        via_bridge = bridge.loss(toks, _edit_hooks(bridge, 1, h, site, c * D, other))
        with edited_weight(hooked.model.blocks[1].attn, pname, h, weight_delta(site, c * D, other)):
            via_weights = hooked.loss(toks)
        assert via_bridge == pytest.approx(via_weights, abs=2e-5)
    a = analyze_model(hooked, basis, circuits=False, progress=False)
    b = analyze_model(bridge, basis, circuits=False, progress=False)
    sims = a.measure.isin(["cov_cosine", "cka"])            # bounded similarities: absolute agreement
    assert (a.value[sims] - b.value[sims]).abs().max() < 1e-4
    # projections and residuals carry the matrices' own scale (coef up to ~1e7 here): relative agreement
    np.testing.assert_allclose(a.value[~sims], b.value[~sims], rtol=1e-3, atol=1e-6)


def test_cli_analyze_and_sweep(tiny_pythia_dir, pythia_basis, tmp_path, capsys):
    basis, _ = pythia_basis
    bfile = tmp_path / "basis.safetensors"
    basis.save(bfile)
    out = tmp_path / "an"
    assert main(["analyze", "--model", str(tiny_pythia_dir), "--basis", str(bfile), "--out", str(out), "--no-circuits"]) == 0
    import pandas as pd
    df = pd.read_csv(out / "analysis.csv")
    assert list(df.columns) == COLUMNS and set(df.site) == {"resid_pre", "resid_mid", "resid_post", "key_query", "key_query_resid"}
    recs = json.loads((out / "analysis.json").read_text())
    assert len(recs) == len(df) and recs[0]["head"] is None
    # a sweep over two local checkpoints (the second with another seed) into one table
    second = save_random_pythia(tmp_path / "second", tiny_pythia_dir / "tokenizer.json", n_layers=1, d_model=32, seed=1)
    sw = tmp_path / "sw"
    assert main(["sweep", "--checkpoints", f"{tiny_pythia_dir},{second}", "--basis", str(bfile), "--out", str(sw),
                 "--no-circuits"]) == 0
    df = pd.read_csv(sw / "analysis.csv")
    assert df.checkpoint.nunique() == 2 and set(df[df.checkpoint == str(second)].layer.dropna()) == {0.0}
    # unknown checkpoint names: one line listing the valid ones, nothing loaded
    capsys.readouterr()
    assert main(["sweep", "--model", "EleutherAI/pythia-70m", "--checkpoints", "step0,step3", "--basis", str(bfile),
                 "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown checkpoint 'step3'" in err[0] and "step143000" in err[0]


def test_cli_analyze_toy_with_causal_check(tmp_path):
    from tl_leadterm.tokenization import build_word_tokenizer
    from tl_leadterm.toy import train_toy
    text = "the bird flew . the fish swam . a bird flew home . the fish swam away ."
    (tmp_path / "held.txt").write_text(text * 20)
    tok = build_word_tokenizer([text])
    ids = torch.tensor([tok.encode(text * 10)])
    w = windows_from_tokens(ids[:, : (ids.shape[1] // 9) * 9].reshape(-1, 9), tok.vocab_size, tokenizer=tok)
    basis = compute_basis(w, top_k=6, progress=False)
    basis.save(tmp_path / "b.safetensors")
    model = ToyTransformer(ToyConfig(tok.vocab_size, 8, n_layers=1), tokenizer=tok)
    train_toy(model, w, lr=0.5, steps=3, progress=False)
    model.save(tmp_path / "toy" / "toy.safetensors")
    out = tmp_path / "o"
    assert main(["analyze", "--model", f"toy:{tmp_path / 'toy'}", "--basis", str(tmp_path / "b.safetensors"),
                 "--out", str(out), "--dictionary", "--heldout", str(tmp_path / "held.txt"), "--seeds", "2"]) == 0
    import pandas as pd
    df = pd.read_csv(out / "analysis.csv")
    assert {"W_O", "V", "W", "P"} <= set(df.site)
    # residual pairs are decoded through the model's tokenizer: '#rank: 'row token' -> 'column token'', ranked by |value|
    words = {tok.decode([i]) for i in basis.token_ids.tolist()}
    pairs = df[(df.measure == "residual_pair") & (df.site != "P")]
    assert set(pairs.site) == {"W_O", "V", "W"}
    for _, grp in pairs.groupby(["site", "layer"], dropna=False):
        assert len(grp) == 5
        for rank, (detail, value) in enumerate(zip(grp.detail, grp.value), start=1):
            m = re.fullmatch(r"#(\d+): '(.+)' -> '(.+)'", detail)
            assert m is not None and int(m.group(1)) == rank and {m.group(2), m.group(3)} <= words, detail
        assert list(grp.value.abs()) == sorted(grp.value.abs(), reverse=True)
    cc = pd.read_csv(out / "causal.csv")
    assert {"delta_leading", "delta_random_mean", "delta_random_sd"} <= set(cc.measure)


def test_edit_hooks_change_exactly_the_head_projection(adapter, pythia_basis):
    """On either backend: after the edit hooks, head h's q (and v) equal attn_in @ (W - Δ) + b at every position."""
    basis, w = pythia_basis
    toks = w.tokens[:2, :10]
    reps = adapter.token_representations(basis.token_ids)
    for site, name, W, b, other in (("qk", "q", adapter.W_Q(1), adapter.b_Q(1), adapter.W_K(1)),
                                    ("ov", "v", adapter.W_V(1), adapter.b_V(1), adapter.W_O(1))):
        _, _, D = head_edit_directions(adapter, basis, 1, reps["attn_in"][1], site)
        h = 1
        D = D * float(W[h].norm() / weight_delta(site, D, other[h]).norm())  # an edit as large as the weight
        hooks = _edit_hooks(adapter, 1, h, site, D, other[h])
        seen = {}
        hooks.append((f"blocks.1.attn.hook_{name}", lambda x, hook: seen.__setitem__("a", x.detach().clone())))
        hooks.append(("blocks.1.ln1.hook_normalized", lambda x, hook: seen.__setitem__("x", x.detach().clone())))
        edited = adapter.loss(toks, hooks)
        delta = weight_delta(site, D, other[h]).to(W.dtype)
        expect = torch.einsum("bpd,hde->bphe", seen["x"], W) + b
        expect[:, :, h] -= seen["x"] @ delta
        torch.testing.assert_close(seen["a"], expect, atol=1e-5, rtol=1e-4)
        assert edited != adapter.loss(toks)


def test_sweep_prepares_the_basis_once_and_equals_single_analyses(tiny_pythia_dir, pythia_basis, tmp_path, monkeypatch):
    """The O(k³) target preparation is shared by all checkpoints of a sweep; results equal one-by-one analyses."""
    from tl_leadterm.analysis import measures
    from tl_leadterm.analysis import analyze_model, sweep

    basis, _ = pythia_basis
    second = save_random_pythia(tmp_path / "second", tiny_pythia_dir / "tokenizer.json", n_layers=2, d_model=32, seed=1)
    single = [analyze_model(load_model(str(d)), basis, checkpoint=str(d), progress=False) for d in (tiny_pythia_dir, second)]
    built = []
    real_build = measures.Target.build.__func__
    monkeypatch.setattr(measures.Target, "build", classmethod(lambda cls, T, name="": built.append(name) or real_build(cls, T, name)))
    df = sweep(None, [str(tiny_pythia_dir), str(second)], basis, progress=False)
    assert sorted(built) == sorted(set(built)) and set(built) == {"value", "key_query", "value_output", "bigram"}
    import pandas as pd
    ref = pd.concat(single, ignore_index=True)
    assert list(df.site) == list(ref.site) and (df.value.fillna(0) - ref.value.fillna(0)).abs().max() < 1e-10


# ---------------------------------------------------------------------------
# grouped-query attention
# ---------------------------------------------------------------------------
GQA_TEXT = "the bird flew . the fish swam . a bird flew home . the fish swam away . the cat sat ."


@pytest.fixture(scope="module")
def gqa_twins(tmp_path_factory):
    """A random grouped-query model (4 query heads sharing 2 key/value heads) and its twin with 4 key/value heads
    (each key/value head written out for every query head that reads it): the same function, but its W_V can be
    edited per head.  TL 3.x: HookedTransformer; TL 4.x: Llama folders booted offline as TransformerBridge."""
    from tl_leadterm.tokenization import build_word_tokenizer
    tok = build_word_tokenizer([GQA_TEXT])
    V = tok.vocab_size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if TL_MAJOR >= 4:
            from transformers import LlamaConfig, LlamaForCausalLM
            kw = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      max_position_embeddings=64, tie_word_embeddings=False, initializer_range=0.3)
            torch.manual_seed(0)
            g = LlamaForCausalLM(LlamaConfig(num_key_value_heads=2, **kw))
            m = LlamaForCausalLM(LlamaConfig(num_key_value_heads=4, **kw))
            sd = {k: (v.reshape(2, 8, *v.shape[1:]).repeat_interleave(2, dim=0).reshape(32, *v.shape[1:])
                      if k.endswith(("k_proj.weight", "v_proj.weight")) else v) for k, v in g.state_dict().items()}
            m.load_state_dict(sd)
            dirs = []
            for name, model in (("gqa", g), ("mha", m)):
                d = tmp_path_factory.mktemp(name)
                model.save_pretrained(str(d))
                tok.to_hf().save_pretrained(str(d))
                dirs.append(d)
            return tuple(load_model(d) for d in dirs) + (V,)
        from transformer_lens import HookedTransformer, HookedTransformerConfig
        kw = dict(n_layers=2, d_model=32, n_ctx=32, d_head=8, n_heads=4, d_vocab=V, act_fn="gelu",
                  normalization_type="LNPre", positional_embedding_type="rotary", initializer_range=0.3, seed=0)
        g = HookedTransformer(HookedTransformerConfig(n_key_value_heads=2, **kw))
        m = HookedTransformer(HookedTransformerConfig(**kw))
        sd = {k.replace("._W_", ".W_").replace("._b_", ".b_"): (v.repeat_interleave(2, dim=0) if "._W_" in k or "._b_" in k else v)
              for k, v in g.state_dict().items()}
        m.load_state_dict(sd)
        return adapt(g), adapt(m), V


def test_grouped_query_attention_heads_and_edits(gqa_twins):
    """The adapter gives every query head its key/value weights; the causal edits act on one head only, exactly as
    editing that head's W_V / W_Q in the ungrouped twin does (hook_v is shared by the heads of a group)."""
    gqa, mha, V = gqa_twins
    assert (gqa.n_heads, gqa.n_key_value_heads, mha.n_key_value_heads) == (4, 2, 4)
    assert gqa.folded and mha.folded
    for l in range(2):
        for name in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V"):
            torch.testing.assert_close(getattr(gqa, name)(l), getattr(mha, name)(l), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(gqa.W_K(l)[0], gqa.W_K(l)[1])               # heads 0 and 1 share key/value head 0
        assert not torch.allclose(gqa.W_V(l)[1], gqa.W_V(l)[2])
    g = torch.Generator().manual_seed(0)
    toks = torch.randint(0, V, (2, 10), generator=g)
    base = gqa.loss(toks)
    assert base == pytest.approx(mha.loss(toks), abs=1e-5)
    for site, pname, other_fn in (("ov", "W_V", gqa.W_O), ("qk", "W_Q", gqa.W_K)):
        for h in range(4):
            other = other_fn(1)[h]
            W = getattr(gqa, pname)(1)[h]
            D = torch.randn(32, 32, generator=g, dtype=torch.float64)
            D = D * float(3 * W.norm() / weight_delta(site, D, other).norm())        # an edit as large as 3x the weight
            via_hooks = gqa.loss(toks, _edit_hooks(gqa, 1, h, site, D, other))
            with edited_weight(mha.model.blocks[1].attn, pname, h, weight_delta(site, D, other)):
                via_twin = mha.loss(toks)
            assert via_hooks == pytest.approx(via_twin, abs=2e-5), (site, h)
            assert abs(via_hooks - base) > 2e-4, (site, h)                          # 10x the agreement tolerance
    assert gqa.loss(toks) == base
    basis = compute_basis(windows_from_tokens(markov_tokens(V, 9, 30, seed=1), V), top_k=8, progress=False)
    df = causal_check(gqa, basis, toks, seeds=2, progress=False)
    assert set(df["head"]) == {0.0, 1.0, 2.0, 3.0} and set(df.layer) == {0.0, 1.0} and df.value.notna().all()


# ---------------------------------------------------------------------------
# nothing of the user's changed: the model, logging
# ---------------------------------------------------------------------------
def _boot_raw_bridge(path):
    from transformer_lens.model_bridge import TransformerBridge
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return TransformerBridge.boot_transformers(str(path), device="cpu")


def _state(model):
    return ({k: v.detach().clone() for k, v in model.state_dict().items()},
            (getattr(model, "compatibility_mode", None), getattr(model, "_weights_processed", None), model.training,
             repr(model.cfg)))


@pytest.mark.parametrize("given", ["raw bridge", "loaded model"])
def test_analysis_leaves_the_users_model_alone(given, tiny_pythia_dir, pythia_basis, adapter, tmp_path):
    """analyze_model, the quick measures, the causal check, the attention views and the monitor never change the
    model they are given: same mode flags, same weights, bit-identical logits (a raw TransformerBridge is folded
    on a copy, whose numbers equal those of a bridge loaded and folded by load_model)."""
    from tl_leadterm.models import HAS_BRIDGE
    from tl_leadterm.monitor import TrainingMonitor
    from tl_leadterm.visual import compare_attention
    if given == "raw bridge" and not HAS_BRIDGE:
        pytest.skip("this TransformerLens has no TransformerBridge")
    basis, w = pythia_basis
    model = _boot_raw_bridge(tiny_pythia_dir) if given == "raw bridge" else load_model(tiny_pythia_dir).model
    toks = w.tokens[:2, :12]
    weights, flags = _state(model)
    with torch.no_grad():
        before = model(toks)
    if given == "raw bridge":
        assert flags[0] is False
        ad = adapt(model)
        assert ad.model is not model and ad.model.compatibility_mode and ad.folded and ad.tokenizer is not None
        assert ad.model.tokenizer is model.tokenizer                          # the copy shares the tokenizer
    df = analyze_model(model, basis, progress=False)
    quick_measures(model, basis)
    causal_check(model, basis, toks, seeds=1, layers=[1], heads=[0], progress=False)
    compare_attention(model, basis, "Once upon a time there was a bird")
    with TrainingMonitor(model, basis, tmp_path / "m.jsonl", every=1) as mon:
        mon.log(1)
    with torch.no_grad():
        after = model(toks)
    assert torch.equal(before, after)
    weights_after, flags_after = _state(model)
    assert flags_after == flags
    assert weights_after.keys() == weights.keys() and all(torch.equal(weights[k], v) for k, v in weights_after.items())
    if given == "raw bridge":   # the copy is folded exactly as load_model folds a bridge
        ref = analyze_model(load_model(tiny_pythia_dir, backend="bridge"), basis, progress=False)
        np.testing.assert_allclose(df.value.to_numpy(), ref.value.to_numpy(), rtol=1e-9, atol=1e-12)


def test_loading_and_analysis_leave_logging_alone(tiny_pythia_dir, pythia_basis, caplog):
    """The package logs through logging.getLogger('tl_leadterm') and never changes the root logger's or other
    libraries' levels (it quiets them only while it loads)."""
    from tl_leadterm.models import HAS_BRIDGE
    from transformers.utils import logging as hf_logging
    hf_logging.get_verbosity()      # transformers configures its own logger once, on first use
    basis, _ = pythia_basis
    loggers = [logging.getLogger()] + [logging.getLogger(n) for n in ("transformers", "huggingface_hub", "datasets",
                                                                         "transformer_lens")]
    saved = [lg.level for lg in loggers]
    handlers = list(logging.getLogger().handlers)
    try:
        for lg in loggers:
            lg.setLevel(25)          # a level nothing sets by accident
        with caplog.at_level(logging.INFO, logger="tl_leadterm"):
            ad = load_model(tiny_pythia_dir)
            analyze_model(ad, basis, circuits=False, progress=False)
            if HAS_BRIDGE:
                adapt(_boot_raw_bridge(tiny_pythia_dir))
        assert [lg.level for lg in loggers] == [25] * len(loggers)
        assert logging.getLogger().handlers == handlers
        ours = [r for r in caplog.records if r.name.startswith("tl_leadterm")]
        assert any("loading" in r.getMessage() for r in ours)
        assert not HAS_BRIDGE or any("folding a copy" in r.getMessage() for r in ours)
    finally:
        for lg, lv in zip(loggers, saved):
            lg.setLevel(lv)


def test_quiet_restores_levels_and_installs_no_handler():
    from tl_leadterm.logs import logger, quiet
    assert logger.name == "tl_leadterm"
    root, tf = logging.getLogger(), logging.getLogger("transformers")
    saved_root, saved_tf, saved_handlers = root.level, tf.level, list(root.handlers)
    try:
        root.handlers.clear()        # no handlers: a library's logging.warning would call basicConfig
        root.setLevel(logging.WARNING)
        tf.setLevel(logging.CRITICAL)  # already quieter than ERROR: left as it is
        with pytest.raises(RuntimeError):
            with quiet("transformers", root=True):
                assert root.level == logging.ERROR and tf.level == logging.CRITICAL
                logging.warning("a library talking through the root logger")
                raise RuntimeError
        assert root.level == logging.WARNING and tf.level == logging.CRITICAL and root.handlers == []
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_root)
        tf.setLevel(saved_tf)
