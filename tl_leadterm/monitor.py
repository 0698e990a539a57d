"""Training monitor: similarity of a model's weights to their leading terms, during training.

Attach a monitor to a model and a :class:`~tl_leadterm.basis.Basis`, then call it
from any plain PyTorch loop after each optimiser step::

    mon = TrainingMonitor(model, basis, path="run/monitor.jsonl", every=100, lr=0.1)
    for step in range(1, steps + 1):
        ...; opt.step()
        mon.callback(step, model, loss)     # logs when step % every == 0
    mon.close()

or use :class:`LeadTermTrainerCallback` with a Hugging Face ``Trainer``.

Every logged step is one JSON object on one line of the JSONL file::

    {"step": 200, "loss": 3.1, "kind": "toy",
     "similarity":    {"W_O": 0.99, "V/L0": 0.97, "W/L0": 0.81, "P/L0": 0.93, ...},
     "explained":     {...}, "residual_norm": {...}, "coefficient_ratio": {...},
    }

Keys follow the package's one key scheme, ``site[/L<layer>][/H<head>]``
(:func:`tl_leadterm.theory.measure_key`; the analysis table's ``site``, ``layer`` and ``head``).  The keys of
earlier releases (``V.0``, ``qk.0.1``, ``resid.0``) still read from ``monitor.records`` with a
DeprecationWarning (:class:`~tl_leadterm.theory.Keyed`), and :func:`tl_leadterm.results.read_monitor` reads old
JSONL files into the new keys.

(the time spent measuring is ``monitor.seconds``; records hold no clock, so the same
training writes the same bytes).

Toy model (:class:`~tl_leadterm.toy.ToyTransformer`)
    For each weight ``W_O``, ``V/Ll``, ``W/Ll``, ``P/Ll`` with leading-term matrix
    ``B`` (``B̄``, ``M``, ``Q̄``, ``p̄``; THEORY.md §3).  The toy weights are
    full-vocabulary ``|V| x |V|``; a basis over ``k`` tokens is compared on the
    ``k x k`` sub-block ``weight[token_ids][:, token_ids]`` (``P`` on its first
    ``basis.seq_len`` entries).  Where a constant per row is invisible to the model's output (``W_O``, ``W``,
    ``P``: softmax follows; :attr:`tl_leadterm.theory.Leading.centred`) both are compared with their rows
    centred, as every analysis does (:func:`tl_leadterm.analysis.toy.toy_visible_pair`); ``V`` as it is.
    With ``A`` and ``B`` so prepared:

    * ``similarity`` = cos(A, B) = <A, B> / (|A| |B|) (Frobenius; the leading
      coefficient does not change it);
    * ``explained`` = cos(A, B)² — the fraction of |A|² captured by the best
      multiple ``c* B`` of the leading term, ``c* = <A, B>/|B|²``;
    * ``residual_norm`` = |A − c* B| (absolute, in the weight's units): what lies
      beyond the leading-term direction;
    * ``coefficient_ratio`` = c* / leading_coefficient(step, lr) (only when
      ``lr`` is given): 1 while the leading term dominates.

    Undefined values (a weight that is still exactly zero: ``W`` and ``P`` for
    the first two steps) are ``null``.

Real models (HookedTransformer, TransformerBridge, Hugging Face GPT-NeoX)
    The model is probed through the adapter (:func:`tl_leadterm.models.adapt` with
    ``fold=False``: nothing it trains is converted) and the analysis measures.  The
    cheap per-layer representational measures of THEORY.md §5 over the
    basis tokens, each token run alone: ``resid_pre/Ll`` compares layer ``l``'s
    ``resid_pre`` representations with ``M``; ``key_query_resid/Ll`` compares
    ``S_l = H_l W_Q W_Kᵀ H_lᵀ`` (averaged over heads) with ``Q̄`` and ``key_query_resid/Ll/Hh``
    does so per head (the analysis' sites ``resid_pre`` and ``key_query_resid``).  ``similarity`` is the Frobenius cosine of the row-centred
    covariance matrices; ``explained`` its square; ``residual_rel_norm`` the relative
    norm sqrt(1 − cos²) of what the best multiple of the theory's covariance
    leaves.  Where LayerNorm is folded into the weights (HookedTransformer loaded
    by TransformerLens, a TransformerBridge in compatibility mode),
    :func:`tl_leadterm.analysis.quick_measures` (key-query on the attention input,
    ``resid_post``) is recorded as well, under ``"measures"``; elsewhere the attention
    input is not what W_Q multiplies and they are not recorded.

Outputs: the records go to sinks (:mod:`tl_leadterm.sinks`: anything with ``write(record)`` and
``close()``): ``path`` is a :class:`~tl_leadterm.sinks.JSONLSink`, ``tensorboard`` a
:class:`~tl_leadterm.sinks.TensorBoardSink`, and ``sinks=`` adds more (e.g.
:class:`~tl_leadterm.sinks.WandbSink`); ``monitor.records`` keeps them in memory as well.

Failures: a basis that does not fit the model (the one rule of
:func:`tl_leadterm.analysis.check_compatible`) raises :class:`LeadTermError`
when the monitor is built (the measures are computed once there, as a dry
run); an output path that cannot be opened, or a sink whose package is not installed, also
raises then.  Once training
runs, a logging failure (disk full, permission, a measure that fails) only
warns: the monitor never stops training.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from .analysis.compat import check_compatible
from .analysis.factored import Factored
from .analysis.chance import family_null, group_seed, representation_null
from .analysis.measures import Family, Targets, cov_cosine_dense, projection, similarities
from .analysis.quick import quick_measures
from .basis import Basis
from .errors import LeadTermError, require
from .params import check
from .models import adapt
from .sinks import JSONLSink, Sink, TensorBoardSink
from .analysis.toy import toy_visible_pair
from .theory import SITES, Keyed, current_keys, leading_coefficient, measure_key, parse_weight


# ---------------------------------------------------------------------------
# measures
# ---------------------------------------------------------------------------
def _none_if_bad(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def projection_measures(weight: Float[Tensor, "..."], term: Float[Tensor, "..."]) -> dict[str, float | None]:
    """similarity, explained, residual_norm and the fitted coefficient c* of ``weight`` on ``term``."""
    if float((term.detach().double() ** 2).sum()) == 0.0:
        return {"similarity": None, "explained": None, "residual_norm": None, "coefficient": None}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a weight that is still zero: cosine undefined (None)
        fit = projection(weight.detach(), {"term": term.detach()})
        cosv = fit.cosine()
    return {"similarity": _none_if_bad(cosv), "explained": _none_if_bad(cosv * cosv),
            "residual_norm": _none_if_bad(float(fit.residual.norm())), "coefficient": _none_if_bad(fit.coef["term"])}


def covariance_similarity(h: Float[Tensor, "k d"], theory: Float[Tensor, "k m"], *, normalise_theory_rows: bool = True) -> float | None:
    """Representational similarity of THEORY.md §5 (:func:`tl_leadterm.analysis.cov_cosine_dense`), None where undefined."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _none_if_bad(cov_cosine_dense(h.detach(), theory.detach(), normalise_target=normalise_theory_rows))


