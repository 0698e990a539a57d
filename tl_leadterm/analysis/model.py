"""Real models (THEORY.md §5): representations and key-query matrices per layer and head, and the
token-space circuits that go beyond the paper.

Every basis token is run alone (length-1 sequence, no BOS) and per layer ``l`` the
representations ``H`` (``k x d_model``) are read at ``resid_pre``, ``resid_mid``
(for parallel attention/MLP blocks, e.g. Pythia: ``resid_pre + attn_out``) and
``resid_post``; they are compared with ``M`` (target ``value``).  Key-query:
``S_h = (A W_Q^h)(A W_K^h)ᵀ`` per head and ``S̄ = mean_h S_h`` (site ``key_query``,
head NaN) with ``A`` the attention input (``ln1.hook_normalized`` after LayerNorm
folding = what W_Q multiplies); compared with Q̄ (target ``key_query``).  Site
``key_query_resid`` is THEORY.md §5 to the letter, ``S_h = (H W_Q^h)(H W_K^h)ᵀ`` with
``H = resid_pre`` and the weights as the adapter holds them (LayerNorm folded); it is
what :class:`~tl_leadterm.monitor.TrainingMonitor` logs as ``qk.l`` / ``qk.l.h``.
Measures: ``cov_cosine`` and ``cka`` (:mod:`.measures`).

Extension beyond the paper (``extension=True`` rows): token-space circuits on the
basis tokens, with ``E = W_E[token_ids]`` and ``U = W_U[:, token_ids]``:
``circuit_qk`` = ``E W_Q W_Kᵀ Eᵀ`` (full QK circuit, query x key) vs Q̄;
``circuit_ov`` = ``E W_V W_O U`` (full OV circuit, source x output logit) vs Ḡ
(context x next); ``circuit_ov_embed`` = ``E W_V W_O Eᵀ`` vs M (context x current);
``direct_path`` = ``E U`` vs B̄ (current x next).  Measures ``cosine`` (plain
Frobenius cosine, meaningful because rows and columns index the same tokens in
the same roles), ``cov_cosine`` and ``cka``.  The sites and their targets are
:data:`tl_leadterm.theory.SITES`.
"""

from __future__ import annotations

import warnings

import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..basis import Basis
from ..errors import require
from ..io import resolve_device
from ..models import adapt
from ..theory import SITES
from .compat import check_compatible
from .factored import Factored
from .heads import HEAD_SITES, AtomCache, direct_path_rows, head_residual_rows
from .measures import Family, Targets, similarities
from .table import frame, row
from .toy import decode


