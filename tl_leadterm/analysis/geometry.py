"""The model's geometry on the basis tokens: the outer factors ``L``, ``R`` of every site (:data:`~tl_leadterm.theory.GEOMETRY`).

A per-head site is ``X = L P R`` (:data:`tl_leadterm.theory.SITES`); :class:`Geometry` reads ``L`` and
``R`` from one model (one checkpoint) once, in float64 on the analysis device, and every site, lens and
null asks it.  Keys: ``E`` (``W_E[token_ids]``), ``U`` (``W_U[:, token_ids]``), ``A`` (attention input of
layer ``l`` of each token run alone), ``H`` (``resid_pre``), and ``K.T`` for a transpose.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import LeadTermError
from ..theory import GEOMETRY, GEOMETRY_REPS, Site

LAYER_KEYS = tuple(GEOMETRY_REPS)   # "A", "H": one matrix per layer


class Geometry:
    """``L``/``R`` factors of one model over a basis' tokens (module docstring)."""

    def __init__(self, ad, basis, device, batch_size: int = 1024, reps: dict | None = None):
        self.ad, self.device, self.batch_size = ad, torch.device(device), batch_size
        self.token_ids = basis.token_ids
        ids = basis.token_ids.to(self.device)
        self.E = ad.W_E.detach().to(self.device, torch.float64)[ids]
        self.U = ad.W_U.detach().to(self.device, torch.float64)[:, ids]
        self._reps = reps

    @property
    def reps(self) -> dict:
        """Per-layer representations of each basis token run alone (``ModelAdapter.token_representations``)."""
        if self._reps is None:
            self._reps = self.ad.token_representations(self.token_ids, batch_size=self.batch_size)
        return self._reps

    def matrix(self, key: str, layer: int | None = None) -> Tensor:
        if key not in GEOMETRY:
            raise LeadTermError(f"unknown geometry {key!r}; choose one of {', '.join(GEOMETRY)}")
        base, _, t = key.partition(".")
        if base == "E":
            M = self.E
        elif base == "U":
            M = self.U
        else:
            name = GEOMETRY_REPS[base]
            M = self.reps[name][layer].to(self.device, torch.float64)
        return M.T if t == "T" else M

    @staticmethod
    def layer_dependent(site: Site) -> bool:
        return site.left.split(".")[0] in LAYER_KEYS or site.right.split(".")[0] in LAYER_KEYS

    def outer(self, site: Site, layer: int) -> tuple[Tensor, Tensor]:
        """``(L, R)`` of ``site`` at ``layer``: ``k x d`` and ``d x k``."""
        return self.matrix(site.left, layer), self.matrix(site.right, layer)
