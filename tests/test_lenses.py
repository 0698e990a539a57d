"""Lenses for models grown from random init: the gradient lens against autograd, the update lens kept factored,
and the figures of the issue on a GPT-NeoX trained from random init with the public train_pythia."""

import json
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from tl_leadterm import compute_basis, load_corpus
from tl_leadterm.analysis import analyze_model, sweep
from tl_leadterm.analysis.lenses import head_gradients, parse_lenses
from tl_leadterm.errors import LeadTermError
from tl_leadterm.models import load_model, save_random_pythia, train_pythia

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def corpus():
    return load_corpus("builtin:stories", seq_len=16)


@pytest.fixture(scope="module")
def square_model(corpus, tmp_path_factory):
    """One head per layer with d_head = d_model (the products determine the gradient fully), no rotary, float64."""
    d = tmp_path_factory.mktemp("square")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = save_random_pythia(d / "m", corpus.tokenizer, n_layers=2, d_model=16, n_heads=1, vocab_size=corpus.vocab_size)
    cfg = json.loads((p / "config.json").read_text())
    if "rope_parameters" in cfg:
        cfg["rope_parameters"]["partial_rotary_factor"] = 0.0
    cfg["rotary_pct"] = 0.0
    (p / "config.json").write_text(json.dumps(cfg))
    return p


def _hf_reference(path, toks):
    """∂L/∂P per layer from the raw Hugging Face GPT-NeoX in float64 (its own loss, computed here in float64)."""
    from transformers import GPTNeoXForCausalLM

    hf = GPTNeoXForCausalLM.from_pretrained(str(path)).double()
    logits = hf(toks).logits
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), toks[:, 1:].reshape(-1))
    out = {}
    for l, layer in enumerate(hf.gpt_neox.layers):
        att = layer.attention
        gqkv, gd = torch.autograd.grad(loss, [att.query_key_value.weight, att.dense.weight], retain_graph=True)
        d = gd.shape[0]
        Wq, Wk, Wv = (att.query_key_value.weight[i * d:(i + 1) * d].T.detach() for i in range(3))
        out[(l, "ov")] = torch.linalg.solve(Wv.T, gd.T)              # W_Vᵀ G = ∂L/∂W_O  (zero biases at init)
        out[(l, "qk")] = gqkv[0:d].T @ torch.linalg.inv(Wk)           # G W_K = ∂L/∂W_Q
    return out


def test_gradient_lens_equals_autograd(square_model, corpus):
    ad = load_model(str(square_model), dtype=torch.float64)
    toks = corpus.tokens[:6]
    before = {n: p.detach().clone() for n, p in ad.model.named_parameters()}
    G = head_gradients(ad, toks, batch_size=4)
    ref = _hf_reference(square_model, toks)
    for key, R in ref.items():
        err = float((G[key][0] - R).norm() / R.norm())
        assert err < 1e-6, (key, err)     # the Hugging Face attention path is not fully float64
    # the hook-based gradient against autograd through the very model the adapter runs, where TL exposes leaf weights
    attn = ad.model.blocks[0].attn
    W = [getattr(attn, n) for n in ("W_Q", "W_K", "W_V", "W_O")]
    if all(isinstance(w, torch.nn.Parameter) for w in W):         # HookedTransformer (TL 3.x)
        loss = ad.model(toks.to(ad.device), return_type="loss")
        gQ, gK, gV, gO = torch.autograd.grad(loss, W)
        WQ, WK, WV, WO = (w.detach()[0] for w in W)
        rel = lambda a, b: float((a - b).norm() / b.norm())  # noqa: E731
        assert rel(G[(0, "ov")][0] @ WO.T, gV[0]) < 1e-10
        assert rel(WV.T @ G[(0, "ov")][0], gO[0]) < 1e-10
        assert rel(G[(0, "qk")][0] @ WK, gQ[0]) < 1e-10
        assert rel(G[(0, "qk")][0].T @ WQ, gK[0]) < 1e-10
    # a guest: no .grad on the model's parameters, weights unchanged
    for n, p in ad.model.named_parameters():
        assert p.grad is None and torch.equal(p.detach(), before[n])


def test_gradient_batches_sum_to_the_whole(square_model, corpus):
    ad = load_model(str(square_model), dtype=torch.float64)
    toks = corpus.tokens[:6]
    a, b = head_gradients(ad, toks, batch_size=6), head_gradients(ad, toks, batch_size=4)
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=1e-9, atol=1e-14)


def test_lens_names_are_checked():
    assert parse_lenses("update,weights") == ("weights", "update")
    with pytest.raises(LeadTermError, match="unknown lens 'grad'"):
        parse_lenses("weights,grad")


# ---------------------------------------------------------------------------
# the figures on the demo's GPT-NeoX (trained from random init through the public train_pythia)
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from tl_leadterm.pipeline import DEMO_TEXT  # noqa: F401  (the demo's settings)

    windows = load_corpus("builtin:stories", seq_len=32)
    out = tmp_path_factory.mktemp("neox")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ckpts = train_pythia(windows, out, steps=8, lr=3e-3, seed=0, progress=False)
    basis = compute_basis(windows, top_k=windows.vocab_size, progress=False)
    return windows, ckpts, basis


