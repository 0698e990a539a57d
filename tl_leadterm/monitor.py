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
     "similarity":    {"W_O": 0.99, "V.0": 0.97, "W.0": 0.81, "P.0": 0.93, ...},
     "explained":     {...}, "residual_norm": {...}, "coefficient_ratio": {...},
     "monitor_seconds": 0.002, "time": 1731...}

Toy model (:class:`~tl_leadterm.toy.ToyTransformer`)
    For each weight ``W_O``, ``V.l``, ``W.l``, ``P.l`` with leading-term matrix
    ``B`` (``B̄``, ``M``, ``Q̄``, ``p̄``; THEORY.md §3).  The toy weights are
    full-vocabulary ``|V| x |V|``; a basis over ``k`` tokens is compared on the
    ``k x k`` sub-block ``weight[token_ids][:, token_ids]`` (``P`` on its first
    ``basis.seq_len`` entries).  With ``A`` that sub-block:

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
    The cheap per-layer representational measures of THEORY.md §5 over the
    basis tokens, each token run alone: ``resid.l`` compares layer ``l``'s
    ``resid_pre`` representations with ``M``; ``qk.l`` compares
    ``S_l = H_l W_Q W_Kᵀ H_lᵀ`` (averaged over heads) with ``Q̄`` and ``qk.l.h``
    does so per head.  ``similarity`` is the Frobenius cosine of the row-centred
    covariance matrices; ``explained`` its square; ``residual_norm`` the relative
    norm sqrt(1 − cos²) of what the best multiple of the theory's covariance
    leaves.  For HookedTransformer and TransformerBridge models in compatibility
    mode, :func:`tl_leadterm.compare.quick_measures` (key-query on the attention
    input, ``resid_post``) is recorded as well, under ``"measures"``; it is not
    applied to a bridge outside compatibility mode, because wrapping it would
    fold LayerNorm into the weights being trained.

Failures: a basis that does not fit the model raises :class:`LeadTermError`
when the monitor is built (the measures are computed once there, as a dry
run); an output path that cannot be opened also raises then.  Once training
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
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from .basis import Basis, leading_coefficient
from .errors import LeadTermError, require

TOY_WEIGHTS = {"W_O": "bigram", "V": "value", "W": "key_query", "P": "position"}


