"""The training monitor: exact measures, JSONL records, fail-at-attach, logging failures never stop training."""

import json
import math
import warnings

import pandas as pd
import pytest
import torch

from reference import N, T, V, markov_tokens
from tl_leadterm import LeadTermError, compute_basis, windows_from_tokens
from tl_leadterm.basis import leading_coefficient
from tl_leadterm.monitor import (LeadTermTrainerCallback, TrainingMonitor, covariance_similarity, read_records,
                                 records_frame)
from tl_leadterm.theory import measure_key
from tl_leadterm.toy import ToyConfig, ToyTransformer, train_toy


@pytest.fixture(scope="module")
def sub_basis(corpus):
    return compute_basis(corpus, token_ids=[7, 2, 5, 0, 9], progress=False)


def toy(L=2):
    return ToyTransformer(ToyConfig(V, T, n_layers=L, dtype=torch.float64))


def direct_cos(a, b):
    a, b = a.reshape(-1).double(), b.reshape(-1).double()
    return float((a * b).sum() / math.sqrt(float((a * a).sum()) * float((b * b).sum())))


def test_toy_records_equal_direct_computation(corpus, sub_basis, tmp_path):
    model = toy()
    mon = TrainingMonitor(model, sub_basis, tmp_path / "m.jsonl", every=3, lr=0.05)
    train_toy(model, corpus, lr=0.05, steps=9, batch_size=8, seed=1, progress=False, callback=mon.callback)
    mon.close()
    recs = read_records(tmp_path / "m.jsonl")
    assert [r["step"] for r in recs] == [3, 6, 9]
    r = recs[-1]
    ids = [7, 2, 5, 0, 9]
    terms = {"W_O": sub_basis.bigram, "V": sub_basis.value, "W": sub_basis.key_query}
    for name, w in model.weights().items():
        base, _, layer = name.partition(".")
        key = base if not layer else f"{base}/L{layer}"          # the key scheme: site/L<layer>
        if base == "P":
            A, B = w.detach()[:T], sub_basis.position
        else:
            A = torch.stack([torch.stack([w.detach()[i, j] for j in ids]) for i in ids])  # explicit sub-block
            B = terms[base]
        A, B = A.double(), B.double()
        if base != "V":   # a constant per row is invisible to the output (softmax follows): rows centred
            A, B = A - A.mean(-1, keepdim=True), B - B.mean(-1, keepdim=True)
        cos = direct_cos(A, B)
        assert r["similarity"][key] == pytest.approx(cos, abs=1e-12)
        assert r["explained"][key] == pytest.approx(cos * cos, abs=1e-12)
        c = float((A * B).sum() / (B * B).sum())
        assert r["residual_norm"][key] == pytest.approx(float((A - c * B).norm()), rel=1e-9, abs=1e-300)
        assert r["coefficient_ratio"][key] == pytest.approx(c / leading_coefficient(base, 9, 0.05), rel=1e-9)
    assert set(r["similarity"]) == {"W_O", "W/L0", "V/L0", "P/L0", "W/L1", "V/L1", "P/L1"}
    with pytest.warns(DeprecationWarning, match="V/L1"):      # the keys of earlier releases still read
        assert mon.records[-1]["similarity"]["V.1"] == r["similarity"]["V/L1"]
    assert r["loss"] is not None and r["kind"] == "toy"


def test_leading_terms_dominate_early_full_batch(corpus, full_basis, sub_basis):
    """THEORY.md §4: small-η GD from zero; cos ≈ 1 and the fitted coefficient ≈ the theory's."""
    for basis in (full_basis, sub_basis):
        model = toy()
        mon = TrainingMonitor(model, basis, every=1, lr=0.01)
        train_toy(model, corpus, lr=0.01, steps=6, progress=False, callback=mon.callback)
        first, last = mon.records[0], mon.records[-1]
        # W_O = η B̄ exactly after one step; W and P are still zero (undefined cosine)
        assert first["similarity"]["W_O"] == pytest.approx(1.0, abs=1e-12)
        assert first["coefficient_ratio"]["W_O"] == pytest.approx(1.0, abs=1e-9)
        assert first["similarity"]["W/L0"] is None and first["similarity"]["P/L1"] is None
        for name, s in last["similarity"].items():
            assert s > 0.9999, (name, s)
            assert last["coefficient_ratio"][name] == pytest.approx(1.0, abs=5e-3), name


def test_late_sgd_similarity_is_not_trivially_one(corpus, full_basis):
    """The measure can fail: after many large steps the weights leave the leading term."""
    model = toy(1)
    mon = TrainingMonitor(model, full_basis, every=60, lr=2.0)
    train_toy(model, corpus, lr=2.0, steps=60, batch_size=4, progress=False, callback=mon.callback)
    sims = mon.records[-1]["similarity"]
    assert min(v for v in sims.values() if v is not None) < 0.9


