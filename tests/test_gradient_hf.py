"""The gradient lens on a raw Hugging Face GPT-NeoX (HFNeoXAdapter, what the training monitor watches): against
autograd through a GPT-NeoX written out here from the weights alone, against the model's own autograd and
against the TransformerLens path; the forward pass and the model unchanged; bad windows."""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from tl_leadterm import compute_basis, load_corpus
from tl_leadterm.analysis import analyze_model
from tl_leadterm.analysis.lenses import head_gradients
from tl_leadterm.errors import LeadTermError
from tl_leadterm.models import HFNeoXAdapter, load_model, save_random_pythia

pytestmark = pytest.mark.usefixtures("one_thread")

V, D, H, LAYERS = 50, 32, 4, 2   # d_head 8: a quarter of it rotates 2 dimensions
DH = D // H


def tiny_neox(rotary: float = 0.25, parallel: bool = True, *, vocab: int = V, dropout: float = 0.0, attn: str = "sdpa",
              seed: int = 0):
    """A float64 GPTNeoXForCausalLM with every weight random (biases and LayerNorms too), attention far from uniform."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    cfg = GPTNeoXConfig(vocab_size=vocab, hidden_size=D, num_hidden_layers=LAYERS, num_attention_heads=H,
                        intermediate_size=2 * D, rotary_pct=rotary, use_parallel_residual=parallel, attention_bias=True,
                        max_position_embeddings=64, tie_word_embeddings=False, hidden_act="gelu",
                        attention_dropout=dropout, hidden_dropout=dropout)
    with torch.random.fork_rng():
        model = GPTNeoXForCausalLM(cfg).double().eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=p.dtype)
            p.copy_(1 + 0.2 * noise if "layernorm" in name and name.endswith("weight") else
                    0.1 * noise if name.endswith("bias") else 0.25 * noise)
    model.set_attn_implementation(attn)
    assert model.gpt_neox.layers[0].attention.rotary_ndims == int(DH * rotary)
    return model


def windows(n=5, T=7, vocab=V, seed=1):
    return torch.randint(0, vocab, (n, T), generator=torch.Generator().manual_seed(seed))


def reference_loss(model, tokens, Z):
    """GPT-NeoX written out from its weights, with ``x_q Z_qk x_kᵀ / √d_head`` in each head's scores and
    ``(pattern @ x) Z_ov`` in its output: the mean next-token loss (float64 but for the rotary tables, which
    transformers computes in float32)."""
    c, w = model.config, {k: v.detach() for k, v in model.state_dict().items()}
    rd = int(DH * c.rope_parameters["partial_rotary_factor"])
    T = tokens.shape[1]
    inv = 1.0 / (c.rope_parameters["rope_theta"] ** (torch.arange(0, rd, 2, dtype=torch.float) / rd))
    ang = torch.arange(T).float()[:, None] * inv[None]
    cos, sin = ang.cos().double(), ang.sin().double()

    def rotate(t):   # GPT-NeoX rotates the pairs (i, i + rd/2) of the first rd dimensions
        a, b, rest = t[..., :rd // 2], t[..., rd // 2:rd], t[..., rd:]
        return torch.cat([a * cos - b * sin, b * cos + a * sin, rest], -1)

    def ln(t, name):
        return F.layer_norm(t, (D,), w[name + ".weight"], w[name + ".bias"], c.layer_norm_eps)

    def mlp(t, p):
        t = F.gelu(t @ w[p + "mlp.dense_h_to_4h.weight"].T + w[p + "mlp.dense_h_to_4h.bias"])
        return t @ w[p + "mlp.dense_4h_to_h.weight"].T + w[p + "mlp.dense_4h_to_h.bias"]

    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    h = w["gpt_neox.embed_in.weight"][tokens]
    for l in range(LAYERS):
        p = f"gpt_neox.layers.{l}."
        x = ln(h, p + "input_layernorm")
        W = w[p + "attention.query_key_value.weight"].view(H, 3, DH, D)   # rows: (head, q/k/v, d_head)
        B = w[p + "attention.query_key_value.bias"].view(H, 3, DH)
        attn = w[p + "attention.dense.bias"]
        for hd in range(H):
            q, k, v = (x @ W[hd, i].T + B[hd, i] for i in range(3))
            s = (rotate(q) @ rotate(k).mT + x @ Z[(l, "qk")][hd] @ x.mT) / math.sqrt(DH)
            pattern = s.masked_fill(future, -math.inf).softmax(-1)
            W_O = w[p + "attention.dense.weight"][:, hd * DH:(hd + 1) * DH].T
            attn = attn + pattern @ v @ W_O + pattern @ x @ Z[(l, "ov")][hd]
        if c.use_parallel_residual:
            h = h + attn + mlp(ln(h, p + "post_attention_layernorm"), p)
        else:
            h = h + attn
            h = h + mlp(ln(h, p + "post_attention_layernorm"), p)
    logits = ln(h, "gpt_neox.final_layer_norm") @ w["lm_head.weight"].T
    return logits, F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))


def rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("rotary", [1.0, 0.25])
@pytest.mark.parametrize("parallel", [True, False])
def test_hf_gradients_equal_autograd_through_a_written_out_neox(rotary, parallel):
    model = tiny_neox(rotary, parallel)
    toks = windows()
    G = head_gradients(HFNeoXAdapter(model), toks, batch_size=2)        # batches of 2, 2, 1: weighted by size
    Z = {key: torch.zeros(H, D, D, dtype=torch.float64, requires_grad=True) for key in G}
    logits, loss = reference_loss(model, toks, Z)
    with torch.no_grad():
        assert rel(logits, model(toks).logits) < 1e-12                    # the written-out model is the model
    ref = dict(zip(Z, torch.autograd.grad(loss, list(Z.values()))))
    for key, R in ref.items():
        assert R.norm() > 1e-3 and rel(G[key], R) < 1e-10, (key, rel(G[key], R))
    # and through the model's own autograd (its sdpa attention): ∂L/∂W_V = G_OV W_Oᵀ per head, for any biases
    ad = HFNeoXAdapter(model)
    att = [layer.attention for layer in model.gpt_neox.layers]
    logits = model(toks).logits
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, V), toks[:, 1:].reshape(-1))
    gqkv = torch.autograd.grad(loss, [a.query_key_value.weight for a in att])
    for l, g in enumerate(gqkv):
        gV = g.view(H, 3, DH, D)[:, 2].transpose(1, 2)
        assert rel(G[(l, "ov")] @ ad.W_O(l).transpose(1, 2), gV) < 1e-10


def test_hf_qk_gradient_without_rotary_matches_the_models_own_autograd():
    """No rotary: ∂L/∂W_Q = G_QK W_K per head (b_K drops out: each row of ∂L/∂scores sums to zero)."""
    model = tiny_neox(rotary=0.0)
    toks = windows()
    ad = HFNeoXAdapter(model)
    G = head_gradients(ad, toks, batch_size=3)
    logits = model(toks).logits
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, V), toks[:, 1:].reshape(-1))
    gqkv = torch.autograd.grad(loss, [layer.attention.query_key_value.weight for layer in model.gpt_neox.layers])
    for l, g in enumerate(gqkv):
        gQ = g.view(H, 3, DH, D)[:, 0].transpose(1, 2)
        assert rel(G[(l, "qk")] @ ad.W_K(l), gQ) < 1e-10


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_forward_unchanged_and_model_restored(attn):
    model = tiny_neox(attn=attn, dropout=0.3)
    toks = windows()
    ad = HFNeoXAdapter(model)
    model.eval()
    want = model(toks).logits.detach()
    zero = torch.zeros(H, D, D, dtype=torch.float64, requires_grad=True)
    with torch.enable_grad(), ad.head_terms(lambda l, x: torch.einsum("bqd,hde,bke->bhqk", x, zero, x),
                                            lambda l, x, p: torch.einsum("bhqk,bkd,hde->bqe", p, x, zero)):
        got = model(toks, use_cache=False).logits
    assert got.requires_grad and torch.equal(got.detach(), want)          # the logits bit for bit
    loss = ad.loss_with_head_terms(toks, lambda l, x: 0 * zero.sum(), lambda l, x, p: 0 * zero.sum())
    assert abs(float(loss.detach()) - float(F.cross_entropy(want[:, :-1].reshape(-1, V), toks[:, 1:].reshape(-1)))) < 1e-13
    # a guest: train mode (mixed, with dropout), weights, .grad, hooks and instance attributes all as before
    model.train()
    model.gpt_neox.layers[1].eval()
    modes = {n: m.training for n, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}

    def snapshot():
        return {n: (sorted(m.__dict__), [len(getattr(m, a)) for a in sorted(vars(m)) if a.endswith("hooks") or "hooks_" in a])
                for n, m in model.named_modules()}

    before = snapshot()
    G = head_gradients(ad, toks, batch_size=2)
    model.eval()
    G_eval = head_gradients(ad, toks, batch_size=2)
    model.train()
    model.gpt_neox.layers[1].eval()
    for key in G:                                                          # no dropout while measuring
        assert torch.equal(G[key], G_eval[key])
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None and p.requires_grad == flags[n] for n, p in model.named_parameters())
    assert snapshot() == before and "forward" not in vars(model.gpt_neox.layers[0].attention)
    # restored on error too (raised inside the hooked forward pass)
    def boom(layer, x):
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"), torch.enable_grad():
        with ad.head_terms(boom, lambda l, x, p: 0 * x):
            model(toks, use_cache=False)
    assert snapshot() == before and {n: m.training for n, m in model.named_modules()} == modes


def test_eager_and_sdpa_give_the_same_gradients():
    toks = windows()
    a = head_gradients(tiny_neox(attn="sdpa"), toks)
    b = head_gradients(tiny_neox(attn="eager"), toks)
    for key in a:      # eager takes its softmax in float32
        assert rel(b[key], a[key]) < 1e-5


def test_an_attention_the_recomputation_does_not_follow_is_refused():
    model = tiny_neox()
    user = model.gpt_neox.layers[1].attention.register_forward_hook(lambda m, args, out: (2 * out[0], *out[1:]))
    try:
        with pytest.raises(LeadTermError, match="attention of layer 1 recomputed for the gradient lens differs") as e:
            head_gradients(model, windows())
        assert "\n" not in str(e.value)
        assert list(model.gpt_neox.layers[1].attention._forward_hooks) == [user.id]      # ours removed, the user's kept
        assert not model.gpt_neox.layers[0].attention._forward_hooks
    finally:
        user.remove()


@pytest.mark.parametrize("toks, msg", [
    (torch.full((2, 5), V), f"outside the model's vocabulary of {V}"),
    (torch.zeros(3, 1, dtype=torch.long), r"\[n, T\] token array with T >= 2"),
    (torch.zeros(6, dtype=torch.long), r"\[n, T\] token array with T >= 2"),
])
def test_bad_windows_one_line(toks, msg):
    with pytest.raises(LeadTermError, match=msg) as e:
        head_gradients(tiny_neox(), toks)
    assert "\n" not in str(e.value)


@pytest.fixture(scope="module")
def stories():
    return load_corpus("builtin:stories", seq_len=12)


def test_same_gradients_through_transformerlens(stories, tmp_path):
    """At random init LayerNorm is the identity map after normalising (weight 1, bias 0), so TransformerLens' folding
    leaves the attention input as it is and both paths differentiate the same function of the same x."""
    from transformers import GPTNeoXForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = save_random_pythia(tmp_path / "m", stories.tokenizer, n_layers=2, d_model=D, n_heads=H,
                                  vocab_size=stories.vocab_size)
        hf = GPTNeoXForCausalLM.from_pretrained(str(path))
        g = torch.Generator().manual_seed(2)
        with torch.no_grad():          # sharper attention than the init's, LayerNorms left as they are
            for name, p in hf.named_parameters():
                if "layernorm" not in name:
                    p.copy_(0.25 * torch.randn(p.shape, generator=g))
        hf.save_pretrained(str(path))
        tl = load_model(str(path), dtype=torch.float64)
    toks = stories.tokens[:6]
    a = head_gradients(tl, toks, batch_size=4)
    b = head_gradients(hf.double(), toks, batch_size=4)
    for key in a:      # the TransformerLens path computes its rotary tables in its own way (float32 in transformers)
        assert rel(b[key], a[key]) < 1e-6, (key, rel(b[key], a[key]))


def test_analyze_model_takes_the_gradient_lens_on_a_raw_hf_model(stories):
    model = tiny_neox(vocab=stories.vocab_size)
    basis = compute_basis(stories, top_k=stories.vocab_size, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # unfolded LayerNorm, no tokenizer recorded
        df = analyze_model(model, basis, lens="gradient", gradient=stories.tokens[:8], sites="circuit_ov,circuit_qk",
                           null_draws=0, residuals=False, progress=False)
    assert set(df.lens) == {"gradient"} and set(df.site) == {"circuit_ov", "circuit_qk"}
    assert len(df) == 2 * LAYERS * (H + 1) * 3 and bool(df.value.notna().all())   # sites x layers x (heads, mean) x measures


def test_hf_adapter_weights_and_biases_are_the_models_own_projections():
    """W_Q/W_K/W_V with b_Q/b_K/b_V reproduce the fused query_key_value per head, W_O with b_O the dense layer."""
    from tl_leadterm.models.hf import HFNeoXAdapter

    model = tiny_neox()
    ad = HFNeoXAdapter(model)
    x = torch.randn(3, D, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    for l in range(LAYERS):
        att = model.gpt_neox.layers[l].attention
        qkv = att.query_key_value(x).view(3, H, 3, DH)              # HF's layout: rows (head, q/k/v, d_head)
        for i, (W, b) in enumerate(((ad.W_Q, ad.b_Q), (ad.W_K, ad.b_K), (ad.W_V, ad.b_V))):
            got = torch.einsum("nd,hde->nhe", x, W(l)) + b(l)
            assert rel(got, qkv[:, :, i]) < 1e-12
        z = torch.randn(3, H, DH, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
        assert rel(torch.einsum("nhe,hed->nd", z, ad.W_O(l)) + ad.b_O(l), att.dense(z.reshape(3, -1))) < 1e-12


def test_sites_a_raw_hf_model_cannot_give_are_skipped_or_refused(stories):
    """A raw GPT-NeoX returns only resid_pre: the default sites that read attention inputs or resid_mid/post are
    skipped with a warning; naming one is a one-line error (was a bare KeyError)."""
    model = tiny_neox(vocab=stories.vocab_size)
    basis = compute_basis(stories, top_k=stories.vocab_size, progress=False)
    with pytest.warns(UserWarning, match="skipping sites resid_mid, resid_post, key_query read"):
        df = analyze_model(model, basis, null_draws=0, residuals=False, progress=False, circuits=False)
    assert set(df.site) == {"resid_pre", "key_query_resid"}
    with pytest.raises(LeadTermError, match=r"^sites attn_ov reads representations .* \(it has resid_pre\); load the "
                                            r"model with tl_leadterm.load_model, or choose other sites$"):
        analyze_model(model, basis, sites="attn_ov", null_draws=0, progress=False)
