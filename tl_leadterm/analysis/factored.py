"""A matrix kept as a product of two factors: the value type of the low-rank algebra.

Modelled on TransformerLens' ``FactoredMatrix``: ``Factored(A, B)`` is ``X = A @ B`` with
``A`` ``m x r`` and ``B`` ``r x n``, never formed.  A head's key-query matrix is
``Factored(W_Q[h], W_K[h].T)`` and its OV matrix ``Factored(W_V[h], W_O[h])`` (TransformerLens'
``model.QK`` / ``model.OV``); multiplying by a dense matrix on either side stays factored
(``E @ X @ E.T``), and norms and inner products come from ``r x r`` Gram matrices.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor

from ..errors import require


class Factored:
    """``X = A @ B`` (``A``: ``m x r``, ``B``: ``r x n``), kept factored."""

    def __init__(self, A: Tensor, B: Tensor):
        require(A.dim() == 2 and B.dim() == 2 and A.shape[1] == B.shape[0],
                f"factors of shapes {tuple(A.shape)} and {tuple(B.shape)} do not multiply")
        self.A, self.B = A, B

    # -- shape and conversions ---------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return self.A.shape[0], self.B.shape[1]

    @property
    def rank(self) -> int:
        """The inner dimension r (an upper bound of the rank)."""
        return self.A.shape[1]

    @property
    def T(self) -> "Factored":
        return Factored(self.B.T, self.A.T)

    def double(self) -> "Factored":
        return Factored(self.A.double(), self.B.double())

    def to(self, *args, **kwargs) -> "Factored":
        return Factored(self.A.to(*args, **kwargs), self.B.to(*args, **kwargs))

    def dense(self) -> Tensor:
        """``A @ B`` formed (``m x n``): for tests and small matrices only."""
        return self.A @ self.B

    def __repr__(self) -> str:
        return f"Factored(shape={self.shape}, rank<={self.rank})"

    # -- algebra -------------------------------------------------------------
    def __matmul__(self, other: Tensor) -> "Factored":
        return Factored(self.A, self.B @ other)

    def __rmatmul__(self, other: Tensor) -> "Factored":
        return Factored(other @ self.A, self.B)

    def __mul__(self, scalar: float) -> "Factored":
        return Factored(self.A * scalar, self.B)

    __rmul__ = __mul__

    def norm(self) -> Tensor:
        """Frobenius norm from the Gram matrices: ``‖AB‖² = Σ (AᵀA) ∘ (BBᵀ)``."""
        return torch.sqrt(torch.clamp(((self.A.T @ self.A) * (self.B @ self.B.T)).sum(), min=0.0))

    @classmethod
    def heads(cls, left: Tensor, right: Tensor) -> list["Factored"]:
        """Per head ``left[h] @ right[h]`` for ``[heads, m, r]`` and ``[heads, r, n]`` stacks."""
        return [cls(left[h], right[h]) for h in range(left.shape[0])]

    @classmethod
    def head_mean(cls, left: Tensor, right: Tensor) -> "Factored":
        """``(1/H) Σ_h left[h] @ right[h]`` as one factored matrix of rank ``H·r``."""
        H = left.shape[0]
        return cls(rearrange(left, "h m r -> m (h r)") / H, rearrange(right, "h r n -> (h r) n"))