def test_misfit_basis_fails_at_attach(corpus, full_basis, tmp_path):
    other = windows_from_tokens(markov_tokens(V + 3, T, N, seed=1), V + 3)
    with pytest.raises(LeadTermError, match="vocabulary"):
        TrainingMonitor(toy(), compute_basis(other, top_k=5, progress=False), tmp_path / "x.jsonl")
    short = ToyTransformer(ToyConfig(V, 4, n_layers=1))
    with pytest.raises(LeadTermError, match="seq_len"):
        TrainingMonitor(short, full_basis)
    with pytest.raises(LeadTermError, match="every"):
        TrainingMonitor(toy(), full_basis, every=0)
    with pytest.raises(LeadTermError, match="supports"):
        TrainingMonitor(torch.nn.Linear(3, 3), full_basis)
    assert not (tmp_path / "x.jsonl").exists()


def test_unwritable_path_fails_at_attach(full_basis, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(LeadTermError, match="cannot open monitor log"):
        TrainingMonitor(toy(), full_basis, blocker / "sub" / "m.jsonl")


def test_disk_full_warns_and_training_continues(corpus, full_basis):
    model = toy(1)
    mon = TrainingMonitor(model, full_basis, "/dev/full", every=2, lr=0.05)  # every write fails with ENOSPC
    with pytest.warns(RuntimeWarning, match="cannot write"):
        res = train_toy(model, corpus, lr=0.05, steps=6, batch_size=8, progress=False, callback=mon.callback)
    assert len(res.losses) == 6 and [r["step"] for r in mon.records] == [2, 4, 6]
    assert mon.write_failures == 3
    with pytest.warns(RuntimeWarning, match="could not be written"):
        mon.close()


def test_failing_measure_warns_and_training_continues(corpus, full_basis, monkeypatch):
    model = toy(1)
    mon = TrainingMonitor(model, full_basis, every=1)

    def boom(*a, **k):
        raise RuntimeError("simulated")

    monkeypatch.setattr(mon.probe, "measure", boom)
    with pytest.warns(RuntimeWarning, match="simulated"):
        res = train_toy(model, corpus, lr=0.05, steps=3, progress=False, callback=mon.callback)
    assert len(res.losses) == 3 and mon.records == []


def test_tensorboard_needs_its_package(corpus, full_basis, tmp_path, monkeypatch):
    """Without tensorboard: a one-line error at attach that says what to install, before any file is written."""
    import builtins

    real_import = builtins.__import__

    def no_tb(name, *a, **k):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_tb)
    with pytest.raises(LeadTermError, match=r"pip install tensorboard") as e:
        TrainingMonitor(toy(1), full_basis, tmp_path / "m.jsonl", every=1, tensorboard=tmp_path / "tb")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "tb").exists() and not (tmp_path / "m.jsonl").exists()


def test_records_frame(corpus, full_basis):
    mon = TrainingMonitor(toy(1), full_basis, every=1, lr=0.05)
    mon.log(0, loss=2.0)
    df = records_frame(mon.records)
    assert list(df.index) == [0] and "W_O" in df.columns


def test_cli_log_every_writes_monitor_jsonl(tmp_path):
    from tl_leadterm.cli import main

    out = tmp_path / "run"
    rc = main(["toy-train", "--corpus", "builtin:stories", "--seq-len", "8", "--layers", "1", "--lr", "0.5",
               "--steps", "6", "--batch-size", "16", "--seed", "0", "--word-vocab-size", "60",
               "--log-every", "3", "--out", str(out)])
    assert rc == 0
    lines = (out / "monitor.jsonl").read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    assert [r["step"] for r in recs] == [3, 6]
    assert set(recs[0]["similarity"]) == {"W_O", "W/L0", "V/L0", "P/L0"}
    assert recs[0]["similarity"]["W_O"] > 0.5


# ---------------------------------------------------------------------------
# real models
# ---------------------------------------------------------------------------
def direct_cov_similarity(h, t):
    """THEORY.md §5 written out: row-centre, covariance, Frobenius cosine (theory rows normalised)."""
    h = h.double()
    t = t.double()
    t = torch.stack([row / row.norm() for row in t])
    hc = torch.stack([row - row.mean() for row in h])
    tc = torch.stack([row - row.mean() for row in t])
    return direct_cos(hc @ hc.T, tc @ tc.T)


