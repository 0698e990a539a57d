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
    """``X = A @ B`` (``A``: ``[..., m, r]``, ``B``: ``[..., r, n]``), kept factored.

    Leading dimensions are batch (head) dimensions, as in TransformerLens' ``FactoredMatrix``
    (``model.OV[l]`` is ``[n_heads, d, d]``); ``X[h]`` is one head's matrix.  :meth:`from_any` accepts a
    ``FactoredMatrix``.
    """

    def __init__(self, A: Tensor, B: Tensor):
        require(A.dim() >= 2 and B.dim() >= 2 and A.shape[-1] == B.shape[-2] and A.shape[:-2] == B.shape[:-2],
                f"factors of shapes {tuple(A.shape)} and {tuple(B.shape)} do not multiply")
        self.A, self.B = A, B

    @classmethod
    def from_any(cls, X) -> "Factored":
        """A :class:`Factored`, a TransformerLens ``FactoredMatrix`` (its ``A``, ``B``) or a dense tensor (``X @ I``)."""
        if isinstance(X, Factored):
            return X
        if hasattr(X, "A") and hasattr(X, "B") and isinstance(getattr(X, "A"), Tensor):
            return cls(X.A, X.B)
        require(isinstance(X, Tensor) and X.dim() >= 2,
                f"expected a matrix: a tensor, a TransformerLens FactoredMatrix or a Factored, got {type(X).__name__}")
        eye = torch.eye(X.shape[-1], dtype=X.dtype, device=X.device).expand(*X.shape[:-2], -1, -1)
        return cls(X, eye)

    # -- shape and conversions ---------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """The matrix shape ``(m, n)`` (without the batch dimensions, :attr:`batch_shape`)."""
        return self.A.shape[-2], self.B.shape[-1]

    @property
    def batch_shape(self) -> tuple[int, ...]:
        return tuple(self.A.shape[:-2])

    def __getitem__(self, i) -> "Factored":
        require(len(self.batch_shape) > 0, "a 2-D Factored has no heads to index")
        return Factored(self.A[i], self.B[i])

    def __len__(self) -> int:
        require(len(self.batch_shape) > 0, "a 2-D Factored has no heads")
        return self.A.shape[0]

    @property
    def rank(self) -> int:
        """The inner dimension r (an upper bound of the rank)."""
        return self.A.shape[-1]

    @property
    def T(self) -> "Factored":
        return Factored(self.B.transpose(-2, -1), self.A.transpose(-2, -1))

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
        """Frobenius norm (per head) from the Gram matrices: ``‖AB‖² = Σ (AᵀA) ∘ (BBᵀ)``."""
        At, Bt = self.A.transpose(-2, -1), self.B.transpose(-2, -1)
        return torch.sqrt(torch.clamp(((At @ self.A) * (self.B @ Bt)).sum((-2, -1)), min=0.0))

    @classmethod
    def heads(cls, left: Tensor, right: Tensor) -> list["Factored"]:
        """Per head ``left[h] @ right[h]`` for ``[heads, m, r]`` and ``[heads, r, n]`` stacks."""
        return [cls(left[h], right[h]) for h in range(left.shape[0])]

    @classmethod
    def head_mean(cls, left: Tensor, right: Tensor) -> "Factored":
        """``(1/H) Σ_h left[h] @ right[h]`` as one factored matrix of rank ``H·r``."""
        H = left.shape[0]
        return cls(rearrange(left, "h m r -> m (h r)") / H, rearrange(right, "h r n -> (h r) n"))
