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

Lenses (:mod:`.lenses`): every per-head site is read under each requested lens — ``weights`` (the
head's product of weights), ``update`` (its change since ``reference``) and ``gradient`` (``-∂L/∂P`` on
``gradient`` windows) — and every per-head fit gets ``signed_cosine`` with its chance level
(:mod:`.chance`: ``null_mean``, ``null_q05``, ``null_q95``, ``percentile``) against each of the site's
targets and, with ``model_targets``, the same targets read through the model's geometry (``model:T``).

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

import math
import warnings
from typing import Sequence

import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..basis import Basis
from ..errors import require
from ..params import check
from ..io import resolve_device
from ..models import adapt
from ..theory import MODEL_PREFIX, SITES, parse_sites
from .chance import NULL_DRAWS, SiteFit, basis_matrix, family_null, group_seed, representation_null
from .compat import check_compatible
from .factored import Factored
from .geometry import Geometry
from .heads import AtomCache, emit_fit, fit_heads
from .residual import fit
from .lenses import LENSES, check_reference, head_gradients, lens_factors, parse_lenses
from .measures import Family, Targets, similarities
from .table import frame, row
from .toy import decode


#: the numeric options of :func:`analyze_model`, each checked with its range of :data:`tl_leadterm.params.RANGES`
NUMBERS = ("top", "n_singular", "batch_size", "gradient_batch", "null_draws", "seed")


def check_numbers(kw: dict) -> dict:
    """``kw`` with each of :data:`NUMBERS` it holds checked (:func:`~tl_leadterm.params.check`): what :func:`sweep
    <tl_leadterm.analysis.sweep>` does before it loads a checkpoint."""
    return {n: check(n, v) if n in NUMBERS else v for n, v in kw.items()}