def test_covariance_similarity_formula():
    g = torch.Generator().manual_seed(0)
    h, t = torch.randn(7, 5, generator=g, dtype=torch.float64), torch.randn(7, 7, generator=g, dtype=torch.float64)
    assert covariance_similarity(h, t) == pytest.approx(direct_cov_similarity(h, t), abs=1e-12)
    # invariant to scaling the representation; 1 when the representation is the theory itself
    assert covariance_similarity(3 * h, t) == pytest.approx(covariance_similarity(h, t), abs=1e-12)
    tn = t / t.norm(dim=1, keepdim=True)
    assert covariance_similarity(tn, t) == pytest.approx(1.0, abs=1e-12)


@pytest.fixture(scope="module")
def pythia_basis(shared_data):
    from tl_leadterm import load_corpus

    w = load_corpus("builtin:stories", seq_len=16, tokenizer=str(shared_data / "gpt-neox-20b-tokenizer.json"), vocab_size=50304)
    return compute_basis(w, top_k=40, mode="merge-other", progress=False)


def _check_real_record(model, basis, wq, wk, reps):
    mon = TrainingMonitor(model, basis, every=1)
    rec = mon.log(5, loss=torch.tensor(2.5))
    assert rec["kind"] == "real" and rec["loss"] == 2.5
    L = wq.shape[0]
    for l in range(L):
        h = reps[l].double()
        assert rec["similarity"][f"resid_pre/L{l}"] == pytest.approx(direct_cov_similarity(h, basis.value), abs=1e-9)
        heads = [h @ wq[l, i].double() @ wk[l, i].double().T @ h.T for i in range(wq.shape[1])]
        assert rec["similarity"][f"key_query_resid/L{l}/H1"] == pytest.approx(direct_cov_similarity(heads[1], basis.key_query),
                                                                             abs=1e-9)
        avg = sum(heads) / len(heads)
        assert rec["similarity"][f"key_query_resid/L{l}"] == pytest.approx(direct_cov_similarity(avg, basis.key_query), abs=1e-9)
        assert rec["explained"][f"key_query_resid/L{l}"] == pytest.approx(rec["similarity"][f"key_query_resid/L{l}"] ** 2,
                                                                          abs=1e-12)
        with pytest.warns(DeprecationWarning):       # the keys of earlier releases still read
            assert rec["similarity"][f"qk.{l}.1"] == rec["similarity"][f"key_query_resid/L{l}/H1"]
    return mon


def _check_quick_measures_recorded(model, basis, folded: bool):
    """The cheap analysis measures are recorded exactly where LayerNorm is folded (attn_in is W_Q's input)."""
    from tl_leadterm.analysis import quick_measures
    from tl_leadterm.models import adapt
    rec = TrainingMonitor(model, basis, every=1).log(1)
    assert adapt(model, fold=False).folded is folded
    assert ("measures" in rec) is folded
    if folded:
        direct = quick_measures(model, basis)
        assert set(rec["measures"]) == set(direct) and len(direct) == 2 * model.cfg.n_layers
        for k, v in direct.items():
            assert rec["measures"][k] == pytest.approx(v, abs=1e-12)


def test_hf_gpt_neox_measures(tiny_pythia_dir, pythia_basis):
    from transformers import GPTNeoXForCausalLM

    hf = GPTNeoXForCausalLM.from_pretrained(str(tiny_pythia_dir))
    # reference weights from the fused qkv, written per head (HF layout: [head, (q, k, v), d_head] rows)
    H, d = hf.config.num_attention_heads, hf.config.hidden_size
    dh = d // H
    wq = torch.stack([torch.stack([l.attention.query_key_value.weight.detach()[i * 3 * dh: i * 3 * dh + dh].T for i in range(H)])
                      for l in hf.gpt_neox.layers])
    wk = torch.stack([torch.stack([l.attention.query_key_value.weight.detach()[i * 3 * dh + dh: i * 3 * dh + 2 * dh].T for i in range(H)])
                      for l in hf.gpt_neox.layers])
    with torch.no_grad():
        hs = hf(input_ids=pythia_basis.token_ids[:, None], output_hidden_states=True).hidden_states
    _check_real_record(hf, pythia_basis, wq, wk, [x[:, 0] for x in hs])
    _check_quick_measures_recorded(hf, pythia_basis, folded=False)


def test_transformer_lens_model_measures(tiny_pythia_dir, pythia_basis):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            from transformer_lens.model_bridge import TransformerBridge
            model = TransformerBridge.boot_transformers(str(tiny_pythia_dir), device="cpu")
        except ImportError:  # TransformerLens 3.x
            from transformer_lens import HookedTransformer, HookedTransformerConfig
            cfg = HookedTransformerConfig(n_layers=2, d_model=32, n_ctx=16, d_head=8, n_heads=4, d_vocab=50304,
                                          act_fn="gelu", normalization_type="LN", seed=0)
            model = HookedTransformer(cfg)
    with torch.no_grad():
        _, cache = model.run_with_cache(pythia_basis.token_ids[:, None])
        reps = [cache[f"blocks.{l}.hook_resid_pre"][:, 0] for l in range(model.cfg.n_layers)]
    _check_real_record(model, pythia_basis, model.W_Q.detach(), model.W_K.detach(), reps)
    _check_quick_measures_recorded(model, pythia_basis, folded=False)  # raw bridge / unfolded HookedTransformer


