"""Cheap per-layer measures for training monitors (well under a second for a small model)."""

from __future__ import annotations

import warnings

import torch

from ..basis import Basis
from ..models import ModelAdapter, adapt
from ..theory import SITES, Keyed, measure_key, parse_weight
from .factored import Factored
from .measures import Targets, fro_cos, similarities
from .toy import toy_visible_pair


def quick_measures(adapter_or_model, basis: Basis, targets: Targets | None = None) -> dict[str, float]:
    """Cheap per-layer similarities, keys ``"{site}/L{l}/{measure}"`` (the one key scheme,
    :func:`tl_leadterm.theory.measure_key`; the keys of earlier releases, ``"L{l}/{site}/{measure}"``, still read
    from the returned :class:`~tl_leadterm.theory.Keyed` dict with a DeprecationWarning).

    Toy model: ``cosine`` of every weight's basis sub-block with its leading term, rows centred where the
    output cannot see a row offset (:func:`tl_leadterm.analysis.toy.toy_visible_pair`; keys ``"W_O/cosine"``,
    ``"V/L{l}/cosine"`` ...).  TransformerLens models:
    ``key_query`` cov cosine of the head average and ``resid_post`` cov cosine per
    layer (one batched run of the basis tokens).  No checks beyond what is needed.
    ``targets`` (``Targets(basis)``) may be kept between calls, as the training monitor
    does, so that the basis is prepared once.  Runs single-threaded (restoring the
    thread count): its matrices are small.
    """
    ad = adapt(adapter_or_model)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: thread start-up dominates on a busy CPU
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if ad.token_space:
                return Keyed(_toy(ad, basis))
            return Keyed(_real(ad, basis, targets if targets is not None and targets.basis is basis else Targets(basis)))
    finally:
        torch.set_num_threads(threads)


def _toy(ad: ModelAdapter, basis: Basis) -> dict[str, float]:
    out = {}
    for name, w in ad.model.weights().items():
        key = measure_key(*parse_weight(name), measure="cosine")
        out[key] = fro_cos(*toy_visible_pair(basis, name, w), key)
    return out


def _real(ad: ModelAdapter, basis: Basis, tg: Targets) -> dict[str, float]:
    out = {}
    reps = ad.token_representations(basis.token_ids)
    for l in range(ad.n_layers):
        A = reps["attn_in"][l].double().cpu()
        QK = Factored.head_mean(ad.W_Q(l).double().cpu(), ad.W_K(l).double().cpu().transpose(1, 2))
        out[measure_key("key_query", l, measure="cov_cosine")] = similarities(
            A @ QK @ A.T, tg.get(SITES["key_query"].target))["cov_cosine"]
        out[measure_key("resid_post", l, measure="cov_cosine")] = similarities(
            reps["resid_post"][l].double().cpu(), tg.get(SITES["resid_post"].target))["cov_cosine"]
    return out