class _ToyProbe:
    """Measures of a toy model against its leading terms (see module docstring)."""

    kind = "toy"

    def __init__(self, basis: Basis):
        self.basis = basis

    @torch.no_grad()
    def measure(self, model, step: int | None, lr: float | None) -> dict[str, Any]:
        out: dict[str, dict] = {"similarity": {}, "explained": {}, "residual_norm": {}}
        if lr is not None and step is not None:
            out["coefficient_ratio"] = {}
        for name, w in model.weights().items():
            m = projection_measures(*toy_visible_pair(self.basis, name, w))
            key = measure_key(*parse_weight(name))
            for group in ("similarity", "explained", "residual_norm"):
                out[group][key] = m[group]
            if "coefficient_ratio" in out:
                coef = leading_coefficient(name, step, lr)
                out["coefficient_ratio"][key] = (None if m["coefficient"] is None or coef == 0
                                                 else _none_if_bad(m["coefficient"] / coef))
        return {g: Keyed(v) for g, v in out.items()}


class _RealProbe:
    """Cheap per-layer measures of a real transformer, through the adapter (see module docstring)."""

    kind = "real"

    def __init__(self, ad, basis: Basis, max_tokens: int | None = 256, null_draws: int = 100, seed: int = 0):
        if max_tokens is not None and basis.k > max_tokens:
            basis = basis.restrict(basis.token_ids[:max_tokens])
        self.ad, self.basis, self.targets = ad, basis, Targets(basis)
        self.null_draws, self.seed = null_draws, seed

    @torch.no_grad()
    def measure(self, model, step: int | None, lr: float | None) -> dict[str, Any]:
        ad = self.ad if model is self.ad.model else adapt(model, fold=False)
        was_training = getattr(model, "training", False)
        model.eval()
        try:
            sims: dict[str, float | None] = {}
            places: dict[str, dict] = {}
            reps = ad.token_representations(self.basis.token_ids)["resid_pre"]
            value, key_query = (self.targets.get(SITES[s].target) for s in ("resid_pre", "key_query_resid"))
            n = self.null_draws
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # undefined similarities are None
                E = ad.W_E.detach().double().cpu()[self.basis.token_ids]
                rnull = representation_null(E, value, n, group_seed(self.seed, "monitor", "resid")) if n else None
                for l, h in enumerate(reps):
                    h = h.detach().double().cpu()
                    rk = measure_key("resid_pre", l)
                    sims[rk] = _none_if_bad(similarities(h, value)["cov_cosine"])
                    if rnull is not None and sims[rk] is not None:
                        places[rk] = rnull["cov_cosine"].place(sims[rk])
                    fam = Family(h, None, key_query, False)
                    qk = (ad.W_Q(l).double().cpu(), ad.W_K(l).double().cpu().transpose(1, 2))
                    per, avg = (family_null(fam, ad.d_model, "product", ad.d_head, n, group_seed(self.seed, "monitor", "qk", l),
                                            heads=ad.n_heads) if n else (None, None))
                    groups = [(measure_key("key_query_resid", l), Factored.head_mean(*qk), avg)]
                    groups += [(measure_key("key_query_resid", l, hd), X, per) for hd, X in enumerate(Factored.heads(*qk))]
                    for key, X, null in groups:
                        sims[key] = _none_if_bad(fam.measure(X)["cov_cosine"])
                        if null is not None and sims[key] is not None:
                            places[key] = null["cov_cosine"].place(sims[key])
        finally:
            if was_training:
                model.train()
        out = {"similarity": sims,
               "explained": {k: None if v is None else v * v for k, v in sims.items()},
               "residual_rel_norm": {k: None if v is None else math.sqrt(max(0.0, 1 - v * v)) for k, v in sims.items()}}
        if places:   # the chance level of each similarity (random heads / read-outs through the same geometry)
            out["percentile"] = {k: p.get("percentile") for k, p in places.items()}
            out["null_q95"] = {k: p.get("null_q95") for k, p in places.items()}
        if ad.folded:
            out["measures"] = {k: _none_if_bad(float(v)) for k, v in quick_measures(ad, self.basis, self.targets).items()}
        return {g: Keyed(v) for g, v in out.items()}