def analyze_model(adapter_or_model, basis: Basis, checkpoint: str = "", *, circuits: bool = True,
                  residuals: bool = True, dictionary: bool = False, top: int = 5, n_singular: int = 3,
                  progress: bool = True, batch_size: int = 1024, device: str | torch.device | None = None,
                  targets: Targets | None = None, lens: Sequence[str] | str = ("weights",), reference=None,
                  reference_label: str = "", gradient=None, gradient_batch: int = 32, null_draws: int = NULL_DRAWS,
                  seed: int = 0, sites: Sequence[str] | str | None = None, model_targets: bool = True) -> pd.DataFrame:
    """THEORY.md §5 per layer and head, plus the token-space circuits extension (module docstring).

    ``residuals``: also project every head's token-space matrices on their targets modulo row offsets
    (signed cosine, coefficient, explained, each with its null) and report the residual beyond the own
    target (:mod:`.heads`; ``dictionary`` projects on the dictionary instead, without nulls; ``top``
    residual pairs and ``n_singular`` singular directions).  ``lens``: ``weights``, ``update`` (needs
    ``reference``, a model or adapter of the same shapes; ``reference_label`` names it in the table),
    ``gradient`` (needs ``gradient``, token windows ``[n, T]`` or :class:`~tl_leadterm.corpus.Windows`).
    ``null_draws`` random heads per fit group (0: no nulls), seeded by ``seed``.  ``batch_size`` basis tokens per
    run of the model (representations), ``gradient_batch`` windows per backward pass of the gradient lens.
    Every number (:data:`NUMBERS`) is checked first, numpy scalars accepted (:func:`tl_leadterm.params.check`).  ``sites``: a subset of
    :data:`~tl_leadterm.theory.SITES` (default: its ``default`` sites that ``circuits`` allows).
    The algebra runs in float64 on ``device`` (default: the model's device).  ``targets``
    (``Targets(basis, device)``) may be shared between calls (``sweep`` does this).
    """
    top, n_singular, batch_size, gradient_batch, null_draws, seed = (
        check(n, v) for n, v in zip(NUMBERS, (top, n_singular, batch_size, gradient_batch, null_draws, seed)))
    ad = adapt(adapter_or_model)
    ad.check_finite()
    check_compatible(ad, basis)
    if not ad.folded:
        warnings.warn(f"LayerNorm is not folded into the weights of {ad.name!r}: site key_query uses ln1.hook_normalized, "
                      "which is not exactly what W_Q multiplies; load the model with tl_leadterm.load_model to fold it", stacklevel=2)
    checkpoint = checkpoint or ad.checkpoint
    dev = resolve_device(device) if device is not None else torch.device(ad.device)
    lenses = parse_lenses(lens)
    ref = None
    if "update" in lenses:
        require(reference is not None, "the update lens needs a {reference} checkpoint (a model, adapter or path)")
        ref = reference if hasattr(reference, "W_V") and hasattr(reference, "n_heads") else adapt(reference)
        check_reference(ad, ref)
    grads = None
    if "gradient" in lenses:
        require(gradient is not None, "the gradient lens needs token windows: give {gradient} (or --gradient-corpus)")
        toks = getattr(gradient, "tokens", gradient)
        grads = head_gradients(ad, toks, batch_size=gradient_batch, progress=progress)
    wanted = parse_sites(sites) if sites is not None else tuple(n for n, x in SITES.items() if x.default)
    if not circuits:
        wanted = tuple(n for n in wanted if not SITES[n].extension)
    have = set(getattr(ad, "representations", ()))
    missing = [n for n in wanted if not SITES[n].representations <= have]
    if missing:
        what = f"{', '.join(missing)} read{'s' if len(missing) == 1 else ''} representations that {ad.name or 'this model'} " \
               f"does not give (it has {', '.join(sorted(have)) or 'none'})"
        require(sites is None, f"sites {what}; load the model with tl_leadterm.load_model, or choose other {{sites}}")
        warnings.warn(f"skipping sites {what}; load the model with tl_leadterm.load_model for them")
        wanted = tuple(n for n in wanted if n not in missing)
    tg = targets if targets is not None and targets.basis is basis and targets.device == dev else Targets(basis, dev)
    geom = Geometry(ad, basis, dev, batch_size)
    E, U = geom.E, geom.U
    rows: list[dict] = []
    strs = decode(basis, ad.tokenizer) if residuals else None
    atoms = AtomCache(basis, dev, dictionary) if residuals else None
    families: dict = {}
    fits: dict = {}
    nulls: dict = {}

    def family(s, l):
        key = (s.name, l if Geometry.layer_dependent(s) else None)
        if key not in families:
            L, R = geom.outer(s, l)
            same = s.right == s.left + ".T"
            families[key] = Family(L, None if same else R.T, tg.get(s.target), plain=s.extension)
        return families[key]

    def site_fit(s, l):
        key = (s.name, l if Geometry.layer_dependent(s) else None)
        if key not in fits:
            L, R = geom.outer(s, l)
            names = list(s.targets) + ([MODEL_PREFIX + t for t in s.targets] if model_targets else [])
            fits[key] = SiteFit(L, R, {n: basis_matrix(basis, n).to(dev) for n in names})
        return fits[key]

    fnulls: dict = {}

    def fam_null_of(s, l, lens_name, rank):
        glayer = l if Geometry.layer_dependent(s) else "all"
        key = (s.name, glayer, lens_name, rank)
        if key not in fnulls:
            fnulls[key] = family_null(family(s, l), ad.d_model, LENSES[lens_name].null, rank, null_draws,
                                      group_seed(seed, "similarity", lens_name, s.name, glayer), heads=ad.n_heads)
        return fnulls[key]

    rep_null = None

    def null_of(s, l, lens_name, rank):
        glayer = l if Geometry.layer_dependent(s) else "all"
        key = (s.name, glayer, lens_name, rank)
        if key not in nulls:
            nulls[key] = site_fit(s, l).null(LENSES[lens_name].null, rank, null_draws,
                                             group_seed(seed, lens_name, s.name, glayer), heads=ad.n_heads)
        return nulls[key]

    per_head_sites = [SITES[n] for n in wanted if SITES[n].per_head]
    total = len(lenses) * ad.n_layers
    bar = tqdm(total=total, desc=f"analyse {checkpoint or ad.name}", disable=not progress, leave=False)
    for lens_name in lenses:
        extra = {"lens": lens_name, "reference": reference_label if lens_name == "update" else ""}
        for l in range(ad.n_layers):
            if lens_name == "weights":
                for name in ("resid_pre", "resid_mid", "resid_post"):
                    if name in wanted:
                        if rep_null is None:     # one null for every layer and resid site: E G, G Gaussian d x d
                            rep_null = representation_null(E, tg.get(SITES[name].target), null_draws,
                                                           group_seed(seed, "representation", SITES[name].target))
                        emit(rows, checkpoint, l, None, name, similarities(geom.reps[name][l].to(dev, torch.float64),
                                                                           tg.get(SITES[name].target)), nulls=rep_null, **extra)
            for s in per_head_sites:
                M, N = lens_factors(lens_name, ad, l, s.circuit, dev, reference=ref, gradients=grads)
                fam = family(s, l)
                fper, favg = fam_null_of(s, l, lens_name, M.shape[2])
                if LENSES[lens_name].null == "dense":    # N is the identity: a dense d x d P per head, no right factor
                    got = fam.measure_batch(torch.cat([M, M.mean(0, keepdim=True)]), None)
                    sims = [{m: float(v[h]) for m, v in got.items()} for h in range(ad.n_heads + 1)]
                else:
                    sims = [fam.measure(Factored(M[h], N[h])) for h in range(ad.n_heads)]
                    sims.append(fam.measure(Factored.head_mean(M, N)))
                for h, sim in enumerate(sims):
                    emit(rows, checkpoint, l, h if h < ad.n_heads else None, s.name, sim,
                         nulls=fper if h < ad.n_heads else favg, **extra)
                if not (residuals and s.fit):
                    continue
                fitted = None
                if LENSES[lens_name].residuals or dictionary:
                    L, R = geom.outer(s, l)
                    per, mean = fit_heads(L @ M, N @ R, atoms.get(s.target), top=top, n_singular=n_singular)
                    for h, f in enumerate(per):
                        emit_fit(rows, checkpoint, l, h, s.name, f, strs, top, own=dictionary, **extra)
                    emit_fit(rows, checkpoint, l, None, s.name, mean, strs, top, own=dictionary, **extra)
                    fitted = per + [mean]
                if not dictionary:
                    sf = site_fit(s, l)
                    signed_rows(rows, checkpoint, l, s, sf, M, N, null_of(s, l, lens_name, M.shape[2]), extra,
                                fitted=fitted)
                    if lens_name == "update":
                        update_ratio_rows(rows, checkpoint, l, s, sf, M, N, *lens_factors("weights", ref, l, s.circuit, dev), extra)
            bar.update(1)
    bar.close()
    if "direct_path" in wanted and "weights" in lenses:
        extra = {"lens": "weights", "reference": ""}
        eye = torch.eye(ad.d_model, dtype=torch.float64, device=dev)
        s = SITES["direct_path"]
        dfam = Family(E, U.T, tg.get(s.target), True)
        dnull, _ = family_null(dfam, ad.d_model, "dense", ad.d_model, null_draws,
                               group_seed(seed, "similarity", "weights", "direct_path", "all"))
        emit(rows, checkpoint, None, None, "direct_path", dfam.measure(Factored(eye, eye)), nulls=dnull, **extra)
        if residuals:
            f = fit(Factored(E, U), atoms.get(s.target), top=top, n_singular=n_singular, what="direct path")
            emit_fit(rows, checkpoint, None, None, "direct_path", f, strs, top, own=dictionary, **extra)
            if not dictionary:
                sf = SiteFit(E, U, {n: basis_matrix(basis, n).to(dev) for n in
                                    [s.target] + ([MODEL_PREFIX + s.target] if model_targets else [])})
                null = sf.null("dense", ad.d_model, null_draws, group_seed(seed, "weights", "direct_path", "all"))
                signed_rows(rows, checkpoint, None, s, sf, eye[None], eye[None], null, extra, heads=False, fitted=[f])
    if "direct_path" in wanted and "update" in lenses and residuals and not dictionary:
        direct_update_rows(rows, checkpoint, ref, basis, E, U, atoms, strs, top, n_singular, reference_label, dev)
    return frame(rows)


