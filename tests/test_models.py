"""Model adapters (TL 3.x HookedTransformer / TL 4.x TransformerBridge / toy) and the real-model analysis.

Uses a randomly initialised Pythia-architecture model saved locally (fixture
``tiny_pythia_dir``); nothing is downloaded.
"""

import json
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
    assert set(df.site) == {"qk", "ov"} and set(df["head"]) == {0.0, 3.0}
    assert df.value.notna().all()
    assert adapter.loss(toks) == base  # nothing left behind
    rn = df[(df.measure == "removed_norm")].value
    assert (rn > 0).all()


@pytest.mark.skipif(TL_MAJOR >= 4, reason="weight editing needs HookedTransformer (TransformerLens 3.x)")
def test_hook_edit_equals_weight_edit_and_backends_agree(adapter, tiny_pythia_dir, pythia_basis):
    """On TL 3.x: editing W_Q/W_V in place gives the loss the hooks give, for both backends; analyses agree."""
    basis, w = pythia_basis
    toks = w.tokens[:3]
    hooked = adapter
    assert hooked.kind == "hooked"
    reps = hooked.token_representations(basis.token_ids)
    bridge = load_model(tiny_pythia_dir, backend="bridge")
    for site, pname, other_fn in (("qk", "W_Q", hooked.W_K), ("ov", "W_V", hooked.W_O)):
        X, P, D = head_edit_directions(hooked, basis, 1, reps["attn_in"][1], site)
        h = 2
        Dh = D @ P[h]
        c = float((X[h] * Dh).sum() / (Dh * Dh).sum())
        other = other_fn(1)[h]
        via_hooks = hooked.loss(toks, _edit_hooks(hooked, 1, h, site, c * D, other))
        via_bridge = bridge.loss(toks, _edit_hooks(bridge, 1, h, site, c * D, other))
        # the edit removes exactly c·D_h from the head matrix
        delta = weight_delta(site, c * D, other)
        Xn = (getattr(hooked, pname)(1)[h].double() - delta) @ (other.double().T if site == "qk" else other.double())
        torch.testing.assert_close(Xn, X[h] - c * Dh, atol=1e-8, rtol=1e-6)
        param = getattr(hooked.model.blocks[1].attn, pname)
        orig = param.detach().clone()
        with torch.no_grad():
            param[h] -= delta.to(param.dtype)
        try:
            via_weights = hooked.loss(toks)
        finally:
            with torch.no_grad():
                param.copy_(orig)
        assert via_hooks == pytest.approx(via_weights, abs=2e-5)
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
    assert "'bird' -> 'flew'" in " ".join(df.detail.dropna()) or (df.measure == "residual_pair").any()
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