def test_update_lens_and_gradient_lens_on_a_model_grown_from_random_init(trained):
    windows, ckpts, basis = trained
    steps = sorted(ckpts)
    labels = [f"step{s}" for s in steps]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = sweep(None, [str(ckpts[s]) for s in steps], basis, labels=labels, lens="weights,update", reference="first",
                   progress=False, null_draws=200, n_singular=0, top=1, sites="circuit_ov")
    sc = df[(df.measure == "signed_cosine") & (df.site == "circuit_ov") & (df.target == "value_output") & df["head"].notna()]
    up1 = sc[(sc.lens == "update") & (sc.checkpoint == "step1")]
    w1 = sc[(sc.lens == "weights") & (sc.checkpoint == "step1")]
    assert len(up1) == 8 and set(up1.reference) == {"step0"}
    assert int(((up1.value > 0) & (up1.percentile >= 0.95)).sum()) >= 7          # issue: 8 of 8 positively aligned
    assert float((up1.value ** 2).median()) > 20 * float((w1.value ** 2).median())  # issue: 184x at step 1
    assert not (sc[sc.checkpoint == "step0"].lens == "update").any()               # the first checkpoint has no update
    ratio = df[(df.measure == "update_ratio") & (df.checkpoint == "step1")]
    assert len(ratio) == 2 * 5 and (ratio.value > 0).all()
    # the gradient lens at step 0: layer 0's OV gradient is explained far better by model:context.T than by Ḡ
    ad0 = load_model(str(ckpts[0]), dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    win = windows.tokens[torch.randperm(len(windows.tokens), generator=g)[:64]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gd = analyze_model(ad0, basis, "step0", lens="gradient", gradient=win, progress=False, null_draws=100,
                           n_singular=0, top=1, sites="circuit_ov")
    ex = gd[(gd.measure == "explained") & (gd.layer == 0) & gd["head"].notna()]
    mc = ex[ex.target == "model:context.T"].value.median()
    gb = ex[ex.target == "value_output"].value.median()
    assert mc > 0.3 and mc > 3 * gb                                                 # issue: 0.62 vs 0.082
    pos = gd[(gd.measure == "signed_cosine") & (gd.target == "model:context.T") & gd["head"].notna()]
    assert (pos.value > 0).all() and (pos.percentile >= 0.95).all()


# ---------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------
def _cli(argv):
    import contextlib
    import io

    from tl_leadterm.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def test_cli_sweep_with_lenses_writes_nulls_ranking_and_retention(trained, tmp_path):
    import pandas as pd

    windows, ckpts, basis = trained
    bfile = tmp_path / "b.safetensors"
    basis.save(bfile)
    text = tmp_path / "held.txt"
    text.write_text("the bird flew up in the sky. the fish swam in the pond. " * 40)
    steps = sorted(ckpts)[:3]
    out = tmp_path / "sw"
    rc, printed, err = _cli(["sweep", "--checkpoints", ",".join(str(ckpts[s]) for s in steps), "--basis", bfile,
                             "--out", out, "--lens", "weights,update,gradient", "--reference", "first",
                             "--gradient-corpus", text, "--gradient-windows", 8, "--null-draws", 30,
                             "--sites", "circuit_ov,key_query", "--retention-threshold", 0.5])
    assert rc == 0, err
    df = pd.read_csv(out / "analysis.csv")
    assert set(df.lens) == {"weights", "update", "gradient"} and set(df.site) == {"circuit_ov", "key_query"}
    sc = df[df.measure == "signed_cosine"]
    assert sc.percentile.notna().all() and set(df[df.lens == "update"].reference.dropna()) == {str(ckpts[steps[0]])}
    assert pd.api.types.is_integer_dtype(pd.read_csv(out / "head_ranking.csv")["layer"])
    ret = pd.read_csv(out / "retention.csv")
    assert set(ret.threshold) == {0.5} and {"below_threshold_at", "at_chance_at"} <= set(ret.columns)


@pytest.mark.parametrize("extra,fragment", [
    (["--lens", "weights,grad"], "unknown lens 'grad'"),
    (["--lens", "update"], "--lens update needs --reference"),
    (["--lens", "gradient"], "--lens gradient needs --gradient-corpus"),
    (["--gradient-corpus", "x.txt"], "--gradient-corpus is used by --lens gradient only"),
    (["--sites", "circuit_ov,bogus"], "unknown site 'bogus'"),
    (["--null-draws", "-1"], "--null-draws must be >= 0"),
])
def test_cli_lens_options_are_checked_in_one_line(trained, tmp_path, extra, fragment):
    windows, ckpts, basis = trained
    bfile = tmp_path / "b.safetensors"
    basis.save(bfile)
    rc, _, err = _cli(["analyze", "--model", ckpts[0], "--basis", bfile, "--out", tmp_path / "o", *extra])
    assert rc == 2 and fragment in err and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error:")
    assert not (tmp_path / "o").exists()


def test_update_lens_of_the_direct_path_equals_a_dense_fit(trained):
    windows, ckpts, basis = trained
    a0, a1 = load_model(str(ckpts[0]), dtype=torch.float64), load_model(str(ckpts[1]), dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = analyze_model(a1, basis, "step1", lens="update", reference=a0, reference_label="step0", progress=False,
                           null_draws=0, sites="direct_path")
    ids = basis.token_ids
    D = a1.W_E.double()[ids] @ a1.W_U.double()[:, ids] - a0.W_E.double()[ids] @ a0.W_U.double()[:, ids]
    Dc = D - D.mean(1, keepdim=True)
    B = basis.bigram.double()
    Bc = B - B.mean(1, keepdim=True)
    cos = float((Dc * Bc).sum() / (Dc.norm() * Bc.norm()))
    got = df[(df.site == "direct_path") & (df.measure == "signed_cosine") & (df.lens == "update")].value.item()
    assert got == pytest.approx(cos, rel=1e-9)
    R0 = a0.W_E.double()[ids] @ a0.W_U.double()[:, ids]
    ratio = float(Dc.norm() / (R0 - R0.mean(1, keepdim=True)).norm())
    assert df[(df.measure == "update_ratio")].value.item() == pytest.approx(ratio, rel=1e-9)