# ---------------------------------------------------------------------------
# the monitor
# ---------------------------------------------------------------------------
class TrainingMonitor:
    """Logs similarity to the leading terms every ``every`` steps (see module docstring).

    ``model``: a ToyTransformer, HookedTransformer, TransformerBridge or HF GPT-NeoX model.
    ``basis``: the basis of the training corpus (same vocabulary as the model).
    ``path``: JSONL output (created/truncated now; ``append=True`` to continue one).
    ``every``: log when ``step % every == 0`` (and always at step 0 if called).
    ``lr``: learning rate, for the toy model's ``coefficient_ratio`` (optional).
    ``tensorboard``: a log folder for TensorBoard scalars (:class:`~tl_leadterm.sinks.TensorBoardSink`;
    a one-line error when ``tensorboard`` is not installed).
    ``sinks``: more outputs, each with ``write(record)`` and ``close()`` (:mod:`tl_leadterm.sinks`), written
    after the JSONL file and TensorBoard, in order.
    ``max_tokens``: real models use at most this many basis tokens (the first ones).
    ``null_draws``: real models' records also carry ``percentile`` and ``null_q95`` per similarity: its place among
    random heads of the same shape (``key_query_resid``) or random linear read-outs of the embeddings (``resid_pre``) read through
    the same geometry (:mod:`tl_leadterm.analysis.chance`); 0 turns them off.  ``seed`` seeds those draws.
    """

    def __init__(self, model, basis: Basis, path: str | os.PathLike | None = None, *, every: int = 100,
                 lr: float | None = None, tensorboard: str | os.PathLike | None = None, append: bool = False,
                 max_tokens: int | None = 256, keep_records: bool = True, sinks: Sequence[Sink] = (),
                 null_draws: int = 100, seed: int = 0):
        require(isinstance(basis, Basis), f"the monitor needs a tl_leadterm Basis, got {type(basis).__name__}; load one with Basis.load")
        every, lr, null_draws, seed = check("every", every), check("lr", lr, optional=True), check("null_draws", null_draws), \
            check("seed", seed)
        max_tokens = check("max_tokens", max_tokens, optional=True)
        for s in sinks:
            require(isinstance(s, Sink), f"a monitor sink needs write(record) and close() methods, got {type(s).__name__}; "
                                         "see tl_leadterm.sinks")
        self.every, self.lr = every, lr
        ad = adapt(model, fold=False)  # never converts the model being trained
        check_compatible(ad, basis)
        self.probe = _ToyProbe(basis) if ad.token_space else _RealProbe(ad, basis, max_tokens, null_draws, seed)
        self.model = model
        self.records: list[dict] = []
        self.keep_records = keep_records
        self.write_failures = 0
        self._warned: set[str] = set()
        self.seconds = 0.0
        # dry run: every measure once, now, so that a misfit fails here and not mid-run
        try:
            self.probe.measure(model, 0, lr)
        except LeadTermError:
            raise
        except Exception as e:
            raise LeadTermError(f"the monitor cannot measure this model with this basis ({type(e).__name__}: {e})") from None
        self.path = Path(path) if path is not None else None
        tb = [TensorBoardSink(tensorboard)] if tensorboard is not None else []   # a missing package fails before any file
        try:
            self._jsonl = JSONLSink(self.path, append=append) if self.path is not None else None
        except BaseException:
            for t in tb:
                t.close()
            raise
        #: the outputs, in the order they are written: the JSONL file, TensorBoard, then ``sinks``
        self.sinks: list[Sink] = [s for s in (self._jsonl,) if s is not None] + tb + list(sinks)

    # -- the hook a training loop calls ---------------------------------------
    def callback(self, step: int, model=None, loss: float | Tensor | None = None) -> dict | None:
        """Call after every optimiser step; logs (and returns the record) when ``step % every == 0``.

        ``step``: an integer >= 0 (anything else is a one-line error, before any measuring)."""
        if check("step", step) % self.every != 0:
            return None
        return self.log(step, model, loss)

    __call__ = callback

    def log(self, step: int, model=None, loss: float | Tensor | None = None) -> dict | None:
        """Measure and write one record now.  ``step``: an integer >= 0 (else a one-line error); otherwise never
        raises: failures to measure or write warn."""
        step = check("step", step)
        t0 = time.perf_counter()
        model = self.model if model is None else model
        try:
            if isinstance(loss, Tensor):
                loss = float(loss.detach())
            rec: dict[str, Any] = {"step": int(step), "loss": None if loss is None else _none_if_bad(float(loss)),
                                   "kind": self.probe.kind}
            rec.update(self.probe.measure(model, step, self.lr))
        except Exception as e:
            self._warn("measure", f"training monitor: measuring step {step} failed ({type(e).__name__}: {e}); training continues")
            return None
        self.seconds += time.perf_counter() - t0   # not in the record: same training, same bytes
        if self.keep_records:
            self.records.append(rec)
        self._write(rec)
        return rec

    # -- output ---------------------------------------------------------------
    def _warn(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=3)

    def _write(self, rec: dict) -> None:
        for sink in self.sinks:
            try:
                sink.write(rec)
            except Exception as e:
                if sink is self._jsonl:
                    self.write_failures += 1
                    self._warn("write", f"training monitor: cannot write {self.path} ({getattr(e, 'strerror', None) or e}); "
                                        "records are kept in memory (monitor.records) and training continues")
                else:
                    self._warn(f"sink{id(sink)}", f"training monitor: writing to {sink!r} failed ({type(e).__name__}: {e}); "
                                                  "training continues")

    def close(self) -> None:
        """Flush and close every output (safe to call twice)."""
        sinks, self.sinks = self.sinks, []
        for sink in sinks:
            try:
                sink.close()
            except Exception as e:
                self._warn(f"close{id(sink)}", f"training monitor: closing {sink!r} failed ({e})")
        if self.write_failures and sinks:
            warnings.warn(f"training monitor: {self.write_failures} record(s) could not be written to {self.path}", RuntimeWarning, stacklevel=2)

    def __enter__(self) -> "TrainingMonitor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def attach(model, basis: Basis, path=None, **kwargs) -> TrainingMonitor:
    """Shorthand for :class:`TrainingMonitor` (fails now, with a one-line error, if the basis does not fit)."""
    return TrainingMonitor(model, basis, path, **kwargs)