def direct_update_rows(rows, checkpoint, ref, basis, E, U, atoms, strs, top, n_singular, reference_label, dev) -> None:
    """The direct path's change since the reference, ``E_t U_t - E_ref U_ref`` (factored ``[E_t, E_ref][U_t; -U_ref]``),
    against B̄ modulo row offsets; with ``update_ratio``.  Its two sides change with the checkpoint, so it has no
    d x d form and no null (the per-head sites do)."""
    s = SITES["direct_path"]
    ids = basis.token_ids.to(dev)
    E0 = ref.W_E.detach().to(dev, torch.float64)[ids]
    U0 = ref.W_U.detach().to(dev, torch.float64)[:, ids]
    extra = {"lens": "update", "reference": reference_label}
    f = fit(Factored(torch.cat([E, E0], 1), torch.cat([U, -U0], 0)), atoms.get(s.target), top=top,
            n_singular=n_singular, what="direct path update")
    emit_fit(rows, checkpoint, None, None, "direct_path", f, strs, top, own=True, **extra)
    c, ex = f.coef[s.target], f.explained
    cos = math.copysign(math.sqrt(ex), c) if math.isfinite(ex) and ex >= 0 else float("nan")
    rows.append(row(checkpoint, None, None, "direct_path", "signed_cosine", cos, s.target, "", True, **extra))
    ref_norm = fit(Factored(E0, U0), atoms.get(s.target), top=0, n_singular=0, what="direct path reference").norm
    rows.append(row(checkpoint, None, None, "direct_path", "update_ratio", f.norm / ref_norm if ref_norm > 0 else float("nan"),
                    s.target, "", True, **extra))


