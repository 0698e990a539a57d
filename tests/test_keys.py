"""One key scheme (site/L<layer>/H<head>/measure) for the table, the monitor, the quick measures and the causal
check; the keys of earlier releases as deprecated aliases; the toy's measures on what its output sees."""

import json
import warnings

import pytest
import torch

from tl_leadterm import LeadTermError
from tl_leadterm.analysis.table import row_key
from tl_leadterm.theory import LEADING, SITES, Key, Keyed, legacy_key, measure_key, parse_key


@pytest.mark.parametrize("key, parsed", [
    ("W_O", Key("W_O")),
    ("V/L2", Key("V", 2)),
    ("key_query_resid/L0/H3", Key("key_query_resid", 0, 3)),
    ("key_query/L1/cov_cosine", Key("key_query", 1, None, "cov_cosine")),
    ("W_O/cosine", Key("W_O", None, None, "cosine")),
    ("circuit_ov/L0/H1/explained", Key("circuit_ov", 0, 1, "explained")),
])
def test_keys_round_trip(key, parsed):
    assert parse_key(key) == parsed
    assert measure_key(parsed.site, parsed.layer, parsed.head, parsed.measure) == key == str(parsed)


@pytest.mark.parametrize("old, new", [
    ("resid.3", "resid_pre/L3"), ("qk.0", "key_query_resid/L0"), ("qk.1.2", "key_query_resid/L1/H2"),
    ("V.0", "V/L0"), ("W.4", "W/L4"), ("P.1", "P/L1"), ("L0/key_query/cov_cosine", "key_query/L0/cov_cosine"),
    ("L2/V/cosine", "V/L2/cosine"), ("qk", "key_query"), ("ov", "attn_ov"),
])
def test_legacy_keys_map_to_the_scheme(old, new):
    assert legacy_key(old) == new and parse_key(old) == parse_key(new)


@pytest.mark.parametrize("key", ["W_O", "V/L0", "resid_pre/L1", "key_query/L0/H1", "W_O/cosine"])
def test_current_keys_are_not_legacy(key):
    assert legacy_key(key) is None


def test_bad_keys_are_one_line_errors():
    for bad in ("", "a b", "V/L", "V/H1", "V/L0/H", "V/L0/H1/x/y", "V/H1/L0"):
        with pytest.raises(LeadTermError, match="not a tl_leadterm key"):
            parse_key(bad)
    with pytest.raises(LeadTermError, match="needs a layer"):
        measure_key("key_query", None, 2)


def test_keyed_answers_old_keys_with_a_warning_and_serialises_as_current():
    d = Keyed({"key_query_resid/L0/H1": 0.5, "resid_pre/L0": None})
    with pytest.warns(DeprecationWarning, match="key_query_resid/L0/H1"):
        assert d["qk.0.1"] == 0.5
    assert "qk.0.1" in d and "qk.0.2" not in d and d.get("qk.0.2", 7) == 7
    with pytest.raises(KeyError):
        d["qk.5"]
    assert json.loads(json.dumps(d)) == {"key_query_resid/L0/H1": 0.5, "resid_pre/L0": None}
    assert list(d) == ["key_query_resid/L0/H1", "resid_pre/L0"]


def test_every_registry_site_and_toy_weight_is_a_key():
    for name in list(SITES) + list(LEADING):
        assert parse_key(measure_key(name, 0, 1, "explained")) == Key(name, 0, 1, "explained")


def test_old_monitor_logs_read_into_the_scheme(tmp_path):
    from tl_leadterm.monitor import read_records
    from tl_leadterm.results import read_monitor

    p = tmp_path / "monitor.jsonl"
    p.write_text(json.dumps({"step": 1, "similarity": {"W_O": 0.9, "V.0": 0.8, "qk.0.1": 0.1, "resid.0": 0.2}}) + "\n")
    for recs in (read_records(p), read_monitor(p)):
        assert set(recs[0]["similarity"]) == {"W_O", "V/L0", "key_query_resid/L0/H1", "resid_pre/L0"}


def test_toy_measures_compare_what_the_output_sees(corpus, full_basis):
    """W_O, W and P: a constant added to each row changes nothing downstream (softmax follows), so the analysis,
    the monitor and the quick measures compare row-centred matrices; V is compared as it is."""
    from tl_leadterm.analysis import analyze_toy, quick_measures
    from tl_leadterm.monitor import TrainingMonitor
    from tl_leadterm.toy import ToyConfig, ToyTransformer, train_toy
    from reference import T, V

    model = ToyTransformer(ToyConfig(V, T, n_layers=1, dtype=torch.float64))
    train_toy(model, corpus, lr=0.3, steps=20, batch_size=8, seed=0, progress=False)
    before = analyze_toy(model, full_basis)
    with torch.no_grad():       # row offsets: invisible for W_O, W and P, not for V
        g = torch.Generator().manual_seed(0)
        for p in (model.W_O, model.blocks[0].attn.W, model.blocks[0].attn.P):
            p.add_(torch.randn(p.shape[:-1] + (1,), generator=g, dtype=p.dtype) * 3 * p.abs().max())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        after = analyze_toy(model, full_basis)
        q = quick_measures(model, full_basis)
        rec = TrainingMonitor(model, full_basis, every=1).log(1)
    for site in ("W_O", "W", "P"):
        for m in ("explained", "cosine_leading", "residual_norm"):
            a = before[(before.site == site) & (before.measure == m)].value.to_numpy()
            b = after[(after.site == site) & (after.measure == m)].value.to_numpy()
            assert a == pytest.approx(b, rel=1e-9, abs=1e-12), (site, m)
    cos = after[after.measure == "cosine_leading"]
    assert len(cos) == 4
    for r in cos.itertuples():          # the same number under the same key in all three places
        assert rec["similarity"][row_key(r)] == pytest.approx(r.value, abs=1e-12)
        assert q[row_key(r) + "/cosine"] == pytest.approx(r.value, abs=1e-12)
    # V: the weight as it is (a row offset there changes the output, so it must change the measure)
    v_before = before[(before.site == "V") & (before.measure == "explained")].value.item()
    with torch.no_grad():
        model.blocks[0].attn.V.add_(torch.ones(V, 1, dtype=torch.float64) * model.blocks[0].attn.V.abs().max())
    v_after = analyze_toy(model, full_basis)
    assert v_after[(v_after.site == "V") & (v_after.measure == "explained")].value.item() != pytest.approx(v_before, rel=1e-3)
