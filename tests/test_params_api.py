"""Every numeric parameter of the public Python API has one checked range (tl_leadterm.params), numpy scalars work
wherever Python numbers do, and the association explorer takes user tokens in any Unicode normal form, once each.

Table-driven: each row of ``BAD`` is one call and the fragment of its one-line LeadTermError (the parameter's name
and what it must be); ``test_every_numeric_parameter_has_a_row`` finds the numeric parameters of the public
functions from their signatures, so a new one without a row fails here.
"""

import inspect
import math
import unicodedata
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from tl_leadterm import LeadTermError, compute_basis, leading_coefficient, load_corpus
from tl_leadterm.analysis import (analyze_model, analyze_toy, causal_check, fit_circuit, head_gradients,
                                  measure_representations, retention, sweep, toy_atoms)
from tl_leadterm.analysis import head_fit
from tl_leadterm.analysis.sweep import analyze
from tl_leadterm.models import save_random_pythia, train_pythia
from tl_leadterm.monitor import TrainingMonitor, toy_monitor_for_cli
from tl_leadterm.params import RANGES, check
from tl_leadterm.toy import ToyConfig, ToyTransformer, train_toy, windows_loss
from tl_leadterm.visual import associations
from tl_leadterm.visual.attention import compare_attention, predicted_pattern
from tl_leadterm.visual.explorer import resolve_token, residual_view

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = ("the bird flew over the café. the fish swam under the café. the big bird sat on the red car. "
        "a café had a bird and a fish. the car drove past the café.\n") * 6


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    d = tmp_path_factory.mktemp("params")
    (d / "c.txt").write_text(TEXT, encoding="utf-8")
    w = load_corpus(d / "c.txt", seq_len=8)
    basis = compute_basis(w, top_k=w.vocab_size, progress=False)
    toy = ToyTransformer(ToyConfig(w.vocab_size, 8, 1), tokenizer=w.tokenizer)
    train_toy(toy, w, lr=0.5, steps=4, progress=False)
    return {"dir": d, "w": w, "basis": basis, "toy": toy}