# ---------------------------------------------------------------------------
# measures
# ---------------------------------------------------------------------------
def _none_if_bad(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def projection_measures(weight: Float[Tensor, "..."], term: Float[Tensor, "..."]) -> dict[str, float | None]:
    """similarity, explained, residual_norm and the fitted coefficient c* of ``weight`` on ``term``."""
    a, b = weight.detach().double().reshape(-1), term.detach().double().reshape(-1)
    nb2 = float(b @ b)
    na = float(a.norm())
    if nb2 == 0.0:
        return {"similarity": None, "explained": None, "residual_norm": None, "coefficient": None}
    c = float(a @ b) / nb2
    res = float((a - c * b).norm())
    cosv = None if na == 0.0 else float(a @ b) / (na * math.sqrt(nb2))
    return {"similarity": _none_if_bad(cosv) if cosv is not None else None,
            "explained": None if cosv is None else _none_if_bad(cosv * cosv),
            "residual_norm": _none_if_bad(res), "coefficient": _none_if_bad(c)}


def covariance_similarity(h: Float[Tensor, "k d"], theory: Float[Tensor, "k m"], *, normalise_theory_rows: bool = True) -> float | None:
    """Representational similarity of THEORY.md §5 (:func:`tl_leadterm.compare.cov_cosine_dense`).

    Centre each row of ``h``, form ``K_h = H_c H_cᵀ`` (k x k); row-normalise and
    centre ``theory`` the same way, ``K_t = T_c T_cᵀ``; return cos_F(K_h, K_t),
    or None (no warning: a monitor logs often) where it is undefined.
    """
    from .compare import cov_cosine_dense

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _none_if_bad(cov_cosine_dense(h.detach(), theory.detach(), normalise_target=normalise_theory_rows))


def _is_toy(model) -> bool:
    from .toy import ToyTransformer

    return isinstance(model, ToyTransformer)


class _ToyProbe:
    """Measures of a toy model against its leading terms (see module docstring)."""

    kind = "toy"

    def __init__(self, model, basis: Basis):
        cfg = model.cfg
        require(basis.vocab_size == cfg.d_vocab,
                f"the basis is over a vocabulary of {basis.vocab_size} tokens but the toy model has d_vocab={cfg.d_vocab}; "
                "build the basis from the corpus (and tokenizer) the model is trained on")
        require(basis.seq_len <= cfg.n_ctx,
                f"the basis has seq_len={basis.seq_len} but the toy model's context is {cfg.n_ctx}; build the basis with --seq-len {cfg.n_ctx} or less")
        p = next(model.parameters())
        self.basis = basis  # basis.sub_block(weight): the k x k block in basis order (P: first seq_len entries)
        self.n_layers = cfg.n_layers
        self.terms = {name: basis[TOY_WEIGHTS[name.split(".")[0]]].to(p.device, torch.float64)
                      for name in model.weights()}
        for name, t in self.terms.items():
            require(bool(torch.isfinite(t).all()), f"basis tensor for {name} holds non-finite values; rebuild the basis")

    @torch.no_grad()
    def measure(self, model, step: int | None, lr: float | None) -> dict[str, Any]:
        out: dict[str, dict] = {"similarity": {}, "explained": {}, "residual_norm": {}}
        if lr is not None and step is not None:
            out["coefficient_ratio"] = {}
        for name, w in model.weights().items():
            m = projection_measures(self.basis.sub_block(w), self.terms[name])
            for key in ("similarity", "explained", "residual_norm"):
                out[key][name] = m[key]
            if "coefficient_ratio" in out:
                coef = leading_coefficient(name.split(".")[0], step, lr)
                out["coefficient_ratio"][name] = (None if m["coefficient"] is None or coef == 0
                                                  else _none_if_bad(m["coefficient"] / coef))
        return out


# ---------------------------------------------------------------------------
# real models: representations and key-query matrices of single tokens
# ---------------------------------------------------------------------------
def _hf_core(model):
    """The GPT-NeoX trunk of a Hugging Face model, or None."""
    for attr in ("gpt_neox",):
        if hasattr(model, attr):
            return getattr(model, attr)
    return None


def _real_dims(model) -> tuple[int, int, int]:
    """(d_vocab, n_layers, n_heads) of a TransformerLens or HF GPT-NeoX model."""
    cfg = getattr(model, "cfg", None)
    if cfg is not None and hasattr(cfg, "d_vocab") and hasattr(cfg, "n_layers"):
        return int(cfg.d_vocab), int(cfg.n_layers), int(cfg.n_heads)
    config = getattr(model, "config", None)
    if config is not None and _hf_core(model) is not None:
        return int(config.vocab_size), int(config.num_hidden_layers), int(config.num_attention_heads)
    raise LeadTermError(f"the training monitor supports ToyTransformer, HookedTransformer, TransformerBridge and Hugging Face GPT-NeoX models, "
                        f"not {type(model).__name__}; wrap the model with TransformerLens")


class _RealProbe:
    """Cheap per-layer measures of a real transformer (see module docstring)."""

    kind = "real"

    def __init__(self, model, basis: Basis, max_tokens: int | None = 256):
        d_vocab, self.n_layers, self.n_heads = _real_dims(model)
        require(int(basis.token_ids.max()) < d_vocab and basis.vocab_size <= d_vocab,
                f"the basis is over a vocabulary of {basis.vocab_size} tokens (largest id {int(basis.token_ids.max())}) "
                f"but the model's vocabulary has {d_vocab}; build the basis with the model's tokenizer and --vocab-size {d_vocab}")
        if max_tokens is not None and basis.k > max_tokens:
            basis = basis.restrict(basis.token_ids[:max_tokens])
        self.basis = basis
        self.ids = basis.token_ids
        self.value = basis.value.double()
        self.key_query = basis.key_query.double()
        self.quick = None
        if hasattr(model, "run_with_cache") and hasattr(model, "cfg") and (
                not hasattr(model, "enable_compatibility_mode") or getattr(model, "compatibility_mode", False)):
            # issue 3's cheap measures (tl_leadterm.compare.quick_measures), when present; never on a
            # TransformerBridge outside compatibility mode (wrapping it would fold LayerNorm into the weights
            # being trained) nor on raw Hugging Face models
            try:
                from .compare import quick_measures
                self.quick = quick_measures
            except Exception:
                self.quick = None

    def _representations(self, model) -> list[Tensor]:
        dev = next(model.parameters()).device
        ids = self.ids.to(dev)[:, None]
        if _hf_core(model) is not None and not hasattr(model, "run_with_cache"):
            out = model(input_ids=ids, output_hidden_states=True, use_cache=False)
            hs = out.hidden_states
            return [hs[l][:, 0, :] for l in range(self.n_layers)]
        names = [f"blocks.{l}.hook_resid_pre" for l in range(self.n_layers)]
        _, cache = model.run_with_cache(ids, names_filter=lambda n: n in names)
        return [cache[n][:, 0, :] for n in names]

    def _qk_weights(self, model):
        """W_Q, W_K indexable by layer, each ``[head, d_model, d_head]`` (TransformerLens convention)."""
        if hasattr(model, "W_Q") and hasattr(model, "W_K"):
            return model.W_Q, model.W_K
        core = _hf_core(model)
        wq, wk = [], []
        for layer in core.layers:
            att = layer.attention
            w = att.query_key_value.weight  # [3 d, d]; rows grouped per head as (q, k, v)
            hs = w.shape[0] // (3 * self.n_heads)
            w = w.view(self.n_heads, 3, hs, w.shape[1])
            wq.append(w[:, 0].transpose(1, 2))
            wk.append(w[:, 1].transpose(1, 2))
        return wq, wk  # per-layer lists (no stacked copy of every layer)

    @torch.no_grad()
    def measure(self, model, step: int | None, lr: float | None) -> dict[str, Any]:
        was_training = getattr(model, "training", False)
        model.eval()
        try:
            sims: dict[str, float | None] = {}
            reps = self._representations(model)
            wq, wk = self._qk_weights(model)
            for l, h in enumerate(reps):
                h = h.detach().double().cpu()
                sims[f"resid.{l}"] = covariance_similarity(h, self.value)
                per_head = (torch.einsum("kd,hde->hke", h, wq[l].detach().double().cpu()),
                            torch.einsum("kd,hde->hke", h, wk[l].detach().double().cpu()))
                s_heads = torch.einsum("hqe,hke->hqk", *per_head)
                sims[f"qk.{l}"] = covariance_similarity(s_heads.mean(0), self.key_query)
                for hd in range(s_heads.shape[0]):
                    sims[f"qk.{l}.{hd}"] = covariance_similarity(s_heads[hd], self.key_query)
        finally:
            if was_training:
                model.train()
        out = {"similarity": sims,
               "explained": {k: None if v is None else v * v for k, v in sims.items()},
               "residual_norm": {k: None if v is None else math.sqrt(max(0.0, 1 - v * v)) for k, v in sims.items()}}
        if self.quick is not None:
            out["measures"] = {k: _none_if_bad(float(v)) for k, v in self.quick(model, self.basis).items()}
        return out


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
    ``tensorboard``: a log folder for TensorBoard scalars (skipped with a warning
    when ``tensorboard`` is not installed).
    ``max_tokens``: real models use at most this many basis tokens (the first ones).
    """

    def __init__(self, model, basis: Basis, path: str | os.PathLike | None = None, *, every: int = 100,
                 lr: float | None = None, tensorboard: str | os.PathLike | None = None, append: bool = False,
                 max_tokens: int | None = 256, keep_records: bool = True):
        require(isinstance(basis, Basis), f"the monitor needs a tl_leadterm Basis, got {type(basis).__name__}; load one with Basis.load")
        require(isinstance(every, int) and every >= 1, f"every (--log-every) must be a positive integer, got {every!r}")
        require(lr is None or (lr > 0 and math.isfinite(lr)), f"lr must be a positive number, got {lr!r}")
        self.every, self.lr = every, lr
        self.probe = _ToyProbe(model, basis) if _is_toy(model) else _RealProbe(model, basis, max_tokens)
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
            raise LeadTermError(f"the monitor cannot measure this model with this basis ({type(e).__name__}: {e}); "
                                "check that the basis was built for the model's vocabulary") from None
        self.path = Path(path) if path is not None else None
        self._fh = None
        if self.path is not None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fh = open(self.path, "a" if append else "w", encoding="utf-8")
            except OSError as e:
                raise LeadTermError(f"cannot open monitor log {self.path} for writing ({e.strerror}); choose a writable path") from None
        self._tb = None
        if tensorboard is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(str(tensorboard))
            except Exception as e:  # tensorboard is an optional dependency
                warnings.warn(f"TensorBoard logging skipped ({type(e).__name__}: {e}); install tl-leadterm[tensorboard]", stacklevel=2)

    # -- the hook a training loop calls ---------------------------------------
    def callback(self, step: int, model=None, loss: float | Tensor | None = None) -> dict | None:
        """Call after every optimiser step; logs (and returns the record) when ``step % every == 0``."""
        if step % self.every != 0:
            return None
        return self.log(step, model, loss)

    __call__ = callback

    def log(self, step: int, model=None, loss: float | Tensor | None = None) -> dict | None:
        """Measure and write one record now.  Never raises: failures warn."""
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
        rec["monitor_seconds"] = time.perf_counter() - t0
        rec["time"] = time.time()
        self.seconds += rec["monitor_seconds"]
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
        if self._fh is not None:
            try:
                self._fh.write(json.dumps(rec, allow_nan=False) + "\n")
                self._fh.flush()
            except (OSError, ValueError) as e:
                self.write_failures += 1
                self._warn("write", f"training monitor: cannot write {self.path} ({getattr(e, 'strerror', None) or e}); "
                                    "records are kept in memory (monitor.records) and training continues")
        if self._tb is not None:
            try:
                for group in ("similarity", "explained", "residual_norm"):
                    for name, v in rec.get(group, {}).items():
                        if v is not None:
                            self._tb.add_scalar(f"{group}/{name}", v, rec["step"])
                if rec.get("loss") is not None:
                    self._tb.add_scalar("loss", rec["loss"], rec["step"])
            except Exception as e:
                self._warn("tensorboard", f"training monitor: TensorBoard write failed ({type(e).__name__}: {e}); training continues")

    def close(self) -> None:
        """Flush and close the outputs (safe to call twice)."""
        for attr in ("_fh", "_tb"):
            h = getattr(self, attr)
            if h is not None:
                try:
                    h.close()
                except Exception as e:
                    self._warn("close", f"training monitor: closing {attr[1:]} output failed ({e})")
                setattr(self, attr, None)
        if self.write_failures:
            warnings.warn(f"training monitor: {self.write_failures} record(s) could not be written to {self.path}", RuntimeWarning, stacklevel=2)

    def __enter__(self) -> "TrainingMonitor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def attach(model, basis: Basis, path=None, **kwargs) -> TrainingMonitor:
    """Shorthand for :class:`TrainingMonitor` (fails now, with a one-line error, if the basis does not fit)."""
    return TrainingMonitor(model, basis, path, **kwargs)


def read_records(path: str | os.PathLike) -> list[dict]:
    """The records of a monitor JSONL file (a torn last line is skipped)."""
    p = Path(path)
    require(p.is_file(), f"monitor log {p} not found; check the path")
    out = []
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def records_frame(records: list[dict], group: str = "similarity"):
    """A pandas DataFrame, one row per step, one column per weight/layer of ``group``."""
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

    k = min(windows.vocab_size, max_k)
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