def analyze_model(adapter_or_model, basis: Basis, checkpoint: str = "", *, circuits: bool = True,
                  residuals: bool = True, dictionary: bool = False, top: int = 5, n_singular: int = 3,
                  progress: bool = True, batch_size: int = 1024, device: str | torch.device | None = None,
                  targets: Targets | None = None) -> pd.DataFrame:
    """THEORY.md §5 per layer and head, plus the token-space circuits extension (module docstring).

    ``residuals``: also project every head's token-space matrices on their leading terms modulo
    row offsets and report the residual beyond them (:mod:`.heads`; ``dictionary`` projects on
    the dictionary instead; ``top`` residual pairs and ``n_singular`` singular directions).
    The algebra runs in float64 on ``device`` (default: the model's device, so a model
    on CUDA is analysed on CUDA).  ``targets`` (``Targets(basis, device)``) may be shared
    between calls: its O(k³) preparation is then done once (``sweep`` does this).
    """
    ad = adapt(adapter_or_model)
    ad.check_finite()
    check_compatible(ad, basis)
    if not ad.folded:
        warnings.warn(f"LayerNorm is not folded into the weights of {ad.name!r}: site key_query uses ln1.hook_normalized, "
                      "which is not exactly what W_Q multiplies; load the model with tl_leadterm.load_model to fold it", stacklevel=2)
    checkpoint = checkpoint or ad.checkpoint
    dev = resolve_device(device) if device is not None else torch.device(ad.device)
    require(isinstance(top, int) and top >= 0 and isinstance(n_singular, int) and n_singular >= 0,
            f"{{top}} and {{n_singular}} must be integers >= 0, got {top!r} and {n_singular!r}")
    tg = targets if targets is not None and targets.basis is basis and targets.device == dev else Targets(basis, dev)
    reps = ad.token_representations(basis.token_ids, batch_size=batch_size)
    rows: list[dict] = []
    ids = basis.token_ids.to(dev)
    f64 = lambda x: x.detach().to(dev, torch.float64)  # noqa: E731
    if circuits or residuals:
        E = f64(ad.W_E)[ids]
        Ut = f64(ad.W_U)[:, ids].T
    if residuals:
        atoms, strs = AtomCache(basis, dev, dictionary), decode(basis, ad.tokenizer)
    if circuits:
        fam = {"circuit_qk": Family(E, None, tg.get(SITES["circuit_qk"].target), True),
               "circuit_ov": Family(E, Ut, tg.get(SITES["circuit_ov"].target), True),
               "circuit_ov_embed": Family(E, None, tg.get(SITES["circuit_ov_embed"].target), True)}
    bar = tqdm(total=ad.n_layers, desc=f"analyse {checkpoint or ad.name}", disable=not progress, leave=False)
    for l in range(ad.n_layers):
        for site in ("resid_pre", "resid_mid", "resid_post"):
            emit(rows, checkpoint, l, None, site, similarities(f64(reps[site][l]), tg.get(SITES[site].target)))
        WQ, WK = f64(ad.W_Q(l)), f64(ad.W_K(l))
        QK = (WQ, WK.transpose(1, 2))
        A = f64(reps["attn_in"][l])
        heads(rows, checkpoint, l, "key_query", Family(A, None, tg.get(SITES["key_query"].target), False), *QK)
        H = f64(reps["resid_pre"][l])
        heads(rows, checkpoint, l, "key_query_resid", Family(H, None, tg.get(SITES["key_query_resid"].target), False), *QK)
        if circuits:
            OV = (f64(ad.W_V(l)), f64(ad.W_O(l)))
            heads(rows, checkpoint, l, "circuit_qk", fam["circuit_qk"], *QK)
            heads(rows, checkpoint, l, "circuit_ov", fam["circuit_ov"], *OV)
            heads(rows, checkpoint, l, "circuit_ov_embed", fam["circuit_ov_embed"], *OV)
        if residuals:
            rows += head_residual_rows(ad, basis, l, A, E, Ut.T, atoms, checkpoint, strs, top, n_singular,
                                       sites=HEAD_SITES if circuits else ("key_query",))
        bar.update(1)
    bar.close()
    if circuits:
        eye = torch.eye(ad.d_model, dtype=torch.float64, device=dev)
        dp = Family(E, Ut, tg.get(SITES["direct_path"].target), True).measure(Factored(eye, eye))
        emit(rows, checkpoint, None, None, "direct_path", dp)
    if residuals and circuits:
        rows += direct_path_rows(E, Ut.T, atoms, checkpoint, strs, top, n_singular)
    return frame(rows)


def emit(rows: list[dict], checkpoint, layer, head, site: str, sims: dict) -> None:
    """One row per measure of ``sims`` at ``site`` (target and extension from :data:`~tl_leadterm.theory.SITES`)."""
    s = SITES[site]
    for measure, v in sims.items():
        rows.append(row(checkpoint, layer, head, site, measure, v, s.target, "", s.extension))


def heads(rows: list[dict], checkpoint, layer: int, site: str, fam: Family, left: Tensor, right: Tensor) -> None:
    """Per head ``B_L (left[h] right[h]) B_Rᵀ`` and the head average ``(1/H) Σ_h``, as factored matrices."""
    for h, X in enumerate(Factored.heads(left, right)):
        emit(rows, checkpoint, layer, h, site, fam.measure(X))
    emit(rows, checkpoint, layer, None, site, fam.measure(Factored.head_mean(left, right)))