def read_records(path: str | os.PathLike) -> list[dict]:
    """The records of a monitor JSONL file (a torn last line is skipped), their groups keyed by the key scheme
    (a log of an earlier release is read into the current keys; the old keys still answer, :class:`Keyed`)."""
    from .io import input_path

    p = input_path(path, "monitor log")
    out = []
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            rec = {g: current_keys(v) if isinstance(v, dict) else v for g, v in rec.items()}
        out.append(rec)
    return out


def records_frame(records: list[dict], group: str = "similarity"):
    """A pandas DataFrame, one row per step, one column per key of ``group`` (``W_O``, ``V/L0``, ``resid_pre/L1`` ...)."""
    import pandas as pd

    rows = [{"step": r["step"], "loss": r.get("loss"), **(r.get(group) or {})} for r in records]
    return pd.DataFrame(rows).set_index("step")


# ---------------------------------------------------------------------------
# integrations
# ---------------------------------------------------------------------------
def toy_monitor_for_cli(model, windows, path, *, every: int, lr: float | None, dtype=torch.float64, device=None,
                        max_k: int = 1024) -> TrainingMonitor:
    """The monitor behind ``tl-leadterm toy-train --log-every N``.

    Computes the basis of the training windows once, over the full vocabulary
    when it has at most ``max_k`` tokens and over the ``max_k`` most frequent
    tokens otherwise, and logs to ``path`` every ``every`` steps.
    """
    from .basis import compute_basis

    k = min(windows.vocab_size, check("max_k", max_k, key="top_k"))
    basis = compute_basis(windows, top_k=k, dtype=dtype, device=device, progress=False)
    return TrainingMonitor(model, basis, path, every=every, lr=lr)


def _trainer_callback_base():
    try:
        from transformers import TrainerCallback
        return TrainerCallback
    except Exception:  # pragma: no cover - transformers is a dependency of transformer-lens
        return object


class LeadTermTrainerCallback(_trainer_callback_base()):
    """A Hugging Face ``transformers.TrainerCallback`` that drives a :class:`TrainingMonitor`.

    ``trainer.add_callback(LeadTermTrainerCallback(monitor))``; the monitor is
    called at every optimiser step with ``state.global_step`` and the last
    logged loss, and closed at the end of training.
    """

    def __init__(self, monitor: TrainingMonitor):
        self.monitor = monitor
        self.last_loss = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.last_loss = logs["loss"]

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.monitor.callback(state.global_step, model, self.last_loss)

    def on_train_end(self, args, state, control, **kwargs):
        self.monitor.close()