@pytest.fixture(scope="module")
def real(ws, tmp_path_factory):
    """A tiny random GPT-NeoX (2 layers, 2 heads) on the corpus' word tokenizer."""
    from tl_leadterm.models import load_model, save_random_pythia
    w = ws["w"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = save_random_pythia(tmp_path_factory.mktemp("m") / "m", w.tokenizer, n_layers=2, d_model=16, n_heads=2,
                               vocab_size=w.vocab_size, n_ctx=16)
        return load_model(str(p), dtype=torch.float64)


def _monitor(ws, **kw):
    return TrainingMonitor(ws["toy"], ws["basis"], **kw)


def _mutated_config():
    cfg = ToyConfig(5, 4, 1)
    cfg.n_layers = 0                      # changed after it was checked: the model checks it again
    return ToyTransformer(cfg)


def _fit():
    from tl_leadterm.analysis import Factored
    from tl_leadterm.analysis.residual import Atoms, fit
    g = torch.Generator().manual_seed(0)
    X = Factored(torch.randn(5, 2, generator=g, dtype=torch.float64), torch.randn(2, 5, generator=g, dtype=torch.float64))
    return fit(X, Atoms.build({"t": torch.randn(5, 5, generator=g, dtype=torch.float64)}), top=2, n_singular=1)


NAN, INF = float("nan"), float("inf")

# (function, parameter, call(ws), fragment of the one-line error)
BAD = [
    # analysis
    ("analyze_model", "batch_size", lambda ws: analyze_model(ws["toy"], ws["basis"], batch_size=0), "batch_size must be an integer >= 1"),
    ("analyze_model", "gradient_batch", lambda ws: analyze_model(ws["toy"], ws["basis"], gradient_batch=0), "gradient_batch must be an integer >= 1"),
    ("analyze_model", "seed", lambda ws: analyze_model(ws["toy"], ws["basis"], seed=NAN), "seed must be an integer >= 0"),
    ("analyze_model", "seed", lambda ws: analyze_model(ws["toy"], ws["basis"], seed=-1), "seed must be an integer >= 0"),
    ("analyze_model", "seed", lambda ws: analyze_model(ws["toy"], ws["basis"], seed=2**70), "seed must be an integer >= 0 and <= 18,446"),
    ("analyze_model", "top", lambda ws: analyze_model(ws["toy"], ws["basis"], top=-1), "top must be an integer >= 0"),
    ("analyze_model", "top", lambda ws: analyze_model(ws["toy"], ws["basis"], top=2.5), "top must be an integer >= 0"),
    ("analyze_model", "n_singular", lambda ws: analyze_model(ws["toy"], ws["basis"], n_singular=True), "n_singular must be an integer"),
    ("analyze_model", "null_draws", lambda ws: analyze_model(ws["toy"], ws["basis"], null_draws=-1), "null_draws must be >= 0"),
    ("analyze_model", "null_draws", lambda ws: analyze_model(ws["toy"], ws["basis"], null_draws=1.5), "null_draws must be an integer >= 0"),
    ("analyze_toy", "top", lambda ws: analyze_toy(ws["toy"], ws["basis"], top=-1), "top must be an integer >= 0"),
    ("analyze_toy", "n_singular", lambda ws: analyze_toy(ws["toy"], ws["basis"], n_singular=-2), "n_singular must be an integer >= 0"),
    ("analyze", "top", lambda ws: analyze(__import__("tl_leadterm.models", fromlist=["x"]).adapt(ws["toy"]), ws["basis"], top=1.5),
     "top must be an integer"),
    ("sweep", "top", lambda ws: sweep(None, "step1", ws["basis"], top=-1), "top must be"),     # before anything is loaded
    ("sweep", "null_draws", lambda ws: sweep(None, "step1", ws["basis"], null_draws=np.float64(2.5)), "null_draws must be an integer"),
    ("fit_circuit", "top", lambda ws: fit_circuit(torch.zeros(3, 3), ws["basis"], top=-1), "top must be an integer >= 0"),
    ("fit_circuit", "n_singular", lambda ws: fit_circuit(torch.zeros(3, 3), ws["basis"], n_singular=1.5), "n_singular must be"),
    ("measure_representations", "null_draws", lambda ws: measure_representations(torch.zeros(3, 2), ws["basis"], null_draws=-1),
     "null_draws must be >= 0"),
    ("measure_representations", "seed", lambda ws: measure_representations(torch.zeros(3, 2), ws["basis"], seed=-1), "seed must be"),
    ("head_gradients", "batch_size", lambda ws: head_gradients(ws["toy"], ws["w"].tokens, batch_size=0), "batch_size must be an integer >= 1"),
    ("head_gradients", "batch_size", lambda ws: head_gradients(ws["toy"], ws["w"].tokens, batch_size=1.5), "batch_size must be an integer"),
    ("causal_check", "seeds", lambda ws: causal_check(ws["toy"], ws["basis"], ws["w"], seeds=0), "seeds must be >= 1"),
    ("causal_check", "seeds", lambda ws: causal_check(ws["toy"], ws["basis"], ws["w"], seeds=1.5), "seeds must be an integer >= 1"),
    ("causal_check", "layers", lambda ws: causal_check(ws["toy"], ws["basis"], ws["w"], layers=[5]), "layers 5 is out of range: the model has 1 layers"),
    ("causal_check", "layers", lambda ws: causal_check(ws["toy"], ws["basis"], ws["w"], layers=[0.5]), "layers must be an integer >= 0"),
    ("causal_check", "layers", lambda ws: causal_check(ws["toy"], ws["basis"], ws["w"], layers="0"), "layers must be a list of layers"),
    ("causal_check", "heads", lambda ws: causal_check(ws["toy"], ws["basis"], ws["w"], heads=[1]), "heads 1 is out of range: the model has 1 heads"),
    ("causal_check", "heads", lambda ws: causal_check(ws["toy"], ws["basis"], ws["w"], heads=[-1]), "heads must be an integer >= 0"),
    ("toy_atoms", "length", lambda ws: toy_atoms(ws["basis"], "P.0", False, length=0), "length must be an integer >= 1"),
    ("retention", "threshold", lambda ws: retention(pd.DataFrame(columns=["checkpoint", "layer", "head", "site", "measure", "value"]),
                                                    threshold=NAN), "threshold must be a finite number >= 0 and <= 1"),
    ("retention", "threshold", lambda ws: retention(pd.DataFrame(columns=["checkpoint", "layer", "head", "site", "measure", "value"]),
                                                    threshold=5), "threshold must be a finite number >= 0 and <= 1"),
    # the toy model and its training
    ("ToyConfig", "n_heads", lambda ws: ToyConfig(5, 4, 1, n_heads=0), "n_heads must be 1 (the toy model has one head per layer)"),
    ("ToyConfig", "n_heads", lambda ws: ToyConfig(5, 4, 1, n_heads=2), "n_heads must be 1"),
    ("ToyConfig", "d_vocab", lambda ws: ToyConfig(1, 4, 1), "d_vocab must be an integer >= 2"),
    ("ToyConfig", "n_ctx", lambda ws: ToyConfig(5, 1.5, 1), "n_ctx must be an integer >= 2"),
    ("ToyConfig", "n_layers", lambda ws: ToyConfig(5, 4, 0), "n_layers must be an integer >= 1"),
    ("ToyConfig", "n_layers", lambda ws: ToyConfig(5, 4, True), "n_layers must be an integer >= 1"),
    ("ToyTransformer", "cfg", lambda ws: _mutated_config(), "n_layers must be an integer >= 1"),
    ("ToyTransformer.W", "layer", lambda ws: ws["toy"].W(5), "layer 5 is out of range: the model has 1 layers"),
    ("ToyTransformer.V", "layer", lambda ws: ws["toy"].V(-1), "layer must be an integer >= 0"),
    ("ToyTransformer.P", "layer", lambda ws: ws["toy"].P(0.5), "layer must be an integer >= 0"),
    ("train_toy", "batch_size", lambda ws: train_toy(ws["toy"], ws["w"], lr=0.1, steps=1, batch_size=1.5, progress=False), "batch_size must be an integer >= 1"),
    ("train_toy", "batch_size", lambda ws: train_toy(ws["toy"], ws["w"], lr=0.1, steps=1, batch_size=True, progress=False), "batch_size must be an integer >= 1"),
    ("train_toy", "batch_size", lambda ws: train_toy(ws["toy"], ws["w"], lr=0.1, steps=1, batch_size=0, progress=False), "batch_size must be an integer >= 1"),
    ("train_toy", "steps", lambda ws: train_toy(ws["toy"], ws["w"], lr=0.1, steps=2.7, progress=False), "steps must be an integer >= 0"),
    ("train_toy", "steps", lambda ws: train_toy(ws["toy"], ws["w"], lr=0.1, steps=-1, progress=False), "steps must be >= 0"),
    ("train_toy", "lr", lambda ws: train_toy(ws["toy"], ws["w"], lr=NAN, steps=1, progress=False), "lr must be a positive number"),
    ("train_toy", "lr", lambda ws: train_toy(ws["toy"], ws["w"], lr="0.1", steps=1, progress=False), "lr must be a positive number"),
    ("train_toy", "seed", lambda ws: train_toy(ws["toy"], ws["w"], lr=0.1, steps=1, seed=-1, progress=False), "seed must be"),
    ("windows_loss", "batch_size", lambda ws: windows_loss(ws["toy"], ws["w"], batch_size=0), "batch_size must be an integer >= 1"),
    ("leading_coefficient", "steps", lambda ws: leading_coefficient("V", -1, 0.1), "steps must be >= 0"),
    ("leading_coefficient", "steps", lambda ws: leading_coefficient("V", 2.7, 0.1), "steps must be an integer >= 0"),
    ("leading_coefficient", "lr", lambda ws: leading_coefficient("V", 2, NAN), "lr must be a positive number"),
    ("leading_coefficient", "lr", lambda ws: leading_coefficient("W_O", 2, 0), "lr must be a positive number"),
    ("leading_coefficient", "lr", lambda ws: leading_coefficient("W_O", 2, True), "lr must be a positive number"),
    # the monitor
    ("TrainingMonitor", "max_tokens", lambda ws: _monitor(ws, max_tokens=0), "max_tokens must be an integer >= 1"),
    ("TrainingMonitor", "seed", lambda ws: _monitor(ws, seed=-1), "seed must be an integer >= 0"),
    ("TrainingMonitor", "every", lambda ws: _monitor(ws, every=0), "every must be an integer >= 1"),
    ("TrainingMonitor", "lr", lambda ws: _monitor(ws, lr=INF), "lr must be a positive number"),
    ("TrainingMonitor", "null_draws", lambda ws: _monitor(ws, null_draws=1.5), "null_draws must be an integer >= 0"),
    ("TrainingMonitor.callback", "step", lambda ws: _monitor(ws).callback(1.5), "step must be an integer >= 0"),
    ("TrainingMonitor.log", "step", lambda ws: _monitor(ws).log(-1), "step must be an integer >= 0"),
    ("toy_monitor_for_cli", "every", lambda ws: toy_monitor_for_cli(ws["toy"], ws["w"], None, every=-2, lr=None), "every must be"),
    ("toy_monitor_for_cli", "lr", lambda ws: toy_monitor_for_cli(ws["toy"], ws["w"], None, every=1, lr=-1.0), "lr must be"),
    ("toy_monitor_for_cli", "max_k", lambda ws: toy_monitor_for_cli(ws["toy"], ws["w"], None, every=1, lr=None, max_k=0),
     "max_k must be a positive integer"),
    # views
    ("associations", "top", lambda ws: associations(ws["basis"], ["bird"], top=2.5), "top must be a positive integer"),
    ("associations", "top", lambda ws: associations(ws["basis"], ["bird"], top=0), "top must be a positive integer"),
    ("associations", "top", lambda ws: associations(ws["basis"], ["bird"], top=True), "top must be a positive integer"),
    ("associations", "tokens", lambda ws: associations(ws["basis"], ["bird", "bird"]), "tokens names basis token 'bird' twice"),
    ("associations", "tokens", lambda ws: associations(ws["basis"], ["bird", " Bird"]), "give each token once"),
    ("associations", "tokens", lambda ws: associations(ws["basis"], ["café", unicodedata.normalize("NFD", "Café")]), "twice"),
    ("associations", "tokens", lambda ws: associations(ws["basis"], ["bird", _id(ws, "bird")]), "twice"),
    ("associations", "tokens", lambda ws: associations(ws["basis"], "bird"), "tokens must be a list of tokens"),
    ("associations", "tokens", lambda ws: associations(ws["basis"], []), "tokens is empty"),
    ("associations", "tokens", lambda ws: associations(ws["basis"], [1.5]), "tokens must hold token strings or token ids"),
    ("associations", "tokens", lambda ws: associations(ws["basis"], [True]), "tokens must hold token strings or token ids"),
    ("residual_view", "n_tokens", lambda ws: residual_view(_fit(), [str(i) for i in range(5)], "t", n_tokens=0),
     "n_tokens must be a positive integer"),
    ("predicted_pattern", "scale", lambda ws: predicted_pattern(torch.zeros(2, 2), NAN), "scale must be a finite number"),
    ("compare_attention", "text", lambda ws: compare_attention(ws["toy"], ws["basis"], [1.5, 2.0]), "token ids must be integers"),
    ("compare_attention", "text", lambda ws: compare_attention(ws["toy"], ws["basis"], ["a", "b"]), "token ids must be integers"),
    ("head_fit", "layer", lambda ws: head_fit(ws["toy"], ws["basis"], 9, 0, "circuit_ov"), "layer 9 is out of range"),
    ("head_fit", "layer", lambda ws: head_fit(ws["toy"], ws["basis"], -1, 0, "circuit_ov"), "layer must be an integer >= 0"),
    ("head_fit", "head", lambda ws: head_fit(ws["toy"], ws["basis"], 0, 3, "circuit_ov"), "head 3 is out of range"),
    ("head_fit", "head", lambda ws: head_fit(ws["toy"], ws["basis"], 0, 0.5, "circuit_ov"), "head must be an integer"),
    ("head_fit", "top", lambda ws: head_fit(ws["toy"], ws["basis"], 0, 0, "circuit_ov", top=-1), "top must be an integer >= 0"),
    ("head_fit", "n_singular", lambda ws: head_fit(ws["toy"], ws["basis"], 0, 0, "circuit_ov", n_singular=NAN),
     "n_singular must be an integer"),
    ("save_random_pythia", "n_layers", lambda ws: save_random_pythia(ws["dir"] / "no", ws["w"].tokenizer, n_layers=0),
     "n_layers must be an integer >= 1"),
    ("save_random_pythia", "d_model", lambda ws: save_random_pythia(ws["dir"] / "no", ws["w"].tokenizer, d_model=2.5),
     "d_model must be an integer"),
    ("save_random_pythia", "n_heads", lambda ws: save_random_pythia(ws["dir"] / "no", ws["w"].tokenizer, n_heads=3),
     "must be a multiple of n_heads"),
    ("save_random_pythia", "seed", lambda ws: save_random_pythia(ws["dir"] / "no", ws["w"].tokenizer, seed=-1),
     "seed must be"),
    ("save_random_pythia", "vocab_size", lambda ws: save_random_pythia(ws["dir"] / "no", ws["w"].tokenizer, vocab_size=1),
     "vocab_size must be"),
    ("save_random_pythia", "n_ctx", lambda ws: save_random_pythia(ws["dir"] / "no", ws["w"].tokenizer, n_ctx=0),
     "n_ctx must be an integer >= 1"),
    ("save_random_pythia", "d_mlp", lambda ws: save_random_pythia(ws["dir"] / "no", ws["w"].tokenizer, d_mlp=-4),
     "d_mlp must be an integer >= 1"),
    ("train_pythia", "steps", lambda ws: train_pythia(ws["w"], ws["dir"] / "no", steps=0), "steps"),
    ("train_pythia", "lr", lambda ws: train_pythia(ws["w"], ws["dir"] / "no", steps=2, lr=NAN), "lr must be a positive number"),
    ("train_pythia", "batch_size", lambda ws: train_pythia(ws["w"], ws["dir"] / "no", steps=2, batch_size=0), "batch_size must be"),
    ("train_pythia", "warmup", lambda ws: train_pythia(ws["w"], ws["dir"] / "no", steps=2, warmup=-1), "warmup must be"),
    ("train_pythia", "n_layers", lambda ws: train_pythia(ws["w"], ws["dir"] / "no", steps=2, n_layers=0), "n_layers must be"),
    ("train_pythia", "d_model", lambda ws: train_pythia(ws["w"], ws["dir"] / "no", steps=2, d_model=0), "d_model must be"),
    ("train_pythia", "n_heads", lambda ws: train_pythia(ws["w"], ws["dir"] / "no", steps=2, n_heads=0), "n_heads must be"),
    ("train_pythia", "seed", lambda ws: train_pythia(ws["w"], ws["dir"] / "no", steps=2, seed=2 ** 70), "seed must be"),
]


def _id(ws, word):
    return int(ws["w"].tokenizer.encode(word)[0])


@pytest.mark.parametrize("func,param,call,fragment", BAD, ids=[f"{r[0]}-{r[1]}-{i}" for i, r in enumerate(BAD)])
def test_bad_number_is_one_line_error(ws, func, param, call, fragment):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(LeadTermError) as e:
            call(ws)
    msg = str(e.value)
    assert fragment in msg and "\n" not in msg, msg
    assert param in msg or func == "ToyTransformer" or param == "text", msg        # names the parameter


#: the public functions whose numbers this file checks: name -> callable (their numeric parameters are read from
#: the signatures: annotated int or float, or with an int or float default)
PUBLIC = {
    "analyze_model": analyze_model, "analyze_toy": analyze_toy, "sweep": None, "fit_circuit": fit_circuit,
    "measure_representations": measure_representations, "head_gradients": head_gradients, "causal_check": causal_check,
    "toy_atoms": toy_atoms, "retention": retention, "ToyConfig": ToyConfig, "train_toy": train_toy,
    "windows_loss": windows_loss, "leading_coefficient": leading_coefficient, "TrainingMonitor": TrainingMonitor,
    "TrainingMonitor.callback": TrainingMonitor.callback, "TrainingMonitor.log": TrainingMonitor.log,
    "toy_monitor_for_cli": toy_monitor_for_cli, "associations": associations, "residual_view": residual_view,
    "predicted_pattern": predicted_pattern, "ToyTransformer.W": ToyTransformer.W, "ToyTransformer.V": ToyTransformer.V,
    "ToyTransformer.P": ToyTransformer.P, "head_fit": head_fit, "save_random_pythia": save_random_pythia,
    "train_pythia": train_pythia,
}


#: numbers that are data, not settings: the training loss a loop reports (a non-finite loss is recorded as None)
DATA = {"loss"}


def _numeric_parameters(fn) -> set[str]:
    out = set()
    for name, p in inspect.signature(fn).parameters.items():
        ann = str(p.annotation)
        default = p.default
        number_default = isinstance(default, (int, float)) and not isinstance(default, bool)
        if name == "self" or name in DATA or ann.startswith("Callable") or "bool" in ann \
                or "str" in ann.replace("Sequence[str", ""):
            continue
        if number_default or "int" in ann or "float" in ann:
            out.add(name)
    return out


def test_every_numeric_parameter_has_a_row():
    have = {(f, p) for f, p, _, _ in BAD}
    missing = sorted((f, p) for f, fn in PUBLIC.items() if fn is not None for p in _numeric_parameters(fn) if (f, p) not in have)
    assert not missing, f"numeric parameters without a bad-input row: {missing}"
    assert _numeric_parameters(analyze_model) == {"top", "n_singular", "batch_size", "gradient_batch", "null_draws", "seed"}
    assert _numeric_parameters(ToyConfig) == {"d_vocab", "n_ctx", "n_layers", "n_heads"}


def test_bool_is_never_a_count_and_numpy_bool_neither():
    for v in (True, np.bool_(True)):
        for name in ("top", "batch_size", "steps", "seed", "lr"):
            with pytest.raises(LeadTermError, match=f"^{name} must be"):
                check(name, v)


def test_range_messages_say_the_type_only_when_it_is_wrong():
    with pytest.raises(LeadTermError, match=r"^steps must be >= 0 \(at most 1,000,000,000\), got -1$"):
        check("steps", -1)
    with pytest.raises(LeadTermError, match=r"^steps must be an integer >= 0 \(at most 1,000,000,000\), got 1.5$"):
        check("steps", 1.5)
    with pytest.raises(LeadTermError, match=r"^lr must be a positive number, got an integer of 401 digits$"):
        check("lr", 10**400)                             # beyond any float: refused, not an OverflowError
    assert all(r.phrase() and r.phrase(kind=True) for r in RANGES.values())


# ---------------------------------------------------------------------------
# numpy scalars work wherever Python numbers do, and give the same results
# ---------------------------------------------------------------------------
def test_numpy_scalars_in_training_and_the_toy_model(ws):
    w = ws["w"]
    cfg = ToyConfig(np.int64(w.vocab_size), np.int32(8), np.int8(1), n_heads=np.uint8(1))
    assert all(type(v) is int for v in (cfg.d_vocab, cfg.n_ctx, cfg.n_layers, cfg.n_heads))
    a, b = ToyTransformer(ToyConfig(w.vocab_size, 8, 1)), ToyTransformer(cfg)
    ra = train_toy(a, w, lr=0.5, steps=2, batch_size=4, seed=1, progress=False)
    rb = train_toy(b, w, lr=np.float32(0.5), steps=np.int64(2), batch_size=np.int64(4), seed=np.uint64(1), progress=False)
    assert ra.losses == rb.losses and torch.equal(a.W_O, b.W_O) and type(rb.lr) is float and type(rb.steps) is int
    assert torch.equal(a.V(np.int64(0)), a.V(0))
    assert windows_loss(a, w, batch_size=np.int64(3)) == pytest.approx(windows_loss(a, w, batch_size=3), rel=1e-12)
    assert leading_coefficient("V", np.int64(3), np.float64(0.5)) == leading_coefficient("V", 3, 0.5) == 0.75
    assert leading_coefficient("W", np.int16(4), np.float32(0.5)) == leading_coefficient("W", 4, 0.5)


def test_numpy_scalars_in_the_analysis(ws, real):
    basis, toy, w = ws["basis"], ws["toy"], ws["w"]
    pd.testing.assert_frame_equal(analyze_toy(toy, basis, top=np.int64(2), n_singular=np.int32(1)),
                                  analyze_toy(toy, basis, top=2, n_singular=1))
    kw = dict(progress=False, sites=["circuit_ov", "key_query"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = analyze_model(real, basis, top=3, n_singular=2, null_draws=4, seed=1, batch_size=8, **kw)
        b = analyze_model(real, basis, top=np.int64(3), n_singular=np.int32(2), null_draws=np.uint16(4), seed=np.int64(1),
                          batch_size=np.int64(8), **kw)
    pd.testing.assert_frame_equal(a, b)
    assert (a["measure"] == "residual_pair").sum() > 0
    ga = head_gradients(real, w.tokens[:4], batch_size=2)
    gb = head_gradients(real, w.tokens[:4], batch_size=np.int64(2))
    assert all(torch.equal(ga[k], gb[k]) for k in ga)
    c1 = causal_check(real, basis, w.tokens[:4], seeds=1, layers=[1], heads=[0], progress=False)
    c2 = causal_check(real, basis, w.tokens[:4], seeds=np.int64(1), layers=np.array([1]), heads=[np.int8(0)], progress=False)
    pd.testing.assert_frame_equal(c1, c2)
    assert set(c1["layer"]) == {1} and set(c1["head"]) == {0}
    X = torch.randn(basis.k, basis.k, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    pd.testing.assert_frame_equal(fit_circuit(X, basis, top=np.int64(2), n_singular=np.int64(1)), fit_circuit(X, basis, top=2, n_singular=1))
    reps = torch.randn(basis.k, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    E = torch.randn(w.vocab_size, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    pd.testing.assert_frame_equal(measure_representations(reps, basis, embeddings=E, null_draws=np.int64(5), seed=np.int32(3)),
                                  measure_representations(reps, basis, embeddings=E, null_draws=5, seed=3))
    st = sweep(None, [toy], basis, labels=["t"], progress=False, top=np.int64(1))
    assert (st["measure"] == "residual_pair").groupby(st["site"]).sum().max() == 1        # top reaches the toy analysis


def test_numpy_scalars_in_the_monitor_and_views(ws):
    basis, toy = ws["basis"], ws["toy"]
    m = TrainingMonitor(toy, basis, every=np.int64(2), lr=np.float32(0.5), null_draws=np.int64(0), seed=np.uint32(1),
                        max_tokens=np.int64(5))
    assert type(m.every) is int and type(m.lr) is float and m.lr == 0.5
    assert m.callback(np.int64(1)) is None and m.callback(np.int64(2))["step"] == 2
    ref = TrainingMonitor(toy, basis, every=2, lr=0.5)
    assert ref.callback(2) == m.callback(np.int64(2))
    i = _id(ws, "bird")
    pd.testing.assert_frame_equal(associations(basis, [np.int64(i)], top=np.int64(3)), associations(basis, ["bird"], top=3))
    L = torch.tensor([[0.0, -math.inf], [1.0, 2.0]], dtype=torch.float64)
    assert torch.equal(predicted_pattern(L, np.float32(0.5)), predicted_pattern(L, 0.5))
    comp = compare_attention(toy, basis, np.array([i, i, 0]))
    assert comp.token_ids.tolist() == [i, i, 0]


# ---------------------------------------------------------------------------
# user tokens: NFC, case and spaces resolve to one basis token, and each basis token comes once
# ---------------------------------------------------------------------------
def test_user_tokens_in_any_normal_form_find_the_same_token(ws):
    basis = ws["basis"]
    nfc = unicodedata.normalize("NFC", "café")
    assert "café" in basis.token_strs() and nfc in basis.token_strs()
    want = resolve_token(basis, nfc)
    for spelling in (unicodedata.normalize("NFD", "café"), unicodedata.normalize("NFD", "Café"), "Café", " café ",
                     unicodedata.normalize("NFKD", "CAFÉ")):
        assert spelling != nfc or spelling == "café"
        assert resolve_token(basis, spelling) == want, ascii(spelling)
    a = associations(basis, [unicodedata.normalize("NFD", "café")], top=3)
    b = associations(basis, ["café"], top=3)
    pd.testing.assert_frame_equal(a, b)
    assert set(a["token"]) == {nfc}


def test_associations_have_no_duplicate_rows(ws):
    df = associations(ws["basis"], ["bird", "fish", "café"], model=ws["toy"], top=4)
    assert not df.duplicated(["token", "source", "rank"]).any()
    assert list(dict.fromkeys(df["token"])) == ["bird", "fish", "café"]


def test_model_adapters_check_layer_indices_and_batch_sizes(real):
    """Layer indices into a model (numpy integers welcome) and batch sizes: one line, before touching the model."""
    assert torch.equal(real.W_Q(np.int64(1)), real.W_Q(1))
    for call, fragment in ((lambda: real.W_Q(2), "layer 2 is out of range: the model has 2 layers"),
                           (lambda: real.W_O(-1), "layer must be an integer >= 0"),
                           (lambda: real.b_V(1.0), "layer must be an integer"),
                           (lambda: real.token_representations([1, 2], batch_size=0), "batch_size must be an integer >= 1")):
        with pytest.raises(LeadTermError) as e:
            call()
        assert fragment in str(e.value) and "\n" not in str(e.value)
