"""Cheap per-layer measures for training monitors (well under a second for a small model)."""

from __future__ import annotations

import warnings

import torch

from ..basis import Basis
from ..models import ModelAdapter, adapt
from ..theory import SITES, parse_weight
from .factored import Factored
from .measures import Targets, fro_cos, similarities


def quick_measures(adapter_or_model, basis: Basis, targets: Targets | None = None) -> dict[str, float]:
    """Cheap per-layer similarities, keys ``"L{l}/{site}/{measure}"``.

    Toy model: ``cosine`` of every weight's basis sub-block with its leading term
    (keys ``"W_O/cosine"``, ``"L{l}/V/cosine"`` ...).  TransformerLens models:
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
                return _toy(ad, basis)
            return _real(ad, basis, targets if targets is not None and targets.basis is basis else Targets(basis))
    finally:
        torch.set_num_threads(threads)


def _toy(ad: ModelAdapter, basis: Basis) -> dict[str, float]:
    out = {}
    for name, w in ad.model.weights().items():
        site, layer = parse_weight(name)
        W, lead = basis.toy_pair(name, w)
        key = f"{site}/cosine" if layer is None else f"L{layer}/{site}/cosine"
        out[key] = fro_cos(W, lead, key)
    return out


def _real(ad: ModelAdapter, basis: Basis, tg: Targets) -> dict[str, float]:
    out = {}
    reps = ad.token_representations(basis.token_ids)
    for l in range(ad.n_layers):
        A = reps["attn_in"][l].double().cpu()
        QK = Factored.head_mean(ad.W_Q(l).double().cpu(), ad.W_K(l).double().cpu().transpose(1, 2))
        out[f"L{l}/key_query/cov_cosine"] = similarities(A @ QK @ A.T, tg.get(SITES["key_query"].target))["cov_cosine"]
        out[f"L{l}/resid_post/cov_cosine"] = similarities(reps["resid_post"][l].double().cpu(), tg.get(SITES["resid_post"].target))["cov_cosine"]
    return out