def test_folded_model_records_the_quick_measures(tiny_pythia_dir, pythia_basis):
    from tl_leadterm.models import load_model
    _check_quick_measures_recorded(load_model(str(tiny_pythia_dir)).model, pythia_basis, folded=True)


def test_real_model_misfit_fails_at_attach(tiny_pythia_dir, full_basis):
    from transformers import GPTNeoXForCausalLM

    hf = GPTNeoXForCausalLM.from_pretrained(str(tiny_pythia_dir))
    big = compute_basis(windows_from_tokens(torch.tensor([[0, 60000, 1, 60000, 2]]), 60001), token_ids=[60000, 1], progress=False)
    with pytest.raises(LeadTermError, match="vocabulary"):
        TrainingMonitor(hf, big)


def test_hf_trainer_callback(tiny_pythia_dir, pythia_basis, tmp_path):
    from transformers import GPTNeoXForCausalLM, Trainer, TrainingArguments

    hf = GPTNeoXForCausalLM.from_pretrained(str(tiny_pythia_dir))
    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": x, "labels": x} for x in torch.randint(0, 1000, (8, 16), generator=g)]
    mon = TrainingMonitor(hf, pythia_basis, tmp_path / "m.jsonl", every=2)
    args = TrainingArguments(output_dir=str(tmp_path / "t"), max_steps=4, per_device_train_batch_size=4, logging_steps=1,
                             report_to=[], save_strategy="no", use_cpu=True, learning_rate=1e-3)
    trainer = Trainer(model=hf, args=args, train_dataset=data, callbacks=[LeadTermTrainerCallback(mon)])
    trainer.train()
    recs = read_records(tmp_path / "m.jsonl")
    assert [r["step"] for r in recs] == [2, 4]
    assert recs[-1]["loss"] is not None and "key_query_resid/L1/H3" in recs[-1]["similarity"]
    assert mon.sinks == []  # closed at the end of training


def test_monitor_qk_equals_analysis_key_query_resid(tiny_pythia_dir, pythia_basis):
    """The monitor's key_query_resid/Ll[/Hh] are analyze_model's key_query_resid rows (one definition, two paths,
    one key: the table's site, layer and head give the record's key)."""
    from tl_leadterm.analysis import analyze_model
    from tl_leadterm.models import load_model

    ad = load_model(str(tiny_pythia_dir))
    rec = TrainingMonitor(ad.model, pythia_basis, every=1).log(1)
    df = analyze_model(ad, pythia_basis, circuits=False, progress=False)
    rows = df[(df.site == "key_query_resid") & (df.measure == "cov_cosine")]
    assert len(rows) == ad.n_layers * (ad.n_heads + 1)
    for r in rows.itertuples():
        key = measure_key(r.site, int(r.layer), None if pd.isna(r.head) else int(r.head))
        assert rec["similarity"][key] == pytest.approx(r.value, abs=1e-9)
    # and the attention-input variant is a different number (LayerNorm matters)
    kq = df[(df.site == "key_query") & (df.measure == "cov_cosine") & df["head"].isna()].value.to_numpy()
    kr = rows[rows["head"].isna()].value.to_numpy()
    assert abs(kq - kr).max() > 1e-6


def test_real_model_records_carry_their_chance_level(tiny_pythia_dir, pythia_basis):
    """Every real-model similarity has its percentile among random heads / read-outs (the analysis' own nulls)."""
    from tl_leadterm.models import load_model

    ad = load_model(str(tiny_pythia_dir))
    rec = TrainingMonitor(ad.model, pythia_basis, every=1, null_draws=40).log(1)
    assert set(rec["percentile"]) == {k for k, v in rec["similarity"].items() if v is not None}
    assert all(0.0 <= p <= 1.0 for p in rec["percentile"].values())
    assert set(rec["residual_rel_norm"]) == set(rec["similarity"]) and "residual_norm" not in rec
    again = TrainingMonitor(ad.model, pythia_basis, every=1, null_draws=40).log(1)
    assert again["percentile"] == rec["percentile"]                     # seeded
    off = TrainingMonitor(ad.model, pythia_basis, every=1, null_draws=0).log(1)
    assert "percentile" not in off