def signed_rows(rows: list[dict], checkpoint, layer, s, sf: SiteFit, M: Tensor, N: Tensor, null, extra: dict,
                heads: bool = True, fitted: list | None = None) -> None:
    """``signed_cosine`` (with its chance level), ``coef`` and ``explained`` per head, head average and target.

    ``fitted``: the residual fits of the site's own target (per head, then the average); their coefficient and
    explained fraction come from the k x k entries themselves, exact even when row offsets dominate a head, and
    are used for the own target (the d x d path gives the others)."""
    per_null, avg_null = null
    groups = [(h, M[h:h + 1], N[h:h + 1], per_null) for h in range(M.shape[0])] if heads else []
    groups.append((None, *(_mean_factors(M, N) if heads else (M, N)), avg_null if heads else per_null))
    for i, (h, m, n, nl) in enumerate(groups):
        for target, vals in sf.measure(m, n).items():
            cos, coef, ex = float(vals["signed_cosine"][0]), float(vals["coef"][0]), float(vals["explained"][0])
            if fitted is not None and target == s.target:
                f = fitted[i]
                coef, ex = f.coef[target], f.explained
                cos = math.copysign(math.sqrt(ex), coef) if math.isfinite(ex) and ex >= 0 else float("nan")
            rows.append(row(checkpoint, layer, h, s.name, "signed_cosine", cos, target, "", True, **extra,
                            **nl[target].place(cos)))
            rows.append(row(checkpoint, layer, h, s.name, "coef", coef, target, "", True, **extra))
            rows.append(row(checkpoint, layer, h, s.name, "explained", ex, target, "", True, **extra))


def update_ratio_rows(rows, checkpoint, layer, s, sf: SiteFit, M, N, M0, N0, extra: dict) -> None:
    """``update_ratio`` ``‖X̃_t - X̃_ref‖ / ‖X̃_ref‖`` per head and head average (row-centred token space)."""
    d, r = sf.norms(M, N), sf.norms(M0, N0)
    dm, rm = sf.norms(*_mean_factors(M, N)), sf.norms(*_mean_factors(M0, N0))
    for h, num, den in [*((h, d[h], r[h]) for h in range(M.shape[0])), (None, dm[0], rm[0])]:
        v = float(num / den) if float(den) > 0 else float("nan")
        rows.append(row(checkpoint, layer, h, s.name, "update_ratio", v, s.target, "", True, **extra))


def _mean_factors(M: Tensor, N: Tensor) -> tuple[Tensor, Tensor]:
    f = Factored.head_mean(M, N)
    return f.A[None], f.B[None]


def emit(rows: list[dict], checkpoint, layer, head, site: str, sims: dict, nulls: dict | None = None, **extra) -> None:
    """One row per measure of ``sims`` at ``site`` (target and extension from :data:`~tl_leadterm.theory.SITES`),
    each with its place in ``nulls[measure]`` when given."""
    s = SITES[site]
    for measure, v in sims.items():
        place = nulls[measure].place(v) if nulls and measure in nulls else {}
        rows.append(row(checkpoint, layer, head, site, measure, v, s.target, "", s.extension, **extra, **place))
